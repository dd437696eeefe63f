"""The search space under a parameter budget.

Optuna samples the free choices (head families and their sizes, MLP multiplier, learning rate, batch
size, vocabulary, shared or per-layer mix, a depth proposal). Width is then *solved* from the budget:
the width whose exact parameter count is closest to the target, kept only if inside the band. Depth is
*repaired* to the nearest depth for which such a width exists. Both go back to Optuna as ordinary
params through `SpaceSampler`, so the stored trial says what was actually built and TPE learns from
it. A point is wasted only when no depth in range admits a width in the band; `infeasible_share`
measures how often that happens before a study starts.
"""

from __future__ import annotations

import bisect
import math
import os
import random
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from mfha.config import ModelConfig, TrainConfig
from mfha.errors import ConfigError
from mfha.heads import HeadSpec, make_head_spec
from mfha.model import count_parameters
from search.study.types import FloatRange, IntRange, StudyConfig, domain_values
from search.study.views import sampler_view

DERIVED_PARAMS = ("n_layers", "dim")
MAX_WASTED_SHARE = 0.10


class Infeasible(Exception):
    """No depth and width in the space bring this suggestion inside the budget (nothing was built)."""


@dataclass
class Candidate:
    model_config: ModelConfig
    train_config: TrainConfig
    attrs: dict[str, Any]  # what a person filters on in the dashboard: heads, family, n_params


