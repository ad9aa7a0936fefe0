"""Benchmark BSAFusion against two-stage baselines on a folder of unaligned cases.

Runs, on every case of --cases (<MOD>/MRI, <MOD>/<MOD>, optional <MOD>/<MOD>_label), the selected
methods: BSAFusion (ours: the shipped weights or --weights-dir), --ablation models, the published
outputs (--published), classical SimpleITK MI affine + B-spline registration followed by the
average / max-abs / Laplacian fusion rules, the same rules without registration, and with the
aligned truth (oracle, upper bound; needs labels). Writes into --out: per_case.csv, summary.csv,
report.md (mean ± std per modality, best in bold, time per pair, this command), box plots, and
panel_<MOD>.png / checkerboard_<MOD>.png for one case per modality. A method failing on a case is
reported as failed for that case; the others go on. Deterministic given --seed (except times).
"""

from __future__ import annotations

import argparse
import shlex

from bsafusion.modality import MOVING

NAME = "benchmark"
HELP = "compare BSAFusion with two-stage baselines on unaligned cases (tables, plots, panels)"

_METHOD_HELP = "ours, ablations, published, classical, noreg, oracle"


def _ablation(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=FILE_OR_RUN_FOLDER, got {text!r}")
    return name.strip(), path.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", required=True, help="folder of unaligned cases (e.g. harvard/test_unaligned)")
    parser.add_argument("--out", default="benchmark_out",
                        help="results folder (default: benchmark_out; checked before anything is computed)")
    parser.add_argument("--methods", help=f"comma-separated subset of: {_METHOD_HELP} (default: all available)")
    parser.add_argument("--modality", nargs="+", type=str.upper, choices=MOVING,
                        help="modalities to run (default: every one found in --cases)")
    parser.add_argument("--weights-dir", help="folder of bsafusion_<mod>.pt for 'ours' (default: shipped weights)")
    parser.add_argument("--ablation", action="append", type=_ablation, default=[], metavar="NAME=PATH",
                        help="an ablation model: weights file or training run folder (best.pt); repeatable")
    parser.add_argument("--published", help="folder of published outputs (<MOD>/Fusion_GRAY or Fusion, <MOD>_align)")
    parser.add_argument("--limit", type=int, help="only the first N cases of each modality")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of torch and of the classical registration's sampling (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda for the networks (default auto)")
    parser.add_argument("--panel-case", help="case shown first in the panels (default: first case of each modality)")
    parser.add_argument("--panel-count", type=int, default=3, metavar="N",
                        help="cases of each modality shown in the panels (default 3)")
    parser.add_argument("--refine-steps", type=int, metavar="N",
                        help="per-pair field refinement steps for ours/ablations (default: per modality; 0 = off)")
    parser.add_argument("--no-plots", action="store_true", help="do not write box plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (quoted in the report)."""
    words = ["bsafusion", NAME, "--cases", args.cases, "--out", args.out]
    options = [("--methods", args.methods), ("--weights-dir", args.weights_dir), ("--published", args.published),
               ("--limit", args.limit), ("--seed", args.seed), ("--device", args.device),
               ("--panel-case", args.panel_case), ("--panel-count", args.panel_count),
               ("--refine-steps", args.refine_steps)]
    for flag, value in options:
        if value is not None:
            words += [flag, str(value)]
    if args.modality:
        words += ["--modality", *args.modality]
    for name, path in args.ablation:
        words += ["--ablation", f"{name}={path}"]
    words += ["--no-plots"] * args.no_plots
    return " ".join(shlex.quote(str(word)) for word in words)


def run(args: argparse.Namespace) -> int:
    import time

    from bsafusion.evaluation.benchmark import run_benchmark
    from bsafusion.errors import InputError
    from bsafusion.evaluation.evaluate import read_csv, summarize
    from bsafusion.evaluation.report import markdown_tables

    ablations = dict(args.ablation)
    if len(ablations) != len(args.ablation):
        raise InputError("--ablation: the same NAME is given twice")
    start = time.perf_counter()
    report = run_benchmark(
        args.cases,
        args.out,
        methods=args.methods,
        modalities=args.modality,
        weights_dir=args.weights_dir,
        ablations=ablations,
        published=args.published,
        limit=args.limit,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        panel_case=args.panel_case,
        panel_count=args.panel_count,
        plots=not args.no_plots,
        command=_command(args),
        refine_steps=args.refine_steps,
    )
    print(markdown_tables(summarize(read_csv(report.parent / "per_case.csv")), show_time=True))
    print(f"report: {report}\nper-case metrics: {report.parent / 'per_case.csv'}")
    print(f"finished in {time.perf_counter() - start:.1f} s")
    return 0
