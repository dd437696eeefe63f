"""Training: AdamW with warmup and cosine decay, periodic evaluation in bits per character, run folders.

python -m mfha.train --model-config M.json --train-config T.json --dataset ../shared/data/tinystories --out runs/NAME
python -m mfha.train --from exports/NAME --out runs/NAME
"""

from __future__ import annotations

import argparse
import csv
import math
import resource
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mfha.config import ModelConfig, TrainConfig
from mfha.data import TokenizedData, load_data
from mfha.errors import ConfigError, MFHAError, TrainingDiverged, first_line
from mfha.memory import vm_status
from mfha.model import GPT
from mfha.optim import make_optimizer, optimizer_step
from mfha.tokenizer import Tokenizer

OnEval = Callable[[int, dict], bool | None]
CHECKPOINT = "checkpoint.pt"
# what training writes into --out; a folder holding any of them is a run that a new one would overwrite
RUN_FILES = (CHECKPOINT, "model_config.json", "train_config.json", "tokenizer.json", "metrics.csv")
# An untrained model scores about ln(V) (the uniform guess) and training only lowers it; a mean loss
# several times that is an exploded run (a huge lr can blow up to a finite 10^4 instead of NaN)
DIVERGED_OVER_UNIFORM = 4.0
METRIC_FIELDS = [
    "step",
    "tokens",
    "train_loss",
    "val_loss",
    "val_bpc",
    "perplexity",
    "lr",
    "tokens_per_s",
    "peak_mem_bytes",
    "elapsed_s",
]


@dataclass
class TrainResult:
    model_config: ModelConfig
    metrics: dict
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    steps: int = 0
    out_dir: Path | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is available; use --device cpu or auto.")
    return torch.device(name)


def eval_due(step: int, tc: TrainConfig) -> bool:
    """Whether the trainer evaluates after `step` steps: every eval_interval steps, or each time the
    tokens seen pass a multiple of eval_tokens."""
    if tc.eval_tokens is None:
        return step % tc.eval_interval == 0
    per_step = tc.batch_size * tc.seq_len
    return step * per_step // tc.eval_tokens > (step - 1) * per_step // tc.eval_tokens


