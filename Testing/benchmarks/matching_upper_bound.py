"""How far block matching alone registers, and how much the translation ``B_hat`` costs.

The shipped registration layers start from a block-matching prior on MIND descriptors of the
moving image B and of ``B_hat`` (the fixed image translated into B's modality). This script
runs the network's own BSFA with *untrained* registration layers (so the field is the matching
prior alone) on the ``val_aligned`` pairs misaligned with the fixed-seed Harvard test profile,
with three choices of ``B_hat``:

* ``mri``: the fixed MRI itself (what matching across contrasts gives);
* ``truth``: the aligned moving image (a perfect translation: the upper bound of matching);
* ``translated``: the translation of a trained model (``--weights``) with untrained
  registration layers: how much that ``B_hat`` is worth to matching alone;
* ``trained``: the same model with its trained layers too, i.e. the network as shipped.

Prints mean NCC of the aligned moving image against the truth, the unregistered NCC, the
endpoint error against the drawn field (and of the identity), and the share of pairs improved.

Usage (from the repository root)::

    python Testing/benchmarks/matching_upper_bound.py [--weights FILE] [--max-cases 20]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch

from bsafusion.model import checkpoint
from bsafusion.training.data import validation_pairs
from bsafusion.deform import warp
from bsafusion.evaluation.metrics.registration import ncc
from bsafusion.model import BSFAF
from bsafusion.training.train import TrainConfig, load_config

VAL_ROOT = Path(TrainConfig().val_root)  # the validation pairs of training
SHIPPED_CONFIG = Path("BSAFusionCore/bsafusion/configs/shipped.yaml")


def run(model: BSFAF, pairs: list[dict], source: str) -> np.ndarray:
    """Per pair: NCC registered, NCC unregistered, EPE, EPE of the identity."""
    rows = []
    for item in pairs:
        fixed, moving, truth = item["fixed"][None], item["moving"][None], item["moving_aligned"][None]
        if source in ("mri", "truth"):
            given = fixed if source == "mri" else truth
            model.translator.forward = lambda *inputs, given=given: given
        with torch.no_grad():
            out = model(fixed, moving)
        aligned = warp(moving, out.field_ba, padding="border")
        field = item["field"][None]
        rows.append((ncc(aligned[0, 0].numpy(), truth[0, 0].numpy()), ncc(moving[0, 0].numpy(), truth[0, 0].numpy()),
                     float((out.field_ba - field).norm(dim=1).mean()), float(field.norm(dim=1).mean())))
    return np.array(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path,
                        help="a trained model with a translator (adds the 'translated' and 'trained' rows)")
    parser.add_argument("--max-cases", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    trained: dict[str, BSFAF] = {}
    if args.weights:  # loaded once: run() changes neither model, so both serve every modality
        loaded = checkpoint.load_model(args.weights)
        untrained_layers = copy.deepcopy(loaded)
        untrained_layers.bsfa.load_state_dict(BSFAF(loaded.cfg).bsfa.state_dict())
        trained = {"translated": untrained_layers, "trained": loaded}
    print("| modality | B_hat | NCC | NCC unregistered | better | EPE px | EPE identity px |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for modality in ("CT", "PET", "SPECT"):
        data = validation_pairs(VAL_ROOT, modality)
        pairs = [data[i] for i in range(min(len(data), args.max_cases))]
        models = {"mri": None, "truth": None, **trained}
        for source, model in models.items():
            if model is None:
                model = BSFAF(load_config(SHIPPED_CONFIG).model).eval()
            r = run(model, pairs, source)
            print(f"| {modality} | {source} | {r[:, 0].mean():.4f} | {r[:, 1].mean():.4f} | "
                  f"{(r[:, 0] > r[:, 1]).mean():.0%} | {r[:, 2].mean():.2f} | {r[:, 3].mean():.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
