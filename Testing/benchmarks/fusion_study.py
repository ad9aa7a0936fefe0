"""Where the fusion metrics are won and lost, on the validation pairs (never the test cases).

For every ``val_aligned`` pair (misaligned once by :func:`bsafusion.training.data.validation_pairs`)
the script scores four versions of one model's fused luma against the MRI and the aligned truth:

* ``network``: the network's output as computed (float), background untouched;
* ``network, 8-bit``: the same rounded to 8 bits, what a PNG file of it holds;
* ``product``: what ``bsafusion fuse`` writes, the background kept black where both images are
  background (:mod:`bsafusion.inference.background`), 8 bits;
* ``copy MRI``: the MRI itself, the fusion that adds nothing (a reference, not a method);

and reports per modality the mean of each of the paper's five metrics, the share of 8x8 windows
that are flat in both sources (the windows Q_S scores as perfect only when the fused image is
exactly flat there too), and the number of grey levels the network leaves in that background.
``--scatter FILE`` draws Q_S and Q_VIF per case, network against product, one point per pair.

Usage (repository root, ``../shared`` beside it)::

    python Testing/benchmarks/fusion_study.py [--weights FILE] [--modalities PET ...] [--max-cases 20]
        [--scatter fusion_study.png]

``--weights`` with a file trained for one modality needs ``--modalities`` naming it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bsafusion.evaluation.metrics import FUSION_METRICS
from bsafusion.inference.background import background_mask
from bsafusion.inference.fuser import Fuser
from bsafusion.io import as_eight_bit
from bsafusion.modality import MOVING
from bsafusion.training.data import validation_pairs

VAL_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "harvard" / "val_aligned"
VERSIONS = ("network", "network, 8-bit", "product", "copy MRI")


def _flat_windows(fixed: np.ndarray, truth: np.ndarray, window: int = 8) -> float:
    """Share of ``window``-sized windows (step 1) that are flat in both sources."""
    from numpy.lib.stride_tricks import sliding_window_view

    def flat(x: np.ndarray) -> np.ndarray:
        return np.ptp(sliding_window_view(x, (window, window)), axis=(-2, -1)) == 0

    return float((flat(fixed) & flat(truth)).mean())


def study(weights: str | None, max_cases: int, modalities: list[str]
          ) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[float]]]:
    """Per modality: version -> metric -> per-case values; and the background statistics."""
    scores: dict[str, dict[str, list[float]]] = {}
    background: dict[str, list[float]] = {}
    for modality in modalities:
        pairs = validation_pairs(VAL_ROOT, modality)
        raw = Fuser(modality, weights, device="cpu", keep_background=False)
        product = Fuser(modality, weights, device="cpu")
        for index in range(min(max_cases, len(pairs))):
            item = pairs[index]
            fixed, moving, truth = (item[k][0].numpy() for k in ("fixed", "moving", "moving_aligned"))
            network = raw.fuse(fixed, moving).fused_luma
            versions = {"network": network, "network, 8-bit": as_eight_bit(network),
                        "product": as_eight_bit(product.fuse(fixed, moving).fused_luma), "copy MRI": fixed}
            for version, fused in versions.items():
                for name, metric in FUSION_METRICS.items():
                    scores.setdefault(f"{modality}|{version}", {}).setdefault(name, []).append(
                        float(metric(fused.astype(np.float32), fixed, truth)))
            floor = background_mask(*(torch.from_numpy(x)[None, None] for x in (fixed, truth)))[0, 0].numpy()
            levels = np.unique(np.round(np.clip(network[floor], 0, 1) * 255)).size if floor.any() else 0
            background.setdefault(f"{modality}|flat", []).append(_flat_windows(fixed, truth))
            background.setdefault(f"{modality}|levels", []).append(float(levels))
    return scores, background


def _modalities(keyed: dict[str, object]) -> list[str]:
    """The modalities of ``"modality|version"`` keys, in the order they were scored."""
    return list(dict.fromkeys(key.split("|")[0] for key in keyed))


def table(scores: dict[str, dict[str, list[float]]], background: dict[str, list[float]]) -> str:
    names = list(FUSION_METRICS)
    lines = ["| modality | version | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for modality in _modalities(scores):
        for version in VERSIONS:
            values = scores[f"{modality}|{version}"]
            lines.append(f"| {modality} | {version} | " + " | ".join(f"{np.mean(values[n]):.3f}" for n in names) + " |")
    lines += ["", "| modality | pairs | windows flat in both sources | grey levels the network leaves there (mean) |",
              "|---|---:|---:|---:|"]
    for modality in _modalities(background):
        flat = background[f"{modality}|flat"]
        lines.append(f"| {modality} | {len(flat)} | {100 * np.mean(flat):.1f} % | {np.mean(background[f'{modality}|levels']):.1f} |")
    return "\n".join(lines)


def scatter(scores: dict[str, dict[str, list[float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, metric in zip(axes, ("q_s", "q_vif")):
        for modality in _modalities(scores):
            ax.scatter(scores[f"{modality}|network"][metric], scores[f"{modality}|product"][metric], s=12, label=modality)
        low, high = ax.get_xlim()
        ax.plot([low, high], [low, high], "k--", lw=0.8)
        ax.set_xlabel(f"{metric}, network output")
        ax.set_ylabel(f"{metric}, product (background kept, 8-bit)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="model file (default: the shipped weights)")
    parser.add_argument("--modalities", nargs="+", choices=MOVING, default=list(MOVING),
                        help="moving modalities to score (default: all)")
    parser.add_argument("--max-cases", type=int, default=20, help="validation pairs per modality (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--scatter", help="write the per-case Q_S / Q_VIF scatter plot here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scores, background = study(args.weights, args.max_cases, args.modalities)
    print(table(scores, background))
    if args.scatter:
        scatter(scores, args.scatter)


if __name__ == "__main__":
    main()
