"""The trial process: trains one configuration and talks to the study process over a Pipe.

Started from a forkserver that has already imported this module (and so torch and mfha), so a trial
starts in milliseconds. `serve` is the same process started ahead of time: it loads the study's
data and then waits for its configuration, so the next trial starts with nothing left to load.
Messages to the parent:
    ("eval", step, metrics)   then waits for "continue" or "stop"
    ("done", result)          result: history, steps, stopped_early, train_s, model_config, cost
    ("error", kind, message)  kind: oom | diverged | config | crash
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
import traceback
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

import torch

from mfha.config import ModelConfig, TrainConfig
from mfha.cost import measure_cost
from mfha.data import load_data
from mfha.errors import MFHAError, TrainingDiverged
from mfha.heads import uniform
from mfha.memory import vm_status
from mfha.train import train


def serve(conn: Connection, common: dict[str, Any]) -> None:
    """Load the data of every `common["preload"]` train config, then run the one request that comes (None: exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loaded = _get_ready(common)
    try:
        request = conn.recv()
    except EOFError:  # the study process went away
        return
    if request is None:
        return
    run_trial(conn, {**common, **request}, loaded=loaded)


def trial_baseline_bytes(common: dict[str, Any]) -> int:
    """RSS of a trial process at the moment its trial starts: forked from the forkserver, its data
    mapped, warmed up. The CPU memory forecast's baseline for trials; start the forkserver first
    (search.run.forkserver.start_forkserver), as a trial's process is started from that one.

    A fresh process's figure (mfha.memory.framework_baseline_bytes) does not hold here: a forked
    process counts only the library pages it touches itself, and the forkserver's own imports (the
    main script's among them) are in it. `bench/memory.py --trials` prints both (261 vs 310 MiB).
    """
    ctx = multiprocessing.get_context("forkserver")
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_report_baseline, args=(child_conn, common), daemon=True, name="mfha-baseline")
    proc.start()
    child_conn.close()
    with parent_conn:
        try:
            return parent_conn.recv()
        except EOFError:
            proc.join()
            # its traceback is on stderr above; every trial process would meet the same
            raise MFHAError(
                f"the trial process that measures the memory baseline exited with code {proc.exitcode} "
                "before reporting its RSS; see its error above."
            ) from None
        finally:
            proc.join()


def _report_baseline(conn: Connection, common: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _get_ready(common)
    rss = vm_status("VmRSS")
    if rss is None:  # no /proc (not Linux)
        import psutil

        rss = psutil.Process().memory_info().rss
    conn.send(rss)
    conn.close()


def _get_ready(common: dict[str, Any]) -> dict:
    """What a trial process does before its request: map the data of every `common["preload"]` train
    config and warm up on the first; the data loaded, by `_data_key`."""
    torch.set_num_threads(common["threads"])
    loaded, first = {}, None
    for tc in common.get("preload", []):
        cfg = TrainConfig.from_dict(tc)
        try:
            loaded[_data_key(cfg)] = load_data(cfg, cache_dir=common["cache_dir"])
        except MFHAError:
            break  # the trial loads it again and reports the error to the study process
        first = first or cfg
    if first is not None:
        _warm_up(loaded[_data_key(first)], first)
    return loaded


def run_trial(conn: Connection, request: dict[str, Any], *, loaded: dict | None = None) -> None:
    # Ctrl-C reaches the whole process group; the study process decides what happens to the trial
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn.send(_train(conn, request, loaded or {}))
    except TrainingDiverged as e:
        conn.send(("error", "diverged", str(e)))
    except (torch.OutOfMemoryError, MemoryError) as e:
        conn.send(("error", "oom", _first_line(e)))
    except MFHAError as e:
        conn.send(("error", "config", str(e)))
    except RuntimeError as e:
        # allocator failures that torch does not raise as OutOfMemoryError (e.g. "can't allocate memory")
        kind = "oom" if "alloc" in str(e).lower() or "out of memory" in str(e).lower() else "crash"
        conn.send(("error", kind, _first_line(e) if kind == "oom" else _tail(e)))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which records the trial as FAIL
        conn.send(("error", "crash", _tail(e)))
    finally:
        conn.close()


def _train(conn: Connection, request: dict[str, Any], loaded: dict) -> tuple:
    torch.set_num_threads(request["threads"])
    mc = ModelConfig.from_dict(request["model_config"])
    tc = TrainConfig.from_dict(request["train_config"])
    data = loaded.get(_data_key(tc)) or load_data(tc, cache_dir=request["cache_dir"])
    gpu_limit = request.get("gpu_limit")
    if gpu_limit is not None and torch.cuda.is_available() and tc.device in ("cuda", "auto"):
        total = torch.cuda.get_device_properties(0).total_memory
        # the caching allocator refuses beyond this share: an over-limit trial gets an OOM error, not the GPU
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_limit / total))

    waited = 0.0

    def on_eval(step: int, metrics: dict) -> bool:
        nonlocal waited
        t = time.perf_counter()
        conn.send(("eval", step, metrics))
        stop = conn.recv() == "stop"
        waited += time.perf_counter() - t
        return stop

    t0 = time.perf_counter()
    result = train(mc, tc, data=data, on_eval=on_eval)
    # the waits for the study process's report and pruning decision are search overhead, not training
    train_s = time.perf_counter() - t0 - waited
    cost = {}
    if request.get("cost") and not result.stopped_early:
        # in this process: the trial's own device, threads and shape, and the same neighbours as its training
        for kind in request["cost"]["kinds"]:
            cost[kind] = measure_cost(result.model_config, tc, kind, seconds=request["cost"]["seconds"]).to_dict()
    return (
        "done",
        {
            "history": result.history,
            "steps": result.steps,
            "stopped_early": result.stopped_early,
            "train_s": train_s,
            "model_config": result.model_config.to_dict(),
            "cost": cost,
        },
    )


def _warm_up(data, tc: TrainConfig) -> None:
    """Two steps of a tiny model on the CPU: the first forward, backward, AdamW step and evaluation
    of a process carry one-off costs (lazy imports, thread pool, allocator) that would otherwise
    land in the trial's training time; here they run while the previous trial still trains."""
    model = ModelConfig(dim=16, n_layers=1, heads=uniform(1, 16), max_seq_len=16, vocab_size=data.tokenizer.vocab_size)
    warm = replace(
        tc,
        device="cpu",
        max_steps=2,
        eval_interval=1,
        eval_windows=2,
        batch_size=2,
        seq_len=16,
        warmup_steps=0,
        max_time_s=None,
    )
    with contextlib.suppress(MFHAError):  # a slice too short for even this: the trial itself reports it
        train(model, warm, data=data)


def _data_key(tc: TrainConfig) -> tuple:
    """The fields that pick the data (see mfha.data.load_data's cache key)."""
    return (
        tc.dataset,
        tc.text_column,
        tc.max_train_stories,
        tc.max_train_tokens,
        tc.max_val_stories,
        tc.tokenizer_vocab,
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _tail(e: BaseException) -> str:
    lines = traceback.format_exception(e)
    return "".join(lines[-3:]).strip()


__all__ = ["run_trial", "serve", "trial_baseline_bytes"]
