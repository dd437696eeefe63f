"""Blocks to text: one offline HTML page (charts inlined as PNG) and markdown (summary.md)."""

from __future__ import annotations

import base64
import html
import re
from typing import Any

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
code, pre { font-family: ui-monospace, monospace; background: #f6f6f6; }
pre { padding: 0.8em; overflow-x: auto; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
.verdict { font-size: 1.1em; background: #fff8e1; padding: 0.8em; border-left: 4px solid #f0b400; }
"""


def render_html(facts: dict[str, Any], blocks: list[tuple]) -> str:
    parts = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{_inline(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "verdict":
            parts.append(f'<p class="verdict" id="verdict">{_inline(b[1])}</p>')
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in b[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "chart":
            c = b[1]
            if c.png is None:
                parts.append(f"<h3>{html.escape(c.title)}</h3><p>{_inline(c.note)}</p>")
            else:
                src = "data:image/png;base64," + base64.b64encode(c.png).decode("ascii")
                parts.append(
                    f'<figure id="chart-{c.key}"><img src="{src}" alt="{html.escape(c.title)}">'
                    f"<figcaption>{_inline(c.note)}</figcaption></figure>"
                )
        elif kind == "code":
            parts.append("<pre><code>" + "\n".join(html.escape(line) for line in b[1]) + "</code></pre>")
    title = html.escape(f"Study {facts['study']}: report")
    # the empty data: icon keeps the browser from asking for /favicon.ico (a console error offline)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f'<link rel="icon" href="data:,">\n<style>{CSS}</style>\n</head>\n<body>\n'
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def render_markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            lines += [f"# {b[1]}", ""]
        elif kind == "h2":
            lines += [f"## {b[1]}", ""]
        elif kind in ("p", "verdict"):
            lines += [b[1], ""]
        elif kind == "table":
            cell = lambda c: c.replace("|", "\\|")
            lines += ["| " + " | ".join(cell(h) for h in b[1]) + " |", "|" + " --- |" * len(b[1])]
            lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in b[2]] + [""]
        elif kind == "chart" and b[1].png is None:
            lines += [f"{b[1].title}: {b[1].note}", ""]
        elif kind == "code":
            lines += ["```bash", *b[1], "```", ""]
    return "\n".join(lines)


__all__ = ["render_html", "render_markdown"]
