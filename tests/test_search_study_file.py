import copy
from pathlib import Path

import pytest

from mfha.errors import ConfigError
from search import load_study_file, parse_bytes, parse_study

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "study": {"name": "t", "n_trials": 4},
    "budget": {"params": 20_000, "tolerance": 0.2},
    "space": {
        "depth": {"min": 1, "max": 2},
        "width": {"min": 16, "max": 64, "step": 2},
        "families": ["uniform", "fractal"],
        "uniform": {"n": {"min": 1, "max": 2}, "size": [8, 16]},
        "fractal": {"base": [16], "levels": {"min": 2, "max": 3}},
    },
    "training": {"max_steps": 10, "seq_len": 16, "eval_interval": 5},
}


def study(**changes):
    """BASE with dotted-key changes; a value of None deletes the key."""
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        t = raw
        for k in path:
            t = t.setdefault(k, {})
        if value is None:
            t.pop(last, None)
        else:
            t[last] = value
    return raw


def test_base_parses_with_defaults():
    c = parse_study(study())
    assert c.name == "t" and c.band == (16_000, 24_000)
    assert c.vocab_choices == (None,)
    assert c.storage == "sqlite:///storage/mfha.db"
    assert c.pruning.pruner == "median" and c.sampler.kind == "tpe"
    assert c.train_config().max_steps == 10


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_study_files_parse(path):
    c = load_study_file(path)
    assert c.name and c.n_trials and c.full_training


def test_unknown_section_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown section 'budgte'; did you mean 'budget'\?"):
        parse_study({**study(), "budgte": {}})


def test_unknown_key_names_it_and_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown key 'space.widht'; did you mean 'space.width'\?"):
        parse_study(study(space__widht=[32]))


def test_unknown_key_in_a_nested_table():
    with pytest.raises(ConfigError, match=r"unknown key 'space.fractal.level'; did you mean 'space.fractal.levels'\?"):
        parse_study(study(space__fractal__level=2))


def test_missing_section():
    with pytest.raises(ConfigError, match=r"missing section \[budget\]"):
        parse_study(study(budget=None))


def test_study_name_must_be_a_plain_name():
    with pytest.raises(ConfigError, match=r"study.name must be a name .*but got study.name='a b'"):
        parse_study(study(study__name="a b"))


def test_study_needs_n_trials_or_timeout():
    with pytest.raises(ConfigError, match=r"needs n_trials or timeout_s"):
        parse_study(study(study__n_trials=None))


def test_n_trials_positive():
    with pytest.raises(ConfigError, match=r"study.n_trials must be a positive integer, but got study.n_trials=0"):
        parse_study(study(study__n_trials=0))


def test_storage_must_be_a_url():
    with pytest.raises(ConfigError, match=r"study.storage must be an SQLAlchemy URL"):
        parse_study(study(study__storage="storage/mfha.db"))


def test_budget_params_positive():
    with pytest.raises(ConfigError, match=r"budget.params must be a positive integer.*budget.params=-5"):
        parse_study(study(budget__params=-5))


def test_budget_tolerance_fraction():
    with pytest.raises(
        ConfigError, match=r"budget.tolerance must be a fraction in \(0, 1\), but got budget.tolerance=1.5"
    ):
        parse_study(study(budget__tolerance=1.5))


def test_tokenizer_vocab_fixed_or_searched():
    assert parse_study(study(data__tokenizer_vocab=["char", 512])).vocab_choices == (None, 512)
    with pytest.raises(ConfigError, match=r"data.tokenizer_vocab must be 'char', an integer in \[8, 65536\]"):
        parse_study(study(data__tokenizer_vocab="bpe"))


def test_depth_range_ordered():
    with pytest.raises(
        ConfigError, match=r"space.depth must be a range \{min, max\}.*space.depth=\{'min': 3, 'max': 1\}"
    ):
        parse_study(study(space__depth={"min": 3, "max": 1}))


def test_width_choices_distinct_integers():
    with pytest.raises(ConfigError, match=r"space.width must be an integer >= 2, a list of distinct ones"):
        parse_study(study(space__width=[32, 32]))


