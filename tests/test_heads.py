import pytest

from mfha.errors import ConfigError, MFHAError
from mfha.heads import HEAD_FAMILIES, HeadSpec, explicit, fractal, geometric, uniform


@pytest.mark.parametrize(
    "spec, rendered, sizes",
    [
        (uniform(4, 32), "4x32", [32] * 4),
        (fractal(128, 4), "1x128 2x64 4x32 8x16", [128, 64, 64] + [32] * 4 + [16] * 8),
        (fractal(36, 3, split=3), "1x36 3x12 9x4", [36] + [12] * 3 + [4] * 9),
        (fractal(8, 1), "1x8", [8]),
        (geometric(32, 8, width=64), "2x32 4x16 8x8", [32] * 2 + [16] * 4 + [8] * 8),
        (geometric(64, 16, count=2), "2x64 2x32 2x16", [64, 64, 32, 32, 16, 16]),
        (geometric(64, 4, ratio=4, count=1), "1x64 1x16 1x4", [64, 16, 4]),
        (geometric(24, 24, count=3), "3x24", [24] * 3),
        (explicit([16, 64, 16, 32]), "1x64 1x32 2x16", [64, 32, 16, 16]),
    ],
)
def test_sizes_and_render(spec, rendered, sizes):
    assert spec.sizes == sizes
    assert spec.render() == rendered == str(spec)
    assert spec.total_width == sum(sizes)
    assert [s for s, n in spec.groups() for _ in range(n)] == sizes


def test_groups_are_largest_first_with_counts():
    assert fractal(64, 3).groups() == [(64, 1), (32, 2), (16, 4)]
    assert explicit([8, 24, 8, 24, 8]).groups() == [(24, 2), (8, 3)]


def test_defaults_are_filled_and_kept_in_the_dict():
    spec = HeadSpec("fractal", base=32, levels=2)
    assert spec.split == 2
    assert spec.to_dict() == {"family": "fractal", "base": 32, "levels": 2, "split": 2}
    assert HeadSpec("geometric", largest=32, smallest=8, count=1).ratio == 2


@pytest.mark.parametrize(
    "spec",
    [
        uniform(3, 16),
        fractal(64, 3),
        fractal(36, 3, split=3),
        geometric(32, 8, width=64),
        geometric(64, 16, ratio=4, count=2),
        explicit([8, 32, 8]),
    ],
)
def test_dict_round_trip(spec):
    d = spec.to_dict()
    assert d["family"] == spec.family
    assert all(v is not None for v in d.values())
    assert HeadSpec.from_dict(d) == spec
    if spec.family != "explicit":
        assert "sizes" not in d  # derived, so an edited file cannot contradict it
        assert HeadSpec.from_dict({**d, "sizes": spec.sizes}) == spec


def test_every_family_has_a_constructor():
    assert {uniform(1, 8).family, fractal(8, 1).family, geometric(8, 8, count=1).family, explicit([8]).family} == set(
        HEAD_FAMILIES
    )


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: HeadSpec("ring", n=2),
            r"head family must be one of uniform, fractal, geometric, explicit, but got family='ring'",
        ),
        (lambda: HeadSpec("uniform", n=2, size=16, base=32), r"uniform heads take n, size, but got base=32\.$"),
        (
            lambda: HeadSpec("fractal", base=32, levels=2, sizes=[32, 16]),
            r"sizes do not match the fractal spec, which gives \[32, 16, 16\]",
        ),
        (lambda: uniform(2, 7), r"every head size must be an even integer >= 4 \(RoPE rotates pairs\), but got size=7"),
        (lambda: uniform(2, 2), r"every head size must be an even integer >= 4 .*but got size=2 in uniform"),
        (lambda: explicit([16, 8.0]), r"every head size must be an even integer >= 4 .*but got size=8.0 in explicit"),
        (lambda: explicit([16, True]), r"every head size must be an even integer >= 4 .*but got size=True"),
        (lambda: fractal(16, 4), r"every head size must be an even integer >= 4 .*but got size=2 in fractal"),
        (lambda: uniform(0, 16), r"n must be an integer >= 1, but got n=0"),
        (lambda: uniform(2, None), r"size must be an integer >= 1, but got size=None"),
        (lambda: fractal(0, 2), r"base must be an integer >= 1, but got base=0"),
        (lambda: fractal(64, 1.5), r"levels must be an integer >= 1, but got levels=1.5"),
        (lambda: fractal(64, 2, split=1), r"split must be an integer >= 2, but got split=1"),
        (lambda: fractal(66, 3), r"fractal base must be divisible by split\*\*\(levels-1\)=4, but got base=66"),
        (lambda: geometric(0, 8, count=1), r"largest must be an integer >= 1, but got largest=0"),
        (lambda: geometric(32, -8, count=1), r"smallest must be an integer >= 1, but got smallest=-8"),
        (lambda: geometric(32, 8, ratio=1, count=1), r"ratio must be an integer >= 2, but got ratio=1"),
        (lambda: geometric(16, 32, count=1), r"geometric smallest must be <= largest=16, but got smallest=32"),
        (lambda: geometric(32, 8), r"geometric heads need exactly one of count .* but got count=None, width=None"),
        (lambda: geometric(32, 8, count=1, width=64), r"exactly one of count .* but got count=1, width=64"),
        (
            lambda: geometric(48, 10, count=1),
            r"must fall from largest=48 to smallest by exact division by ratio=2, but got smallest=10 \(reachable: \[48, 24, 12\]\)",
        ),
        (
            lambda: geometric(20, 4, count=1),
            r"must fall from largest=20 .* but got smallest=4 \(reachable: \[20, 10, 5\]\)",
        ),
        (lambda: geometric(32, 8, count=0), r"count must be an integer >= 1, but got count=0"),
        (lambda: geometric(32, 8, width=0), r"width must be an integer >= 1, but got width=0"),
        (
            lambda: geometric(32, 8, width=48),
            r"geometric width must be divisible by every level size, but got width=48 and size 32",
        ),
        (lambda: explicit([]), r"explicit heads need a non-empty list of sizes, but got sizes=\[\]"),
        (
            lambda: HeadSpec("explicit", sizes="16 8"),
            r"explicit heads need a non-empty list of sizes, but got sizes='16 8'",
        ),
        (lambda: HeadSpec.from_dict([16, 8]), r"a head spec must be a table with a 'family' key, but got \[16, 8\]"),
        (lambda: HeadSpec.from_dict({"n": 2, "size": 8}), r"a head spec must be a table with a 'family' key"),
        (
            lambda: HeadSpec.from_dict({"family": "uniform", "n": 2, "sizes": [8, 8], "levels": 2}),
            r"unknown head-spec key 'levels' for family 'uniform'; allowed: n, size",
        ),
    ],
)
def test_validation(make, match):
    with pytest.raises(ConfigError, match=match) as info:
        make()
    assert isinstance(info.value, (MFHAError, ValueError))
    assert "\n" not in str(info.value)
