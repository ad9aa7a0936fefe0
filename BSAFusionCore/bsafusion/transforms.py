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

import os
from pathlib import Path
import numpy as np
import SimpleITK as sitk

from bsafusion.io import write_image


def _geometry(reference: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    n = reference.GetDimension()
    return np.array(reference.GetDirection(), dtype=np.float64).reshape(n, n), np.array(reference.GetSpacing())


def field_to_displacement_image(field: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Pixel field ``(n, *spatial)`` on ``reference``'s grid -> vector image in mm (float64).

    The result carries ``reference``'s origin, spacing and direction and can be wrapped in a
    ``sitk.DisplacementFieldTransform`` or written to ``.nii.gz`` / ``.mha`` / ``.h5``.
    Each vector component is accumulated in float64 straight into the interleaved output, one
    channel at a time, skipping zero coefficients and all-zero channels (a volume's through-plane
    channel, the zeros of an axis-aligned direction matrix): a 256 x 256 x 150 field then needs
    one output array instead of five float64 temporaries of its size.
    """
    n = field.shape[0]
    if reference.GetDimension() != n:
        raise ValueError(f"{n}-D field for a {reference.GetDimension()}-D reference image")
    if tuple(field.shape[1:][::-1]) != tuple(reference.GetSize()):
        raise ValueError(f"field grid {field.shape[1:]} does not match reference size {reference.GetSize()[::-1]}")
    direction, spacing = _geometry(reference)
    matrix = direction * spacing[None, :]  # d_mm = D @ (spacing * d_px)
    vectors = np.zeros((*field.shape[1:], n), dtype=np.float64)
    term = np.empty(field.shape[1:], dtype=np.float64)
    for j in (j for j in range(n) if field[j].any()):
        for i in np.flatnonzero(matrix[:, j]):
            np.multiply(field[j], matrix[i, j], out=term, dtype=np.float64)
            vectors[..., i] += term
    image = sitk.GetImageFromArray(vectors, isVector=True)
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


def write_displacement_transform(transform: sitk.Transform, reference: sitk.Image, path: str | os.PathLike) -> Path:
    """Write ``transform`` (fixed -> moving points, LPS mm) as one compressed displacement field.

    The file (``.nrrd``, ``.nii.gz``, ``.mha``) holds ``transform(x) - x`` on ``reference``'s grid
    (the fixed volume), float32 vectors in mm, gzip-compressed. Why not ITK's composite ``.h5``:
    ITK writes HDF5 transforms uncompressed at 24 bytes per voxel (225 MB for 256 x 256 x 150)
    and SimpleITK cannot compress them. 3D Slicer's transform storage node reads this file as
    one grid transform (converting LPS to RAS); :func:`read_displacement_transform` gives it
    back to SimpleITK. Folding an affine part into the field loses nothing inside the grid:
    linear interpolation of ``A(x + d(x)) - x`` equals ``A(x + interpolated d) - x`` because
    ``A`` is affine; outside the grid the file's transform is the identity.

    Raises
    ------
    InputError
        A write error, or a written file that does not read back the same
        (:func:`bsafusion.io.write_image`).
    """
    # ITK evaluates the transform in double and stores each vector rounded to float32
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat32, reference.GetSize(),
                                              reference.GetOrigin(), reference.GetSpacing(),
                                              reference.GetDirection())
    vectors = _round_mantissa(sitk.GetArrayViewFromImage(field), _KEPT_MANTISSA_BITS)
    image = sitk.GetImageFromArray(vectors, isVector=True)
    image.CopyInformation(field)
    return write_image(image, path)


#: Mantissa bits a written displacement keeps (of float32's 23): a relative error below 2**-17,
#: 0.1 micrometre on a 10 mm displacement. The dropped bits are what gzip cannot compress: at
#: 256 x 256 x 150 the file shrinks from 107 MB (float32 as computed) to 60 MB.
_KEPT_MANTISSA_BITS = 16


def _round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """float32 ``values`` rounded to ``bits`` mantissa bits (round half up on the magnitude)."""
    raw = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    drop = 23 - bits
    keep = np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    return ((raw + np.uint32(1 << (drop - 1))) & keep).view(np.float32)


def read_displacement_transform(path: str | os.PathLike) -> sitk.DisplacementFieldTransform:
    """The transform of a :func:`write_displacement_transform` file, as SimpleITK applies it."""
    field = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64)
    return sitk.DisplacementFieldTransform(field)
