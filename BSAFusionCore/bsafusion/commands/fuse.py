"""Register and fuse an unaligned pair: 2D slices, folders of slices, or 3D volumes.

2D (PNG/JPG/... or 2D NIfTI/MHA), per pair: <name>_fused.png (colour for PET/SPECT),
<name>_aligned.png, <name>_field.nii.gz (ITK displacement field on the fixed grid, physical
units, fixed -> moving points) and <name>_panel.png (fixed, moving, aligned, checkerboard,
fused). Two folders pair their files by name.

3D (NIfTI/NRRD/MHA files or DICOM series folders): optional rigid pre-alignment, slice-wise
network, and <stem>_transform.h5 (total ITK transform, LPS mm: sitk.Resample(moving, fixed,
transform) gives the aligned volume; 3D Slicer loads it as the moving volume's parent
transform), <stem>_fused/_aligned/_inverse_displacement/_jacobian.nii.gz in the fixed geometry.
See BSAFusionCore/docs/volumes.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "fuse"
HELP = "register + fuse a pair (2D files, folders of slices, or 3D volumes / DICOM series)"

_SLICE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixed", required=True, help="fixed image (MRI): file, folder of slices or DICOM folder")
    parser.add_argument("--moving", required=True, help="moving image (CT/PET/SPECT) of the same kind")
    parser.add_argument("--modality", required=True, type=str.upper, choices=["CT", "PET", "SPECT"])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--weights", help="weights file (default: the shipped model for --modality)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--refine-steps", type=int, metavar="N",
                        help="per-pair refinement of the network's field (default: 100 for CT, off for PET/SPECT; "
                             "0 = off); see bsafusion.refine")
    parser.add_argument("--no-prealign", action="store_true", help="volumes: skip the rigid pre-alignment")
    parser.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal"],
                        help="volumes: plane the 2D network runs in (default axial)")
    parser.add_argument("--stem", help="volumes: prefix of the output files (default bsafusion)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _is_volume(path: Path) -> bool:
    """3D input? A folder without 2D slice images is taken as a DICOM series."""
    if path.is_dir():
        return not any(p.suffix.lower() in _SLICE_SUFFIXES for p in path.iterdir())
    if path.suffix.lower() in _SLICE_SUFFIXES:
        return False
    from bsafusion.io import read_image

    return read_image(path).GetDimension() == 3


def run(args: argparse.Namespace) -> int:
    from bsafusion.errors import InputError

    fixed, moving = Path(args.fixed), Path(args.moving)
    for path in (fixed, moving):
        if not path.exists():
            raise InputError(f"{path}: not found")
    if _is_volume(fixed):
        from bsafusion.volume import console_progress, fuse_volume_files

        progress = None if args.no_progress else console_progress()
        result, paths = fuse_volume_files(fixed, moving, args.modality, args.out, args.stem, weights=args.weights,
                                          device=args.device, prealign=not args.no_prealign, axis=args.axis,
                                          progress=progress, refine_steps=args.refine_steps)
        for kind, path in paths.items():
            print(f"{kind:22s} {path}")
        print(f"inverse consistency: {result.inverse_consistency_mm:.3f} mm; "
              + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
        return 0

    from bsafusion.infer import Fuser, fuse_files, fuse_folder, pair_folder

    fuser = Fuser(args.modality, args.weights, args.device, refine=args.refine_steps)
    if fixed.is_dir():
        outputs = fuse_folder(pair_folder(fixed, moving), fuser, args.out, progress=not args.no_progress)
        print(f"fused {len(outputs)} pairs into {args.out}")
    else:
        for kind, path in fuse_files(fixed, moving, fuser, args.out).items():
            print(f"{kind:8s} {path}")
    return 0
