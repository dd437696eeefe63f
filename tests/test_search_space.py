import random
import warnings

import optuna
import pytest

from mfha import GPT, count_parameters, uniform
from mfha.errors import ConfigError
from search import DERIVED_PARAMS, MAX_WASTED_SHARE, Infeasible, SearchSpace, parse_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
VOCAB = 97

RAW = {
    "study": {"name": "space", "n_trials": 1},
    "budget": {"params": 40_000, "tolerance": 0.1},
    "space": {
        "depth": {"min": 1, "max": 4},
        "width": {"min": 16, "max": 192, "step": 2},
        "families": ["uniform", "fractal", "geometric"],
        "head_mix": ["shared", "per_layer"],
        "mlp_mult": [2.0, 4.0],
        "lr": {"min": 1e-4, "max": 1e-2},
        "batch_size": [8, 16],
        "uniform": {"n": {"min": 1, "max": 4}, "size": [8, 16, 32]},
        "fractal": {"base": [16, 32], "levels": {"min": 2, "max": 3}},
        "geometric": {"largest": [16, 32], "levels": {"min": 2, "max": 3}, "count": [1, 2]},
    },
    "training": {"max_steps": 10, "seq_len": 32},
    "sampler": {"seed": 3, "startup_trials": 10},
}


def make(raw=RAW, vocab=VOCAB):
    config = parse_study(raw)
    space = SearchSpace(config, {None: vocab})
    return config, space


def ask_many(space, n, value_fn):
    study = optuna.create_study(sampler=space.make_sampler())
    wasted, kept = 0, []
    for _ in range(n):
        trial = study.ask()
        try:
            cand = space.suggest(trial)
        except Infeasible:
            wasted += 1
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        kept.append((trial.number, cand))
        study.tell(trial, value_fn(cand))
    return study, kept, wasted


def test_every_suggestion_is_inside_the_band_and_waste_is_small():
    config, space = make()
    lo, hi = config.band
    rng = random.Random(0)
    # a fake objective with structure (TPE exploits it) and noise
    study, kept, wasted = ask_many(
        space, 150, lambda c: c.model_config.n_layers + c.train_config.lr * 100 + rng.random()
    )
    assert wasted / 150 <= MAX_WASTED_SHARE
    for number, cand in kept:
        n = count_parameters(cand.model_config)
        assert lo <= n <= hi
        assert cand.attrs["n_params"] == n
        frozen = study.trials[number]
        # the solved width and repaired depth are stored as what was built
        assert frozen.params["dim"] == cand.model_config.dim
        assert frozen.params["n_layers"] == cand.model_config.n_layers
    assert {c.model_config.n_layers for _, c in kept} == {1, 2, 3, 4}
    assert len({c.attrs["family"] for _, c in kept}) > 3  # shared families and per-layer pairs both occur


def test_built_models_have_the_counted_parameters():
    config, space = make()
    lo, hi = config.band
    _, kept, _ = ask_many(space, 12, lambda c: 1.0)
    for _, cand in kept[:6]:
        model = GPT(cand.model_config)
        built = sum(p.numel() for p in model.parameters())  # the tied embedding counts once
        assert built == count_parameters(cand.model_config)
        assert lo <= built <= hi


def test_params_and_attrs_describe_the_trial():
    _, space = make()
    study, kept, _ = ask_many(space, 8, lambda c: 1.0)
    number, cand = kept[0]
    t = study.trials[number]
    assert set(DERIVED_PARAMS) <= set(t.params)
    assert "lr" in t.params and "batch_size" in t.params and "mlp_mult" in t.params
    assert cand.attrs["heads"] == cand.model_config.describe_heads()
    assert all("x" in part for part in cand.attrs["heads"].replace("|", " ").split())


def test_per_layer_mix_splits_lower_and_upper_layers():
    raw = {
        **RAW,
        "space": {
            **RAW["space"],
            "head_mix": "per_layer",
            "depth": {"min": 3, "max": 3},
            "width": {"min": 16, "max": 256, "step": 2},
        },
    }
    raw["budget"] = {"params": 60_000, "tolerance": 0.15}
    _, space = make(raw)
    study = optuna.create_study(sampler=space.make_sampler())
    cand = space.suggest(study.ask())
    layers = cand.model_config.layer_heads
    assert len(layers) == 3 and layers[0] == layers[1]  # ceil(3/2) lower layers share the first spec
    assert " | " in cand.attrs["heads"]


def test_infeasible_points_are_reported_and_build_nothing():
    # 1 layer of 8 heads of 32 is ~4 * 256 * width parameters: nothing fits a 6,000 budget
    raw = {
        **RAW,
        "budget": {"params": 6_000, "tolerance": 0.05},
        "space": {
            **RAW["space"],
            "families": ["uniform"],
            "head_mix": "shared",
            "uniform": {"n": [8], "size": [32]},
            "fractal": None,
            "geometric": None,
        },
    }
    raw["space"] = {k: v for k, v in raw["space"].items() if v is not None}
    _, space = make(raw, vocab=20)
    share, example = space.infeasible_share(n=50)
    assert share == 1.0 and "no depth in 1..4" in example
    study = optuna.create_study(sampler=space.make_sampler())
    with pytest.raises(Infeasible, match=r"8x32 .* inside 5,700..6,300 parameters; closest: depth 1 at width 16"):
        space.suggest(study.ask())


def test_budget_smaller_than_the_embedding():
    _, space = make(vocab=5000)
    with pytest.raises(
        ConfigError,
        match=r"budget.params=40000 .* smaller than the embedding alone \(vocab 5000 x narrowest width 16 = 80000\)",
    ):
        space.check_budget()


def test_depth_repair_moves_to_a_feasible_depth_instead_of_wasting():
    # four heads of 32: only shallow models fit the budget, so deep proposals are repaired
    raw = {
        **RAW,
        "space": {
            **RAW["space"],
            "families": ["uniform"],
            "head_mix": "shared",
            "depth": {"min": 1, "max": 6},
            "uniform": {"n": [4], "size": [32]},
        },
    }
    raw["space"] = {k: v for k, v in raw["space"].items() if k not in ("fractal", "geometric")}
    _, space = make(raw)
    feasible = set()
    for mlp in (2.0, 4.0):
        plan, _ = space._plan((uniform(4, 32),), mlp, VOCAB)
        feasible |= set(plan)
    assert feasible and max(feasible) < 6
    study, kept, wasted = ask_many(space, 30, lambda c: 1.0)
    assert wasted == 0
    assert {c.model_config.n_layers for _, c in kept} <= feasible


def test_suggestion_time_stays_small():
    _, space = make()
    study, _, _ = ask_many(space, 60, lambda c: random.random())
    import time

    t = time.perf_counter()
    trial = study.ask()
    space.suggest(trial)
    assert time.perf_counter() - t < 1.0


def test_needs_the_space_sampler():
    _, space = make()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TypeError, match="SpaceSampler"):
            space.suggest(study.ask())


def test_vocab_sizes_must_cover_the_choices():
    config = parse_study({**RAW, "data": {"tokenizer_vocab": ["char", 256]}})
    with pytest.raises(ConfigError, match=r"vocabulary size of every data.tokenizer_vocab choice"):
        SearchSpace(config, {None: 97})
