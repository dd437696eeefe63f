import os

import optuna
import psutil
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from mfha import uniform
from search import Objective, TrialFailed, TrialSettings, artifact_store, make_storage, parse_study, prepare
from search.run.memory import MIB
from search.study.space import Candidate

optuna.logging.set_verbosity(optuna.logging.WARNING)


def tiny_study(dataset: str, **pruning) -> dict:
    return {
        "study": {"name": "tiny", "n_trials": 4},
        "data": {"dataset": dataset, "max_train_stories": 60, "max_val_stories": 10},
        "budget": {"params": 14_000, "tolerance": 0.2},
        "space": {
            "depth": {"min": 1, "max": 2},
            "width": {"min": 16, "max": 64, "step": 2},
            "families": ["uniform"],
            "uniform": {"n": {"min": 1, "max": 2}, "size": [8]},
            "lr": [3e-3],
            "batch_size": [8],
        },
        "training": {
            "max_steps": 20,
            "seq_len": 32,
            "eval_interval": 10,
            "eval_windows": 8,
            "warmup_steps": 5,
            "device": "cpu",
        },
        "pruning": {"pruner": "none", **pruning},
        "sampler": {"seed": 0, "startup_trials": 2},
    }


class Setup:
    def __init__(self, tmp_path, raw, *, ram_limit=None, baseline_bytes=None, progress=None):
        self.config = parse_study(raw)
        self.prep = prepare(self.config)
        if ram_limit is not None:
            self.prep.pruner.memory_limit = ram_limit
        self.storage = make_storage(f"sqlite:///{tmp_path}/s.db")
        self.study = optuna.create_study(
            study_name="tiny",
            storage=self.storage,
            sampler=self.prep.space.make_sampler(),
            pruner=self.prep.pruner,
            direction="minimize",
        )
        self.settings = TrialSettings(
            cache_dir=self.prep.cache_dir,
            threads=1,
            device="cpu",
            ram_limit=ram_limit or self.prep.ram_limit,
            baseline_bytes=self.prep.baseline_bytes if baseline_bytes is None else baseline_bytes,
            artifacts=artifact_store(tmp_path / "artifacts"),
            scratch=tmp_path,
        )
        self.objective = Objective(self.config, self.prep.space, self.prep.pruner, self.settings, progress=progress)

    def optimize(self, n):
        self.study.optimize(self.objective, n_trials=n, catch=(TrialFailed,))
        return self.study.get_trials(deepcopy=False)


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def trial_processes() -> list[psutil.Process]:
    """Live processes forked by the forkserver (grandchildren of this one): running trials."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.ppid() != os.getpid() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
def test_memory_forecast_prunes_before_anything_is_allocated(tmp_path, tinystories):
    s = Setup(tmp_path, tiny_study(tinystories), ram_limit=64 * MIB)  # below the framework alone
    before = descendants()
    trials = s.optimize(3)
    assert [t.state for t in trials] == [TrialState.PRUNED] * 3
    for t in trials:
        assert t.user_attrs["allocated"] is False
        assert t.user_attrs["prune_kind"] == "memory_forecast"
        assert t.user_attrs["forecast_peak_mib"] * MIB > 64 * MIB
        assert "pruned before allocation" in t.user_attrs["prune_reason"]
        assert not t.intermediate_values
        if "reused_from" in t.user_attrs:  # the tiny space repeats itself; a repeat copies its first result
            continue
        # the dashboard still shows what was proposed
        assert {m.filename for m in get_all_artifact_meta(t, storage=s.storage)} == {
            "model_config.json",
            "train_config.json",
        }
    assert s.objective.children_started == 0
    assert descendants() - before == set()


@pytest.mark.slow
def test_trial_trains_in_a_child_reports_and_uploads(tmp_path, tinystories):
    s = Setup(tmp_path, tiny_study(tinystories))
    (t,) = s.optimize(1)
    assert t.state == TrialState.COMPLETE
    assert sorted(t.intermediate_values) == [10, 20]
    assert t.value == t.intermediate_values[20]
    a = t.user_attrs
    assert a["allocated"] is True and a["steps"] == 20 and a["tokens_per_s"] > 0
    lo, hi = s.config.band
    assert lo <= a["n_params"] <= hi
    # peak RSS of the trial process: the framework plus a tiny model, and under the forecast
    assert 100 < a["peak_mem_mib"] <= a["forecast_peak_mib"] * 1.25
    names = {m.filename for m in get_all_artifact_meta(t, storage=s.storage)}
    assert names == {"model_config.json", "train_config.json", "metrics.csv", "loss_curve.png"}
    assert s.objective.children_started == 1
    assert s.objective.train_s > 0


@pytest.mark.slow
def test_same_configuration_reuses_the_earlier_result(tmp_path, tinystories):
    s = Setup(tmp_path, tiny_study(tinystories))
    (first,) = s.optimize(1)
    s.study.enqueue_trial(first.params)
    trials = s.optimize(1)
    again = trials[1]
    assert again.state == TrialState.COMPLETE and again.value == first.value
    assert again.user_attrs["reused_from"] == first.number
    assert again.intermediate_values == first.intermediate_values
    assert s.objective.children_started == 1


@pytest.mark.slow
def test_measured_memory_over_the_limit_stops_the_trial(tmp_path, tinystories):
    # forecast without the framework baseline (a few MiB) passes; the real process (~250 MiB) does not
    s = Setup(tmp_path, tiny_study(tinystories), ram_limit=128 * MIB, baseline_bytes=0)
    (t,) = s.optimize(1)
    assert t.state == TrialState.PRUNED
    assert t.user_attrs["allocated"] is True
    assert t.user_attrs["prune_kind"] == "memory_measured"
    assert "limit 128 MiB" in t.user_attrs["prune_reason"] and "trial process stopped" in t.user_attrs["prune_reason"]


@pytest.mark.slow
def test_a_crashing_trial_fails_and_the_study_goes_on(tmp_path, tinystories):
    s = Setup(tmp_path, tiny_study(tinystories))
    (good,) = s.optimize(1)
    mc = s.prep.space.model_config((uniform(1, 8),), 1, 32, 4.0, s.prep.vocab_sizes[None])
    mc.max_seq_len = 16  # the child's trainer rejects seq_len 32 > max_seq_len 16: a real error in the trial process
    bad = Candidate(mc, s.config.train_config(), {"heads": "1x8", "n_params": 0})
    s.study.optimize(lambda trial: s.objective._train_in_child(trial, bad, bad.attrs), n_trials=1, catch=(TrialFailed,))
    trials = s.optimize(1)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert "seq_len" in trials[1].user_attrs["fail_reason"]


@pytest.mark.slow
def test_divergence_and_a_killed_trial_process_are_pruned_with_reasons(tmp_path, tinystories):
    raw = tiny_study(tinystories)
    raw["space"]["lr"] = [50.0]
    s = Setup(tmp_path, raw)
    (t,) = s.optimize(1)
    assert t.state == TrialState.PRUNED and t.user_attrs["prune_kind"] == "diverged"
    assert "diverged: training loss became " in t.user_attrs["prune_reason"]

    class KillAtFirstEval:
        def trial_started(self, number, steps, label):
            pass

        def trial_eval(self, step, metrics):
            # what the kernel's OOM killer does: SIGKILL to the trial process
            for p in trial_processes():
                p.kill()

    s2 = Setup(tmp_path / "b", tiny_study(tinystories), progress=KillAtFirstEval())
    (t2,) = s2.optimize(1)
    assert t2.state == TrialState.PRUNED and t2.user_attrs["prune_kind"] == "oom"
    assert "SIGKILL" in t2.user_attrs["prune_reason"]


@pytest.mark.slow
def test_interrupt_closes_the_trial_and_its_process(tmp_path, tinystories):
    class InterruptAtFirstEval:
        def trial_started(self, number, steps, label):
            pass

        def trial_eval(self, step, metrics):
            raise KeyboardInterrupt

    s = Setup(tmp_path, tiny_study(tinystories), progress=InterruptAtFirstEval())
    with pytest.raises(KeyboardInterrupt):
        s.optimize(1)
    (t,) = s.study.get_trials(deepcopy=False)
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted"
    s.objective.close()  # what the runner does on the way out: the spare process, started ahead, ends too
    assert trial_processes() == []
