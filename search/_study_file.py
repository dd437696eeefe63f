"""Study files: TOML describing one search, parsed into a validated `StudyConfig`.

Every rule raises `ConfigError` with one line naming the key (`space.depth`, `pruning.ram_limit`)
and, for an unknown key, the nearest valid one. Ranges are tables (`{min = 1, max = 4}`), choices
are lists (`[16, 32]`); a bare scalar is a fixed value.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from mfha.config import ModelConfig, TrainConfig
from mfha.errors import ConfigError
from mfha.heads import HEAD_FAMILIES, HeadSpec

DEFAULT_STORAGE = "sqlite:///storage/mfha.db"
REPO_ROOT = Path(__file__).resolve().parents[1]
HEAD_MIXES = ("shared", "per_layer")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "wilcoxon", "none")
SAMPLERS = ("tpe", "random")

# [data] maps onto these TrainConfig fields; [training] may set any other TrainConfig field.
DATA_KEYS = ("dataset", "text_column", "max_train_stories", "max_train_tokens", "max_val_stories", "tokenizer_vocab")
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))
TRAINING_KEYS = tuple(k for k in TRAIN_FIELDS if k not in DATA_KEYS)
# [full_training] changes how long the exported model trains, nothing that would change the model it
# trains, so the trial's own result stays reproducible from the export with --max-steps.
FULL_TRAINING_KEYS = ("max_steps", "tokens", "max_time_s", "eval_interval", "eval_tokens", "device", "compile")
# a token budget per trial: the trainer's step counts follow from each trial's batch size
TOKEN_KEYS = ("tokens", "eval_tokens", "warmup_tokens")
# with a token budget these are counted in tokens, under these names
STEP_KEYS_IN_TOKENS = {"max_steps": "tokens", "eval_interval": "eval_tokens", "warmup_steps": "warmup_tokens"}
EVALS_PER_TRIAL = 5  # eval_tokens default: the budget in fifths
WARMUP_SHARE = 0.05  # warmup_tokens default: 5% of the budget
MODEL_KEYS = ("max_seq_len", "kv_share", "rope_base", "norm_eps", "init_std")

FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "uniform": ("n", "size"),
    "fractal": ("base", "levels", "split"),
    "geometric": ("largest", "levels", "count", "ratio"),
    "explicit": ("sizes",),
}
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "study": (
        "name",
        "description",
        "n_trials",
        "timeout_s",
        "storage",
        "heartbeat_interval_s",
        "grace_period_s",
        "objectives",
    ),
    "data": DATA_KEYS,
    "budget": ("params", "tolerance"),
    "space": ("depth", "width", "head_mix", "families", "mlp_mult", "lr", "batch_size", *HEAD_FAMILIES),
    "model": MODEL_KEYS,
    "training": (*TRAINING_KEYS, *TOKEN_KEYS, "threads"),
    "pruning": (
        "ram_limit",
        "ram_auto_share",
        "gpu_memory_limit",
        "pruner",
        "warmup_steps",
        "warmup_tokens",
        "startup_trials",
        "interval_steps",
        "percentile",
        "min_resource",
        "min_resource_tokens",
        "reduction_factor",
        "p_threshold",
        "watch_interval_s",
    ),
    "sampler": ("kind", "seed", "multivariate", "startup_trials", "constant_liar"),
    "full_training": FULL_TRAINING_KEYS,
    "baselines": ("enabled", "sizes", "params"),
    "validation": ("top", "seeds", "families"),
    "cost": ("seconds",),
}
REQUIRED_SECTIONS = ("study", "budget", "space")

# what a study minimizes: bits per character first, then (multi-objective) the costs of mfha.cost,
# each a ratio to a fixed reference model timed beside the trial's
OBJECTIVES = ("val_bpc", "train_cost", "decode_cost")
PRIMARY = "val_bpc"
# Optuna's HyperbandPruner reads the study's direction through its own study view, which a
# multi-objective study refuses; the other pruners are given the val_bpc view (search/_views.py)
MULTI_OBJECTIVE_PRUNERS = ("median", "percentile", "successive_halving", "wilcoxon", "none")

_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass(frozen=True)
class IntRange:
    min: int
    max: int
    step: int = 1

    def values(self) -> list[int]:
        return list(range(self.min, self.max + 1, self.step))


@dataclass(frozen=True)
class FloatRange:
    min: float
    max: float
    log: bool = True


Domain = IntRange | FloatRange | tuple


def domain_values(d: Domain) -> list:
    """Every value of a discrete domain (a FloatRange has none)."""
    return d.values() if isinstance(d, IntRange) else list(d)


@dataclass(frozen=True)
class SpaceConfig:
    depth: IntRange | tuple
    width: IntRange | tuple
    head_mix: tuple
    families: tuple
    family_space: dict[str, dict[str, Domain]]
    mlp_mult: tuple
    lr: FloatRange | tuple
    batch_size: tuple


@dataclass(frozen=True)
class PruningConfig:
    ram_limit: int | str = "auto"  # bytes, or "auto" = ram_auto_share of the memory available at start
    ram_auto_share: float = 0.8
    gpu_memory_limit: int | str | None = None  # CUDA only: bytes or "auto" (a share of the device)
    pruner: str = "median"
    # warmup_steps and min_resource count Optuna steps: training steps, or tokens in a study with a
    # token budget (where the study file names them warmup_tokens and min_resource_tokens)
    warmup_steps: int = 0  # before the loss pruner may act
    startup_trials: int = 3
    interval_steps: int = 1
    percentile: float = 25.0
    min_resource: int | None = None  # successive_halving / hyperband; default: one evaluation
    reduction_factor: int = 3
    p_threshold: float = 0.1
    watch_interval_s: float = 0.05  # how often the parent samples the trial process's RSS


@dataclass(frozen=True)
class SamplerConfig:
    kind: str = "tpe"
    seed: int | None = 0
    multivariate: bool = True
    startup_trials: int = 10
    # None: on only when several workers share the study (it re-reads the store on every sample)
    constant_liar: bool | None = None


@dataclass(frozen=True)
class BaselinesConfig:
    """Plain multi-head configurations enqueued ahead of the search, each marked `role = baseline`."""

    enabled: bool = True
    sizes: tuple | None = None  # uniform head sizes, one baseline each; None: every space.uniform.size
    params: tuple = ()  # param tables enqueued as given (names as `show` prints them)


@dataclass(frozen=True)
class ValidationConfig:
    """Retrain the `top` best distinct configurations (and the best of every family) with `seeds` fresh seeds."""

    top: int = 3
    seeds: int = 3
    families: bool = True


@dataclass
class StudyConfig:
    name: str
    budget_params: int
    budget_tolerance: float
    space: SpaceConfig
    vocab_choices: tuple  # None = character level
    data: dict[str, Any] = field(default_factory=dict)  # TrainConfig data fields, tokenizer_vocab excluded
    training: dict[str, Any] = field(default_factory=dict)
    threads: int = 0  # torch threads per trial; 0 = the machine's cores shared by the workers
    model: dict[str, Any] = field(default_factory=dict)
    full_training: dict[str, Any] = field(default_factory=dict)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    validation: ValidationConfig | None = None  # set: `run` validates after the search
    objectives: tuple = (PRIMARY,)  # val_bpc, then any costs to minimize too (a multi-objective study)
    cost_seconds: float = 2.0  # time each trial spends measuring each cost
    tokens: int | None = None  # training tokens per trial; None: [training] max_steps
    eval_tokens: int | None = None
    warmup_tokens: int | None = None
    description: str = ""
    n_trials: int | None = None
    timeout_s: float | None = None
    storage: str = DEFAULT_STORAGE
    heartbeat_interval_s: int = 30  # a RUNNING trial's worker writes a heartbeat this often
    grace_period_s: int = 90  # a trial without a heartbeat for this long belongs to a dead worker: FAIL, retried
    source: str = "<dict>"
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def band(self) -> tuple[int, int]:
        """Inclusive parameter-count band of the budget."""
        lo = math.ceil(self.budget_params * (1 - self.budget_tolerance))
        hi = math.floor(self.budget_params * (1 + self.budget_tolerance))
        return lo, hi

    def train_config(self, **searched: Any) -> TrainConfig:
        """The per-trial TrainConfig: [data] + [training] + the searched values (lr, batch_size, ...).

        With a token budget, the step counts follow from the trial's batch size and sequence length.
        """
        d = {**self.data, **self.training, **searched}
        if self.tokens is not None:
            d.update(
                token_steps(
                    self.tokens,
                    self.eval_tokens,
                    self.warmup_tokens,
                    batch_size=d.get("batch_size", TrainConfig.batch_size),
                    seq_len=d.get("seq_len", TrainConfig.seq_len),
                )
            )
        return TrainConfig.from_dict(d)

    @property
    def cost_kinds(self) -> tuple[str, ...]:
        """The mfha.cost kinds a trial measures: "train" for train_cost, "decode" for decode_cost."""
        return tuple(o.removesuffix("_cost") for o in self.objectives[1:])

    @property
    def step_unit(self) -> str:
        """What an Optuna step (of a report, a pruner's warm-up) counts: "tokens" or "steps"."""
        return "tokens" if self.tokens is not None else "steps"

    @property
    def max_resource(self) -> int:
        """A whole trial, in Optuna steps."""
        return self.tokens if self.tokens is not None else self.train_config().max_steps

    @property
    def eval_every(self) -> int:
        """One evaluation, in Optuna steps."""
        return self.eval_tokens if self.tokens is not None else self.train_config().eval_interval

    def report_step(self, metrics: dict, *, last: bool) -> int:
        """The Optuna step of an evaluation: the training step, or with a token budget the token count
        it stands for (a multiple of eval_tokens, the budget itself at the end), the same in every trial."""
        if self.tokens is None:
            return metrics["step"]
        return self.tokens if last else metrics["tokens"] // self.eval_tokens * self.eval_tokens

    def with_overrides(
        self,
        *,
        dataset: str | None = None,
        storage: str | None = None,
        n_trials: int | None = None,
        timeout_s: float | None = None,
    ) -> StudyConfig:
        """A copy with command-line values in place of the file's (flag names in the errors)."""
        if n_trials is not None and (not _is_int(n_trials) or n_trials < 1):
            raise ConfigError(f"--n-trials must be a positive integer, but got {n_trials=}.")
        if timeout_s is not None and (not _is_num(timeout_s) or timeout_s <= 0):
            raise ConfigError(f"--timeout must be a positive number of seconds, but got {timeout_s=}.")
        if dataset is not None and not dataset:
            raise ConfigError("--dataset must be a Hub name or a path, but got an empty string.")
        return replace(
            self,
            data={**self.data, **({"dataset": dataset} if dataset else {})},
            storage=storage or self.storage,
            n_trials=n_trials if n_trials is not None else self.n_trials,
            timeout_s=timeout_s if timeout_s is not None else self.timeout_s,
        )


def load_study_file(path: str | Path) -> StudyConfig:
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and (REPO_ROOT / path).is_file():
        # the default studies/smoke.toml when run_search.py runs from another folder
        path = REPO_ROOT / path
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            near = get_close_matches(path.name, [p.name for p in path.parent.glob("*.toml")], n=1)
            hint = f"; did you mean {str(path.parent / near[0])!r}?" if near else ""
        raise ConfigError(f"study file {str(path)!r} does not exist{hint}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"study file {str(path)!r} is not valid TOML: {e}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"study file {str(path)!r} is not UTF-8 text.") from None
    return parse_study(raw, source=str(path))


def parse_study(raw: dict[str, Any], *, source: str = "<dict>") -> StudyConfig:
    return _Parser(raw, source).parse()


def parse_bytes(value: Any, key: str) -> int:
    """Bytes from an int or a string like '1.5 GiB' / '800 MB'."""
    if _is_int(value) and value > 0:
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Parser:
    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw = raw
        self.source = source

    def fail(self, msg: str) -> None:
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

    def parse(self) -> StudyConfig:
        if not isinstance(self.raw, dict):
            self.fail("a study file must be a TOML table.")
        self.unknown(self.raw, tuple(SECTION_KEYS), "")
        for name in REQUIRED_SECTIONS:
            if name not in self.raw:
                self.fail(
                    f"missing section [{name}]; every study file needs {', '.join(f'[{s}]' for s in REQUIRED_SECTIONS)}."
                )
        study = self.section("study")
        data = self.section("data")
        budget = self.section("budget")
        space_raw = self.section("space")
        model = self.section("model")
        training = self.section("training")
        pruning_raw = self.section("pruning")
        sampler_raw = self.section("sampler")
        full = self.section("full_training")

        name = study.get("name")
        self.rule(
            isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or "") is not None,
            "must be a name of letters, digits, '.', '_' or '-'",
            "study.name",
            name,
        )
        n_trials = study.get("n_trials")
        self.rule(
            n_trials is None or (_is_int(n_trials) and n_trials >= 1),
            "must be a positive integer",
            "study.n_trials",
            n_trials,
        )
        timeout_s = study.get("timeout_s")
        self.rule(
            timeout_s is None or (_is_num(timeout_s) and timeout_s > 0),
            "must be a positive number of seconds",
            "study.timeout_s",
            timeout_s,
        )
        if n_trials is None and timeout_s is None:
            self.fail("[study] needs n_trials or timeout_s (or both), so a run knows when to stop.")
        storage = study.get("storage", DEFAULT_STORAGE)
        self.rule(
            isinstance(storage, str) and "://" in storage,
            "must be an SQLAlchemy URL like 'sqlite:///storage/mfha.db'",
            "study.storage",
            storage,
        )
        description = study.get("description", "")
        heartbeat = study.get("heartbeat_interval_s", 30)
        self.rule(
            _is_int(heartbeat) and heartbeat >= 1,
            "must be a whole number of seconds >= 1",
            "study.heartbeat_interval_s",
            heartbeat,
        )
        grace = study.get("grace_period_s", 3 * heartbeat)
        self.rule(
            _is_int(grace) and grace > heartbeat,
            f"must be a whole number of seconds > study.heartbeat_interval_s={heartbeat}",
            "study.grace_period_s",
            grace,
        )
        self.rule(isinstance(description, str), "must be a string", "study.description", description)
        objectives = study.get("objectives", [PRIMARY])
        ok = (
            isinstance(objectives, list)
            and objectives[:1] == [PRIMARY]
            and len(set(objectives)) == len(objectives)
            and all(o in OBJECTIVES for o in objectives)
        )
        self.rule(
            ok,
            f"must be [{PRIMARY!r}] followed by any of {', '.join(repr(o) for o in OBJECTIVES[1:])}",
            "study.objectives",
            objectives,
        )
        cost = self.section("cost")
        if cost and len(objectives) == 1:
            self.fail(
                "[cost] is given but study.objectives has no cost; add 'train_cost' or 'decode_cost' to study.objectives, or remove [cost]."
            )
        cost_seconds = cost.get("seconds", 2.0)
        self.rule(
            _is_num(cost_seconds) and 0 < cost_seconds <= 60,
            "must be a number of seconds in (0, 60]",
            "cost.seconds",
            cost_seconds,
        )

        params = budget.get("params")
        self.rule(
            _is_int(params) and params >= 1,
            "must be a positive integer (the target parameter count)",
            "budget.params",
            params,
        )
        tol = budget.get("tolerance", 0.1)
        self.rule(_is_num(tol) and 0 < tol < 1, "must be a fraction in (0, 1)", "budget.tolerance", tol)

        vocab_choices = self.vocab(data.get("tokenizer_vocab", "char"))
        data_fields = {k: v for k, v in data.items() if k != "tokenizer_vocab"}
        space = self.space(space_raw)
        if "lr" in training and not (isinstance(space.lr, tuple) and len(space.lr) == 1):
            self.fail("training.lr is set but [space] searches lr; remove one of them.")
        if "batch_size" in training and len(space.batch_size) > 1:
            self.fail("training.batch_size is set but [space] searches batch_size; remove one of them.")
        if "lr" in training:
            space = _replace_space(space, lr=(training["lr"],))
        if "batch_size" in training:
            space = _replace_space(space, batch_size=(training["batch_size"],))
        threads = training.get("threads", 0)
        self.rule(
            _is_int(threads) and threads >= 0, "must be an integer >= 0 (0: all cores)", "training.threads", threads
        )
        tokens = self.token_budget(training, pruning_raw, space)
        training = {k: v for k, v in training.items() if k not in ("lr", "batch_size", "threads", *TOKEN_KEYS)}

        self.check_train_fields(data_fields, training, vocab_choices, space)
        self.check_model(model, training)
        pruning = self.pruning(pruning_raw, token_budget=tokens is not None)
        if len(objectives) > 1 and pruning.pruner not in MULTI_OBJECTIVE_PRUNERS:
            self.fail(
                f"pruning.pruner={pruning.pruner!r} cannot prune a multi-objective study (study.objectives={objectives!r}); "
                f"use one of {', '.join(MULTI_OBJECTIVE_PRUNERS)}."
            )
        sampler = self.sampler(sampler_raw)
        full = self.full_training(full)
        baselines = self.baselines(self.section("baselines"), space)
        validation = self.validation(self.section("validation")) if "validation" in self.raw else None
        return StudyConfig(
            name=name,
            budget_params=params,
            budget_tolerance=float(tol),
            space=space,
            vocab_choices=vocab_choices,
            data=data_fields,
            training=training,
            threads=threads,
            model=model,
            full_training=full,
            pruning=pruning,
            sampler=sampler,
            baselines=baselines,
            validation=validation,
            objectives=tuple(objectives),
            cost_seconds=float(cost_seconds),
            tokens=tokens[0] if tokens else None,
            eval_tokens=tokens[1] if tokens else None,
            warmup_tokens=tokens[2] if tokens else None,
            description=description,
            n_trials=n_trials,
            timeout_s=float(timeout_s) if timeout_s is not None else None,
            storage=storage,
            heartbeat_interval_s=heartbeat,
            grace_period_s=grace,
            source=self.source,
            raw=self.raw,
        )

    def token_budget(self, training: dict, pruning: dict, space: SpaceConfig) -> tuple[int, int, int] | None:
        """(tokens, eval_tokens, warmup_tokens) from [training], or None for a study counted in steps."""
        if "tokens" not in training:
            for k in ("eval_tokens", "warmup_tokens"):
                if k in training:
                    self.fail(
                        f"training.{k} needs training.tokens (a token budget per trial); set it, or use training.{k.replace('_tokens', '_interval' if k == 'eval_tokens' else '_steps')}."
                    )
            return None
        for steps_key, tokens_key in STEP_KEYS_IN_TOKENS.items():
            if steps_key in training:
                self.fail(
                    f"training.{steps_key} counts steps, but training.tokens sets a token budget (steps follow from each trial's batch size); "
                    f"use training.{tokens_key}, or remove training.tokens."
                )
        tokens = training["tokens"]
        self.rule(
            _is_int(tokens) and tokens >= 1,
            "must be a positive integer (training tokens per trial)",
            "training.tokens",
            tokens,
        )
        eval_tokens = training.get("eval_tokens", max(1, tokens // EVALS_PER_TRIAL))
        self.rule(
            _is_int(eval_tokens) and 1 <= eval_tokens <= tokens,
            f"must be an integer in [1, training.tokens={tokens}]",
            "training.eval_tokens",
            eval_tokens,
        )
        warmup = training.get("warmup_tokens", round(tokens * WARMUP_SHARE))
        self.rule(
            _is_int(warmup) and 0 <= warmup < tokens,
            f"must be an integer in [0, training.tokens={tokens})",
            "training.warmup_tokens",
            warmup,
        )
        return tokens, eval_tokens, warmup

    def baselines(self, b: dict[str, Any], space: SpaceConfig) -> BaselinesConfig:
        enabled = b.get("enabled", True)
        self.rule(isinstance(enabled, bool), "must be true or false", "baselines.enabled", enabled)
        sizes = b.get("sizes")
        if sizes is not None:
            ok = isinstance(sizes, list) and sizes and all(_is_int(x) for x in sizes) and len(set(sizes)) == len(sizes)
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
        self.rule(_is_int(top) and top >= 1, "must be a positive integer", "validation.top", top)
        seeds = v.get("seeds", d.seeds)
        self.rule(
            _is_int(seeds) and seeds >= 2,
            "must be an integer >= 2 (an interval needs two seeds)",
            "validation.seeds",
            seeds,
        )
        families = v.get("families", d.families)
        self.rule(isinstance(families, bool), "must be true or false", "validation.families", families)
        return ValidationConfig(top, seeds, families)

    def vocab(self, v: Any) -> tuple:
        items = v if isinstance(v, list) else [v]
        out = []
        for x in items:
            if x == "char":
                out.append(None)
            elif _is_int(x) and 8 <= x <= 65536:
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
            lo, hi, step = v.get("min"), v.get("max"), v.get("step", 1)
            ok = _is_int(lo) and _is_int(hi) and _is_int(step) and minimum <= lo <= hi and step >= 1
            self.rule(
                ok,
                f"must be a range {{min, max{', step' if allow_step else ''}}} of integers with {minimum} <= min <= max",
                key,
                v,
            )
            return IntRange(lo, hi, step)
        items = v if isinstance(v, list) else [v]
        ok = len(items) >= 1 and all(_is_int(x) and x >= minimum for x in items) and len(set(items)) == len(items)
        self.rule(ok, f"must be an integer >= {minimum}, a list of distinct ones, or a range {{min, max}}", key, v)
        return tuple(items)

    def num_choices(self, v: Any, key: str) -> tuple:
        items = v if isinstance(v, list) else [v]
        ok = len(items) >= 1 and all(_is_num(x) and x > 0 for x in items) and len(set(items)) == len(items)
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
            lo, hi, log = lr_raw.get("min"), lr_raw.get("max"), lr_raw.get("log", True)
            ok = _is_num(lo) and _is_num(hi) and 0 < lo < hi and isinstance(log, bool)
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
        return SpaceConfig(depth, width, tuple(mixes), tuple(fams), family_space, mlp, lr, batch)

    def family(self, fam: str, t: Any) -> dict[str, Domain]:
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
            ok = isinstance(lists, list) and lists and all(isinstance(x, list) and x for x in lists)
            self.rule(
                ok, "must be a list of head-size lists, e.g. [[32, 16, 16], [16, 16, 16, 16]]", f"{key}.sizes", lists
            )
            choices = tuple(" ".join(str(x) for x in sorted(sizes, reverse=True)) for sizes in lists)
            for text in choices:
                self.head_spec(fam, {"sizes": [int(x) for x in text.split()]}, key)
            return {"sizes": choices}
        dom: dict[str, Domain] = {}
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

    def check_train_fields(self, data: dict, training: dict, vocab_choices: tuple, space: SpaceConfig) -> None:
        lr0 = space.lr.min if isinstance(space.lr, FloatRange) else space.lr[0]
        for vocab in vocab_choices:
            try:
                TrainConfig.from_dict(
                    {**data, **training, "tokenizer_vocab": vocab, "lr": lr0, "batch_size": space.batch_size[0]}
                )
            except ConfigError as e:
                self.fail(_prefix_keys(str(e), {**{k: "data" for k in data}, **{k: "training" for k in training}}))

    def check_model(self, model: dict, training: dict) -> None:
        seq_len = training.get("seq_len", TrainConfig.seq_len)
        max_seq_len = model.get("max_seq_len", seq_len)
        self.rule(
            _is_int(max_seq_len) and max_seq_len >= seq_len,
            f"must be >= training.seq_len={seq_len}",
            "model.max_seq_len",
            max_seq_len,
        )
        try:
            ModelConfig.from_dict(
                {**model, "vocab_size": 8, "dim": 8, "n_layers": 1, "heads": {"family": "uniform", "n": 1, "size": 8}}
            )
        except ConfigError as e:
            self.fail(f"[model]: {e}")

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
        self.rule(_is_num(share) and 0 < share <= 1, "must be a fraction in (0, 1]", "pruning.ram_auto_share", share)
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
                _is_int(v) and v >= minimum,
                f"must be an integer >= {minimum}",
                f"pruning.{_file_key(k, token_budget)}",
                v,
            )
            vals[k] = v
        mr = p.get("min_resource")
        self.rule(
            mr is None or (_is_int(mr) and mr >= 1),
            f"must be a positive number of {'tokens' if token_budget else 'steps'}",
            f"pruning.{_file_key('min_resource', token_budget)}",
            mr,
        )
        pct = p.get("percentile", d.percentile)
        self.rule(_is_num(pct) and 0 < pct < 100, "must be in (0, 100)", "pruning.percentile", pct)
        pth = p.get("p_threshold", d.p_threshold)
        self.rule(_is_num(pth) and 0 < pth < 1, "must be in (0, 1)", "pruning.p_threshold", pth)
        wi = p.get("watch_interval_s", d.watch_interval_s)
        self.rule(_is_num(wi) and 0.001 <= wi <= 10, "must be in [0.001, 10] seconds", "pruning.watch_interval_s", wi)
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
        self.rule(seed is None or _is_int(seed), "must be an integer", "sampler.seed", seed)
        mv = s.get("multivariate", d.multivariate)
        self.rule(isinstance(mv, bool), "must be true or false", "sampler.multivariate", mv)
        st = s.get("startup_trials", d.startup_trials)
        self.rule(_is_int(st) and st >= 0, "must be an integer >= 0", "sampler.startup_trials", st)
        cl = s.get("constant_liar", d.constant_liar)
        self.rule(cl is None or isinstance(cl, bool), "must be true or false", "sampler.constant_liar", cl)
        return SamplerConfig(kind, seed, mv, st, cl)

    def full_training(self, f: dict[str, Any]) -> dict[str, Any]:
        if "tokens" in f:
            self.rule(
                _is_int(f["tokens"]) and f["tokens"] >= 1,
                "must be a positive integer (training tokens)",
                "full_training.tokens",
                f["tokens"],
            )
            if "max_steps" in f:
                self.fail("full_training sets both tokens and max_steps; keep one of them.")
        try:
            TrainConfig.from_dict({k: v for k, v in f.items() if k != "tokens"})
        except ConfigError as e:
            self.fail(_prefix_keys(str(e), {k: "full_training" for k in f}))
        return dict(f)


def _file_key(key: str, token_budget: bool) -> str:
    """The study-file name of a PruningConfig field (the token names in a token-budget study)."""
    return (
        {"warmup_steps": "warmup_tokens", "min_resource": "min_resource_tokens"}.get(key, key) if token_budget else key
    )


def token_steps(tokens: int, eval_tokens: int, warmup_tokens: int, *, batch_size: int, seq_len: int) -> dict[str, int]:
    """TrainConfig step fields for a token budget: every trial sees `tokens` tokens, to within one batch."""
    per_step = batch_size * seq_len
    return {
        "max_steps": -(-tokens // per_step),
        "eval_tokens": eval_tokens,
        "eval_interval": max(1, eval_tokens // per_step),
        "warmup_steps": round(warmup_tokens / per_step),
    }


def _prefix_keys(msg: str, sections: dict[str, str]) -> str:
    """TrainConfig's message with each field written as the study-file key that set it."""
    for k, sec in sections.items():
        msg = re.sub(rf"(?<![.\w]){re.escape(k)}\b", f"{sec}.{k}", msg)
    return msg


def _replace_space(space: SpaceConfig, **kw: Any) -> SpaceConfig:
    return replace(space, **kw)


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
    "StudyConfig",
    "SpaceConfig",
    "PruningConfig",
    "SamplerConfig",
    "BaselinesConfig",
    "ValidationConfig",
    "IntRange",
    "FloatRange",
    "token_steps",
    "load_study_file",
    "parse_study",
    "parse_bytes",
    "make_head_spec",
    "domain_values",
    "DEFAULT_STORAGE",
    "PRUNERS",
    "HEAD_MIXES",
    "OBJECTIVES",
    "PRIMARY",
]
