import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_attention_bench_quick_prints_the_json_line():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "attention.py"), "--quick", "--threads", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert any("mfha_fractal" in line and "1x32 2x16 4x8" in line for line in lines)
    result = json.loads(lines[-1])
    assert set(result) == {"bench", "device", "ratio_vs_mha", "speedup_vs_seed_loop"}
    assert result["bench"] == "attention" and result["device"] in ("cpu", "cuda")
    assert result["ratio_vs_mha"] > 0 and result["speedup_vs_seed_loop"] > 0
