"""Model and training configs: plain dataclasses that round-trip through JSON.

Derived fields are declared `... | None = None` and filled in `__post_init__` (never computed at
class-definition time), and are left out of `to_dict` so an edited JSON file cannot disagree with them.
"""

from __future__ import annotations

import json
import math
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from mfha.errors import ConfigError
from mfha.heads import HeadSpec, uniform

Device = Literal["auto", "cpu", "cuda"]


def _check(ok: bool, rule: str, name: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{rule}, but got {name}={value!r}.")


def is_int(v: Any) -> bool:
    """An int that is not a bool (JSON and TOML give bools for `true`, and `True == 1`)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _JsonConfig:
    # set on each subclass by @dataclass; declared so that `fields(self)` type-checks
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]
    _derived: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in self._derived}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__} must be a JSON object, but got {type(d).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            from difflib import get_close_matches

            near = get_close_matches(unknown[0], sorted(known), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known fields: {', '.join(sorted(known))}."
            raise ConfigError(f"unknown {cls.__name__} field {unknown[0]!r}{hint}")
        return cls(**{k: v for k, v in d.items() if k not in cls._derived})

    @classmethod
    def from_file(cls, path: str | Path, *, require: tuple[str, ...] = ()):
        """The config in a JSON file; `require` names fields the file must set itself (a user's own file,
        where a default would silently build something else), while files the product wrote load as they are."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{cls.__name__} file {str(path)!r} does not exist.") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cls.__name__} file {str(path)!r} is not valid JSON: {e}.") from None
        missing = [name for name in require if isinstance(d, dict) and name not in d]
        if missing:
            raise ConfigError(
                f"{cls.__name__} file {str(path)!r} must set {_and(require)}, but it lacks {_and(missing)}; "
                f"add {_and([json.dumps(name) for name in missing])} to it."
            )
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _and(names: list[str] | tuple[str, ...]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _plain(v: Any) -> Any:
    if isinstance(v, HeadSpec):
        return v.to_dict()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


@dataclass
class ModelConfig(_JsonConfig):
    # what a model config the user writes must set (ModelConfig.from_file(path, require=...)): the
    # defaults would train another model without a word; vocab_size comes from the tokenizer
    USER_FIELDS: ClassVar[tuple[str, ...]] = ("dim", "n_layers", "heads")

    vocab_size: int = 256
    dim: int = 128
    n_layers: int = 4
    # one spec for every layer, or a list with one spec per layer
    heads: HeadSpec | list[HeadSpec] = field(default_factory=lambda: uniform(n=4, size=32))
    max_seq_len: int = 256
    mlp_mult: float = 4.0  # SwiGLU hidden = mlp_mult * dim * 2/3 rounded up to 8, as in LLaMA
    kv_share: int = 1  # query heads per K/V head inside a size group (1 = plain multi-head)
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    layer_heads: list[HeadSpec] | None = None  # derived: the spec of each layer
    mlp_hidden: int | None = None  # derived

    _derived: ClassVar[tuple[str, ...]] = ("layer_heads", "mlp_hidden")

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "max_seq_len", "kv_share"):
            _check(
                is_int(getattr(self, name)) and getattr(self, name) >= 1,
                f"{name} must be a positive integer",
                name,
                getattr(self, name),
            )
        _check(
            is_num(self.mlp_mult) and self.mlp_mult > 0,
            "mlp_mult must be a positive number",
            "mlp_mult",
            self.mlp_mult,
        )
        _check(is_num(self.rope_base) and self.rope_base > 1, "rope_base must be > 1", "rope_base", self.rope_base)
        _check(is_num(self.norm_eps) and self.norm_eps > 0, "norm_eps must be positive", "norm_eps", self.norm_eps)
        _check(is_num(self.init_std) and self.init_std > 0, "init_std must be positive", "init_std", self.init_std)
        self.heads = _as_heads(self.heads)
        if isinstance(self.heads, list):
            _check(
                len(self.heads) == self.n_layers,
                f"per-layer heads need one spec per layer (n_layers={self.n_layers})",
                "len(heads)",
                len(self.heads),
            )
            self.layer_heads = list(self.heads)
        else:
            self.layer_heads = [self.heads] * self.n_layers
        for i, spec in enumerate(self.layer_heads):
            for size, count in spec.groups():
                n_kv = max(1, count // self.kv_share)
                if count % n_kv:
                    raise ConfigError(
                        f"kv_share must leave each size group with a whole number of query heads per K/V head, "
                        f"but got kv_share={self.kv_share} for {count} heads of size {size} in layer {i}."
                    )
        self.mlp_hidden = 8 * math.ceil(self.mlp_mult * self.dim * 2 / 3 / 8)

    def kv_heads(self, count: int) -> int:
        """K/V heads for a size group of `count` query heads."""
        return max(1, count // self.kv_share)

    def describe_heads(self) -> str:
        """One line: the shared spec, or the per-layer specs separated by ' | '."""
        if isinstance(self.heads, HeadSpec):
            return self.heads.render()
        if self.layer_heads is None:
            raise TypeError("ModelConfig.layer_heads is None, but ModelConfig.__post_init__ sets it.")
        return " | ".join(h.render() for h in self.layer_heads)


def _as_heads(v: Any) -> HeadSpec | list[HeadSpec]:
    if isinstance(v, HeadSpec):
        return v
    if isinstance(v, dict):
        return HeadSpec.from_dict(v)
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (dict, HeadSpec)) for x in v):
        return [x if isinstance(x, HeadSpec) else HeadSpec.from_dict(x) for x in v]
    raise ConfigError(f"heads must be a head spec or a list of one spec per layer, but got heads={v!r}.")


