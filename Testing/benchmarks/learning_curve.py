"""Learning curves of training runs: validation quality against steps, samples and CPU-minutes.

Reads the ``val_log.csv`` that :class:`bsafusion.training.train.Trainer` writes after every epoch (on
``val_aligned`` misaligned with the fixed-seed test profile) and prints, per run and modality,
NCC of the aligned moving image against the truth, the unregistered NCC, the endpoint error of
the field against the drawn one (and of the identity), the share of pairs brought closer,
Q_AB/F and, for networks with a translator, NCC of ``B_hat`` against the truth, row by row. ``--plot`` also draws NCC gain and endpoint error against CPU-minutes, one
line per run and modality, so runs of different designs and budgets compare on one axis: the
question "is it data, compute or design?" is read off these curves.

Usage (from the repository root)::

    python Testing/benchmarks/learning_curve.py runs/joint [runs/other ...] [--chain] [--plot curves.png] [--output table.md]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

MODALITIES = ("CT", "PET", "SPECT")
COLUMNS = ("ncc", "ncc_unregistered", "epe", "epe_unregistered", "better", "qabf")


def read_curve(run: Path) -> list[dict[str, float]]:
    """Rows of ``run/val_log.csv`` as floats (empty if the run has not validated yet)."""
    path = run / "val_log.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no validation log (has the run finished an epoch?)")
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def markdown_table(run: Path, rows: list[dict[str, float]]) -> str:
    """One row per validation: step, samples, CPU-minutes and per modality NCC / EPE / better."""
    mods = [m for m in MODALITIES if f"{m}_ncc" in rows[0]] if rows else []
    translated = bool(rows) and f"{mods[0]}_translation_ncc" in rows[0]
    per_mod = ("NCC (unreg)", "EPE px (unreg)", "better", "Q_AB/F") + (("B_hat NCC",) if translated else ())
    head = ["step", "samples", "CPU-min"] + [f"{m} {c}" for m in mods for c in per_mod]
    lines = [f"### {run}", "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        cells = [f"{r['step']:.0f}", f"{r['samples']:.0f}", f"{r['cpu_minutes']:.1f}"]
        for m in mods:
            cells += [f"{r[f'{m}_ncc']:.4f} ({r[f'{m}_ncc_unregistered']:.4f})",
                      f"{r[f'{m}_epe']:.2f} ({r[f'{m}_epe_unregistered']:.2f})",
                      f"{r[f'{m}_better']:.0%}", f"{r[f'{m}_qabf']:.3f}"]
            if translated:
                cells.append(f"{r[f'{m}_translation_ncc']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(curves: dict[Path, list[dict[str, float]]], path: Path) -> None:
    """NCC gain over the unregistered pair and endpoint error, against CPU-minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ncc, ax_epe) = plt.subplots(1, 2, figsize=(11, 4))
    for run, rows in curves.items():
        for m in MODALITIES:
            if not rows or f"{m}_ncc" not in rows[0]:
                continue
            x = [r["cpu_minutes"] for r in rows]
            ax_ncc.plot(x, [r[f"{m}_ncc"] - r[f"{m}_ncc_unregistered"] for r in rows], marker="o", label=f"{run.name} {m}")
            ax_epe.plot(x, [r[f"{m}_epe"] for r in rows], marker="o", label=f"{run.name} {m}")
    ax_ncc.axhline(0, color="grey", lw=0.8)
    ax_ncc.set(xlabel="CPU-minutes", ylabel="NCC gain over no registration", title="validation (val_aligned)")
    ax_epe.set(xlabel="CPU-minutes", ylabel="endpoint error (px)", title="field vs drawn truth")
    ax_ncc.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with val_log.csv)")
    parser.add_argument("--plot", type=Path, help="write the curves as a PNG")
    parser.add_argument("--output", type=Path, help="also write the tables to this Markdown file")
    parser.add_argument("--chain", action="store_true",
                        help="the runs are stages of one training (each started from the previous one's weights): "
                             "count each run's CPU-minutes on from the previous run's last")
    args = parser.parse_args(argv)
    curves = {run: read_curve(run) for run in args.runs}
    if args.chain:
        spent = 0.0
        for rows in curves.values():
            for r in rows:
                r["cpu_minutes"] += spent
            spent = rows[-1]["cpu_minutes"] if rows else spent
    text = "\n\n".join(markdown_table(run, rows) for run, rows in curves.items())
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    if args.plot:
        plot(curves, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
