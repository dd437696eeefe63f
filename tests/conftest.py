import json
import os
import shutil
from pathlib import Path

import pytest

# set before any test module imports datasets/huggingface_hub, which read it once at import
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared/data/tinystories"
CHROMIUM = os.environ.get("MFHA_CHROMIUM", "/usr/bin/chromium")
# as root Chromium needs --no-sandbox; the rest keep it off the network and quiet
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tokenizer and token caches go to a per-session folder, never the user's ~/.cache."""
    old = os.environ.get("MFHA_CACHE")
    os.environ["MFHA_CACHE"] = str(tmp_path_factory.mktemp("mfha-cache"))
    yield
    if old is None:
        os.environ.pop("MFHA_CACHE", None)
    else:
        os.environ["MFHA_CACHE"] = old


@pytest.fixture(scope="session")
def tinystories() -> str:
    if not SHARED_DATA.exists():
        pytest.fail(f"the shared TinyStories slice is missing at {SHARED_DATA}; CI lays ../shared beside the repo")
    return str(SHARED_DATA)


PG_ADMIN_DSN = os.environ.get("MFHA_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
TINY_STUDY = """\
[study]
name = "{name}"
n_trials = {n_trials}
heartbeat_interval_s = {heartbeat}
grace_period_s = {grace}

[data]
dataset = "{dataset}"
max_train_stories = 100
max_val_stories = 20
tokenizer_vocab = "char"

[budget]
params = 8_000
tolerance = 0.3

[space]
depth = {{ min = 1, max = 2 }}
width = {{ min = 8, max = 64, step = 2 }}
families = {families}
mlp_mult = [2.0]
lr = {{ min = 1e-3, max = 1e-2 }}
batch_size = [8]

[space.uniform]
n = {{ min = 1, max = 2 }}
size = [8]

[training]
max_steps = {steps}
seq_len = 32
eval_interval = 10
eval_windows = 4
device = "cpu"
threads = 1

[pruning]
ram_limit = "4 GiB"
pruner = "none"

[sampler]
kind = "random"
seed = 1
"""


def write_tiny_study(
    folder: Path,
    dataset: str,
    name: str = "tiny",
    *,
    n_trials: int = 4,
    steps: int = 30,
    heartbeat: int = 1,
    grace: int = 3,
    families: tuple[str, ...] = ("uniform",),
    extra: str = "",
    objectives: tuple[str, ...] = ("val_bpc",),
) -> Path:
    """A study file of tiny models (a trial trains in about a second) in `folder`; a family other than
    uniform needs its [space.FAMILY] table in `extra`. `objectives` beyond val_bpc make it multi-objective,
    with a short cost measurement."""
    text = (
        TINY_STUDY.format(
            name=name,
            n_trials=n_trials,
            steps=steps,
            heartbeat=heartbeat,
            grace=grace,
            dataset=dataset,
            families=json.dumps(list(families)),
        )
        + extra
    )
    if len(objectives) > 1:
        text = (
            text.replace("[study]\n", f"[study]\nobjectives = {json.dumps(list(objectives))}\n", 1)
            + "\n[cost]\nseconds = 0.2\n"
        )
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test, then as it was."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_study(tmp_path, tinystories):
    """Write a study file of tiny models (a trial trains in about a second); returns its path."""

    def write(name: str = "tiny", **kw) -> Path:
        return write_tiny_study(tmp_path, tinystories, name, **kw)

    return write


@pytest.fixture
def browser(tmp_path):
    """A page in headless Chromium (Debian's, driven by Playwright: no browser download)."""
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("playwright is not installed; pip install -r requirements.txt (bash .ci/run does)")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.fail(f"no Chromium at {CHROMIUM}; apt-get install chromium (bash .ci/run does)")
    with sync_api.sync_playwright() as p:
        # a fresh profile per test; headless is Playwright's default and adds --headless
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.fixture(scope="session")
def postgres_url():
    """A database of its own on the PostgreSQL server at 127.0.0.1:5432 for this test run, dropped after."""
    import uuid

    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(
            f"PostgreSQL does not answer at {PG_ADMIN_DSN!r} ({str(e).strip().splitlines()[0]}); bash .ci/run starts it"
        )
    name = f"mfha_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
