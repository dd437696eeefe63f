"""The study file's section rules: [space], its head families, [pruning], [sampler], [baselines] and
[validation], each a method that returns its dataclass or fails with one line naming the key.

`parser.StudyParser` builds on these with the rules that tie sections together.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from difflib import get_close_matches
from typing import Any, NoReturn

from mfha.config import is_int, is_num
from mfha.errors import ConfigError
from mfha.heads import HEAD_FAMILIES, HeadSpec, make_head_spec
from search.study.types import (
    FAMILY_KEYS,
    HEAD_MIXES,
    PRUNERS,
    SAMPLERS,
    SECTION_KEYS,
    BaselinesConfig,
    FloatRange,
    IntRange,
    PruningConfig,
    SamplerConfig,
    SpaceConfig,
    ValidationConfig,
    domain_values,
)

_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(value: Any, key: str) -> int:
    """Bytes from an int or a string like '1.5 GiB' / '800 MB'."""
    if is_int(value) and value > 0:
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMG]i?B|B)\s*", value, flags=re.IGNORECASE)
        if m:
            n = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
            if n >= 1:
                return int(n)
    raise ConfigError(
        f"{key} must be a positive number of bytes or a size like '2 GiB' or '800 MB', but got {key}={value!r}."
    )


class SectionRules:
    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw = raw
        self.source = source

    def fail(self, msg: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {msg}")

    def rule(self, ok: bool, rule: str, key: str, value: Any) -> None:
        if not ok:
            self.fail(f"{key} {rule}, but got {key}={value!r}.")

    def unknown(self, table: dict, allowed: tuple[str, ...], prefix: str) -> None:
        for k in table:
            if k not in allowed:
                near = get_close_matches(k, allowed, n=1, cutoff=0.6)
                where = f"{prefix}.{k}" if prefix else k
                if near:
                    hint = f"did you mean {(prefix + '.' if prefix else '') + near[0]!r}?"
                else:
                    hint = f"allowed: {', '.join(allowed)}."
                kind = "section" if not prefix else "key"
                self.fail(f"unknown {kind} {where!r}; {hint}")

    def section(self, name: str) -> dict[str, Any]:
        s = self.raw.get(name, {})
        if not isinstance(s, dict):
            self.fail(f"[{name}] must be a table, but got {name}={s!r}.")
        self.unknown(s, SECTION_KEYS[name], name)
        return s

    def baselines(self, b: dict[str, Any], space: SpaceConfig) -> BaselinesConfig:
        enabled = b.get("enabled", True)
        self.rule(isinstance(enabled, bool), "must be true or false", "baselines.enabled", enabled)
        sizes = b.get("sizes")
        if sizes is not None:
            ok = (
                isinstance(sizes, list)
                and bool(sizes)
                and all(is_int(x) for x in sizes)
                and len(set(sizes)) == len(sizes)
            )
            self.rule(ok, "must be a list of distinct uniform head sizes", "baselines.sizes", sizes)
            if "uniform" not in space.families:
                self.fail(
                    "baselines.sizes needs 'uniform' in space.families (a baseline is a trial of the space); add it, or remove baselines.sizes."
                )
            allowed = domain_values(space.family_space["uniform"]["size"])
            bad = [x for x in sizes if x not in allowed]
            self.rule(
                not bad,
                f"must be sizes that space.uniform.size allows ({', '.join(map(str, allowed))})",
                "baselines.sizes",
                sizes,
            )
        params = b.get("params", [])
        ok = isinstance(params, list) and all(isinstance(x, dict) and x for x in params)
        self.rule(
            ok,
            'must be a list of param tables, e.g. [{family = "uniform", uniform_n = 4, uniform_size = 16}]',
            "baselines.params",
            params,
        )
        return BaselinesConfig(enabled, tuple(sizes) if sizes is not None else None, tuple(dict(x) for x in params))

    def validation(self, v: dict[str, Any]) -> ValidationConfig:
        d = ValidationConfig()
        top = v.get("top", d.top)
        self.rule(is_int(top) and top >= 1, "must be a positive integer", "validation.top", top)
        seeds = v.get("seeds", d.seeds)
        self.rule(
            is_int(seeds) and seeds >= 2,
            "must be an integer >= 2 (an interval needs two seeds)",
            "validation.seeds",
            seeds,
        )
        families = v.get("families", d.families)
        self.rule(isinstance(families, bool), "must be true or false", "validation.families", families)
        return ValidationConfig(top, seeds, families)

    def vocab(self, v: Any) -> tuple:
        items = v if isinstance(v, list) else [v]
        out: list[int | None] = []
        for x in items:
            if x == "char":
                out.append(None)
            elif is_int(x) and 8 <= x <= 65536:
                out.append(x)
            else:
                self.fail(
                    f"data.tokenizer_vocab must be 'char', an integer in [8, 65536], or a list of those to search, "
                    f"but got data.tokenizer_vocab={v!r}."
                )
        self.rule(len(out) >= 1 and len(set(out)) == len(out), "must list distinct choices", "data.tokenizer_vocab", v)
        return tuple(out)

    def int_domain(self, v: Any, key: str, *, minimum: int = 1, allow_step: bool = False) -> IntRange | tuple:
        if isinstance(v, dict):
            allowed = ("min", "max", "step") if allow_step else ("min", "max")
            self.unknown(v, allowed, key)
            # file values, checked by the rule below
            lo: Any = v.get("min")
            hi: Any = v.get("max")
            step: Any = v.get("step", 1)
            ok = is_int(lo) and is_int(hi) and is_int(step) and minimum <= lo <= hi and step >= 1
            self.rule(
                ok,
                f"must be a range {{min, max{', step' if allow_step else ''}}} of integers with {minimum} <= min <= max",
                key,
                v,
            )
            return IntRange(lo, hi, step)
        items = v if isinstance(v, list) else [v]
        ok = len(items) >= 1 and all(is_int(x) and x >= minimum for x in items) and len(set(items)) == len(items)
        self.rule(ok, f"must be an integer >= {minimum}, a list of distinct ones, or a range {{min, max}}", key, v)
        return tuple(items)

    def num_choices(self, v: Any, key: str) -> tuple:
        items = v if isinstance(v, list) else [v]
        ok = len(items) >= 1 and all(is_num(x) and x > 0 for x in items) and len(set(items)) == len(items)
        self.rule(ok, "must be a positive number or a list of distinct ones", key, v)
        return tuple(float(x) for x in items)

    def space(self, s: dict[str, Any]) -> SpaceConfig:
        for key in ("depth", "width", "families"):
            if key not in s:
                self.fail(f"missing key space.{key}; [space] needs depth, width and families.")
        depth = self.int_domain(s["depth"], "space.depth")
        width = self.int_domain(s["width"], "space.width", minimum=2, allow_step=True)
        fams = s["families"] if isinstance(s["families"], list) else [s["families"]]
        for f in fams:
            if f not in HEAD_FAMILIES:
                near = get_close_matches(str(f), HEAD_FAMILIES, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                self.fail(
                    f"space.families must list head families from {', '.join(HEAD_FAMILIES)}, but got {f!r}{hint}"
                )
        self.rule(
            len(fams) >= 1 and len(set(fams)) == len(fams),
            "must list distinct head families",
            "space.families",
            s["families"],
        )
        for f in HEAD_FAMILIES:
            if f in s and f not in fams:
                self.fail(f"[space.{f}] is given but space.families does not list {f!r}; add it or remove the table.")
            if f in fams and f not in s:
                self.fail(
                    f"space.families lists {f!r} but [space.{f}] is missing; it needs {', '.join(FAMILY_KEYS[f])}."
                )
        mix = s.get("head_mix", "shared")
        mixes = mix if isinstance(mix, list) else [mix]
        ok = len(mixes) >= 1 and all(m in HEAD_MIXES for m in mixes) and len(set(mixes)) == len(mixes)
        self.rule(ok, f"must be one of {', '.join(HEAD_MIXES)} or a list of them", "space.head_mix", mix)
        family_space = {f: self.family(f, s[f]) for f in fams}
        mlp = self.num_choices(s.get("mlp_mult", 4.0), "space.mlp_mult")
        lr: FloatRange | tuple
        lr_raw = s.get("lr", 3e-3)
        if isinstance(lr_raw, dict):
            self.unknown(lr_raw, ("min", "max", "log"), "space.lr")
            # file values, checked by the rule below
            lo: Any = lr_raw.get("min")
            hi: Any = lr_raw.get("max")
            log = lr_raw.get("log", True)
            ok = is_num(lo) and is_num(hi) and 0 < lo < hi and isinstance(log, bool)
            self.rule(ok, "must be a range {min, max} with 0 < min < max", "space.lr", lr_raw)
            lr = FloatRange(float(lo), float(hi), log)
        else:
            lr = self.num_choices(lr_raw, "space.lr")
        batch = self.int_domain(s.get("batch_size", 16), "space.batch_size")
        self.rule(
            isinstance(batch, tuple),
            "must be a batch size or a list of them (not a range)",
            "space.batch_size",
            s.get("batch_size"),
        )
        assert isinstance(batch, tuple)  # the rule above fails otherwise
        return SpaceConfig(depth, width, tuple(mixes), tuple(fams), family_space, mlp, lr, batch)

    def family(self, fam: str, t: Any) -> dict[str, IntRange | tuple]:
        key = f"space.{fam}"
        if not isinstance(t, dict):
            self.fail(f"[{key}] must be a table with {', '.join(FAMILY_KEYS[fam])}, but got {key}={t!r}.")
        self.unknown(t, FAMILY_KEYS[fam], key)
        defaults = {"split": 2, "ratio": 2}
        for k in FAMILY_KEYS[fam]:
            if k not in t and k not in defaults:
                self.fail(
                    f"missing key {key}.{k}; {fam} heads need {', '.join(k2 for k2 in FAMILY_KEYS[fam] if k2 not in defaults)}."
                )
        if fam == "explicit":
            lists = t["sizes"]
            ok = isinstance(lists, list) and bool(lists) and all(isinstance(x, list) and x for x in lists)
            self.rule(
                ok, "must be a list of head-size lists, e.g. [[32, 16, 16], [16, 16, 16, 16]]", f"{key}.sizes", lists
            )
            choices = tuple(" ".join(str(x) for x in sorted(sizes, reverse=True)) for sizes in lists)
            for text in choices:
                self.head_spec(fam, {"sizes": [int(x) for x in text.split()]}, key)
            return {"sizes": choices}
        dom: dict[str, IntRange | tuple] = {}
        for k in FAMILY_KEYS[fam]:
            minimum = 2 if k in ("split", "ratio") else 1
            dom[k] = self.int_domain(t.get(k, defaults.get(k)), f"{key}.{k}", minimum=minimum)
        # every combination must make a valid spec, so no suggestion is lost to an impossible head set
        names = list(dom)
        for combo in itertools.product(*(domain_values(dom[k]) for k in names)):
            self.head_spec(fam, dict(zip(names, combo)), key)
        return dom

    def head_spec(self, fam: str, values: dict[str, Any], key: str) -> HeadSpec:
        try:
            return make_head_spec(fam, values)
        except ConfigError as e:
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            self.fail(
                f"{key}: the combination {shown} is not a valid head set ({e}); every combination of its choices must be valid."
            )

    def pruning(self, p: dict[str, Any], *, token_budget: bool = False) -> PruningConfig:
        d = PruningConfig()
        # in a study with a token budget the pruner's step counts are tokens, and named so
        names = {"warmup_steps": "warmup_tokens", "min_resource": "min_resource_tokens"}
        for steps_key, tokens_key in names.items():
            wrong, right = (steps_key, tokens_key) if token_budget else (tokens_key, steps_key)
            if wrong in p:
                unit = (
                    "tokens: [training] tokens sets a token budget"
                    if token_budget
                    else "training steps: the study has no [training] tokens"
                )
                self.fail(f"pruning.{wrong} does not fit this study, whose pruner counts {unit}; use pruning.{right}.")
        if token_budget:
            p = {({t: k for k, t in names.items()}).get(k, k): v for k, v in p.items()}
        ram = p.get("ram_limit", d.ram_limit)
        if ram != "auto":
            ram = parse_bytes(ram, "pruning.ram_limit")
        share = p.get("ram_auto_share", d.ram_auto_share)
        self.rule(is_num(share) and 0 < share <= 1, "must be a fraction in (0, 1]", "pruning.ram_auto_share", share)
        gpu = p.get("gpu_memory_limit", d.gpu_memory_limit)
        if gpu is not None and gpu != "auto":
            gpu = parse_bytes(gpu, "pruning.gpu_memory_limit")
        kind = p.get("pruner", d.pruner)
        if kind not in PRUNERS:
            near = get_close_matches(str(kind), PRUNERS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            self.fail(f"pruning.pruner must be one of {', '.join(PRUNERS)}, but got pruning.pruner={kind!r}{hint}")
        ints = {"warmup_steps": 0, "startup_trials": 0, "interval_steps": 1, "reduction_factor": 2}
        vals: dict[str, Any] = {}
        for k, minimum in ints.items():
            v = p.get(k, getattr(d, k))
            self.rule(
                is_int(v) and v >= minimum,
                f"must be an integer >= {minimum}",
                f"pruning.{_file_key(k, token_budget)}",
                v,
            )
            vals[k] = v
        mr = p.get("min_resource")
        self.rule(
            mr is None or (is_int(mr) and mr >= 1),
            f"must be a positive number of {'tokens' if token_budget else 'steps'}",
            f"pruning.{_file_key('min_resource', token_budget)}",
            mr,
        )
        pct = p.get("percentile", d.percentile)
        self.rule(is_num(pct) and 0 < pct < 100, "must be in (0, 100)", "pruning.percentile", pct)
        pth = p.get("p_threshold", d.p_threshold)
        self.rule(is_num(pth) and 0 < pth < 1, "must be in (0, 1)", "pruning.p_threshold", pth)
        wi = p.get("watch_interval_s", d.watch_interval_s)
        self.rule(is_num(wi) and 0.001 <= wi <= 10, "must be in [0.001, 10] seconds", "pruning.watch_interval_s", wi)
        return PruningConfig(
            ram_limit=ram,
            ram_auto_share=float(share),
            gpu_memory_limit=gpu,
            pruner=kind,
            min_resource=mr,
            percentile=float(pct),
            p_threshold=float(pth),
            watch_interval_s=float(wi),
            **vals,
        )

    def sampler(self, s: dict[str, Any]) -> SamplerConfig:
        d = SamplerConfig()
        kind = s.get("kind", d.kind)
        self.rule(kind in SAMPLERS, f"must be one of {', '.join(SAMPLERS)}", "sampler.kind", kind)
        seed = s.get("seed", d.seed)
        self.rule(seed is None or is_int(seed), "must be an integer", "sampler.seed", seed)
        mv = s.get("multivariate", d.multivariate)
        self.rule(isinstance(mv, bool), "must be true or false", "sampler.multivariate", mv)
        st = s.get("startup_trials", d.startup_trials)
        self.rule(is_int(st) and st >= 0, "must be an integer >= 0", "sampler.startup_trials", st)
        cl = s.get("constant_liar", d.constant_liar)
        self.rule(cl is None or isinstance(cl, bool), "must be true or false", "sampler.constant_liar", cl)
        return SamplerConfig(kind, seed, mv, st, cl)


def _file_key(key: str, token_budget: bool) -> str:
    """The study-file name of a PruningConfig field (the token names in a token-budget study)."""
    return (
        {"warmup_steps": "warmup_tokens", "min_resource": "min_resource_tokens"}.get(key, key) if token_budget else key
    )


def prefix_keys(msg: str, sections: dict[str, str]) -> str:
    """TrainConfig's message with each field written as the study-file key that set it."""
    for k, sec in sections.items():
        msg = re.sub(rf"(?<![.\w]){re.escape(k)}\b", f"{sec}.{k}", msg)
    return msg


def replace_space(space: SpaceConfig, **kw: Any) -> SpaceConfig:
    return replace(space, **kw)


__all__ = ["SectionRules", "parse_bytes", "prefix_keys", "replace_space"]
