#!/usr/bin/env bash
# The GPU checks of ../shared/GPU-CHECKS.md in one run, each under its own timeout and all under one
# wall-clock budget, so that one hang cannot eat the rest; a summary table at the end.
#
#   bash bench/gpu_checks.sh                      # from the repository root, on a CUDA machine
#   DATASET=data/x PROBE=path/attn_probe.py OUT=/tmp/gc bash bench/gpu_checks.sh
#   QUICK=1 bash bench/gpu_checks.sh              # CPU dry run of the script itself (tiny settings)
#
# Environment: DATASET (default ../shared/data/tinystories, relative to the repository root), PROBE
# (default ../shared/tools/attn_probe.py), OUT (log folder, default a temporary one), BUDGET_S (the
# wall-clock budget of all checks, default 390), TRIAL_TOKENS (the GPU study trial's token budget,
# default 6,553,600 = 400 steps at batch 64: the study's 32,768,000 cut to fit), MEMORY_ARGS (extra
# flags for bench/memory.py), CPU_TOKENS_PER_S (the CPU's tokens/s for the same trial, for the table).
# Writes OUT/log.txt (everything) and OUT/summary.txt (the table).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
QUICK=${QUICK:-0}
DATASET=${DATASET:-../shared/data/tinystories}
PROBE=${PROBE:-../shared/tools/attn_probe.py}
OUT=${OUT:-$(mktemp -d /tmp/gpu-checks-out.XXXX)}
BUDGET_S=${BUDGET_S:-390}
TRIAL_TOKENS=${TRIAL_TOKENS:-6553600}
CPU_TOKENS_PER_S=${CPU_TOKENS_PER_S:-1735.8}
PY=${PY:-python3}
mkdir -p "$OUT"
LOG=$OUT/log.txt
: >"$LOG"
W=$(mktemp -d /tmp/gpu-checks.XXXX) # per-check outputs (only 2 files go back from a device run)
export PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 MFHA_CACHE=$W/cache
START=$(date +%s)
if [ "$QUICK" = 1 ]; then DEV=cpu; else DEV=cuda; fi

# check NAME TIMEOUT_S CMD...: runs CMD under min(TIMEOUT_S, what is left of BUDGET_S)
check() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - START) - 5))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 10 ]; then
        echo "=== $name: SKIPPED (budget spent)" | tee -a "$LOG"
        echo "skipped 0" >"$W/$name.rc"
        return
    fi
    echo "=== $name (timeout ${limit}s, $(($(date +%s) - START))s in): $*" | tee -a "$LOG"
    local t0=$(date +%s)
    timeout -k 5 "$limit" "$@" >"$W/$name.txt" 2>&1 &
    local pid=$!
    tail -n +1 -f --pid=$pid "$W/$name.txt" | tee -a "$LOG"
    wait $pid
    local rc=$?
    echo "$rc $(($(date +%s) - t0))" >"$W/$name.rc"
    echo "=== $name: rc $rc, $(($(date +%s) - t0)) s" | tee -a "$LOG"
}

{
    echo "date: $(date -u +%FT%TZ)  root: $ROOT  dataset: $DATASET  quick: $QUICK"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -3
    $PY - <<'EOF' 2>&1
import importlib, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for m in ("optuna", "sqlalchemy", "alembic", "datasets", "pyarrow", "fsspec", "huggingface_hub", "tokenizers", "numpy", "pandas", "scipy"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '?')} ({mod.__file__.rsplit('/site-packages/', 1)[0] if '/site-packages/' in mod.__file__ else mod.__file__})")
    except Exception as e:
        print(f"  {m} MISSING: {type(e).__name__}: {e}")
EOF
} | tee -a "$LOG"

# 1. attention bench: fractal mix vs MHA, bf16 fwd+bwd, headline B16 T1024 dim512
if [ "$QUICK" = 1 ]; then
    check attention 60 $PY bench/attention.py --quick --device cpu
else
    check attention 90 $PY bench/attention.py --device cuda
fi

# 2. the probe on the same card (CPU shape without a GPU)
check probe 60 $PY "$PROBE"

# 3. the CUDA-only tests (skipped on CPU); only the files that hold them, so that no module of a
#    package the device lacks (playwright, psycopg) is imported at collection
check pytest 120 $PY -m pytest -q -p no:cacheprovider -k cuda tests/test_memory.py tests/test_config.py

