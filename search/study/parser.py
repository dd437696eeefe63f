"""Study files: TOML describing one search, parsed into a validated `StudyConfig`.

Every rule raises `ConfigError` with one line naming the key (`space.depth`, `pruning.ram_limit`)
and, for an unknown key, the nearest valid one. Ranges are tables (`{min = 1, max = 4}`), choices
are lists (`[16, 32]`); a bare scalar is a fixed value.
"""

from __future__ import annotations

import re
import tomllib
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from mfha.config import ModelConfig, TrainConfig, is_int, is_num
from mfha.errors import ConfigError
from search.study.rules import SectionRules, parse_bytes, prefix_keys, replace_space
from search.study.trials import VALIDATION_SUFFIX
from search.study.types import (
    DEFAULT_STORAGE,
    EVALS_PER_TRIAL,
    MULTI_OBJECTIVE_PRUNERS,
    OBJECTIVES,
    PRIMARY,
    REPO_ROOT,
    REQUIRED_SECTIONS,
    SECTION_KEYS,
    STEP_KEYS_IN_TOKENS,
    TOKEN_KEYS,
    WARMUP_SHARE,
    FloatRange,
    SpaceConfig,
    StudyConfig,
)


def load_study_file(path: str | Path) -> StudyConfig:
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and (REPO_ROOT / path).is_file():
        # the default studies/smoke.toml when run_search.py runs from another folder
        path = REPO_ROOT / path
    if path.is_dir():
        raise ConfigError(f"study file {str(path)!r} is a folder; pass the path of a .toml file in it.")
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            near = get_close_matches(path.name, [p.name for p in path.parent.glob("*.toml")], n=1)
            hint = f"; did you mean {str(path.parent / near[0])!r}?" if near else ""
        raise ConfigError(f"study file {str(path)!r} does not exist{hint}")
    try:
        # utf-8-sig: a byte-order mark, as some Windows editors write, is read as nothing (TOML has none)
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except PermissionError:
        raise ConfigError(
            f"study file {str(path)!r} cannot be read (permission denied); check its permissions."
        ) from None
    except OSError as e:
        raise ConfigError(f"study file {str(path)!r} cannot be read: {e.strerror}.") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"study file {str(path)!r} is not valid TOML: {e}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"study file {str(path)!r} is not UTF-8 text.") from None
    return parse_study(raw, source=str(path))


def parse_study(raw: dict[str, Any], *, source: str = "<dict>") -> StudyConfig:
    return StudyParser(raw, source).parse()


