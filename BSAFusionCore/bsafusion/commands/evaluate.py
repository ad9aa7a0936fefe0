"""Score a folder of registration + fusion outputs on unaligned cases with the aligned truth.

--cases holds the unaligned cases (<MOD>/MRI, <MOD>/<MOD>, optional <MOD>/<MOD>_label), --outputs
a method's results (<MOD>/Fusion_GRAY or <MOD>/Fusion, optional <MOD>/<MOD>_align), with the same
file names. Prints a table per modality (mean ± std of the fusion and registration metrics,
best in bold) and writes per_case.csv, summary.csv, report.md and box plots into --out. Unless
--no-baseline, the "no registration" line (fuse-by-average of the unaligned pair) is added for
context. Fusion metrics use the MRI and the aligned truth as sources (see bsafusion.evaluation.evaluate).
"""

from __future__ import annotations

import argparse
import shlex

from bsafusion.modality import MOVING

NAME = "evaluate"
HELP = "score a folder of fused/aligned outputs against the aligned truth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", required=True, help="folder of unaligned cases (e.g. harvard/test_unaligned)")
    parser.add_argument("--outputs", required=True, help="folder of a method's outputs (e.g. harvard/official_results)")
    parser.add_argument("--name", default="method", help="method name in tables (default: method)")
    parser.add_argument("--out", default="eval_out",
                        help="output folder (default: eval_out; checked before anything is computed)")
    parser.add_argument("--modality", nargs="+", type=str.upper, choices=MOVING,
                        help="modalities to evaluate (default: every one found in --cases)")
    parser.add_argument("--no-baseline", action="store_true", help="leave out the no-registration line")
    parser.add_argument("--no-plots", action="store_true", help="do not write box plots")
    parser.add_argument("--limit", type=int, help="evaluate only the first N cases of each modality")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this evaluation (quoted in the report)."""
    words = ["bsafusion", NAME, "--cases", args.cases, "--outputs", args.outputs, "--name", args.name, "--out", args.out]
    if args.modality:
        words += ["--modality", *args.modality]
    if args.limit is not None:
        words += ["--limit", str(args.limit)]
    words += ["--no-baseline"] * args.no_baseline + ["--no-plots"] * args.no_plots
    return " ".join(shlex.quote(str(word)) for word in words)


def run(args: argparse.Namespace) -> int:
    from bsafusion.errors import InputError
    from bsafusion.evaluation.evaluate import evaluate_folder, summarize
    from bsafusion.io import check_output_dir
    from bsafusion.evaluation.report import markdown_tables, write_report

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    check_output_dir(args.out)
    rows = evaluate_folder(
        args.cases,
        args.outputs,
        args.name,
        modalities=args.modality,
        baseline=not args.no_baseline,
        limit=args.limit,
        progress=not args.no_progress,
    )
    files = write_report(rows, args.out, title=f"Evaluation of {args.name}", command=_command(args), plots=not args.no_plots)
    print(markdown_tables(summarize(rows)))
    print(f"per-case metrics: {files['per_case']}\nreport: {files['report']}")
    return 0
