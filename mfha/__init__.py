"""mfha: small GPTs whose attention layers mix heads of different sizes (no Optuna in here)."""
from mfha.config import ModelConfig, TrainConfig
from mfha.errors import ConfigError, DataError, MFHAError, TrainingDiverged
from mfha.heads import HeadSpec, explicit, fractal, geometric, uniform
from mfha.memory import estimate_training_peak, measure_training_peak
from mfha.model import GPT, count_parameters

__all__ = [
    "ModelConfig", "TrainConfig", "GPT", "count_parameters", "estimate_training_peak", "measure_training_peak",
    "HeadSpec", "uniform", "fractal", "geometric", "explicit",
    "MFHAError", "ConfigError", "DataError", "TrainingDiverged",
]
