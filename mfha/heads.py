"""Head-size specs: which head sizes one attention layer has.

A spec is a small JSON-friendly dataclass; `sizes` (largest first) is derived in `__post_init__`
for every family except `explicit`, where it is the input.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from mfha.errors import ConfigError

HeadFamily = Literal["uniform", "fractal", "geometric", "explicit"]
HEAD_FAMILIES: tuple[str, ...] = get_args(HeadFamily)
MIN_HEAD_SIZE = 4

_FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "uniform": ("n", "size"),
    "fractal": ("base", "levels", "split"),
    "geometric": ("largest", "smallest", "ratio", "count", "width"),
    "explicit": ("sizes",),
}


@dataclass
class HeadSpec:
    family: HeadFamily
    n: int | None = None  # uniform: number of heads
    size: int | None = None  # uniform: their size
    base: int | None = None  # fractal: size of the single level-0 head
    levels: int | None = None  # fractal: number of levels
    split: int | None = None  # fractal: level i has split**i heads of base // split**i
    largest: int | None = None  # geometric: first size
    smallest: int | None = None  # geometric: sizes fall by `ratio` while >= smallest
    ratio: int | None = None
    count: int | None = None  # geometric: heads per level ...
    width: int | None = None  # ... or total width per level (exactly one of the two)
    sizes: list[int] | None = None  # explicit: the input; other families: derived

    def __post_init__(self) -> None:
        if self.family not in HEAD_FAMILIES:
            raise ConfigError(f"head family must be one of {', '.join(HEAD_FAMILIES)}, but got family={self.family!r}.")
        unused = [
            f
            for fields in _FAMILY_FIELDS.values()
            for f in fields
            if f not in _FAMILY_FIELDS[self.family] and f != "sizes" and getattr(self, f) is not None
        ]
        if unused:
            raise ConfigError(
                f"{self.family} heads take {', '.join(_FAMILY_FIELDS[self.family])}, but got {unused[0]}={getattr(self, unused[0])!r}."
            )
        derived = getattr(self, f"_{self.family}_sizes")()
        if self.family != "explicit" and self.sizes is not None and list(self.sizes) != derived:
            raise ConfigError(
                f"sizes do not match the {self.family} spec, which gives {derived}, but got sizes={self.sizes}."
            )
        for s in derived:
            if not isinstance(s, int) or isinstance(s, bool) or s < MIN_HEAD_SIZE or s % 2:
                raise ConfigError(
                    f"every head size must be an even integer >= {MIN_HEAD_SIZE} (RoPE rotates pairs), "
                    f"but got size={s!r} in {self.family} heads."
                )
        self.sizes = sorted(derived, reverse=True)

    def _uniform_sizes(self) -> list[int]:
        n = _require_int("n", self.n, 1)
        size = _require_int("size", self.size, 1)
        return [size] * n

    def _fractal_sizes(self) -> list[int]:
        base = _require_int("base", self.base, 1)
        levels = _require_int("levels", self.levels, 1)
        if self.split is None:
            self.split = 2
        split = _require_int("split", self.split, 2)
        smallest = split ** (levels - 1)
        if base % smallest:
            raise ConfigError(f"fractal base must be divisible by split**(levels-1)={smallest}, but got base={base}.")
        return [base // split**i for i in range(levels) for _ in range(split**i)]

    def _geometric_sizes(self) -> list[int]:
        largest = _require_int("largest", self.largest, 1)
        smallest = _require_int("smallest", self.smallest, 1)
        if self.ratio is None:
            self.ratio = 2
        ratio = _require_int("ratio", self.ratio, 2)
        if smallest > largest:
            raise ConfigError(f"geometric smallest must be <= largest={largest}, but got smallest={smallest}.")
        if (self.count is None) == (self.width is None):
            raise ConfigError(
                f"geometric heads need exactly one of count (heads per level) or width (width per level), "
                f"but got count={self.count}, width={self.width}."
            )
        level_sizes = []
        size = largest
        while size >= smallest:
            level_sizes.append(size)
            if size % ratio:
                break
            size //= ratio
        if level_sizes[-1] != smallest:
            raise ConfigError(
                f"geometric sizes must fall from largest={largest} to smallest by exact division by "
                f"ratio={ratio}, but got smallest={smallest} (reachable: {level_sizes})."
            )
        if self.count is not None:
            count = _require_int("count", self.count, 1)
            return [s for s in level_sizes for _ in range(count)]
        width = _require_int("width", self.width, 1)
        for s in level_sizes:
            if width % s:
                raise ConfigError(
                    f"geometric width must be divisible by every level size, but got width={width} and size {s}."
                )
        return [s for s in level_sizes for _ in range(width // s)]

    def _explicit_sizes(self) -> list[int]:
        if not isinstance(self.sizes, (list, tuple)) or not self.sizes:
            raise ConfigError(f"explicit heads need a non-empty list of sizes, but got sizes={self.sizes!r}.")
        return list(self.sizes)

    @property
    def total_width(self) -> int:
        if self.sizes is None:  # TypeError as `sum(None)` raised here before
            raise TypeError("HeadSpec.sizes is None, but HeadSpec.__post_init__ sets it.")
        return sum(self.sizes)

    def groups(self) -> list[tuple[int, int]]:
        """(head size, count) pairs, largest size first."""
        return sorted(Counter(self.sizes).items(), reverse=True)

    def render(self) -> str:
        return " ".join(f"{n}x{s}" for s, n in self.groups())

    __str__ = render

    def to_dict(self) -> dict[str, Any]:
        keep = _FAMILY_FIELDS[self.family]
        return {"family": self.family, **{k: v for k, v in asdict(self).items() if k in keep and v is not None}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadSpec:
        if not isinstance(d, dict) or "family" not in d:
            raise ConfigError(f"a head spec must be a table with a 'family' key, but got {d!r}.")
        unknown = set(d) - {"family", *_FAMILY_FIELDS.get(d["family"], ()), "sizes"}
        if unknown:
            raise ConfigError(
                f"unknown head-spec key {sorted(unknown)[0]!r} for family {d['family']!r}; allowed: {', '.join(_FAMILY_FIELDS.get(d['family'], ()))}."
            )
        return cls(**d)


def _require_int(name: str, value: Any, minimum: int) -> int:
    """`value`, checked to be an int (not a bool) >= `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, but got {name}={value!r}.")
    return value


def uniform(n: int, size: int) -> HeadSpec:
    return HeadSpec("uniform", n=n, size=size)


def fractal(base: int, levels: int, split: int = 2) -> HeadSpec:
    return HeadSpec("fractal", base=base, levels=levels, split=split)


def geometric(
    largest: int, smallest: int, *, ratio: int = 2, count: int | None = None, width: int | None = None
) -> HeadSpec:
    return HeadSpec("geometric", largest=largest, smallest=smallest, ratio=ratio, count=count, width=width)


def explicit(sizes: list[int]) -> HeadSpec:
    return HeadSpec("explicit", sizes=list(sizes))


def uniform_twin(spec: HeadSpec, size: int) -> HeadSpec:
    """Uniform heads of the same total width as `spec`: heads of `size` where `size` tiles that width,
    else of the nearest even size >= MIN_HEAD_SIZE that does (the larger on a tie). With one K/V head
    per query head (kv_share 1) the twin has exactly the parameters of `spec`: every projection is
    dim x total width, whatever the split into heads."""
    _require_int("size", size, MIN_HEAD_SIZE)
    width = spec.total_width
    tiling = [s for s in range(MIN_HEAD_SIZE, width + 1, 2) if width % s == 0]
    if not tiling:
        raise ConfigError(f"no even head size >= {MIN_HEAD_SIZE} tiles a layer of width {width}.")
    best = size if size in tiling else min(tiling, key=lambda s: (abs(s - size), -s))
    return uniform(n=width // best, size=best)


def twin_sizes(specs: list[HeadSpec], candidates: list[int], *, k: int = 2) -> list[int]:
    """The (at most `k`) head sizes to twin a mix with: those of `candidates` (the space's uniform sizes)
    nearest the mix's mean head size over all its layers, nearest first (the larger on a tie)."""
    sizes = [s for spec in specs for s in (spec.sizes or [])]
    if not sizes or not candidates:
        return []
    mean = sum(sizes) / len(sizes)
    return sorted(dict.fromkeys(candidates), key=lambda s: (abs(s - mean), -s))[:k]


def make_head_spec(family: str, values: dict[str, Any]) -> HeadSpec:
    """A HeadSpec from the study file's per-family values (geometric takes levels, not smallest)."""
    if family == "uniform":
        return HeadSpec("uniform", n=values["n"], size=values["size"])
    if family == "fractal":
        return HeadSpec("fractal", base=values["base"], levels=values["levels"], split=values.get("split", 2))
    if family == "geometric":
        ratio = values.get("ratio", 2)
        largest, levels = values["largest"], values["levels"]
        if largest % ratio ** (levels - 1):
            raise ConfigError(f"largest={largest} must be divisible by ratio**(levels-1)={ratio ** (levels - 1)}")
        return HeadSpec(
            "geometric", largest=largest, smallest=largest // ratio ** (levels - 1), ratio=ratio, count=values["count"]
        )
    if family == "explicit":
        sizes = values["sizes"]
        return HeadSpec("explicit", sizes=[int(x) for x in sizes.split()] if isinstance(sizes, str) else list(sizes))
    raise ConfigError(f"head family must be one of {', '.join(HEAD_FAMILIES)}, but got {family=}.")


__all__ = [
    "HEAD_FAMILIES",
    "HeadFamily",
    "HeadSpec",
    "explicit",
    "fractal",
    "geometric",
    "make_head_spec",
    "twin_sizes",
    "uniform",
    "uniform_twin",
]