class SpaceSampler(BaseSampler):
    """The study's sampler, with the derived params (solved width, repaired depth) set by the space.

    They are left out of the relative (joint) search space and answered in `sample_independent` by a
    hook the space installs for the one trial being suggested, so the stored value is the built value.
    """

    def __init__(self, base: BaseSampler) -> None:
        self.base = base
        self._hooks: dict[tuple[int, str], Callable[[Callable[[], Any]], Any]] = {}

    def derive(
        self, trial: optuna.Trial, name: str, suggest: Callable[[], Any], fn: Callable[[Callable[[], Any]], Any]
    ) -> Any:
        """Run `suggest` (a trial.suggest_* call for `name`) with its value given by `fn(proposal)`."""
        key = (trial.number, name)
        self._hooks[key] = fn
        try:
            return suggest()
        finally:
            self._hooks.pop(key, None)

    def infer_relative_search_space(self, study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self.base.infer_relative_search_space(study, trial)
        return {k: v for k, v in space.items() if k not in DERIVED_PARAMS}

    def sample_relative(self, study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        # TPE ranks PRUNED trials by their last intermediate value through `study.direction`, which a
        # multi-objective study refuses: there those values are val_bpc (search/study/views.py)
        return self.base.sample_relative(sampler_view(study), trial, search_space)

    def sample_independent(
        self, study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        fn = self._hooks.get((trial.number, param_name))
        proposal = lambda: self.base.sample_independent(sampler_view(study), trial, param_name, param_distribution)
        return proposal() if fn is None else fn(proposal)

    def before_trial(self, study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial: FrozenTrial, state, values) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


class SearchSpace:
    """Turns an Optuna trial into a model and train config inside the budget band."""

    def __init__(self, config: StudyConfig, vocab_sizes: dict[int | None, int]) -> None:
        missing = [v for v in config.vocab_choices if v not in vocab_sizes]
        if missing:
            raise ConfigError(
                f"vocab_sizes needs the vocabulary size of every data.tokenizer_vocab choice, but got none for {missing[0]!r}."
            )
        self.config = config
        self.space = config.space
        self.vocab_sizes = dict(vocab_sizes)
        self.lo, self.hi = config.band
        self.target = config.budget_params
        self.widths = sorted(domain_values(self.space.width))
        self.depths = sorted(domain_values(self.space.depth))
        self.max_seq_len = config.model.get("max_seq_len", config.train_config().seq_len)
        self._plans: dict[tuple, tuple[dict[int, tuple[int, int]], str]] = {}
        self.last_infeasible = ""

    def check_budget(self) -> None:
        """The budget must at least fit the embedding at the narrowest width (one line, names the keys)."""
        for choice, vocab in self.vocab_sizes.items():
            if choice not in self.config.vocab_choices:
                continue
            emb = vocab * self.widths[0]
            if emb > self.hi:
                raise ConfigError(
                    f"budget.params={self.target} (band up to {self.hi}) is smaller than the embedding alone "
                    f"(vocab {vocab} x narrowest width {self.widths[0]} = {emb}); raise budget.params or lower space.width, "
                    f"but got budget.params={self.target}."
                )

    # sampling -----------------------------------------------------------------------------------

    def suggest(self, trial: optuna.Trial) -> Candidate:
        sampler = trial.study.sampler
        if not isinstance(sampler, SpaceSampler):
            raise TypeError(
                f"the study's sampler must be a SpaceSampler (see SearchSpace.make_sampler), but got {type(sampler).__name__}"
            )
        s = self.space
        vocab_choice = _choice(
            trial, "tokenizer_vocab", tuple("char" if v is None else v for v in self.config.vocab_choices)
        )
        vocab_choice = None if vocab_choice == "char" else vocab_choice
        mix = _choice(trial, "head_mix", s.head_mix)
        if mix == "shared":
            heads = [self._suggest_heads(trial, "")]
        else:
            heads = [self._suggest_heads(trial, "lower_"), self._suggest_heads(trial, "upper_")]
        families = tuple(family for family, _ in heads)
        specs = tuple(spec for _, spec in heads)
        mlp_mult = _choice(trial, "mlp_mult", s.mlp_mult)
        lr = _suggest_domain(trial, "lr", s.lr)
        batch_size = _choice(trial, "batch_size", s.batch_size)
        vocab = self.vocab_sizes[vocab_choice]

        plan, why = self._plan(tuple(specs), mlp_mult, vocab)
        if not plan:
            raise Infeasible(why)
        n_layers = sampler.derive(
            trial,
            "n_layers",
            lambda: _suggest_domain(trial, "n_layers", s.depth),
            lambda proposal: _nearest(plan, proposal()),
        )
        if n_layers not in plan:  # only when the value was fixed in advance (an enqueued or retried trial)
            raise Infeasible(f"n_layers={n_layers} admits no width in the band; feasible depths: {sorted(plan)}")
        dim = sampler.derive(
            trial,
            "dim",
            lambda: _suggest_domain(trial, "dim", s.width, solved=True),
            lambda _proposal: plan[n_layers][0],
        )
        mc = self.model_config(specs, n_layers, dim, mlp_mult, vocab)
        n_params = count_parameters(mc)
        if not self.lo <= n_params <= self.hi:
            raise Infeasible(
                f"n_layers={n_layers}, dim={dim} give {n_params:,} parameters, outside the band [{self.lo:,}, {self.hi:,}]"
            )
        tc = self.config.train_config(lr=lr, batch_size=batch_size, tokenizer_vocab=vocab_choice)
        used = families if n_layers > 1 else families[:1]  # one layer takes the lower spec only
        attrs = {"heads": mc.describe_heads(), "family": "/".join(dict.fromkeys(used)), "n_params": n_params}
        return Candidate(mc, tc, attrs)

    def _suggest_heads(self, trial: optuna.Trial, prefix: str) -> tuple[str, HeadSpec]:
        family = _choice(trial, f"{prefix}family", self.space.families)
        values = {
            k: _suggest_domain(trial, f"{prefix}{family}_{k}", d) for k, d in self.space.family_space[family].items()
        }
        return family, make_head_spec(family, values)

    def baselines(self) -> list[dict[str, Any]]:
        """Params of the budget-matched plain multi-head configurations to enqueue ahead of the search.

        One per uniform head size (baselines.sizes, or every space.uniform.size): the head count and
        depth whose heads come closest to tiling the solved width (n x size = dim, as in plain
        multi-head attention), in every layer; the smallest batch, the middle MLP multiplier and the
        geometric middle of the learning-rate range, so a baseline is an ordinary, unlucky-proof point
        of the space. Then the study file's own baselines.params. Sizes that fit no depth are skipped.
        """
        b = self.config.baselines
        if not b.enabled:
            return []
        out = []
        if "uniform" in self.space.families:
            dom = self.space.family_space["uniform"]
            for size in b.sizes or domain_values(dom["size"]):
                params = self._baseline(size, domain_values(dom["n"]))
                if params is not None:
                    out.append(params)
        return out + [dict(p) for p in b.params]

    def _baseline(self, size: int, counts: list[int]) -> dict[str, Any] | None:
        s = self.space
        vocab_choice = self.config.vocab_choices[0]
        mlp_mult = sorted(s.mlp_mult)[(len(s.mlp_mult) - 1) // 2]
        best = None
        for n in counts:
            spec = make_head_spec("uniform", {"n": n, "size": size})
            specs = (spec,) if "shared" in s.head_mix else (spec, spec)
            plan, _ = self._plan(specs, mlp_mult, self.vocab_sizes[vocab_choice])
            middle = (self.depths[0] + self.depths[-1]) / 2
            for depth, (dim, _n_params) in plan.items():
                score = (abs(n * size - dim) / dim, abs(depth - middle), depth)
                if best is None or score < best[0]:
                    best = (score, n, depth, dim)
        if best is None:
            return None
        _, n, depth, dim = best
        lr = math.sqrt(s.lr.min * s.lr.max) if isinstance(s.lr, FloatRange) else sorted(s.lr)[(len(s.lr) - 1) // 2]
        params: dict[str, Any] = {
            "tokenizer_vocab": "char" if vocab_choice is None else vocab_choice,
            "head_mix": "shared" if "shared" in s.head_mix else "per_layer",
            "mlp_mult": mlp_mult,
            "lr": lr,
            "batch_size": min(s.batch_size),
            "n_layers": depth,
            "dim": dim,
        }
        for prefix in ("",) if params["head_mix"] == "shared" else ("lower_", "upper_"):
            params.update({f"{prefix}family": "uniform", f"{prefix}uniform_n": n, f"{prefix}uniform_size": size})
        return params

    def make_sampler(self, *, parallel: bool = False) -> SpaceSampler:
        """The study file's sampler wrapped in a SpaceSampler; `parallel`: several workers share the study."""
        sc = self.config.sampler
        liar = parallel if sc.constant_liar is None else sc.constant_liar
        # workers sharing a study with one seed would all propose the same points: each gets its own
        seed = (
            sc.seed if not parallel or sc.seed is None else hash((sc.seed, socket.gethostname(), os.getpid())) % 2**32
        )
        if sc.kind == "random":
            base: BaseSampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # `group`
                # the head params depend on the family (a conditional space): group=True lets
                # multivariate TPE model each family's params jointly instead of falling back
                base = optuna.samplers.TPESampler(
                    seed=seed,
                    n_startup_trials=sc.startup_trials,
                    multivariate=sc.multivariate,
                    group=sc.multivariate,
                    constant_liar=liar,
                )
        return SpaceSampler(base)

    # budget ---------------------------------------------------------------------------------------

    def model_config(
        self, specs: tuple[HeadSpec, ...], n_layers: int, dim: int, mlp_mult: float, vocab: int
    ) -> ModelConfig:
        fixed = {k: v for k, v in self.config.model.items() if k != "max_seq_len"}
        return ModelConfig(
            vocab_size=vocab,
            dim=dim,
            n_layers=n_layers,
            heads=_layer_heads(specs, n_layers),
            max_seq_len=self.max_seq_len,
            mlp_mult=mlp_mult,
            **fixed,
        )

    def _plan(self, specs: tuple[HeadSpec, ...], mlp_mult: float, vocab: int) -> tuple[dict[int, tuple[int, int]], str]:
        """{depth: (width, n_params)} for every depth that has a width inside the band, and why not if none."""
        key = (tuple(tuple(_sizes(s)) for s in specs), mlp_mult, vocab)  # the count depends on the sizes only
        if key not in self._plans:
            self._plans[key] = self._plan_uncached(specs, mlp_mult, vocab)
        return self._plans[key]

    def _plan_uncached(
        self, specs: tuple[HeadSpec, ...], mlp_mult: float, vocab: int
    ) -> tuple[dict[int, tuple[int, int]], str]:
        plan: dict[int, tuple[int, int]] = {}
        closest: tuple[float, str] = (math.inf, "")
        for depth in self.depths:

            def count(w: int, d: int = depth) -> int:
                return count_parameters(self.model_config(specs, d, w, mlp_mult, vocab))

            try:
                counts = _LazyCounts(count, self.widths)
                i = bisect.bisect_left(counts, self.target)
            except ConfigError as e:
                return {}, f"heads {' | '.join(s.render() for s in specs)}: {e}"
            best = None
            for j in (i - 1, i):
                if 0 <= j < len(self.widths):
                    n = counts[j]
                    if self.lo <= n <= self.hi and (best is None or abs(n - self.target) < abs(best[1] - self.target)):
                        best = (self.widths[j], n)
                    miss = abs(n - self.target)
                    if miss < closest[0]:
                        closest = (miss, f"depth {depth} at width {self.widths[j]} gives {n:,}")
            if best is not None:
                plan[depth] = best
        heads = " | ".join(s.render() for s in specs)
        why = (
            f"no depth in {self.depths[0]}..{self.depths[-1]} and width in {self.widths[0]}..{self.widths[-1]} puts heads "
            f"{heads} (mlp_mult={mlp_mult}) inside {self.lo:,}..{self.hi:,} parameters; closest: {closest[1]}"
        )
        return plan, why

    def draw(self, rng: random.Random, *, batch_size: int | None = None) -> Candidate | None:
        """A uniformly random point of the space (None when it has no feasible depth), for checks and benches."""
        s = self.space
        mix = rng.choice(s.head_mix)
        fams, specs = [], []
        for _part in range(1 if mix == "shared" else 2):
            fam = rng.choice(s.families)
            fams.append(fam)
            specs.append(make_head_spec(fam, {k: rng.choice(domain_values(d)) for k, d in s.family_space[fam].items()}))
        vocab_choice = rng.choice(self.config.vocab_choices)
        vocab = self.vocab_sizes[vocab_choice]
        mlp_mult = rng.choice(s.mlp_mult)
        plan, why = self._plan(tuple(specs), mlp_mult, vocab)
        if not plan:
            self.last_infeasible = why
            return None
        depth = rng.choice(sorted(plan))
        mc = self.model_config(tuple(specs), depth, plan[depth][0], mlp_mult, vocab)
        lr = s.lr.min if isinstance(s.lr, FloatRange) else rng.choice(s.lr)
        tc = self.config.train_config(
            lr=lr, batch_size=batch_size or rng.choice(s.batch_size), tokenizer_vocab=vocab_choice
        )
        used = fams if depth > 1 else fams[:1]
        return Candidate(
            mc, tc, {"heads": mc.describe_heads(), "family": "/".join(dict.fromkeys(used)), "n_params": plan[depth][1]}
        )

    def infeasible_share(self, n: int = 400, seed: int = 0) -> tuple[float, str]:
        """Share of uniformly drawn head/MLP/vocab choices that no depth and width can fit, and one example."""
        rng = random.Random(seed)
        bad, example = 0, ""
        for _ in range(n):
            if self.draw(rng) is None:
                bad += 1
                example = example or self.last_infeasible
        return bad / n, example


class _LazyCounts:
    """A sequence view of parameter count by width, computed on demand (for bisect)."""

    def __init__(self, fn: Callable[[int], int], widths: list[int]) -> None:
        self.fn, self.widths = fn, widths
        self.cache: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.widths)

    def __getitem__(self, i: int) -> int:
        if i not in self.cache:
            self.cache[i] = self.fn(self.widths[i])
        return self.cache[i]


def _sizes(spec: HeadSpec) -> list[int]:
    assert spec.sizes is not None  # HeadSpec.__post_init__ derives it for every family
    return spec.sizes


def _layer_heads(specs: tuple[HeadSpec, ...], n_layers: int) -> HeadSpec | list[HeadSpec]:
    """Shared: one spec. Per-layer: the lower ceil(n/2) layers take the first spec, the rest the second."""
    if len(specs) == 1:
        return specs[0]
    split = math.ceil(n_layers / 2)
    return [specs[0]] * split + [specs[1]] * (n_layers - split)


def _nearest(plan: dict[int, Any], proposal: int) -> int:
    return min(plan, key=lambda d: (abs(d - proposal), d))


def _choice(trial: optuna.Trial, name: str, choices: tuple) -> Any:
    """A categorical param, or the value itself when there is only one (kept out of the params)."""
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def _suggest_domain(trial: optuna.Trial, name: str, d: IntRange | FloatRange | tuple, *, solved: bool = False) -> Any:
    if isinstance(d, IntRange):
        if d.min == d.max and not solved:
            return d.min
        return trial.suggest_int(name, d.min, d.max, step=d.step)
    if isinstance(d, FloatRange):
        return trial.suggest_float(name, d.min, d.max, log=d.log)
    if solved:
        return trial.suggest_categorical(name, list(d))
    return _choice(trial, name, d)


__all__ = ["SearchSpace", "SpaceSampler", "Candidate", "Infeasible", "DERIVED_PARAMS", "MAX_WASTED_SHARE"]