class StudyParser(SectionRules):
    """The whole file: each section through its rule, then the rules that tie sections together."""

    def parse(self) -> StudyConfig:
        if not isinstance(self.raw, dict):
            self.fail("a study file must be a TOML table.")
        self.unknown(self.raw, tuple(SECTION_KEYS), "")
        for required in REQUIRED_SECTIONS:
            if required not in self.raw:
                self.fail(
                    f"missing section [{required}]; every study file needs {', '.join(f'[{s}]' for s in REQUIRED_SECTIONS)}."
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

        name: Any = study.get("name")  # a file value, checked by the rule below
        self.rule(
            isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or "") is not None,
            "must be a name of letters, digits, '.', '_' or '-'",
            "study.name",
            name,
        )
        self.rule(
            not name.endswith(VALIDATION_SUFFIX),
            f"must not end in {VALIDATION_SUFFIX!r}, which names the companion study that `validate` writes",
            "study.name",
            name,
        )
        n_trials = study.get("n_trials")
        self.rule(
            n_trials is None or (is_int(n_trials) and n_trials >= 1),
            "must be a positive integer",
            "study.n_trials",
            n_trials,
        )
        timeout_s = study.get("timeout_s")
        self.rule(
            timeout_s is None or (is_num(timeout_s) and timeout_s > 0),
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
            is_int(heartbeat) and heartbeat >= 1,
            "must be a whole number of seconds >= 1",
            "study.heartbeat_interval_s",
            heartbeat,
        )
        grace = study.get("grace_period_s", 3 * heartbeat)
        self.rule(
            is_int(grace) and grace > heartbeat,
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
            is_num(cost_seconds) and 0 < cost_seconds <= 60,
            "must be a number of seconds in (0, 60]",
            "cost.seconds",
            cost_seconds,
        )

        params: Any = budget.get("params")
        self.rule(
            is_int(params) and params >= 1,
            "must be a positive integer (the target parameter count)",
            "budget.params",
            params,
        )
        tol = budget.get("tolerance", 0.1)
        self.rule(is_num(tol) and 0 < tol < 1, "must be a fraction in (0, 1)", "budget.tolerance", tol)

        vocab_choices = self.vocab(data.get("tokenizer_vocab", "char"))
        data_fields = {k: v for k, v in data.items() if k != "tokenizer_vocab"}
        space = self.space(space_raw)
        if "lr" in training and not (isinstance(space.lr, tuple) and len(space.lr) == 1):
            self.fail("training.lr is set but [space] searches lr; remove one of them.")
        if "batch_size" in training and len(space.batch_size) > 1:
            self.fail("training.batch_size is set but [space] searches batch_size; remove one of them.")
        if "lr" in training:
            space = replace_space(space, lr=(training["lr"],))
        if "batch_size" in training:
            space = replace_space(space, batch_size=(training["batch_size"],))
        threads = training.get("threads", 0)
        self.rule(
            is_int(threads) and threads >= 0, "must be an integer >= 0 (0: all cores)", "training.threads", threads
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
            is_int(tokens) and tokens >= 1,
            "must be a positive integer (training tokens per trial)",
            "training.tokens",
            tokens,
        )
        eval_tokens = training.get("eval_tokens", max(1, tokens // EVALS_PER_TRIAL))
        self.rule(
            is_int(eval_tokens) and 1 <= eval_tokens <= tokens,
            f"must be an integer in [1, training.tokens={tokens}]",
            "training.eval_tokens",
            eval_tokens,
        )
        warmup = training.get("warmup_tokens", round(tokens * WARMUP_SHARE))
        self.rule(
            is_int(warmup) and 0 <= warmup < tokens,
            f"must be an integer in [0, training.tokens={tokens})",
            "training.warmup_tokens",
            warmup,
        )
        return tokens, eval_tokens, warmup

    def check_train_fields(self, data: dict, training: dict, vocab_choices: tuple, space: SpaceConfig) -> None:
        lr0 = space.lr.min if isinstance(space.lr, FloatRange) else space.lr[0]
        for vocab in vocab_choices:
            try:
                TrainConfig.from_dict(
                    {**data, **training, "tokenizer_vocab": vocab, "lr": lr0, "batch_size": space.batch_size[0]}
                )
            except ConfigError as e:
                self.fail(prefix_keys(str(e), {**dict.fromkeys(data, "data"), **dict.fromkeys(training, "training")}))

    def check_model(self, model: dict, training: dict) -> None:
        seq_len = training.get("seq_len", TrainConfig.seq_len)
        max_seq_len = model.get("max_seq_len", seq_len)
        self.rule(
            is_int(max_seq_len) and max_seq_len >= seq_len,
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

    def full_training(self, f: dict[str, Any]) -> dict[str, Any]:
        if "tokens" in f:
            self.rule(
                is_int(f["tokens"]) and f["tokens"] >= 1,
                "must be a positive integer (training tokens)",
                "full_training.tokens",
                f["tokens"],
            )
            if "max_steps" in f:
                self.fail("full_training sets both tokens and max_steps; keep one of them.")
        try:
            TrainConfig.from_dict({k: v for k, v in f.items() if k != "tokens"})
        except ConfigError as e:
            self.fail(prefix_keys(str(e), dict.fromkeys(f, "full_training")))
        return dict(f)


__all__ = ["load_study_file", "parse_study", "parse_bytes", "StudyParser"]
