"""Per-pair field refinement (bsafusion.inference.refine) and how the network and the Fuser use it."""

import numpy as np
import pytest
import torch

from bsafusion.deform import compose, invert, random_elastic_field, warp
from bsafusion.errors import InputError
from bsafusion.inference.fuser import Fuser
from bsafusion.phantom import phantom_pair
from bsafusion import modality
from bsafusion.inference.refine import RefineSettings, default_settings, refine_field

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 128
FAST = RefineSettings(steps=100, grid=16, smoothness=1.0, lr=0.01, size=SIZE)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]


@pytest.fixture(scope="module")
def deformed_ct():
    """MRI/CT phantom pair, the CT deformed by a smooth field like the Harvard test cases'.

    Returns fixed, moving, the truth (aligned CT), the true registration field, the head mask.
    """
    pair = phantom_pair("CT", (SIZE, SIZE), seed=4)
    rng = np.random.default_rng(11)
    deformation = torch.from_numpy(random_elastic_field((SIZE, SIZE), rng, max_displacement=6.0, smoothness=0.125))[None]
    truth = _tensor(pair.other)
    moving = warp(truth, deformation, padding="border")
    # the field aligning moving back onto the fixed grid is the inverse of the deformation
    inverse = invert(deformation, iterations=40)
    mask = torch.from_numpy(pair.mri > 0.05)
    return _tensor(pair.mri), moving, truth, inverse, mask


def _epe(field: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    return float((field - truth).norm(dim=1)[0][mask].mean())


def test_refinement_recovers_a_known_cross_modal_deformation(deformed_ct):
    fixed, moving, truth_image, truth_field, mask = deformed_ct
    zero = torch.zeros_like(truth_field)
    refined = refine_field(fixed, moving, zero, FAST)
    before, after = _epe(zero, truth_field, mask), _epe(refined, truth_field, mask)
    assert before > 1.5  # the deformation is real
    assert after < 0.6 * before, (before, after)
    error_before = (moving - truth_image).abs()[0, 0][mask].mean()
    error_after = (warp(moving, refined, padding="border") - truth_image).abs()[0, 0][mask].mean()
    assert error_after < 0.7 * error_before


def test_refinement_starts_from_the_given_field(deformed_ct):
    fixed, moving, _, truth_field, mask = deformed_ct
    refined = refine_field(fixed, moving, truth_field, FAST)
    # started at the answer, it stays there; a refinement ignoring its start would land ~1 px away
    assert _epe(refined, truth_field, mask) < 0.5
    assert not torch.equal(refined, truth_field)  # and it did optimise


def test_aligned_pair_stays_near_identity():
    pair = phantom_pair("CT", (SIZE, SIZE), seed=5)
    fixed, moving = _tensor(pair.mri), _tensor(pair.other)
    refined = refine_field(fixed, moving, torch.zeros(1, 2, SIZE, SIZE), FAST)
    assert float(refined.norm(dim=1).mean()) < 0.5


def test_pairs_of_a_batch_are_refined_independently(deformed_ct):
    fixed, moving, _, _, _ = deformed_ct
    other = phantom_pair("CT", (SIZE, SIZE), seed=6)
    fixed2, moving2 = torch.cat([fixed, _tensor(other.mri)]), torch.cat([moving, _tensor(other.other)])
    settings = RefineSettings(steps=20, size=SIZE)
    together = refine_field(fixed2, moving2, torch.zeros(2, 2, SIZE, SIZE), settings)
    alone = refine_field(fixed, moving, torch.zeros(1, 2, SIZE, SIZE), settings)
    assert torch.allclose(together[:1], alone, atol=1e-3)
    assert not torch.allclose(together[0], together[1], atol=1e-2)


def test_zero_steps_returns_the_field_untouched():
    field = torch.randn(1, 2, 32, 32)
    assert refine_field(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32), field, RefineSettings(steps=0)) is field


def test_settings_are_checked_and_defaults_follow_the_modality():
    assert default_settings("ct").steps == modality.get("CT").refine_steps
    assert default_settings("PET", 7).steps == 7
    assert default_settings("CT").use_translation is modality.get("CT").refine_on_translation
    for bad in (dict(steps=-1), dict(grid=1), dict(size=8), dict(smoothness=-1.0), dict(lr=0.0)):
        with pytest.raises(InputError):
            RefineSettings(**bad)
    with pytest.raises(InputError, match="unknown modality"):
        default_settings("MRI")


