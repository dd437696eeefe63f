"""Compare trained runs: validation loss, bits per character, perplexity, top-k teacher-forcing accuracy.

python -m mfha.evaluate runs/a runs/b     # the loss curves go to runs/a/loss_curves.png
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from mfha.errors import ConfigError, MFHAError

TOP_KS = (1, 5, 10)
PLOT_NAME = "loss_curves.png"


@torch.no_grad()
def evaluate_run(
    run_dir: str | Path,
    *,
    dataset: str | None = None,
    text_column: str | None = None,
    windows: int | None = None,
    device: str = "cpu",
) -> dict:
    """Metrics of one run on its fixed validation windows, tokenized with the run's own tokenizer."""
    from mfha.data import load_data
    from mfha.train import evaluate_windows, load_run

    model, tokenizer, _, train_config = load_run(run_dir, device)
    overrides = {k: v for k, v in (("dataset", dataset), ("text_column", text_column)) if v is not None}
    if overrides:
        train_config = type(train_config).from_dict({**train_config.to_dict(), **overrides})
    data = load_data(train_config, tokenizer=tokenizer)
    x, y, n_chars = data.val_windows(train_config.seq_len, windows or train_config.eval_windows)
    dev = next(model.parameters()).device
    metrics = evaluate_windows(model, x, y, n_chars, batch_size=train_config.batch_size, device=dev)
    hits = dict.fromkeys(TOP_KS, 0)
    for i in range(0, x.size(0), train_config.batch_size):
        logits, _ = model(x[i : i + train_config.batch_size].to(dev))
        top = logits.topk(max(TOP_KS), dim=-1).indices  # (B, T, 10)
        match = top == y[i : i + train_config.batch_size].to(dev).unsqueeze(-1)
        for k in TOP_KS:
            hits[k] += match[..., :k].any(-1).sum().item()
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "run": str(run_dir),
        "n_params": n_params,
        **metrics,
        **{f"top{k}_acc": hits[k] / y.numel() for k in TOP_KS},
    }


def plot_loss_curves(run_dirs: list[str | Path], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, (ax_loss, ax_bpc) = plt.subplots(1, 2, figsize=(11, 4))
    for run in run_dirs:
        df = pd.read_csv(Path(run) / "metrics.csv")
        ax_loss.plot(df["step"], df["train_loss"], "--", alpha=0.6, label=f"{Path(run).name} train")
        ax_loss.plot(df["step"], df["val_loss"], label=f"{Path(run).name} val")
        ax_bpc.plot(df["step"], df["val_bpc"], label=Path(run).name)
    ax_loss.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
    ax_bpc.set(xlabel="step", ylabel="bits per character", title="validation bits/char")
    for ax in (ax_loss, ax_bpc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    try:
        # the user named this file: make its folder, as most tools do with an output path
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise ConfigError(
            f"--plot {str(path)!r} cannot be written ({e.strerror or e}); pass --plot with another path."
        ) from e
    finally:
        plt.close(fig)
    return path


def _check_plot_path(path: Path) -> None:
    """Refuse a --plot path that cannot be written: a format matplotlib lacks, or a folder that is a file or
    cannot be written to. A missing folder is fine (plot_loss_curves makes it)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix and path.suffix[1:].lower() not in formats:
        raise ConfigError(
            f"--plot {str(path)!r} ends in {path.suffix!r}, which matplotlib cannot write; end it in .png, .svg or .pdf."
        )
    if path.is_dir():
        raise ConfigError(f"--plot {str(path)!r} is a folder; pass --plot with a file name such as {path / PLOT_NAME}.")
    folder = path.parent
    while not folder.exists():  # the nearest folder that exists decides whether the missing ones can be made
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(
            f"--plot {str(path)!r} lies under {str(folder)!r}, which is a file; pass --plot with another path."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--plot {str(path)!r}: the folder {str(folder)!r} is not writable; pass --plot with another path."
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mfha.evaluate",
        description="Evaluate and compare run folders; prints a table and writes a loss-curve PNG.",
        epilog="example: python -m mfha.evaluate runs/a runs/b    (loss curves in runs/a/loss_curves.png unless --plot FILE)",
    )
    p.add_argument("runs", nargs="+", help="run folders written by python -m mfha.train")
    p.add_argument("--dataset", help="evaluate on this dataset instead of each run's own")
    p.add_argument("--text-column", help="the dataset's column of stories (default: each run's text_column)")
    p.add_argument("--windows", type=int, help="number of validation windows (default: the run's eval_windows)")
    # beside the runs it plots, not in the current folder, where it would litter a checkout
    p.add_argument(
        "--plot",
        help=f"where to write the loss-curve PNG, its folder made if missing (default: {PLOT_NAME} in the first run folder)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    args = p.parse_args(argv)
    try:
        if args.windows is not None and args.windows < 1:
            raise ConfigError(f"--windows must be >= 1, but got {args.windows}.")
        plot_path = Path(args.plot) if args.plot else Path(args.runs[0]) / PLOT_NAME
        if args.plot:
            _check_plot_path(plot_path)  # before the evaluation, which takes a while
        import pandas as pd

        rows = [
            evaluate_run(
                r, dataset=args.dataset, text_column=args.text_column, windows=args.windows, device=args.device
            )
            for r in args.runs
        ]
        plot = plot_loss_curves(args.runs, plot_path)
    except MFHAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    table = pd.DataFrame(rows).set_index("run")
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 200):
        print(table.to_string())
    print(f"loss curves -> {plot}")
    return 0 if all(math.isfinite(r["val_loss"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
