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
    with pytest.raises(ConfigError, match=r"budget.tolerance must be a fraction in \(0, 1\), but got budget.tolerance=1.5"):
        parse_study(study(budget__tolerance=1.5))


def test_tokenizer_vocab_fixed_or_searched():
    assert parse_study(study(data__tokenizer_vocab=["char", 512])).vocab_choices == (None, 512)
    with pytest.raises(ConfigError, match=r"data.tokenizer_vocab must be 'char', an integer in \[8, 65536\]"):
        parse_study(study(data__tokenizer_vocab="bpe"))


def test_depth_range_ordered():
    with pytest.raises(ConfigError, match=r"space.depth must be a range \{min, max\}.*space.depth=\{'min': 3, 'max': 1\}"):
        parse_study(study(space__depth={"min": 3, "max": 1}))


def test_width_choices_distinct_integers():
    with pytest.raises(ConfigError, match=r"space.width must be an integer >= 2, a list of distinct ones"):
        parse_study(study(space__width=[32, 32]))


def test_unknown_head_family_suggests_nearest():
    with pytest.raises(ConfigError, match=r"space.families must list head families .*but got 'fractl'; did you mean 'fractal'\?"):
        parse_study(study(space__families=["uniform", "fractl"]))


def test_listed_family_needs_its_table():
    with pytest.raises(ConfigError, match=r"space.families lists 'geometric' but \[space.geometric\] is missing"):
        parse_study(study(space__families=["uniform", "fractal", "geometric"]))


def test_family_table_needs_the_family_listed():
    with pytest.raises(ConfigError, match=r"\[space.fractal\] is given but space.families does not list 'fractal'"):
        parse_study(study(space__families=["uniform"]))


def test_every_head_combination_must_be_valid():
    # fractal base 16 over 4 levels would need heads of size 2 (< 4)
    with pytest.raises(ConfigError, match=r"space.fractal: the combination base=16, levels=4, split=2 is not a valid head set"):
        parse_study(study(space__fractal={"base": [16], "levels": {"min": 2, "max": 4}}))


def test_odd_head_size_rejected():
    with pytest.raises(ConfigError, match=r"space.uniform: the combination n=1, size=9 is not a valid head set .*even integer"):
        parse_study(study(space__uniform={"n": [1], "size": [9]}))


def test_explicit_sizes_must_be_lists():
    with pytest.raises(ConfigError, match=r"space.explicit.sizes must be a list of head-size lists"):
        parse_study(study(space__families=["explicit"], space__uniform=None, space__fractal=None, space__explicit={"sizes": [32, 16]}))


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
    with pytest.raises(ConfigError, match=r"training.max_steps must be a positive integer, but got training.max_steps=0"):
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
    with pytest.raises(ConfigError, match=r"pruning.ram_limit must be a positive number of bytes or a size like '2 GiB'"):
        parse_study(study(pruning__ram_limit="lots"))


def test_unknown_pruner_suggests_nearest():
    with pytest.raises(ConfigError, match=r"pruning.pruner must be one of median, .*but got pruning.pruner='hyperbnd'; did you mean 'hyperband'\?"):
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


@pytest.mark.parametrize("text,expected", [("2 GiB", 2 * 2**30), ("800MB", 800 * 10**6), ("1.5 kib", 1536), (4096, 4096)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text, "k") == expected
