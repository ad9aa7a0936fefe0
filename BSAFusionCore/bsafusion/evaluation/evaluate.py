"""Per-case metrics of registration + fusion outputs on unaligned test cases, and their summary.

One row per (case, method): the five fusion metrics of the paper and, where the truth exists,
the registration metrics. :func:`case_metrics` works on arrays, so any method's outputs can be
scored the same way (the ``bsafusion evaluate`` command scores a folder of published outputs;
a benchmark scores methods it runs itself through :func:`evaluate_methods`).

Inputs
------
Cases: the layout of :class:`bsafusion.training.data.UnalignedCaseDataset` (``root/<MOD>/MRI``,
``root/<MOD>/<MOD>``, optional ``root/<MOD>/<MOD>_label`` and ``<MOD>_RGB``). Outputs
(:class:`OutputFolder`): the layout of the published BSAFusion results, ``root/<MOD>/Fusion_GRAY``
(fused luma) or ``root/<MOD>/Fusion`` (luma taken if colour), optional ``root/<MOD>/<MOD>_align``
(the aligned moving image), file names matching the cases'. All images are used as luma in
[0, 1] (:func:`bsafusion.io.read_luma`); PET/SPECT colour plays no part in the metrics.

Against which sources are fusion metrics computed?
--------------------------------------------------
Fusion metrics measure how much of each *source* the fused image keeps, so the choice of the
second source decides what is measured. For unaligned input there are three candidates for
it: the unaligned moving image, the method's own aligned image, and the aligned truth
(``<MOD>_label``, the moving image before its deformation). We use, in this order:

1. the **aligned truth** when the case has one. It is the same reference for every method,
   so scores are comparable, and a fused image whose moving-image structures sit in the
   wrong place is penalised, as it should be: misregistration is a fusion error for the
   reader of the fused image. The other two choices reward a method for agreeing with
   itself: fusing the *unaligned* moving image scores well against the unaligned moving
   image (the "no registration" baseline would look good), and a method's fused image
   always resembles its own aligned image, however wrong the alignment is.
2. else the **method's aligned image** (user data without truth: the score then says how well
   the method fused what it aligned, not whether it aligned correctly);
3. else the **moving image** itself (meaningful only for pairs that are already aligned).

The ``fusion_reference`` column says which one was used (``"label"``, ``"aligned"`` or
``"moving"``). The fixed image (MRI) is always the first source.

Registration metrics (NCC, SSIM, MAE, mutual information) compare the method's aligned moving
image with the aligned truth; they need both. With a known synthetic field (``Case.true_field``,
in the :mod:`bsafusion.deform` convention, e.g. :attr:`bsafusion.deform.Misalignment.inverse`)
and a method field, the endpoint error is added; the folding fraction needs only the method
field. Missing values are NaN in memory and empty in CSV files.

The "no registration" baseline (:func:`no_registration`) fuses the unaligned pair by averaging
and "aligns" by doing nothing, so its rows show what misalignment costs.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from bsafusion.evaluation.baselines.fusion_rules import fuse_average
from bsafusion.evaluation.cases import UnalignedCaseDataset
from bsafusion.layout import list_images
from bsafusion.modality import MOVING
from bsafusion.errors import InputError
from bsafusion.io import atomic_output, read_luma, read_slice
from bsafusion.evaluation.metrics import FUSION_METRICS
from bsafusion.evaluation.metrics.registration import endpoint_error, folding_fraction, mae, mutual_information, ncc, ssim

__all__ = [
    "FUSION_METRIC_NAMES",
    "REGISTRATION_METRIC_NAMES",
    "FIELD_METRIC_NAMES",
    "METRIC_NAMES",
    "ROW_KEYS",
    "NO_REGISTRATION",
    "Case",
    "MethodOutput",
    "MethodOutputLike",
    "Method",
    "OutputFolder",
    "case_metrics",
    "case_sets",
    "iter_cases",
    "no_registration",
    "evaluate_methods",
    "evaluate_folder",
    "summarize",
    "write_csv",
    "read_csv",
]

Row = dict[str, Any]

FUSION_METRIC_NAMES: tuple[str, ...] = tuple(FUSION_METRICS)
"""``q_abf, q_cv, q_vif, q_s, q_ssim``: fused luma against (fixed, reference moving)."""

_REGISTRATION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "ncc": ncc,
    "ssim": ssim,
    "mae": mae,
    "mutual_information": mutual_information,
}
REGISTRATION_METRIC_NAMES: tuple[str, ...] = tuple(_REGISTRATION_METRICS)
"""Aligned moving luma against the aligned truth."""

FIELD_METRIC_NAMES: tuple[str, ...] = ("endpoint_error", "folding_fraction")
"""Method field against the true field (pixels), and the method field's folding."""

