"""What a trial leaves for the dashboard: its configs, metrics.csv and loss curve as Optuna
artifacts, and the study's note (markdown) summarising the study file and the budget.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from mfha.config import ModelConfig, TrainConfig
from search.run.memory import fmt_bytes
from search.store.storage import mask_url
from search.study.types import StudyConfig, domain_values


def write_config_files(folder: Path, model_config: ModelConfig, train_config: TrainConfig) -> list[Path]:
    """model_config.json and train_config.json: what the trial builds and how it trains."""
    folder.mkdir(parents=True, exist_ok=True)
    model_config.save(folder / "model_config.json")
    train_config.save(folder / "train_config.json")
    return [folder / "model_config.json", folder / "train_config.json"]


def write_result_files(folder: Path, history: list[dict], title: str) -> list[Path]:
    """metrics.csv (the trainer's columns) and loss_curve.png, once the trial has evaluated."""
    from mfha.train import METRIC_FIELDS  # here: `run_search.py dashboard` need not import torch

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    render_loss_curve(history, folder / "loss_curve.png", title)
    return [folder / "metrics.csv", folder / "loss_curve.png"]


def render_loss_curve(history: list[dict], path: Path, title: str) -> None:
    """Validation and train bits/char by step, as a small PNG.

    Drawn with Pillow (which matplotlib depends on) rather than matplotlib: a few milliseconds
    instead of a few hundred, which matters when it runs once per trial in the search loop.
    """
    from PIL import Image, ImageDraw, ImageFont

    W, H, left, right, top, bottom = 480, 300, 58, 14, 30, 42
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=11)
    steps = [m["step"] for m in history]
    val = [m["val_bpc"] for m in history]
    # train loss is in nats per token; val_bpc / val_loss fixes this data's bits-per-char per nat-per-token
    trn = [m["train_loss"] * m["val_bpc"] / m["val_loss"] if m.get("val_loss") else m["val_bpc"] for m in history]
    finite = [v for v in val + trn if v == v and abs(v) != float("inf")] or [0.0]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(finite), max(finite)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.08 or 0.5
    y0, y1 = y0 - pad, y1 + pad
    px = lambda x: left + (x - x0) / (x1 - x0) * (W - left - right)
    py = lambda y: top + (y1 - y) / (y1 - y0) * (H - top - bottom)
    for y in _ticks(y0, y1):
        d.line([(left, py(y)), (W - right, py(y))], fill=(228, 228, 228))
        d.text((left - 6, py(y)), f"{y:g}", fill="black", font=font, anchor="rm")
    for x in _ticks(x0, x1):
        d.line([(px(x), top), (px(x), H - bottom)], fill=(228, 228, 228))
        d.text((px(x), H - bottom + 6), f"{x:g}", fill="black", font=font, anchor="mt")
    d.rectangle([(left, top), (W - right, H - bottom)], outline="black")
    blue, orange = (31, 119, 180), (255, 127, 14)
    val_pts = [(px(x), py(y)) for x, y in zip(steps, val) if y == y]
    trn_pts = [(px(x), py(y)) for x, y in zip(steps, trn) if y == y]
    if len(val_pts) > 1:
        d.line(val_pts, fill=blue, width=2)
    for x, y in val_pts:
        d.ellipse([(x - 3, y - 3), (x + 3, y + 3)], fill=blue)
    for (xa, ya), (xb, yb) in itertools.pairwise(trn_pts):
        for k in range(0, 10, 2):  # dashed: every other tenth of the segment
            d.line(
                [
                    (xa + (xb - xa) * k / 10, ya + (yb - ya) * k / 10),
                    (xa + (xb - xa) * (k + 1) / 10, ya + (yb - ya) * (k + 1) / 10),
                ],
                fill=orange,
                width=2,
            )
    d.text((W / 2, 8), title[:80], fill="black", font=font, anchor="mt")
    d.text(((left + W - right) / 2, H - 14), "step", fill="black", font=font, anchor="mt")
    d.text((W - right - 8, top + 8), "val bits/char", fill=blue, font=font, anchor="rt")
    d.text((W - right - 8, top + 22), "train bits/char", fill=orange, font=font, anchor="rt")
    ylabel = Image.new("RGB", (120, 14), "white")
    ImageDraw.Draw(ylabel).text((60, 7), "bits per character", fill="black", font=font, anchor="mm")
    img.paste(ylabel.rotate(90, expand=True), (2, (top + H - bottom) // 2 - 60))
    img.save(path, format="PNG", compress_level=1)  # a few KB more, a third of the encoding time


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values inside [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step) + 1)]


