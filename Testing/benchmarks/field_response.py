"""Does the network's field follow the misalignment? A check of a registration network's output.

NCC against the truth says how well the moving image ends up aligned, not how much of the
misalignment the network has found. This script, on the ``val_aligned`` pairs (misaligned once
with the fixed-seed Harvard test profile, as validation is), compares the predicted field
``field_ba`` with the drawn one, per modality:

* **length**: mean ``|field|`` in pixels of the drawn field, of the prediction, and of the
  prediction on the *aligned* pair (the truth given as the moving image, where the right answer
  is zero): a network that registers moves a misaligned pair much more than an aligned one;
* **gain**: the least-squares slope of the prediction on the drawn field,
  ``sum(p·d) / sum(d·d)`` over all pixels: the share of the misalignment recovered (1 is
  perfect, 0 is a field unrelated to it), and the **cosine** of the two fields;
* **endpoint error** of the prediction (the identity's is the drawn field's length);
* NCC against the truth after one pass and after a **second pass** on the warped moving image
  (fields composed), the recursive-cascade test: a network that has converged on a pair leaves
  it where it is.

Usage (repository root, ``../shared`` beside it)::

    python Testing/benchmarks/field_response.py [--weights FILE] [--max-cases 20]

``--weights`` is one weights file or training checkpoint for every modality (a training run's
``best.pt``); by default each modality's shipped file.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bsafusion.deform import compose, warp
from bsafusion.evaluation.metrics.registration import endpoint_error, ncc
from bsafusion.model import checkpoint
from bsafusion.model.network import BSFAF
from bsafusion.modality import MOVING
from bsafusion.training.data import validation_pairs
from bsafusion.training.train import TrainConfig

VAL_ROOT = Path(TrainConfig().val_root)


@dataclass(frozen=True)
class Agreement:
    """How a predicted field relates to the true one (both ``(N, 2, H, W)`` pixels)."""

    gain: float  # least-squares slope of the prediction on the truth
    cosine: float  # cosine of the two fields taken as vectors over every pixel


def agreement(predicted: torch.Tensor, truth: torch.Tensor) -> Agreement:
    """Slope and cosine of ``predicted`` against ``truth``, over all pixels and both components."""
    p, d = predicted.double().flatten(), truth.double().flatten()
    pd, pp, dd = float(p @ d), float(p @ p), float(d @ d)
    if dd == 0:
        raise ValueError("the true field is zero: gain and cosine are undefined")
    return Agreement(pd / dd, pd / (dd * pp) ** 0.5 if pp else 0.0)


def two_pass(model: BSFAF, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's field, and that field composed with a second pass on the warped moving image."""
    first = model.register(fixed, moving).field_ba
    second = model.register(fixed, warp(moving, first, padding="border")).field_ba
    return first, compose(first, second)


def length(field: torch.Tensor) -> float:
    """Mean displacement length in pixels."""
    return float(field.norm(dim=1).mean())


def aligned_ncc(moving: torch.Tensor, field: torch.Tensor, truth: np.ndarray) -> float:
    """NCC against the truth of ``moving`` warped by ``field`` (border padding, as validation warps)."""
    return ncc(warp(moving, field, padding="border")[0, 0].numpy(), truth)


COLUMNS = ("drawn px", "predicted px", "on aligned pair px", "gain", "cosine", "EPE px",
           "NCC unregistered", "NCC one pass", "NCC two passes")


def measure(weights: Path | None, max_cases: int, modalities: list[str]) -> dict[str, dict[str, float]]:
    """Per modality, the mean of every column of :data:`COLUMNS` over the first ``max_cases`` pairs."""
    results = {}
    for modality in modalities:
        path = weights or checkpoint.default_weights_path(modality)
        model = checkpoint.load_model(path, modality, torch.device("cpu")).eval()
        pairs = validation_pairs(VAL_ROOT, modality)
        rows = []
        for i in range(min(len(pairs), max_cases)):
            item = pairs[i]
            fixed, moving, aligned, drawn = item["fixed"][None], item["moving"][None], item["moving_aligned"][None], item["field"][None]
            truth = aligned[0, 0].numpy()
            with torch.inference_mode():
                first, both = two_pass(model, fixed, moving)
                on_aligned = model.register(fixed, aligned).field_ba
            fit = agreement(first, drawn)
            rows.append((length(drawn), length(first), length(on_aligned), fit.gain, fit.cosine,
                         endpoint_error(first[0].numpy(), drawn[0].numpy()),
                         ncc(moving[0, 0].numpy(), truth), aligned_ncc(moving, first, truth), aligned_ncc(moving, both, truth)))
        results[modality] = dict(zip(COLUMNS, np.mean(rows, axis=0).tolist()))
    return results


def markdown(results: dict[str, dict[str, float]], max_cases: int) -> str:
    lines = [f"| first {max_cases} `val_aligned` pairs | " + " | ".join(results) + " |",
             "|---|" + "---:|" * len(results)]
    for column in COLUMNS:
        lines.append(f"| {column} | " + " | ".join(f"{results[m][column]:.4f}" if "NCC" in column or column in ("gain", "cosine")
                                                else f"{results[m][column]:.2f}" for m in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="weights or checkpoint file (default: shipped)")
    parser.add_argument("--max-cases", type=int, default=20, help="pairs per modality (default 20)")
    parser.add_argument("--modalities", nargs="+", default=list(MOVING), choices=list(MOVING))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not VAL_ROOT.is_dir():
        raise SystemExit(f"{VAL_ROOT}: validation pairs not found (../shared/data/harvard beside the repository)")
    torch.set_num_threads(args.threads)
    print(markdown(measure(args.weights, args.max_cases, args.modalities), args.max_cases))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
