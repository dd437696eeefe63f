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
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mfha.config import TrainConfig
from mfha.errors import DataError
from mfha.tokenizer import Tokenizer

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict, IterableDataset

CACHE_VERSION = 2  # bump when the cached files change meaning (2: nibble byte fallback, mfha.tokenizer)
BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet", ".csv": "csv"}
SPLITS = ("train", "validation")
ROWS_VERSION = 1  # of the streamed rows kept under $MFHA_CACHE/rows (text only: tokenizer changes leave them valid)
HUB_TIMEOUT_S = 5.0
OFFLINE_EXAMPLE = "data/tinystories-sample"
MAP_BATCH = 1000
# tokenizing fewer stories takes under a second or two, where a progress bar is only noise
PROGRESS_MIN_STORIES = 10_000
REPO_ROOT = Path(__file__).resolve().parents[1]


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
    source = _Source.resolve(cfg.dataset)
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
    with _quiet_datasets():
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
            f"the {empty} slice of --dataset {cfg.dataset!r} holds no text; check --text-column and the slice bounds."
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
                f"its columns are: {', '.join(ds.column_names)}."
            )
        dtype = getattr(ds.features[cfg.text_column], "dtype", None)
        if dtype not in ("string", "large_string"):
            raise DataError(
                f"--text-column {cfg.text_column!r} of --dataset {name!r} must hold text, but its type is {ds.features[cfg.text_column]}."
            )
    return splits["train"], splits["validation"]


