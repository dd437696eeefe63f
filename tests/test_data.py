import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mfha.config import TrainConfig
from mfha.data import load_data
from mfha.errors import ConfigError, DataError
from mfha.sources import Source as _Source


def _cfg(dataset: str, **kw) -> TrainConfig:
    return TrainConfig(dataset=dataset, **kw)


def _write_jsonl(path: Path, texts: list[str], key: str = "text") -> None:
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts), encoding="utf-8")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture(scope="module")
def full(tinystories, cache):
    return load_data(_cfg(tinystories), cache_dir=cache)


def _texts(folder: str, split: str) -> list[str]:
    lines = (Path(folder) / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def test_streams_join_stories_with_eos(full, tinystories):
    tok = full.tokenizer
    assert full.train.dtype == np.uint16 and full.val.dtype == np.uint16
    assert full.train.ndim == 1 and full.train.max() < tok.vocab_size
    val = _texts(tinystories, "validation")
    assert tok.decode(full.val) == "".join(t + "<eos>" for t in val)
    assert int((full.val == tok.eos_id).sum()) == len(val)
    # every character once, every separator once: bits per character rests on this
    assert int(tok.char_lengths()[full.val].sum()) == sum(map(len, val)) + len(val)


def test_second_load_reads_the_cache(full, tinystories, cache):
    assert not full.cached
    stamp = (full.cache_path / "tokenizer.json").stat().st_mtime_ns
    again = load_data(_cfg(tinystories), cache_dir=cache)
    assert again.cached and again.cache_path == full.cache_path
    assert (again.cache_path / "tokenizer.json").stat().st_mtime_ns == stamp
    assert np.array_equal(again.train, full.train) and np.array_equal(again.val, full.val)
    assert again.tokenizer.backend.to_str() == full.tokenizer.backend.to_str()
    assert not [p for p in full.cache_path.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_cache_key_follows_slice_vocab_and_files(tmp_path, tinystories):
    src = tmp_path / "src"
    src.mkdir()
    _write_jsonl(src / "train.jsonl", ["one story here.", "another story there."] * 20)
    _write_jsonl(src / "validation.jsonl", ["a held-out story."] * 5)
    cache = tmp_path / "cache"
    a = load_data(_cfg(str(src)), cache_dir=cache)
    b = load_data(_cfg(str(src), max_train_stories=10), cache_dir=cache)
    c = load_data(_cfg(str(src), tokenizer_vocab=280), cache_dir=cache)
    assert len({a.cache_path, b.cache_path, c.cache_path}) == 3 and not (a.cached or b.cached or c.cached)
    _write_jsonl(src / "validation.jsonl", ["a changed held-out story!"] * 5)
    d = load_data(_cfg(str(src)), cache_dir=cache)
    assert not d.cached and d.cache_path != a.cache_path
    assert d.tokenizer.decode(d.val).startswith("a changed")


def test_given_tokenizer_is_used_not_retrained(tinystories, cache, full):
    small = load_data(_cfg(tinystories, max_train_stories=5, max_val_stories=5), cache_dir=cache)
    d = load_data(_cfg(tinystories, max_val_stories=5), cache_dir=cache, tokenizer=small.tokenizer)
    assert d.tokenizer.backend.to_str() == small.tokenizer.backend.to_str() and not d.cached
    assert np.array_equal(d.val, small.val)
    assert d.tokenizer.decode(d.train) == full.tokenizer.decode(full.train)  # unseen characters go through bytes
    assert load_data(_cfg(tinystories, max_val_stories=5), cache_dir=cache, tokenizer=small.tokenizer).cached


def test_slices(tinystories, cache, full):
    cfg = _cfg(tinystories, max_train_tokens=20_000, max_val_stories=10)
    d = load_data(cfg, cache_dir=cache)
    assert len(d.train) == 20_000
    assert int((d.val == d.tokenizer.eos_id).sum()) == 10
    # character level: the stream is the first 20,000 characters and separators of the train split
    expected, left = [], 20_000
    for text in _texts(tinystories, "train"):
        if left <= len(text):
            expected.append(text[:left])
            break
        expected.append(text + "<eos>")
        left -= len(text) + 1
    assert d.tokenizer.decode(d.train) == "".join(expected)
    s = load_data(_cfg(tinystories, max_train_stories=30), cache_dir=cache)
    assert int((s.train == s.tokenizer.eos_id).sum()) == 30 and s.train[-1] == s.tokenizer.eos_id
    bpe = load_data(_cfg(tinystories, max_train_tokens=20_000, tokenizer_vocab=512), cache_dir=cache)
    # BPE needs more stories than the tokenizer's character-bounded training slice to fill the stream
    assert len(bpe.train) == 20_000 and bpe.tokenizer.vocab_size == 512


def test_batch_is_deterministic_for_a_seed(full):
    x1, y1 = full.batch(8, 32, torch.Generator().manual_seed(7))
    x2, y2 = full.batch(8, 32, torch.Generator().manual_seed(7))
    x3, _ = full.batch(8, 32, torch.Generator().manual_seed(8))
    assert x1.shape == y1.shape == (8, 32) and x1.dtype == y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    # each row is a contiguous piece of the train stream
    stream = torch.from_numpy(full.train.astype(np.int64))
    row = torch.cat([x1[0], y1[0, -1:]])
    starts = (stream.unfold(0, 33, 1) == row).all(dim=1).nonzero()
    assert len(starts) >= 1


def test_val_windows_are_fixed(full):
    x, y, n_chars = full.val_windows(64, 16)
    x2, y2, n2 = full.val_windows(64, 16)
    assert x.shape == y.shape == (16, 64) and torch.equal(x, x2) and torch.equal(y, y2) and n_chars == n2
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert n_chars == int(full.tokenizer.char_lengths()[y.numpy()].sum()) and n_chars > 0
    # spread over the whole stream: the last window ends at the end of the stream
    assert torch.equal(y[-1], torch.from_numpy(full.val[-64:].astype(np.int64)))


def test_val_windows_use_what_fits(tinystories, cache):
    d = load_data(_cfg(tinystories, max_val_stories=1, max_train_stories=20), cache_dir=cache)
    n_fit = (len(d.val) - 1) // 100
    x, y, _ = d.val_windows(100, 10_000)
    assert len(x) == n_fit >= 2
    # disjoint targets, so no character is counted twice: windows start at least seq_len apart
    stream = torch.from_numpy(d.val.astype(np.int64)).unfold(0, 100, 1)
    starts = [int((stream == row).all(dim=1).nonzero()[0]) for row in x]
    assert starts[0] == 0 and all(b - a >= 100 for a, b in zip(starts, starts[1:]))
    with pytest.raises(DataError, match="seq_len"):
        d.val_windows(len(d.val), 4)
    with pytest.raises(DataError, match="seq_len"):
        d.batch(2, len(d.train))


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"--dataset '.*nowhere' does not exist"):
        load_data(_cfg(str(tmp_path / "nowhere")), cache_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_data(_cfg("./stories.jsonl"), cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no data files"):
        load_data(_cfg(str(tmp_path / "empty")), cache_dir=tmp_path)


def test_missing_split(tmp_path):
    src = tmp_path / "only-train"
    src.mkdir()
    _write_jsonl(src / "train.jsonl", ["a story."] * 3)
    with pytest.raises(DataError, match=r"train and a validation split, but .* has only: train"):
        load_data(_cfg(str(src)), cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="has only: train"):
        load_data(_cfg(str(src / "train.jsonl")), cache_dir=tmp_path / "cache")


def test_missing_text_column(tmp_path, tinystories):
    with pytest.raises(DataError, match=r"--text-column 'story' is not a column .* its columns are: text"):
        load_data(_cfg(tinystories, text_column="story"), cache_dir=tmp_path)
    src = tmp_path / "other"
    src.mkdir()
    _write_jsonl(src / "train.jsonl", ["a story."] * 3, key="story")
    _write_jsonl(src / "validation.jsonl", ["a story."] * 3, key="story")
    d = load_data(_cfg(str(src), text_column="story"), cache_dir=tmp_path)
    assert d.tokenizer.decode(d.val) == "a story.<eos>" * 3


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        load_data(_cfg("nobody-here/not-a-dataset"), cache_dir=tmp_path)
    assert str(info.value) == (
        "cannot reach the Hugging Face Hub for --dataset nobody-here/not-a-dataset; "
        "pass a local copy, e.g. --dataset data/tinystories-sample"
    )
    # a bounded slice of a Hub name takes the streaming path, with the same one line
    with pytest.raises(DataError) as streamed:
        load_data(_cfg("nobody-here/not-a-dataset", max_train_stories=10, max_val_stories=5), cache_dir=tmp_path)
    assert str(streamed.value) == str(info.value)


def test_unreachable_hub_probe_does_not_wait_for_retries(tmp_path):
    # online mode with nothing listening at the endpoint: the probe must answer long before the
    # libraries' own retries would give up (about 25 s); imports are left out of the timing
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    code = (
        "import time, datasets\n"
        "from mfha.config import TrainConfig; from mfha.data import load_data; from mfha.errors import DataError\n"
        "t0 = time.perf_counter()\n"
        "try:\n    load_data(TrainConfig(dataset='nobody-here/not-a-dataset'), cache_dir=%r)\n"
        "except DataError as e:\n    print(time.perf_counter() - t0, e)\n" % str(tmp_path)
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=180,
    )
    elapsed, _, message = out.stdout.partition(" ")
    assert message.startswith("cannot reach the Hugging Face Hub for --dataset nobody-here/not-a-dataset;"), out.stderr
    assert float(elapsed) < 10


def test_too_small_tokenizer_vocab(tmp_path, tinystories):
    with pytest.raises(ConfigError, match=r"tokenizer_vocab must be at least \d+ for this corpus.*tokenizer_vocab=100"):
        load_data(_cfg(tinystories, tokenizer_vocab=100), cache_dir=tmp_path)
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_streaming_reads_exactly_the_first_stories(tinystories, tmp_path):
    cfg = _cfg(tinystories, max_train_stories=25, max_val_stories=7)
    streamed = load_data(cfg, cache_dir=tmp_path / "streamed", streaming=True)
    loaded = load_data(cfg, cache_dir=tmp_path / "loaded", streaming=False)
    tok = streamed.tokenizer
    assert tok.decode(streamed.train) == "".join(t + "<eos>" for t in _texts(tinystories, "train")[:25])
    assert tok.decode(streamed.val) == "".join(t + "<eos>" for t in _texts(tinystories, "validation")[:7])
    assert tok.backend.to_str() == loaded.tokenizer.backend.to_str()
    assert np.array_equal(streamed.train, loaded.train) and np.array_equal(streamed.val, loaded.val)
    assert [p.name for p in (tmp_path / "streamed" / "rows").iterdir()]  # the streamed rows are kept
    assert not (tmp_path / "loaded" / "rows").exists()


def test_a_bounded_hub_slice_is_streamed_once_then_read_from_the_cache(tinystories, tmp_path, monkeypatch):
    import datasets

    opened = []

    def local_hub(self, *, streaming=False):  # the Hub stood in for by the shared slice, offline
        opened.append(streaming)
        return datasets.load_dataset(tinystories, streaming=streaming)

    monkeypatch.setattr(_Source, "load", local_hub)
    cfg = _cfg("roneneldan/TinyStories", max_train_stories=12, max_val_stories=3)
    first = load_data(cfg, cache_dir=tmp_path)
    assert opened == [True]
    assert first.tokenizer.decode(first.val) == "".join(t + "<eos>" for t in _texts(tinystories, "validation")[:3])
    # another tokenizer size needs the text again: it comes from the kept rows, not the network
    bpe = load_data(
        _cfg("roneneldan/TinyStories", max_train_stories=12, max_val_stories=3, tokenizer_vocab=340), cache_dir=tmp_path
    )
    assert opened == [True] and not bpe.cached
    assert bpe.tokenizer.decode(bpe.train) == first.tokenizer.decode(first.train)
    load_data(_cfg("roneneldan/TinyStories", max_val_stories=3), cache_dir=tmp_path / "unbounded")
    assert opened == [True, False]  # an unbounded split keeps the whole-dataset load


def test_loading_prints_no_third_party_noise(tmp_path, capfd):
    import datasets
    from huggingface_hub.utils import logging as hub_logging

    src = tmp_path / "fresh"  # a folder datasets has never seen, so it generates its splits
    src.mkdir()
    _write_jsonl(src / "train.jsonl", ["a first story."] * 30)
    _write_jsonl(src / "validation.jsonl", ["a held-out story."] * 5)
    (src / "README.md").write_text("# my stories\n\nNo YAML header, so huggingface_hub warns about its metadata.\n")
    levels = datasets.logging.get_verbosity(), hub_logging.get_verbosity(), datasets.are_progress_bars_disabled()
    capfd.readouterr()
    d = load_data(_cfg(str(src)), cache_dir=tmp_path / "cache")
    err = capfd.readouterr().err
    assert d.tokenizer.decode(d.val) == "a held-out story.<eos>" * 5
    assert "Repo card metadata" not in err and "Generating" not in err and "tokenizing" not in err, err
    assert err == "", err
    assert (
        datasets.logging.get_verbosity(),
        hub_logging.get_verbosity(),
        datasets.are_progress_bars_disabled(),
    ) == levels


def test_a_relative_path_missing_here_is_looked_up_in_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # python /path/to/run_search.py run from another folder
    sample = Path(__file__).resolve().parents[1] / "data" / "tinystories-sample"
    assert _Source.resolve("data/tinystories-sample").path == sample
    (tmp_path / "data" / "tinystories-sample").mkdir(parents=True)
    assert _Source.resolve("data/tinystories-sample").path == tmp_path / "data" / "tinystories-sample"  # here first
    with pytest.raises(DataError, match=r"--dataset './nope' does not exist"):
        _Source.resolve("./nope")
