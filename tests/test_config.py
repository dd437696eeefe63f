import json
import math

import pytest

from mfha.config import ModelConfig, TrainConfig
from mfha.errors import ConfigError
from mfha.heads import HeadSpec, explicit, fractal, geometric, uniform


def test_model_config_derived_fields():
    cfg = ModelConfig(dim=128, n_layers=3, heads=fractal(64, 3), mlp_mult=4.0)
    assert cfg.layer_heads == [fractal(64, 3)] * 3
    assert cfg.mlp_hidden == 344  # 4 * 128 * 2/3 = 341.3, rounded up to a multiple of 8
    assert ModelConfig(dim=96, mlp_mult=8 / 3).mlp_hidden == 176
    assert cfg.describe_heads() == "1x64 2x32 4x16"


def test_derived_fields_follow_the_instance_not_the_defaults():
    assert ModelConfig(dim=32).mlp_hidden != ModelConfig(dim=64).mlp_hidden
    assert len(ModelConfig(n_layers=7).layer_heads) == 7


def test_per_layer_specs():
    specs = [uniform(2, 16), fractal(32, 2), geometric(16, 4, width=16)]
    cfg = ModelConfig(dim=32, n_layers=3, heads=specs)
    assert cfg.layer_heads == specs
    assert cfg.describe_heads() == "2x16 | 1x32 2x16 | 1x16 2x8 4x4"


def test_kv_heads():
    cfg = ModelConfig(heads=fractal(64, 3), kv_share=2)
    assert [cfg.kv_heads(n) for n in (1, 2, 4, 8)] == [1, 1, 2, 4]
    assert ModelConfig().kv_heads(4) == 4


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(),
        ModelConfig(
            vocab_size=99, dim=48, n_layers=2, heads=geometric(16, 4, ratio=2, count=2), mlp_mult=2.5, kv_share=2
        ),
        ModelConfig(n_layers=2, heads=[explicit([16, 8, 8]), fractal(32, 3)], rope_base=500.0, init_std=0.01),
    ],
)
def test_model_config_json_round_trip(cfg, tmp_path):
    d = cfg.to_dict()
    assert "layer_heads" not in d and "mlp_hidden" not in d
    assert ModelConfig.from_dict(json.loads(json.dumps(d))) == cfg
    cfg.save(tmp_path / "m.json")
    again = ModelConfig.from_file(tmp_path / "m.json")
    assert again == cfg and again.layer_heads == cfg.layer_heads and again.mlp_hidden == cfg.mlp_hidden
    assert isinstance(json.loads((tmp_path / "m.json").read_text())["heads"], (dict, list))


def test_from_dict_ignores_stale_derived_fields():
    d = {**ModelConfig(dim=64).to_dict(), "mlp_hidden": 1, "layer_heads": []}
    assert ModelConfig.from_dict(d).mlp_hidden == ModelConfig(dim=64).mlp_hidden


