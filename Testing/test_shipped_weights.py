"""The shipped model: loads safely for every modality, is small, and behaves on easy cases."""

import numpy as np
import pytest
import torch

from bsafusion import modality
from bsafusion.model import checkpoint
from bsafusion.inference.fuser import Fuser
from bsafusion.evaluation.metrics.registration import ncc
from bsafusion.phantom import phantom_pair

MODALITIES = modality.MOVING


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fusers() -> dict[str, Fuser]:
    if not all(checkpoint.default_weights_path(m).is_file() for m in MODALITIES):
        pytest.fail("shipped weights missing from the package")
    return {m: Fuser(m, device="cpu") for m in MODALITIES}


def test_weights_are_small_and_safe_to_load(fusers):
    for m in MODALITIES:
        path = checkpoint.default_weights_path(m)
        assert path.stat().st_size < 5 * 2**20
        payload = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code
        assert m in payload["modality"].split("+")
        assert "validation" in payload["metadata"]


@pytest.mark.parametrize("modality", MODALITIES)
def test_aligned_pair_gives_a_near_identity_field(fusers, modality):
    pair = phantom_pair(modality, (256, 256), seed=11)
    moving = pair.other_rgb if pair.other_rgb is not None else pair.other
    result = fusers[modality].fuse(pair.mri, moving)
    head = pair.labels > 0
    magnitude = np.sqrt((result.field**2).sum(axis=0))[head]
    assert np.median(magnitude) < 1.5, np.median(magnitude)


def test_fused_image_keeps_both_sources(fusers):
    pair = phantom_pair("CT", (256, 256), seed=12)
    result = fusers["CT"].fuse(pair.mri, pair.other)
    # the fused image correlates with each source more than the sources with each other
    assert ncc(result.fused_luma, pair.mri) > ncc(pair.other, pair.mri)
    assert ncc(result.fused_luma, pair.other) > ncc(pair.other, pair.mri)
