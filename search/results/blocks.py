"""The report as a document: the facts and charts as a list of blocks (headings, paragraphs, tables,
figures) that both renderers (`render`) read, so the page and summary.md say the same.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from search.results.charts import Chart
from search.results.facts import STATES
from search.results.stats import CONFIDENCE
from search.results.text import (
    COST_DIGITS,
    COST_MEANING,
    DIGITS,
    fmt_bpc,
    fmt_device,
    fmt_hours,
    fmt_mib,
    fmt_opt,
    fmt_pm,
    fmt_span,
    fmt_speed,
)


def document(facts: dict[str, Any], charts: list[Chart]) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p"|"verdict", text), ("table", headers, rows), ("chart", Chart), ("code", lines).
    HTML and markdown render the same blocks, so the page and summary.md state the same facts."""
    s, v = facts["setup"], facts["verdict"]
    chart = {c.key: c for c in charts}
    # the charts go in as they are, and become ("chart", Chart) blocks at the end
    blocks: list[tuple[Any, ...] | Chart] = [("h1", f"Study {facts['study']}: report")]
    if s["description"]:
        blocks.append(("p", s["description"]))
    blocks += [("h2", "Verdict: mixed head sizes or plain multi-head attention?")] + _verdict_blocks(v)
    blocks += [("h2", "The study")] + _study_blocks(facts) + [("h2", "Head families")] + _family_blocks(facts)
    blocks += [("h2", "Validated configurations")] + _validated_blocks(facts) + [chart["validated"], chart["curves"]]
    if "pareto" in facts:
        blocks += [("h2", "Quality against cost: the Pareto front")] + _pareto_blocks(facts) + [chart["pareto"]]
    blocks += (
        [("h2", "The search")]
        + [chart["history"], chart["intermediate"]]
        + _importance_blocks(facts)
        + [chart["importances"]]
    )
    blocks += [
        ("h2", "Reproduce"),
        ("p", "Every figure above comes from these commands (storage passwords shown as ***):"),
        ("code", list(facts["commands"].values())),
    ]
    return [("chart", b) if isinstance(b, Chart) else b for b in blocks]


def verdict_text(v: dict[str, Any]) -> str:
    """The verdict on val_bpc, and in a multi-objective study the sentence on each cost after it."""
    return v["sentence"] + (" " + v["cost_sentence"] if v.get("cost_sentence") else "")


def _verdict_blocks(v: dict[str, Any]) -> list[tuple]:
    blocks: list[tuple] = [("verdict", verdict_text(v))]
    if v["mixed"] is None:
        return blocks
    costs = v.get("costs", {})
    blocks.append(
        (
            "table",
            ["", "configuration", "search trial", _mean_header(costs), *_cost_headers(costs), "seeds", "tokens/s"],
            [
                [
                    side,
                    v[key]["heads"] + (" (baseline)" if v[key]["baseline"] else ""),
                    str(v[key]["source_trial"]),
                    fmt_pm(v[key]["mean"], v[key]["low"], v[key]["high"]),
                    *(_cost_pm(c[key]) for c in costs.values()),
                    str(len(v[key]["seeds"])),
                    fmt_speed(v[key]["tokens_per_s"]),
                ]
                for side, key in (("best mixed", "mixed"), ("best uniform", "uniform"))
            ]
            + [
                [
                    "mixed − uniform",
                    "",
                    "",
                    f"{v['difference']:+.{DIGITS}f} ({fmt_span(v['low'], v['high'])})",
                    *(
                        f"{c['difference']:+.{COST_DIGITS}f} ({fmt_span(c['low'], c['high'], COST_DIGITS)})"
                        for c in costs.values()
                    ),
                    "",
                    "",
                ]
            ],
        )
    )
    if v["speed_ratio"]:
        blocks.append(
            (
                "p",
                f"Speed: the mixed configuration trains at {fmt_speed(v['mixed']['tokens_per_s'])} tokens/s, the uniform one "
                f"at {fmt_speed(v['uniform']['tokens_per_s'])} tokens/s: a ratio of {v['speed_ratio']:.3f} (mixed / uniform, "
                "means over the validation trials).",
            )
        )
    return blocks


def _mean_header(costs: Collection[str]) -> str:
    """The val_bpc column's header: named where cost columns stand beside it."""
    return ("val_bpc " if costs else "") + f"mean ± {CONFIDENCE:.0%}"


def _cost_headers(costs: Collection[str]) -> list[str]:
    return [f"{name} mean ± {CONFIDENCE:.0%}" for name in costs]


def _cost_pm(iv: dict[str, Any] | None) -> str:
    return "—" if iv is None else fmt_pm(iv["mean"], iv["low"], iv["high"], COST_DIGITS)


