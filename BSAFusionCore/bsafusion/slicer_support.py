"""What the 3D Slicer module needs that is not a Slicer call, kept here so CI can test it.

Why this module exists
----------------------
The scripted module (``BSAFusionExtension/BSAFusion/BSAFusion.py``) is kept thin: it moves
voxels between the MRML scene and the core, creates nodes, and sets up the views. Every decision
behind those calls lives here, in plain Python, and is tested with the rest of the core (and,
with the ``slicer-test`` extra, against a real headless MRML scene: ``Testing/extension``):

* **parameters**: :func:`validate_parameters` checks the GUI/batch choices once, on the GUI
  thread, before any work starts, and turns them into a :class:`RunParameters`; options left
  unset keep the core's defaults;
* **the run**: :func:`run_core` calls :func:`bsafusion.inference.volume.register_and_fuse_volumes`
  (nothing else: no algorithm code in the extension), and :class:`BackgroundJob` runs it in a
  worker thread that the GUI polls for progress, result or error;
* **outputs**: :func:`output_volumes` lists the volumes to create (name, node class, the image to
  push, colour table, window/level): fused, aligned, Jacobian and checkerboard;
* **geometry**: :func:`ijk_to_ras` and :func:`image_from_node_array` convert between a
  SimpleITK image and a volume node's voxels + IJK -> RAS matrix;
* **the transform**: :func:`write_slicer_transform` writes the core's transform as a compressed
  displacement field that ``vtkMRMLTransformStorageNode`` reads.

Coordinates and the transform Slicer loads
------------------------------------------
SimpleITK and ITK files use **LPS** physical coordinates (mm); Slicer's scene uses **RAS**.
Volumes cross over through :func:`ijk_to_ras` / :func:`image_from_node_array` (negate x and y
of the geometry; voxels are not reordered). The transform crosses over as a file: Slicer's
transform storage node converts an ITK displacement field from LPS to RAS when it reads it. The
core's ``result.transform`` maps **fixed points to moving points**
(``sitk.Resample(moving, fixed, transform)`` is the aligned image); this is exactly what Slicer
calls a transform *from parent*, so the loaded node, set as the moving volume's parent
transform, shows the moving volume aligned on the fixed one. :func:`ras_to_lps`,
:func:`lps_to_ras`, :func:`sample_points` and :func:`transform_discrepancy_mm` check that claim
point by point.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Sequence, TypeVar

import numpy as np
import SimpleITK as sitk

from bsafusion.model import checkpoint
from bsafusion import modality as modalities
from bsafusion.colour import split_luma
from bsafusion.errors import InputError
from bsafusion.modality import MOVING as MODALITIES
from bsafusion.device import resolve_device
from bsafusion.transforms import read_displacement_transform, write_displacement_transform
from bsafusion.inference.volume import VolumeResult, register_and_fuse_volumes
from bsafusion.inference.volume.geometry import AXES as _AXES

__all__ = [
    "MODALITIES",
    "DEVICES",
    "AXES",
    "JACOBIAN_COLOR_NODE_ID",
    "RunParameters",
    "RunRequest",
    "OutputVolume",
    "BackgroundJob",
    "validate_parameters",
    "run_core",
    "node_names",
    "output_volumes",
    "to_display_rgb",
    "checkerboard_volume",
    "jacobian_window_level",
    "same_geometry",
    "quality_summary",
    "write_slicer_transform",
    "read_slicer_transform",
    "ijk_to_ras",
    "image_from_node_array",
    "ras_to_lps",
    "lps_to_ras",
    "sample_points",
    "transform_discrepancy_mm",
]

#: Devices offered in the GUI (``cuda:N`` is accepted too, from scripts).
DEVICES = ("auto", "cpu", "cuda")
#: Slice orientations the 2D network can run along (the volume pipeline's ``axis``).
AXES = tuple(_AXES)
#: Slicer's built-in diverging blue-white-red table: blue = compression (det J < 1), red =
#: expansion (det J > 1), white = volume kept; centred on 1 by :func:`jacobian_window_level`.
JACOBIAN_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunParameters:
    """Validated choices for one run (see :func:`validate_parameters`).

    ``None`` means "not chosen": :func:`run_core` then leaves the option out, so the core's own
    default applies and the module never carries a second copy of it.
    """

    modality: str
    weights: Path | None = None  # None: the shipped model for ``modality``
    device: str | None = None
    prealign: bool | None = None
    axis: str | None = None
    batch_size: int | None = None
    refine_steps: int | None = None  # None: the modality's default; 0: off

    def core_options(self) -> dict[str, object]:
        """Keyword arguments for ``register_and_fuse_volumes``: only the options that were chosen."""
        chosen = {"weights": self.weights, "device": self.device, "prealign": self.prealign, "axis": self.axis,
                  "batch_size": self.batch_size, "refine_steps": self.refine_steps}
        return {key: value for key, value in chosen.items() if value is not None}


def _count(value: object, what: str, minimum: int) -> int | None:
    """``None`` or a whole number >= ``minimum`` (bools refused: ``True`` is not a count)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)) or int(value) != value \
            or int(value) < minimum:
        raise InputError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def validate_parameters(
    modality: str,
    weights: str | Path | None = None,
    device: str | None = None,
    prealign: bool | None = None,
    axis: str | None = None,
    batch_size: int | None = None,
    refine_steps: int | None = None,
) -> RunParameters:
    """Check the module's parameters before any work starts; raise :class:`InputError` if unusable.

    Called on the GUI thread so that a wrong choice (a missing weights file, CUDA on a machine
    without a GPU) is reported at once in a message box, not after the volumes were read.
    ``weights`` empty or ``None`` means the shipped model; it must exist (the message says
    where it was looked for). Every other option left at ``None`` takes the core's default
    (:func:`bsafusion.inference.volume.register_and_fuse_volumes`).

    Examples
    --------
    >>> validate_parameters("pet", "", device="cpu", axis="Axial").modality    # doctest: +SKIP
    'PET'
    """
    name = modalities.moving(modality).name
    dev = None
    if device is not None:
        dev = str(device).strip().lower() or "auto"
        resolve_device(dev)  # raises InputError for unknown names and for CUDA without a GPU
    ax = None
    if axis is not None:
        ax = str(axis).strip().lower()
        if ax not in AXES:
            raise InputError(f"unknown slice axis {axis!r}; choose one of {', '.join(AXES)}")
    path: Path | None = None
    if weights is not None and str(weights).strip():
        path = Path(str(weights).strip()).expanduser()
        if path.is_dir():
            raise InputError(f"{path}: is a folder; choose a weights file (.pt)")
        if not path.is_file():
            raise InputError(f"{path}: weights file not found")
    else:
        shipped = checkpoint.default_weights_path(name)
        if not shipped.is_file():
            raise InputError(f"{shipped}: no shipped {name} model in this installation; choose a weights file")
    return RunParameters(name, path, dev, None if prealign is None else bool(prealign), ax,
                         _count(batch_size, "batch size", 1), _count(refine_steps, "refinement steps", 0))


