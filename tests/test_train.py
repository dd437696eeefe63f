import math
import subprocess
import sys

import pytest
import torch

from mfha import ConfigError, ModelConfig, TrainConfig, TrainingDiverged, fractal, uniform
from mfha.train import learning_rate, load_run, train
from tests.conftest import REPO


def tiny_model() -> ModelConfig:
    return ModelConfig(dim=32, n_layers=2, heads=fractal(16, 2), max_seq_len=32)


def tiny_train(dataset: str, **overrides) -> TrainConfig:
    base = dict(
        dataset=dataset,
        max_train_stories=200,
        max_val_stories=50,
        batch_size=8,
        seq_len=32,
        max_steps=60,
        lr=3e-3,
        warmup_steps=10,
        eval_interval=20,
        eval_windows=16,
        device="cpu",
    )
    return TrainConfig(**{**base, **overrides})


def test_loss_falls_far_below_uniform_guess(tinystories):
    result = train(tiny_model(), tiny_train(tinystories))
    uniform_guess = math.log(result.model_config.vocab_size)
    assert result.steps == 60
    assert [m["step"] for m in result.history] == [20, 40, 60]
    assert result.metrics["val_loss"] < 0.75 * uniform_guess
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    assert result.metrics["val_bpc"] > 0 and result.metrics["tokens_per_s"] > 0


def test_run_folder_and_resume_continue_exactly(tinystories, tmp_path):
    tc = tiny_train(tinystories, max_steps=40, eval_interval=10)
    straight = train(tiny_model(), tc, out_dir=tmp_path / "straight")
    # stop at half through the eval callback, then resume from the checkpoint
    half = train(tiny_model(), tc, out_dir=tmp_path / "split", on_eval=lambda step, m: step >= 20)
    assert half.stopped_early and half.steps == 20
    resumed = train(tiny_model(), tc, out_dir=tmp_path / "split", resume=True)
    assert resumed.steps == 40
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["step"] == b["step"]
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5
    names = {p.name for p in (tmp_path / "split").iterdir()}
    assert {"checkpoint.pt", "model_config.json", "train_config.json", "tokenizer.json", "metrics.csv"} <= names
    assert len((tmp_path / "split" / "metrics.csv").read_text().strip().splitlines()) == 1 + 4
    model, tokenizer, mc, _ = load_run(tmp_path / "split")
    assert mc.vocab_size == tokenizer.vocab_size == model.tok_emb.num_embeddings


def test_seeded_training_is_deterministic(tinystories):
    tc = tiny_train(tinystories, max_steps=20, eval_interval=10)
    a, b = train(tiny_model(), tc), train(tiny_model(), tc)
    assert [m["val_loss"] for m in a.history] == [m["val_loss"] for m in b.history]


def test_divergence_raises_with_the_fix(tinystories):
    tc = tiny_train(tinystories, lr=1e4, warmup_steps=0, grad_clip=0.0, max_steps=20, eval_interval=10)
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        train(ModelConfig(dim=32, n_layers=2, heads=uniform(2, 16), max_seq_len=32), tc)


def test_seq_len_longer_than_model_is_rejected(tinystories):
    with pytest.raises(ConfigError, match="seq_len must be <= max_seq_len=32"):
        train(tiny_model(), tiny_train(tinystories, seq_len=64))


def test_resume_without_checkpoint_is_rejected(tinystories, tmp_path):
    with pytest.raises(ConfigError, match="resume needs a checkpoint"):
        train(tiny_model(), tiny_train(tinystories), out_dir=tmp_path, resume=True)


def test_schedule_warms_up_then_decays_to_floor():
    tc = TrainConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(0, 0.0, tc) == pytest.approx(1e-4)
    assert learning_rate(9, 0.05, tc) == pytest.approx(1e-3)
    assert learning_rate(50, 0.5, tc) == pytest.approx(0.55e-3)
    assert learning_rate(100, 1.0, tc) == pytest.approx(1e-4)


@pytest.mark.slow
def test_train_evaluate_generate_clis(tinystories, tmp_path):
    mc, tc = tmp_path / "model.json", tmp_path / "train.json"
    tiny_model().save(mc)
    tiny_train(tinystories, max_steps=40).save(tc)
    run = tmp_path / "run"

    def cli(*args):
        return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)

    trained = cli("-m", "mfha.train", "--model-config", str(mc), "--train-config", str(tc), "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    assert "done: 40 steps" in trained.stdout
    evaluated = cli("-m", "mfha.evaluate", str(run), str(run))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "top5_acc" in evaluated.stdout and "val_bpc" in evaluated.stdout
    # into the first run folder, not the current one (the repository here)
    plot = run / "loss_curves.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"loss curves -> {plot}" in evaluated.stdout
    gen = [
        "-m",
        "mfha.generate",
        str(run),
        "Once upon a time",
        "--max-new-tokens",
        "40",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
    ]
    first, second, other = cli(*gen, "--seed", "7"), cli(*gen, "--seed", "7"), cli(*gen, "--seed", "8")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Once upon a time") and len(first.stdout) > len("Once upon a time") + 10
    assert first.stdout == second.stdout
    assert first.stdout != other.stdout
    bad = cli("-m", "mfha.train", "--from", str(tmp_path / "nowhere"), "--out", str(run))
    assert bad.returncode == 1 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_kv_cache_generation_matches_full_recompute():
    from mfha import GPT
    from mfha.generate import generate

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, dim=32, n_layers=2, heads=fractal(16, 2), max_seq_len=64)).eval()
    idx = torch.randint(0, 50, (2, 5))
    out = generate(model, idx, 20, temperature=0)
    ref = idx
    with torch.no_grad():
        for _ in range(20):
            logits, _ = model(ref)
            ref = torch.cat([ref, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ref)


def test_train_cli_rejects_a_thread_count_below_one(tmp_path, capsys):
    from mfha.train import main

    assert main(["--model-config", "m.json", "--train-config", "t.json", "--threads", "0", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "error: --threads must be a positive integer, but got threads=0.\n"
