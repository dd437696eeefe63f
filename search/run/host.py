"""The cores of one machine, shared by every run on it: one `flock`ed file per core.

Separate `run_search.py` processes used to take every core each, and oversubscribed OpenMP threads
busy-wait on each other (3-10x slower steps measured on 2 cores). Here a run holds an exclusive lock
on one file per core it trains with, in `host-slots/` beside the data cache, for as long as it runs;
the kernel drops the locks of a process that dies, however it dies, so a crash never leaks a core.

A run takes the free cores it wants (its thread cap) and trains with that many torch threads. A run
that finds none free registers as waiting, and at the start of each of their trials the runs holding
more than their fair share give cores back (fair = cores // (holders + waiters), at least one); a run
grows back to its cap at its next trial once cores come free and nobody waits. The run without a
core waits (after loading its data, before its first trial) while some holder is multi-threaded,
because one more thread on a core that an OpenMP team uses makes that whole team busy-wait; it waits
at most one trial of that holder. When every holder is down to one thread (more runs than cores) it
does not wait, and trains with one thread: single-threaded processes only time-share a core.
`MFHA_HOST_SLOTS=0` turns all of this off (each run then takes its cap, as before).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO

from mfha.errors import ConfigError

ENV = "MFHA_HOST_SLOTS"
FOLDER = "host-slots"


def host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def enabled() -> bool:
    value = os.environ.get(ENV, "1").strip()
    if value not in ("0", "1"):
        raise ConfigError(
            f"{ENV} must be 0 (runs on this machine ignore each other) or 1 (they share the cores), but got {ENV}={value!r}."
        )
    return value == "1"


def slots_folder(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is None:
        from mfha.data import default_cache_dir

        cache_dir = default_cache_dir()
    return Path(cache_dir) / FOLDER


def wanted(threads_flag: int | None, study_threads: int | None, workers: int, cores: int) -> tuple[int, str]:
    """The threads a run (or each of its `--workers`) would use alone on this machine, and what capped them."""
    split = max(1, cores // workers)
    cap, why = (
        (threads_flag, f"--threads {threads_flag}")
        if threads_flag
        else (study_threads, f"training.threads = {study_threads}")
    )
    if cap and cap <= split:
        return cap, why if cap < cores else ""
    return split, f"--workers {workers} share them" if workers > 1 else ""


class CoreShare:
    """The cores this process holds; `threads` is what its next trial trains with."""

    def __init__(
        self,
        want: int,
        *,
        folder: Path,
        cores: int | None = None,
        active: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if want < 1:
            raise ValueError(f"want must be a positive integer, but got {want=}.")
        self.want = want
        self.folder = Path(folder)
        self.cores = cores or host_cores()
        self.active = active
        self.log = log or (lambda msg: None)
        self.held: dict[int, IO] = {}
        self._waiting: tuple[IO, Path] | None = None  # the locked file saying this run waits for a core
        if active:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._claim(min(want, self.cores))
            self._set_waiting(not self.held)

    @property
    def threads(self) -> int:
        if not self.active:
            return self.want
        return max(1, len(self.held))

    def line(self, why: str = "") -> str:
        """What this run got and why, for the first line of a run."""
        n = self.threads
        threads = f"{n} torch thread{'s' if n != 1 else ''} per trial"
        cap = f" (at most {self.want}: {why})" if why and n == self.want else ""
        if not self.active:
            return f"{self.cores} cores, shared with no other run ({ENV}=0): {threads}{cap}"
        others = self.others()
        if not others:
            return f"{self.cores} cores, none held by another run: {threads}{cap}"
        pids = sorted({pid for pid, _ in others.values()})
        whose = f"another run (pid {pids[0]})" if len(pids) == 1 else f"other runs (pids {', '.join(map(str, pids))})"
        if self.held:
            return f"{self.cores} cores, {len(others)} held by {whose}: {threads}{cap}"
        if self.must_wait():
            return (
                f"{self.cores} cores, all held by {whose}: waits for one before its first trial "
                f"(a run holding more than one gives one back at the start of its next trial)"
            )
        return (
            f"{self.cores} cores, all held by {whose} with one thread each: {threads} without a core of its own "
            f"(single threads time-share a core without busy-waiting)"
        )

    def must_wait(self) -> bool:
        """No core, and some other run trains with several threads: one more thread would make its team busy-wait."""
        if not self.active or self.held:
            return False
        return any(n > 1 for n in Counter(self.others().values()).values())

    def wait(self, check: Callable[[], None] = lambda: None, *, poll_s: float = 0.5) -> None:
        """Before the first trial: until a multi-threaded run gives a core back (`check` raises a pending signal)."""
        if not self.active or self.held:
            return
        t0 = time.monotonic()
        waited = False
        while True:
            self._claim(self.want)
            if not self.must_wait():
                break
            check()
            time.sleep(poll_s)
            waited = True
        self._set_waiting(not self.held)
        if waited:
            n = self.threads
            self.log(
                f"{'a core came free' if self.held else 'every other run is down to one thread'} after "
                f"{time.monotonic() - t0:.0f} s: {n} torch thread{'s' if n != 1 else ''} per trial"
            )

    def refresh(self) -> int:
        """At the start of a trial: give cores back to waiting runs, or take free ones up to `want`."""
        if not self.active:
            return self.want
        before = self.threads
        waiters = self._waiters()
        if self.held and waiters:
            fair = max(1, self.cores // (len(set(self.others().values())) + 1 + waiters))
            for slot in sorted(self.held)[fair:]:
                self._release(slot)
        else:
            self._claim(self.want - len(self.held))
        self._set_waiting(not self.held)
        if self.threads != before:
            why = "gave cores back to a run waiting for one" if self.threads < before else "cores came free"
            self.log(f"{self.threads} torch thread{'s' if self.threads != 1 else ''} per trial from now on: {why}")
        return self.threads

    def others(self) -> dict[int, tuple[int, str]]:
        """Slot -> (pid, holder) for the cores other live runs hold (read from the files, for messages and shares)."""
        return {slot: who for slot, who in _holders(self.folder, self.cores).items() if slot not in self.held}

    def close(self) -> None:
        for slot in list(self.held):
            self._release(slot)
        self._set_waiting(False)

    def __enter__(self) -> CoreShare:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _claim(self, n: int) -> None:
        for slot in range(self.cores):
            if n <= 0:
                return
            if slot in self.held:
                continue
            f = open(self.folder / f"slot-{slot}", "a+")  # noqa: SIM115 - open while the slot is held
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.truncate(0)
            f.write(f"{os.getpid()} {id(self)}\n")  # the holder: a process, and which share in it
            f.flush()
            self.held[slot] = f
            n -= 1

    def _release(self, slot: int) -> None:
        f = self.held.pop(slot)
        f.truncate(0)  # before the unlock, so nobody reads this pid as the holder afterwards
        f.flush()
        f.close()  # closing the only descriptor drops the lock

    def _set_waiting(self, waiting: bool) -> None:
        """A run without a core holds `wait-PID` locked, so holders see it; a dead waiter's lock vanishes."""
        if waiting and self._waiting is None:
            path = self.folder / f"wait-{os.getpid()}-{id(self)}"
            tmp = path.with_suffix(".new")
            f: IO = open(tmp, "w")  # noqa: SIM115 - open (locked) while this run waits
            fcntl.flock(f, fcntl.LOCK_EX)
            os.replace(tmp, path)  # appears already locked, so it never looks like a dead waiter's
            self._waiting = (f, path)
        elif not waiting and self._waiting is not None:
            f, path = self._waiting
            self._waiting = None
            path.unlink(missing_ok=True)
            f.close()

    def _waiters(self) -> int:
        """Runs waiting for a core; a waiter's file whose lock is free belongs to a dead process and goes."""
        own = self._waiting[1] if self._waiting is not None else None
        count = 0
        for path in self.folder.glob("wait-*"):
            if path == own or path.suffix == ".new":
                continue
            try:
                f = open(path)  # noqa: SIM115 - closed by the `with` below; opening may fail alone
            except FileNotFoundError:  # its run took a core meanwhile
                continue
            with f:
                try:
                    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    count += 1
                    continue
                path.unlink(missing_ok=True)
        return count