def test_unknown_head_family_suggests_nearest():
    with pytest.raises(
        ConfigError, match=r"space.families must list head families .*but got 'fractl'; did you mean 'fractal'\?"
    ):
        parse_study(study(space__families=["uniform", "fractl"]))


def test_listed_family_needs_its_table():
    with pytest.raises(ConfigError, match=r"space.families lists 'geometric' but \[space.geometric\] is missing"):
        parse_study(study(space__families=["uniform", "fractal", "geometric"]))


def test_family_table_needs_the_family_listed():
    with pytest.raises(ConfigError, match=r"\[space.fractal\] is given but space.families does not list 'fractal'"):
        parse_study(study(space__families=["uniform"]))


def test_every_head_combination_must_be_valid():
    # fractal base 16 over 4 levels would need heads of size 2 (< 4)
    with pytest.raises(
        ConfigError, match=r"space.fractal: the combination base=16, levels=4, split=2 is not a valid head set"
    ):
        parse_study(study(space__fractal={"base": [16], "levels": {"min": 2, "max": 4}}))


def test_odd_head_size_rejected():
    with pytest.raises(
        ConfigError, match=r"space.uniform: the combination n=1, size=9 is not a valid head set .*even integer"
    ):
        parse_study(study(space__uniform={"n": [1], "size": [9]}))


def test_explicit_sizes_must_be_lists():
    with pytest.raises(ConfigError, match=r"space.explicit.sizes must be a list of head-size lists"):
        parse_study(
            study(
                space__families=["explicit"],
                space__uniform=None,
                space__fractal=None,
                space__explicit={"sizes": [32, 16]},
            )
        )


def test_head_mix_choices():
    with pytest.raises(ConfigError, match=r"space.head_mix must be one of shared, per_layer"):
        parse_study(study(space__head_mix="mixed"))


def test_lr_range():
    with pytest.raises(ConfigError, match=r"space.lr must be a range \{min, max\} with 0 < min < max"):
        parse_study(study(space__lr={"min": 0.1, "max": 0.01}))


def test_batch_size_is_not_a_range():
    with pytest.raises(ConfigError, match=r"space.batch_size must be a batch size or a list of them"):
        parse_study(study(space__batch_size={"min": 8, "max": 16}))


def test_training_field_error_names_the_study_key():
    with pytest.raises(
        ConfigError, match=r"training.max_steps must be a positive integer, but got training.max_steps=0"
    ):
        parse_study(study(training__max_steps=0))


def test_training_unknown_field_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown key 'training.max_step'; did you mean 'training.max_steps'\?"):
        parse_study(study(training__max_step=10))


def test_searched_and_fixed_lr_conflict():
    with pytest.raises(ConfigError, match=r"training.lr is set but \[space\] searches lr"):
        parse_study(study(training__lr=0.01, space__lr={"min": 1e-3, "max": 1e-2}))


def test_model_max_seq_len_covers_seq_len():
    with pytest.raises(ConfigError, match=r"model.max_seq_len must be >= training.seq_len=16"):
        parse_study(study(model__max_seq_len=8))


def test_ram_limit_sizes_and_auto():
    assert parse_study(study(pruning__ram_limit="1.5 GiB")).pruning.ram_limit == int(1.5 * 2**30)
    assert parse_study(study(pruning__ram_limit=123456789)).pruning.ram_limit == 123456789
    assert parse_study(study(pruning__ram_limit="auto")).pruning.ram_limit == "auto"
    with pytest.raises(
        ConfigError, match=r"pruning.ram_limit must be a positive number of bytes or a size like '2 GiB'"
    ):
        parse_study(study(pruning__ram_limit="lots"))


def test_unknown_pruner_suggests_nearest():
    with pytest.raises(
        ConfigError,
        match=r"pruning.pruner must be one of median, .*but got pruning.pruner='hyperbnd'; did you mean 'hyperband'\?",
    ):
        parse_study(study(pruning__pruner="hyperbnd"))


def test_pruning_warmup_non_negative():
    with pytest.raises(ConfigError, match=r"pruning.warmup_steps must be an integer >= 0"):
        parse_study(study(pruning__warmup_steps=-1))


def test_sampler_kind():
    with pytest.raises(ConfigError, match=r"sampler.kind must be one of tpe, random"):
        parse_study(study(sampler__kind="cmaes"))


