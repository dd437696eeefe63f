"""The report's charts: Optuna's matplotlib visualizations (history, importances, intermediate values,
the Pareto front) and the two it lacks (validated means with intervals, mean validation curves).
"""

from __future__ import annotations

import io
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from search.results.evidence import Validated
from search.results.facts import importance_evaluator, objective_target
from search.results.stats import CONFIDENCE
from search.study.trials import BASELINE

MANY_CURVES = 20  # above this many trials the intermediate-values legend would hide the chart


@dataclass
class Chart:
    key: str
    title: str
    png: bytes | None
    note: str  # the caption, or why there is no chart


def draw_charts(study: optuna.Study, rows: list[Validated], facts: dict[str, Any]) -> list[Chart]:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # a notebook that already picked a backend keeps it
        matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    unit = facts["setup"]["step_unit"]
    complete = facts["trials"]["search"]["COMPLETE"]
    reported = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    target = "val_bpc (bits/char)"
    names = facts.get("objectives", ["val_bpc"])
    bpc = objective_target(names, 0)
    # Optuna draws no best-so-far line for a target function: several objectives have no single best
    best = ", and the best so far" if bpc is None else ""
    charts = [
        Chart("history", "Optimization history", None, "No COMPLETE trial yet.")
        if not complete
        else Chart(
            "history",
            "Optimization history",
            _optuna_png(lambda: ovm.plot_optimization_history(study, target=bpc, target_name=target)),
            f"Final validation bits/char of every COMPLETE search trial{best} (Optuna).",
        ),
        Chart("intermediate", "Intermediate values", None, "No trial reported an evaluation yet.")
        if not reported
        else Chart(
            "intermediate",
            "Intermediate values",
            _optuna_png(lambda: _intermediate(ovm, study, unit)),
            f"Validation bits/char at each evaluation of every search trial, by {unit} (Optuna; pruned trials stop early).",
        ),
        Chart("importances", "Parameter importances", None, facts["importances"]["note"] or "")
        if not facts["importances"]["params"]
        else Chart(
            "importances",
            "Parameter importances",
            _optuna_png(
                lambda: ovm.plot_param_importances(
                    study, evaluator=importance_evaluator(), target=bpc, target_name=target
                )
            ),
            f"{facts['importances']['method']} over the COMPLETE search trials" + (" (for val_bpc)." if bpc else "."),
        ),
    ]
    if len(names) > 1:
        charts.append(_pareto_chart(ovm, study, names, complete))
    if not rows:
        why = "No configuration has been validated yet (see the verdict)."
        charts += [Chart("validated", "Validated means", None, why), Chart("curves", "Validation curves", None, why)]
    else:
        charts += [
            Chart(
                "validated",
                "Validated means",
                _png(_validated_figure(rows)),
                f"Mean final validation bits/char over seeds with its {CONFIDENCE:.0%} t-interval, per retrained configuration.",
            ),
            Chart(
                "curves",
                "Validation curves",
                _png(_curves_figure(rows, unit)),
                f"Validation bits/char by {unit}, the mean over seeds, per retrained configuration.",
            ),
        ]
    return charts


def _pareto_chart(ovm, study: optuna.Study, names: list[str], complete: int) -> Chart:
    if not complete:
        return Chart("pareto", "Pareto front", None, "No COMPLETE trial yet.")
    axes: list[str] = []

    def draw():
        ax = ovm.plot_pareto_front(study, target_names=names)
        # the title (the image's alt text) names the axes as Optuna drew them: the page says what the image shows
        axes.extend(get() for get in (ax.get_xlabel, ax.get_ylabel, getattr(ax, "get_zlabel", None)) if get)
        return ax

    png = _optuna_png(draw)
    return Chart(
        "pareto",
        f"Pareto front ({', '.join(f'{xyz}: {label}' for xyz, label in zip('xyz', axes))})",
        png,
        f"Every COMPLETE search trial by {' and '.join(names)}; the trials on the Pareto front (no other trial is "
        'as low on every objective and lower on one) are Optuna\'s "Best Trial".',
    )


def _intermediate(ovm, study: optuna.Study, unit: str):
    ax = ovm.plot_intermediate_values(study)
    ax.set_xlabel(unit)
    ax.set_ylabel("val_bpc (bits/char)")
    if len(study.trials) > MANY_CURVES and ax.get_legend() is not None:
        ax.get_legend().remove()
    return ax


def _optuna_png(draw: Callable) -> bytes:
    import matplotlib
    import matplotlib.pyplot as plt

    # Optuna's plots set the ggplot style globally; rc_context puts the caller's style back
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # PED-ANOVA's few-trials-per-regime lines, as in _importances
        fig = draw().figure
        fig.set_size_inches(8, 4.5)
        try:
            return _png(fig)
        finally:
            plt.close(fig)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _label(r: Validated) -> str:
    return f"#{r.source_trial} {r.heads}" + (" (baseline)" if r.role == BASELINE else "")


def _validated_figure(rows: list[Validated]):
    from matplotlib.figure import Figure  # no pyplot: nothing global to clean up

    fig = Figure(figsize=(8, max(2.5, 0.9 + 0.45 * len(rows))))
    ax = fig.subplots()
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ys = list(range(len(rows)))[::-1]  # best on top
    for y, r in zip(ys, rows):
        color = "tab:orange" if r.mixed else "tab:blue"
        finite = math.isfinite(r.interval.half_width)
        ax.errorbar(r.mean, y, xerr=r.interval.half_width if finite else None, fmt="o", color=color, capsize=4)
        ax.plot(r.values, [y] * len(r.values), "x", color=color, alpha=0.5)
    ax.set_yticks(ys, [_label(r) for r in rows])
    ax.set_xlabel(f"final val_bpc (bits/char): mean, {CONFIDENCE:.0%} interval, seeds (x)")
    ax.set_title("Validated configurations (orange: mixed head sizes, blue: uniform)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _curves_figure(rows: list[Validated], unit: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for r in rows:
        common = sorted(set.intersection(*(set(c) for c in r.curves.values()))) if r.curves else []
        means = [sum(c[s] for c in r.curves.values()) / len(r.curves) for s in common]
        ax.plot(
            common, means, marker=".", linestyle="-" if r.mixed else "--", label=f"{_label(r)} ({len(r.curves)} seeds)"
        )
    ax.set_xlabel(unit)
    ax.set_ylabel("val_bpc (bits/char), mean over seeds")
    ax.set_title("Validation curves (solid: mixed head sizes, dashed: uniform)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


__all__ = ["Chart", "draw_charts", "MANY_CURVES"]