def share_cores(
    threads_flag: int | None, study_threads: int | None, workers: int, *, cache_dir=None, log: Callable[[str], None]
) -> CoreShare:
    """This run's cores, claimed now; logs the line saying how many threads it got and why."""
    cores = host_cores()
    want, why = wanted(threads_flag, study_threads, workers, cores)
    share = CoreShare(want, folder=slots_folder(cache_dir), cores=cores, active=enabled(), log=log)
    log(share.line(why))
    return share


def preview(threads_flag: int | None, study_threads: int | None, workers: int, *, cache_dir=None) -> str:
    """For a `--workers` supervisor, which holds no core itself: the cores free now and what each worker will claim."""
    cores = host_cores()
    want, why = wanted(threads_flag, study_threads, workers, cores)
    each = f"{workers} workers, each claiming up to {want} torch thread{'s' if want != 1 else ''} per trial" + (
        f" ({why})" if why else ""
    )
    if not enabled():
        return f"{cores} cores, shared with no other run ({ENV}=0): {each}"
    holders = _holders(slots_folder(cache_dir), cores)
    pids = sorted({pid for pid, _ in holders.values()})
    held = (
        f"{len(holders)} held by other runs (pids {', '.join(map(str, pids))})"
        if holders
        else "none held by another run"
    )
    return f"{cores} cores, {held}: {each}"


def _holders(folder: Path, cores: int) -> dict[int, tuple[int, str]]:
    """Slot -> (pid, holder) as written by live holders; a dead holder's pid stays in its file, unlocked."""
    out = {}
    for slot in range(cores):
        try:
            pid, _, holder = (folder / f"slot-{slot}").read_text().strip().partition(" ")
        except FileNotFoundError:
            continue
        if pid.isdigit() and _alive(int(pid)):
            out[slot] = (int(pid), holder)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


__all__ = ["CoreShare", "share_cores", "preview", "wanted", "host_cores", "ENV"]
