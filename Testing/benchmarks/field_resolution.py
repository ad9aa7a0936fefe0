"""How coarse a grid the misalignment field needs: the true fields fitted on a coarser grid.

The registration layers predict their field on the alignment pyramid, coarse to fine from the
token grid (32², 64², 128² for a 256² image with patch 8), and the field is then upsampled to the
image. A level is only worth its time if the fields to recover need its resolution. This script
takes the drawn field of every ``val_aligned`` pair (misaligned with the fixed-seed Harvard test
profile, as validation and the test cases are), represents it on an ``s × s`` grid (anti-aliased
samples at the positions of the network's coarse field values, then
:func:`bsafusion.deform.resize_field` back to the image as the network does) and reports, per
grid size and modality, the mean NCC of the moving image warped by the fitted field against the
aligned truth and the endpoint error of the fit. ``full`` is the drawn field itself: what a perfect field reaches with this warp.

Usage (repository root, ``../shared`` beside it)::

    python Testing/benchmarks/field_resolution.py [--sizes 16 32 64 128] [--max-cases 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bsafusion.deform import resize_field, resize_image, warp
from bsafusion.evaluation.metrics.registration import endpoint_error, ncc
from bsafusion.modality import MOVING
from bsafusion.training.data import validation_pairs
from bsafusion.training.train import TrainConfig

VAL_ROOT = Path(TrainConfig().val_root)


def fit_on_grid(field: torch.Tensor, size: int) -> torch.Tensor:
    """``field`` ``(N, 2, H, W)`` in pixels, sampled onto ``size × size`` and resampled back.

    The coarse samples sit where the network's coarse field values sit (the align-corners grid
    of :func:`~bsafusion.deform.resize_field`), after the anti-aliasing prefilter of
    :func:`~bsafusion.deform.resize_image`.
    """
    full = field.shape[2:]
    coarse = resize_image(field, (size, size))
    # the samples are still in image pixels; resize_field expects them in the coarse grid's
    # pixels, as the network's fields are
    scale = torch.tensor([(size - 1) / (full[1] - 1), (size - 1) / (full[0] - 1)]).view(1, 2, 1, 1)
    return resize_field(coarse * scale, full)


def measure(sizes: list[int], max_cases: int, modalities: list[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per modality: grid label -> (mean NCC against the truth, mean endpoint error in pixels)."""
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for modality in modalities:
        pairs = validation_pairs(VAL_ROOT, modality)
        rows: dict[str, list[tuple[float, float]]] = {}
        for i in range(min(len(pairs), max_cases)):
            item = pairs[i]
            moving, truth = item["moving"][None], item["moving_aligned"][0].numpy()
            drawn = item["field"][None]
            fits = {"identity": torch.zeros_like(drawn), "full": drawn}
            fits.update({f"{s}²": fit_on_grid(drawn, s) for s in sizes})
            for label, fitted in fits.items():
                aligned = warp(moving, fitted, padding="border")[0, 0].numpy()
                rows.setdefault(label, []).append((ncc(aligned, truth), endpoint_error(fitted[0].numpy(), drawn[0].numpy())))
        results[modality] = {label: tuple(np.mean(values, axis=0)) for label, values in rows.items()}
    return results


def markdown(results: dict[str, dict[str, tuple[float, float]]], max_cases: int) -> str:
    modalities = list(results)
    labels = list(next(iter(results.values())))
    lines = [f"| field grid (first {max_cases} `val_aligned` pairs) | " + " | ".join(f"{m} NCC | {m} EPE px" for m in modalities) + " |",
             "|---|" + "---:|---:|" * len(modalities)]
    for label in labels:
        cells = " | ".join(f"{results[m][label][0]:.4f} | {results[m][label][1]:.2f}" for m in modalities)
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128], help="coarse grid sizes")
    parser.add_argument("--max-cases", type=int, default=20, help="pairs per modality (default 20)")
    parser.add_argument("--modalities", nargs="+", default=list(MOVING), choices=list(MOVING))
    args = parser.parse_args(argv)
    if not VAL_ROOT.is_dir():
        raise SystemExit(f"{VAL_ROOT}: validation pairs not found (../shared/data/harvard beside the repository)")
    torch.set_num_threads(1)
    print(markdown(measure(args.sizes, args.max_cases, args.modalities), args.max_cases))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