METRIC_NAMES: tuple[str, ...] = FUSION_METRIC_NAMES + REGISTRATION_METRIC_NAMES + FIELD_METRIC_NAMES
"""Every metric column of a row, in table order; all are keys of ``HIGHER_IS_BETTER``."""

ROW_KEYS: tuple[str, ...] = (
    "modality", "case", "method", "status", "error", "fusion_reference", *METRIC_NAMES, "seconds",
)  # fmt: skip
"""Columns of a per-case row. ``status`` is ``"ok"`` or ``"failed"`` (then ``error`` says why
and every metric is NaN); ``seconds`` is the wall time of the method's call for the case."""

NO_REGISTRATION = "No registration (average)"
"""Method name of :func:`no_registration` in rows and tables."""

_NUMERIC_KEYS = frozenset((*METRIC_NAMES, "seconds"))


# --------------------------------------------------------------------------- cases and outputs


@dataclass(frozen=True)
class Case:
    """One unaligned test case; images are float32 in [0, 1] on the fixed grid.

    Attributes
    ----------
    modality, name:
        ``"CT"``, ``"PET"`` or ``"SPECT"``; the file name without extension.
    fixed:
        ``(H, W)`` MRI.
    moving:
        ``(H, W)`` unaligned moving image (its luma if colour).
    label:
        ``(H, W)`` aligned truth (moving image before deformation, luma), or ``None``.
    moving_rgb:
        ``(H, W, 3)`` unaligned moving image in colour (PET/SPECT with ``<MOD>_RGB/``), or ``None``.
    true_field:
        ``(2, H, W)`` known registration field in pixels (synthetic cases), or ``None``.
    """

    modality: str
    name: str
    fixed: np.ndarray
    moving: np.ndarray
    label: np.ndarray | None = None
    moving_rgb: np.ndarray | None = None
    true_field: np.ndarray | None = None


class MethodOutputLike(Protocol):
    """What a method returns for a case; :class:`bsafusion.inference.fuser.FusionResult` qualifies."""

    fused_luma: np.ndarray
    aligned_luma: np.ndarray | None


@dataclass(frozen=True)
class MethodOutput:
    """A method's outputs for one case: fused luma, aligned moving luma, field (all optional but
    ``fused_luma``); the field aligns moving to fixed, :mod:`bsafusion.deform` convention."""

    fused_luma: np.ndarray
    aligned_luma: np.ndarray | None = None
    field: np.ndarray | None = None


Method = Callable[[Case], MethodOutputLike]
"""A method maps a case to its outputs; raising marks the case as failed for that method."""


