"""User mistakes with the mfha CLIs (train, evaluate, generate), run as real processes: exit code 1, exactly one
line on stderr (every line counted, not only `error:` ones) naming the flag or key and the fix, and every file
already on disk byte-for-byte as it was. README.md's "Bad input" table quotes these messages."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mfha import ModelConfig, TrainConfig, uniform
from tests.conftest import REPO

pytestmark = pytest.mark.slow

TRAIN = dict(
    max_train_stories=50,
    max_val_stories=10,
    batch_size=4,
    seq_len=32,
    max_steps=4,
    eval_interval=2,
    eval_windows=2,
    warmup_steps=1,
    device="cpu",
)


def tiny_model(dim: int = 16) -> ModelConfig:
    return ModelConfig(dim=dim, n_layers=1, heads=uniform(2, 8), max_seq_len=32)


def cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m ARGS` from the repository root; the session's MFHA_CACHE and HF_HUB_OFFLINE pass through."""
    return subprocess.run(
        [sys.executable, "-m", *args, *([] if args[0] != "mfha.train" else ["--threads", "1"])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refused command (no traceback, no warning, no progress bar beside it)."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (a file root counts as itself), keyed by path: files that appear,
    vanish or change all show."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tinystories):
    """Two finished run folders of different widths (16 and 24), trained in-process once for the module."""
    from mfha.train import train

    folder = tmp_path_factory.mktemp("runs")
    tc = TrainConfig(dataset=tinystories, **TRAIN)
    for dim in (16, 24):
        train(tiny_model(dim), tc, out_dir=folder / f"dim{dim}")
    configs = folder / "configs"
    configs.mkdir()
    tiny_model().save(configs / "model.json")
    tc.save(configs / "train.json")
    return folder


@pytest.fixture
def run(runs, tmp_path) -> Path:
    """A copy of the width-16 run that a test may break."""
    return Path(shutil.copytree(runs / "dim16", tmp_path / "run"))


def train_args(runs: Path, out: Path, *extra: str) -> list[str]:
    c = runs / "configs"
    return [
        "mfha.train",
        "--model-config",
        str(c / "model.json"),
        "--train-config",
        str(c / "train.json"),
        "--out",
        str(out),
        *extra,
    ]


def test_training_into_an_existing_run_without_resume_is_refused(runs, run, tmp_path):
    before = hashes(run)
    line = one_line(cli(*train_args(runs, run)))
    assert line == (
        f"error: --out '{run}' already holds a run (checkpoint.pt, model_config.json, train_config.json, "
        f"tokenizer.json, metrics.csv); pass --resume to continue it, or another --out for a new run."
    ), line
    assert hashes(run) == before
    # a run that stopped before its first checkpoint: nothing to --resume, so only another --out helps
    (run / "checkpoint.pt").unlink()
    (run / "metrics.csv").unlink()
    before = hashes(run)
    line = one_line(cli(*train_args(runs, run)))
    assert re.search(r"already holds .* but no checkpoint\.pt to --resume from; pass another --out", line), line
    assert hashes(run) == before
    # an empty folder that exists is a new run's place
    empty = tmp_path / "empty"
    empty.mkdir()
    trained = cli(*train_args(runs, empty))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (empty / "checkpoint.pt").is_file()


def test_an_empty_train_file_is_named(runs, tmp_path, tinystories):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("")
    shutil.copy(Path(tinystories) / "validation.jsonl", data / "validation.jsonl")
    before = hashes(data)
    out = tmp_path / "out"
    line = one_line(cli(*train_args(runs, out, "--dataset", str(data))))
    assert line == (
        f"error: --dataset '{data}' has an empty data file, 'train.jsonl': every split needs rows "
        f"(one story per row); fill it, or pass --dataset with another folder."
    ), line
    assert hashes(data) == before and not out.exists()


def _truncated(run: Path, runs: Path) -> None:
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])


def _random_bytes(run: Path, runs: Path) -> None:
    (run / "checkpoint.pt").write_bytes(os.urandom(4096))


def _other_model(run: Path, runs: Path) -> None:
    shutil.copy(runs / "dim24" / "checkpoint.pt", run / "checkpoint.pt")


BREAKS = {"truncated": _truncated, "random bytes": _random_bytes, "other model": _other_model}
COMMANDS = {
    "generate": lambda run: ["mfha.generate", str(run), "Once upon a time", "--max-new-tokens", "5"],
    "evaluate": lambda run: ["mfha.evaluate", str(run)],
    "train --resume": lambda run: ["mfha.train", "--from", str(run), "--out", str(run), "--resume", "--max-steps", "8"],
}


