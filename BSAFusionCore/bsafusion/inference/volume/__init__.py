"""3D volumes: register and fuse whole CT/PET/SPECT-MRI volumes with the 2D network.

The network is 2D (as in the paper); this package makes it serve volumes in physical space.
``fixed`` is the MRI and defines the output geometry; ``moving`` is the CT, PET or SPECT.

1. checks and per-volume intensity scaling (:mod:`bsafusion.inference.intensity`);
2. mutual-information affine pre-alignment (:func:`bsafusion.inference.prealign.prealign_affine`);
3. the moving volume is resampled into the fixed grid;
4. slices along the chosen plane (axial by default, in the fixed volume's LPS terms) go
   through the network in batches (:mod:`bsafusion.inference.volume.geometry` says how the plane is
   found and how slices are oriented);
5. in-plane fields are stacked (through-plane component 0), smoothed across slices, converted
   to millimetres and composed with the affine into one ITK transform (fixed -> moving
   points), through which the aligned volume is resampled.

Conventions in detail: :mod:`bsafusion.inference.volume.pipeline` (stages, fused/aligned/transform) and
:mod:`bsafusion.inference.volume.export` (files), and ``BSAFusionCore/docs/volumes.md``.

Examples
--------
>>> from bsafusion.inference.volume import read_volume, register_and_fuse_volumes, write_volume_result
>>> mri, ct = read_volume("mri.nii.gz"), read_volume("ct_dicom_folder")        # doctest: +SKIP
>>> result = register_and_fuse_volumes(mri, ct, "CT")                           # doctest: +SKIP
>>> write_volume_result(result, "out", stem="case1")                            # doctest: +SKIP
"""

from bsafusion.inference.volume.export import OUTPUT_FILES, fuse_volume_files, fuse_volume_images, write_volume_result
from bsafusion.inference.volume.geometry import (
    AXES,
    MAX_SPACING_MM,
    MIN_OVERLAP,
    SliceFrame,
    check_volume,
    coverage_mask,
    overlap_fraction,
    read_volume,
    slice_frame,
)
from bsafusion.inference.volume.pipeline import (
    PREALIGN_SAMPLES,
    PREALIGN_SPACING_MM,
    SLICE_SIGMA_MM,
    Cancelled,
    VolumeResult,
    console_progress,
    inverse_transform,
    prealign_settings,
    register_and_fuse_volumes,
)

__all__ = [
    "AXES",
    "MAX_SPACING_MM",
    "MIN_OVERLAP",
    "OUTPUT_FILES",
    "PREALIGN_SAMPLES",
    "PREALIGN_SPACING_MM",
    "SLICE_SIGMA_MM",
    "Cancelled",
    "SliceFrame",
    "VolumeResult",
    "check_volume",
    "console_progress",
    "coverage_mask",
    "fuse_volume_files",
    "fuse_volume_images",
    "inverse_transform",
    "overlap_fraction",
    "prealign_settings",
    "read_volume",
    "register_and_fuse_volumes",
    "slice_frame",
    "write_volume_result",
]
