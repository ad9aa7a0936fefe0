"""Pixel fields <-> ITK displacement fields in physical space (mm, LPS).

A field of :mod:`bsafusion.deform` (pixels of the fixed grid, channels x, y[, z], pulling the
moving image) becomes an ITK displacement field by ``d_mm = D @ (spacing * d_px)`` with ``D``
the fixed image's direction matrix. Because both follow the "fixed point -> moving point"
convention, no inversion is needed: ``sitk.Resample(moving, fixed, transform)`` with the
resulting :class:`SimpleITK.DisplacementFieldTransform` gives the aligned moving image, which
is also how 3D Slicer applies an ITK transform loaded as the moving volume's parent transform
(Slicer converts LPS files to its RAS scene itself).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _geometry(reference: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    n = reference.GetDimension()
    return np.array(reference.GetDirection(), dtype=np.float64).reshape(n, n), np.array(reference.GetSpacing())


def field_to_displacement_image(field: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Pixel field ``(n, *spatial)`` on ``reference``'s grid -> vector image in mm (float64).

    The result carries ``reference``'s origin, spacing and direction and can be wrapped in a
    ``sitk.DisplacementFieldTransform`` or written to ``.nii.gz`` / ``.mha`` / ``.h5``.
    """
    n = field.shape[0]
    if reference.GetDimension() != n:
        raise ValueError(f"{n}-D field for a {reference.GetDimension()}-D reference image")
    if tuple(field.shape[1:][::-1]) != tuple(reference.GetSize()):
        raise ValueError(f"field grid {field.shape[1:]} does not match reference size {reference.GetSize()[::-1]}")
    direction, spacing = _geometry(reference)
    flat = field.reshape(n, -1).astype(np.float64)
    mm = direction @ (spacing[:, None] * flat)
    vectors = np.moveaxis(mm.reshape(field.shape), 0, -1)
    image = sitk.GetImageFromArray(np.ascontiguousarray(vectors), isVector=True)
    image.CopyInformation(reference)
    return image


def displacement_image_to_field(image: sitk.Image) -> np.ndarray:
    """Inverse of :func:`field_to_displacement_image`: mm vectors -> pixel field ``(n, *spatial)``."""
    n = image.GetDimension()
    direction, spacing = _geometry(image)
    vectors = sitk.GetArrayFromImage(image).astype(np.float64)
    mm = np.moveaxis(vectors, -1, 0).reshape(n, -1)
    pix = (np.linalg.solve(direction, mm)) / spacing[:, None]
    return pix.reshape(n, *vectors.shape[:-1]).astype(np.float32)