def upload_trial_artifacts(store: FileSystemArtifactStore, trial: optuna.Trial, paths: list[Path]) -> None:
    for p in paths:
        upload_artifact(artifact_store=store, file_path=str(p), study_or_trial=trial)


def study_note(
    config: StudyConfig, *, vocab_sizes: dict, memory_limit: int | None, memory_name: str, storage_url: str
) -> str:
    """Markdown for the study's note in the dashboard: the study file in brief, the budget, the limits."""
    s = config.space
    lo, hi = config.band
    vocab = ", ".join(f"{'char' if k is None else k} → {v}" for k, v in vocab_sizes.items())
    families = "; ".join(
        f"**{f}**: " + ", ".join(f"{k} {_dom(d)}" for k, d in s.family_space[f].items()) for f in s.families
    )
    tc = config.train_config()
    lines = [
        f"# {config.name}",
        config.description or "",
        "",
        f"- **study file**: `{config.source}`; storage `{mask_url(storage_url)}`",
        f"- **budget**: {config.budget_params:,} parameters ± {config.budget_tolerance:.0%} → band {lo:,} … {hi:,}; "
        f"width is solved from the budget, depth repaired to fit it",
        f"- **data**: `{config.data.get('dataset', tc.dataset)}`, vocabulary {vocab}",
        f"- **space**: depth {_dom(s.depth)}, width {_dom(s.width)}, head mix {', '.join(s.head_mix)}, "
        f"MLP × {_dom(s.mlp_mult)}, lr {_dom(s.lr)}, batch {_dom(s.batch_size)}",
        f"- **heads**: {families}",
        f"- **per trial**: {tc.max_steps} steps, seq_len {tc.seq_len}, eval every {tc.eval_interval} steps on {tc.eval_windows} windows, device {tc.device}",
        f"- **pruning**: {memory_name} limit {fmt_bytes(memory_limit) if memory_limit else 'none'} (forecast before allocation, "
        f"measured while training); loss pruner `{config.pruning.pruner}` after {config.pruning.warmup_steps} steps",
        f"- **sampler**: {config.sampler.kind}, seed {config.sampler.seed}, multivariate {config.sampler.multivariate}",
        f"- **full training** (export): {json.dumps(config.full_training) if config.full_training else 'as the trial'}",
        "",
        "Objective: validation bits per character (lower is better), reported at every evaluation."
        if len(config.objectives) == 1
        else f"Objectives: {', '.join(config.objectives)}. val_bpc: validation bits per character, reported at every evaluation "
        f"(the loss pruner judges this curve). A cost: the model's seconds per token over a fixed reference model's, "
        f"timed beside it in the trial's process after training (mfha/cost.py; 1.0 = the reference, lower is faster).",
    ]
    return "\n".join(lines)


def _dom(d: Any) -> str:
    if hasattr(d, "min") and hasattr(d, "max"):
        step = getattr(d, "step", 1)
        return f"{d.min}…{d.max}" + (f" step {step}" if step != 1 else "")
    vals = domain_values(d)
    return "{" + ", ".join(str(v) for v in vals) + "}"


def save_study_note(study: optuna.Study, text: str) -> None:
    import optuna_dashboard

    if optuna_dashboard.get_note(study) != text:
        optuna_dashboard.save_note(study, text)


__all__ = [
    "write_config_files",
    "write_result_files",
    "render_loss_curve",
    "upload_trial_artifacts",
    "study_note",
    "save_study_note",
]
