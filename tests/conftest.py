import os
from pathlib import Path

import pytest

# set before any test module imports datasets/huggingface_hub, which read it once at import
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared/data/tinystories"


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
