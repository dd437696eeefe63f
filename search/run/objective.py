"""The objective: a trial's configuration from the space, a memory check, then training in a child.

Each trial trains in its own process, forked from a forkserver that has torch and mfha imported
already (so start-up costs milliseconds). The study process reports each evaluation to Optuna,
answers the child's "continue?" with the pruner's verdict, and watches the child's RSS against the
limit; a crossing, an out-of-memory error or a crash ends that trial only, never the study.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from mfha.config import ModelConfig, TrainConfig
from mfha.errors import MFHAError
from search.run.artifacts import upload_trial_artifacts, write_config_files, write_result_files
from search.run.child import serve
from search.run.forkserver import PRELOAD
from search.run.memory import (
    FORECAST_ATTR,
    MIB,
    MemoryAwarePruner,
    forecast_peak,
    measured_verdict,
    rss,
    trial_peak,
    watcher,
)
from search.store.fast import FastReadRDBStorage
from search.study.space import Candidate, Infeasible, SearchSpace
from search.study.trials import BASELINE
from search.study.types import StudyConfig
from search.study.views import val_bpc_view

JOIN_TIMEOUT_S = 10.0


class TrialFailed(MFHAError):
    """A trial's process crashed or hit a config error; the trial is FAIL and the study goes on."""


class Progress(Protocol):
    def trial_started(self, number: int, steps: int, label: str) -> None: ...
    def trial_eval(self, step: int, metrics: dict) -> None: ...


@dataclass
class TrialSettings:
    """What every trial of one run shares (nothing global)."""

    cache_dir: Path
    threads: int
    device: str  # "cpu" or "cuda": where trials train
    ram_limit: int  # bytes, the whole trial process (RSS)
    gpu_limit: int | None = None  # bytes of torch.cuda memory, CUDA only
    baseline_bytes: int | None = None  # the framework's RSS, for the CPU forecast
    artifacts: Any = None  # an optuna ArtifactStore, or None for no uploads
    scratch: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    watch_interval_s: float = 0.05


