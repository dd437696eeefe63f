"""What a run shows and hears on the console: progress bars and a line per trial, Optuna's own
logging quieted, and Ctrl-C / SIGTERM raised only where nothing is half-written.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study.trials import FINISHED, best_trial, objective_text


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT would raise KeyboardInterrupt, so both end a trial the same way."""


class Bars:
    """A bar over trials and one over the running trial's steps; a line per finished trial."""

    def __init__(self, name: str, total: int | None, initial: int, *, enabled: bool, log) -> None:
        self.enabled = enabled
        self.log = log
        self.trials = self.steps = None
        if enabled:
            from tqdm import tqdm

            self.trials = tqdm(
                total=total, initial=initial, desc=name, unit="trial", position=0, dynamic_ncols=True, file=sys.stderr
            )
            self.steps = tqdm(
                total=1, desc="trial", unit="step", position=1, leave=False, dynamic_ncols=True, file=sys.stderr
            )

    def trial_started(self, number: int, steps: int, label: str) -> None:
        if self.steps is not None:
            self.steps.reset(total=steps)
            self.steps.set_description(f"trial {number}: {label}")

    def trial_eval(self, step: int, metrics: dict) -> None:
        if self.steps is not None:
            self.steps.update(step - self.steps.n)
            self.steps.set_postfix(val_bpc=f"{metrics['val_bpc']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        a = trial.user_attrs
        what = (
            objective_text(study, trial)
            if trial.state == TrialState.COMPLETE
            else a.get("prune_reason") or a.get("fail_reason", "")
        )
        desc = f"{a['heads']} ({a['n_params']:,} params)" if "heads" in a else ""
        if "source_trial" in a:
            desc += f", trial {a['source_trial']} seed {a['seed']}"
        secs = trial.duration.total_seconds() if trial.duration else 0.0
        line = f"trial {trial.number} {trial.state.name.lower()} in {secs:.1f} s: {desc} {what}".replace("  ", " ")
        if self.trials is not None:
            self.trials.write(line, file=sys.stderr)
            if trial.state in FINISHED:
                self.trials.update(1)
            best = best_trial(study)
            if best is not None:
                self.trials.set_postfix(best=f"{best.values[0]:.4f}")
        else:
            self.log(line)

    def close(self) -> None:
        for bar in (self.steps, self.trials):
            if bar is not None:
                bar.close()


class HeldLog:
    """A log whose lines wait for `release()`: a run's first lines (the cores it got, the study file's
    accepted changes) are held until its checks have passed, so a mistake they find is the only line."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.held: list[str] | None = []

    def __call__(self, msg: str) -> None:
        if self.held is None:
            self.log(msg)
        else:
            self.held.append(msg)

    def release(self) -> None:
        held, self.held = self.held or [], None
        for msg in held:
            self.log(msg)


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Our own line per trial replaces Optuna's (which would repeat a FAIL's traceback)."""
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(old)


class Interrupts:
    """SIGINT and SIGTERM, raised (as KeyboardInterrupt / Interrupted) only where nothing is half-written.

    A Python signal handler runs at whatever line the main thread is on. A handler that raised there
    could land inside Optuna's bookkeeping: while it recorded a finished trial, `_run_trial` then
    failed with UnboundLocalError ('updated_state') on top of the interrupt (the CI flake of the
    `--workers` SIGTERM test); while it created a trial, that trial stayed RUNNING. So the handler
    only notes the signal, and `check()` raises it once, where this run's own code waits: the
    training loop, the slot waits, the start of a trial, the end of the loop. Signals that come while
    the interrupted trial is closed (a second Ctrl-C, the kernel's SIGTERM when a supervisor dies)
    are noted and ignored, so the closing writes finish.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.raised = False
        self._old: dict = {}

    def note(self, signum: int, frame) -> None:
        self.signum = self.signum or signum

    def check(self) -> None:
        if self.signum is not None and not self.raised:
            self.raised = True
            raise KeyboardInterrupt() if self.signum == signal.SIGINT else Interrupted()

    def __enter__(self) -> Interrupts:
        try:
            self._old = {s: signal.signal(s, self.note) for s in self.SIGNALS}
        except ValueError:  # not the main thread: signals stay as they are, check() never raises
            self._old = {}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


__all__ = ["Bars", "HeldLog", "Interrupts", "Interrupted", "quiet_optuna"]
