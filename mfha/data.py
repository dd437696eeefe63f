"""Load a text dataset, train the tokenizer on its train slice, and serve token windows.

`load_data(train_config)` returns a `TokenizedData`: the tokenizer and the train and validation
splits as token streams (stories joined by `<eos>`). The tokenizer and both streams are cached on
disk per (dataset, slice, text column, tokenizer size), so every later trial or run with the same
data starts in milliseconds without importing `datasets`. A Hub dataset whose splits are both bounded in
stories is streamed: only those rows are downloaded, and they are cached too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mfha.config import TrainConfig
from mfha.errors import DataError
from mfha.sources import SPLITS, Source, publish, quiet_datasets
from mfha.tokenizer import Tokenizer

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

CACHE_VERSION = 2  # bump when the cached files change meaning (2: nibble byte fallback, mfha.tokenizer)
MAP_BATCH = 1000
# tokenizing fewer stories takes under a second or two, where a progress bar is only noise
PROGRESS_MIN_STORIES = 10_000


def default_cache_dir() -> Path:
    return Path(os.environ.get("MFHA_CACHE") or "~/.cache/mfha").expanduser()


@dataclass
class TokenizedData:
    """A tokenizer and the train and validation token streams (1-D numpy, uint16 or int32)."""

    tokenizer: Tokenizer
    train: np.ndarray
    val: np.ndarray
    cache_path: Path | None = None  # the cache folder these came from or went to
    cached: bool = False  # True when loaded from the cache, without reading the dataset
    _val_windows: dict = field(default_factory=dict, init=False, repr=False)

    def batch(
        self, batch_size: int, seq_len: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (batch_size, seq_len) int64 on the CPU: random contiguous train windows, y = x shifted by one."""
        n_starts = len(self.train) - seq_len
        if n_starts < 1:
            raise DataError(
                f"the train stream must hold more than seq_len tokens, but got {len(self.train)} tokens for "
                f"seq_len={seq_len}; raise max_train_stories/max_train_tokens or lower seq_len."
            )
        starts = torch.randint(n_starts, (batch_size,), generator=generator).numpy()
        w = torch.from_numpy(self.train[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def val_windows(self, seq_len: int, n_windows: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(x, y, n_chars): the same evenly spaced validation windows on every call.

        Windows are spread over the whole stream with disjoint targets; if fewer than `n_windows` fit,
        as many as fit are used. n_chars counts the characters the targets y stand for (for bits/char).
        """
        key = (seq_len, n_windows)
        if key not in self._val_windows:
            n_fit = (len(self.val) - 1) // seq_len
            if n_fit < 1:
                raise DataError(
                    f"the validation stream must hold more than seq_len tokens, but got {len(self.val)} tokens "
                    f"for seq_len={seq_len}; raise max_val_stories or lower seq_len."
                )
            n = min(n_windows, n_fit)
            last = len(self.val) - seq_len - 1
            # spacing last/(n-1) >= seq_len because n <= n_fit, so targets never overlap
            starts = np.array([0]) if n == 1 else np.arange(n) * last // (n - 1)
            w = torch.from_numpy(self.val[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
            x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
            n_chars = int(self.tokenizer.char_lengths()[y.numpy()].sum())
            self._val_windows[key] = (x, y, n_chars)
        return self._val_windows[key]


def load_data(
    train_config: TrainConfig,
    *,
    cache_dir: str | Path | None = None,
    tokenizer: Tokenizer | None = None,
    streaming: bool | None = None,
) -> TokenizedData:
    """Tokenizer and token streams for `train_config`'s dataset and slice, from the cache when possible.

    Slices: the first `max_train_stories` train stories, with the stream cut at `max_train_tokens`
    tokens; the first `max_val_stories` validation stories. The tokenizer is trained on the train slice
    only; under `max_train_tokens` alone, on the first stories holding that many characters (every
    character is at most one token, so they cover at least the stream at character level).
    Pass `tokenizer` (e.g. a finished run's) to tokenize with it instead of training one.
    `streaming`: read just the slice's rows through `datasets` streaming and cache them; None (the
    default) streams a Hub dataset when both splits are bounded in stories, True forces it (on a local
    folder too, which is how the streaming path is tested offline), False never streams.
    """
    cfg = train_config
    source = Source.resolve(cfg.dataset)
    key = {
        "version": CACHE_VERSION,
        "dataset": source.identity(),
        "text_column": cfg.text_column,
        "max_train_stories": cfg.max_train_stories,
        "max_train_tokens": cfg.max_train_tokens,
        "max_val_stories": cfg.max_val_stories,
        "tokenizer_vocab": cfg.tokenizer_vocab,
        "tokenizer": None if tokenizer is None else hashlib.sha256(tokenizer.backend.to_str().encode()).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / "data" / f"{source.slug}-{digest}"
    if folder.is_dir():
        return _read_cache(folder)

    bounds = {"train": cfg.max_train_stories, "validation": cfg.max_val_stories}
    if streaming is None:
        streaming = source.path is None and None not in bounds.values()
    with quiet_datasets():
        splits = source.load_slice(bounds, root / "rows") if streaming else source.load()
    train_ds, val_ds = _check_splits(splits, cfg, source.name)
    tokenizer, train, val = _tokenize_splits(train_ds, val_ds, cfg, tokenizer=tokenizer)
    _write_cache(folder, key, tokenizer, train, val)
    return TokenizedData(tokenizer, train, val, cache_path=folder, cached=False)


def _tokenize_splits(
    train_ds: Dataset, val_ds: Dataset, cfg: TrainConfig, *, tokenizer: Tokenizer | None
) -> tuple[Tokenizer, np.ndarray, np.ndarray]:
    col = cfg.text_column
    if cfg.max_train_stories is not None:
        train_ds = train_ds.select(range(min(int(cfg.max_train_stories), len(train_ds))))
    if cfg.max_val_stories is not None:
        val_ds = val_ds.select(range(min(int(cfg.max_val_stories), len(val_ds))))
    n_fit = len(train_ds)
    if cfg.max_train_tokens is not None:
        n_fit = _rows_holding(train_ds, col, int(cfg.max_train_tokens))

    if tokenizer is None:
        tokenizer = Tokenizer.train(_texts(train_ds.select(range(n_fit)), col), cfg.tokenizer_vocab)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32

    if cfg.max_train_tokens is None:
        train = _token_stream(train_ds, col, tokenizer, dtype, "tokenizing train")
    else:
        target = int(cfg.max_train_tokens)
        parts, got, start, stop = [], 0, 0, n_fit
        while True:
            part = _token_stream(train_ds.select(range(start, stop)), col, tokenizer, dtype, "tokenizing train")
            parts.append(part)
            got += len(part)
            if got >= target or stop >= len(train_ds):
                break
            # BPE packs several characters per token: read on in proportion to what is still missing
            per_row = got / stop
            start, stop = stop, min(len(train_ds), stop + math.ceil((target - got) / per_row * 1.1) + 16)
        train = np.concatenate(parts)[:target]
    val = _token_stream(val_ds, col, tokenizer, dtype, "tokenizing validation")
    if len(train) == 0 or len(val) == 0:
        empty = "train" if len(train) == 0 else "validation"
        raise DataError(
            f"the {empty} slice of --dataset {cfg.dataset!r} holds no text; check --text-column "
            f"(data.text_column in a study file) and the slice bounds."
        )
    return tokenizer, train, val


def _texts(ds: Dataset, col: str) -> list[str]:
    return [t or "" for t in ds[col]]


def _rows_holding(ds: Dataset, col: str, n_chars: int) -> int:
    """The fewest leading rows whose texts, each plus one separator, hold at least `n_chars` characters."""
    total = 0
    for start in range(0, len(ds), MAP_BATCH):
        lengths = np.cumsum([len(t or "") + 1 for t in ds[start : start + MAP_BATCH][col]])
        if total + lengths[-1] >= n_chars:
            return start + int(np.searchsorted(lengths, n_chars - total)) + 1
        total += int(lengths[-1])
    return len(ds)


def _token_stream(ds: Dataset, col: str, tokenizer: Tokenizer, dtype, desc: str) -> np.ndarray:
    """Every row's tokens followed by `<eos>`, as one stream.

    A plain loop rather than `Dataset.map`: the streams are cached by us as .npy, so map's arrow copy
    would be waste, and its bar would show for a smoke study's 400 stories too; ours shows only for
    slices of PROGRESS_MIN_STORIES and more, which take long enough to wonder about.
    """
    from tqdm import tqdm

    eos = tokenizer.eos_id
    parts = []
    with tqdm(total=len(ds), desc=desc, unit="story", disable=len(ds) < PROGRESS_MIN_STORIES) as bar:
        for batch in ds.iter(batch_size=MAP_BATCH):
            texts = [t or "" for t in batch[col]]
            parts += [np.array([*ids, eos], dtype=dtype) for ids in tokenizer.encode_batch(texts)]
            bar.update(len(texts))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _check_splits(splits: DatasetDict, cfg: TrainConfig, name: str) -> tuple[Dataset, Dataset]:
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise DataError(
            f"--dataset needs a train and a validation split, but {name!r} has only: {', '.join(splits) or 'none'}; "
            f"a local folder gives one split per file named after it (train.jsonl, validation.jsonl)."
        )
    for split in SPLITS:
        ds = splits[split]
        if cfg.text_column not in ds.column_names:
            raise DataError(
                f"--text-column {cfg.text_column!r} is not a column of the {split} split of --dataset {name!r}; "
                f"its columns are: {', '.join(ds.column_names)}; set --text-column (data.text_column in a study "
                f"file) to the one that holds the stories."
            )
        dtype = getattr(ds.features[cfg.text_column], "dtype", None)
        if dtype not in ("string", "large_string"):
            raise DataError(
                f"--text-column {cfg.text_column!r} of --dataset {name!r} must hold text, but its type is "
                f"{ds.features[cfg.text_column]}; set --text-column (data.text_column in a study file) to a column "
                f"of strings."
            )
    return splits["train"], splits["validation"]


def _read_cache(folder: Path) -> TokenizedData:
    tokenizer = Tokenizer.from_file(folder / "tokenizer.json")
    # memory-mapped: the OS page cache holds one copy for every process that trains on this slice
    # (a search's trial processes), and a process reads only the windows it samples
    train = np.load(folder / "train.npy", mmap_mode="r")
    val = np.load(folder / "val.npy", mmap_mode="r")
    return TokenizedData(tokenizer, train, val, cache_path=folder, cached=True)


def _write_cache(folder: Path, key: dict, tokenizer: Tokenizer, train: np.ndarray, val: np.ndarray) -> None:
    def fill(tmp: Path) -> None:
        tokenizer.save(tmp / "tokenizer.json")
        np.save(tmp / "train.npy", train)
        np.save(tmp / "val.npy", val)
        (tmp / "key.json").write_text(json.dumps(key, indent=2) + "\n")

    publish(folder, fill)


__all__ = ["TokenizedData", "default_cache_dir", "load_data"]
