"""mfha: small GPTs whose attention layers mix heads of different sizes (no Optuna in here).

Names are re-exported lazily (PEP 562): `import mfha.errors` or `mfha.config` does not import torch,
so the search CLI's `show`, `studies`, `--help` and its error messages skip torch's 2-3 s import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "config": ["ModelConfig", "TrainConfig"],
    "cost": ["Cost", "measure_cost"],
    "errors": ["ConfigError", "DataError", "MFHAError", "TrainingDiverged"],
    "heads": ["HeadSpec", "explicit", "fractal", "geometric", "uniform"],
    "memory": ["estimate_training_peak", "measure_training_peak"],
    "model": ["GPT", "count_parameters"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "GPT",
    "ConfigError",
    "Cost",
    "DataError",
    "HeadSpec",
    "MFHAError",
    "ModelConfig",
    "TrainConfig",
    "TrainingDiverged",
    "count_parameters",
    "estimate_training_peak",
    "explicit",
    "fractal",
    "geometric",
    "measure_cost",
    "measure_training_peak",
    "uniform",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mfha' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mfha.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
