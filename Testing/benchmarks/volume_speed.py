"""Time and peak memory of the 3D volume pipeline on a 256 x 256 x 150 synthetic pair.

Targets: at most 30 s and 4 GB on 2 CPU cores, with a per-stage breakdown
(pre-alignment, network, export, and writing the files).

The pair is the product's 3D head phantom: a T2-like MRI (fixed) and a CT in Hounsfield
units (moving) carrying a known rigid offset (6 degrees, 7/-5/4 mm) in its geometry, with
anisotropic spacing (0.9 x 0.9 x 1.2 mm). The model is the shipped CT model when present,
otherwise an **untrained model of the default architecture** (same size, so the same cost).

``cpu_seconds`` is the process's CPU time (all its threads) for the pipeline and for writing:
less disturbed than wall time by other work on the machine, and above it where threads overlap.

Peak memory is the measuring process's maximum resident set size (``ru_maxrss``). The phantom
is generated in a separate process and read from disk, so its own (large) memory use does not
count; what is measured is reading the two volumes plus the whole pipeline plus writing.

Usage (from the repository root)::

    python Testing/benchmarks/volume_speed.py                 # 256 x 256 x 150, 2 threads
    python Testing/benchmarks/volume_speed.py --size 128 128 40 --json out.json

Numbers depend on the machine and on what else runs on it: report them with that context.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPACING = (0.9, 0.9, 1.2)


def make_data(folder: Path, size: tuple[int, int, int], seed: int = 0) -> None:
    """Write ``mri.nii.gz`` and ``ct.nii.gz`` (HU, rigidly moved geometry) into ``folder``."""
    import SimpleITK as sitk
    from bsafusion.phantom import phantom_pair

    width, height, depth = size
    pair = phantom_pair("CT", (depth, height, width), seed=seed)
    hu = np.interp(pair.other, [0.0, 0.02, 0.2, 0.47, 0.8, 1.0], [-1000, -100, 8, 40, 600, 1200]).astype(np.int16)
    fixed = sitk.GetImageFromArray((pair.mri * 1000).astype(np.int16))
    fixed.SetSpacing(SPACING)
    fixed.SetOrigin((-115.0, -115.0, -90.0))
    angle = np.radians(6.0)
    motion = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    centre = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()]))
    moving = sitk.GetImageFromArray(hu)
    moving.SetSpacing(SPACING)
    moving.SetOrigin(tuple(motion @ (np.asarray(fixed.GetOrigin()) - centre) + centre + np.array([7.0, -5.0, 4.0])))
    moving.SetDirection(tuple(motion.ravel()))
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(fixed, str(folder / "mri.nii.gz"))
    sitk.WriteImage(moving, str(folder / "ct.nii.gz"))
    # true fixed -> moving point map: T(p) = O_m + R (p - O_f)
    truth = {"rotation": motion.tolist(), "fixed_origin": list(fixed.GetOrigin()),
             "moving_origin": list(moving.GetOrigin())}
    (folder / "truth.json").write_text(json.dumps(truth))


def prealign_error_mm(fixed, transform, truth: dict, step: int = 8) -> float:
    """Mean distance between ``transform`` and the true rigid map over the head (every 8th voxel)."""
    import SimpleITK as sitk

    values = sitk.GetArrayViewFromImage(fixed)[::step, ::step, ::step]
    z, y, x = np.nonzero(values > 0.1 * values.max())
    rot, o_f, o_m = (np.asarray(truth[k]) for k in ("rotation", "fixed_origin", "moving_origin"))
    errors = []
    for i, j, k in zip(x * step, y * step, z * step):
        p = np.asarray(fixed.TransformIndexToPhysicalPoint((int(i), int(j), int(k))))
        errors.append(np.linalg.norm(np.asarray(transform.TransformPoint(tuple(p))) - (o_m + rot @ (p - o_f))))
    return float(np.mean(errors))


def _machine() -> str:
    """CPU and current load: the numbers mean little without them."""
    load = Path("/proc/loadavg")
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, load average {load.read_text().split()[:3]}" if load.exists() else cpu


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def run(data: Path, out: Path, threads: int, weights: str | None, batch_size: int | None,
        refine_steps: int | None = None, slice_workers: int | None = None) -> dict:
    import SimpleITK as sitk
    import torch
    from bsafusion.model import checkpoint
    from bsafusion.model import BSFAF, ModelConfig
    from bsafusion.inference.volume import read_volume, register_and_fuse_volumes, write_volume_result

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if weights is None:
        shipped = checkpoint.default_weights_path("CT")
        if shipped.is_file():
            weights = str(shipped)
        else:
            weights = str(out / "untrained_default.pt")
            torch.manual_seed(0)
            checkpoint.save(weights, BSFAF(ModelConfig()), "CT")
    rss_before = _peak_rss_mb()
    t = time.perf_counter()
    fixed, moving = read_volume(data / "mri.nii.gz"), read_volume(data / "ct.nii.gz")
    read_s = time.perf_counter() - t
    cpu = time.process_time()
    result = register_and_fuse_volumes(fixed, moving, "CT", weights=weights, device="cpu", batch_size=batch_size,
                                       refine_steps=refine_steps, slice_workers=slice_workers)
    pipeline_cpu_s, cpu = time.process_time() - cpu, time.process_time()
    t = time.perf_counter()
    paths = write_volume_result(result, out / "result")
    write_s, write_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    truth = json.loads((data / "truth.json").read_text())
    stages = {"read": read_s, **result.timings, "write": write_s}
    stages["total_with_io"] = read_s + result.timings["total"] + write_s
    return {
        "size_xyz": list(fixed.GetSize()),
        "threads": threads,
        "slice_workers": "pipeline default" if slice_workers is None else slice_workers,
        "weights": weights,
        "network_slices": result.network_slices,
        "refine_steps": "CT default" if refine_steps is None else refine_steps,
        "seconds": {k: round(v, 2) for k, v in stages.items()},
        "cpu_seconds": {"total": round(pipeline_cpu_s, 2), "write": round(write_cpu_s, 2)},
        "network_s_per_slice": round(result.timings["network"] / max(result.network_slices, 1), 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_after_imports_mb": round(rss_before, 1),
        "inverse_consistency_mm": round(result.inverse_consistency_mm, 4),
        "prealign_error_mm": round(prealign_error_mm(fixed, result.affine, truth), 3),
        "file_mb": {k: round(p.stat().st_size / 2**20, 1) for k, p in paths.items()},
        "machine": _machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(256, 256, 150), metavar=("X", "Y", "Z"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="slices per network call (default: the pipeline's, 1 on CPU)")
    parser.add_argument("--slice-workers", type=int, default=None,
                        help="network calls side by side (default: the pipeline's, 2 on a CPU with 2 threads)")
    parser.add_argument("--weights", help="weights (default: the shipped CT model, else an untrained default one)")
    parser.add_argument("--refine-steps", type=int, help="per-slice field refinement steps (default: the CT default)")
    parser.add_argument("--data", type=Path, help="folder for the phantom pair (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--make-data", type=Path, help=argparse.SUPPRESS)  # internal: child process
    args = parser.parse_args(argv)
    size = tuple(args.size)
    if args.make_data:
        make_data(args.make_data, size)
        return 0
    with tempfile.TemporaryDirectory(prefix="bsafusion_volume_speed_") as tmp:
        data = args.data or Path(tmp) / "data"
        if not (data / "ct.nii.gz").is_file():
            t = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--make-data", str(data), "--size", *map(str, size)], check=True)
            print(f"phantom pair {size} written in {time.perf_counter() - t:.0f} s (not timed below)", file=sys.stderr)
        numbers = run(data, Path(tmp), args.threads, args.weights, args.batch_size, args.refine_steps,
                      args.slice_workers)
    text = json.dumps(numbers, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    seconds, peak = numbers["seconds"]["total"], numbers["peak_rss_mb"]
    print(f"pipeline {seconds:.1f} s (target 30), peak RSS {peak / 1024:.2f} GB (target 4)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