def test_refinement_runs_between_registration_and_fusion(tiny_weights, monkeypatch):
    """The fuser fuses with the refined field and inverts it; the network is called without a callback."""
    import bsafusion.inference.fuser as fuser_module

    fuser = Fuser("CT", tiny_weights["CT"], "cpu", refine=5)
    size = fuser.model.cfg.img_size
    pair = phantom_pair("CT", (size, size), seed=7)
    given = torch.from_numpy(random_elastic_field((size, size), np.random.default_rng(0), 3.0))[None]
    seen = {}

    def fake_refine(fixed, moving, field, settings, translation=None):
        seen["field"] = field
        return given

    plain = Fuser("CT", tiny_weights["CT"], "cpu", refine=0).fuse(pair.mri, pair.other)
    monkeypatch.setattr(fuser_module, "refine_field", fake_refine)
    refined = fuser.fuse(pair.mri, pair.other)
    np.testing.assert_allclose(seen["field"][0].numpy(), plain.field, atol=1e-5)  # refinement starts from the network's
    np.testing.assert_array_equal(refined.field, given[0].numpy())
    # the inverse field is the refined field's inverse: composing them is ~ the identity
    residual = compose(torch.from_numpy(refined.inverse_field)[None], given)[..., 4:-4, 4:-4]
    assert float(residual.norm(dim=1).max()) < 0.05
    np.testing.assert_allclose(refined.aligned, warp(_tensor(pair.other), given, padding="border")[0, 0].numpy(), atol=1e-6)
    assert not np.allclose(refined.fused, plain.fused, atol=1e-4)  # MMFF used the new field


def test_fuser_follows_the_modality_default_and_refines_on_request(tiny_weights):
    pair = phantom_pair("CT", (64, 64), seed=8)
    default = Fuser("CT", tiny_weights["CT"], "cpu")
    assert default.refine.steps == modality.get("CT").refine_steps
    off = Fuser("CT", tiny_weights["CT"], "cpu", refine=0)
    on = Fuser("CT", tiny_weights["CT"], "cpu", refine=100)
    a, b = on.fuse(pair.mri, pair.other), off.fuse(pair.mri, pair.other)
    assert not np.allclose(a.field, b.field, atol=1e-3)
    assert Fuser("PET", tiny_weights["PET"], "cpu").refine.steps == modality.get("PET").refine_steps


def test_cli_fuse_passes_refine_steps_to_the_fuser(monkeypatch, tmp_path):
    import bsafusion.inference.fuser as infer
    from bsafusion.cli import main
    from bsafusion.io import write_image

    seen = {}

    class Stop(Exception):
        pass

    def fake_fuser(modality, weights=None, device="auto", refine=None):
        seen["refine"] = refine
        raise Stop

    monkeypatch.setattr(infer, "Fuser", fake_fuser)
    pair = phantom_pair("CT", (32, 32), seed=1)
    fixed, moving = write_image(pair.mri, tmp_path / "mri.png"), write_image(pair.other, tmp_path / "ct.png")
    for extra, expected in (([], None), (["--refine-steps", "0"], 0), (["--refine-steps", "25"], 25)):
        with pytest.raises(Stop):
            main(["fuse", "--fixed", str(fixed), "--moving", str(moving), "--modality", "CT", "--out", str(tmp_path / "o"), *extra])
        assert seen["refine"] == expected


def test_refinement_against_a_translation_is_mono_modal(deformed_ct):
    fixed, moving, truth_image, truth_field, mask = deformed_ct
    zero = torch.zeros_like(truth_field)
    # the translation stands in for the fixed image: with a perfect one, the MRI is not looked at
    refined = refine_field(fixed, moving, zero, FAST, translation=truth_image)
    assert _epe(refined, truth_field, mask) < 0.5 * _epe(zero, truth_field, mask)
    ignored = refine_field(torch.rand_like(fixed), moving, zero, FAST, translation=truth_image)
    assert torch.allclose(refined, ignored)
    assert not torch.allclose(refined, refine_field(fixed, moving, zero, FAST), atol=1e-3)
