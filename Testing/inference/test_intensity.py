"""Per-volume intensity normalisation and modality checks (bsafusion.inference.intensity)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from bsafusion.errors import InputError
from bsafusion.inference.intensity import (
    CT_WINDOW,
    check_modality,
    intensity_range,
    looks_like_hounsfield,
    normalise_volume,
)


def _volume(values: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(values))
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((-10.0, 5.0, 30.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image


def _ct_hu(rng: np.random.Generator) -> np.ndarray:
    """Air around a 'head' of soft tissue with a few bone voxels, int16 HU."""
    hu = np.full((6, 20, 20), -1000, np.int16)
    hu[:, 4:16, 4:16] = rng.integers(0, 80, size=(6, 12, 12))
    hu[:, 4, 4:16] = 1200
    return hu


def test_ct_in_hounsfield_units_uses_the_window() -> None:
    hu = _ct_hu(np.random.default_rng(0))
    out = sitk.GetArrayFromImage(normalise_volume(_volume(hu), "CT"))
    low, high = CT_WINDOW
    expected = np.clip((hu.astype(np.float64) - low) / (high - low), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[0, 0, 0] == 0.0 and out[0, 4, 8] == 1.0  # air black, bone white
    # hand-computed: grey matter at 40 HU -> (40 + 15) / 120
    assert intensity_range(hu, "ct") == CT_WINDOW
    assert np.isclose((40 - low) / (high - low), 55 / 120)


def test_ct_not_in_hounsfield_units_falls_back_to_percentiles() -> None:
    shifted = _ct_hu(np.random.default_rng(0)).astype(np.int32) + 1024  # HU + 1024, as some files store CT
    assert not looks_like_hounsfield(shifted)
    low, high = intensity_range(shifted, "CT")
    assert (low, high) == tuple(np.percentile(shifted, (0.5, 99.5)))


def test_mri_percentiles_are_per_volume_not_per_slice() -> None:
    rng = np.random.default_rng(1)
    mri = rng.uniform(0, 100, size=(4, 32, 32))
    mri[2] *= 0.5  # a darker slice (coil sensitivity): must stay darker after scaling
    mri[0, 0, 0] = 1e6  # one hot voxel must not darken the volume
    out = sitk.GetArrayFromImage(normalise_volume(_volume(mri), "MRI"))
    assert out.max() == 1.0 and out.min() == 0.0
    assert out[2].mean() == pytest.approx(0.5 * out[3].mean(), rel=0.05)
    assert out[1].mean() > 0.4  # not crushed by the outlier
    # invariant to the scanner's linear scaling
    again = sitk.GetArrayFromImage(normalise_volume(_volume(3.0 * mri + 7.0), "MRI"))
    np.testing.assert_allclose(again, out, atol=1e-5)


def test_pet_is_scaled_without_offset_by_a_robust_maximum() -> None:
    rng = np.random.default_rng(2)
    pet = np.zeros((4, 32, 32))
    pet[:, 8:24, 8:24] = rng.uniform(1.0, 6.0, size=(4, 16, 16))  # SUV-like values
    pet[0, 0, 1] = -0.3  # reconstruction undershoot
    pet[1, 10, 10] = 500.0  # a hot voxel
    low, high = intensity_range(pet, "PET")
    assert low == 0.0
    assert high == pytest.approx(np.percentile(pet[pet > 0], 99.5))
    out = sitk.GetArrayFromImage(normalise_volume(_volume(pet), "pet"))
    np.testing.assert_allclose(out, np.clip(pet / high, 0, 1), atol=1e-6)
    assert out[0, 0, 1] == 0.0 and out[1, 10, 10] == 1.0
    below = (pet > 0) & (pet < high)  # ratios between regions (what an SUV conveys) are kept
    assert below.sum() > 900
    assert out[below].max() / out[below].min() == pytest.approx(pet[below].max() / pet[below].min(), rel=1e-4)


def test_normalise_keeps_geometry_and_returns_float32() -> None:
    image = _volume(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4))
    out = normalise_volume(image, "MRI")
    assert out.GetPixelID() == sitk.sitkFloat32
    assert out.GetOrigin() == image.GetOrigin()
    assert out.GetSpacing() == image.GetSpacing()
    assert out.GetDirection() == image.GetDirection()


@pytest.mark.parametrize(
    "values, modality, message",
    [
        (np.full((3, 4, 4), 7.0), "MRI", "constant"),
        (np.zeros((3, 4, 4)), "PET", "no positive activity"),
        (np.array([[[0.0, np.nan], [1.0, 2.0]]] * 2), "MRI", "NaN"),
        (np.ones((2, 2, 2)), "XRAY", "unknown modality"),
    ],
)
def test_unusable_volumes_raise(values: np.ndarray, modality: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        normalise_volume(_volume(values), modality, name="case.nii.gz")


def test_colour_volume_is_refused() -> None:
    rgb = sitk.GetImageFromArray(np.zeros((2, 4, 4, 3), np.float32), isVector=True)
    with pytest.raises(InputError, match="3-component"):
        normalise_volume(rgb, "PET")


def test_modality_mismatch_is_detected() -> None:
    ct = _volume(_ct_hu(np.random.default_rng(3)))
    with pytest.raises(InputError, match="looks like a CT"):
        check_modality(ct, "MRI", "fixed.nii.gz")
    with pytest.raises(InputError, match="looks like a CT"):
        check_modality(ct, "PET", "moving.nii.gz")
    check_modality(ct, "CT")  # fine
    mr = _volume(np.random.default_rng(4).uniform(0, 500, (3, 8, 8)))
    check_modality(mr, "MRI")
    mr.SetMetaData("0008|0060", "MR")
    with pytest.raises(InputError, match="DICOM Modality is MR"):
        check_modality(mr, "SPECT", "moving")
    mr.SetMetaData("0008|0060", "OT")  # other: says nothing
    check_modality(mr, "SPECT")