@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
@pytest.mark.parametrize("damage", BREAKS, ids=list(BREAKS))
def test_a_bad_checkpoint_is_named(runs, run, damage, command):
    BREAKS[damage](run, runs)
    before = hashes(run)
    line = one_line(cli(*COMMANDS[command](run)))
    ckpt = re.escape(f"checkpoint '{run / 'checkpoint.pt'}'")
    if damage == "other model":
        # the run's vocabulary, 16 wide in its config and 24 in the copied checkpoint
        assert re.search(
            ckpt + r" is not of the model .*\(its tok_emb\.weight is \[\d+, 24\], the model's \[\d+, 16\]\)", line
        ), line
    else:
        assert re.search(ckpt + r" cannot be read \(\w+\): it is truncated, corrupt, or not a checkpoint; ", line), line
    if command == "train --resume":
        fix = "resume with the configs it was trained with" if damage == "other model" else "put back a good copy"
        assert line.endswith(f"; {fix}, or train afresh into another --out (without --resume)."), line
    else:
        assert f"retrain the run (python -m mfha.train --from {run} --out NEW_FOLDER)" in line or line.endswith(
            f"retrain it (python -m mfha.train --from {run} --out NEW_FOLDER) or put back the matching checkpoint.pt."
        ), line
    assert hashes(run) == before


def test_a_plot_in_a_missing_folder_is_made_and_one_under_a_file_refused(run, tmp_path):
    before = hashes(run)
    plot = tmp_path / "plots" / "new" / "x.png"
    made = cli("mfha.evaluate", str(run), "--plot", str(plot))
    assert made.returncode == 0, made.stderr[-3000:]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"loss curves -> {plot}" in made.stdout
    assert hashes(run) == before
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    before = hashes(run, blocker)
    line = one_line(cli("mfha.evaluate", str(run), "--plot", str(blocker / "x.png")))
    assert line == (
        f"error: --plot '{blocker / 'x.png'}' lies under '{blocker}', which is a file; pass --plot with another path."
    ), line
    assert hashes(run, blocker) == before


def test_another_text_column_names_the_flag_that_exists(runs, tmp_path, tinystories):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation"):
        rows = (Path(tinystories) / f"{split}.jsonl").read_text().splitlines()[:60]
        lines = [json.dumps({"story": json.loads(r)["text"]}) for r in rows if r.strip()]
        (data / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    before = hashes(data)
    out = tmp_path / "out"
    line = one_line(cli(*train_args(runs, out, "--dataset", str(data))))
    assert line == (
        f"error: --text-column 'text' is not a column of the train split of --dataset '{data}'; its columns are: "
        f"story; set --text-column (data.text_column in a study file) to the one that holds the stories."
    ), line
    assert hashes(data) == before and not out.exists()
    # the flag the message names is real
    trained = cli(*train_args(runs, out, "--dataset", str(data), "--text-column", "story"))
    assert trained.returncode == 0, trained.stderr[-3000:]


def test_a_users_model_config_must_name_its_shape(runs, tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"n_layers": 1, "heads": {"family": "uniform", "n": 2, "size": 8}, "max_seq_len": 32}))
    before = hashes(mine)
    out = tmp_path / "out"
    line = one_line(
        cli(
            "mfha.train",
            "--model-config",
            str(mine),
            "--train-config",
            str(runs / "configs" / "train.json"),
            "--out",
            str(out),
        )
    )
    assert (
        line
        == f"error: ModelConfig file '{mine}' must set dim, n_layers and heads, but it lacks dim; add \"dim\" to it."
    ), line
    assert hashes(mine) == before and not out.exists()


def test_a_finished_run_still_generates_evaluates_and_resumes(run):
    generated = cli("mfha.generate", str(run), "Once upon a time", "--max-new-tokens", "5", "--seed", "1")
    assert generated.returncode == 0 and generated.stdout.startswith("Once upon a time"), generated.stderr[-3000:]
    evaluated = cli("mfha.evaluate", str(run))
    assert evaluated.returncode == 0 and "val_bpc" in evaluated.stdout, evaluated.stderr[-3000:]
    # the run's own configs (product-written, vocab_size included) load through --from as they are
    resumed = cli("mfha.train", "--from", str(run), "--out", str(run), "--resume", "--max-steps", "8")
    assert resumed.returncode == 0 and "done: 8 steps" in resumed.stdout, resumed.stderr[-3000:]
