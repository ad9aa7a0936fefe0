"""Write a :class:`~bsafusion.inference.volume.pipeline.VolumeResult` to disk, all files or none.

Files (``<stem>`` defaults to ``bsafusion``), all in the fixed volume's geometry:

==================================  ============================================================
``<stem>_fused.nii.gz``             fused volume, float32 [0, 1] (RGB vector image for PET/SPECT)
``<stem>_aligned.nii.gz``           moving volume in the fixed geometry, original units, float32
``<stem>_transform.nrrd``           **total transform** fixed -> moving points (pre-alignment
                                    affine and displacement folded into one displacement field
                                    on the fixed grid, float32 mm, LPS, gzip-compressed;
                                    :func:`bsafusion.transforms.write_displacement_transform`):
                                    ``sitk.Resample(moving, fixed, T)`` with
                                    ``T = bsafusion.transforms.read_displacement_transform(path)``
                                    gives the aligned volume; 3D Slicer loads it (Add Data, or
                                    ``slicer.util.loadTransform``) as one grid transform node to
                                    set as the moving volume's parent. ITK's composite ``.h5``
                                    would keep the two parts apart but is written uncompressed
                                    (225 MB at 256 x 256 x 150).
``<stem>_affine.tfm``               the pre-alignment alone (text ITK transform)
``<stem>_inverse_displacement.nii.gz``  inverse of the deformable part (vector float32, mm, LPS)
``<stem>_jacobian.nii.gz``          Jacobian determinant of the deformable part, float32
==================================  ============================================================

The files are written :data:`bsafusion.io.WRITE_THREADS` at a time into a private hidden staging folder
inside ``out_dir``, read back, and moved into place only when every file is complete
(:func:`bsafusion.io.staged_outputs`); on any failure or interruption nothing is published, so
``out_dir`` never holds a partial result.
Existing files with the same names are replaced.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from bsafusion.errors import InputError
from bsafusion.io import check_output_dir, staged_outputs, write_image, write_in_parallel, write_transform
from bsafusion.transforms import write_displacement_transform
from bsafusion.inference.volume.geometry import read_volume
from bsafusion.inference.volume.pipeline import VolumeResult, register_and_fuse_volumes

__all__ = ["OUTPUT_FILES", "write_volume_result", "fuse_volume_files", "fuse_volume_images"]

#: Output key -> file name pattern (``{stem}`` is replaced).
OUTPUT_FILES: dict[str, str] = {
    "fused": "{stem}_fused.nii.gz",
    "aligned": "{stem}_aligned.nii.gz",
    "transform": "{stem}_transform.nrrd",
    "affine": "{stem}_affine.tfm",
    "inverse_displacement": "{stem}_inverse_displacement.nii.gz",
    "jacobian": "{stem}_jacobian.nii.gz",
}


def _probe_points(image: sitk.Image) -> list[tuple[float, ...]]:
    """Physical points of the grid's corners and centre (a written transform must map them alike)."""
    size = image.GetSize()
    corners = [tuple(float(c) for c in corner) for corner in np.ndindex(*(2,) * len(size))]
    index = [tuple(c * (s - 1) for c, s in zip(corner, size)) for corner in corners]
    index.append(tuple((s - 1) / 2 for s in size))
    return [image.TransformContinuousIndexToPhysicalPoint(i) for i in index]


def write_volume_result(result: VolumeResult, out_dir: str | Path, stem: str = "bsafusion") -> dict[str, Path]:
    """Write every output of ``result`` into ``out_dir``, all or none (see the module docstring).

    Returns
    -------
    dict mapping ``fused``, ``aligned``, ``transform``, ``affine``, ``inverse_displacement``
    and ``jacobian`` to the written paths.

    Raises
    ------
    InputError
        An unusable ``stem`` or a write error (permission, disk full); nothing is left behind.
    """
    if not stem or os.sep in stem or (os.altsep and os.altsep in stem) or stem.startswith("."):
        raise InputError(f"{stem!r}: output stem must be a plain file name prefix")
    out_dir = Path(out_dir)
    names = {key: pattern.format(stem=stem) for key, pattern in OUTPUT_FILES.items()}
    with staged_outputs(out_dir) as stage:
        write_in_parallel(_writers(result, {key: stage / name for key, name in names.items()}))
    return {key: out_dir / name for key, name in names.items()}


def _writers(result: VolumeResult, paths: dict[str, Path]) -> list[Callable[[], Path]]:
    """One call per output file, the largest (slowest to compress) first (:func:`bsafusion.io.write_in_parallel`)."""
    affine = result.affine if result.affine is not None else sitk.AffineTransform(3)
    probe = _probe_points(result.fused)
    return [
        lambda: write_displacement_transform(result.transform, result.fused, paths["transform"]),
        lambda: write_image(sitk.Cast(result.inverse_displacement, sitk.sitkVectorFloat32),
                            paths["inverse_displacement"]),
        lambda: write_image(result.fused, paths["fused"]),
        lambda: write_image(sitk.Cast(result.jacobian, sitk.sitkFloat32), paths["jacobian"]),
        lambda: write_image(result.aligned, paths["aligned"]),
        lambda: write_transform(affine, paths["affine"], probe),
    ]


def fuse_volume_files(
    fixed_path: str | Path,
    moving_path: str | Path,
    modality: str,
    out_dir: str | Path,
    stem: str | None = None,
    **options: Any,
) -> tuple[VolumeResult, dict[str, Path]]:
    """Read two volumes (files or DICOM folders), register and fuse them, write the outputs.

    ``options`` go to :func:`~bsafusion.inference.volume.pipeline.register_and_fuse_volumes` (weights,
    device, prealign, axis, batch_size, progress, cancel...). ``stem`` defaults to
    ``bsafusion``. Errors name the offending file; on any error or cancellation nothing is
    written. ``out_dir`` is checked before anything is computed.
    """
    check_output_dir(out_dir)
    return fuse_volume_images(read_volume(fixed_path), read_volume(moving_path), (str(fixed_path), str(moving_path)),
                              modality, out_dir, stem, **options)


def fuse_volume_images(
    fixed: sitk.Image,
    moving: sitk.Image,
    names: tuple[str, str],
    modality: str,
    out_dir: str | Path,
    stem: str | None = None,
    **options: Any,
) -> tuple[VolumeResult, dict[str, Path]]:
    """:func:`fuse_volume_files` on volumes already read; ``names`` (their paths) go into the errors.

    ``out_dir`` must have been checked (:func:`bsafusion.io.check_output_dir`) before the reads.
    """
    result = register_and_fuse_volumes(fixed, moving, modality, names=names, **options)
    return result, write_volume_result(result, out_dir, stem or "bsafusion")