def test_full_training_only_changes_length():
    with pytest.raises(ConfigError, match=r"unknown key 'full_training.lr'"):
        parse_study(study(full_training__lr=0.1))
    with pytest.raises(ConfigError, match=r"full_training.max_steps must be a positive integer"):
        parse_study(study(full_training__max_steps=-1))


def test_threads_non_negative():
    with pytest.raises(ConfigError, match=r"training.threads must be an integer >= 0"):
        parse_study(study(training__threads=-2))


def test_missing_file_suggests_nearest(tmp_path):
    (tmp_path / "smoke.toml").write_text("")
    with pytest.raises(ConfigError, match=r"study file .*smok.toml' does not exist; did you mean .*smoke.toml'\?"):
        load_study_file(tmp_path / "smok.toml")


def test_malformed_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nname = 1\n")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_study_file(bad)


def test_cli_overrides_are_validated():
    c = parse_study(study())
    assert c.with_overrides(n_trials=9, dataset="x", storage="sqlite:///a.db").n_trials == 9
    with pytest.raises(ConfigError, match=r"--n-trials must be a positive integer"):
        c.with_overrides(n_trials=0)


@pytest.mark.parametrize(
    "text,expected", [("2 GiB", 2 * 2**30), ("800MB", 800 * 10**6), ("1.5 kib", 1536), (4096, 4096)]
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text, "k") == expected


TOKENS = {
    "training__max_steps": None,
    "training__eval_interval": None,
    "training__tokens": 4096,
    "training__eval_tokens": 1024,
}


def test_token_budget_sets_each_trials_steps_from_its_batch_size():
    c = parse_study(study(**TOKENS, training__warmup_tokens=512, pruning__warmup_tokens=2048))
    assert (c.tokens, c.eval_tokens, c.warmup_tokens, c.step_unit, c.max_resource, c.eval_every) == (
        4096,
        1024,
        512,
        "tokens",
        4096,
        1024,
    )
    assert c.pruning.warmup_steps == 2048  # the loss pruner counts Optuna steps, i.e. tokens here
    small, big = c.train_config(batch_size=4), c.train_config(batch_size=16)
    assert (small.max_steps, small.warmup_steps, small.eval_tokens) == (64, 8, 1024)
    assert (big.max_steps, big.warmup_steps) == (16, 2)


def test_token_budget_defaults_to_fifths_and_five_percent_warmup():
    c = parse_study(study(**{**TOKENS, "training__eval_tokens": None}))
    assert (c.eval_tokens, c.warmup_tokens) == (819, 205)


def test_report_step_is_the_token_count_of_the_evaluation():
    c = parse_study(study(**TOKENS))
    assert c.report_step({"step": 70, "tokens": 1120}, last=False) == 1024
    assert c.report_step({"step": 256, "tokens": 4096}, last=True) == 4096
    assert parse_study(study()).report_step({"step": 5, "tokens": 80}, last=False) == 5


@pytest.mark.parametrize(
    "key,name", [("max_steps", "tokens"), ("eval_interval", "eval_tokens"), ("warmup_steps", "warmup_tokens")]
)
def test_step_counts_beside_a_token_budget_name_the_token_key(key, name):
    with pytest.raises(
        ConfigError,
        match=rf"training\.{key} counts steps, but training\.tokens sets a token budget .* use training\.{name}",
    ):
        parse_study(study(**{**TOKENS, f"training__{key}": 10}))


def test_eval_tokens_without_a_budget_names_training_tokens():
    with pytest.raises(ConfigError, match=r"training\.eval_tokens needs training\.tokens"):
        parse_study(study(training__eval_tokens=100))


def test_token_budget_must_be_positive():
    with pytest.raises(
        ConfigError, match=r"training\.tokens must be a positive integer .*, but got training\.tokens=0\."
    ):
        parse_study(study(**{**TOKENS, "training__tokens": 0}))


def test_eval_tokens_must_fit_the_budget():
    with pytest.raises(ConfigError, match=r"training\.eval_tokens must be an integer in \[1, training\.tokens=4096\]"):
        parse_study(study(**{**TOKENS, "training__eval_tokens": 5000}))


