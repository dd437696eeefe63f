import optuna
import pytest
from optuna.trial import TrialState

from search import MemoryAwarePruner, make_loss_pruner, parse_study
from search.run.memory import FORECAST_ATTR, MIB

optuna.logging.set_verbosity(optuna.logging.WARNING)
GIB = 2**30


def study_with(pruner):
    return optuna.create_study(pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))


def finished_trial(study, curve, state=TrialState.COMPLETE):
    trial = study.ask()
    for step, v in curve:
        trial.report(v, step)
        trial.should_prune()  # rung-based pruners record the trial's rungs here
    study.tell(trial, curve[-1][1] if state == TrialState.COMPLETE else None, state=state)


def test_forecast_over_the_limit_prunes_before_any_report():
    pruner = MemoryAwarePruner(optuna.pruners.NopPruner(), memory_limit=GIB)
    study = study_with(pruner)
    trial = study.ask()
    trial.set_user_attr(FORECAST_ATTR, 1.5 * GIB / MIB)
    assert trial.should_prune()
    assert (
        pruner.forecast_verdict(1.5 * GIB / MIB) == "RAM forecast 1.50 GiB > limit 1.00 GiB: pruned before allocation"
    )


def test_forecast_under_the_limit_trains():
    study = study_with(MemoryAwarePruner(optuna.pruners.NopPruner(), memory_limit=GIB))
    trial = study.ask()
    trial.set_user_attr(FORECAST_ATTR, 900.0)
    assert not trial.should_prune()
    trial.report(3.0, 10)
    assert not trial.should_prune()


def test_no_limit_never_prunes_for_memory():
    study = study_with(MemoryAwarePruner(optuna.pruners.NopPruner(), memory_limit=None))
    trial = study.ask()
    trial.set_user_attr(FORECAST_ATTR, 10**9)
    assert not trial.should_prune()


def test_measured_memory_verdict_has_the_numbers():
    pruner = MemoryAwarePruner(optuna.pruners.NopPruner(), memory_limit=512 * MIB)
    assert pruner.measured_verdict(500 * MIB, 40) is None
    assert (
        pruner.measured_verdict(600 * MIB, 40)
        == "RAM measured 600 MiB > limit 512 MiB after step 40: trial process stopped"
    )
    assert "before the first evaluation" in pruner.measured_verdict(600 * MIB, None)


def test_lagging_loss_is_pruned_by_the_median_pruner_with_a_reason():
    loss = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=20)
    pruner = MemoryAwarePruner(loss, memory_limit=GIB, kind="median")
    study = study_with(pruner)
    finished_trial(study, [(10, 4.0), (20, 3.0), (30, 2.5)])
    finished_trial(study, [(10, 4.2), (20, 3.2), (30, 2.7)])
    good = study.ask()
    good.report(2.9, 20)
    assert not good.should_prune()
    study.tell(good, 2.9)
    lagging = study.ask()
    lagging.report(5.0, 10)
    assert not lagging.should_prune()  # still in the pruner's warm-up
    lagging.report(4.5, 20)
    assert lagging.should_prune()
    reason = pruner.loss_reason(study, lagging.number, 20, 4.5)
    assert (
        reason
        == "lagging loss (median pruner): val_bpc 4.5000 at step 20; complete trials at step 20: median 3.0000, best 2.9000 (n=3)"
    )
    study.tell(lagging, state=TrialState.PRUNED)


BASE = {
    "study": {"name": "p", "n_trials": 1},
    "budget": {"params": 1000},
    "space": {"depth": 1, "width": 16, "families": "uniform", "uniform": {"n": 1, "size": 8}},
}


@pytest.mark.parametrize(
    "kind,cls",
    [
        ("median", optuna.pruners.MedianPruner),
        ("percentile", optuna.pruners.PercentilePruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("wilcoxon", optuna.pruners.WilcoxonPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_each_pruner_kind(kind, cls):
    config = parse_study({**BASE, "pruning": {"pruner": kind, "warmup_steps": 100}})
    assert isinstance(make_loss_pruner(config.pruning, max_steps=1000, eval_interval=50), cls)


def test_successive_halving_prunes_through_the_composed_pruner():
    config = parse_study({**BASE, "pruning": {"pruner": "successive_halving", "reduction_factor": 2}})
    loss = make_loss_pruner(config.pruning, max_steps=400, eval_interval=100)
    study = study_with(MemoryAwarePruner(loss, memory_limit=None, kind="successive_halving"))
    for v in (2.0, 2.1, 2.2):
        finished_trial(study, [(100, v), (200, v - 0.5)])
    bad = study.ask()
    bad.report(9.0, 100)
    assert bad.should_prune()
