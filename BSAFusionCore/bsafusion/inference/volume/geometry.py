"""Volume geometry: input checks, the slicing frame of the 2D network, overlap.

The slicing frame
-----------------
The network is 2D and was trained on axial slices shown the radiological way (the Harvard
atlas and :mod:`bsafusion.phantom`): columns run towards the patient's **left**, rows towards
**posterior** (face at the top). A volume's array axes can point anywhere (the direction
matrix says where), so before slicing, the fixed volume's array is **permuted and flipped**
(no interpolation, the same voxels) into a *working frame* ``(z', y', x')``:

============  =====================  ===================  ==========================
``axis``      slices along (z')      rows (y') towards     columns (x') towards
============  =====================  ===================  ==========================
axial         superior (S)           posterior (P)         left (L)
coronal       posterior (P)          inferior (I)          left (L)
sagittal      left (L)               inferior (I)          posterior (P)
============  =====================  ===================  ==========================

The slice axis is the array axis whose direction (a column of the direction matrix, in LPS)
has the largest absolute cosine with the patient axis of the chosen plane (S for axial,
P for coronal, L for sagittal); of the two remaining axes, the one closest to the column
direction becomes x'; the signs of those cosines decide the flips. For an oblique volume this
is the closest plane (the slices are the volume's own slices, never resampled).

Overlap
-------
:func:`overlap_fraction` is the physical volume where the (pre-aligned) moving volume covers
the fixed grid, divided by the **smaller** of the two volumes' extents, so a thin slab (a CT of
8 slices inside a whole-head MRI) still counts as fully overlapping, while volumes in
different scanner frames that were not pre-aligned count as 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from bsafusion.errors import InputError
from bsafusion.io import check_direction, read_image

__all__ = [
    "AXES",
    "MAX_SPACING_MM",
    "MIN_OVERLAP",
    "SliceFrame",
    "slice_frame",
    "check_volume",
    "read_volume",
    "coverage_mask",
    "extent_mm3",
    "overlap_fraction",
]

#: Working-frame directions (x', y', z') in LPS for each slicing plane.
AXES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),
}
#: Largest voxel spacing (mm) accepted; anything beyond is a broken header, not a scan.
MAX_SPACING_MM = 50.0
#: Smallest accepted overlap of the two volumes after pre-alignment (see :func:`overlap_fraction`).
MIN_OVERLAP = 0.10


@dataclass(frozen=True)
class SliceFrame:
    """How the fixed volume's array maps to the working frame ``(z', y', x')``.

    Attributes
    ----------
    axis : str
        ``"axial"``, ``"coronal"`` or ``"sagittal"``.
    index_axes : (int, int, int)
        Volume index axis (ITK order: 0 = i/x, 1 = j/y, 2 = k/z) that becomes x', y', z'.
    signs : (int, int, int)
        ``+1`` when the working axis runs along that index axis, ``-1`` when it is reversed.
    """

    axis: str
    index_axes: tuple[int, int, int]
    signs: tuple[int, int, int]

    @property
    def slice_index_axis(self) -> int:
        """Index axis (ITK order) along which slices are taken."""
        return self.index_axes[2]

    def _permutation(self, first: int, ndim: int) -> list[int]:
        # numpy axis of ITK index axis k is 2 - k; working numpy axes are (z', y', x')
        perm = list(range(ndim))
        perm[first : first + 3] = [first + 2 - self.index_axes[c] for c in (2, 1, 0)]
        return perm

    def _flips(self, first: int) -> tuple[int, ...]:
        return tuple(first + i for i, c in enumerate((2, 1, 0)) if self.signs[c] < 0)

    def to_working(self, array: np.ndarray, first: int = 0) -> np.ndarray:
        """View of ``array`` (spatial axes ``first .. first+2`` in volume order) in the working frame."""
        out = np.transpose(array, self._permutation(first, array.ndim))
        flips = self._flips(first)
        return np.flip(out, flips) if flips else out

    def from_working(self, array: np.ndarray, first: int = 0) -> np.ndarray:
        """Inverse of :meth:`to_working` (a view)."""
        flips = self._flips(first)
        out = np.flip(array, flips) if flips else array
        return np.transpose(out, np.argsort(self._permutation(first, array.ndim)))

    def field_from_working(self, field: np.ndarray) -> np.ndarray:
        """In-plane working field ``(2, D', H', W')`` (x', y' pixels) -> volume field ``(3, D, H, W)``.

        The result follows :mod:`bsafusion.deform` on the volume's own grid (channels x, y, z of
        the index axes, in pixels); the through-plane channel is 0.
        """
        spatial = self.from_working(field[0]).shape
        out = np.zeros((3, *spatial), dtype=np.float32)
        for c in (0, 1):
            out[self.index_axes[c]] = self.signs[c] * self.from_working(field[c])
        return out

    def spacing(self, image: sitk.Image) -> tuple[float, float, float]:
        """Voxel spacing along x', y', z' (mm)."""
        sp = image.GetSpacing()
        return tuple(float(sp[k]) for k in self.index_axes)  # type: ignore[return-value]


