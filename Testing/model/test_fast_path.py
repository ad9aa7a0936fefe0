"""The inference kernels (``torch.inference_mode``) against the reference implementation.

Same shipped weights, same phantom pair: :meth:`BSFAF.infer` under ``torch.no_grad()`` runs
the blocks as written in the papers, under ``torch.inference_mode()`` it runs the
channels-last / folded / fused kernels of :mod:`bsafusion.model.blocks`. Fields must agree to
1e-4 px and the fused image to 1e-4; float32 rounding alone leaves a few 1e-5 px.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bsafusion.deform import random_misalignment
from bsafusion.model import checkpoint
from bsafusion.model.blocks import inference_kernels
from bsafusion.phantom import phantom_pair


@pytest.fixture(scope="module")
def shipped_and_pair() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    path = checkpoint.default_weights_path("CT")
    if not path.is_file():
        pytest.skip("no shipped CT weights")
    model = checkpoint.load_model(path, "CT", "cpu").eval()
    pair = phantom_pair("CT", shape=(256, 256), seed=5)
    moving = random_misalignment((256, 256), seed=5).apply(pair.other)
    as_batch = lambda image: torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return model, as_batch(pair.mri), as_batch(moving)


def test_inference_kernels_follow_inference_mode() -> None:
    assert not inference_kernels()
    with torch.no_grad():
        assert not inference_kernels()
    with torch.inference_mode():
        assert inference_kernels()


def test_fast_path_matches_reference(shipped_and_pair) -> None:
    model, fixed, moving = shipped_and_pair
    with torch.no_grad():
        reference = model.infer(fixed, moving)
    with torch.inference_mode():
        fast = model.infer(fixed, moving)
    for name in ("field_ba", "field_ab"):
        error = (getattr(fast, name) - getattr(reference, name)).abs().max().item()
        assert error <= 1e-4, f"{name} differs by {error:.2e} px"
    assert (fast.fused - reference.fused).abs().max().item() <= 1e-4
    assert (fast.translation - reference.translation).abs().max().item() <= 1e-4
    # the test would pass vacuously if the paths were one: the fast one really ran other kernels
    assert not torch.equal(fast.field_ba, reference.field_ba)
