"""search: Optuna over MFHA head-size mixes, depth and width under a parameter budget.

Names are re-exported lazily (PEP 562), so `run_search.py show --help` does not import torch and
the trial forkserver, which imports `search._child`, does not import Optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "_study_file": [
        "StudyConfig",
        "SpaceConfig",
        "PruningConfig",
        "SamplerConfig",
        "BaselinesConfig",
        "ValidationConfig",
        "IntRange",
        "FloatRange",
        "load_study_file",
        "token_steps",
        "parse_study",
        "parse_bytes",
        "make_head_spec",
        "DEFAULT_STORAGE",
        "PRUNERS",
        "HEAD_MIXES",
    ],
    "_space": ["SearchSpace", "SpaceSampler", "Candidate", "Infeasible", "DERIVED_PARAMS", "MAX_WASTED_SHARE"],
    "_pruners": ["MemoryAwarePruner", "make_loss_pruner", "fmt_bytes"],
    "_storage": ["make_storage", "mask_url", "sqlite_path", "default_artifacts_dir"],
    "_objective": ["Objective", "TrialSettings", "TrialFailed", "config_key", "start_forkserver"],
    "_runner": [
        "run_study",
        "prepare",
        "search_study",
        "count_trials",
        "summarize",
        "RunSummary",
        "Prepared",
        "Interrupted",
    ],
    "_export": [
        "export_trials",
        "show",
        "format_table",
        "trial_rows",
        "trials_frame",
        "studies_frame",
        "open_study",
        "ranked",
        "Exported",
        "validated_table",
    ],
    "_stats": ["Interval", "mean_interval", "difference_interval"],
    "_evidence": ["Validated", "validated", "load_validation", "validation_name", "mixes_sizes"],
    "_report": ["write_report", "Report"],
    "_validation": [
        "run_validation",
        "enqueue_validation",
        "check_flags",
        "select_configs",
        "validation_seeds",
        "stored_config",
        "Pick",
    ],
    "_workers": ["TrialSlots", "SurplusTrial", "run_workers", "worker_threads"],
    "_dashboard": [
        "serve",
        "artifact_store",
        "write_config_files",
        "write_result_files",
        "render_loss_curve",
        "upload_trial_artifacts",
        "study_note",
        "save_study_note",
        "is_loopback",
    ],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"search.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