@dataclass
class _Source:
    """Where --dataset points: a local folder or file, or a Hub name."""

    name: str
    path: Path | None  # None for a Hub name

    @classmethod
    def resolve(cls, name: str) -> _Source:
        path = Path(name).expanduser()
        if not path.exists() and not path.is_absolute():
            # a study file's relative path (data/tinystories-sample) names the repository's folder when
            # the command runs from elsewhere (python /path/to/run_search.py run)
            in_repo = REPO_ROOT / path
            path = in_repo if in_repo.exists() else path
        if path.exists():
            return cls(name, path.resolve())
        if _looks_like_path(name):
            raise DataError(
                f"--dataset {name!r} does not exist; pass a folder with train and validation files "
                f"({', '.join(BUILDERS)}) or a Hub name such as roneneldan/TinyStories."
            )
        return cls(name, None)

    @property
    def slug(self) -> str:
        base = self.path.name if self.path is not None else self.name
        return re.sub(r"[^A-Za-z0-9._-]+", "_", base)[:40]

    def identity(self) -> dict[str, Any]:
        # a Hub name is keyed by name alone, so a cached slice keeps working offline
        if self.path is None:
            return {"hub": self.name}
        if self.path.is_file():
            files = [self.path]
        else:
            files = sorted(
                p
                for p in self.path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.path).parts)
            )
        stats = [
            [str(p.relative_to(self.path) if p != self.path else p.name), p.stat().st_size, p.stat().st_mtime_ns]
            for p in files
        ]
        return {"path": str(self.path), "files": stats}

    def load(self, *, streaming: bool = False) -> DatasetDict:
        """Every split; with `streaming`, as IterableDatasets that read rows only when iterated."""
        import datasets

        if self.path is None:
            self._check_hub()
            args, kwargs = (self.name,), {}
        elif self.path.is_file():
            builder = BUILDERS.get(self.path.suffix.lower())
            if builder is None:
                raise DataError(
                    f"--dataset file {self.name!r} must end in one of {', '.join(BUILDERS)}, but got {self.path.suffix!r}."
                )
            args, kwargs = (builder,), {"data_files": {"train": str(self.path)}}
        else:
            args, kwargs = (str(self.path),), {}
        with self._read_errors():
            return datasets.load_dataset(*args, streaming=streaming, **kwargs)

    def load_slice(self, bounds: dict[str, int | None], rows_root: Path) -> dict[str, Dataset]:
        """The first `bounds[split]` rows of each split (all of it for None), streamed, then kept under
        `rows_root`: a later load of the same slice (another tokenizer size, an evaluation with a run's
        tokenizer) reads them from disk instead of the network."""
        import datasets

        key = json.dumps({"version": ROWS_VERSION, "dataset": self.identity(), "bounds": bounds}, sort_keys=True)
        folder = rows_root / f"{self.slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        if folder.is_dir():
            return {split: datasets.load_from_disk(str(folder / split)) for split in SPLITS}
        streams = self.load(streaming=True)
        if any(split not in streams for split in SPLITS):
            return streams  # _check_splits names the splits there are
        rows = {split: self._take(streams[split], bounds[split]) for split in SPLITS}
        _write_rows(folder, rows)
        return rows

    def _take(self, stream: IterableDataset, n: int | None) -> Dataset:
        import datasets

        with self._read_errors():
            got = list(stream if n is None else stream.take(int(n)))
        # a stream may not know its features (a local JSON file); then they are inferred from the rows
        return datasets.Dataset.from_list(got, features=stream.features)

    def _check_hub(self) -> None:
        import datasets

        if _env_offline() or datasets.config.HF_HUB_OFFLINE:
            if not datasets.config.HF_HUB_OFFLINE:
                # the flag was set after `datasets` read it at import, so `datasets` would still go online
                raise DataError(self._unreachable())
        elif not _hub_reachable():
            raise DataError(self._unreachable())

    def _unreachable(self) -> str:
        return f"cannot reach the Hugging Face Hub for --dataset {self.name}; pass a local copy, e.g. --dataset {OFFLINE_EXAMPLE}"

    @contextmanager
    def _read_errors(self) -> Iterator[None]:
        """datasets' errors as one line, alike while opening a dataset and while streaming its rows."""
        import datasets

        try:
            yield
        except FileNotFoundError as e:  # also datasets' "no data files" and "not found" errors, which derive from it
            if self.path is not None:
                raise DataError(
                    f"--dataset {self.name!r} holds no data files that datasets can read ({', '.join(BUILDERS)}): {_first_line(e)}"
                ) from e
            if isinstance(e, datasets.exceptions.DatasetNotFoundError):
                raise DataError(
                    f"--dataset {self.name!r} is neither a local path nor a dataset on the Hugging Face Hub."
                ) from e
            raise
        except datasets.exceptions.DatasetGenerationError as e:
            raise DataError(f"--dataset {self.name!r} could not be read: {_first_line(e.__cause__ or e)}") from e
        except ConnectionError as e:
            if self.path is not None:
                raise
            # offline with no copy in the datasets cache, or the connection dropped midway (datasets
            # turns a stream's repeated disconnects into a ConnectionError too)
            raise DataError(self._unreachable()) from e


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence what `datasets` and `huggingface_hub` print while a dataset is read, then restore it.

    Their warnings ("Repo card metadata block was not found...", for any folder whose README.md has no
    YAML header) and datasets' "Generating train split" bars (a second for the whole sample) tell a
    user nothing they can act on, and came before the run's own first line. huggingface_hub's download
    bars stay: a first full Hub load takes minutes, and that bar is its only sign of progress.
    """
    import datasets
    from huggingface_hub.utils import logging as hub_logging

    levels = datasets.logging.get_verbosity(), hub_logging.get_verbosity()
    bars_were_on = not datasets.are_progress_bars_disabled()
    # HF_DATASETS_DISABLE_PROGRESS_BARS=0 is a user's explicit wish for the bars; datasets would warn
    quiet_bars = bars_were_on and datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is None
    datasets.logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    if quiet_bars:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(levels[0])
        hub_logging.set_verbosity(levels[1])
        if quiet_bars:
            datasets.enable_progress_bars()


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") >= 2
        or Path(name).suffix.lower() in BUILDERS
    )


def _env_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_reachable() -> bool:
    """Whether the Hub answers at all within HUB_TIMEOUT_S (any HTTP status counts as an answer)."""
    from huggingface_hub import constants

    request = urllib.request.Request(f"{constants.ENDPOINT}/api/datasets", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=HUB_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return True
    except OSError:  # URLError, DNS failure, refused connection, timeout
        return False
    return True


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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

    _publish(folder, fill)


def _write_rows(folder: Path, rows: dict[str, Dataset]) -> None:
    def fill(tmp: Path) -> None:
        for split, ds in rows.items():
            ds.save_to_disk(str(tmp / split))

    _publish(folder, fill)


def _publish(folder: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temporary folder, then rename it into place: readers see all files or none."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        fill(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
            # another process finished the same slice first; its files are identical
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["TokenizedData", "default_cache_dir", "load_data"]
