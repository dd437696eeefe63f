"""Where the stories come from: `--dataset` as a local folder or file, or a Hub dataset (a slice of
it streamed when both splits are bounded), read through Hugging Face `datasets` with its logging quiet.

`mfha.data` tokenizes and caches what this reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfha.errors import DataError, first_line

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict, IterableDataset

BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet", ".csv": "csv"}
SPLITS = ("train", "validation")
ROWS_VERSION = 1  # of the streamed rows kept under $MFHA_CACHE/rows (text only: tokenizer changes leave them valid)
HUB_TIMEOUT_S = 5.0
OFFLINE_EXAMPLE = "data/tinystories-sample"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Source:
    """Where --dataset points: a local folder or file, or a Hub name."""

    name: str
    path: Path | None  # None for a Hub name

    @classmethod
    def resolve(cls, name: str) -> Source:
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
        files = [self.path] if self.path.is_file() else _files(self.path)
        stats = [
            [str(p.relative_to(self.path) if p != self.path else p.name), p.stat().st_size, p.stat().st_mtime_ns]
            for p in files
        ]
        return {"path": str(self.path), "files": stats}

    def content(self) -> str:
        """What the data is rather than where: the Hub name, or a local copy's file names and sizes, so
        the same files in another folder (another machine's copy) read as the same data."""
        if self.path is None:
            return self.name
        files = [self.path] if self.path.is_file() else _files(self.path)
        named = [(p.name if p == self.path else str(p.relative_to(self.path)), p.stat().st_size) for p in files]
        return "local files " + ", ".join(f"{name} ({size:,} bytes)" for name, size in named)

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
        self._check_not_empty()
        with self._read_errors():
            return datasets.load_dataset(*args, streaming=streaming, **kwargs)

    def _check_not_empty(self) -> None:
        """An empty data file makes `datasets` fail deep inside (a StopIteration from the JSON builder, "corresponds
        to no data" for a split), so it is named here first."""
        if self.path is None:
            return
        if self.path.is_file():
            if _blank(self.path):
                raise DataError(f"--dataset {self.name!r} is an empty file; pass a file with rows (one story per row).")
            return
        for p in _files(self.path):
            if p.suffix.lower() in BUILDERS and _blank(p):
                raise DataError(
                    f"--dataset {self.name!r} has an empty data file, {str(p.relative_to(self.path))!r}: every split "
                    f"needs rows (one story per row); fill it, or pass --dataset with another folder."
                )

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
        write_rows(folder, rows)
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
                    f"--dataset {self.name!r} holds no data files that datasets can read ({', '.join(BUILDERS)}): {first_line(e)}"
                ) from e
            if isinstance(e, datasets.exceptions.DatasetNotFoundError):
                raise DataError(
                    f"--dataset {self.name!r} is neither a local path nor a dataset on the Hugging Face Hub."
                ) from e
            raise
        except StopIteration:  # datasets' JSON builder on a first file with no rows, if _check_not_empty missed it
            raise DataError(
                f"--dataset {self.name!r} has a data file with no rows; every split needs rows (one story per row)."
            ) from None
        except datasets.exceptions.DatasetGenerationError as e:
            raise DataError(f"--dataset {self.name!r} could not be read: {first_line(e.__cause__ or e)}") from e
        except ConnectionError as e:
            if self.path is not None:
                raise
            # offline with no copy in the datasets cache, or the connection dropped midway (datasets
            # turns a stream's repeated disconnects into a ConnectionError too)
            raise DataError(self._unreachable()) from e


@contextmanager
def quiet_datasets() -> Iterator[None]:
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


def _files(folder: Path) -> list[Path]:
    """The folder's files, hidden ones left out (as `datasets` leaves them out)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _blank(path: Path) -> bool:
    """Whether a data file holds nothing but whitespace; a file larger than a few KiB is taken to hold rows."""
    size = path.stat().st_size
    return size == 0 or (size <= 4096 and not path.read_bytes().strip())


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


def write_rows(folder: Path, rows: dict[str, Dataset]) -> None:
    def fill(tmp: Path) -> None:
        for split, ds in rows.items():
            ds.save_to_disk(str(tmp / split))

    publish(folder, fill)


def publish(folder: Path, fill: Callable[[Path], None]) -> None:
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


__all__ = ["Source", "quiet_datasets", "publish", "write_rows", "BUILDERS", "SPLITS", "OFFLINE_EXAMPLE"]
