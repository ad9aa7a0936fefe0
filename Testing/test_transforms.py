"""The written displacement transform: where it maps points, what it rounds, what it weighs."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from bsafusion.transforms import (
    _round_mantissa,
    displacement_image_to_field,
    field_to_displacement_image,
    read_displacement_transform,
    write_displacement_transform,
)


def _reference() -> sitk.Image:
    image = sitk.Image([40, 36, 12], sitk.sitkFloat32)
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((-20.0, 15.0, 4.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # rotated, not symmetric
    return image


def _composite(reference: sitk.Image) -> sitk.Transform:
    rng = np.random.default_rng(0)
    vectors = rng.normal(0.0, 1.5, (*reference.GetSize()[::-1], 3))
    field = sitk.GetImageFromArray(vectors, isVector=True)
    field.CopyInformation(reference)
    rigid = sitk.Euler3DTransform((0.0, 0.0, 15.0), 0.05, -0.02, 0.1, (3.0, -2.0, 1.0))
    return sitk.CompositeTransform([rigid, sitk.DisplacementFieldTransform(field)])


def test_written_field_maps_grid_points_like_the_transform(tmp_path):
    reference = _reference()
    transform = _composite(reference)
    path = write_displacement_transform(transform, reference, tmp_path / "sub" / "t.nrrd")
    back = read_displacement_transform(path)
    rng = np.random.default_rng(1)
    for index in rng.integers(0, reference.GetSize(), (50, 3)):
        point = reference.TransformIndexToPhysicalPoint([int(i) for i in index])
        np.testing.assert_allclose(back.TransformPoint(point), transform.TransformPoint(point), atol=1e-4)
    written = sitk.ReadImage(str(path))
    assert written.GetPixelID() == sitk.sitkVectorFloat32
    assert written.GetDirection() == reference.GetDirection() and written.GetOrigin() == reference.GetOrigin()


def test_mantissa_rounding_is_nearest_within_its_bound():
    values = np.random.default_rng(2).normal(0.0, 20.0, 10_000).astype(np.float32)
    rounded = _round_mantissa(values, 16)
    relative = np.abs(rounded - values) / np.abs(values)
    assert relative.max() <= 2.0**-17 * (1 + 1e-6)
    assert np.all(np.sign(rounded) == np.sign(values))
    low = rounded.view(np.uint32) & np.uint32((1 << 7) - 1)
    assert not low.any()  # the 7 dropped mantissa bits are zero: what gzip then compresses
    assert np.array_equal(_round_mantissa(rounded, 16), rounded)
    truncated = (values.view(np.uint32) & np.uint32(0xFFFFFF80)).view(np.float32)
    assert np.abs(rounded - values).sum() < np.abs(truncated - values).sum()  # nearest, not towards 0


def test_pixel_field_becomes_millimetres_in_lps_through_an_oblique_frame():
    """d_mm = D (spacing * d_px) for every voxel, with an oblique direction (no zero
    coefficients) and an axis-aligned one (zeros skipped), and a zero through-plane channel."""
    rng = np.random.default_rng(3)
    oblique = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.3, -0.2, 0.5).GetMatrix()
    for direction in (oblique, _reference().GetDirection()):
        reference = _reference()
        reference.SetDirection(direction)
        field = rng.normal(0.0, 2.0, (3, *reference.GetSize()[::-1])).astype(np.float32)
        field[2] = 0.0
        image = field_to_displacement_image(field, reference)
        assert image.GetPixelID() == sitk.sitkVectorFloat64
        assert image.GetDirection() == reference.GetDirection() and image.GetOrigin() == reference.GetOrigin()
        d = np.asarray(direction).reshape(3, 3)
        expected = np.einsum("ij,j...->...i", d * np.asarray(reference.GetSpacing()), field.astype(np.float64))
        np.testing.assert_allclose(sitk.GetArrayFromImage(image), expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(displacement_image_to_field(image), field, atol=1e-5)
