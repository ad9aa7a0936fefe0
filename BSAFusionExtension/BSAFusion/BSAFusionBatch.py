"""Headless BSAFusion: register and fuse two volume files with Slicer, without a window.

Usage (any volume file Slicer reads: NRRD, NIfTI, MHA, one file of a DICOM series...)::

    Slicer --no-splash --no-main-window --python-script BSAFusionBatch.py \\
        --fixed mri.nrrd --moving ct.nii.gz --modality CT --out results/ [--scene results/scene.mrb]

It uses the module's own ``BSAFusionLogic`` (exactly what the GUI runs), writes the core's
output files to ``--out`` (``bsafusion.inference.volume.write_volume_result``: fused and aligned volumes,
the ITK displacement transform Slicer loads, the Jacobian map...), optionally the whole Slicer
scene as an ``.mrb`` bundle, and exits with status 0 on success, 2 for a problem with the input
(the message says which), 1 for anything else (with a traceback).

Dependencies are never installed silently: if PyTorch or the core are missing the script stops
with instructions, unless ``--install-dependencies`` is given.

Without Slicer, the same processing runs from plain Python through the core's command line:
``bsafusion fuse --fixed mri.nii.gz --moving ct.nii.gz --modality CT --out results/``.

Why a (hidden) module class below: Slicer loads every ``.py`` file in a module folder as a
scripted module, so this file declares a hidden ``BSAFusionBatch`` module to load quietly; the
batch code only runs when the file is executed as a script.
"""

import argparse
import os
import sys
import traceback
from typing import Optional, Sequence

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

EXIT_OK, EXIT_ERROR, EXIT_INPUT = 0, 1, 2


class BSAFusionBatch(ScriptedLoadableModule):
    """Hidden module: lets Slicer load this file quietly (see the module docstring)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "BSAFusion batch"
        self.parent.categories = ["Registration"]
        self.parent.contributors = ["The BSAFusion contributors"]
        self.parent.helpText = "Command-line entry point of BSAFusion; see BSAFusionBatch.py."
        self.parent.hidden = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="Slicer --no-main-window --python-script BSAFusionBatch.py",
        description="Register a CT/PET/SPECT volume to an MRI volume and fuse them (BSAFusion).")
    parser.add_argument("--fixed", required=True, help="fixed volume (MRI)")
    parser.add_argument("--moving", required=True, help="moving volume (CT in HU, PET or SPECT activity; grey)")
    parser.add_argument("--modality", required=True, type=str.upper, choices=["CT", "PET", "SPECT"])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--weights", default=None, help="weights file (default: the shipped model for --modality)")
    # Options left out are not passed on: the core's defaults apply (bsafusion.inference.volume.register_and_fuse_volumes).
    parser.add_argument("--device", default=None, help="auto, cpu or cuda[:N] (default: auto)")
    parser.add_argument("--axis", default=None, help="slice axis: axial, coronal or sagittal (default: axial)")
    parser.add_argument("--no-prealign", dest="prealign", action="store_false", default=None,
                        help="skip the rigid/affine pre-alignment")
    parser.add_argument("--refine-steps", type=int, default=None,
                        help="per-slice refinement steps after the network; 0 = off "
                             "(default: the modality's, on for CT, off for PET/SPECT)")
    parser.add_argument("--harden", action="store_true", help="harden the transform into the moving volume (in --scene)")
    parser.add_argument("--stem", default="bsafusion", help="prefix of the output file names")
    parser.add_argument("--scene", default=None, help="also save the Slicer scene here (.mrb)")
    parser.add_argument("--install-dependencies", action="store_true",
                        help="pip-install PyTorch and the BSAFusion core into Slicer's Python if missing")
    return parser


def _print_progress(fraction: float, message: str = "") -> None:
    print(f"[{100 * fraction:5.1f} %] {message}", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one pair; returns the exit status (0 ok, 2 input problem, 1 other error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or bad arguments (argparse printed why): end the script, not Slicer
        return int(exc.code or 0)
    moduleDir = os.path.dirname(os.path.abspath(__file__))
    if moduleDir not in sys.path:
        sys.path.insert(0, moduleDir)
    from BSAFusion import BSAFusionLogic

    logic = BSAFusionLogic()
    try:
        logic.setupPythonRequirements(askConfirmation=False, allowInstall=args.install_dependencies)
        for path in (args.fixed, args.moving):
            if not os.path.isfile(path):
                print(f"BSAFusionBatch: error: {path}: file not found", file=sys.stderr)
                return EXIT_INPUT
        fixedNode = slicer.util.loadVolume(args.fixed)
        movingNode = slicer.util.loadVolume(args.moving)
        _nodes, result = logic.process(fixedNode, movingNode, args.modality, weights=args.weights, device=args.device,
                                      prealign=args.prealign, axis=args.axis, refineSteps=args.refine_steps,
                                      harden=args.harden, progress=_print_progress)
        from bsafusion.slicer_support import quality_summary
        from bsafusion.inference.volume import write_volume_result

        paths = write_volume_result(result, args.out, stem=args.stem)
        for name, path in paths.items():
            print(f"{name:12s} {path}")
        if args.scene:
            os.makedirs(os.path.dirname(os.path.abspath(args.scene)), exist_ok=True)
            if not slicer.util.saveScene(args.scene):
                raise RuntimeError(f"{args.scene}: the scene could not be saved")
            print(f"{'scene':12s} {args.scene}")
        print("done: " + quality_summary(result), flush=True)
        return EXIT_OK
    except ValueError as exc:  # InputError and the logic's checks: the message says what to fix
        print(f"BSAFusionBatch: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except RuntimeError as exc:  # a missing dependency, a file Slicer cannot read...
        print(f"BSAFusionBatch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception:  # a bug: keep the traceback
        traceback.print_exc()
        return EXIT_ERROR


if __name__ == "__main__":
    status = main(sys.argv[1:])
    exit_slicer = getattr(slicer.util, "exit", None)
    if exit_slicer is not None:
        exit_slicer(status)
    else:  # Slicer < 4.11
        sys.exit(status)