def slice_frame(direction: Sequence[float], axis: str = "axial") -> SliceFrame:
    """The working frame for slicing a volume of ``direction`` (9 numbers, row-major) along ``axis``.

    Examples
    --------
    >>> slice_frame((1, 0, 0, 0, 1, 0, 0, 0, 1), "axial")
    SliceFrame(axis='axial', index_axes=(0, 1, 2), signs=(1, 1, 1))
    >>> slice_frame((-1, 0, 0, 0, -1, 0, 0, 0, 1), "sagittal")  # RAS-stored NIfTI
    SliceFrame(axis='sagittal', index_axes=(1, 2, 0), signs=(-1, -1, -1))
    """
    name = str(axis).lower()
    if name not in AXES:
        raise InputError(f"unknown slicing axis {axis!r}; choose one of {', '.join(AXES)}")
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    cosines = np.asarray(AXES[name]) @ d  # [working axis w, index axis k] = t_w . d_k
    z = int(np.argmax(np.abs(cosines[2])))
    rest = [k for k in range(3) if k != z]
    x = max(rest, key=lambda k: abs(cosines[0, k]))
    y = rest[0] if rest[1] == x else rest[1]
    axes = (x, y, z)
    signs = tuple(-1 if cosines[w, k] < 0 else 1 for w, k in enumerate(axes))
    return SliceFrame(name, axes, signs)  # type: ignore[arg-type]


def check_volume(image: sitk.Image, name: str = "volume") -> sitk.Image:
    """Check that ``image`` is a usable 3D scalar volume; return it.

    Raises :class:`InputError` (message naming ``name``) for: not a SimpleITK image, 2D (or a
    single slice), 4D and more, colour/vector pixels, a spacing that is not finite, <= 0 or
    > :data:`MAX_SPACING_MM` mm, a direction matrix that is not orthonormal (sheared, scaled
    or degenerate: :func:`bsafusion.io.check_direction`).
    """
    if not isinstance(image, sitk.Image):
        raise InputError(f"{name}: expected a SimpleITK image, got {type(image).__name__}")
    dim, size = image.GetDimension(), image.GetSize()
    if dim == 2 or (dim == 3 and min(size) < 2):
        raise InputError(f"{name}: 2D image of size {size}; a 3D volume (at least 2 voxels per axis) is required")
    if dim != 3:
        raise InputError(f"{name}: {dim}D image of size {size}; a 3D volume is required")
    if image.GetNumberOfComponentsPerPixel() != 1:
        components = image.GetNumberOfComponentsPerPixel()
        raise InputError(f"{name}: {components}-component pixels; a scalar (grey) volume is required")
    spacing = image.GetSpacing()
    if not all(math.isfinite(s) and 0 < s <= MAX_SPACING_MM for s in spacing):
        raise InputError(f"{name}: absurd voxel spacing {spacing} mm (each must be > 0 and <= {MAX_SPACING_MM:g})")
    check_direction(image, name)
    if not all(math.isfinite(o) for o in image.GetOrigin()):
        raise InputError(f"{name}: origin {image.GetOrigin()} is not finite")
    return image


def read_volume(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D volume (NIfTI, NRRD, MHA/MHD, or a folder holding a DICOM series) and check it.

    Errors name the file: everything :func:`bsafusion.io.read_image` raises, plus the checks
    of :func:`check_volume` (a 2D file where a volume is expected, 4D, colour, absurd spacing).
    """
    return check_volume(read_image(path), str(path))


def extent_mm3(image: sitk.Image) -> float:
    """Physical volume (mm^3) of the image's grid: voxels times voxel volume."""
    return float(np.prod(np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())))


def coverage_mask(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """Boolean array on the fixed grid (numpy order): voxels that map inside the moving volume."""
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    covered = sitk.Resample(ones, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(covered).astype(bool)


def overlap_fraction(fixed: sitk.Image, moving: sitk.Image, covered: np.ndarray) -> float:
    """Covered physical volume / the smaller of the two volumes' extents (0 .. 1)."""
    voxel = float(np.prod(fixed.GetSpacing()))
    smaller = min(extent_mm3(fixed), extent_mm3(moving))
    return float(min(1.0, covered.sum() * voxel / smaller))
