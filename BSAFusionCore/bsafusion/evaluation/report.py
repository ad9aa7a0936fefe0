"""Reports of per-case metric rows: Markdown tables (mean ± std, best in bold) and box plots.

Input is the list of per-case rows of :mod:`bsafusion.evaluation.evaluate` (or read back from its CSV
with :func:`bsafusion.evaluation.evaluate.read_csv`), so any evaluation (published outputs, baselines,
our network, ablations) is reported the same way. :func:`write_report` writes a folder::

    per_case.csv          every row (bsafusion.evaluation.evaluate.ROW_KEYS)
    summary.csv           mean, std and count of every metric per modality and method
    report.md             per-modality tables, box plots, failures
    boxplot_<metric>.png  one figure per metric: one panel per modality, methods side by side

Tables show ``mean ± std`` over the cases of a modality (sample standard deviation, failed
cases and missing values left out, see :func:`bsafusion.evaluation.evaluate.summarize`); the best mean of
each metric column is in bold, the direction taken from
:data:`bsafusion.evaluation.metrics.HIGHER_IS_BETTER` (Q_CV, MAE, endpoint error and folding are
lower-is-better). Columns without any value (e.g. registration metrics for outputs without
an aligned image) are left out. Every file is written atomically.

The figures use matplotlib's object-oriented API with the Agg canvas (no screen, no pyplot
state), like the box plots of the BSAFusion paper: one box per method, whiskers at 1.5 IQR.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from bsafusion.evaluation.evaluate import METRIC_NAMES, ROW_KEYS, Row, summarize, write_csv
from bsafusion.io import atomic_output
from bsafusion.evaluation.metrics import HIGHER_IS_BETTER

__all__ = [
    "METRIC_LABELS",
    "format_value",
    "best_methods",
    "markdown_tables",
    "boxplot",
    "boxplots",
    "write_report",
]

METRIC_LABELS: dict[str, str] = {
    "q_abf": "Q_AB/F",
    "q_cv": "Q_CV",
    "q_vif": "Q_VIF",
    "q_s": "Q_S",
    "q_ssim": "Q_SSIM",
    "ncc": "NCC",
    "ssim": "SSIM",
    "mae": "MAE",
    "mutual_information": "MI",
    "endpoint_error": "EPE (px)",
    "folding_fraction": "Folding",
}
"""Display name of each metric column."""

_REFERENCE_TEXT = {
    "label": "the aligned truth (`{modality}_label`)",
    "aligned": "each method's own aligned image (no aligned truth)",
    "moving": "the unaligned moving image (no aligned truth, no aligned output)",
}


def _header(metric: str) -> str:
    return f"{METRIC_LABELS.get(metric, metric)} {'↑' if HIGHER_IS_BETTER[metric] else '↓'}"


def format_value(mean: float, std: float = math.nan) -> str:
    """``"mean ± std"``: 4 decimals, 1 for values of 100 or more (Q_CV); ``"–"`` if no value."""
    if math.isnan(mean):
        return "–"
    decimals = 1 if abs(mean) >= 100 else 4
    text = f"{mean:.{decimals}f}"
    return text if math.isnan(std) else f"{text} ± {std:.{decimals}f}"


def best_methods(entries: Sequence[Row], metric: str) -> set[str]:
    """Methods whose mean of ``metric`` is the best among ``entries`` (ties all count).

    ``entries`` are summary entries of one modality (:func:`bsafusion.evaluation.evaluate.summarize`);
    best is the maximum or the minimum following :data:`HIGHER_IS_BETTER`.
    """
    means = {e["method"]: e[f"{metric}_mean"] for e in entries if not math.isnan(e[f"{metric}_mean"])}
    if not means:
        return set()
    best = (max if HIGHER_IS_BETTER[metric] else min)(means.values())
    return {method for method, value in means.items() if value == best}


def _by_modality(summary: Iterable[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = {}
    for entry in summary:
        groups.setdefault(entry["modality"], []).append(entry)
    return groups


def _present(entries: Sequence[Row], metrics: Sequence[str]) -> list[str]:
    return [m for m in metrics if any(e[f"{m}_n"] > 0 for e in entries)]


def _table(entries: Sequence[Row], metrics: Sequence[str], show_time: bool) -> list[str]:
    columns = _present(entries, metrics)
    best = {m: best_methods(entries, m) for m in columns}
    header = ["Method", "Cases", *(_header(m) for m in columns)] + (["s/case"] if show_time else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for e in entries:
        ok = e["cases"] - e["failed"]
        cells = [str(e["method"]), f"{ok}" + (f" (+{e['failed']} failed)" if e["failed"] else "")]
        for m in columns:
            text = format_value(e[f"{m}_mean"], e[f"{m}_std"])
            cells.append(f"**{text}**" if e["method"] in best[m] else text)
        if show_time:
            cells.append(format_value(e["seconds_mean"], e["seconds_std"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_tables(
    summary: Sequence[Row],
    metrics: Sequence[str] = METRIC_NAMES,
    heading_level: int = 3,
    show_time: bool = False,
    references: dict[str, set[str]] | None = None,
) -> str:
    """One Markdown table per modality: a row per method, ``mean ± std`` per metric, best in bold.

    Parameters
    ----------
    summary:
        Output of :func:`bsafusion.evaluation.evaluate.summarize`.
    metrics:
        Metric columns in display order; those without any value in a modality are dropped.
    heading_level:
        Markdown heading level of the per-modality titles.
    show_time:
        Add the method's mean run time per case (seconds), never in bold.
    references:
        Per modality, the ``fusion_reference`` values of its rows, stated under the title.
    """
    parts = []
    for modality, entries in _by_modality(summary).items():
        cases = max(e["cases"] for e in entries)
        parts.append(f"{'#' * heading_level} {modality} ({cases} cases)")
        if references and references.get(modality):
            text = "; ".join(_REFERENCE_TEXT.get(r, r).format(modality=modality) for r in sorted(references[modality]))
            parts.append(f"\nFusion metrics of the fused luma against the MRI and {text}.")
        parts.append("\n" + "\n".join(_table(entries, metrics, show_time)) + "\n")
    return "\n".join(parts)


def _values(rows: Sequence[Row], modality: str, method: str, metric: str) -> list[float]:
    return [
        float(r[metric]) for r in rows
        if r["modality"] == modality and r["method"] == method and r["status"] == "ok" and not math.isnan(float(r[metric]))
    ]  # fmt: skip


def _ordered(rows: Sequence[Row], key: str) -> list[str]:
    return list(dict.fromkeys(str(r[key]) for r in rows))


def boxplot(rows: Sequence[Row], metric: str, path: str | os.PathLike) -> Path:
    """Write one PNG: a panel per modality with values of ``metric``, one box per method.

    Methods keep their order of appearance in ``rows`` (and their position in every panel);
    a method without values in a panel leaves its slot empty.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = _ordered(rows, "method")
    modalities = [m for m in _ordered(rows, "modality") if any(_values(rows, m, x, metric) for x in methods)]
    if not modalities:
        raise ValueError(f"no values of {metric!r} to plot")
    width = max(3.0, 0.9 * len(methods) + 1.2)
    figure = Figure(figsize=(width * len(modalities), 4.2))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(modalities), squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(methods))]
    for ax, modality in zip(axes, modalities):
        data = [_values(rows, modality, method, metric) for method in methods]
        slots = [i + 1 for i, values in enumerate(data) if values]
        boxes = ax.boxplot([data[i - 1] for i in slots], positions=slots, widths=0.6, patch_artist=True,
                           medianprops={"color": "black"})
        for patch, slot in zip(boxes["boxes"], slots):
            patch.set_facecolor(colours[slot - 1])
            patch.set_alpha(0.55)
        ax.set_xticks(range(1, len(methods) + 1))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(0.4, len(methods) + 0.6)
        ax.set_title(modality)
        ax.grid(axis="y", alpha=0.3)
    direction = "higher is better" if HIGHER_IS_BETTER[metric] else "lower is better"
    axes[0].set_ylabel(METRIC_LABELS.get(metric, metric))
    figure.suptitle(f"{METRIC_LABELS.get(metric, metric)} ({direction})")
    figure.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    return path