def learning_rate(step: int, progress: float, tc: TrainConfig) -> float:
    """Linear warmup over warmup_steps, then cosine from lr down to lr * min_lr_ratio as progress goes 0 -> 1."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    floor = tc.lr * tc.min_lr_ratio
    return floor + 0.5 * (tc.lr - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    # VmHWM is this process's own peak; ru_maxrss would report a big parent's size in a forked trial
    return vm_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@torch.no_grad()
def evaluate_windows(
    model: GPT, x: torch.Tensor, y: torch.Tensor, n_chars: int, *, batch_size: int, device: torch.device
) -> dict:
    """Total cross-entropy over fixed windows: mean nats per token and bits per character."""
    was_training = model.training
    model.eval()
    total_nats = 0.0
    for i in range(0, x.size(0), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        with autocast_for(device):
            logits, _ = model(xb)
        total_nats += torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), yb.flatten(), reduction="sum"
        ).item()
    model.train(was_training)
    val_loss = total_nats / y.numel()
    return {
        "val_loss": val_loss,
        "val_bpc": total_nats / math.log(2) / n_chars,
        "perplexity": math.exp(min(val_loss, 50.0)),
    }


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; on the CPU a no-op context (fp32 throughout)."""
    return (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    data: TokenizedData | None = None,
    out_dir: str | Path | None = None,
    on_eval: OnEval | None = None,
    resume: bool = False,
    progress: bool = False,
) -> TrainResult:
    tc = train_config
    out = Path(out_dir) if out_dir is not None else None
    # every check that can refuse comes before the first write, so a refused run leaves --out as it was
    _check_out(out, resume)
    device = resolve_device(tc.device)
    data = data if data is not None else load_data(tc)
    if model_config.vocab_size != data.tokenizer.vocab_size:
        model_config = replace(model_config, vocab_size=data.tokenizer.vocab_size)
    if tc.seq_len > model_config.max_seq_len:
        raise ConfigError(f"seq_len must be <= max_seq_len={model_config.max_seq_len}, but got seq_len={tc.seq_len}.")

    torch.manual_seed(tc.seed)
    model = GPT(model_config).to(device)
    optimizer = make_optimizer(model, tc, device)
    generator = torch.Generator().manual_seed(tc.seed)
    step, history, elapsed_before = 0, [], 0.0
    val_x, val_y, val_chars = data.val_windows(tc.seq_len, tc.eval_windows)
    if resume and out is not None:
        path = out / CHECKPOINT
        afresh = "train afresh into another --out (without --resume)"
        state = read_checkpoint(path, device, fix=f"put back a good copy, or {afresh}")
        owner = "the model --from/--model-config describes"
        load_model_state(
            model, state, path, owner=owner, fix=f"resume with the configs it was trained with, or {afresh}"
        )
        try:
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            step, history, elapsed_before = state["step"], state["history"], state["elapsed_s"]
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(
                f"checkpoint {str(path)!r} holds no training state to resume ({type(e).__name__}: {first_line(e)}); "
                f"put back a good copy, or {afresh}."
            ) from e
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        model_config.save(out / "model_config.json")
        tc.save(out / "train_config.json")
        data.tokenizer.save(out / "tokenizer.json")
    step_fn = torch.compile(model) if tc.compile else model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=tc.max_steps, initial=step, unit="step", dynamic_ncols=True)
    model.train()
    t_start = time.perf_counter()
    t_window, train_time = t_start, 0.0
    loss_sum = torch.zeros((), device=device)
    diverged_above = DIVERGED_OVER_UNIFORM * math.log(model_config.vocab_size)
    window_steps, window_tokens = 0, 0
    stopped_early = False
    lr = tc.lr
    while step < tc.max_steps:
        elapsed = elapsed_before + time.perf_counter() - t_start
        progress_frac = step / tc.max_steps
        if tc.max_time_s is not None:
            progress_frac = max(progress_frac, elapsed / tc.max_time_s)
        lr = learning_rate(step, progress_frac, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = data.batch(tc.batch_size, tc.seq_len, generator)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast_for(device):
            _, loss = step_fn(x, y)
        optimizer_step(model, optimizer, loss, tc.grad_clip)
        loss_sum += loss.detach()
        step += 1
        window_steps += 1
        window_tokens += x.numel()
        time_up = tc.max_time_s is not None and elapsed_before + time.perf_counter() - t_start >= tc.max_time_s
        if not eval_due(step, tc) and step < tc.max_steps and not time_up:
            continue
        train_loss = (loss_sum / window_steps).item()  # one sync per eval, not per step
        if not math.isfinite(train_loss) or train_loss > diverged_above:
            raise TrainingDiverged(
                f"training loss became {train_loss:.4g} by step {step} (lr={lr:.3g}); lower --lr / lr or raise warmup_steps."
            )
        now = time.perf_counter()
        train_time = now - t_window
        metrics = {
            "step": step,
            "tokens": step * tc.batch_size * tc.seq_len,
            "train_loss": train_loss,
            **evaluate_windows(model, val_x, val_y, val_chars, batch_size=tc.batch_size, device=device),
            "lr": lr,
            "tokens_per_s": window_tokens / train_time,
            "peak_mem_bytes": peak_memory_bytes(device),
            "elapsed_s": elapsed_before + time.perf_counter() - t_start,
        }
        history.append(metrics)
        if out is not None:
            _save_checkpoint(out, model, optimizer, generator, step, history, metrics["elapsed_s"])
            _write_metrics(out / "metrics.csv", history)
        if bar is not None:
            bar.update(window_steps)
            bar.set_postfix(
                loss=f"{train_loss:.3f}", val_bpc=f"{metrics['val_bpc']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}"
            )
        loss_sum.zero_()
        window_steps, window_tokens = 0, 0
        if on_eval is not None and on_eval(step, metrics):
            stopped_early = True
            break
        if time_up:
            break
        t_window = time.perf_counter()
    if bar is not None:
        bar.close()
    return TrainResult(model_config, history[-1] if history else {}, history, stopped_early, step, out)


def _check_out(out: Path | None, resume: bool) -> None:
    """Refuse an --out that training would harm: a file, a folder holding a run (without --resume), or a
    folder without a checkpoint (with --resume)."""
    if out is None:
        if resume:
            raise ConfigError("--resume needs a checkpoint, but no --out folder was given.")
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; pass --out with a new or empty folder.")
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(
                f"--resume needs a checkpoint, but {str(out / CHECKPOINT)!r} does not exist; train without --resume first."
            )
        return
    held = [name for name in RUN_FILES if (out / name).exists()]
    if CHECKPOINT in held:
        raise ConfigError(
            f"--out {str(out)!r} already holds a run ({', '.join(held)}); pass --resume to continue it, "
            f"or another --out for a new run."
        )
    if held:
        # a run stopped before its first checkpoint: --resume has nothing to continue from
        raise ConfigError(
            f"--out {str(out)!r} already holds {', '.join(held)} but no {CHECKPOINT} to --resume from; "
            f"pass another --out, or empty that folder."
        )


def read_checkpoint(path: Path, device: torch.device, *, fix: str) -> dict:
    """A run's saved state; a file torch cannot read (truncated, corrupt, not a checkpoint) as one ConfigError
    that ends in `fix`."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except MemoryError:
        raise
    # any other failure means "not a readable checkpoint": weights_only=True ran nothing, and torch.load raises
    # a dozen types for a bad file (OSError, EOFError, UnpicklingError, its zip reader's RuntimeError, KeyError)
    except Exception as e:
        raise ConfigError(
            f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}): it is truncated, corrupt, or not a "
            f"checkpoint; {fix}."
        ) from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ConfigError(
            f"checkpoint {str(path)!r} holds no model state (python -m mfha.train did not write it); {fix}."
        )
    return state


def load_model_state(model: GPT, state: dict, path: Path, *, owner: str, fix: str) -> None:
    """Load a checkpoint's weights into `model`, or say in one line how the checkpoint's model differs from
    `owner` (the model in words) and end in `fix`."""
    diff = _state_mismatch(model, state["model"])
    try:
        if diff is None:
            model.load_state_dict(state["model"])
    except RuntimeError as e:
        diff = first_line(e)
    if diff is not None:
        raise ConfigError(f"checkpoint {str(path)!r} is not of {owner} ({diff}); {fix}.")


def _state_mismatch(model: GPT, saved: dict) -> str | None:
    """The first difference between saved weights and `model`'s, in words; None when they fit."""
    own = model.state_dict()
    for name, t in own.items():
        if name not in saved:
            return f"it lacks {name}"
        if not isinstance(saved[name], torch.Tensor):
            return f"its {name} is not a tensor"
        if saved[name].shape != t.shape:
            return f"its {name} is {list(saved[name].shape)}, the model's {list(t.shape)}"
    extra = [name for name in saved if name not in own]
    return f"it has {extra[0]}, which the model lacks" if extra else None


def _save_checkpoint(out: Path, model, optimizer, generator, step, history, elapsed_s) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "step": step,
        "history": history,
        "elapsed_s": elapsed_s,
    }
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out / CHECKPOINT)  # atomic: a crash mid-write never leaves a torn checkpoint