# --------------------------------------------------------------------------------------------
# Running the core
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRequest:
    """Everything one run needs, with no reference to Slicer: safe to hand to a worker thread."""

    fixed: sitk.Image
    moving: sitk.Image
    parameters: RunParameters
    names: tuple[str, str] = ("fixed volume", "moving volume")  # how the core's messages call them


def run_core(request: RunRequest, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> VolumeResult:
    """Register and fuse through the core's volume pipeline; returns its ``VolumeResult``.

    Touches neither Qt nor MRML, so it can run in a worker thread. ``cancel`` is polled by the
    core at each stage and network batch; it raises ``bsafusion.inference.volume.Cancelled`` when it
    returns True.
    """
    return register_and_fuse_volumes(request.fixed, request.moving, request.parameters.modality,
                                     progress=progress, cancel=cancel, names=request.names,
                                     **request.parameters.core_options())


class BackgroundJob(Generic[T]):
    """Run ``work(progress, cancel)`` in a worker thread; the GUI thread polls it.

    Why polling instead of callbacks: Qt widgets and the MRML scene belong to the GUI thread,
    and calling them from another thread crashes Slicer at random. The worker therefore only
    stores its latest ``(fraction, message)`` under a lock, and the module reads it from a
    ``qt.QTimer`` on the GUI thread, which also creates the output nodes once :attr:`done`.
    Cancelling sets an event that the ``cancel`` callable handed to ``work`` reports; the work
    decides where to stop (the core checks between slices).

    Examples
    --------
    >>> job = BackgroundJob(lambda progress, cancel: 6 * 7).start()
    >>> job.wait(5)
    True
    >>> job.outcome()
    42
    """

    def __init__(self, work: Callable[[ProgressFn, CancelFn], T]) -> None:
        self._work = work
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._progress: tuple[float, str] = (0.0, "waiting")
        self._result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="BSAFusionJob", daemon=True)

    def start(self) -> "BackgroundJob[T]":
        self._thread.start()
        return self

    def _report(self, fraction: float, message: str = "") -> None:
        with self._lock:
            self._progress = (float(np.clip(fraction, 0.0, 1.0)), str(message))

    def _run(self) -> None:
        try:
            self._result = self._work(self._report, self._cancel.is_set)
        except BaseException as exc:  # handed to the GUI thread by outcome()
            self._error = exc
        finally:
            self._finished.set()

    def cancel(self) -> None:
        """Ask the work to stop; it ends with the core's ``Cancelled`` error."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def progress(self) -> tuple[float, str]:
        """Latest ``(fraction in [0, 1], message)`` reported by the work."""
        with self._lock:
            return self._progress

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work ends (for scripts and tests; the GUI polls :attr:`done`)."""
        return self._finished.wait(timeout)

    def outcome(self) -> T:
        """The work's return value, or its exception re-raised here (call once :attr:`done`)."""
        if not self.done:
            raise RuntimeError("the job is still running")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputVolume:
    """One volume node the module creates (or refreshes) after a run."""

    key: str  # "fused", "aligned", "jacobian" or "checkerboard" (parameter-node role)
    name: str  # node name
    node_class: str  # vtkMRMLScalarVolumeNode or vtkMRMLVectorVolumeNode (colour)
    image: sitk.Image  # on the fixed volume's grid, ready for sitkUtils.PushVolumeToSlicer
    color_node_id: str | None = None  # None: Slicer's default grey / RGB display
    window_level: tuple[float, float] | None = None  # None: automatic window/level


