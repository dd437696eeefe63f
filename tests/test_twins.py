"""Uniform twins of a head mix, and the verdict that compares a mix with its twins paired by seed."""

import math

import pytest
from scipy import stats

from mfha import ModelConfig, count_parameters, explicit, fractal, geometric, uniform
from mfha.errors import ConfigError
from mfha.heads import HeadSpec, twin_sizes, uniform_twin
from search.results.stats import paired_interval, twin_verdict

MIXES = {
    "fractal": fractal(base=32, levels=3),  # 1x32 2x16 4x8: width 96
    "geometric": geometric(64, 16, count=2),  # 2x64 2x32 2x16: width 224
    "explicit": explicit([32, 16, 16]),  # width 64
    "odd width": explicit([16, 6]),  # width 22: only 22 itself tiles it
}


@pytest.mark.parametrize("name", MIXES)
@pytest.mark.parametrize("size", [8, 16, 32])
def test_a_twin_keeps_the_layer_width_and_every_parameter(name, size):
    mix = MIXES[name]
    twin = uniform_twin(mix, size)
    assert twin.family == "uniform" and len(set(twin.sizes)) == 1
    assert twin.total_width == mix.total_width
    width = mix.total_width
    if width % size == 0:
        assert twin.size == size
    config = ModelConfig(vocab_size=97, dim=48, n_layers=2, heads=mix)
    twin_config = ModelConfig(vocab_size=97, dim=48, n_layers=2, heads=twin)
    assert count_parameters(twin_config) == count_parameters(config)


def test_a_twin_takes_the_nearest_size_that_tiles_the_layer():
    assert uniform_twin(explicit([32, 16, 16]), 16).sizes == [16] * 4  # width 64: 16 tiles it
    # width 72: 16 does not tile it; 18 (2 above) is nearer than 12 (4 below)
    assert uniform_twin(explicit([32, 32, 8]), 16).size == 18
    # width 40: 20 (4 above) is nearer than 10 (6 below)
    assert uniform_twin(explicit([32, 8]), 16).size == 20
    # width 60: 12 and 20 are both 4 away; a tie takes the larger
    assert uniform_twin(explicit([32, 28]), 16).size == 20


def test_per_layer_mixes_get_twins_layer_by_layer():
    layers = [fractal(base=32, levels=3), explicit([64, 32])]
    twins = [uniform_twin(spec, 32) for spec in layers]
    assert [t.sizes for t in twins] == [[32, 32, 32], [32, 32, 32]]
    config = ModelConfig(vocab_size=97, dim=48, n_layers=2, heads=layers)
    assert count_parameters(ModelConfig(vocab_size=97, dim=48, n_layers=2, heads=twins)) == count_parameters(config)


def test_twin_sizes_are_the_space_sizes_nearest_the_mean_head_size():
    # fractal 1x32 2x16 4x8: mean head size 96 / 7 = 13.7
    assert twin_sizes([fractal(base=32, levels=3)], [8, 16, 32]) == [16, 8]
    assert twin_sizes([fractal(base=32, levels=3)], [8, 16, 32], k=1) == [16]
    # per layer, the mean is over every head of every layer: (32 + 32 + 64 + 64) / 4 = 48, a tie -> larger first
    assert twin_sizes([explicit([32, 32]), explicit([64, 64])], [32, 64]) == [64, 32]
    assert twin_sizes([uniform(2, 16)], []) == []


def test_a_twin_size_must_be_a_head_size():
    with pytest.raises(ConfigError, match="size must be an integer >= 4"):
        uniform_twin(fractal(base=32, levels=3), 2)
    assert isinstance(uniform_twin(HeadSpec("uniform", n=2, size=8), 8), HeadSpec)


def test_paired_interval_matches_scipy():
    a = [1.31, 1.28, 1.35, 1.30]
    b = [1.29, 1.27, 1.30, 1.31]
    iv = paired_interval(a, b)
    ref = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert math.isclose(iv.low, ref.low, rel_tol=1e-12) and math.isclose(iv.high, ref.high, rel_tol=1e-12)
    assert math.isclose(iv.mean, sum(x - y for x, y in zip(a, b)) / 4)
    with pytest.raises(ValueError, match="same length"):
        paired_interval(a, b[:3])


SEEDS = [0.00, 0.04, -0.03, 0.02]  # a seed moves every configuration alike


def _runs(mean: float, noise: list[float]) -> list[float]:
    return [mean + s + e for s, e in zip(SEEDS, noise)]


def test_the_verdict_says_mixed_only_when_it_beats_every_twin():
    mixed = _runs(1.20, [0.001, -0.002, 0.002, 0.000])
    better = {16: _runs(1.30, [0.000, 0.002, -0.001, 0.001]), 8: _runs(1.28, [0.002, 0.000, 0.001, -0.002])}
    assert twin_verdict(mixed, better)["branch"] == "mixed"
    # one twin as good as the mix: no verdict, however far behind the other is
    tie = {16: _runs(1.30, [0.000, 0.002, -0.001, 0.001]), 8: _runs(1.20, [-0.002, 0.003, 0.000, 0.001])}
    assert twin_verdict(mixed, tie)["branch"] == "none"


def test_the_verdict_says_plain_when_a_twin_beats_the_mix():
    mixed = _runs(1.30, [0.001, -0.002, 0.002, 0.000])
    twins = {16: _runs(1.20, [0.000, 0.002, -0.001, 0.001]), 8: _runs(1.31, [0.002, 0.000, 0.001, -0.002])}
    result = twin_verdict(mixed, twins)
    assert result["branch"] == "plain"
    assert result["paired_corrected"][16].low > 0 and result["paired"][16].low > result["paired_corrected"][16].low


def test_equal_configurations_give_no_verdict_and_zero_spread_claims_nothing():
    mixed = _runs(1.25, [0.004, -0.003, 0.001, -0.002])
    equal = {16: _runs(1.25, [-0.002, 0.003, -0.004, 0.001])}
    assert twin_verdict(mixed, equal)["branch"] == "none"
    flat = {16: [x + 0.1 for x in mixed]}  # every paired difference the same: no seed noise to judge by
    assert twin_verdict(mixed, flat)["branch"] == "no_noise"


def test_pairing_sees_what_welch_cannot():
    mixed = _runs(1.20, [0.001, -0.002, 0.002, 0.000])
    twins = {16: _runs(1.23, [0.000, 0.002, -0.001, 0.001])}
    result = twin_verdict(mixed, twins)
    assert result["branch"] == "mixed"
    assert result["welch"][16].high > 0  # the seeds' shared spread hides the difference from Welch
