"""Register and fuse a pair of 3D volumes with the 2D network, slice by slice, in physical space.

Stages (the keys of :attr:`VolumeResult.timings`)
-------------------------------------------------
``normalise``
    Checks (geometry, modality) and per-volume intensity scaling (:mod:`bsafusion.inference.intensity`).
``prealign``
    Mutual-information pre-alignment (:func:`bsafusion.inference.prealign.prealign_affine`), **rigid**
    by default (``prealign_rigid=True``): both volumes show the same patient's head, which
    differs in pose, not in size; a 12-parameter affine (``prealign_rigid=False``) can also
    absorb scanner scaling, but on partial fields of view (a CT slab inside a whole-head MRI)
    it tends to shrink or shear the anatomy. It registers the *normalised* volumes,
    initialised by their intensity centres of mass (``initializer="moments"``): normalised
    volumes are non-negative with air at 0, so the moments are the anatomy's (raw CT in HU has
    air at -1000 and padding below), and on the real CT slab of ``../shared/data/volumes`` the
    image-centre initialisation lands the slab mid-head, the moments one at the vertex where it
    belongs. It runs on copies block-averaged to voxels of about :data:`PREALIGN_SPACING_MM` =
    2.5 mm (``sitk.BinShrink`` by integer factors, physical space unchanged): a 256 x 256 x 150
    pair then takes seconds instead of minutes, and the transform, being physical, applies to
    the full-resolution volumes. The metric samples at most about :data:`PREALIGN_SAMPLES` =
    25 000 voxels per pyramid level inside the moving volume (:func:`prealign_settings`).
    Skipped with ``prealign=False``; the scanner coordinates are then trusted. The overlap
    check follows it.
``resample``
    The normalised moving volume is resampled (linear) into the fixed grid through the affine.
``network``
    Both volumes are viewed in the working frame of :mod:`bsafusion.inference.volume.geometry`
    (permute/flip, no interpolation) and every slice that holds anatomy in both volumes goes
    through :meth:`bsafusion.inference.fuser.Fuser.fuse_batch`, ``batch_size`` slices per call,
    ``slice_workers`` calls at once (each on its share of torch's threads; the slices are
    independent, so the result does not depend on how many run together).
``export``
    Fields are stacked, smoothed across slices, converted to millimetres and composed with the
    affine into the total transform; the aligned volume is resampled through it; inverse
    consistency and the Jacobian are computed.

Conventions
-----------
* **Through-plane**: each slice moves only within its own plane (the z' component of the
  stacked field is 0). Motion across slices is the pre-alignment's job, which is 3D.
* **Across slices**: each slice's field is predicted independently, so the stacked in-plane
  fields are smoothed along the slice axis with a Gaussian of :data:`SLICE_SIGMA_MM` = 2 mm
  (``sigma = 2 mm / slice spacing`` slices; border values repeated). The inverse field is
  smoothed the same way.
* **Slices without anatomy** (fewer than 0.5 % of pixels above 0.05 in either normalised
  volume, e.g. above the head, or outside a CT slab) do not go through the network: their
  field is 0 and their fused slice is the pixel-wise maximum of the two sources (which is
  the fixed slice where the moving volume is empty, and vice versa).
* **Fused** volume: the network's fused slices stacked (from the per-slice fields, before
  smoothing), float32 in [0, 1], fixed geometry. CT: scalar. PET/SPECT: volumes carry no
  colour, so the moving activity (normalised SUV-like) is rendered with the Harvard-like
  lookup table :func:`bsafusion.colour.pseudo_colour` before the network, exactly like the
  2D colour slices the network was trained on: the network fuses the luma Y and the aligned
  chroma is put back (:func:`bsafusion.colour.merge_luma`), so the fused volume is an RGB
  vector image (3 components, float32 in [0, 1]).
* **Aligned** volume: ``sitk.Resample(moving, fixed, transform, sitk.sitkLinear,
  min(moving), sitk.sitkFloat32)``: the moving volume in its **original units** (HU, SUV...)
  in the fixed geometry, consistent with the exported transform by construction.
* **Transform**: ``CompositeTransform([affine, displacement])``, mapping fixed points to moving
  points (``T(p) = A(p + d(p))``: the displacement is applied first), as
  ``sitk.Resample(moving, fixed, T)`` and 3D Slicer (parent transform of the moving volume)
  expect. The displacement is an ITK displacement field in mm, LPS, on the fixed grid.
* **Inverse** displacement: the network's reverse (bidirectional) field, stacked and smoothed
  like the forward one; it maps the pre-aligned moving grid (which is the fixed grid) back to
  the fixed volume. :attr:`VolumeResult.inverse_consistency_mm` is the mean of
  ``|compose(forward, inverse)|`` in mm over the fixed foreground (normalised fixed > 0.05)
  covered by the moving volume.
* **Jacobian**: determinant of the in-plane Jacobian of the deformable part (which equals the
  3D determinant, the through-plane component being 0), fixed geometry, float32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from bsafusion import modality as modalities
from bsafusion.colour import merge_luma, pseudo_colour, split_luma
from bsafusion.deform import compose, jacobian_determinant
from bsafusion.errors import InputError
from bsafusion.inference.fuser import MIN_SIZE, Fuser, FusionResult
from bsafusion.inference.prealign import ClassicalSettings, prealign_affine
from bsafusion.inference.intensity import check_modality, normalise_volume
from bsafusion.device import resolve_device
from bsafusion.transforms import field_to_displacement_image
from bsafusion.inference.volume.geometry import (
    MIN_OVERLAP,
    SliceFrame,
    check_volume,
    coverage_mask,
    extent_mm3,
    overlap_fraction,
    slice_frame,
)

__all__ = [
    "SLICE_SIGMA_MM",
    "PREALIGN_SPACING_MM",
    "PREALIGN_SAMPLES",
    "prealign_settings",
    "Cancelled",
    "VolumeResult",
    "register_and_fuse_volumes",
    "inverse_transform",
    "console_progress",
]

#: Gaussian sigma (mm) of the smoothing of the stacked fields along the slice axis.
SLICE_SIGMA_MM = 2.0
#: Voxel size (mm) the volumes are block-averaged to for the pre-alignment (speed).
PREALIGN_SPACING_MM = 2.5
#: Metric samples per pyramid level of the pre-alignment that should fall inside the moving
#: volume (:func:`prealign_settings`). The finest level of a 2.5 mm head (128 x 128 x 75
#: voxels) has 1.2 million voxels, and its 25 % sample (300 000 voxels per metric evaluation)
#: made up most of the run. On four 256 x 256 x 150 phantom CT/MRI pairs with known rigid
#: offsets (the benchmark's 6 degrees and 7/-5/4 mm, and 10/-5/0, -4/0/8 and 0/12/0 degrees
#: about z/x/y with 5-9 mm shifts; one ITK thread, CPU seconds on a shared machine) a bound of
#: 25 000 took the total time from 66.6 s (12.2 s for the benchmark's pair) to 18.6 s (3.3 s)
#: and the mean pre-alignment error from 0.24 to 0.25 mm (worst case 0.29 -> 0.31 mm, a third
#: of a 0.9 mm voxel); 50 000 took 27.2 s for a mean error of 0.25 mm, a fraction of 5 %
#: instead of a bound 21.7 s for 0.26 mm.
PREALIGN_SAMPLES = 25_000
_CONTENT_LEVEL = 0.05  # normalised intensity counted as anatomy
_CONTENT_FRACTION = 0.005  # share of a slice's pixels above _CONTENT_LEVEL for it to hold anatomy

Progress = Callable[[float, str], None]


class Cancelled(Exception):
    """The caller's ``cancel()`` returned True; nothing was produced or written."""