def node_names(moving_name: str) -> dict[str, str]:
    """Names of the output nodes, derived from the moving volume's name."""
    base = f"{moving_name} BSAFusion"
    return {key: f"{base} {key}" for key in ("transform", "fused", "aligned", "jacobian", "checkerboard")}


def _node_class(image: sitk.Image) -> str:
    return "vtkMRMLVectorVolumeNode" if image.GetNumberOfComponentsPerPixel() > 1 else "vtkMRMLScalarVolumeNode"


def to_display_rgb(image: sitk.Image) -> sitk.Image:
    """Colour volumes as 8-bit RGB, the vector pixel type Slicer shows directly as colour.

    Float RGB with values in [0, 1] (the core's convention) is scaled to 0..255; scalar and
    8-bit images are returned unchanged.
    """
    if image.GetNumberOfComponentsPerPixel() == 1 or image.GetPixelID() == sitk.sitkVectorUInt8:
        return image
    if image.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError(f"colour volume must have 3 components, got {image.GetNumberOfComponentsPerPixel()}")
    values = np.clip(sitk.GetArrayViewFromImage(image).astype(np.float32), 0.0, 1.0)
    out = sitk.GetImageFromArray(np.round(values * 255.0).astype(np.uint8), isVector=True)
    out.CopyInformation(image)
    return out