def case_sets(root: str | os.PathLike, modalities: Sequence[str] | None = None) -> list[UnalignedCaseDataset]:
    """Datasets of the unaligned cases under ``root``, one per modality.

    ``modalities`` defaults to every one of CT, PET, SPECT with a folder under ``root``
    (``root`` may also be a single modality's folder holding ``MRI/`` and ``<MOD>/``).

    Raises
    ------
    InputError
        Missing folder, no modality folder, a case without its partner, an empty folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    if modalities is None:
        modalities = [m for m in MOVING if (root / m).is_dir()]
        if not modalities:
            raise InputError(f"{root}: no {', '.join(MOVING)} case folder found")
    return [UnalignedCaseDataset(root, modality) for modality in modalities]


def _plane(item: dict[str, Any], key: str) -> np.ndarray | None:
    value = item.get(key)
    return None if value is None else value.numpy()[0]


def iter_cases(datasets: Iterable[UnalignedCaseDataset], limit: int | None = None) -> Iterator[Case]:
    """Read the cases of ``datasets`` one at a time (at most ``limit`` per modality)."""
    for dataset in datasets:
        count = len(dataset) if limit is None else min(len(dataset), int(limit))
        for index in range(count):
            item = dataset[index]
            rgb = item.get("moving_rgb")
            yield Case(
                modality=dataset.modality,
                name=item["name"],
                fixed=_plane(item, "fixed"),
                moving=_plane(item, "moving"),
                label=_plane(item, "moving_label"),
                moving_rgb=None if rgb is None else np.ascontiguousarray(rgb.numpy().transpose(1, 2, 0)),
            )


class OutputFolder:
    """A folder of a method's outputs, read as a :data:`Method` (published-results layout).

    Per modality: ``root/<MOD>/Fusion_GRAY/<name>.png`` (fused luma; preferred because it is the
    luma the authors published) or ``root/<MOD>/Fusion/`` (colour images give their luma), and
    optionally ``root/<MOD>/<MOD>_align/`` (aligned moving image). ``root`` may also be a single
    modality's folder, if it is named ``<MOD>`` or holds ``<MOD>_align/``. Output files without a
    case are ignored.

    Examples
    --------
    >>> outputs = OutputFolder("../shared/data/harvard/official_results")  # doctest: +SKIP
    >>> outputs.check(case_sets("../shared/data/harvard/test_unaligned"))   # doctest: +SKIP
    """

    FUSED_FOLDERS: tuple[str, ...] = ("Fusion_GRAY", "Fusion")

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such folder")
        self._files: dict[str, tuple[dict[str, Path], dict[str, Path] | None]] = {}
        self._colour_files: dict[str, dict[str, Path]] = {}

    def _base(self, modality: str) -> Path:
        # root itself counts only if it is recognisably this modality's folder, so that one
        # modality's outputs are never paired with another modality's cases of the same names
        own = self.root.name.upper() == modality or (self.root / f"{modality}_align").is_dir()
        for base in (self.root / modality, *([self.root] if own else [])):
            if any((base / name).is_dir() for name in self.FUSED_FOLDERS):
                return base
        raise InputError(f"{self.root}: no {modality} outputs (expected {modality}/Fusion_GRAY or {modality}/Fusion)")

    def files(self, modality: str) -> tuple[dict[str, Path], dict[str, Path] | None]:
        """Fused and aligned files of ``modality`` by case name (aligned: ``None`` if no folder)."""
        if modality not in self._files:
            base = self._base(modality)
            fused_dir = next(base / name for name in self.FUSED_FOLDERS if (base / name).is_dir())
            align_dir = base / f"{modality}_align"
            self._files[modality] = (list_images(fused_dir), list_images(align_dir) if align_dir.is_dir() else None)
        return self._files[modality]

    def check(self, datasets: Iterable[UnalignedCaseDataset]) -> None:
        """Raise :class:`InputError` for the first case without its fused (or aligned) output."""
        for dataset in datasets:
            fused, aligned = self.files(dataset.modality)
            for name, case_files in zip(dataset.names, dataset.files):
                for listing in (fused, aligned):
                    if listing is not None and name not in listing:
                        folder = next(iter(listing.values())).parent if listing else "its output folder"
                        raise InputError(f"{case_files[0]}: no output named {name!r} in {folder}")

    def _read(self, path: Path, case: Case) -> np.ndarray:
        luma = read_luma(path)[0]
        if luma.shape != case.fixed.shape:
            raise InputError(
                f"{path}: size {luma.shape[1]}x{luma.shape[0]} differs from the case's fixed image "
                f"({case.fixed.shape[1]}x{case.fixed.shape[0]})"
            )
        return luma

    def colour(self, case: Case) -> np.ndarray | None:
        """The case's fused image in colour, ``(H, W, 3)`` in [0, 1], from ``Fusion/`` (the
        metrics read ``Fusion_GRAY/`` first); ``None`` without a colour file for the case."""
        if case.modality not in self._colour_files:
            folder = self._base(case.modality) / "Fusion"
            self._colour_files[case.modality] = list_images(folder) if folder.is_dir() else {}
        path = self._colour_files[case.modality].get(case.name)
        if path is None:
            return None
        rgb = read_slice(path, grey=False)
        return None if np.ptp(rgb, axis=-1).max() < 1e-6 else rgb

    def __call__(self, case: Case) -> MethodOutput:
        fused, aligned = self.files(case.modality)
        if case.name not in fused:
            raise InputError(f"{self.root}: no {case.modality} output named {case.name!r}")
        aligned_path = None if aligned is None else aligned.get(case.name)
        if aligned is not None and aligned_path is None:
            raise InputError(f"{self.root}: no {case.modality}_align output named {case.name!r}")
        return MethodOutput(
            fused_luma=self._read(fused[case.name], case),
            aligned_luma=None if aligned_path is None else self._read(aligned_path, case),
        )


def no_registration(case: Case) -> MethodOutput:
    """Baseline: fuse the *unaligned* pair by averaging; the aligned image is the moving one.

    A user who skips registration gets this; its registration metrics are those of the input
    misalignment, and its fusion metrics against the aligned truth show what misalignment costs.
    The average is :func:`bsafusion.evaluation.baselines.fuse_average`, the rule of the two-stage baselines
    (``bsafusion benchmark`` reports this method as "No reg + average"), rounded to float32 like
    the case's images.
    """
    fused = fuse_average(case.fixed, case.moving).astype(np.float32)
    return MethodOutput(fused_luma=fused, aligned_luma=case.moving)


# --------------------------------------------------------------------------- metrics


def case_metrics(
    fixed: np.ndarray,
    moving: np.ndarray,
    fused: np.ndarray,
    aligned: np.ndarray | None = None,
    label: np.ndarray | None = None,
    field: np.ndarray | None = None,
    true_field: np.ndarray | None = None,
) -> Row:
    """Every metric of one case for one method's outputs (luma images in [0, 1], one grid).

    Parameters
    ----------
    fixed, moving:
        ``(H, W)`` fixed MRI and unaligned moving luma (the inputs).
    fused:
        ``(H, W)`` the method's fused luma.
    aligned:
        ``(H, W)`` the method's aligned moving luma, if it produces one.
    label:
        ``(H, W)`` aligned truth, if known.
    field, true_field:
        ``(2, H, W)`` the method's registration field and the true one (pixels), if known.

    Returns
    -------
    dict
        ``fusion_reference`` (``"label"``, ``"aligned"`` or ``"moving"``: the second source of
        the fusion metrics, see the module docstring) and a float for every name of
        :data:`METRIC_NAMES` (NaN where the inputs do not allow it).

    Raises
    ------
    InputError
        Images of different shapes, NaN/Inf values, constant images where NCC needs contrast.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> mri, ct = rng.random((48, 48)), rng.random((48, 48))
    >>> m = case_metrics(mri, ct, fused=mri, aligned=ct, label=ct)
    >>> m["fusion_reference"], round(m["ncc"], 6), m["mae"]
    ('label', 1.0, 0.0)
    """
    reference, reference_name = (
        (label, "label") if label is not None else (aligned, "aligned") if aligned is not None else (moving, "moving")
    )
    row: Row = {"fusion_reference": reference_name}
    for name, metric in FUSION_METRICS.items():
        row[name] = float(metric(fused, fixed, reference))
    for name, metric in _REGISTRATION_METRICS.items():
        row[name] = float(metric(aligned, label)) if aligned is not None and label is not None else math.nan
    both_fields = field is not None and true_field is not None
    row["endpoint_error"] = float(endpoint_error(field, true_field)) if both_fields else math.nan
    row["folding_fraction"] = float(folding_fraction(field)) if field is not None else math.nan
    return row


def _failed_row(error: BaseException) -> Row:
    message = " ".join(str(error).split()) or type(error).__name__
    row: Row = {name: math.nan for name in METRIC_NAMES}
    row.update(status="failed", error=f"{type(error).__name__}: {message}"[:300], fusion_reference="")
    return row


def _score(case: Case, method: Method) -> Row:
    start = time.perf_counter()
    output = method(case)
    seconds = time.perf_counter() - start
    metrics = case_metrics(
        case.fixed,
        case.moving,
        np.asarray(output.fused_luma),
        aligned=getattr(output, "aligned_luma", None),
        label=case.label,
        field=getattr(output, "field", None),
        true_field=case.true_field,
    )
    return {"status": "ok", "error": "", **metrics, "seconds": seconds}


def evaluate_methods(
    cases: Iterable[Case],
    methods: Mapping[str, Method],
    errors: str = "record",
    progress: bool = False,
    total: int | None = None,
) -> list[Row]:
    """Run every method on every case and score it: one row per (case, method).

    Parameters
    ----------
    cases:
        Cases, e.g. ``iter_cases(case_sets(root))`` or a list of synthetic :class:`Case`.
    methods:
        Method name -> callable ``case -> outputs`` (see :data:`Method`), in table order.
    errors:
        ``"record"`` (default): an exception raised by a method, or by scoring its outputs,
        gives a ``failed`` row with the message, and the other cases and methods go on.
        ``"raise"``: the exception propagates (for outputs the user must fix, e.g. a folder).
    progress:
        Show a tqdm progress bar over cases (on stderr).
    total:
        Number of cases for the progress bar (default ``len(cases)`` when defined).

    Returns
    -------
    list of dict
        Rows with the keys :data:`ROW_KEYS`, cases in input order, methods in ``methods`` order.
    """
    from tqdm.auto import tqdm

    if errors not in ("record", "raise"):
        raise ValueError(f"errors must be 'record' or 'raise', got {errors!r}")
    if total is None and hasattr(cases, "__len__"):
        total = len(cases)  # type: ignore[arg-type]
    rows: list[Row] = []
    for case in tqdm(cases, total=total, disable=not progress, desc="evaluate", unit="case"):
        for name, method in methods.items():
            try:
                scored = _score(case, method)
            except Exception as exc:  # a method's failure must not lose the other cases
                if errors == "raise":
                    raise
                scored = {**_failed_row(exc), "seconds": math.nan}
            rows.append({"modality": case.modality, "case": case.name, "method": name, **scored})
    return [{key: row[key] for key in ROW_KEYS} for row in rows]


def evaluate_folder(
    cases_root: str | os.PathLike,
    outputs_root: str | os.PathLike,
    name: str,
    modalities: Sequence[str] | None = None,
    baseline: bool = True,
    limit: int | None = None,
    progress: bool = False,
) -> list[Row]:
    """Score a folder of outputs (published-results layout) on the unaligned cases.

    Every case must have its outputs (checked before anything is computed); a missing,
    unreadable or wrongly sized output raises :class:`InputError`. With ``baseline``, the
    :func:`no_registration` rows (method :data:`NO_REGISTRATION`) follow each case's rows.
    ``limit`` evaluates only the first cases of each modality (quick looks, tests).

    Examples
    --------
    >>> rows = evaluate_folder("../shared/data/harvard/test_unaligned",
    ...                        "../shared/data/harvard/official_results", "BSAFusion-published")  # doctest: +SKIP
    """
    if baseline and name == NO_REGISTRATION:
        raise InputError(f"method name {name!r} is taken by the no-registration baseline")
    datasets = case_sets(cases_root, modalities)
    outputs = OutputFolder(outputs_root)
    outputs.check(datasets)
    methods: dict[str, Method] = {name: outputs}
    if baseline:
        methods[NO_REGISTRATION] = no_registration
    total = sum(len(d) if limit is None else min(len(d), int(limit)) for d in datasets)
    return evaluate_methods(iter_cases(datasets, limit), methods, errors="raise", progress=progress, total=total)


# --------------------------------------------------------------------------- summary


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; NaN for fewer than 2 values)."""
    if not values:
        return math.nan, math.nan
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else math.nan


