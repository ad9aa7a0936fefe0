"""Register and fuse an unaligned pair: 2D slices, folders of slices, or 3D volumes.

2D (PNG/JPG/... or 2D NIfTI/MHA), per pair: <name>_fused.png (colour for PET/SPECT),
<name>_aligned.png, <name>_field.nii.gz (ITK displacement field on the fixed grid, physical
units, fixed -> moving points) and <name>_panel.png (fixed, moving, aligned, checkerboard,
fused); <name> is the moving file's name without its suffix. Two folders pair their files by
name. A moving image on another grid than the fixed one is resampled into it in physical
space when both files store geometry (NIfTI/MHA/NRRD); PNG/JPEG/BMP/TIFF store none, so such a
pair must have the same size. Images need at least 16x16 pixels; a colour moving image is
refused for CT.

3D (NIfTI/NRRD/MHA files or DICOM series folders): optional rigid pre-alignment, slice-wise
network, and <stem>_transform.nrrd (the total transform as one compressed displacement field,
LPS mm: sitk.Resample(moving, fixed, bsafusion.transforms.read_displacement_transform(path))
gives the aligned volume; 3D Slicer loads it as the moving volume's parent transform),
<stem>_fused/_aligned/_inverse_displacement/_jacobian.nii.gz in the fixed geometry.
See BSAFusionCore/docs/volumes.md.

Outputs and errors: --out is checked before anything is computed. A pair's (or a volume's)
outputs are written into a hidden staging folder inside --out, read back, and published
together, or not at all on any error or interruption (Ctrl-C, SIGTERM); a staging folder left
by a killed run is removed by the next run into the same folder; concurrent runs into one
folder each publish a complete set (the later wins). Unusable input prints one line naming the
file and exits with status 2. A folder run reports and continues: every good pair is fused and
kept, then the failed pairs are named on one line and the exit status is 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bsafusion.modality import MOVING

NAME = "fuse"
HELP = "register + fuse a pair (2D files, folders of slices, or 3D volumes / DICOM series)"

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixed", required=True, help="fixed image (MRI): file, folder of slices or DICOM folder")
    parser.add_argument("--moving", required=True, help="moving image (CT/PET/SPECT) of the same kind")
    parser.add_argument("--modality", required=True, type=str.upper, choices=MOVING)
    parser.add_argument("--out", required=True,
                        help="output folder (created; checked before computing; outputs appear all at once)")
    parser.add_argument("--weights", help="weights file (default: the shipped model for --modality)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--refine-steps", type=int, metavar="N",
                        help="per-pair refinement of the network's field (default: the modality's, off for all "
                             "three; 0 = off); see bsafusion.inference.refine")
    parser.add_argument("--no-prealign", action="store_true", help="volumes: skip the rigid pre-alignment")
    parser.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal"],
                        help="volumes: plane the 2D network runs in (default axial)")
    parser.add_argument("--stem", help="volumes: prefix of the output files (default bsafusion)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _is_slice_folder(path: Path) -> bool:
    """A folder holding 2D slice images (any other folder is taken as a DICOM series)."""
    from bsafusion.io import GEOMETRY_FREE_SUFFIXES, image_suffix

    return path.is_dir() and any(image_suffix(p) in GEOMETRY_FREE_SUFFIXES for p in path.iterdir())


def _fuse_folders(fixed: Path, moving: Path, args: argparse.Namespace) -> int:
    from bsafusion.errors import InputError
    from bsafusion.inference.fuser import Fuser, fuse_folder, pair_folder

    pairs = pair_folder(fixed, moving)
    fuser = Fuser(args.modality, args.weights, args.device, refine=args.refine_steps)
    outputs, failures = fuse_folder(pairs, fuser, args.out, progress=not args.no_progress)
    print(f"fused {len(outputs)} of {len(pairs)} pairs into {args.out}")
    if failures:
        shown = "; ".join(str(exc) for exc in failures[:3]) + ("; ..." if len(failures) > 3 else "")
        raise InputError(f"{len(failures)} of {len(pairs)} pairs skipped (the others are written): {shown}")
    return 0


def run(args: argparse.Namespace) -> int:
    from bsafusion.errors import InputError
    from bsafusion.io import check_output_dir

    fixed, moving = Path(args.fixed), Path(args.moving)
    for path in (fixed, moving):
        if not path.exists():
            raise InputError(f"{path}: not found")
    check_output_dir(args.out)
    if _is_slice_folder(fixed) != _is_slice_folder(moving):
        folder, other = (fixed, moving) if _is_slice_folder(fixed) else (moving, fixed)
        raise InputError(f"{folder}: a folder of slices, but {other} is not; give two folders of slices "
                         f"(paired by file name) or two files")
    if _is_slice_folder(fixed):
        return _fuse_folders(fixed, moving, args)
    from bsafusion.io import read_image

    # each input is read once: its dimension picks the path, and the path uses what was read
    fixed_image, moving_image = read_image(fixed), read_image(moving)
    if fixed_image.GetDimension() == 3:
        from bsafusion.inference.volume import console_progress, fuse_volume_images

        progress = None if args.no_progress else console_progress()
        result, paths = fuse_volume_images(fixed_image, moving_image, (str(fixed), str(moving)), args.modality,
                                           args.out, args.stem, weights=args.weights, device=args.device,
                                           prealign=not args.no_prealign, axis=args.axis, progress=progress,
                                           refine_steps=args.refine_steps)
        for kind, path in paths.items():
            print(f"{kind:22s} {path}")
        print(f"inverse consistency: {result.inverse_consistency_mm:.3f} mm; "
              + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
        return 0

    from bsafusion.inference.fuser import Fuser, fuse_images

    fuser = Fuser(args.modality, args.weights, args.device, refine=args.refine_steps)
    for kind, path in fuse_images(fixed_image, moving_image, fixed, moving, fuser, args.out).items():
        print(f"{kind:8s} {path}")
    return 0