def _write_metrics(path: Path, history: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(history)


def load_run(run_dir: str | Path, device: str = "auto") -> tuple[GPT, Tokenizer, ModelConfig, TrainConfig]:
    """The trained model (eval mode), its tokenizer and configs from a run folder."""
    run = Path(run_dir)
    if not (run / CHECKPOINT).exists():
        raise ConfigError(
            f"run folder {str(run)!r} has no {CHECKPOINT}; pass a folder written by `python -m mfha.train --out`."
        )
    model_config = ModelConfig.from_file(run / "model_config.json")
    train_config = TrainConfig.from_file(run / "train_config.json")
    dev = resolve_device(device)
    model = GPT(model_config).to(dev)
    retrain = f"python -m mfha.train --from {shlex.quote(str(run))} --out NEW_FOLDER"
    state = read_checkpoint(run / CHECKPOINT, dev, fix=f"retrain the run ({retrain}) or put back a good copy")
    owner = "the model its model_config.json describes"
    fix = f"the folder mixes files of two runs: retrain it ({retrain}) or put back the matching {CHECKPOINT}"
    load_model_state(model, state, run / CHECKPOINT, owner=owner, fix=fix)
    model.eval()
    return model, Tokenizer.from_file(run / "tokenizer.json"), model_config, train_config


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mfha.train",
        description="Train an MFHA GPT from a model config and a train config.",
        epilog="example: python -m mfha.train --from exports/smoke --dataset ../shared/data/tinystories --out runs/smoke",
    )
    p.add_argument("--from", dest="from_dir", help="folder with model_config.json and train_config.json (an export)")
    p.add_argument("--model-config", help="model config JSON")
    p.add_argument("--train-config", help="train config JSON")
    p.add_argument("--dataset", help="Hub name or local folder/file; overrides the train config")
    p.add_argument("--text-column", help="the dataset's column of stories; overrides the train config's text_column")
    p.add_argument("--out", required=True, help="run folder for checkpoint, configs, tokenizer and metrics.csv")
    p.add_argument("--max-steps", type=int, help="override max_steps")
    p.add_argument("--max-time", type=float, dest="max_time_s", help="override max_time_s (seconds of wall time)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override device")
    p.add_argument("--seed", type=int, help="override seed")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's); the thread count changes "
        "the order of float sums, so reproducing a run exactly needs the same count",
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        if args.from_dir:
            model_path, train_path = (
                Path(args.from_dir) / "model_config.json",
                Path(args.from_dir) / "train_config.json",
            )
            required: tuple[str, ...] = ()  # an export's config, written whole by the product
        elif args.model_config and args.train_config:
            model_path, train_path = Path(args.model_config), Path(args.train_config)
            # the user's own file must name the model's shape: a default width would train another model unnoticed
            required = ModelConfig.USER_FIELDS
        else:
            raise ConfigError("pass --from DIR, or both --model-config and --train-config.")
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads must be a positive integer, but got threads={args.threads}.")
            torch.set_num_threads(args.threads)
        model_config = ModelConfig.from_file(model_path, require=required)
        overrides = {
            k: getattr(args, k)
            for k in ("dataset", "text_column", "max_steps", "max_time_s", "device", "seed")
            if getattr(args, k) is not None
        }
        train_config = TrainConfig.from_dict({**TrainConfig.from_file(train_path).to_dict(), **overrides})
        result = train(model_config, train_config, out_dir=args.out, resume=args.resume, progress=True)
    except MFHAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; continue with: python -m mfha.train ... --out {args.out} --resume", file=sys.stderr)
        return 130
    m = result.metrics
    print(
        f"done: {result.steps} steps, val_loss {m['val_loss']:.4f}, val_bpc {m['val_bpc']:.4f}, "
        f"{m['tokens_per_s']:.0f} tokens/s, peak {m['peak_mem_bytes'] / 2**20:.0f} MiB -> {result.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
