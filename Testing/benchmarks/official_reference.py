"""Reference table: the published BSAFusion outputs on the Harvard unaligned test cases.

Scores ``harvard/official_results`` (the authors' fused and aligned images) against
``harvard/test_unaligned`` with :func:`bsafusion.evaluation.evaluate.evaluate_folder`, together with the
"no registration" line (fuse-by-average of the unaligned pair), and prints the per-modality
tables (mean ± std, best in bold) and the run time. This table is the reference our network
must beat; it is copied into ``Testing/benchmarks/README.md``.

Usage (from the repository root)::

    python Testing/benchmarks/official_reference.py [--shared ../shared/data] [--out DIR]

``--out`` also writes the full report (per-case CSV, summary, report.md, box plots).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bsafusion.errors import InputError
from bsafusion.evaluation.evaluate import evaluate_folder, summarize
from bsafusion.evaluation.report import markdown_tables, write_report

REPO_ROOT = Path(__file__).resolve().parents[2]
METHOD_NAME = "BSAFusion (published outputs)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(REPO_ROOT.parent / "shared" / "data"),
                        help="shared data folder holding harvard/ (default: ../shared/data)")
    parser.add_argument("--out", help="also write the full report into this folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    harvard = Path(args.shared) / "harvard"
    start = time.perf_counter()
    try:
        rows = evaluate_folder(harvard / "test_unaligned", harvard / "official_results", METHOD_NAME,
                               progress=not args.no_progress)
    except InputError as exc:
        print(f"official_reference: error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(markdown_tables(summarize(rows), heading_level=4))
    cases = len({(r["modality"], r["case"]) for r in rows})
    print(f"{cases} cases, 2 methods: {seconds:.1f} s")
    if args.out:
        files = write_report(rows, args.out, title="Reference: published BSAFusion outputs",
                             command=" ".join(["python Testing/benchmarks/official_reference.py", *argv]))
        print(f"report: {files['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
