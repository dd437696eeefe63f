"""optuna-dashboard with an artifact store: each trial's configs, metrics.csv and loss curve, and a
study note (markdown) that summarises the study file and the budget.
"""
from __future__ import annotations

import csv
import ipaddress
import json
import socket
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from mfha.config import ModelConfig, TrainConfig
from mfha.errors import ConfigError
from mfha.train import METRIC_FIELDS
from search._storage import default_artifacts_dir, make_storage, mask_url
from search._study_file import StudyConfig, domain_values
from search._pruners import fmt_bytes


def artifact_store(folder: str | Path) -> FileSystemArtifactStore:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the artifact folder {str(folder)!r} (--artifacts): {e.strerror}.") from None
    return FileSystemArtifactStore(str(folder))


def write_trial_files(folder: Path, model_config: ModelConfig, train_config: TrainConfig,
                      history: list[dict] | None, title: str) -> list[Path]:
    """model_config.json, train_config.json and, once the trial trained, metrics.csv and loss_curve.png."""
    folder.mkdir(parents=True, exist_ok=True)
    model_config.save(folder / "model_config.json")
    train_config.save(folder / "train_config.json")
    paths = [folder / "model_config.json", folder / "train_config.json"]
    if history:
        with (folder / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)
        render_loss_curve(history, folder / "loss_curve.png", title)
        paths += [folder / "metrics.csv", folder / "loss_curve.png"]
    return paths


def render_loss_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in history]
    fig = plt.figure(figsize=(5, 3.2), dpi=80)
    # fixed margins: tight_layout would draw the figure twice, doubling the cost per trial
    ax = fig.add_axes((0.13, 0.15, 0.82, 0.74))
    ax.plot(steps, [m["val_bpc"] for m in history], marker="o", label="val bits/char")
    # train loss is in nats per token; val_bpc / val_loss fixes this data's bits-per-char per nat-per-token
    ax.plot(steps, [m["train_loss"] * m["val_bpc"] / m["val_loss"] for m in history], linestyle="--", label="train bits/char")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def upload_trial_artifacts(store: FileSystemArtifactStore, trial: optuna.Trial, paths: list[Path]) -> None:
    for p in paths:
        upload_artifact(artifact_store=store, file_path=str(p), study_or_trial=trial)


def study_note(config: StudyConfig, *, vocab_sizes: dict, memory_limit: int | None, memory_name: str, storage_url: str) -> str:
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
        "Objective: validation bits per character (lower is better), reported at every evaluation.",
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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(storage_url: str, *, host: str = "127.0.0.1", port: int = 8080, artifacts: str | Path | None = None) -> None:
    """Serve optuna-dashboard until interrupted (blocking)."""
    import optuna_dashboard

    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, but got {port=}.")
    storage = make_storage(storage_url, heartbeat_interval=None, create=False)
    folder = Path(artifacts) if artifacts is not None else default_artifacts_dir(storage_url)
    store = artifact_store(folder)
    _check_port_free(host, port)
    if not is_loopback(host):
        print(f"warning: the dashboard listens on {host}, reachable from other machines, with no authentication; "
              f"anyone who can reach {host}:{port} can read and edit the studies.", file=sys.stderr)
    print(f"dashboard: http://{host}:{port}/dashboard  storage {mask_url(storage_url)}  artifacts {folder}", file=sys.stderr, flush=True)
    optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port or --host.") from None


__all__ = [
    "serve", "artifact_store", "write_trial_files", "render_loss_curve", "upload_trial_artifacts",
    "study_note", "save_study_note", "is_loopback",
]
