"""Register and fuse an unaligned pair (or two folders of pairs with the same file names).

Writes, per pair: <name>_fused.png (colour for PET/SPECT), <name>_aligned.png, <name>_field.nii.gz
(ITK displacement field on the fixed grid, physical units, aligns moving -> fixed) and
<name>_panel.png (fixed, moving, aligned, checkerboard, fused).
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "fuse"
HELP = "register + fuse a pair (files or folders)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixed", required=True, help="fixed image (MRI) or folder of them")
    parser.add_argument("--moving", required=True, help="moving image (CT/PET/SPECT) or folder with the same names")
    parser.add_argument("--modality", required=True, type=str.upper, choices=["CT", "PET", "SPECT"])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--weights", help="weights file (default: the shipped model for --modality)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from bsafusion.errors import InputError
    from bsafusion.infer import Fuser, fuse_files, fuse_folder, pair_folder

    fixed, moving = Path(args.fixed), Path(args.moving)
    if not fixed.exists():
        raise InputError(f"{fixed}: not found")
    if not moving.exists():
        raise InputError(f"{moving}: not found")
    fuser = Fuser(args.modality, args.weights, args.device)
    if fixed.is_dir():
        outputs = fuse_folder(pair_folder(fixed, moving), fuser, args.out, progress=not args.no_progress)
        print(f"fused {len(outputs)} pairs into {args.out}")
    else:
        paths = fuse_files(fixed, moving, fuser, args.out)
        for kind, path in paths.items():
            print(f"{kind:8s} {path}")
    return 0