def _pareto_blocks(facts: dict[str, Any]) -> list[tuple]:
    names, front = facts["objectives"], facts["pareto"]
    if not front:
        return [("p", "No COMPLETE search trial yet, so no Pareto front.")]
    return [
        (
            "p",
            f"{len(front)} of the {facts['trials']['search']['COMPLETE']} COMPLETE search trials are on the Pareto front of "
            f"{', '.join(names)}: no other trial is as low on every objective and lower on one. A cost ({COST_MEANING}) was "
            "measured once, after the trial's training. Best val_bpc first.",
        ),
        (
            "table",
            ["search trial", "heads", "family", *names],
            [
                [
                    str(p["trial"]),
                    (p["heads"] or "") + (" (baseline)" if p["baseline"] else ""),
                    p["family"] or "",
                    fmt_bpc(p["values"][names[0]]),
                    *(f"{p['values'][c]:.{COST_DIGITS}f}" for c in names[1:]),
                ]
                for p in front
            ],
        ),
    ]


def _study_blocks(facts: dict[str, Any]) -> list[tuple]:
    s, t = facts["setup"], facts["trials"]
    vocab = ", ".join(f"{k}: {v}" for k, v in s["vocab_sizes"].items())
    data = (
        f"Data: `{s['dataset']}`, training slice {fmt_opt(s['max_train_stories'], 'stories')}"
        + (f", at most {s['max_train_tokens']:,} tokens" if s["max_train_tokens"] else "")
        + f", validation {fmt_opt(s['max_val_stories'], 'stories')}; tokenizer {s['tokenizer_vocab'] or 'char'}"
        + (f" (vocabulary {vocab})" if vocab else "")
        + "."
    )
    budget = (
        f"Budget: {s['budget_params']:,} parameters ± {s['budget_tolerance']:.0%}"
        if s["budget_params"]
        else "Budget: not recorded"
    )
    per_trial = f"{s['per_trial']:,} {s['step_unit']}" if s["per_trial"] else f"not recorded ({s['step_unit']})"
    families = f"; head families searched: {', '.join(s['families'])}" if s["families"] else ""
    blocks = [
        ("p", data),
        ("p", f"{budget}; each search trial trains for {per_trial}{families}."),
        (
            "table",
            ["study", "trials", *(x for x in STATES if _any_state(facts, x))],
            [
                [name, str(c["total"]), *(str(c[x]) for x in STATES if _any_state(facts, x))]
                for name, c in ((facts["study"], t["search"]), (facts["validation_study"], t["validation"]))
                if c is not None
            ],
        ),
    ]
    if facts["prune_kinds"]:
        blocks.append(("p", "Pruned, by kind: " + ", ".join(f"{k} {n}" for k, n in facts["prune_kinds"].items()) + "."))
    blocks.append(
        (
            "p",
            "Compute spent (sum of trial durations, both studies, by the trial's device; CPU also in core-hours = duration × threads):",
        )
    )
    blocks.append(
        (
            "table",
            ["device", "trials", "search", "validation", "total", "core-hours"],
            [
                [
                    fmt_device(k),
                    str(d["trials"]),
                    fmt_hours(d["search_hours"]),
                    fmt_hours(d["validation_hours"]),
                    fmt_hours(d["hours"]),
                    "—"
                    if d["core_hours"] is None
                    else f"{d['core_hours']:.3g}"
                    + (f" ({d['no_threads']} trials without a thread count left out)" if d["no_threads"] else ""),
                ]
                for k, d in facts["compute"].items()
            ],
        )
    )
    return blocks + _memory_blocks(facts["memory"])


def _memory_blocks(m: dict[str, Any]) -> list[tuple]:
    blocks: list[tuple[Any, ...]] = []
    if m["pruned"]:
        blocks.append(
            (
                "p",
                f"Memory-pruned trials ({len(m['pruned'])}); a trial pruned on its forecast was never allocated, "
                "so it has no measured peak:",
            )
        )
        blocks.append(
            (
                "table",
                ["trial", "kind", "heads", "forecast MiB", "measured MiB"],
                [
                    [
                        str(p["trial"]),
                        p["kind"],
                        p["heads"] or "",
                        fmt_mib(p["forecast_mib"]),
                        "never allocated" if p["never_allocated"] else fmt_mib(p["measured_mib"]),
                    ]
                    for p in m["pruned"]
                ],
            )
        )
    else:
        blocks.append(("p", "No trial was pruned for memory."))
    if m["compared"]:

        def one(p):
            return f"{p['error']:+.1%} (trial {p['trial']}: forecast {p['forecast_mib']:.1f} MiB, measured {p['measured_mib']:.1f} MiB)"

        over = one(m["worst_over"]) if m["worst_over"] else "none (no forecast above its measurement)"
        under = one(m["worst_under"]) if m["worst_under"] else "none (no measurement above its forecast)"
        blocks.append(
            (
                "p",
                f"Forecast against measured peak memory over {m['compared']} COMPLETE trials: worst over-forecast "
                f"{over}; worst under-forecast {under}.",
            )
        )
    return blocks


