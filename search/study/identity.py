"""What makes a rerun the same study: the parts of a study file that change what a trial is.

Optuna's answer to a changed search space is a new study. A resumed study must therefore be run with
what made it: [data], [budget], [space], [model], [training] (less `threads`, a host setting),
`study.objectives`, and the effective dataset (by content: a Hub name, or a local copy's file names and sizes) and device
(a `--dataset` or `--device` flag counts).
Everything else (description, n_trials, timeout_s, heartbeat, the RAM limit and pruner, [sampler],
[baselines], [validation], [full_training], [cost]) may change between runs: it decides how many
trials run, or what happens around them, not what a trial trains.
"""

from __future__ import annotations

import json
from typing import Any

from mfha.errors import MFHAError
from search.study.types import StudyConfig

# the sections of a study file that define a trial, in the order a difference is reported
TRIAL_SECTIONS = ("data", "budget", "space", "model", "training")
HOST_KEYS = ("threads",)  # [training] keys that change how fast a trial runs, not what it trains


def trial_definition(config: StudyConfig, *, device: str | None) -> dict[str, Any]:
    """The study file's trial-defining keys as `section.key` -> value, with the effective dataset (by
    content) and device; JSON-ready, so it can be stored on the study."""
    out: dict[str, Any] = {}
    for section in TRIAL_SECTIONS:
        table = config.raw.get(section, {})
        for key in sorted(table):
            if not (section == "training" and key in HOST_KEYS):
                out[f"{section}.{key}"] = table[key]
    out["data.dataset"] = _dataset(config.train_config().dataset)
    if device is not None:
        out["training.device"] = device
    out["study.objectives"] = list(config.objectives)
    return json.loads(json.dumps(out))  # tuples as lists, as they come back from the store


def first_difference(stored: dict[str, Any], now: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first trial-defining key whose value differs, with both values (None where unset)."""
    order = {s: i for i, s in enumerate((*TRIAL_SECTIONS, "study"))}
    keys = sorted(set(stored) | set(now), key=lambda k: (order.get(k.split(".")[0], len(order)), k))
    for key in keys:
        if stored.get(key) != now.get(key):
            return key, stored.get(key), now.get(key)
    return None


def other_changes(stored_raw: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """The `section.key`s outside the trial definition that differ between two study files."""
    changed = []
    for section in sorted(set(stored_raw) | set(raw)):
        old, new = stored_raw.get(section, {}), raw.get(section, {})
        for key in sorted(set(old) | set(new)):
            if section == "study" and key in ("objectives", "storage"):
                continue  # objectives are trial-defining; the storage is where the study is, not what it is
            if (section in TRIAL_SECTIONS and not (section == "training" and key in HOST_KEYS)) or old.get(
                key
            ) == new.get(key):
                continue
            changed.append(f"{section}.{key}")
    return changed


def _dataset(name: str) -> str:
    """The dataset by content: a Hub name as it is, a local folder or file by its files' names and sizes
    (machines sharing one study may hold their copies in different folders)."""
    from mfha.sources import Source

    try:
        return Source.resolve(name).content()
    except MFHAError:
        return name  # not readable here: its name is all there is to compare


__all__ = ["trial_definition", "first_difference", "other_changes", "TRIAL_SECTIONS"]