def summarize(rows: Iterable[Row]) -> list[Row]:
    """Mean and standard deviation of every metric per (modality, method), in first-seen order.

    Failed rows and missing (NaN) values are left out of the statistics. The standard deviation
    is the sample one (``ddof=1``), NaN with fewer than two values.

    Returns
    -------
    list of dict
        Keys ``modality``, ``method``, ``cases`` (rows), ``failed`` (failed rows), and for each
        metric ``<name>_mean``, ``<name>_std`` and ``<name>_n`` (number of values used).
    """
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row["modality"], row["method"]), []).append(row)
    summary: list[Row] = []
    for (modality, method), members in groups.items():
        ok = [row for row in members if row["status"] == "ok"]
        entry: Row = {"modality": modality, "method": method, "cases": len(members), "failed": len(members) - len(ok)}
        for name in (*METRIC_NAMES, "seconds"):
            values = [float(row[name]) for row in ok if not math.isnan(float(row[name]))]
            entry[f"{name}_mean"], entry[f"{name}_std"] = _mean_std(values)
            entry[f"{name}_n"] = len(values)
        summary.append(entry)
    return summary


# --------------------------------------------------------------------------- CSV


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def write_csv(rows: Sequence[Row], path: str | os.PathLike, columns: Sequence[str] | None = None) -> Path:
    """Write rows (per-case rows or a summary) as CSV, atomically; floats at full precision.

    ``columns`` defaults to the keys of the first row (:data:`ROW_KEYS` for per-case rows).
    NaN is written as an empty cell.
    """
    path = Path(path)
    if columns is None:
        columns = list(rows[0]) if rows else list(ROW_KEYS)
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(column, "")) for column in columns])
    return path


def read_csv(path: str | os.PathLike) -> list[Row]:
    """Read per-case rows written by :func:`write_csv` (metric cells as floats, empty as NaN)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [key for key in ("modality", "case", "method", "status") if key not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: not a per-case metrics file (missing column(s) {', '.join(missing)})")
        rows = []
        for line in reader:
            row: Row = dict(line)
            for key in _NUMERIC_KEYS.intersection(row):
                try:
                    row[key] = float(row[key]) if row[key] != "" else math.nan
                except ValueError:
                    raise InputError(f"{path}: line {reader.line_num}: {key} is not a number ({row[key]!r})") from None
            rows.append(row)
    return rows

