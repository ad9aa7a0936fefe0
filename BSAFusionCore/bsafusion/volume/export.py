"""Write a :class:`~bsafusion.volume.pipeline.VolumeResult` to disk, all files or none.

Files (``<stem>`` defaults to ``bsafusion``), all in the fixed volume's geometry:

==================================  ============================================================
``<stem>_fused.nii.gz``             fused volume, float32 [0, 1] (RGB vector image for PET/SPECT)
``<stem>_aligned.nii.gz``           moving volume in the fixed geometry, original units, float32
``<stem>_transform.h5``             **total transform** fixed -> moving points: an ITK
                                    ``CompositeTransform`` (pre-alignment affine + displacement
                                    field, float64, mm, LPS) in HDF5, the only ITK transform
                                    file format that holds both; ``sitk.ReadTransform`` reads it
                                    back and ``sitk.Resample(moving, fixed, T)`` gives the
                                    aligned volume; 3D Slicer loads it (Add Data, or
                                    ``slicer.util.loadTransform``) as one transform node to set
                                    as the moving volume's parent. Not compressed (ITK writes
                                    HDF5 transforms uncompressed): 24 bytes per fixed voxel.
``<stem>_affine.tfm``               the pre-alignment alone (text ITK transform)
``<stem>_inverse_displacement.nii.gz``  inverse of the deformable part (vector float32, mm, LPS)
``<stem>_jacobian.nii.gz``          Jacobian determinant of the deformable part, float32
==================================  ============================================================

Everything is written into a hidden temporary folder inside ``out_dir`` and moved into place
only when every file is complete; on any failure the temporary folder is removed, files
already moved are removed again, and the error propagates, so ``out_dir`` never holds a
partial result. Existing files with the same names are replaced.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from bsafusion.errors import InputError
from bsafusion.io import _reason
from bsafusion.volume.geometry import read_volume
from bsafusion.volume.pipeline import VolumeResult, register_and_fuse_volumes

__all__ = ["OUTPUT_FILES", "write_volume_result", "fuse_volume_files"]

#: Output key -> file name pattern (``{stem}`` is replaced).
OUTPUT_FILES: dict[str, str] = {
    "fused": "{stem}_fused.nii.gz",
    "aligned": "{stem}_aligned.nii.gz",
    "transform": "{stem}_transform.h5",
    "affine": "{stem}_affine.tfm",
    "inverse_displacement": "{stem}_inverse_displacement.nii.gz",
    "jacobian": "{stem}_jacobian.nii.gz",
}


def _write_all(result: VolumeResult, folder: Path, names: dict[str, str]) -> None:
    sitk.WriteImage(result.fused, str(folder / names["fused"]), True)
    sitk.WriteImage(result.aligned, str(folder / names["aligned"]), True)
    sitk.WriteTransform(result.transform, str(folder / names["transform"]))
    sitk.WriteTransform(result.affine if result.affine is not None else sitk.AffineTransform(3),
                        str(folder / names["affine"]))
    inverse = sitk.Cast(result.inverse_displacement, sitk.sitkVectorFloat32)
    sitk.WriteImage(inverse, str(folder / names["inverse_displacement"]), True)
    sitk.WriteImage(sitk.Cast(result.jacobian, sitk.sitkFloat32), str(folder / names["jacobian"]), True)


def write_volume_result(result: VolumeResult, out_dir: str | Path, stem: str = "bsafusion") -> dict[str, Path]:
    """Write every output of ``result`` into ``out_dir`` atomically (see the module docstring).

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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None
    names = {key: pattern.format(stem=stem) for key, pattern in OUTPUT_FILES.items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".tmp", dir=out_dir))
    moved: list[Path] = []
    try:
        try:
            _write_all(result, tmp, names)
        except RuntimeError as exc:
            raise InputError(f"{out_dir}: cannot write the volume results ({_reason(exc)})") from None
        for name in names.values():
            os.replace(tmp / name, out_dir / name)
            moved.append(out_dir / name)
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {key: out_dir / name for key, name in names.items()}


def fuse_volume_files(
    fixed_path: str | Path,
    moving_path: str | Path,
    modality: str,
    out_dir: str | Path,
    stem: str | None = None,
    **options: Any,
) -> tuple[VolumeResult, dict[str, Path]]:
    """Read two volumes (files or DICOM folders), register and fuse them, write the outputs.

    ``options`` go to :func:`~bsafusion.volume.pipeline.register_and_fuse_volumes` (weights,
    device, prealign, axis, batch_size, progress, cancel...). ``stem`` defaults to
    ``bsafusion``. Errors name the offending file; on any error or cancellation nothing is
    written.
    """
    fixed = read_volume(fixed_path)
    moving = read_volume(moving_path)
    result = register_and_fuse_volumes(fixed, moving, modality, names=(str(fixed_path), str(moving_path)), **options)
    return result, write_volume_result(result, out_dir, stem or "bsafusion")
