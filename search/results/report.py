"""The study report: what a search and its validation found, as one offline HTML page, a markdown
summary and report.json (every figure the page states).

It reads the search study NAME and its validation study NAME.validation and nothing else: `facts`
computes (with `verdict`), `charts` draws, `blocks` lays the document out, `render` writes it.
Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mfha.errors import ConfigError
from search.results.blocks import document, verdict_text
from search.results.charts import draw_charts
from search.results.evidence import load_validation, validated
from search.results.facts import gather
from search.results.render import render_html, render_markdown
from search.store.storage import make_folder, make_storage, open_study


@dataclass
class Report:
    folder: Path
    files: list[Path]  # index.html, summary.md, report.json
    verdict: str


def write_report(storage_url: str, name: str, out: str | Path) -> Report:
    """Write OUT/index.html, OUT/summary.md and OUT/report.json for study `name` and its validation."""
    study = open_study(storage_url, name)
    validation = load_validation(make_storage(storage_url, heartbeat_interval=None, create=False), name)
    _check_out(Path(out))
    folder = make_folder(out, "--out folder {folder}")
    rows = validated(study, validation) if validation is not None else []
    facts = gather(study, validation, rows, storage_url=storage_url, out=folder)
    charts = draw_charts(study, rows, facts)
    blocks = document(facts, charts)
    files = [folder / "index.html", folder / "summary.md", folder / "report.json"]
    _write(files[0], render_html(facts, blocks))
    _write(files[1], render_markdown(blocks))
    _write(files[2], json.dumps(facts, indent=2) + "\n")
    return Report(folder, files, verdict_text(facts["verdict"]))


REPORT_FILES = ("index.html", "summary.md", "report.json")


def _check_out(folder: Path) -> None:
    """A new or empty folder, or an earlier report's (its report.json, nothing but report files), which
    is replaced; anything else is refused, so a report never overwrites a user's own index.html."""
    if not folder.is_dir():
        return  # new (a file in the way fails in make_folder, with its own message)
    entries = sorted(p.name for p in folder.iterdir())
    if not entries or ("report.json" in entries and set(entries) <= set(REPORT_FILES)):
        return
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise ConfigError(
        f"--out must be a new or empty folder or an earlier report (one with its report.json), but got "
        f"--out {str(folder)!r}, which holds {shown}; pass --out with another folder."
    )


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write {str(path)!r} in --out: {e.strerror}.") from None


__all__ = ["write_report", "Report"]