def test_train_config_json_round_trip(tmp_path):
    cfg = TrainConfig(
        dataset="../data", max_train_stories=100, tokenizer_vocab=512, max_time_s=30.0, device="cpu", compile=True
    )
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    cfg.save(tmp_path / "t.json")
    assert TrainConfig.from_file(tmp_path / "t.json") == cfg
    assert TrainConfig.from_dict({}) == TrainConfig()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        *[
            ({name: 0}, rf"{name} must be a positive integer, but got {name}=0\.")
            for name in ("vocab_size", "dim", "n_layers", "max_seq_len", "kv_share")
        ],
        ({"dim": 64.0}, r"dim must be a positive integer, but got dim=64.0"),
        ({"n_layers": True}, r"n_layers must be a positive integer, but got n_layers=True"),
        ({"mlp_mult": 0}, r"mlp_mult must be a positive number, but got mlp_mult=0"),
        ({"mlp_mult": math.inf}, r"mlp_mult must be a positive number, but got mlp_mult=inf"),
        ({"rope_base": 1.0}, r"rope_base must be > 1, but got rope_base=1.0"),
        ({"norm_eps": 0.0}, r"norm_eps must be positive, but got norm_eps=0.0"),
        ({"init_std": math.nan}, r"init_std must be positive, but got init_std=nan"),
        ({"heads": "4x32"}, r"heads must be a head spec or a list of one spec per layer, but got heads='4x32'"),
        ({"heads": []}, r"heads must be a head spec or a list"),
        ({"heads": {"family": "uniform", "n": 0, "size": 16}}, r"n must be an integer >= 1, but got n=0"),
        (
            {"n_layers": 3, "heads": [uniform(2, 16), uniform(4, 8)]},
            r"per-layer heads need one spec per layer \(n_layers=3\), but got len\(heads\)=2",
        ),
        (
            {"n_layers": 2, "heads": [uniform(2, 16), explicit([16] * 5)], "kv_share": 2},
            r"kv_share must leave each size group with a whole number of query heads per K/V head, but got kv_share=2 for 5 heads of size 16 in layer 1",
        ),
    ],
)
def test_model_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        *[
            ({name: 0}, rf"{name} must be a positive integer, but got {name}=0\.")
            for name in ("batch_size", "seq_len", "max_steps", "eval_interval", "eval_windows")
        ],
        *[
            ({name: -1}, rf"{name} must be positive or null, but got {name}=-1\.")
            for name in ("max_train_stories", "max_train_tokens", "max_val_stories", "max_time_s")
        ],
        (
            {"tokenizer_vocab": 4},
            r"tokenizer_vocab must be null \(character level\) or an integer in \[8, 65536\], but got tokenizer_vocab=4",
        ),
        ({"tokenizer_vocab": 70000}, r"tokenizer_vocab must be null .* but got tokenizer_vocab=70000"),
        ({"warmup_steps": -1}, r"warmup_steps must be an integer >= 0, but got warmup_steps=-1"),
        ({"lr": 0}, r"lr must be positive, but got lr=0"),
        ({"min_lr_ratio": 1.5}, r"min_lr_ratio must be in \[0, 1\], but got min_lr_ratio=1.5"),
        ({"weight_decay": -0.1}, r"weight_decay must be >= 0, but got weight_decay=-0.1"),
        ({"beta1": 1.0}, r"beta1 must be in \[0, 1\), but got beta1=1.0"),
        ({"beta2": -0.5}, r"beta2 must be in \[0, 1\), but got beta2=-0.5"),
        ({"grad_clip": -1.0}, r"grad_clip must be >= 0 \(0 disables it\), but got grad_clip=-1.0"),
        ({"seed": "7"}, r"seed must be an integer, but got seed='7'"),
        ({"device": "gpu"}, r"device must be one of auto, cpu, cuda, but got device='gpu'"),
        ({"compile": "yes"}, r"compile must be true or false, but got compile='yes'"),
        ({"dataset": ""}, r"dataset must be a Hub name or a path, but got dataset=''"),
    ],
)
def test_train_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("cls", [ModelConfig, TrainConfig])
def test_loading_errors(cls, tmp_path):
    with pytest.raises(
        ConfigError,
        match=rf"unknown {cls.__name__} field 'sed'; did you mean 'seed'\?|unknown {cls.__name__} field 'sed'; known fields: ",
    ):
        cls.from_dict({"sed": 1})
    with pytest.raises(ConfigError, match=rf"{cls.__name__} must be a JSON object, but got list"):
        cls.from_dict([])
    with pytest.raises(ConfigError, match=rf"{cls.__name__} file '.*missing.json' does not exist"):
        cls.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{dim: 3")
    with pytest.raises(ConfigError, match=rf"{cls.__name__} file '.*bad.json' is not valid JSON"):
        cls.from_file(tmp_path / "bad.json")


def test_unknown_model_field_suggests_the_near_name():
    with pytest.raises(ConfigError, match=r"unknown ModelConfig field 'n_layer'; did you mean 'n_layers'\?"):
        ModelConfig.from_dict({"n_layer": 2})
    with pytest.raises(ConfigError, match=r"unknown TrainConfig field 'zzz'; known fields: batch_size, "):
        TrainConfig.from_dict({"zzz": 2})


def test_heads_from_json_become_specs():
    cfg = ModelConfig.from_dict(
        {
            "n_layers": 2,
            "heads": [{"family": "fractal", "base": 32, "levels": 2}, {"family": "explicit", "sizes": [8, 16]}],
        }
    )
    assert all(isinstance(h, HeadSpec) for h in cfg.layer_heads)
    assert cfg.layer_heads[1].sizes == [16, 8]
