"""The 3D volume pipeline (bsafusion.inference.volume): geometry, transform export, LPS signs, bad input.

Fast cases use 24 x 64 x 64 phantom volumes and a tiny untrained model. An untrained model
predicts a near-identity field, so registration accuracy is tested honestly where it can be:
the pre-alignment recovers a known rigid offset, and a stand-in network (``_FakeFuser``) that
returns a known in-plane field checks that stacking, orientation, millimetre conversion and
composition with the affine carry that field unchanged to the exported transform. The trained
model's accuracy on a known 3D deformation is a slow case (needs the shipped weights).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bsafusion.model import checkpoint
from bsafusion.colour import split_luma
from bsafusion.deform import random_misalignment
from bsafusion.errors import InputError
from bsafusion.inference.fuser import Fuser, FusionResult
from bsafusion.inference.intensity import normalise_volume
from bsafusion.io import write_dicom_series
from bsafusion.evaluation.metrics.registration import endpoint_error, mutual_information, ncc
from bsafusion.model import BSFAF, ModelConfig
from bsafusion.phantom import LESION, phantom_pair
from bsafusion.transforms import read_displacement_transform
from bsafusion.inference.volume import (
    Cancelled,
    check_volume,
    coverage_mask,
    fuse_volume_files,
    inverse_transform,
    read_volume,
    register_and_fuse_volumes,
    slice_frame,
    write_volume_result,
)
from bsafusion.inference.volume import pipeline as pipeline_module

SHAPE = (24, 64, 64)  # (D, H, W)
SPACING = (1.2, 1.0, 3.0)  # x, y, z mm: anisotropic
ORIGIN = (-40.0, -30.0, 20.0)


# ---------------------------------------------------------------------------------- helpers


def _rotation(z_deg: float = 0.0, x_deg: float = 0.0) -> np.ndarray:
    cz, sz = np.cos(np.radians(z_deg)), np.sin(np.radians(z_deg))
    cx, sx = np.cos(np.radians(x_deg)), np.sin(np.radians(x_deg))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ rx


def _image(array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=None) -> sitk.Image:
    direction = np.eye(3) if direction is None else direction
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    return image


def _hounsfield(ct: np.ndarray) -> np.ndarray:
    """Phantom CT grey levels -> plausible Hounsfield units (air -1000, brain ~40, bone 1200)."""
    return np.interp(ct, [0.0, 0.02, 0.2, 0.47, 0.8, 1.0], [-1000, -100, 8, 40, 600, 1200]).astype(np.int16)


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _same_geometry(image: sitk.Image, reference: sitk.Image) -> bool:
    return (image.GetSize() == reference.GetSize() and image.GetOrigin() == reference.GetOrigin()
            and image.GetSpacing() == reference.GetSpacing() and image.GetDirection() == reference.GetDirection())


class _FakeFuser:
    """Stands in for the network: returns ``field_fn(shape)`` for every slice, fused = max."""

    def __init__(self, field_fn: Callable[[tuple[int, int]], np.ndarray]) -> None:
        self.field_fn = field_fn
        self.fixed_slices: list[np.ndarray] = []

    def fuse_batch(self, pairs):
        out = []
        for fixed, moving in pairs:
            self.fixed_slices.append(np.array(fixed))
            luma = split_luma(moving)[0] if moving.ndim == 3 else moving
            field = self.field_fn(fixed.shape).astype(np.float32)
            fused = np.maximum(fixed, moving if moving.ndim == 2 else fixed[..., None])
            out.append(FusionResult(fused, np.maximum(fixed, luma), moving, luma, field, -field))
        return out


def _use_fake(monkeypatch: pytest.MonkeyPatch, fake: _FakeFuser) -> None:
    monkeypatch.setattr(pipeline_module, "Fuser", lambda modality, weights=None, device="auto", refine=None: fake)


def _constant_field(ux: float, uy: float) -> Callable[[tuple[int, int]], np.ndarray]:
    return lambda shape: np.stack([np.full(shape, ux), np.full(shape, uy)])


# ---------------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    cfg = ModelConfig(img_size=64, channels=8, embed_dim=32, patch_size=8, heads=2, pyramid_channels=(16, 12, 8))
    paths = {}
    for modality in ("CT", "PET"):
        torch.manual_seed(0)
        paths[modality] = folder / f"tiny_{modality.lower()}.pt"
        checkpoint.save(paths[modality], BSFAF(cfg), modality)
    return paths


@pytest.fixture(scope="module")
def head() -> dict[str, np.ndarray]:
    ct = phantom_pair("CT", SHAPE, seed=3)
    pet = phantom_pair("PET", SHAPE, seed=3)
    return {"mri": (ct.mri * 1000).astype(np.float32), "ct": _hounsfield(ct.other),
            "pet": (pet.other * 8.0).astype(np.float32), "labels": ct.labels}


@pytest.fixture(scope="module")
def rigid_case(head, tiny_weights):
    """Fixed MRI in an oblique frame; moving CT = the same anatomy moved by a known rigid motion.

    The moving volume holds the CT of the fixed grid's anatomy, with its geometry moved rigidly,
    so the true fixed -> moving point map is ``T(p) = O_m + R (p - O_f)``, ``R = D_m D_f^T``.
    """
    d_fixed = _rotation(z_deg=20.0)
    fixed = _image(head["mri"], direction=d_fixed)
    motion = _rotation(z_deg=6.0, x_deg=-4.0)
    centre = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()]))
    origin_m = motion @ (np.asarray(ORIGIN) - centre) + centre + np.array([7.0, -5.0, 4.0])
    moving = _image(head["ct"], origin=origin_m, direction=motion @ d_fixed)
    rot = (motion @ d_fixed) @ d_fixed.T

    def truth(p: np.ndarray) -> np.ndarray:
        return origin_m + (p - np.asarray(ORIGIN)) @ rot.T

    result = register_and_fuse_volumes(fixed, moving, "CT", weights=tiny_weights["CT"], device="cpu")
    return fixed, moving, result, truth


def _head_points(fixed: sitk.Image, labels: np.ndarray, step: int = 3) -> np.ndarray:
    z, y, x = np.nonzero(labels[:, ::step, ::step] > 0)
    index = np.stack([x * step, y * step, z], axis=1).astype(float)
    return np.array([fixed.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in index])


# ---------------------------------------------------------------------------------- slicing frame


def test_slice_frame_picks_the_closest_patient_axis() -> None:
    identity = np.eye(3).ravel()
    assert slice_frame(identity, "axial").index_axes == (0, 1, 2)
    assert slice_frame(identity, "coronal") == slice_frame(identity, "CORONAL")
    frame = slice_frame(identity, "coronal")
    assert frame.index_axes == (0, 2, 1) and frame.signs == (1, -1, 1)  # rows run inferior
    # columns of the direction matrix: index 0 -> anterior, 1 -> superior, 2 -> right
    permuted = np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], float)
    frame = slice_frame(permuted.ravel(), "axial")
    assert frame.slice_index_axis == 1
    assert frame.index_axes == (2, 0, 1) and frame.signs == (-1, -1, 1)
    oblique = _rotation(z_deg=30.0, x_deg=35.0)  # S is still closest to index axis 2
    assert slice_frame(oblique.ravel(), "axial").slice_index_axis == 2
    with pytest.raises(InputError, match="slicing axis"):
        slice_frame(identity, "transverse")


def test_working_frame_round_trip_and_field_signs() -> None:
    frame = slice_frame(np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], float).ravel(), "axial")
    volume = np.random.default_rng(0).random((5, 6, 7))
    working = frame.to_working(volume)
    assert working.shape == (6, 5, 7)[:1] + (7, 5)  # (index 1 slices, index 0 rows, index 2 columns)
    np.testing.assert_array_equal(frame.from_working(working), volume)
    field = np.zeros((2, *working.shape), np.float32)
    field[0] = 2.0  # towards the patient's left = index axis 2 reversed
    field[1] = 1.0  # towards posterior = index axis 0 reversed
    volume_field = frame.field_from_working(field)
    assert volume_field.shape == (3, 5, 6, 7)
    np.testing.assert_array_equal(volume_field[2], -2.0)
    np.testing.assert_array_equal(volume_field[0], -1.0)
    np.testing.assert_array_equal(volume_field[1], 0.0)


# ---------------------------------------------------------------------------------- known motion


def test_prealignment_recovers_a_known_rigid_offset(rigid_case, head) -> None:
    fixed, _, result, truth = rigid_case
    points = _head_points(fixed, head["labels"])
    mapped = np.array([result.transform.TransformPoint(tuple(p)) for p in points])
    error = np.linalg.norm(mapped - truth(points), axis=1)
    identity_error = np.linalg.norm(points - truth(points), axis=1)
    assert identity_error.mean() > 8.0  # the offset is real
    assert error.mean() < 1.5, f"mean error {error.mean():.2f} mm over the head"
    assert result.overlap > 0.9 and result.network_slices > 10


def test_transform_round_trip_reproduces_aligned(rigid_case) -> None:
    fixed, moving, result, _ = rigid_case
    # the documented call reproduces it exactly ...
    exact = sitk.Resample(moving, fixed, result.transform, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    np.testing.assert_array_equal(_array(exact), _array(result.aligned))
    # ... and the plain call (int16 output, 0 outside) agrees wherever the moving volume covers
    plain = _array(sitk.Resample(moving, fixed, result.transform)).astype(float)
    covered = coverage_mask(fixed, moving, result.transform)
    assert covered.mean() > 0.8
    assert np.corrcoef(plain[covered], _array(result.aligned)[covered])[0, 1] > 0.99
    assert result.aligned.GetPixelID() == sitk.sitkFloat32
    assert _array(result.aligned).min() == pytest.approx(-1000)  # original units (HU) kept


def test_outputs_have_the_fixed_geometry(rigid_case) -> None:
    fixed, _, result, _ = rigid_case
    for name in ("fused", "aligned", "displacement", "inverse_displacement", "jacobian"):
        assert _same_geometry(getattr(result, name), fixed), name
    assert result.displacement.GetPixelID() == sitk.sitkVectorFloat64
    assert result.fused.GetNumberOfComponentsPerPixel() == 1
    fused = _array(result.fused)
    assert fused.dtype == np.float32 and fused.min() >= 0 and fused.max() <= 1
    assert set(result.timings) >= {"prealign", "network", "export"}
    assert result.inverse_consistency_mm < 0.5


def test_written_outputs_read_back(rigid_case, tmp_path: Path) -> None:
    fixed, moving, result, _ = rigid_case
    paths = write_volume_result(result, tmp_path / "out", stem="case")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())
    assert paths["transform"].name == "case_transform.nrrd"
    transform = read_displacement_transform(paths["transform"])
    again = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    # HU; the file rounds displacements to 2**-17 of their size (~1e-4 mm here), which moves
    # values on the phantom's steepest edges (~300 HU/mm) by a few hundredths of a HU
    np.testing.assert_allclose(_array(again), _array(result.aligned), atol=0.05)
    # one float32 vector per fixed voxel, compressed: less than ITK's 24 uncompressed bytes
    assert paths["transform"].stat().st_size < 12 * int(np.prod(fixed.GetSize()))
    field = sitk.ReadImage(str(paths["transform"]))
    assert field.GetPixelID() == sitk.sitkVectorFloat32 and field.GetSize() == fixed.GetSize()
    for key in ("fused", "aligned", "inverse_displacement", "jacobian"):
        image = sitk.ReadImage(str(paths[key]))
        np.testing.assert_allclose(image.GetOrigin(), fixed.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), fixed.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(image.GetDirection(), fixed.GetDirection(), atol=1e-6)
    affine = sitk.ReadTransform(str(paths["affine"]))
    p = fixed.TransformIndexToPhysicalPoint((30, 30, 12))
    np.testing.assert_allclose(affine.TransformPoint(p), result.affine.TransformPoint(p), atol=1e-6)


# ---------------------------------------------------------------------------------- LPS signs


def test_moving_flipped_in_geometry_is_not_mirrored(head, tiny_weights) -> None:
    """Moving = the same physical CT stored with its x axis reversed (direction -x, origin at
    the far end). The correct pipeline sees the same anatomy; a left-right bug mirrors it."""
    fixed = _image(head["mri"])
    far_end = np.asarray(ORIGIN) + np.array([(SHAPE[2] - 1) * SPACING[0], 0, 0])
    moving = _image(head["ct"][:, :, ::-1], origin=far_end, direction=np.diag([-1.0, 1.0, 1.0]))
    # geometry only: refinement's sub-voxel shifts would interpolate (smooth) the phantom's brain
    # texture and lower the correlation this test reads
    result = register_and_fuse_volumes(fixed, moving, "CT", weights=tiny_weights["CT"], device="cpu", prealign=False,
                                       refine_steps=0)
    aligned, truth = _array(result.aligned), head["ct"].astype(np.float32)
    brain = head["labels"] > 2  # inside the skull the phantom is asymmetric (air dominates elsewhere)
    assert np.corrcoef(aligned[brain], truth[brain])[0, 1] > 0.95
    assert np.corrcoef(aligned[brain], truth[:, :, ::-1][brain])[0, 1] < 0.5  # what a flip bug gives
    lesion = head["labels"] == LESION
    assert lesion[:, :, SHAPE[2] // 2 :].sum() > 0.9 * lesion.sum()  # the lesion is on the patient's left
    assert abs(aligned[lesion].mean() - truth[lesion].mean()) < 3.0  # hypodense lesion where it belongs
    assert abs(truth[:, :, ::-1][lesion].mean() - truth[lesion].mean()) > 6.0  # and a mirror would miss it


def test_field_reaches_the_transform_in_lps_millimetres(head, monkeypatch) -> None:
    """A network field of +2 px towards the patient's left and +1 px towards posterior must
    become (+2 sx, +1 sy, 0) mm in LPS, whatever the array order of the fixed volume."""
    # index 0 -> anterior, index 1 -> superior, index 2 -> right (a permuted, flipped frame)
    direction = np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], float)
    spacing = (1.0, 3.0, 1.2)
    mri = np.transpose(head["mri"], (1, 0, 2))  # any array: only geometry matters here
    ct = np.transpose(head["ct"], (1, 0, 2))
    fixed, moving = _image(mri, spacing, direction=direction), _image(ct, spacing, direction=direction)
    fake = _FakeFuser(_constant_field(2.0, 1.0))
    _use_fake(monkeypatch, fake)
    result = register_and_fuse_volumes(fixed, moving, "CT", prealign=False, slice_sigma_mm=0.0)
    vectors = _array(result.displacement).reshape(-1, 3)
    moved = np.abs(vectors).sum(axis=1) > 0
    assert moved.mean() > 0.5 and len(fake.fixed_slices) == result.network_slices
    expected = np.array([2.0 * spacing[2], 1.0 * spacing[0], 0.0])  # x' is index 2, y' is index 0
    np.testing.assert_allclose(vectors[moved], np.broadcast_to(expected, vectors[moved].shape), atol=1e-5)
    # a point in a slice that went through the network moves by exactly that vector
    z_index = int(np.argmax(np.abs(_array(result.displacement)).sum(axis=(0, 2, 3)) > 0))  # numpy (k, j, i)
    p = np.asarray(fixed.TransformIndexToPhysicalPoint((10, z_index + 5, 20)))
    np.testing.assert_allclose(result.transform.TransformPoint(tuple(p)), p + expected, atol=1e-5)
    back = inverse_transform(result).TransformPoint(result.transform.TransformPoint(tuple(p)))
    np.testing.assert_allclose(back, p, atol=1e-5)
    assert result.inverse_consistency_mm < 1e-5
    np.testing.assert_allclose(_array(result.jacobian), 1.0, atol=1e-6)
    # fused = the fake's max(fixed, moving), stacked back in the volume's own array order
    expected_fused = np.maximum(_array(normalise_volume(fixed, "MRI")), _array(normalise_volume(moving, "CT")))
    np.testing.assert_allclose(_array(result.fused), expected_fused, atol=1e-6)


def test_axis_selection_with_a_permuted_direction_matrix(head, monkeypatch) -> None:
    """The same physical volume stored in another array order gives the same axial slices."""
    plain = _image(head["mri"])
    # index axes of the permuted copy: i -> z of the plain one, j -> x, k -> y
    permuted = _image(np.transpose(head["mri"], (1, 2, 0)), spacing=(SPACING[2], SPACING[0], SPACING[1]),
                      direction=np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float))
    p = plain.TransformIndexToPhysicalPoint((5, 7, 3))
    assert plain[5, 7, 3] == permuted[permuted.TransformPhysicalPointToIndex(p)]  # same content
    ct_plain = _image(head["ct"])
    ct_permuted = _image(np.transpose(head["ct"], (1, 2, 0)), spacing=(SPACING[2], SPACING[0], SPACING[1]),
                         direction=np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float))
    slices = {}
    for name, fixed, moving, axis in (("plain", plain, ct_plain, "axial"), ("permuted", permuted, ct_permuted, "axial"),
                                      ("coronal", plain, ct_plain, "coronal")):
        fake = _FakeFuser(_constant_field(0.0, 0.0))
        _use_fake(monkeypatch, fake)
        result = register_and_fuse_volumes(fixed, moving, "CT", prealign=False, axis=axis)
        assert result.frame is not None
        slices[name] = np.stack(fake.fixed_slices)
    assert slices["plain"].shape[1:] == (64, 64)
    np.testing.assert_array_equal(slices["plain"], slices["permuted"])
    # coronal slices of the plain volume: rows run inferior (superior at the top), columns to
    # the patient's left, slices towards posterior
    mri_n = _array(normalise_volume(plain, "MRI"))
    coronal = slices["coronal"]
    assert coronal.shape[1:] == (SHAPE[0], SHAPE[2])
    rows = [next(j for j in range(SHAPE[1]) if np.array_equal(mri_n[::-1, j, :], c)) for c in coronal]
    assert rows == sorted(rows) and len(rows) > SHAPE[1] // 2


# ---------------------------------------------------------------------------------- formats, colour


def test_dicom_series_input(head, tiny_weights, tmp_path: Path) -> None:
    fixed = _image(head["mri"].astype(np.int16), direction=_rotation(z_deg=10.0))
    moving = _image(head["ct"], direction=_rotation(z_deg=10.0))
    write_dicom_series(fixed, tmp_path / "mri", modality="MR")
    write_dicom_series(moving, tmp_path / "ct", modality="CT")
    result, paths = fuse_volume_files(tmp_path / "mri", tmp_path / "ct", "CT", tmp_path / "out",
                                      weights=tiny_weights["CT"], device="cpu", prealign=False)
    fixed_read = read_volume(tmp_path / "mri")
    assert _same_geometry(result.fused, fixed_read)
    np.testing.assert_allclose(fixed_read.GetOrigin(), fixed.GetOrigin(), atol=1e-4)
    assert ncc(_array(result.aligned), head["ct"].astype(np.float32)) > 0.99
    assert all(p.is_file() for p in paths.values())


def test_pet_gives_a_colour_fused_volume_and_aligned_in_original_units(head, tiny_weights) -> None:
    fixed, moving = _image(head["mri"]), _image(head["pet"])
    result = register_and_fuse_volumes(fixed, moving, "PET", weights=tiny_weights["PET"], device="cpu", prealign=False)
    assert result.fused.GetNumberOfComponentsPerPixel() == 3
    assert result.fused.GetPixelID() == sitk.sitkVectorFloat32
    rgb = _array(result.fused)
    assert rgb.min() >= 0 and rgb.max() <= 1
    inside = head["labels"] > 0
    assert np.ptp(rgb[inside], axis=-1).mean() > 0.05  # coloured, not grey
    assert _array(result.aligned).max() > 4.0  # SUV-like units of the input, not [0, 1]


# ---------------------------------------------------------------------------------- bad input


def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _bad_cases(head, tmp: Path) -> dict[str, tuple]:
    mri, ct = _image(head["mri"]), _image(head["ct"])
    fixed = _write(mri, tmp / "mri.nii.gz")
    moving = _write(ct, tmp / "ct.nii.gz")
    slice_2d = _write(sitk.GetImageFromArray(head["mri"][12]), tmp / "slice.nii.gz")
    four_d = _write(sitk.JoinSeries([ct, ct]), tmp / "ct4d.nii.gz")
    coarse = _image(head["ct"], spacing=(1.0, 1.0, 60.0))
    far = _image(head["ct"], origin=(600.0, 0.0, 0.0))
    pet = _write(_image(head["pet"]), tmp / "pet.nii.gz")
    return {
        "2D file": (slice_2d, moving, "CT", {}, "2D image"),
        "4D file": (fixed, four_d, "CT", {}, "4D image"),
        "absurd spacing": (fixed, _write(coarse, tmp / "coarse.mha"), "CT", {}, "absurd voxel spacing"),
        "fixed is a CT": (moving, moving, "CT", {}, "looks like a CT"),
        "PET is a CT": (fixed, moving, "PET", {}, "looks like a CT"),
        "no overlap": (fixed, _write(far, tmp / "far.nii.gz"), "CT", {"prealign": False}, "overlaps"),
        "CT model for PET": (fixed, pet, "PET", {"weights": "CT"}, "trained for CT"),
        "unknown axis": (fixed, moving, "CT", {"axis": "oblique"}, "slicing axis"),
    }


def test_bad_inputs_raise_and_write_nothing(head, tiny_weights, tmp_path: Path) -> None:
    cases = _bad_cases(head, tmp_path)
    for name, (fixed, moving, modality, options, message) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        weights = tiny_weights[options.pop("weights", modality)]
        with pytest.raises(InputError, match=message):
            fuse_volume_files(fixed, moving, modality, out, weights=weights, device="cpu", **options)
        assert not out.exists() or not any(out.iterdir()), name


def test_nan_spacing_and_degenerate_direction_are_refused(head) -> None:
    image = _image(head["mri"])
    image.SetSpacing((float("nan"), 1.0, 1.0))
    with pytest.raises(InputError, match="absurd voxel spacing"):
        check_volume(image, "nan.nii")
    flat = _image(head["mri"], direction=np.array([[1, 0, 0], [0, 1, 0], [0, 0.5, 0.5]], float))
    with pytest.raises(InputError, match="direction matrix"):
        check_volume(flat, "flat.nii")


def test_slices_side_by_side_give_the_same_volume(head, tiny_weights, monkeypatch) -> None:
    """Two network calls at once, one torch thread each, must give the volume of one at a time
    and hand torch its thread count back."""
    calls: list[tuple[str, int]] = []
    fuse_batch = Fuser.fuse_batch

    def recorded(self, pairs, names=None):
        calls.append((threading.current_thread().name, torch.get_num_threads()))
        return fuse_batch(self, pairs, names)

    monkeypatch.setattr(Fuser, "fuse_batch", recorded)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    volumes = [_image(head["mri"]), _image(head["ct"])]
    options = dict(weights=tiny_weights["CT"], device="cpu", prealign=False)
    try:
        one = register_and_fuse_volumes(*volumes, "CT", slice_workers=1, **options)
        alone, calls[:] = list(calls), []
        two = register_and_fuse_volumes(*volumes, "CT", **options)  # the default with 2 threads
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert {n for n, _ in alone} == {threading.main_thread().name} and {t for _, t in alone} == {2}
    assert len({n for n, _ in calls}) == 2 and {t for _, t in calls} == {1} and len(calls) == two.network_slices
    for a, b in ((one.displacement, two.displacement), (one.fused, two.fused)):
        assert np.abs(_array(a) - _array(b)).max() < 1e-4
    with pytest.raises(InputError, match="slice_workers must be at least 1"):
        register_and_fuse_volumes(*volumes, "CT", slice_workers=0, **options)


def test_cancel_aborts_and_writes_nothing(head, tiny_weights, tmp_path: Path) -> None:
    fixed = _write(_image(head["mri"]), tmp_path / "mri.nii.gz")
    moving = _write(_image(head["ct"]), tmp_path / "ct.nii.gz")
    seen: list[str] = []
    with pytest.raises(Cancelled, match="network"):
        fuse_volume_files(fixed, moving, "CT", tmp_path / "out", weights=tiny_weights["CT"], device="cpu",
                          prealign=False, batch_size=4, progress=lambda f, m: seen.append(m),
                          cancel=lambda: any(m.startswith("network") for m in seen))
    assert seen[-1].startswith("network: slice 1/")  # stopped at the next batch
    assert not (tmp_path / "out").exists()


def test_failed_write_leaves_nothing(head, monkeypatch, tmp_path: Path) -> None:
    _use_fake(monkeypatch, _FakeFuser(_constant_field(0.5, 0.0)))
    result = register_and_fuse_volumes(_image(head["mri"]), _image(head["ct"]), "CT", prealign=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")

    def broken(*args, **kwargs):
        raise RuntimeError("sitk::ERROR: disk full")

    monkeypatch.setattr(sitk, "WriteTransform", broken)
    with pytest.raises(InputError, match="disk full"):
        write_volume_result(result, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_ct_to_mri_volumes(volumes_dir: Path, tiny_weights, tmp_path: Path) -> None:
    """The real Visible Human head: MI improves after pre-alignment; inverse consistency is small."""
    mri, ct = read_volume(volumes_dir / "vm_head_mri.mha"), read_volume(volumes_dir / "vm_head_ct.mha")
    shipped = checkpoint.default_weights_path("CT")
    weights = shipped if shipped.is_file() else tiny_weights["CT"]
    result, paths = fuse_volume_files(volumes_dir / "vm_head_mri.mha", volumes_dir / "vm_head_ct.mha", "CT",
                                      tmp_path, weights=weights, device="cpu")
    centred = sitk.CenteredTransformInitializer(mri, ct, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    before = sitk.Resample(ct, mri, centred, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mi_before = mutual_information(_array(mri).astype(float), _array(before))
    mi_after = mutual_information(_array(mri).astype(float), _array(result.aligned))
    assert mi_after > 1.2 * mi_before, (mi_before, mi_after)
    # the CT is an 8 mm slab through the vertex (a small skull cap, see its slices): it must land
    # in the top slices of the 33-slice whole-head MRI, not mid-head
    slab = np.nonzero((_array(result.aligned) > 500).sum(axis=(1, 2)))[0]
    assert slab.size and slab.min() >= 24, slab
    assert result.overlap > 0.5
    assert result.inverse_consistency_mm < 1.0
    assert _same_geometry(result.fused, mri)
    assert ncc(_array(sitk.Resample(ct, mri, read_displacement_transform(paths["transform"]), sitk.sitkLinear,
                                    0.0, sitk.sitkFloat32)), _array(result.aligned)) > 0.99


@pytest.mark.slow
def test_trained_model_reduces_endpoint_error_of_a_known_deformation(head) -> None:
    """Shipped weights: a known in-plane elastic deformation (the same on every slice) is
    partly recovered: the endpoint error in mm is below that of the identity."""
    weights = checkpoint.default_weights_path("CT")
    if not weights.is_file():
        pytest.skip(f"shipped weights not found at {weights}")
    shape = (16, 128, 128)
    pair = phantom_pair("CT", shape, seed=5)
    mis = random_misalignment(shape[1:], seed=1, max_rotation_deg=0, max_scale=0, max_shear=0,
                              max_translation=0, max_elastic=10.0)
    moving = np.stack([mis.apply(s) for s in _hounsfield(pair.other).astype(np.float32) + 1000.0]) - 1000.0
    fixed_image = _image(pair.mri * 1000, spacing=(1.0, 1.0, 2.0))
    result = register_and_fuse_volumes(fixed_image, _image(moving, spacing=(1.0, 1.0, 2.0)), "CT",
                                       weights=weights, device="cpu", prealign=False)
    from bsafusion.transforms import displacement_image_to_field

    recovered = displacement_image_to_field(result.displacement)
    truth = np.zeros_like(recovered)
    truth[:2] = mis.inverse[:, None]  # in-plane, the same on every slice
    mask = pair.labels > 0
    err = endpoint_error(recovered, truth, mask=mask, spacing=(1.0, 1.0, 2.0))
    err_identity = endpoint_error(np.zeros_like(recovered), truth, mask=mask, spacing=(1.0, 1.0, 2.0))
    print(f"EPE recovered {err:.3f} mm, identity {err_identity:.3f} mm")
    assert err < 0.8 * err_identity, (err, err_identity)
