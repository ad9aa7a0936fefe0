"""The fused image keeps the fixed image's background where both sources are background."""

from __future__ import annotations

import numpy as np
import torch

from bsafusion.inference.background import FLOOR_TOLERANCE, keep_background


def _pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two pairs: a CT-like moving floor of 0 and a PET-luma-like floor of 16/255."""
    fixed = torch.zeros(2, 1, 32, 32)
    fixed[:, :, 8:24, 8:24] = 0.6
    aligned = torch.zeros(2, 1, 32, 32)
    aligned[0, :, 12:28, 12:28] = 0.9
    aligned[1] = 16 / 255
    aligned[1, :, 12:28, 12:28] = 0.7
    fused = torch.full((2, 1, 32, 32), 3 / 255)  # the network's haze
    fused[:, :, 8:28, 8:28] = 0.5
    return fused, fixed, aligned


def test_background_of_both_takes_the_fixed_floor_and_nothing_else_changes():
    fused, fixed, aligned = _pair()
    out = keep_background(fused, fixed, aligned)
    both = (fixed == 0) & (aligned <= aligned.amin(dim=(1, 2, 3), keepdim=True))
    assert both.any() and (~both).any()
    assert torch.equal(out[both], torch.zeros(int(both.sum())))
    assert torch.equal(out[~both], fused[~both])


def test_each_pair_has_its_own_floor_and_tolerance():
    fused, fixed, aligned = _pair()
    fixed[1] += 0.2  # the second pair's fixed floor is 0.2, not 0
    aligned[0, :, 0, 0] = FLOOR_TOLERANCE * 0.9  # round-off on a flat floor still counts
    aligned[0, :, 0, 1] = FLOOR_TOLERANCE * 1.5  # a grey level and a half above it does not
    out = keep_background(fused, fixed, aligned)
    assert out[1, 0, 0, 0] == 0.2 and out[0, 0, 0, 0] == 0
    assert out[0, 0, 0, 1] == fused[0, 0, 0, 1]


def test_fuser_output_is_exactly_flat_where_both_inputs_are_background(tiny_weights):
    from bsafusion.inference.fuser import Fuser
    from bsafusion.phantom import phantom_pair

    pair = phantom_pair("CT", (64, 64), seed=0)
    mri = np.clip(pair.mri - 0.02, 0, 1)  # an exactly black background, as in the Harvard MRI
    result = Fuser("CT", tiny_weights["CT"]).fuse(mri, pair.other)
    floor = (mri <= FLOOR_TOLERANCE) & (result.aligned_luma <= result.aligned_luma.min() + FLOOR_TOLERANCE)
    assert floor.mean() > 0.1
    assert result.fused_luma[~floor].min() > 0.1  # the network's own output elsewhere (untrained: ~0.5)
    np.testing.assert_array_equal(result.fused_luma[floor], 0.0)


def test_the_rule_can_be_switched_off_for_studies(tiny_weights):
    from bsafusion.inference.fuser import Fuser
    from bsafusion.phantom import phantom_pair

    pair = phantom_pair("CT", (64, 64), seed=0)
    mri = np.clip(pair.mri - 0.02, 0, 1)
    kept = Fuser("CT", tiny_weights["CT"]).fuse(mri, pair.other).fused_luma
    raw = Fuser("CT", tiny_weights["CT"], keep_background=False).fuse(mri, pair.other).fused_luma
    changed = kept != raw
    assert changed.any() and (kept[changed] == 0).all()