def boxplots(rows: Sequence[Row], out_dir: str | os.PathLike, metrics: Sequence[str] = METRIC_NAMES) -> dict[str, Path]:
    """``boxplot_<metric>.png`` in ``out_dir`` for every metric with values; metric -> path."""
    out_dir = Path(out_dir)
    methods, modalities = _ordered(rows, "method"), _ordered(rows, "modality")
    present = [m for m in metrics if any(_values(rows, d, x, m) for d in modalities for x in methods)]
    return {metric: boxplot(rows, metric, out_dir / f"boxplot_{metric}.png") for metric in present}


def _failures(rows: Sequence[Row]) -> list[str]:
    failed = [r for r in rows if r["status"] != "ok"]
    if not failed:
        return []
    lines = ["## Failed cases", "", "| Modality | Case | Method | Error |", "|---|---|---|---|"]
    for r in failed:
        error = str(r["error"]).replace("|", "\\|")
        lines.append(f"| {r['modality']} | {r['case']} | {r['method']} | {error} |")
    return lines + [""]


def write_report(
    rows: Sequence[Row],
    out_dir: str | os.PathLike,
    title: str = "BSAFusion evaluation",
    command: str | None = None,
    plots: bool = True,
    show_time: bool = False,
    notes: str | None = None,
) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.csv``, ``report.md`` and the box plots into ``out_dir``.

    Parameters
    ----------
    rows:
        Per-case rows (:data:`bsafusion.evaluation.evaluate.ROW_KEYS`).
    out_dir:
        Output folder (created).
    title, command, notes:
        Report title; the command that produced the rows (quoted in the report); free text
        added under the title.
    plots:
        Write the box plots (``boxplot_<metric>.png``) and show them in the report.
    show_time:
        Add each method's mean run time per case to the tables.

    Returns
    -------
    dict
        ``"per_case"``, ``"summary"``, ``"report"`` and ``"boxplot_<metric>"`` -> path.
    """
    if not rows:
        raise ValueError("no rows to report")
    out_dir = Path(out_dir)
    summary = summarize(rows)
    files = {
        "per_case": write_csv(rows, out_dir / "per_case.csv", columns=ROW_KEYS),
        "summary": write_csv(summary, out_dir / "summary.csv"),
    }
    figures = boxplots(rows, out_dir) if plots else {}
    files.update({f"boxplot_{metric}": path for metric, path in figures.items()})

    references: dict[str, set[str]] = {}
    for r in rows:
        if r["status"] == "ok":
            references.setdefault(r["modality"], set()).add(r["fusion_reference"])
    lines = [f"# {title}", ""]
    if command:
        lines += ["Produced by:", "", "```", command, "```", ""]
    if notes:
        lines += [notes, ""]
    lines += [
        "Mean ± sample standard deviation over cases; best mean per column in **bold** "
        "(↑ higher is better, ↓ lower is better). Fusion metrics (Q_AB/F, Q_CV, Q_VIF, Q_S, Q_SSIM) "
        "are computed on luma in [0, 1] (Q_CV in 8-bit grey levels squared); registration metrics "
        "(NCC, SSIM, MAE, MI) compare each method's aligned moving image with the aligned truth.",
        "",
        markdown_tables(summary, heading_level=2, show_time=show_time, references=references),
    ]
    if figures:
        lines += ["## Box plots", ""]
        lines += [f"![{METRIC_LABELS.get(m, m)}]({p.name})" for m, p in figures.items()] + [""]
    lines += _failures(rows)
    lines += [
        "## Files", "",
        "- `per_case.csv`: every metric of every case and method",
        "- `summary.csv`: mean, std and count per modality and method", "",
    ]  # fmt: skip
    files["report"] = out_dir / "report.md"
    with atomic_output(files["report"]) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return files