@dataclass
class VolumeResult:
    """Outputs of :func:`register_and_fuse_volumes`, all in the fixed volume's geometry.

    Attributes
    ----------
    fused : SimpleITK.Image
        float32 in [0, 1]; scalar for CT, RGB vector image (3 components) for PET/SPECT.
    aligned : SimpleITK.Image
        The moving volume resampled through :attr:`transform`, original units, float32.
    transform : SimpleITK.Transform
        Total transform, fixed -> moving points: ``CompositeTransform([affine, displacement])``.
    displacement : SimpleITK.Image
        Deformable part, vector float64 displacement field in mm (LPS) on the fixed grid.
    inverse_displacement : SimpleITK.Image
        Its inverse (the network's reverse field), same format.
    inverse_consistency_mm : float
        Mean ``|compose(forward, inverse)|`` in mm over the covered fixed foreground.
    jacobian : SimpleITK.Image
        float32 determinant of the deformable part's Jacobian.
    timings : dict
        Seconds per stage: normalise, prealign, resample, network, export, total.
    affine : SimpleITK.Transform
        The pre-alignment alone (identity when skipped).
    overlap : float
        Overlap of the volumes after pre-alignment (see :func:`~bsafusion.inference.volume.geometry.overlap_fraction`).
    frame : SliceFrame
        How the fixed volume was sliced.
    network_slices : int
        Slices that went through the network (the others hold no anatomy).
    """

    fused: sitk.Image
    aligned: sitk.Image
    transform: sitk.Transform
    displacement: sitk.Image
    inverse_displacement: sitk.Image
    inverse_consistency_mm: float
    jacobian: sitk.Image
    timings: dict[str, float]
    affine: sitk.Transform | None = None
    overlap: float = float("nan")
    frame: SliceFrame | None = None
    network_slices: int = 0


