"""Choose the per-pair refinement settings on the validation pairs (never on the test cases).

For every setting of a small grid (steps, control grid, smoothness, similarity: LNCC against
the network's translation ``B_hat`` or MIND against the MRI), runs :class:`bsafusion.inference.fuser.Fuser`
on the ``val_aligned`` pairs misaligned with the fixed-seed Harvard test profile (the same pairs
and fields as training validation) and prints, per modality, the mean NCC of the aligned
moving image against the truth, the share of pairs improved over the network's own field, and
seconds per pair. The chosen defaults (``refine_steps`` in :mod:`bsafusion.modality`) come from this
table.

Usage (from the repository root)::

    python Testing/benchmarks/tune_refinement.py [--weights-dir DIR] [--max-cases 20] [--output table.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bsafusion.model import checkpoint
from bsafusion.training.data import validation_pairs
from bsafusion.inference.fuser import Fuser
from bsafusion.evaluation.metrics.registration import ncc
from bsafusion.inference.refine import RefineSettings
from bsafusion.training.train import TrainConfig

VAL_ROOT = Path(TrainConfig().val_root)  # the validation pairs of training
GRID = [
    RefineSettings(steps=0),
    RefineSettings(steps=100, grid=16, smoothness=1.0, use_translation=True),
    RefineSettings(steps=100, grid=16, smoothness=1.0, use_translation=False),
]


def evaluate(weights: Path, modality: str, settings: RefineSettings, pairs: list[dict]) -> tuple[list[float], float]:
    """NCC of every pair's aligned moving image against its truth, and seconds per pair."""
    fuser = Fuser(modality, weights, device="cpu", refine=settings)
    scores, started = [], time.perf_counter()
    for item in pairs:
        result = fuser.fuse(item["fixed"][0].numpy(), item["moving"][0].numpy())
        scores.append(ncc(result.aligned_luma, item["moving_aligned"][0].numpy()))
    return scores, (time.perf_counter() - started) / len(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, help="folder with bsafusion_<mod>.pt (default: the shipped ones)")
    parser.add_argument("--modality", action="append", help="CT, PET, SPECT (repeatable; default all)")
    parser.add_argument("--max-cases", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = ["| modality | steps | grid | smoothness | similarity | NCC | better than network | s/pair |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for modality in args.modality or ["CT", "PET", "SPECT"]:
        weights = (args.weights_dir / f"bsafusion_{modality.lower()}.pt") if args.weights_dir else checkpoint.default_weights_path(modality)
        data = validation_pairs(VAL_ROOT, modality)
        pairs = [data[i] for i in range(min(len(data), args.max_cases))]
        unregistered = np.mean([ncc(p["moving"][0].numpy(), p["moving_aligned"][0].numpy()) for p in pairs])
        lines.append(f"| {modality} | unregistered | | | | {unregistered:.4f} | | |")
        base: list[float] | None = None
        for settings in GRID:
            scores, seconds = evaluate(weights, modality, settings, pairs)
            base = scores if base is None else base
            better = np.mean([s > b for s, b in zip(scores, base)]) if settings.steps else float("nan")
            similarity = "" if not settings.steps else ("LNCC to B_hat" if settings.use_translation else "MIND to MRI")
            lines.append(f"| {modality} | {settings.steps} | {settings.grid} | {settings.smoothness} | {similarity} | "
                         f"{np.mean(scores):.4f} | {'' if np.isnan(better) else f'{better:.0%}'} | {seconds:.2f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
