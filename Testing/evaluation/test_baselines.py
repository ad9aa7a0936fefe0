"""Classical two-stage baselines: SimpleITK registration and fusion rules."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from bsafusion.evaluation.baselines import (
    FUSION_RULES,
    ClassicalSettings,
    fuse_average,
    fuse_colour,
    fuse_laplacian,
    fuse_max_abs,
    register_classical,
)
from bsafusion.inference.prealign import prealign_affine
from bsafusion.evaluation.baselines.fusion_rules import collapse_pyramid, laplacian_pyramid
from bsafusion.evaluation.baselines.registration import _mesh_schedule
from bsafusion.colour import split_luma
from bsafusion.deform import random_misalignment, warp_numpy
from bsafusion.errors import InputError
from bsafusion.evaluation.metrics.registration import endpoint_error, ncc
from bsafusion.phantom import phantom_pair

SIZE = 128
INTERIOR = (slice(SIZE // 8, SIZE - SIZE // 8),) * 2


@pytest.fixture(scope="module")
def misaligned_ct():
    """MRI (fixed), CT aligned truth, CT misaligned with a known field, and that field."""
    pair = phantom_pair("CT", shape=(SIZE, SIZE), seed=2)
    mis = random_misalignment((SIZE, SIZE), seed=102)
    return pair.mri, pair.other, mis.apply(pair.other), mis


@pytest.fixture(scope="module")
def classical(misaligned_ct):
    fixed, _, moving, _ = misaligned_ct
    return register_classical(fixed, moving)


def _interior_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[INTERIOR] = True
    return mask


# ------------------------------------------------------------------------------ registration


def test_registration_reduces_endpoint_error(misaligned_ct, classical):
    *_, mis = misaligned_ct
    mask = _interior_mask()
    before = endpoint_error(np.zeros_like(mis.inverse), mis.inverse, mask)
    after = endpoint_error(classical.field, mis.inverse, mask)
    assert before > 3.0  # the case is really misaligned
    assert after < 0.25 * before and after < 1.0


def test_bspline_improves_on_affine(misaligned_ct, classical):
    fixed, _, moving, mis = misaligned_ct
    affine = register_classical(fixed, moving, ClassicalSettings(mesh_size=None))
    mask = _interior_mask()
    assert endpoint_error(classical.field, mis.inverse, mask) < endpoint_error(affine.field, mis.inverse, mask)


def test_registration_increases_ncc_to_truth(misaligned_ct, classical):
    _, truth, moving, _ = misaligned_ct
    before = ncc(moving[INTERIOR], truth[INTERIOR])
    after = ncc(classical.aligned[INTERIOR], truth[INTERIOR])
    assert after > before + 0.1 and after > 0.9


def test_field_reproduces_aligned_image(misaligned_ct, classical):
    # aligned comes from sitk.Resample, field from TransformToDisplacementField: an x/y swap,
    # a sign error or a mm/pixel slip in the conversion would break this
    _, _, moving, _ = misaligned_ct
    assert classical.field.shape == (2, SIZE, SIZE) and classical.aligned.shape == (SIZE, SIZE)
    np.testing.assert_allclose(warp_numpy(moving, classical.field), classical.aligned, atol=1e-4)


def test_registration_recovers_a_known_translation():
    image = phantom_pair("CT", shape=(96, 96), seed=0).other
    shift = np.zeros((2, 96, 96), dtype=np.float32)
    shift[0], shift[1] = 3.0, -2.0  # fixed pixel p sits at p + (3, -2) in the moving image
    moving = warp_numpy(image, -shift)  # moving(q) = image(q - shift)
    result = register_classical(image, moving, ClassicalSettings(mesh_size=None))
    centre = result.field[:, 24:72, 24:72].reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(centre, [3.0, -2.0], atol=0.25)


def test_affine_stage_survives_a_large_rotation():
    # 15 degrees and 8 % shifts: a direct affine optimisation stopped at 11.5 px here;
    # going through the rigid stage first reaches the affine limit of this elastic case
    n = 256
    pair = phantom_pair("CT", shape=(n, n), seed=1)
    mis = random_misalignment((n, n), seed=101, max_rotation_deg=15, max_translation=0.08)
    result = register_classical(pair.mri, mis.apply(pair.other), ClassicalSettings(mesh_size=None))
    mask = np.zeros((n, n), dtype=bool)
    mask[n // 8 : -n // 8, n // 8 : -n // 8] = True
    assert endpoint_error(np.zeros_like(mis.inverse), mis.inverse, mask) > 15.0
    assert endpoint_error(result.field, mis.inverse, mask) < 1.5


def test_settings_for_modality():
    assert ClassicalSettings.for_modality("ct") == ClassicalSettings()
    assert ClassicalSettings.for_modality("PET").mesh_size == (4, 4)
    assert ClassicalSettings.for_modality("SPECT").mesh_size == (4, 4)
    with pytest.raises(InputError, match="modality"):
        ClassicalSettings.for_modality("XR")


def test_registration_is_deterministic(misaligned_ct, classical):
    fixed, _, moving, _ = misaligned_ct
    again = register_classical(fixed, moving)
    np.testing.assert_array_equal(again.field, classical.field)
    np.testing.assert_array_equal(again.aligned, classical.aligned)


def test_apply_warps_colour_like_grey(misaligned_ct, classical):
    _, _, moving, _ = misaligned_ct
    rgb = np.stack([moving, 0.5 * moving, moving**2], axis=-1)
    out = classical.apply(rgb)
    assert out.shape == rgb.shape
    np.testing.assert_allclose(out[..., 1], classical.apply(0.5 * moving), atol=1e-6)


@pytest.mark.parametrize(
    "fixed, moving, message",
    [
        (np.zeros((64, 64)), np.random.default_rng(0).random((64, 64)), "constant"),
        (np.random.default_rng(0).random((8, 64, 64)), np.random.default_rng(1).random((64, 64)), "2-D"),
        (np.full((64, 64), np.nan), np.random.default_rng(1).random((64, 64)), "NaN"),
        (np.random.default_rng(0).random((10, 10)), np.random.default_rng(1).random((10, 10)), "too small"),
    ],
)
def test_registration_rejects_bad_input(fixed, moving, message):
    with pytest.raises(InputError, match=message):
        register_classical(fixed, moving)


def test_mesh_schedule_ends_at_requested_mesh():
    assert _mesh_schedule((8, 8), 3) == ([2, 2], [1, 2, 4])
    assert _mesh_schedule((6, 6), 3) == ([3, 3], [1, 1, 2])
    assert _mesh_schedule((5, 8), 3) == ([5, 8], [1, 1, 1])
    for mesh in [(8, 8), (6, 6), (5, 8), (12, 4)]:
        initial, factors = _mesh_schedule(mesh, 3)
        assert [m * factors[-1] for m in initial] == list(mesh)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def test_prealign_affine_recovers_3d_rigid_motion():
    """MRI vs CT phantom volumes: oblique, anisotropic frame; moving on another grid."""
    pair = phantom_pair("CT", shape=(32, 32, 32), seed=4)
    fixed = sitk.GetImageFromArray(pair.mri)
    fixed.SetSpacing((6.0, 6.5, 5.0))
    fixed.SetDirection((_rotation(2, 20.0) @ _rotation(0, -10.0)).ravel().tolist())
    fixed.SetOrigin((-90.0, -80.0, -70.0))
    ct = sitk.GetImageFromArray(pair.other)
    ct.CopyInformation(fixed)

    centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint([15.5] * 3))
    truth = sitk.Euler3DTransform()
    truth.SetCenter(centre.tolist())
    truth.SetRotation(*np.deg2rad([4.0, -3.0, 6.0]))
    truth.SetTranslation((7.0, -5.0, 4.0))
    grid = sitk.Image([36, 36, 30], sitk.sitkFloat32)  # identity direction, other spacing/origin
    grid.SetSpacing((5.5, 5.5, 6.0))
    grid.SetOrigin((centre - [99.0, 99.0, 90.0] + [3.0, -4.0, 5.0]).tolist())
    moving = sitk.Resample(ct, grid, truth.GetInverse(), sitk.sitkLinear, 0.0)

    estimate = prealign_affine(fixed, moving, rigid=True)
    head = np.argwhere(pair.labels > 0)[::5]
    points = [fixed.TransformIndexToPhysicalPoint([int(v) for v in idx[::-1]]) for idx in head]
    error = [np.linalg.norm(np.subtract(estimate.TransformPoint(p), truth.TransformPoint(p))) for p in points]
    start = [np.linalg.norm(np.subtract(p, truth.TransformPoint(p))) for p in points]
    assert np.mean(start) > 8.0
    assert np.mean(error) < 2.5 and np.max(error) < 4.0  # mm, voxels are 5-6.5 mm


def test_prealign_affine_2d_with_physical_spacing():
    image = sitk.GetImageFromArray(phantom_pair("CT", shape=(96, 96), seed=1).other)
    image.SetSpacing((0.8, 1.2))
    image.SetOrigin((10.0, -20.0))
    truth = sitk.TranslationTransform(2, (4.0, -6.0))  # mm
    moving = sitk.Resample(image, image, truth.GetInverse(), sitk.sitkLinear, 0.0)
    estimate = prealign_affine(image, moving, rigid=True)
    centre = image.TransformContinuousIndexToPhysicalPoint((47.5, 47.5))
    np.testing.assert_allclose(np.subtract(estimate.TransformPoint(centre), centre), [4.0, -6.0], atol=0.3)


def test_prealign_affine_rejects_mixed_dimensions():
    with pytest.raises(InputError, match="3D"):
        prealign_affine(sitk.Image([16, 16], sitk.sitkFloat32), sitk.Image([16, 16, 16], sitk.sitkFloat32))
    with pytest.raises(InputError, match="initializer"):
        prealign_affine(sitk.Image([16, 16], sitk.sitkFloat32), sitk.Image([16, 16], sitk.sitkFloat32),
                        initializer="centre")


# ------------------------------------------------------------------------------ fusion rules

RNG = np.random.default_rng(7)
A = RNG.random((37, 50))
B = RNG.random((37, 50))


@pytest.mark.parametrize("rule", sorted(FUSION_RULES))
def test_fusing_an_image_with_itself_returns_it(rule):
    np.testing.assert_allclose(FUSION_RULES[rule](A, A), A, atol=1e-12)


def test_average_is_the_mean():
    np.testing.assert_allclose(fuse_average([[0.2, 1.0]], [[0.6, 0.0]]), [[0.4, 0.5]])
    np.testing.assert_allclose(fuse_average(A, B), fuse_average(B, A))


def test_max_abs_picks_the_larger_magnitude():
    np.testing.assert_array_equal(fuse_max_abs(A, B), np.maximum(A, B))  # images >= 0: the max
    signed = fuse_max_abs([[-0.8, 0.3, -0.2]], [[0.5, -0.1, 0.2]])
    np.testing.assert_array_equal(signed, [[-0.8, 0.3, -0.2]])  # tie keeps the first


def test_laplacian_pyramid_collapses_exactly():
    pyramid = laplacian_pyramid(A, 3)
    assert [p.shape for p in pyramid] == [(37, 50), (19, 25), (10, 13), (5, 7)]
    np.testing.assert_allclose(collapse_pyramid(pyramid), A, atol=1e-12)


def test_laplacian_averages_the_base_and_keeps_details():
    a = 0.3 + 0.4 * A
    # same details, offset base: details come from either, the base is their mean
    np.testing.assert_allclose(fuse_laplacian(a, a + 0.2), a + 0.1, atol=1e-12)
    # details present in only one source keep their contrast (the average halves them)
    flat = np.full_like(a, 0.5)
    detail = np.std(a - 0.5)
    assert np.std(fuse_laplacian(a, flat) - fuse_laplacian(a, flat).mean()) > 0.8 * detail
    assert np.std(fuse_average(a, flat) - 0.5) == pytest.approx(0.5 * detail)


def test_laplacian_output_in_range_and_levels_are_capped():
    out = fuse_laplacian(A, B, levels=50)  # capped so the base keeps >= 8 pixels
    assert out.shape == A.shape and out.min() >= 0.0 and out.max() <= 1.0
    with pytest.raises(InputError, match="levels"):
        fuse_laplacian(A, B, levels=-1)


@pytest.mark.parametrize("rule", sorted(FUSION_RULES))
def test_colour_fusion_keeps_chroma(rule):
    pair = phantom_pair("PET", shape=(64, 64), seed=3)
    fused = fuse_colour(rule, pair.mri, pair.other_rgb)
    assert fused.shape == (64, 64, 3)
    luma, chroma = split_luma(pair.other_rgb)
    fused_luma, fused_chroma = split_luma(fused)
    inside = np.all((fused > 1e-6) & (fused < 1 - 1e-6), axis=-1)  # merge_luma clips out-of-gamut
    assert inside[pair.labels > 0].mean() > 0.6  # most of the head is in gamut (not the black air)
    np.testing.assert_allclose(fused_chroma[inside], chroma[inside], atol=1e-5)
    np.testing.assert_allclose(fused_luma[inside], FUSION_RULES[rule](pair.mri, luma)[inside], atol=1e-5)


def test_colour_fusion_of_grey_is_the_rule():
    np.testing.assert_array_equal(fuse_colour("laplacian", A, B), fuse_laplacian(A, B))
    np.testing.assert_array_equal(fuse_colour(fuse_max_abs, A, B), np.maximum(A, B))


def test_fusion_rejects_bad_input():
    with pytest.raises(InputError, match="unknown fusion rule"):
        fuse_colour("median", A, B)
    with pytest.raises(InputError, match="shape mismatch"):
        fuse_average(A, B[:-1])
    with pytest.raises(InputError, match="NaN"):
        fuse_max_abs(A, np.full_like(B, np.nan))


# ------------------------------------------------------------------------------ speed benchmark


def _speed_module():
    from benchmark_scripts import load_benchmark

    return load_benchmark("speed")


def _tiny_config(**changes):
    from bsafusion.model import ModelConfig

    return ModelConfig(img_size=64, channels=8, embed_dim=32, patch_size=8, heads=2, pyramid_channels=(16, 12, 8), **changes)


def _tiny_weights(tmp_path):
    import torch

    from bsafusion.model import checkpoint
    from bsafusion.model import BSFAF

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    checkpoint.save(path, BSFAF(_tiny_config()), "CT")
    return path


def test_speed_block_times_cover_the_forward_pass(tmp_path):
    from bsafusion.model import checkpoint

    speed = _speed_module()
    model = checkpoint.load_model(_tiny_weights(tmp_path), "CT")
    per_block, total = speed.block_times(model, *speed.network_inputs(model, 64), repeats=1)
    present = {label for path, label in speed.BLOCKS.items() if speed._has(model, path)}
    levels = {f"BSFA level {k} (FRL+RRL)" for k in range(len(model.cfg.pyramid_channels))}
    assert present | levels | {"MMFF (fusion, reconstruction)"} <= set(per_block)
    assert all(per_block[label] > 0 for label in present | levels)
    assert all(t >= 0 for t in per_block.values())
    assert sum(per_block.values()) <= total * 1.05
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())  # hooks removed


def test_speed_compiled_blocks_are_modules_of_the_network():
    from torch import nn

    from bsafusion.model import BSFAF

    model = BSFAF(_tiny_config(translation=True))  # as shipped: the translator is a block to compile
    names = [name for blocks in _speed_module().COMPILED for name in blocks.split("+")]
    assert all(isinstance(getattr(model, name, None), nn.Module) for name in names)
    assert set(names) >= {"encoder", "mdffr", "pyramid", "translator", "bsfa", "mmff"}


@pytest.mark.slow
def test_speed_benchmark_runs(tmp_path, capsys):
    speed = _speed_module()
    weights = _tiny_weights(tmp_path)
    out = tmp_path / "speed.md"
    assert speed.main(["--weights", str(weights), "--repeats", "1", "--runs", "1", "--sizes", "64", "--batches", "1", "2",
                       "--no-memory", "--output", str(out)]) == 0
    table = out.read_text()
    for row in ["Ours: forward pass", "fuse_files", "SimpleITK affine + B-spline", "`laplacian`", "| 64² |",
                "| 2 |", "MMFF", "BSFA level 0", "**Forward total**", "Published BSAFusion architecture",
                "Ratio ours / published", "I/O"]:
        assert row in table
    memory = speed.measure_memory("Fusion rule `laplacian` (luma)", weights, threads=2)
    assert memory["tracemalloc_mib"] > 0.5  # 256x256 float64 pyramids