class _Reporter:
    """Progress calls and cancellation checks, one place for both."""

    def __init__(self, progress: Progress | None, cancel: Callable[[], bool] | None) -> None:
        self.progress, self.cancel = progress, cancel

    def __call__(self, fraction: float, message: str) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"cancelled during: {message}")
        if self.progress is not None:
            self.progress(float(min(max(fraction, 0.0), 1.0)), message)


@dataclass
class _Stacks:
    """Per-slice network outputs in the working frame (fields as ``(D', 2, H', W')`` pixels)."""

    forward: np.ndarray
    inverse: np.ndarray
    fused: np.ndarray  # (D', H', W') or (D', H', W', 3)
    network_slices: int = 0


def _has_anatomy(image: np.ndarray) -> bool:
    return bool(np.mean(image > _CONTENT_LEVEL) >= _CONTENT_FRACTION)


def _moving_input(activity: np.ndarray, modality: str) -> np.ndarray:
    """What the network sees of a moving slice: grey for CT, pseudo-colour RGB for PET/SPECT."""
    return pseudo_colour(activity, modality) if modalities.get(modality).colour else np.ascontiguousarray(activity)


def _fallback_fused(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Fused slice without the network: pixel-wise max of the sources (luma for colour)."""
    if moving.ndim == 3:
        luma, chroma = split_luma(moving)
        return merge_luma(np.maximum(fixed, luma), chroma).astype(np.float32)
    return np.maximum(fixed, moving)


def _network_calls(fuser: Fuser, chunks: Iterable[list[tuple[np.ndarray, np.ndarray]]],
                   workers: int) -> Iterator[list[FusionResult]]:
    """``fuser.fuse_batch`` of every chunk, in order, ``workers`` chunks at a time.

    Each worker thread runs one call on ``threads // workers`` of torch's intra-op threads (restored
    afterwards): on 2 CPU cores a slice's operators are too small to keep two threads busy, and
    two slices side by side on one thread each finish sooner than one after the other on two
    (``Testing/benchmarks/volume_speed.py``). Torch releases the interpreter lock inside its
    operators and inference mode is per thread, so the calls do not interfere.
    """
    if workers == 1:
        for chunk in chunks:
            yield fuser.fuse_batch(chunk)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))
    try:
        chunks = iter(chunks)
        with ThreadPoolExecutor(workers, thread_name_prefix="bsafusion-slice") as pool:
            while group := list(islice(chunks, workers)):
                yield from pool.map(fuser.fuse_batch, group)
    finally:
        torch.set_num_threads(threads)


def _run_network(fuser: Fuser, fixed_w: np.ndarray, moving_w: np.ndarray, modality: str,
                 batch_size: int, workers: int, report: _Reporter, span: tuple[float, float]) -> _Stacks:
    """Every slice with anatomy through the network; the others get the fallback."""
    depth, height, width = fixed_w.shape
    colour = modalities.get(modality).colour
    stacks = _Stacks(
        forward=np.zeros((depth, 2, height, width), np.float32),
        inverse=np.zeros((depth, 2, height, width), np.float32),
        fused=np.zeros((depth, height, width, 3) if colour else (depth, height, width), np.float32),
    )
    active = [z for z in range(depth) if _has_anatomy(fixed_w[z]) and _has_anatomy(moving_w[z])]
    for z in sorted(set(range(depth)) - set(active)):
        stacks.fused[z] = _fallback_fused(fixed_w[z], _moving_input(moving_w[z], modality))
    slices = [active[start : start + batch_size] for start in range(0, len(active), batch_size)]
    pairs = ([(np.ascontiguousarray(fixed_w[z]), _moving_input(moving_w[z], modality)) for z in chunk]
             for chunk in slices)
    done = 0
    report(span[0], f"network: slice 1/{len(active)}")
    with closing(_network_calls(fuser, pairs, workers)) as calls:  # threads restored on cancel too
        for chunk, outputs in zip(slices, calls):
            for z, out in zip(chunk, outputs):
                stacks.forward[z], stacks.inverse[z], stacks.fused[z] = out.field, out.inverse_field, out.fused
            done += len(chunk)
            if done < len(active):
                report(span[0] + (span[1] - span[0]) * done / len(active), f"network: slice {done + 1}/{len(active)}")
    stacks.network_slices = len(active)
    return stacks


def _smooth_across_slices(fields: np.ndarray, sigma_slices: float) -> np.ndarray:
    """Gaussian smoothing of stacked in-plane fields ``(D', 2, H', W')`` along the slice axis, in place.

    In place because the stacks are not needed unsmoothed and a fresh output of their size
    (78 MB at 256 x 256 x 150) costs more in page faults than the filter itself: 0.3 s instead
    of 0.55 s per field on a shared 2-core machine, with identical values (the filter works on
    a copy of each line).
    """
    if sigma_slices <= 0 or fields.shape[0] < 2:
        return fields
    return ndimage.gaussian_filter1d(fields, sigma_slices, axis=0, mode="nearest", output=fields)


@torch.no_grad()
def _inverse_consistency_mm(forward: np.ndarray, inverse: np.ndarray, mask: np.ndarray,
                            spacing_xy: tuple[float, float], chunk: int = 16) -> float:
    """Mean ``|compose(forward, inverse)|`` in mm over ``mask`` (working frame, slice by slice).

    The through-plane component of both fields is 0, so the 3D composition is exactly the
    in-plane composition of each slice.
    """
    scale = torch.tensor(spacing_xy, dtype=torch.float32).view(1, 2, 1, 1)
    total, count = 0.0, 0
    for start in range(0, forward.shape[0], chunk):
        sl = slice(start, start + chunk)
        m = mask[sl]
        if not m.any():
            continue
        residual = compose(torch.from_numpy(forward[sl]), torch.from_numpy(inverse[sl]))
        norm = (residual * scale).square().sum(dim=1).sqrt().numpy()
        total += float(norm[m].sum())
        count += int(m.sum())
    return total / count if count else 0.0


def _jacobian(forward: np.ndarray) -> np.ndarray:
    """In-plane Jacobian determinant of each slice's field, ``(D', H', W')`` float32."""
    out = np.ones(forward.shape[:1] + forward.shape[2:], np.float32)
    if min(forward.shape[2:]) < 2:
        return out
    for z in range(forward.shape[0]):
        if forward[z].any():
            out[z] = jacobian_determinant(forward[z])
    return out


def _image_like(array: np.ndarray, reference: sitk.Image, vector: bool = False) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=vector)
    image.CopyInformation(reference)
    return image


def _coarse(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Block-average ``image`` (float32) to voxels of about ``spacing_mm`` (never finer than given).

    Bin shrinking keeps physical space exact (origin and spacing are updated), so a transform
    found on the coarse volumes applies unchanged to the full-resolution ones.
    """
    factors = [max(1, int(spacing_mm // s)) for s in image.GetSpacing()]
    image = sitk.Cast(image, sitk.sitkFloat32)
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def prealign_settings(fixed: sitk.Image, moving: sitk.Image) -> ClassicalSettings:
    """The pre-alignment's settings: the classical defaults, the metric's sample bounded per level.

    The bound is :data:`PREALIGN_SAMPLES` divided by the share of the fixed volume's extent
    that the moving one can cover (at most 1), because samples that map outside the moving
    volume do not count: on the real CT slab of ``../shared/data/volumes`` (8 mm of a
    165 mm whole-head MRI, 4.5 % of its extent) a plain bound of 25 000 left about a thousand
    useful samples and put the slab mid-head; scaled, the bound does not bind there.
    """
    share = min(1.0, extent_mm3(moving) / extent_mm3(fixed))
    return ClassicalSettings(max_samples=int(PREALIGN_SAMPLES / share))


def _prealign(fixed: sitk.Image, moving: sitk.Image, rigid: bool) -> sitk.Transform:
    """Pre-alignment of the *normalised* volumes (non-negative, air 0), initialised by moments."""
    return prealign_affine(_coarse(fixed, PREALIGN_SPACING_MM), _coarse(moving, PREALIGN_SPACING_MM),
                           rigid=rigid, initializer="moments", settings=prealign_settings(fixed, moving))


def register_and_fuse_volumes(
    fixed: sitk.Image,
    moving: sitk.Image,
    modality: str,
    weights: str | Path | None = None,
    device: str = "auto",
    prealign: bool = True,
    axis: str = "axial",
    batch_size: int | None = None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    *,
    refine_steps: int | None = None,
    prealign_rigid: bool = True,
    slice_sigma_mm: float = SLICE_SIGMA_MM,
    slice_workers: int | None = None,
    names: tuple[str, str] = ("fixed volume", "moving volume"),
) -> VolumeResult:
    """Register a CT/PET/SPECT volume to an MRI volume and fuse them (conventions: module docstring).

    Parameters
    ----------
    fixed : SimpleITK.Image
        The MRI volume (3D scalar); it defines the output geometry.
    moving : SimpleITK.Image
        The CT, PET or SPECT volume (3D scalar), in any frame and resolution.
    modality : {"CT", "PET", "SPECT"}
        Modality of ``moving`` (case-insensitive); picks the model and the intensity rule.
    weights : path, optional
        Weights file (default: the shipped model for ``modality``).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
    prealign : bool
        Mutual-information pre-alignment first (default). Without it the volumes' scanner
        coordinates must already agree.
    axis : {"axial", "coronal", "sagittal"}
        Slicing plane, in the fixed volume's physical (LPS) terms (see
        :mod:`bsafusion.inference.volume.geometry`).
    batch_size : int, optional
        Slices per network call. Default: 1 on the CPU, 8 on CUDA. Measured on 2 CPU cores
        (``Testing/benchmarks/speed.py``): batching makes each slice slower (193 ms alone,
        254-280 ms per slice in batches of 2 to 8: a batch makes the working set larger without
        making the operators any easier to parallelise); slices side by side
        (``slice_workers``) are what pays on the CPU.
    progress : callable, optional
        ``progress(fraction, message)``, called at each stage and network batch.
    cancel : callable, optional
        Polled at the same points; returning True raises :class:`Cancelled`.
    refine_steps : int, optional
        Per-slice refinement of the network's field (:mod:`bsafusion.inference.refine`, which says
        why it is off by default for every modality); default: the modality's; 0 = off.
    prealign_rigid : bool
        Rigid pre-alignment (default) or, with False, a full affine one.
    slice_sigma_mm : float
        Gaussian sigma (mm) of the field smoothing along the slice axis (0: none).
    slice_workers : int, optional
        Network calls run side by side, each on ``torch.get_num_threads() // slice_workers``
        threads. Default: on the CPU, 2 when torch has at least 2 threads (on 2 cores, 125
        slices of 256x256: 0.25 s per slice against 0.32 s one at a time on 2 threads,
        ``Testing/benchmarks/volume_speed.py``), else 1; on CUDA 1 (the batch fills the GPU).
    names : (str, str)
        How error messages call the two volumes (e.g. their file names).

    Returns
    -------
    VolumeResult

    Raises
    ------
    InputError
        A volume that is 2D, 4D, colour, has absurd spacing, a direction matrix that is not
        orthonormal, slices smaller than :data:`~bsafusion.inference.fuser.MIN_SIZE` or no contrast; a modality
        mismatch; unknown modality/axis/device; unusable weights; volumes that overlap less
        than :data:`~bsafusion.inference.volume.geometry.MIN_OVERLAP` after pre-alignment.
    Cancelled
        ``cancel()`` returned True.

    Examples
    --------
    >>> result = register_and_fuse_volumes(mri, ct, "CT")            # doctest: +SKIP
    >>> sitk.WriteTransform(result.transform, "ct_to_mri.h5")        # doctest: +SKIP
    """
    started = time.perf_counter()
    report = _Reporter(progress, cancel)
    timings: dict[str, float] = {}
    modality = modalities.moving(modality).name
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if slice_workers is not None and int(slice_workers) < 1:
        raise InputError(f"slice_workers must be at least 1, got {slice_workers}")
    if not slice_sigma_mm >= 0:
        raise InputError(f"slice_sigma_mm must be >= 0, got {slice_sigma_mm}")
    fixed_name, moving_name = names
    check_volume(fixed, fixed_name)
    check_volume(moving, moving_name)
    frame = slice_frame(fixed.GetDirection(), axis)
    in_plane = [fixed.GetSize()[k] for k in frame.index_axes[:2]]
    if min(in_plane) < MIN_SIZE:
        raise InputError(f"{fixed_name}: {axis} slices of {in_plane[0]}x{in_plane[1]} voxels; registration needs "
                         f"at least {MIN_SIZE}x{MIN_SIZE} (try another --axis)")
    check_modality(fixed, "MRI", fixed_name)
    check_modality(moving, modality, moving_name)
    report(0.0, "loading the model")
    fuser = Fuser(modality, weights, device, refine=refine_steps)  # bad weights fail before the slow stages
    on_cuda = resolve_device(device).type == "cuda"
    if batch_size is None:
        batch_size = 8 if on_cuda else 1
    if slice_workers is None:
        slice_workers = 1 if on_cuda else min(2, torch.get_num_threads())

    t = time.perf_counter()
    report(0.02, "normalising intensities")
    fixed_n = normalise_volume(fixed, "MRI", name=fixed_name)
    moving_n = normalise_volume(moving, modality, name=moving_name)
    timings["normalise"] = time.perf_counter() - t

    t = time.perf_counter()
    report(0.05, "pre-alignment" if prealign else "pre-alignment skipped")
    affine = _prealign(fixed_n, moving_n, prealign_rigid) if prealign else sitk.AffineTransform(3)
    timings["prealign"] = time.perf_counter() - t
    report(0.2, "checking overlap")
    covered = coverage_mask(fixed, moving, affine)
    overlap = overlap_fraction(fixed, moving, covered)
    if overlap < MIN_OVERLAP:
        how = "after pre-alignment" if prealign else "in scanner coordinates (pre-alignment skipped)"
        raise InputError(f"{moving_name}: overlaps {fixed_name} by only {100 * overlap:.1f}% {how} "
                         f"(at least {100 * MIN_OVERLAP:.0f}% needed); check that both show the same anatomy")

    t = time.perf_counter()
    report(0.22, "resampling the moving volume")
    moving_r = sitk.GetArrayFromImage(sitk.Resample(moving_n, fixed, affine, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    fixed_a = sitk.GetArrayViewFromImage(fixed_n)
    timings["resample"] = time.perf_counter() - t

    t = time.perf_counter()
    stacks = _run_network(fuser, frame.to_working(fixed_a), frame.to_working(moving_r), modality,
                          int(batch_size), int(slice_workers), report, (0.25, 0.9))
    timings["network"] = time.perf_counter() - t

    t = time.perf_counter()
    report(0.9, "building the transform")
    sx, sy, sz = frame.spacing(fixed)
    sigma = slice_sigma_mm / sz
    forward = _smooth_across_slices(stacks.forward, sigma)
    inverse = _smooth_across_slices(stacks.inverse, sigma)
    mask = frame.to_working((fixed_a > _CONTENT_LEVEL) & covered)
    consistency = _inverse_consistency_mm(forward, inverse, np.ascontiguousarray(mask), (sx, sy))
    jacobian = _image_like(frame.from_working(_jacobian(forward)), fixed)
    fused = _image_like(frame.from_working(stacks.fused), fixed, vector=stacks.fused.ndim == 4)
    network_slices = stacks.network_slices
    del stacks
    displacement = field_to_displacement_image(frame.field_from_working(np.moveaxis(forward, 1, 0)), fixed)
    inverse_image = field_to_displacement_image(frame.field_from_working(np.moveaxis(inverse, 1, 0)), fixed)
    del forward, inverse
    total = sitk.CompositeTransform(3)
    total.AddTransform(affine)
    total.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(displacement)))  # applied first
    total.FlattenTransform()
    report(0.95, "resampling the aligned volume")
    lowest = float(sitk.GetArrayViewFromImage(moving).min())
    aligned = sitk.Resample(moving, fixed, total, sitk.sitkLinear, lowest, sitk.sitkFloat32)
    timings["export"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    report(1.0, "done")
    return VolumeResult(
        fused=fused,
        aligned=aligned,
        transform=total,
        displacement=displacement,
        inverse_displacement=inverse_image,
        inverse_consistency_mm=consistency,
        jacobian=jacobian,
        timings=timings,
        affine=affine,
        overlap=overlap,
        frame=frame,
        network_slices=network_slices,
    )


def inverse_transform(result: VolumeResult) -> sitk.CompositeTransform:
    """Moving -> fixed points: the affine's inverse, then the inverse displacement.

    ``sitk.Resample(fixed, moving, inverse_transform(result))`` brings the fixed volume onto the
    moving one (valid where the moving volume overlaps the fixed grid).
    """
    if result.affine is None:
        raise InputError("this result carries no pre-alignment affine")
    inverse = sitk.CompositeTransform(3)
    inverse.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(result.inverse_displacement)))
    inverse.AddTransform(result.affine.GetInverse())  # applied first
    return inverse


def console_progress(desc: str = "volume") -> Progress:
    """A ``progress`` callback that draws a tqdm bar on stderr (for the CLI)."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc=desc, dynamic_ncols=True, bar_format="{l_bar}{bar}| {elapsed} {postfix}")

    def update(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(message, refresh=True)
        if fraction >= 1.0:
            bar.close()

    return update