# 4. the load-proof cost on the device: bench/cost_stability.py with its trainer's device from the
#    environment (the bench itself is CPU-only), written to a temporary copy
sed -e 's|^ROOT = Path(__file__).resolve().parents\[1\]|ROOT = Path(os.environ.get("MFHA_ROOT") or Path(__file__).resolve().parents[1])|' \
    -e 's|^DATASET = .*|DATASET = os.environ.get("MFHA_COST_DATASET") or str(ROOT.parent / "shared/data/tinystories")|' \
    -e 's|device="cpu",|device=os.environ.get("MFHA_COST_DEVICE", "cpu"),|' \
    bench/cost_stability.py >"$W/cost_stability_dev.py"
grep -q 'MFHA_COST_DEVICE' "$W/cost_stability_dev.py" || echo "cost_stability.py changed: the device patch did not apply" | tee -a "$LOG"
DATASET_ABS=$(cd "$DATASET" && pwd)
if [ "$QUICK" = 1 ]; then COST_ARGS="--seconds 0.3"; else COST_ARGS="--seconds 2"; fi
check cost 90 env MFHA_ROOT="$ROOT" MFHA_COST_DATASET="$DATASET_ABS" MFHA_COST_DEVICE=$DEV $PY "$W/cost_stability_dev.py" $COST_ARGS

# 5. one trial of the GPU study, token budget cut to TRIAL_TOKENS (eval every quarter, warm-up 5%)
$PY - "$W" "$TRIAL_TOKENS" "$QUICK" <<'EOF'
import re, sys
w, tokens, quick = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
tokens = 32_768 if quick else tokens
s = open("studies/tinystories-10m-gpu.toml").read()
subs = [(r'^name = "tinystories-10m-gpu"$', 'name = "gpu-check-10m"'),
        (r'^tokens = 32_768_000.*$', f"tokens = {tokens}"),
        (r'^eval_tokens = 3_276_800$', f"eval_tokens = {tokens // 4}"),
        (r'^warmup_tokens = 3_276_800$', f"warmup_tokens = {tokens // 20}"),
        (r'^min_resource_tokens = 3_276_800$', f"min_resource_tokens = {tokens // 4}")]
for pat, rep in subs:
    s, n = re.subn(pat, rep, s, count=1, flags=re.M)
    assert n == 1, f"studies/tinystories-10m-gpu.toml changed: {pat} not found"
open(f"{w}/gpu-check-10m.toml", "w").write(s)
EOF
check trial 180 $PY run_search.py run --study "$W/gpu-check-10m.toml" --dataset "$DATASET" --n-trials 1 \
    --storage "sqlite:///$W/gpu-check.db" --device $DEV --no-progress
$PY - "$W" <<'EOF' 2>&1 | tee "$W/trial_attrs.txt" | tee -a "$LOG"
import json, sys
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
st = optuna.load_study(study_name="gpu-check-10m", storage=f"sqlite:///{sys.argv[1]}/gpu-check.db")
for t in st.get_trials(deepcopy=False):
    if t.state.name == "WAITING":
        continue
    a, tc = t.user_attrs, t.user_attrs.get("train_config") or {}
    dur = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
    keep = {k: a.get(k) for k in ("heads", "n_params", "tokens", "steps", "tokens_per_s", "train_s", "peak_mem_mib", "forecast_peak_mib")}
    print("TRIAL " + json.dumps({"trial": t.number, "state": t.state.name, "value": t.value, "duration_s": dur,
                                 "batch_size": tc.get("batch_size"), "device": tc.get("device"), **keep}, default=str))
EOF

# 6. memory forecast vs max_memory_allocated, 14 configs in fresh processes (the last: slowest to start)
if [ "$QUICK" = 1 ]; then
    check memory 120 $PY bench/memory.py --quick --device cpu ${MEMORY_ARGS:-}
else
    check memory 150 $PY bench/memory.py --device cuda ${MEMORY_ARGS:-}
fi

# summary
$PY - "$W" "$CPU_TOKENS_PER_S" <<'EOF' 2>&1 | tee "$OUT/summary.txt" | tee -a "$LOG"
import json, re, sys
from pathlib import Path
w, cpu_tps = Path(sys.argv[1]), float(sys.argv[2])

def out(name):
    p = w / f"{name}.txt"
    return p.read_text(errors="replace") if p.exists() else ""

def rc(name):
    p = w / f"{name}.rc"
    return p.read_text().split() if p.exists() else ["not-run", "0"]