def _unit_scalar(image: sitk.Image) -> sitk.Image:
    """Grey float32 in [0, 1]: the luma of a colour image, 1st..99th percentile stretched."""
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    if image.GetNumberOfComponentsPerPixel() == 3:
        scale = 255.0 if image.GetPixelID() == sitk.sitkVectorUInt8 else 1.0
        values = split_luma(values / scale)[0].astype(np.float32)
    elif image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a grey or RGB volume, got {image.GetNumberOfComponentsPerPixel()} components")
    lo, hi = np.percentile(values, [1.0, 99.0])
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    out = sitk.GetImageFromArray(scaled.astype(np.float32))
    out.CopyInformation(image)
    return out


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    """Same grid: size, spacing, origin and direction (within ``tolerance``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def checkerboard_volume(fixed: sitk.Image, aligned: sitk.Image, tiles: int = 8) -> sitk.Image:
    """Alternating 3D blocks of the fixed and the aligned volume (both stretched to [0, 1]).

    Slicer's slice views can blend two layers (the fade slider) but have no checkerboard
    compositing, so the module shows this volume instead: misregistration appears as broken
    edges where blocks meet, in all three slice orientations. It is computed once from the
    core's aligned volume (ITK's CheckerBoardImageFilter through ``sitk.CheckerBoard``);
    editing the transform afterwards does not update it.
    """
    if not same_geometry(fixed, aligned):
        raise ValueError("the aligned volume is not on the fixed volume's grid")
    a, b = _unit_scalar(fixed), _unit_scalar(aligned)
    pattern = [max(1, min(int(tiles), int(size))) for size in a.GetSize()]
    return sitk.CheckerBoard(a, b, pattern)


def jacobian_window_level(jacobian: sitk.Image) -> tuple[float, float]:
    """Window/level centred on det J = 1 so that the diverging table reads at a glance.

    The window spans the 99th percentile of ``|det J - 1|`` on each side of 1 (at least
    +-0.05 so a near-identity map is not all noise-coloured, at most +-1 so that folding,
    det J <= 0, always shows as the deepest blue).
    """
    values = sitk.GetArrayViewFromImage(jacobian)
    finite = values[np.isfinite(values)]
    spread = float(np.percentile(np.abs(finite - 1.0), 99.0)) if finite.size else 0.0
    return 2.0 * float(np.clip(spread, 0.05, 1.0)), 1.0


def output_volumes(result: VolumeResult, fixed: sitk.Image, moving_name: str, checker_tiles: int = 8) -> list[OutputVolume]:
    """The volumes to show after a run, all on the fixed volume's grid.

    * ``fused``: the fused volume (grey for CT; 8-bit RGB vector volume for PET/SPECT);
    * ``aligned``: the moving volume resampled onto the fixed grid by the core;
    * ``jacobian``: det of the Jacobian of the fixed->moving mapping, shown with the diverging
      table (blue < 1 < red; <= 0 means folding, an implausible deformation);
    * ``checkerboard``: :func:`checkerboard_volume` of fixed and aligned.

    Raises ``ValueError`` when an output of the core is not on the fixed grid (a core bug that
    would otherwise show up as a silently shifted overlay).
    """
    names = node_names(moving_name)
    fused = to_display_rgb(result.fused)
    aligned = to_display_rgb(result.aligned)
    jacobian = sitk.Cast(result.jacobian, sitk.sitkFloat32)
    for key, image in (("fused", fused), ("aligned", aligned), ("jacobian", jacobian)):
        if not same_geometry(image, fixed):
            raise ValueError(f"core output {key!r} is not on the fixed volume's grid")
    return [
        OutputVolume("fused", names["fused"], _node_class(fused), fused),
        OutputVolume("aligned", names["aligned"], _node_class(aligned), aligned),
        OutputVolume("jacobian", names["jacobian"], "vtkMRMLScalarVolumeNode", jacobian,
                     JACOBIAN_COLOR_NODE_ID, jacobian_window_level(jacobian)),
        OutputVolume("checkerboard", names["checkerboard"], "vtkMRMLScalarVolumeNode",
                     checkerboard_volume(fixed, result.aligned, checker_tiles)),
    ]


def quality_summary(result: VolumeResult) -> str:
    """One line for the status label: inverse consistency, folding and time."""
    jac = sitk.GetArrayViewFromImage(result.jacobian)
    folding = 100.0 * float(np.mean(jac <= 0)) if jac.size else 0.0
    timings = result.timings or {}
    seconds = float(timings.get("total", sum(timings.values())))
    return (f"inverse consistency {float(result.inverse_consistency_mm):.2f} mm, "
            f"folding {folding:.2f} % of voxels, {seconds:.1f} s")


# --------------------------------------------------------------------------------------------
# The transform for Slicer, and the coordinate checks of the self-test
# --------------------------------------------------------------------------------------------


def write_slicer_transform(transform: sitk.Transform, reference: sitk.Image, directory: str | Path,
                           stem: str = "bsafusion_transform") -> Path:
    """Write ``transform`` (fixed -> moving points, LPS mm) as ``<stem>.nrrd`` for Slicer.

    A compressed displacement field on ``reference``'s grid
    (:func:`bsafusion.transforms.write_displacement_transform`, the file the batch outputs hold
    too); ``vtkMRMLTransformStorageNode`` reads it as one grid transform *from parent*, which is
    what the module sets as the moving volume's parent transform.
    """
    return write_displacement_transform(transform, reference, Path(directory) / f"{stem}.nrrd")


def read_slicer_transform(path: str | Path) -> sitk.DisplacementFieldTransform:
    """The transform of a :func:`write_slicer_transform` file, as SimpleITK applies it."""
    return read_displacement_transform(path)


def ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """The 4 x 4 IJK -> RAS matrix of a Slicer volume node holding ``image`` (LPS geometry).

    SimpleITK maps a voxel index to ``origin + direction @ (spacing * index)`` in LPS; Slicer's
    node stores the same mapping in RAS, so both the rotation-scale block and the origin get
    x and y negated.
    """
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = _LPS_RAS[:, None] * direction * spacing[None, :]
    matrix[:3, 3] = lps_to_ras(image.GetOrigin())
    return matrix


def image_from_node_array(array: np.ndarray, ijk_to_ras_matrix: np.ndarray) -> sitk.Image:
    """A SimpleITK image (LPS geometry) from a volume node's voxels and IJK -> RAS matrix.

    ``array`` is indexed ``[k, j, i]`` (``[k, j, i, component]`` for vector volumes), as
    ``slicer.util.arrayFromVolume`` returns it: the same order as ``sitk.GetArrayFromImage``.
    """
    values = np.asarray(array)
    matrix = np.asarray(ijk_to_ras_matrix, dtype=np.float64)
    image = sitk.GetImageFromArray(np.ascontiguousarray(values), isVector=values.ndim == 4)
    lps = _LPS_RAS[:, None] * matrix[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image.SetSpacing(tuple(spacing))
    image.SetDirection(tuple((lps / spacing[None, :]).ravel()))
    image.SetOrigin(tuple(ras_to_lps(matrix[:3, 3])))
    return image


_LPS_RAS = np.array([-1.0, -1.0, 1.0])


def ras_to_lps(points: Sequence[float] | np.ndarray) -> np.ndarray:
    """RAS (Slicer's scene) -> LPS (ITK/DICOM) point(s): negate x and y. Its own inverse."""
    return np.asarray(points, dtype=np.float64) * _LPS_RAS


lps_to_ras = ras_to_lps  # the flip is an involution; two names for readable call sites


def sample_points(image: sitk.Image, count: int = 20, margin: float = 0.2, seed: int = 0,
                  on_grid: bool = False) -> np.ndarray:
    """``count`` physical points (LPS, mm) inside ``image``, away from its border by ``margin``.

    Used to compare two implementations of one transform where both are well defined
    (displacement fields are extrapolated differently outside their grid). ``on_grid=True``
    puts the points on voxel centres, where a displacement field needs no interpolation, so
    implementations that interpolate differently (ITK linear, VTK cubic) agree exactly.
    """
    rng = np.random.default_rng(seed)
    size = np.array(image.GetSize(), dtype=np.float64)
    low, high = margin * (size - 1), (1.0 - margin) * (size - 1)
    indices = rng.uniform(low, high, size=(int(count), image.GetDimension()))
    if on_grid:
        indices = np.round(indices)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in indices])


def transform_discrepancy_mm(
    reference: sitk.Transform, from_parent_ras: Callable[[tuple[float, float, float]], Sequence[float]],
    points_lps: np.ndarray,
) -> float:
    """Largest distance (mm) between ``reference`` and a Slicer transform at ``points_lps``.

    ``from_parent_ras`` maps a RAS point the way Slicer resamples a child volume, e.g.
    ``node.GetTransformFromParent().TransformPoint``. Zero (to interpolation precision) means the
    node reproduces the core's transform, RAS/LPS conversion included.
    """
    worst = 0.0
    for p in np.asarray(points_lps, dtype=np.float64):
        expected = np.array(reference.TransformPoint(tuple(p)))
        got = ras_to_lps(from_parent_ras(tuple(lps_to_ras(p))))
        worst = max(worst, float(np.linalg.norm(got - expected)))
    return worst