def _family_blocks(facts: dict[str, Any]) -> list[tuple]:
    rows, costs = facts["families"], _costs(facts)
    if not rows:
        return [("p", "No search trial has a head family yet.")]
    return [
        (
            "p",
            f"One row per head family of the search trials, baselines apart. Validated: the family's best retrained "
            f"configuration, mean over seeds ± its {CONFIDENCE:.0%} t-interval; parameters and tokens/s are that "
            "configuration's (else the best search trial's)."
            + (
                f" A cost ({COST_MEANING}): the lowest and the median over the family's COMPLETE search trials, and "
                "the validated configuration's mean over seeds."
                if costs
                else ""
            ),
        ),
        (
            "table",
            [
                "family",
                "trials (complete)",
                "best search val_bpc",
                "validated configuration",
                "validated " + _mean_header(costs),
                *(h for c in costs for h in (f"search {c}: lowest, median", f"validated {c} mean ± {CONFIDENCE:.0%}")),
                "seeds",
                "parameters",
                "tokens/s",
            ],
            [
                [
                    r["family"] + (" (baseline)" if r["baseline"] else ""),
                    f"{r['trials']} ({r['complete']})",
                    f"{fmt_bpc(r['best_search_value'])} (trial {r['best_search_trial']})"
                    if r["best_search_value"] is not None
                    else "—",
                    f"{r['heads']} (trial {r['validated_trial']})"
                    if r["validated_trial"] is not None
                    else "not validated",
                    fmt_pm(r["mean"], r["low"], r["high"]) if r["mean"] is not None else "—",
                    *_family_cost_cells(r, costs),
                    str(r["seeds"]),
                    f"{r['n_params']:,}" if r["n_params"] else "—",
                    fmt_speed(r["tokens_per_s"]),
                ]
                for r in rows
            ],
        ),
    ]


def _family_cost_cells(row: dict[str, Any], costs: list[str]) -> list[str]:
    cells = []
    for name in costs:
        c = row["costs"][name]
        cells += [
            "—" if c["lowest"] is None else f"{c['lowest']:.{COST_DIGITS}f}, {c['median']:.{COST_DIGITS}f}",
            _cost_pm(c["validated"]),
        ]
    return cells


def _costs(facts: dict[str, Any]) -> list[str]:
    """The study's cost objectives (none for a single-objective study)."""
    return facts.get("objectives", ["val_bpc"])[1:]


def _validated_blocks(facts: dict[str, Any]) -> list[tuple]:
    rows = facts["validated"]
    if not rows:
        return [
            (
                "p",
                "Not validated yet (see the verdict)."
                if facts["validation_study"] is None
                else "No configuration has a COMPLETE validation trial yet.",
            )
        ]
    seeds, costs = ", ".join(str(x) for x in facts["seeds"]), _costs(facts)
    return [
        (
            "p",
            f"Each configuration retrained from scratch with fresh seeds ({seeds}) in study `{facts['validation_study']}`; "
            "best validated mean first." + (f" Costs ({COST_MEANING}) are means over the same seeds." if costs else ""),
        ),
        (
            "table",
            [
                "search trial",
                "heads",
                "family",
                "mixed sizes",
                "why",
                "search val_bpc",
                _mean_header(costs),
                *_cost_headers(costs),
                "seeds",
                "parameters",
                "tokens/s",
            ],
            [
                [
                    str(r["source_trial"]),
                    r["heads"] + (" (baseline)" if r["baseline"] else ""),
                    r["family"],
                    "yes" if r["mixed"] else "no",
                    ", ".join(r["why"]),
                    fmt_bpc(r["search_value"]),
                    fmt_pm(r["mean"], r["low"], r["high"]),
                    *(_cost_pm(r.get("costs", {}).get(c)) for c in costs),
                    str(len(r["seeds"])),
                    f"{r['n_params']:,}",
                    fmt_speed(r["tokens_per_s"]),
                ]
                for r in rows
            ],
        ),
    ]


def _importance_blocks(facts: dict[str, Any]) -> list[tuple]:
    imp = facts["importances"]
    if not imp["params"]:
        return [("p", f"Parameter importances: {imp['note']}")]
    listed = lambda params: ", ".join(f"{k} {v:.3f}" for k, v in params.items()) or "none varied"
    if "costs" not in imp:
        return [
            ("p", f"Parameter importances ({imp['method']}, over the COMPLETE search trials): {listed(imp['params'])}.")
        ]
    # one objective at a time: which parameters reach the lowest 10% of val_bpc, and of each cost
    per = {"val_bpc": imp["params"], **imp["costs"]}
    return [
        (
            "p",
            f"Parameter importances ({imp['method']}, over the COMPLETE search trials, one objective at a time): "
            + "; ".join(f"for {name}, {listed(params)}" for name, params in per.items())
            + ".",
        )
    ]


def _any_state(facts: dict[str, Any], state: str) -> bool:
    return state in ("COMPLETE", "PRUNED", "FAIL") or any(c and c[state] for c in facts["trials"].values())


__all__ = ["document", "verdict_text"]
