"""The Core-based bulk read gives exactly the trials Optuna's ORM read gives, and is faster."""

import math
import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState, create_trial

from search.store.fast import FastReadRDBStorage


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=url)
    dists = {
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "n": IntDistribution(1, 9, step=2),
        "family": CategoricalDistribution(["uniform", "fractal", None]),
    }
    for i in range(40):
        state = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL][i % 3]
        value = (math.inf if i == 3 else 0.5 + i) if state == TrialState.COMPLETE else None
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params={"lr": 10 ** -(1 + i % 3), "n": 1 + 2 * (i % 5), "family": [None, "fractal"][i % 2]},
                distributions=dists,
                user_attrs={"heads": "1x64 2x32", "cfg": {"dim": i, "heads": [{"n": 1}]}, "none": None},
                system_attrs={"artifacts:x": '{"filename": "a.png"}'},
                intermediate_values={10: 1.0 + i, 20: math.nan if i == 5 else 0.5, 30: -math.inf if i == 7 else 0.1},
            )
        )
    running = study.ask()
    running.suggest_float("lr", 1e-4, 1e-1, log=True)
    running.report(2.0, 10)
    study.enqueue_trial({"lr": 0.01})
    return url


@pytest.mark.parametrize(
    "states,included,greater",
    [
        (None, set(), -1),
        ((TrialState.COMPLETE,), set(), -1),
        (None, {2, 5, 41}, 20),
        ((TrialState.RUNNING, TrialState.WAITING), set(), -1),
    ],
)
def test_the_same_trials_as_optunas_read(url, states, included, greater):
    ours, theirs = FastReadRDBStorage(url), RDBStorage(url)
    sid = theirs.get_study_id_from_name("s")
    mine = ours._get_trials(sid, states, included, greater)
    ref = theirs._get_trials(sid, states, included, greater)
    assert len(mine) == len(ref) > 0
    for a, b in zip(mine, ref):
        assert a._trial_id == b._trial_id and a.state == b.state and a.values == b.values
        assert a.params == b.params and a.distributions == b.distributions
        assert a.user_attrs == b.user_attrs and a.system_attrs == b.system_attrs
        assert a.datetime_start == b.datetime_start and a.datetime_complete == b.datetime_complete
        assert a.intermediate_values.keys() == b.intermediate_values.keys()
        for step, v in b.intermediate_values.items():
            assert a.intermediate_values[step] == v or (math.isnan(v) and math.isnan(a.intermediate_values[step]))


def test_a_missing_study_is_a_key_error(url):
    with pytest.raises(KeyError):
        FastReadRDBStorage(url)._get_trials(999, None, set(), -1)


def test_faster_than_the_orm(url):
    ours, theirs = FastReadRDBStorage(url), RDBStorage(url)
    sid = theirs.get_study_id_from_name("s")

    def best_of(storage, n=5):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            storage._get_trials(sid, None, set(), -1)
            times.append(time.perf_counter() - t0)
        return min(times)

    assert best_of(ours) < best_of(theirs) / 2


def test_several_user_attrs_in_one_write_match_one_by_one(url):
    ours, theirs = FastReadRDBStorage(url), RDBStorage(url)
    sid = theirs.get_study_id_from_name("s")
    a, b = theirs.create_new_trial(sid), theirs.create_new_trial(sid)
    attrs = {"heads": "1x64 2x32", "n_params": 40_123, "cfg": {"dim": 48, "heads": [{"n": 1}]}, "none": None}
    ours.set_trial_user_attrs(a, attrs)
    for k, v in attrs.items():
        theirs.set_trial_user_attr(b, k, v)
    ours.set_trial_user_attrs(a, {"n_params": 7})  # an upsert, like set_trial_user_attr
    assert theirs.get_trial(a).user_attrs == {**attrs, "n_params": 7}
    assert theirs.get_trial(b).user_attrs == attrs
    theirs.set_trial_state_values(a, TrialState.COMPLETE, [1.0])
    with pytest.raises(RuntimeError):  # a finished trial stays as it was, as with Optuna's own writes
        ours.set_trial_user_attrs(a, {"late": 1})


def _take_queue(url: str, start, out) -> None:
    """A worker popping the queue as Optuna's `study.ask` does, all of them released at once."""
    study = optuna.load_study(study_name="q", storage=FastReadRDBStorage(url))
    start.wait()
    taken = []
    while (trial_id := study._pop_waiting_trial_id()) is not None:
        taken.append(trial_id)
    out.put(taken)


def test_a_queued_trial_is_taken_by_exactly_one_of_several_processes(tmp_path):
    import multiprocessing

    url = f"sqlite:///{tmp_path}/q.db"
    study = optuna.create_study(study_name="q", storage=FastReadRDBStorage(url))
    for i in range(60):
        study.enqueue_trial({"x": i})
    queued = {t._trial_id for t in study.get_trials(states=(TrialState.WAITING,))}
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_take_queue, args=(url, start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    taken = [trial_id for _ in procs for trial_id in out.get(timeout=120)]
    for p in procs:
        p.join(30)
    # before: Optuna read WAITING and then wrote RUNNING, so on SQLite two workers could both take one trial
    assert sorted(taken) == sorted(queued)
    after = {t._trial_id: t for t in study.get_trials()}
    assert all(after[i].state == TrialState.RUNNING and after[i].datetime_start is not None for i in taken)


def test_a_trial_that_is_no_longer_waiting_is_not_taken(url):
    ours = FastReadRDBStorage(url)
    study = optuna.load_study(study_name="s", storage=ours)
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]._trial_id
    assert ours.set_trial_state_values(waiting, TrialState.RUNNING) is True
    assert ours.set_trial_state_values(waiting, TrialState.RUNNING) is False  # already taken
    done = study.get_trials(states=(TrialState.COMPLETE,))[0]._trial_id
    assert ours.set_trial_state_values(done, TrialState.RUNNING) is False
    assert ours.get_trial(done).state == TrialState.COMPLETE