@dataclass
class TrainConfig(_JsonConfig):
    dataset: str = "roneneldan/TinyStories"  # a Hub name or a local folder/file
    text_column: str = "text"
    max_train_stories: int | None = None  # bound the slice so CPU runs stay bounded
    max_train_tokens: int | None = None
    max_val_stories: int | None = None
    tokenizer_vocab: int | None = None  # None: character level; else BPE up to this size
    batch_size: int = 16
    seq_len: int = 128
    max_steps: int = 1000
    max_time_s: float | None = None  # optional wall-clock budget; the LR schedule then follows time
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 100
    # evaluate each time the tokens seen pass a multiple of this instead (runs of different batch
    # sizes then evaluate at the same token counts, within one batch)
    eval_tokens: int | None = None
    eval_windows: int = 64  # fixed validation windows of seq_len tokens
    seed: int = 1337
    device: Device = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "max_steps", "eval_interval", "eval_windows"):
            _check(
                is_int(getattr(self, name)) and getattr(self, name) >= 1,
                f"{name} must be a positive integer",
                name,
                getattr(self, name),
            )
        _check(
            self.eval_tokens is None or (is_int(self.eval_tokens) and self.eval_tokens >= 1),
            "eval_tokens must be a positive integer or null",
            "eval_tokens",
            self.eval_tokens,
        )
        for name in ("max_train_stories", "max_train_tokens", "max_val_stories", "max_time_s"):
            v = getattr(self, name)
            _check(v is None or (is_num(v) and v > 0), f"{name} must be positive or null", name, v)
        _check(
            self.tokenizer_vocab is None or (is_int(self.tokenizer_vocab) and 8 <= self.tokenizer_vocab <= 65536),
            "tokenizer_vocab must be null (character level) or an integer in [8, 65536]",
            "tokenizer_vocab",
            self.tokenizer_vocab,
        )
        _check(
            is_int(self.warmup_steps) and self.warmup_steps >= 0,
            "warmup_steps must be an integer >= 0",
            "warmup_steps",
            self.warmup_steps,
        )
        _check(is_num(self.lr) and self.lr > 0, "lr must be positive", "lr", self.lr)
        _check(
            is_num(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
            "min_lr_ratio must be in [0, 1]",
            "min_lr_ratio",
            self.min_lr_ratio,
        )
        _check(
            is_num(self.weight_decay) and self.weight_decay >= 0,
            "weight_decay must be >= 0",
            "weight_decay",
            self.weight_decay,
        )
        for name in ("beta1", "beta2"):
            _check(
                is_num(getattr(self, name)) and 0 <= getattr(self, name) < 1,
                f"{name} must be in [0, 1)",
                name,
                getattr(self, name),
            )
        _check(
            is_num(self.grad_clip) and self.grad_clip >= 0,
            "grad_clip must be >= 0 (0 disables it)",
            "grad_clip",
            self.grad_clip,
        )
        _check(is_int(self.seed), "seed must be an integer", "seed", self.seed)
        _check(
            self.device in get_args(Device),
            f"device must be one of {', '.join(get_args(Device))}",
            "device",
            self.device,
        )
        _check(isinstance(self.compile, bool), "compile must be true or false", "compile", self.compile)
        _check(
            isinstance(self.dataset, str) and self.dataset != "",
            "dataset must be a Hub name or a path",
            "dataset",
            self.dataset,
        )


def steps_for_tokens(tokens: int, *, batch_size: int, seq_len: int) -> int:
    """Optimizer steps that read at least `tokens` tokens at this batch and sequence length."""
    return -(-tokens // (batch_size * seq_len))


def token_steps(tokens: int, eval_tokens: int, warmup_tokens: int, *, batch_size: int, seq_len: int) -> dict[str, int]:
    """TrainConfig step fields for a token budget: every trial sees `tokens` tokens, to within one batch."""
    per_step = batch_size * seq_len
    return {
        "max_steps": steps_for_tokens(tokens, batch_size=batch_size, seq_len=seq_len),
        "eval_tokens": eval_tokens,
        "eval_interval": max(1, eval_tokens // per_step),
        "warmup_steps": round(warmup_tokens / per_step),
    }


__all__ = ["Device", "ModelConfig", "TrainConfig", "is_int", "is_num", "steps_for_tokens", "token_steps"]
