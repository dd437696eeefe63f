"""search: Optuna over MFHA head-size mixes, depth and width under a parameter budget.

Four wings, each importing only from the ones before it (and from `mfha`):

- `search.study`: the study file (types, parser), the space, the loss pruner, multi-objective views,
  and what a study's trials are (roles, names, ranking).
- `search.store`: where studies live: storage URLs, the fast RDB reads, opening a study, folders.
- `search.run`: running trials (runner, objective, trial processes, workers, host core slots,
  validation, the RAM decision, trial artifacts).
- `search.results`: reading what runs left (evidence, statistics, export, tables, report, dashboard).

`run` and `results` sit side by side on `store`: neither imports the other.
Names are re-exported here lazily (PEP 562), so `run_search.py show --help` does not import torch and
the trial forkserver, which imports `search.run.child`, does not import Optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "search.study.types": [
        "StudyConfig",
        "SpaceConfig",
        "PruningConfig",
        "SamplerConfig",
        "BaselinesConfig",
        "ValidationConfig",
        "IntRange",
        "FloatRange",
        "DEFAULT_STORAGE",
        "PRUNERS",
        "HEAD_MIXES",
    ],
    "search.study.parser": ["load_study_file", "parse_study", "parse_bytes"],
    "search.study.space": [
        "SearchSpace",
        "SpaceSampler",
        "Candidate",
        "Infeasible",
        "DERIVED_PARAMS",
        "MAX_WASTED_SHARE",
    ],
    "search.study.pruners": ["make_loss_pruner"],
    "search.study.trials": ["ranked", "validation_name", "mixes_sizes", "objective_names", "BASELINE"],
    "search.store.storage": [
        "make_storage",
        "mask_url",
        "sqlite_path",
        "default_artifacts_dir",
        "open_study",
        "artifact_store",
    ],
    "search.run.memory": ["MemoryAwarePruner", "fmt_bytes"],
    "search.run.forkserver": ["start_forkserver"],
    "search.run.objective": ["Objective", "TrialSettings", "TrialFailed", "config_key"],
    "search.run.prepare": ["prepare", "Prepared"],
    "search.run.console": ["Interrupted"],
    "search.run.runner": ["run_study", "search_study", "count_trials", "summarize", "RunSummary"],
    "search.run.validation": [
        "run_validation",
        "enqueue_validation",
        "check_flags",
        "select_configs",
        "validation_seeds",
        "stored_config",
        "Pick",
    ],
    "search.run.workers": ["TrialSlots", "SurplusTrial", "run_workers", "worker_threads"],
    "search.run.artifacts": [
        "write_config_files",
        "write_result_files",
        "render_loss_curve",
        "upload_trial_artifacts",
        "study_note",
        "save_study_note",
    ],
    "search.results.stats": ["Interval", "mean_interval", "difference_interval"],
    "search.results.evidence": ["Validated", "validated", "load_validation"],
    "search.results.export": ["export_trials", "Exported"],
    "search.results.tables": [
        "show",
        "format_table",
        "trial_rows",
        "trials_frame",
        "studies_frame",
        "validated_table",
        "study_file_text",
    ],
    "search.results.report": ["write_report", "Report"],
    "search.results.dashboard": ["serve", "is_loopback"],
    # these two moved to mfha (one home for head specs and for tokens-to-steps); still importable here
    "mfha.config": ["token_steps"],
    "mfha.heads": ["make_head_spec"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
