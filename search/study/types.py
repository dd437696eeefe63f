"""The study's data model: what a study file says, as validated dataclasses (parsed by `parser`).

Ranges are `IntRange`/`FloatRange`, choices are tuples; `StudyConfig` derives the trials' TrainConfig
and the step/token arithmetic from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mfha.config import TrainConfig, is_int, is_num, token_steps
from mfha.errors import ConfigError
from mfha.heads import HEAD_FAMILIES

DEFAULT_STORAGE = "sqlite:///storage/mfha.db"
REPO_ROOT = Path(__file__).resolve().parents[2]
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
# multi-objective study refuses; the other pruners are given the val_bpc view (search/study/views.py)
MULTI_OBJECTIVE_PRUNERS = ("median", "percentile", "successive_halving", "wilcoxon", "none")


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


def domain_values(d: IntRange | tuple) -> list:
    """Every value of a discrete domain (a FloatRange has none)."""
    return d.values() if isinstance(d, IntRange) else list(d)


@dataclass(frozen=True)
class SpaceConfig:
    depth: IntRange | tuple
    width: IntRange | tuple
    head_mix: tuple
    families: tuple
    family_space: dict[str, dict[str, IntRange | tuple]]  # head families' domains are all discrete
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
            # the parser sets tokens, eval_tokens and warmup_tokens together
            assert self.eval_tokens is not None and self.warmup_tokens is not None
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
        if self.tokens is not None:
            assert self.eval_tokens is not None  # set with tokens by the parser
            return self.eval_tokens
        return self.train_config().eval_interval

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
        if n_trials is not None and (not is_int(n_trials) or n_trials < 1):
            raise ConfigError(f"--n-trials must be a positive integer, but got {n_trials=}.")
        if timeout_s is not None and (not is_num(timeout_s) or timeout_s <= 0):
            raise ConfigError(f"--timeout must be a positive number of seconds, but got {timeout_s=}.")
        if dataset is not None and not dataset:
            raise ConfigError("--dataset must be a Hub name or a path, but got an empty string.")
        if storage is not None and not storage.strip():
            # what --storage "$MFHA_STORAGE" gives when the variable is unset: never the local default
            raise ConfigError(
                '--storage is empty (an unset variable, as in --storage "$MFHA_STORAGE"?); pass a URL such as '
                "sqlite:///storage/mfha.db, or leave --storage out for the study file's."
            )
        return replace(
            self,
            data={**self.data, **({"dataset": dataset} if dataset else {})},
            storage=storage or self.storage,
            n_trials=n_trials if n_trials is not None else self.n_trials,
            timeout_s=timeout_s if timeout_s is not None else self.timeout_s,
        )


__all__ = [
    "StudyConfig",
    "SpaceConfig",
    "PruningConfig",
    "SamplerConfig",
    "BaselinesConfig",
    "ValidationConfig",
    "IntRange",
    "FloatRange",
    "Domain",
    "domain_values",
    "DEFAULT_STORAGE",
    "REPO_ROOT",
    "PRUNERS",
    "SAMPLERS",
    "HEAD_MIXES",
    "OBJECTIVES",
    "PRIMARY",
]