def config_key(model_config: ModelConfig, train_config: TrainConfig) -> str:
    blob = json.dumps({"model": model_config.to_dict(), "train": train_config.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class Objective:
    """Callable for `study.optimize`: returns the final validation bits/char of one trial, and in a
    multi-objective study its costs too (`config.objectives`: val_bpc, then train_cost / decode_cost).

    `propose` turns a trial into a Candidate (default: the search space samples one); validation
    passes its own, which retrains a stored configuration with another seed. `reuse`: a trial whose
    configuration an earlier trial trained takes that trial's result instead of training again.
    """

    def __init__(
        self,
        config: StudyConfig,
        space: SearchSpace,
        pruner: MemoryAwarePruner,
        settings: TrialSettings,
        *,
        progress: Progress | None = None,
        propose: Callable[[optuna.Trial], Candidate] | None = None,
        reuse: bool = True,
    ) -> None:
        self.config = config
        self.space = space
        self.propose = propose or space.suggest
        self.reuse = reuse
        self.pruner = pruner
        self.settings = settings
        self.progress = progress
        self.children_started = 0
        self.current_trial_id: int | None = None  # the trial in hand, so an interrupted run can close it
        self.current_trial_number: int | None = None
        self.overhead_s = 0.0  # time in this process per trial outside the child's training, summed
        self.train_s = 0.0
        p = config.pruning
        # Optuna's median and percentile pruners never prune before n_warmup_steps
        self.no_prune_before = p.warmup_steps if p.pruner in ("median", "percentile") else 0
        self.multi = len(config.objectives) > 1
        self.extra_attrs: dict[str, Any] = {}  # written on every trial with its own attrs
        # raises a pending Ctrl-C / SIGTERM where no storage write is under way (set by the runner)
        self.check_interrupt: Callable[[], None] = lambda: None
        self._exiting: list[multiprocessing.process.BaseProcess] = []
        self._spare: tuple[multiprocessing.process.BaseProcess, Any] | None = None
        self._spare_job: tuple[threading.Thread, dict] | None = None
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(PRELOAD)  # no effect once start_forkserver() has run

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.current_trial_id = trial._trial_id
        self.current_trial_number = trial.number
        self._train_s = 0.0
        t0 = time.perf_counter()
        try:
            return self._run(trial)
        finally:
            self.train_s += self._train_s
            self.overhead_s += time.perf_counter() - t0 - self._train_s

    def _run(self, trial: optuna.Trial) -> float | list[float]:
        try:
            cand = self.propose(trial)
        except Infeasible as e:
            set_attrs(trial, wasted=True, allocated=False, prune_kind="infeasible", prune_reason=f"infeasible: {e}")
            raise optuna.TrialPruned(f"infeasible: {e}") from None
        mc, tc = cand.model_config, cand.train_config
        key = config_key(mc, tc)
        earlier = _find_same(trial.study, key) if self.reuse else None
        if earlier is not None:
            return self._reuse(trial, earlier)
        forecast = forecast_peak(mc, tc, self.settings.device, self.settings.baseline_bytes)
        trial.set_user_attr(FORECAST_ATTR, round(forecast / MIB, 1))
        attrs = {
            **cand.attrs,
            "config_key": key,
            "model_config": mc.to_dict(),
            "train_config": tc.to_dict(),
            **self.extra_attrs,
        }
        # the composed pruner sees the forecast before anything is allocated
        if self._should_prune(trial):
            reason = self.pruner.forecast_verdict(forecast / MIB) or "pruned before allocation"
            set_attrs(trial, **attrs, allocated=False, prune_kind="memory_forecast", prune_reason=reason)
            self._upload(trial, lambda folder: write_config_files(folder, mc, tc))
            raise optuna.TrialPruned(reason)
        return self._train_in_child(trial, cand, attrs)

    def _reuse(self, trial: optuna.Trial, earlier: FrozenTrial) -> float | list[float]:
        for step, v in sorted(earlier.intermediate_values.items()):
            self._report(trial, v, step)
        keep = {k: v for k, v in earlier.user_attrs.items() if k not in ("reused_from", "role")}
        set_attrs(trial, **keep, reused_from=earlier.number)
        if earlier.state == TrialState.COMPLETE:
            if self.multi:
                return earlier.values
            assert earlier.value is not None  # a COMPLETE single-objective trial has its value
            return earlier.value
        reason = f"same configuration as trial {earlier.number}: {earlier.user_attrs.get('prune_reason', 'pruned')}"
        trial.set_user_attr("prune_reason", reason)
        raise optuna.TrialPruned(reason)

    def _report(self, trial: optuna.Trial, value: float, step: int) -> None:
        """An intermediate val_bpc; in a multi-objective study (whose `Trial.report` Optuna refuses)
        written to the storage directly, as the pruners' val_bpc view reads it (search/study/views.py)."""
        if not self.multi:
            trial.report(value, step)
            return
        trial.storage.set_trial_intermediate_value(trial._trial_id, step, value)
        trial._cached_frozen_trial.intermediate_values[step] = value

    def _should_prune(self, trial: optuna.Trial) -> bool:
        if not self.multi:
            return trial.should_prune()
        # the study's own pruner, as Trial.should_prune asks (a validation study's never prunes for loss)
        return trial.study.pruner.prune(val_bpc_view(trial.study), trial.storage.get_trial(trial._trial_id))

    def _train_in_child(self, trial: optuna.Trial, cand: Candidate, attrs: dict[str, Any]) -> float | list[float]:
        mc, tc = cand.model_config, cand.train_config
        s = self.settings
        # threads per trial: the process was started ahead, and the run's share of the cores may have changed since
        request = {"model_config": mc.to_dict(), "train_config": tc.to_dict(), "threads": s.threads}
        if self.config.cost_kinds:
            request["cost"] = {"kinds": list(self.config.cost_kinds), "seconds": self.config.cost_seconds}
        if self.progress is not None:
            self.progress.trial_started(
                trial.number, tc.max_steps, f"{cand.attrs['heads']} ({cand.attrs['n_params']:,} params)"
            )
        self._reap()
        proc, parent_conn = self._take_spare() or self._start()
        parent_conn.send(request)
        # the next trial's process starts and loads its data while this one trains, so it is ready
        # the moment this trial is recorded and the next one sampled (the forkserver round trip runs
        # in a thread: it is mostly waiting)
        self._start_spare()
        self.children_started += 1
        done = False
        # a baseline is the reference the search is judged against: it trains to the end
        loss_pruning = trial.user_attrs.get("role") != BASELINE
        history: list[dict] = []
        peak_rss, last_step = 0, None
        loss_reason: str | None = None
        outcome: tuple = ("died",)
        try:
            assert proc.pid is not None  # _start() and _take_spare() give started processes
            proc_watch = watcher(proc.pid)
            # the child loads its data and builds its model meanwhile; its first evaluation waits for us
            set_attrs(trial, **attrs, allocated=True)
            self._upload(trial, lambda folder: write_config_files(folder, mc, tc))
            while True:
                self.check_interrupt()
                ready = parent_conn.poll(s.watch_interval_s)
                rss_now = rss(proc_watch)
                peak_rss = max(peak_rss, rss_now)
                verdict = measured_verdict(self.pruner, s.device, s.ram_limit, rss_now, last_step)
                if verdict is not None:
                    _kill(proc)
                    outcome = ("memory", verdict)
                    break
                if not ready:
                    if not proc.is_alive() and not parent_conn.poll(0):
                        break
                    continue
                try:
                    msg = parent_conn.recv()
                except EOFError:
                    break
                if msg[0] == "eval":
                    _, step, metrics = msg
                    last_step = step
                    history.append(metrics)
                    last = step >= tc.max_steps
                    at = self.config.report_step(metrics, last=last)  # training steps, or tokens
                    if last or at < self.no_prune_before or not loss_pruning:
                        # the last evaluation (nothing left to save: a trial that trained to the end is
                        # COMPLETE), one in the pruner's warm-up, or a baseline's: the child need not wait for us
                        parent_conn.send("continue")
                        self._report(trial, metrics["val_bpc"], at)
                    else:
                        self._report(trial, metrics["val_bpc"], at)
                        stop = self._should_prune(trial)
                        parent_conn.send("stop" if stop else "continue")
                        if stop:
                            loss_reason = self.pruner.loss_reason(trial.study, trial.number, at, metrics["val_bpc"])
                    if self.progress is not None:
                        self.progress.trial_eval(step, metrics)
                else:
                    outcome = msg
                    done = msg[0] == "done"
                    break
        except BaseException as e:
            # Ctrl-C / SIGTERM / a storage error: the child must not outlive the trial it belongs to
            _kill(proc)
            if isinstance(e, KeyboardInterrupt):
                trial.set_user_attr("fail_reason", "interrupted")
            raise
        finally:
            parent_conn.close()
            if done:
                self._exiting.append(proc)  # it has sent its result; let it exit while we record the trial
            else:
                proc.join(JOIN_TIMEOUT_S)
                if proc.is_alive():
                    _kill(proc)
        return self._finish(trial, cand, outcome, history, peak_rss, loss_reason, proc.exitcode)

    def _start(self) -> tuple[multiprocessing.process.BaseProcess, Any]:
        """A trial process, started ahead of its configuration: it loads the data, then waits."""
        s = self.settings
        common = {
            "cache_dir": str(s.cache_dir),
            "threads": s.threads,
            "gpu_limit": s.gpu_limit,
            "preload": [self.config.train_config(tokenizer_vocab=v).to_dict() for v in self.config.vocab_choices],
        }
        parent_conn, child_conn = self._ctx.Pipe()
        proc = self._ctx.Process(target=serve, args=(child_conn, common), daemon=True, name="mfha-trial")
        proc.start()
        child_conn.close()
        return proc, parent_conn

    def _start_spare(self) -> None:
        box: dict[str, Any] = {}

        def start() -> None:
            try:
                box["spare"] = self._start()
            except Exception as e:  # noqa: BLE001 - the next trial starts its process itself and meets the error there
                box["error"] = e

        thread = threading.Thread(target=start, name="mfha-spare-trial", daemon=True)
        thread.start()
        self._spare_job = (thread, box)

    def _take_spare(self) -> tuple[multiprocessing.process.BaseProcess, Any] | None:
        if self._spare_job is not None:
            thread, box = self._spare_job
            self._spare_job = None
            thread.join()
            # after a failed start ("error"), the caller starts the process itself and meets the error there
            self._spare = box.get("spare")
        spare, self._spare = self._spare, None
        if spare is not None and not spare[0].is_alive():  # it died waiting (killed from outside)
            spare[1].close()
            self._exiting.append(spare[0])
            return None
        return spare

    def close(self) -> None:
        """Stop the spare trial process and join the finished ones."""
        self._spare = self._take_spare()
        if self._spare is not None:
            proc, conn = self._spare
            self._spare = None
            with contextlib.suppress(OSError):  # it is gone already; the join below reaps it
                conn.send(None)
            conn.close()
            self._exiting.append(proc)
        self._reap(wait=True)

    def _reap(self, *, wait: bool = False) -> None:
        """Join trial processes that finished earlier; without `wait`, only those already gone (freeing
        a large address space takes a while, and the next trial need not wait for it)."""
        still = []
        for proc in self._exiting:
            if wait:
                proc.join(JOIN_TIMEOUT_S)
                if proc.is_alive():
                    _kill(proc)
            elif proc.is_alive():  # is_alive() also reaps a process that has exited
                still.append(proc)
        self._exiting = still

    def _finish(
        self,
        trial: optuna.Trial,
        cand: Candidate,
        outcome: tuple,
        history: list[dict],
        peak_rss: int,
        loss_reason: str | None,
        exitcode: int | None,
    ) -> float | list[float]:
        mc = cand.model_config
        result = outcome[1] if outcome[0] == "done" else {}
        train_s = self._train_s = result.get("train_s", 0.0)
        last = history[-1] if history else {}
        peak = trial_peak(self.settings.device, peak_rss, last)
        final = {"peak_mem_mib": round(peak / MIB, 1), "steps": last.get("step", 0), "tokens": last.get("tokens", 0)}
        if last:
            final["tokens_per_s"] = round(last["tokens_per_s"], 1)
        if train_s:
            final["train_s"] = round(train_s, 3)
        if history:
            title = f"{self.config.name} trial {trial.number}: {mc.describe_heads()}"
            self._upload(trial, lambda folder: write_result_files(folder, history, title))

        kind, reason = None, None
        if outcome[0] == "done" and loss_reason is not None:
            kind, reason = "loss", loss_reason
        elif outcome[0] == "memory":
            kind, reason = "memory_measured", outcome[1]
        elif outcome[0] == "error" and outcome[1] in ("oom", "diverged"):
            kind = outcome[1]
            reason = f"{'out of memory' if kind == 'oom' else 'diverged'}: {outcome[2]}"
        elif outcome[0] == "died" and exitcode == -signal.SIGKILL:
            kind, reason = (
                "oom",
                f"out of memory: the trial process was killed (SIGKILL, likely the kernel's OOM killer) after step {final['steps']}",
            )
        if reason is not None:
            set_attrs(trial, **final, prune_kind=kind, prune_reason=reason)
            raise optuna.TrialPruned(reason)
        if outcome[0] != "done" or not history:
            why = (
                outcome[2]
                if outcome[0] == "error"
                else f"the trial process exited with code {exitcode} without a result"
            )
            set_attrs(trial, **final, fail_reason=why)
            raise TrialFailed(f"trial {trial.number} failed: {why}")
        costs = result.get("cost", {})
        for kind, c in costs.items():
            # the ratio is the objective; the raw speeds beside it show how much the machine's load moved
            final[f"{kind}_cost"] = round(c["ratio"], 4)
            final[f"{kind}_cost_detail"] = {
                k: (round(v, 6) if isinstance(v, float) else v) for k, v in c.items() if k != "kind"
            }
        set_attrs(trial, **final)
        value = float(history[-1]["val_bpc"])
        if not self.multi:
            return value
        return [value, *(final[f"{kind}_cost"] for kind in self.config.cost_kinds)]

    def _upload(self, trial: optuna.Trial, write: Callable[[Path], list[Path]]) -> None:
        if self.settings.artifacts is None:
            return
        folder = Path(tempfile.mkdtemp(prefix=f"trial-{trial.number}-", dir=self.settings.scratch))
        try:
            upload_trial_artifacts(self.settings.artifacts, trial, write(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _find_same(study: optuna.Study, key: str) -> FrozenTrial | None:
    """The earliest finished trial that trained (or pruned) exactly this configuration."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.user_attrs.get("config_key") == key and "reused_from" not in t.user_attrs:
            return t
    return None


def set_attrs(trial: optuna.Trial, **attrs: Any) -> None:
    """User attrs in one storage write (FastReadRDBStorage), else one by one."""
    backend = getattr(trial.storage, "_backend", trial.storage)  # under Optuna's cache wrapper
    if not isinstance(backend, FastReadRDBStorage):
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return
    backend.set_trial_user_attrs(trial._trial_id, attrs)
    # what Trial.set_user_attr also does: keep the trial's own view (trial.user_attrs) current
    trial._cached_frozen_trial.user_attrs.update(attrs)


def _kill(proc: multiprocessing.process.BaseProcess) -> None:
    if proc.pid is not None and proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(JOIN_TIMEOUT_S)


__all__ = ["Objective", "TrialSettings", "TrialFailed", "config_key", "Progress", "set_attrs"]