def last_json(name):
    for line in reversed(out(name).splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None

rows = []
def row(check, figure, target, met, name):
    code, secs = rc(name)
    status = "met" if met is True else "MISSED" if met is False else "n/a"
    if code not in ("0",):
        status += f" (rc {code})"
    rows.append((check, figure, target, status, secs))

a = last_json("attention")
fr_ms = None
for line in out("attention").splitlines():
    if line.startswith("B16 T1024") and " mfha_fractal " in line:
        fr_ms = float(line.split()[-2])
if a:
    row("attention, fractal vs MHA (B16 T1024 dim512 bf16)", f"{a['ratio_vs_mha']:.3f}x MHA, {a['speedup_vs_seed_loop']:.2f}x faster than seed loop" + (f", fractal {fr_ms:.2f} ms" if fr_ms else ""),
        "<= 1.25x; >= 4x", a["ratio_vs_mha"] <= 1.25 and a["speedup_vs_seed_loop"] >= 4, "attention")
else:
    row("attention", "no result", "<= 1.25x; >= 4x", None, "attention")

probe = {}
block = None
for line in out("probe").splitlines():
    if line.startswith("device="):
        block = re.search(r"B=(\d+) T=(\d+) dim=(\d+)", line).groups()
    m = re.match(r"(\S+)\s+([\d.]+) ms\s+ratio_vs_mha=([\d.]+)", line)
    if m and block:
        probe.setdefault(block, {})[m[1]] = (float(m[2]), float(m[3]))
head = probe.get(("16", "1024", "512")) or (next(iter(probe.values())) if probe else None)
if head and a:
    g_ms, g_ratio = head["mfha_grouped"]
    ok = a["ratio_vs_mha"] <= g_ratio
    fig = (f"probe MHA {head['mha'][0]:.2f} ms, grouped {g_ms:.2f} ms = {g_ratio:.2f}x, per head {head['mfha_per_head_loop'][1]:.2f}x, "
           f"seed {head['seed_fha'][1]:.2f}x; project fractal {a['ratio_vs_mha']:.3f}x" + (f" ({fr_ms:.2f} ms)" if fr_ms else ""))
    row("attention probe, same card", fig, "project <= probe's grouped", ok, "probe")
else:
    row("attention probe, same card", "no result", "project <= probe's grouped", None, "probe")

t = out("pytest")
m = re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", t.splitlines()[-1] if t.strip() else "")
counts = {k: int(n) for n, k in m}
row("CUDA-only tests (-k cuda)", ", ".join(f"{n} {k}" for k, n in counts.items()) or "no result", "pass",
    bool(counts) and rc("pytest")[0] == "0" and not counts.get("skipped") and not counts.get("failed"), "pytest")

c = last_json("cost")
if c:
    row("load-proof cost on the device (3 fresh processes, middle one beside 2 CPU burners)",
        f"ratios {c['ratios']} ({c['clock']} clock), spread {c['ratio_spread']:+.1%}; tokens/s {c['tokens_per_s']}", "spread <= 5%",
        c["ratio_spread"] <= 0.05, "cost")
else:
    row("load-proof cost", "no result", "spread <= 5%", None, "cost")

trials = [json.loads(l[6:]) for l in out("trial_attrs").splitlines() if l.startswith("TRIAL ")]
if trials:
    tr = trials[0]
    tps = tr.get("tokens_per_s")
    fig = (f"trial {tr['trial']} {tr['state']} {tr['heads']} ({tr['n_params']:,} params) batch {tr['batch_size']}, "
           f"{tr.get('tokens') or 0:,} tokens in {tr['duration_s']:.0f} s, val_bpc {tr['value']:.4f}, "
           f"{tps:,.0f} tokens/s" + (f" = {tps / cpu_tps:,.1f}x the CPU's {cpu_tps:,.0f}" if tps else "")
           + f"; peak {tr['peak_mem_mib']} MiB vs forecast {tr['forecast_peak_mib']} MiB") if tr["state"] == "COMPLETE" else json.dumps(tr)
    row("one trial of the 10M GPU study (tokens cut)", fig, "completes", tr["state"] == "COMPLETE", "trial")
else:
    row("one trial of the 10M GPU study", "no trial", "completes", None, "trial")

mem = last_json("memory")
under = [float(x.rstrip("%")) for x in re.findall(r"\s([+-]\d+\.\d%)\s", out("memory"))]
if mem:
    ok = mem["configs"] >= 12 and mem["worst_over"] <= 0.15 and mem["worst_under"] >= -0.10
    row("memory forecast vs max_memory_allocated", f"{mem['configs']} configs, worst over {mem['worst_over']:+.1%}, worst under {mem['worst_under']:+.1%}",
        ">= 12 configs, within +-15%, never > 10% under", ok, "memory")
else:
    row("memory forecast", f"no result ({len(under)} configs printed: {', '.join(f'{u:+.1f}%' for u in under)})", ">= 12 configs, +-15%", None, "memory")

print("\n| check | figure | target | result | s |")
print("| --- | --- | --- | --- | --- |")
for r in rows:
    print("| " + " | ".join(map(str, r)) + " |")
EOF
echo "total $(($(date +%s) - START)) s" | tee -a "$LOG"
