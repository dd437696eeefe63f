"""The README's first command on a fresh clone: no network, no ../shared beside the repository."""

import os
import shutil
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from tests._cli import REPO, trials

pytestmark = pytest.mark.slow


def copy_of_the_working_tree(dest):
    """What a clone of this tree would hold: tracked files and new files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        src = REPO / name
        if src.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def test_the_first_command_completes_the_smoke_study_offline(tmp_path):
    repo = tmp_path / "mfha-search"
    copy_of_the_working_tree(repo)
    assert not (tmp_path / "shared").exists()
    url = f"sqlite:///{tmp_path}/mfha.db"
    # empty caches, as on a new machine; HF_HUB_OFFLINE as without a network
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"),
        "MFHA_CACHE": str(tmp_path / "mfha-cache"),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "run_search.py", "run", "--storage", url],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-6000:]
    finished = [t for t in trials(url, "smoke") if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 8, f"{len(finished)} finished trials in {wall:.0f} s"
    # third-party noise before the run's own first line (issue 11, item 7)
    assert "Repo card metadata" not in proc.stderr and "Generating" not in proc.stderr, proc.stderr[:3000]
    print(f"fresh clone, offline: {len(finished)} finished trials in {wall:.1f} s")
