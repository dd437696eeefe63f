"""The house rules of the code, checked on its source: wings import downward only, no private name
crosses a module, no module grows past 500 lines, and the trial processes stay free of Optuna."""

from __future__ import annotations

import ast
import multiprocessing
from pathlib import Path

import pytest

from tests import _forkprobe

REPO = Path(__file__).resolve().parents[1]
WINGS = ("study", "store", "run", "results")
# what each wing of search/ may import besides itself and mfha: downward only, run and results side by side
ALLOWED = {"study": set(), "store": {"study"}, "run": {"study", "store"}, "results": {"study", "store"}}
MAX_LINES = 500


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (REPO / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in the file, also those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "search" and parts[1] in WINGS else None


@pytest.mark.parametrize("wing", WINGS)
def test_wings_import_downward_only(wing):
    wrong = []
    for path in _modules(f"search/{wing}"):
        for line, module, _ in _imports(path):
            other = _wing(module)
            if module == "search" or (other is not None and other != wing and other not in ALLOWED[wing]):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not wrong, wrong


def test_mfha_knows_nothing_of_search_or_optuna():
    wrong = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in _modules("mfha")
        for line, module, _ in _imports(path)
        if module.split(".")[0] in ("search", "optuna", "optuna_dashboard")
    ]
    assert not wrong, wrong


def test_no_private_name_crosses_a_module():
    wrong = [
        f"{path.relative_to(REPO)}:{line} takes {name} from {module}"
        for package in ("search", "mfha")
        for path in _modules(package)
        for line, module, names in _imports(path)
        for name in names
        if module.split(".")[0] in ("search", "mfha") and name.startswith("_")
    ]
    assert not wrong, wrong


def test_no_module_over_500_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in _modules("search") + _modules("mfha")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_every_wing_says_its_job_and_imports_nothing():
    for wing in WINGS:
        tree = ast.parse((REPO / "search" / wing / "__init__.py").read_text())
        assert ast.get_docstring(tree), wing
        # a docstring alone: the trial forkserver passes through search/run/__init__.py
        assert len(tree.body) == 1, f"search/{wing}/__init__.py holds more than its docstring"


def test_trial_processes_import_no_optuna():
    from search.run.forkserver import start_forkserver

    start_forkserver()
    ctx = multiprocessing.get_context("forkserver")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_forkprobe.report_modules, args=(child,), daemon=True)
    proc.start()
    child.close()
    try:
        modules = parent.recv()
    finally:
        proc.join(30)
    assert "search.run.child" in modules and "torch" in modules, "the forkserver did not preload the trial module"
    assert not [m for m in modules if m.split(".")[0] in ("optuna", "optuna_dashboard", "sqlalchemy")]