def test_pruner_warmup_in_the_wrong_unit_names_the_right_key():
    with pytest.raises(
        ConfigError,
        match=r"pruning\.warmup_steps does not fit this study, whose pruner counts tokens.*use pruning\.warmup_tokens",
    ):
        parse_study(study(**TOKENS, pruning__warmup_steps=10))
    with pytest.raises(
        ConfigError, match=r"pruning\.min_resource_tokens does not fit this study, whose pruner counts training steps"
    ):
        parse_study(study(pruning__min_resource_tokens=10))


def test_full_training_takes_tokens_or_steps_not_both():
    with pytest.raises(ConfigError, match=r"full_training sets both tokens and max_steps; keep one of them\."):
        parse_study(study(full_training__tokens=1000, full_training__max_steps=10))


def test_validation_section_sets_top_and_seeds():
    assert parse_study(study()).validation is None
    v = parse_study(study(validation__top=2, validation__seeds=5)).validation
    assert (v.top, v.seeds, v.families) == (2, 5, True)


def test_validation_needs_two_seeds():
    with pytest.raises(
        ConfigError,
        match=r"validation\.seeds must be an integer >= 2 \(an interval needs two seeds\), but got validation\.seeds=1\.",
    ):
        parse_study(study(validation__seeds=1))


def test_unknown_validation_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown key 'validation\.seed'; did you mean 'validation\.seeds'\?"):
        parse_study(study(validation__seed=3))


def test_baseline_sizes_must_be_sizes_of_the_space():
    with pytest.raises(ConfigError, match=r"baselines\.sizes must be sizes that space\.uniform\.size allows \(8, 16\)"):
        parse_study(study(baselines__sizes=[32]))


def test_baseline_sizes_need_uniform_heads_in_the_space():
    with pytest.raises(ConfigError, match=r"baselines\.sizes needs 'uniform' in space\.families"):
        parse_study(study(space__families=["fractal"], space__uniform=None, baselines__sizes=[8]))


def test_baselines_can_be_turned_off():
    assert parse_study(study(baselines__enabled=False)).baselines.enabled is False


def test_a_relative_study_path_missing_here_is_looked_up_in_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # python /path/to/run_search.py run from another folder: its default study
    assert load_study_file("studies/smoke.toml").name == "smoke"
    with pytest.raises(ConfigError, match=r"study file 'studies/smoek\.toml' does not exist"):
        load_study_file("studies/smoek.toml")


def test_objectives_default_to_val_bpc_alone():
    config = parse_study(study())
    assert config.objectives == ("val_bpc",) and config.cost_kinds == ()


def test_objectives_name_the_costs_to_measure():
    config = parse_study(study(study__objectives=["val_bpc", "decode_cost", "train_cost"], cost__seconds=0.5))
    assert config.cost_kinds == ("decode", "train") and config.cost_seconds == 0.5


@pytest.mark.parametrize(
    "objectives", [["train_cost"], ["val_bpc", "speed"], ["val_bpc", "train_cost", "train_cost"], "val_bpc", []]
)
def test_objectives_start_with_val_bpc_then_known_costs(objectives):
    with pytest.raises(
        ConfigError, match=r"study.objectives must be \['val_bpc'\] followed by any of 'train_cost', 'decode_cost'"
    ):
        parse_study(study(study__objectives=objectives))


def test_cost_section_needs_a_cost_objective():
    with pytest.raises(
        ConfigError, match=r"\[cost\] is given but study.objectives has no cost; add 'train_cost' or 'decode_cost'"
    ):
        parse_study(study(cost__seconds=1.0))


@pytest.mark.parametrize("seconds", [0, -1, 61, "2"])
def test_cost_seconds_in_range(seconds):
    with pytest.raises(ConfigError, match=r"cost.seconds must be a number of seconds in \(0, 60\]"):
        parse_study(study(study__objectives=["val_bpc", "train_cost"], cost__seconds=seconds))


def test_hyperband_cannot_prune_a_multi_objective_study():
    with pytest.raises(
        ConfigError,
        match=r"pruning.pruner='hyperband' cannot prune a multi-objective study .*; use one of median, percentile",
    ):
        parse_study(study(study__objectives=["val_bpc", "train_cost"], pruning__pruner="hyperband"))
