"""Benchmark BSAFusion against what a user would do instead, on a folder of unaligned cases.

Why this module exists
----------------------
Users trust single-stage registration + fusion only if they see it beat the two-stage pipeline
they run today, on their data. :func:`run_benchmark` runs every method on every case, scores
them all the same way (:mod:`bsafusion.evaluation.evaluate`) and writes a results folder
(:mod:`bsafusion.evaluation.report`) that answers the question, plus a picture per modality.

Methods (selection keys in brackets, table order)
-------------------------------------------------
``BSAFusion (ours)`` [``ours``]
    The network (:class:`bsafusion.inference.fuser.Fuser`), one model per modality: the shipped weights,
    or ``bsafusion_<mod>.pt`` from ``weights_dir``. It is given the moving image's **luma**
    (PET/SPECT Y, BT.601), the image every metric is computed on; its colour path (chroma warped
    and put back) does not change the luma, so it plays no part in the scores.
``Ablation: <NAME>`` [``ablations``]
    Other BSFA-F models (the paper's ablations, or any model to compare), given as
    ``{name: file_or_folder}``: a weights file, a training run folder (its ``best.pt``) or a
    folder of ``bsafusion_<mod>.pt``. Models trained on several modalities at once (trained
    for ``"CT+PET+SPECT"``) are accepted for each of those modalities (:func:`bsafusion.model.checkpoint.load_model`).
``BSAFusion (published)`` [``published``]
    The authors' published outputs read from a folder (:class:`bsafusion.evaluation.evaluate.OutputFolder`;
    its run time is the time to read the files, not the authors' compute). A case without its
    output file fails for this method only; a modality without any output folder is an error.
``Classical reg + <rule>`` [``classical``]
    SimpleITK Mattes-MI affine then B-spline registration
    (:func:`bsafusion.evaluation.baselines.register_classical`, settings of
    :meth:`~bsafusion.inference.prealign.ClassicalSettings.for_modality`), then a classical fusion rule
    (:data:`bsafusion.evaluation.baselines.FUSION_RULES`: average, max-abs, Laplacian pyramid) on luma.
    The registration runs once per case and is shared by the three rules; each rule's
    ``seconds`` is that registration time plus its own fusion time, i.e. what a user pays for
    that pipeline.
``No reg + <rule>`` [``noreg``]
    The rules applied to the unaligned pair; the "aligned" image is the moving one, so its
    registration metrics are those of the input misalignment: what skipping registration costs.
``Oracle + <rule>`` [``oracle``]
    The rules applied to the fixed image and the aligned truth (``<MOD>_label``): the best a
    two-stage pipeline with these rules could do with perfect registration (an upper bound for
    the fusion columns). Only for modalities with labels; it reports no aligned image, so its
    registration columns are empty rather than trivially perfect.

Every method computed here is scored on its outputs rounded to 8 bits (:func:`as_written`), the
precision of the PNG files the cases, the published outputs and ``bsafusion fuse`` hold.

Outputs (in ``out_dir``)
------------------------
``per_case.csv`` (every metric of every case and method, ``status``/``error``, ``seconds``),
``summary.csv``, ``report.md`` (mean ± std tables per modality, best in bold, Q_CV and the other
lower-is-better columns handled, run time per pair, the exact command, failures),
``boxplot_<metric>.png`` (:func:`bsafusion.evaluation.report.write_report`); for the first
``panel_count`` cases of each modality ``panel_<MOD>_<case>.png`` (fixed, moving and each
method's fused luma), ``colour_<MOD>_<case>.png`` (PET/SPECT: each method's fused image in
colour, its luma with the moving image's chroma moved by its own field, and the published colour
files) and ``checkerboard_<MOD>_<case>.png`` (fixed image against the unaligned moving image,
each registration's aligned image and the aligned truth); and ``settings.json`` (methods, weights files, classical settings, seed, device).

A method that fails on a case (an exception in the method or in scoring its outputs) gives a
``failed`` row for that case and method; every other row is kept
(:func:`bsafusion.evaluation.evaluate.evaluate_methods` with ``errors="record"``).

Determinism
-----------
Given ``seed`` the metric columns are reproducible: torch is seeded, the network runs in eval
mode, and the classical registration samples its metric voxels with seed
``ClassicalSettings().seed + seed`` on one ITK thread (``seed=0`` keeps the documented
baseline defaults; SimpleITK would read a seed of 0 as "wall clock"). Only ``seconds`` varies.

Examples
--------
>>> report = run_benchmark("../shared/data/harvard/test_unaligned", "bench_out",
...                        methods=["classical", "noreg", "oracle"], limit=2)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bsafusion.model import checkpoint
from bsafusion.evaluation.baselines import ClassicalResult, ClassicalSettings, get_rule, register_classical
from bsafusion.errors import InputError
from bsafusion.evaluation.cases import UnalignedCaseDataset
from bsafusion.evaluation.evaluate import (
    Case,
    Method,
    MethodOutput,
    MethodOutputLike,
    OutputFolder,
    Row,
    case_sets,
    evaluate_methods,
    iter_cases,
)
from bsafusion.colour import merge_luma, split_luma, warp_chroma
from bsafusion.inference.fuser import Fuser
from bsafusion.io import as_eight_bit, atomic_output, check_output_dir
from bsafusion.device import resolve_device

__all__ = [
    "METHOD_KEYS",
    "OURS",
    "PUBLISHED",
    "RULE_LABELS",
    "BenchmarkMethod",
    "ClassicalRegistration",
    "NetworkMethod",
    "TwoStage",
    "as_written",
    "weights_file",
    "build_methods",
    "run_benchmark",
]

METHOD_KEYS: tuple[str, ...] = ("ours", "ablations", "published", "classical", "noreg", "oracle")
"""Selection keys of the method families, in table order."""

OURS = "BSAFusion (ours)"
PUBLISHED = "BSAFusion (published)"
RULE_LABELS: dict[str, str] = {"average": "average", "max_abs": "max-abs", "laplacian": "Laplacian"}
"""Fusion rule (key of :data:`bsafusion.evaluation.baselines.FUSION_RULES`) -> its name in method names."""

_STAGES = {"classical": "Classical reg", "noreg": "No reg", "oracle": "Oracle"}


# --------------------------------------------------------------------------- network methods


def weights_file(source: str | os.PathLike, modality: str) -> Path:
    """The weights file for ``modality`` that ``source`` designates.

    ``source`` is a weights file (used for every modality), a training run folder (its
    ``best.pt``) or a folder of per-modality files named like the shipped ones
    (``bsafusion_ct.pt``, ``bsafusion_pet.pt``, ``bsafusion_spect.pt``).

    Raises
    ------
    InputError
        ``source`` does not exist, or the folder holds neither file.
    """
    source = Path(source)
    if source.is_file():
        return source
    if not source.is_dir():
        raise InputError(f"{source}: no such weights file or folder")
    name = checkpoint.weights_file_name(modality)
    for candidate in (source / "best.pt", source / name):
        if candidate.is_file():
            return candidate
    raise InputError(f"{source}: no best.pt or {name} (weights for {modality.upper()}) in this folder")


class NetworkMethod:
    """Method: a BSFA-F model per modality, run on the case's fixed image and moving luma."""

    def __init__(self, fusers: Mapping[str, Fuser]) -> None:
        self.fusers = dict(fusers)

    @property
    def weights(self) -> dict[str, str]:
        """Modality -> weights file (recorded in ``settings.json``)."""
        return {modality: str(fuser.weights) for modality, fuser in self.fusers.items()}

    @property
    def refine_steps(self) -> dict[str, int]:
        """Modality -> steps of per-pair field refinement (0 = network field only)."""
        return {modality: fuser.refine.steps for modality, fuser in self.fusers.items()}

    def __call__(self, case: Case) -> MethodOutputLike:
        if case.modality not in self.fusers:
            raise InputError(f"no {case.modality} model loaded for this method")
        return self.fusers[case.modality].fuse(case.fixed, case.moving)


# --------------------------------------------------------------------------- two-stage methods


class ClassicalRegistration:
    """Classical registration of each case, computed once and shared by the fusion rules.

    Calling it returns the :class:`~bsafusion.evaluation.baselines.ClassicalResult` of the case (a failure
    is cached too and raised again). :attr:`reused_seconds` is the registration time when the
    last call reused a result, 0 when it computed it (its time is then in the caller's wall time).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.reused_seconds = 0.0
        self._key: tuple[str, str] | None = None
        self._result: ClassicalResult | BaseException | None = None
        self._seconds = 0.0

    def settings(self, modality: str) -> ClassicalSettings:
        """The baseline's settings for ``modality``, sampling seed offset by :attr:`seed`."""
        base = ClassicalSettings.for_modality(modality)
        return replace(base, seed=ClassicalSettings().seed + self.seed)

    def __call__(self, case: Case) -> ClassicalResult:
        key = (case.modality, case.name)
        if key == self._key:
            self.reused_seconds = self._seconds
        else:
            self.reused_seconds = 0.0
            self._key = None  # stays unset if interrupted
            start = time.perf_counter()
            try:
                self._result = register_classical(case.fixed, case.moving, self.settings(case.modality))
            except Exception as exc:  # noqa: BLE001 - cached, re-raised for every rule of this case
                self._result = exc
            self._seconds = time.perf_counter() - start
            self._key = key
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result


class TwoStage:
    """Method: align the moving image one way, then fuse with a classical rule (on luma).

    Parameters
    ----------
    stage:
        ``"classical"`` (:class:`ClassicalRegistration`), ``"noreg"`` (the moving image as it
        is) or ``"oracle"`` (the aligned truth; no aligned image is reported).
    rule:
        Key of :data:`bsafusion.evaluation.baselines.FUSION_RULES`.
    registration:
        The shared :class:`ClassicalRegistration` (``"classical"`` only).
    """

    def __init__(self, stage: str, rule: str, registration: ClassicalRegistration | None = None) -> None:
        if stage not in _STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        if stage == "classical" and registration is None:
            raise ValueError("the classical stage needs a ClassicalRegistration")
        self.stage, self.rule, self.registration = stage, rule, registration
        self.fuse = get_rule(rule)

    @property
    def name(self) -> str:
        return f"{_STAGES[self.stage]} + {RULE_LABELS.get(self.rule, self.rule)}"

    @property
    def reused_seconds(self) -> float:
        """Registration time reused from another rule on the last call (see :class:`ClassicalRegistration`)."""
        return self.registration.reused_seconds if self.registration is not None else 0.0

    def _fused(self, case: Case, moving: np.ndarray) -> np.ndarray:
        # float32 like the case's images (so "No reg + average" is bsafusion.evaluation.evaluate.no_registration)
        return self.fuse(case.fixed, moving).astype(np.float32)

    def __call__(self, case: Case) -> MethodOutput:
        if self.stage == "classical":
            result = self.registration(case)  # type: ignore[misc]
            return MethodOutput(self._fused(case, result.aligned), result.aligned, result.field)
        if self.stage == "noreg":
            return MethodOutput(self._fused(case, case.moving), case.moving)
        if case.label is None:
            raise InputError(f"{case.modality} case {case.name!r}: no aligned truth (label) for the oracle")
        return MethodOutput(self._fused(case, case.label))


# --------------------------------------------------------------------------- method set


@dataclass(frozen=True)
class BenchmarkMethod:
    """A method of the benchmark.

    Attributes
    ----------
    name:
        Its name in tables and CSV files.
    key:
        Its family in :data:`METHOD_KEYS`.
    method:
        The :data:`bsafusion.evaluation.evaluate.Method` callable.
    view:
        Title of its aligned image's checkerboard in the panels; ``None`` when it adds no
        registration of its own (the three rules of one registration show it once).
    modalities:
        Modalities it runs on (``None``: all).
    """

    name: str
    key: str
    method: Method
    view: str | None = None
    modalities: frozenset[str] | None = None

    def runs_on(self, modality: str) -> bool:
        return self.modalities is None or modality in self.modalities


def _selection(methods: Iterable[str] | str | None) -> list[str] | None:
    if methods is None:
        return None
    keys = [k.strip().lower() for k in (methods.split(",") if isinstance(methods, str) else methods) if k.strip()]
    unknown = [k for k in keys if k not in METHOD_KEYS]
    if unknown or not keys:
        raise InputError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHOD_KEYS)}")
    return keys


def _network(name: str, source: str | os.PathLike | None, modalities: Sequence[str], device: str,
             refine_steps: int | None = None) -> NetworkMethod:
    fusers = {}
    for modality in modalities:
        path = checkpoint.default_weights_path(modality) if source is None else weights_file(source, modality)
        if not path.is_file():
            raise InputError(f"{path}: no weights file for {name} ({modality}); give a weights folder")
        fusers[modality] = Fuser(modality, path, device, refine=refine_steps)
    return NetworkMethod(fusers)


def build_methods(
    datasets: Sequence[UnalignedCaseDataset],
    methods: Iterable[str] | str | None = None,
    weights_dir: str | os.PathLike | None = None,
    ablations: Mapping[str, str | os.PathLike] | None = None,
    published: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    refine_steps: int | None = None,
) -> tuple[list[BenchmarkMethod], list[str]]:
    """The benchmark's methods for ``datasets``, in table order, and notes on what was left out.

    ``methods`` are keys of :data:`METHOD_KEYS` (a list or a comma-separated string); ``None``
    selects every family that is available: ``ours`` when its weights exist for every
    modality, ``ablations`` and ``published`` when given, ``oracle`` when some modality has
    labels. A family selected explicitly but unavailable is an :class:`InputError`, as are
    unreadable weights and a published folder without outputs for a modality. Models are
    loaded here, so a run fails before its first case and no case pays the loading time.
    """
    selected = _selection(methods)
    explicit = selected is not None
    wanted = set(selected if explicit else METHOD_KEYS)
    modalities = [d.modality for d in datasets]
    ablations = dict(ablations or {})
    notes: list[str] = []
    out: list[BenchmarkMethod] = []

    if "ours" in wanted:
        missing = [p for p in (checkpoint.default_weights_path(m) for m in modalities) if not p.is_file()]
        if weights_dir is None and missing and not explicit:
            notes.append(f"{OURS} left out: no shipped weights ({missing[0]}); pass a weights folder.")
        else:
            out.append(BenchmarkMethod(OURS, "ours", _network(OURS, weights_dir, modalities, device, refine_steps), view=OURS))
    if "ablations" in wanted:
        if explicit and not ablations:
            raise InputError("method 'ablations' selected but no ablation given (NAME=FILE_OR_RUN_FOLDER)")
        for label, source in ablations.items():
            name = f"Ablation: {label}"
            if not str(label).strip() or name in (m.name for m in out):
                raise InputError(f"ablation name {label!r} is empty or given twice")
            out.append(BenchmarkMethod(name, "ablations", _network(name, source, modalities, device, refine_steps), view=name))
    if "published" in wanted:
        if published is None:
            if explicit:
                raise InputError("method 'published' selected but no folder of published outputs given")
        else:
            folder = OutputFolder(published)
            aligned = [m for m in modalities if folder.files(m)[1] is not None]  # raises without outputs
            out.append(BenchmarkMethod(PUBLISHED, "published", folder, view=PUBLISHED if aligned else None))
    for stage in ("classical", "noreg", "oracle"):
        if stage not in wanted:
            continue
        runs_on = None
        if stage == "oracle":
            labelled = frozenset(d.modality for d in datasets if d.has_label)
            if not labelled:
                if explicit:
                    folder = datasets[0].root.parent
                    raise InputError(f"method 'oracle' needs the aligned truth (<MOD>_label folders) in {folder}")
                continue
            left = [m for m in modalities if m not in labelled]
            if left:
                notes.append(f"Oracle methods left out for {', '.join(left)} (no aligned truth).")
            runs_on = labelled
        registration = ClassicalRegistration(seed) if stage == "classical" else None
        for i, rule in enumerate(RULE_LABELS):
            two_stage = TwoStage(stage, rule, registration)
            view = _STAGES[stage] if stage == "classical" and i == 0 else None
            out.append(BenchmarkMethod(two_stage.name, stage, two_stage, view=view, modalities=runs_on))
    if not out:
        raise InputError("no method to run: " + (" ".join(notes) or "the selection is empty"))
    return out, notes


# --------------------------------------------------------------------------- running


def as_written(output: MethodOutputLike) -> MethodOutput:
    """``output`` with its images at the precision of an 8-bit PNG, as they are scored.

    The cases, the published outputs and what ``bsafusion fuse`` writes for them are 8-bit
    PNGs, so every method computed in memory is scored on the values its file would hold, not
    on float precision no file keeps. It matters: Q_S and Q_VIF score a window as perfect only
    when it is exactly flat, so float noise of 1e-4 in an otherwise black background, which
    rounds to 0 in the written file, would cost a method most of its Q_S. The field is kept.
    """
    aligned = getattr(output, "aligned_luma", None)
    return MethodOutput(
        fused_luma=as_eight_bit(output.fused_luma),
        aligned_luma=None if aligned is None else as_eight_bit(aligned),
        field=getattr(output, "field", None),
    )


def _run_case(case: Case, methods: Sequence[BenchmarkMethod]) -> tuple[list[Row], dict[str, MethodOutputLike]]:
    """Rows of one case (reused registration time added) and the outputs of the methods that succeeded."""
    outputs: dict[str, MethodOutputLike] = {}
    reused: dict[str, float] = {}

    def recording(entry: BenchmarkMethod) -> Method:
        def call(c: Case) -> MethodOutputLike:
            output = entry.method(c)
            outputs[entry.name] = output = output if entry.key == "published" else as_written(output)
            reused[entry.name] = float(getattr(entry.method, "reused_seconds", 0.0))  # of this very call
            return output

        return call

    active = [m for m in methods if m.runs_on(case.modality)]
    rows = evaluate_methods([case], {m.name: recording(m) for m in active}, errors="record")
    for row, entry in zip(rows, active):
        if row["status"] == "ok":
            row["seconds"] += reused.get(entry.name, 0.0)
        else:
            outputs.pop(entry.name, None)  # scoring failed: not shown as a result either
    return rows, outputs


def _blank(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape[:2], np.float32)


def _colour_fused(case: Case, entry: BenchmarkMethod, out: MethodOutputLike) -> np.ndarray | None:
    """A method's fused PET/SPECT image as a reader sees it: its fused luma with the moving image's
    chroma moved by the method's own field; the published outputs' own colour files. ``None``
    where there is neither (no colour moving image, a method without a field)."""
    if isinstance(entry.method, OutputFolder):
        return entry.method.colour(case)
    field = getattr(out, "field", None)
    if case.moving_rgb is None or field is None:
        return None
    import torch

    cbcr = np.moveaxis(split_luma(case.moving_rgb)[1], -1, 0)
    moved = warp_chroma(torch.from_numpy(np.ascontiguousarray(cbcr))[None], torch.from_numpy(field)[None])[0].numpy()
    return np.clip(merge_luma(np.clip(out.fused_luma, 0, 1), np.moveaxis(moved, 0, -1)), 0, 1)


def _write_panels(case: Case, methods: Sequence[BenchmarkMethod], outputs: Mapping[str, MethodOutputLike],
                  out_dir: Path) -> list[Path]:
    """One case's pictures: ``panel_<MOD>_<case>.png`` (inputs and every fused luma),
    ``colour_<MOD>_<case>.png`` (PET/SPECT fused in colour, where a method allows it) and
    ``checkerboard_<MOD>_<case>.png`` (MRI against each registration's aligned image)."""
    from bsafusion.visualize import checkerboard, save_panel

    def fused(entry: BenchmarkMethod) -> tuple[str, np.ndarray]:
        out = outputs.get(entry.name)
        if out is None:
            return f"{entry.name} (failed)", _blank(case.fixed.shape)
        return entry.name, np.clip(out.fused_luma, 0, 1)

    active = [m for m in methods if m.runs_on(case.modality)]
    moving = case.moving_rgb if case.moving_rgb is not None else case.moving
    panel = [("fixed (MRI)", case.fixed), ("moving", moving), *(fused(m) for m in active)]
    boards = [("unaligned", checkerboard(case.fixed, case.moving))]
    for entry in active:
        if entry.view is None:
            continue
        out = outputs.get(entry.name)
        aligned = None if out is None else getattr(out, "aligned_luma", None)
        if aligned is not None:
            boards.append((entry.view, checkerboard(case.fixed, np.clip(aligned, 0, 1))))
        elif out is None:
            boards.append((f"{entry.view} (failed)", _blank(case.fixed.shape)))
    if case.label is not None:
        boards.append(("aligned truth", checkerboard(case.fixed, case.label)))
    title = f"{case.modality} case {case.name}"
    stem = f"{case.modality}_{case.name}"
    paths = [save_panel(out_dir / f"panel_{stem}.png", panel, title=f"{title}: fused luma")]
    if case.moving_rgb is not None:
        colour = [(m.name, _colour_fused(case, m, outputs[m.name])) for m in active if m.name in outputs]
        colour = [(name, image) for name, image in colour if image is not None]
        if colour:
            paths.append(save_panel(out_dir / f"colour_{stem}.png", [("fixed (MRI)", case.fixed), ("moving", moving), *colour],
                                    title=f"{title}: fused in colour"))
    paths.append(save_panel(out_dir / f"checkerboard_{stem}.png", boards, title=f"{title}: MRI vs aligned image"))
    return paths


def _panel_cases(datasets: Sequence[UnalignedCaseDataset], limit: int | None, panel_case: str | None,
                 count: int) -> dict[str, list[str]]:
    """Modality -> the cases shown in its panels: ``panel_case`` first where it was evaluated,
    then the first evaluated cases, ``count`` in all."""
    chosen = {}
    for dataset in datasets:
        names = dataset.names[: limit or None]
        first = [panel_case] if panel_case in names else []
        chosen[dataset.modality] = (first + [n for n in names if n not in first])[:count]
    if panel_case is not None and not any(panel_case in names for names in chosen.values()):
        example = next(iter(chosen.values()))[0]
        raise InputError(f"panel case {panel_case!r}: no evaluated case of that name (e.g. {example!r})")
    return chosen


def _python_command(cases_root: Any, out_dir: Any, **kwargs: Any) -> str:
    """This call of :func:`run_benchmark` as Python source (arguments left at their default omitted)."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(run_benchmark).parameters.items()}
    shown = [f"{k}={v!r}" for k, v in kwargs.items() if not (v == defaults.get(k) or (k == "ablations" and not v))]
    return f"run_benchmark({', '.join([repr(str(cases_root)), repr(str(out_dir)), *shown])})"


_DESCRIPTIONS = {
    "ours": "**BSAFusion (ours)**: the BSFA-F network on the MRI and the moving image's luma.",
    "ablations": "**Ablation** rows: other BSFA-F models, run the same way.",
    "published": "**BSAFusion (published)**: the authors' released outputs (its time is reading the files).",
    "classical": "**Classical reg**: SimpleITK Mattes-MI affine + B-spline registration (B-spline mesh 8x8 for "
                 "CT, 4x4 for PET/SPECT; `settings.json`), run once per case and shared by the three rules, "
                 "each rule's time including it.",
    "noreg": "**No reg**: the rules on the unaligned pair (registration columns: the input misalignment).",
    "oracle": "**Oracle**: the rules on the MRI and the aligned truth, the upper bound of each rule (no "
              "registration columns).",
}  # fmt: skip


def _notes(methods: Sequence[BenchmarkMethod], skipped: Sequence[str], seed: int, device: str) -> str:
    """The report's introduction: what each method is, seed, device, weights files, what was left out."""
    keys = list(dict.fromkeys(m.key for m in methods))
    lines = [f"- {_DESCRIPTIONS[key]}" for key in keys]
    if any(key in keys for key in ("classical", "noreg", "oracle")):
        lines.append("- Fusion rules: average, max-abs (pixelwise maximum), Laplacian pyramid (max-abs details, "
                     "average base), on luma.")
    for entry in methods:
        if isinstance(entry.method, NetworkMethod):
            files = ", ".join(f"{mod} `{path}`" for mod, path in entry.method.weights.items())
            lines.append(f"- Weights of {entry.name}: {files}")
            steps = ", ".join(f"{mod} {n or 'off'}" for mod, n in entry.method.refine_steps.items())
            lines.append(f"- Per-pair field refinement of {entry.name} (`bsafusion.inference.refine`, steps): {steps}")
    lines += [
        "",
        f"Seed {seed}; device {device}; `s/case` is the wall time per pair (one process, this machine). "
        "Panels, below: `panel_<MOD>_<case>.png` (fused luma of each method), `colour_<MOD>_<case>.png` "
        "(PET/SPECT fused in colour) and `checkerboard_<MOD>_<case>.png` (MRI vs each registration's aligned image).",
    ]
    if skipped:
        lines += ["", *skipped]
    return "\n".join(lines)


def _add_panels(report: Path, panels: Mapping[str, list[Path]]) -> None:
    """Insert a panels section before the report's file list and list the benchmark's own files."""
    section = ["## Qualitative panels", ""]
    for modality, paths in panels.items():
        section += [f"### {modality}", "", *(f"![{p.stem}]({p.name})" for p in paths), ""]
    head, marker, files = report.read_text(encoding="utf-8").partition("## Files")
    files = files.rstrip("\n") + (
        "\n- `panel_<MOD>_<case>.png`, `colour_<MOD>_<case>.png`, `checkerboard_<MOD>_<case>.png`: fused images"
        " (luma; PET/SPECT in colour) and registrations of the first cases of each modality"
        "\n- `settings.json`: methods, weights files, classical registration settings, seed, device\n"
    )
    with atomic_output(report) as tmp:
        tmp.write_text(head + "\n".join(section) + "\n" + marker + files, encoding="utf-8")


def _settings(methods: Sequence[BenchmarkMethod], modalities: Sequence[str], seed: int, device: str,
              published: Any, cases_root: Any, limit: int | None) -> dict[str, Any]:
    registration = next((m.method.registration for m in methods if isinstance(m.method, TwoStage)
                         and m.method.registration is not None), None)
    return {
        "cases": str(cases_root),
        "limit": limit,
        "seed": seed,
        "device": device,
        "methods": [m.name for m in methods],
        "weights": {m.name: m.method.weights for m in methods if isinstance(m.method, NetworkMethod)},
        "refine_steps": {m.name: m.method.refine_steps for m in methods if isinstance(m.method, NetworkMethod)},
        "published": None if published is None else str(published),
        "classical_settings": None if registration is None else {
            modality: registration.settings(modality).to_dict() for modality in modalities
        },
    }  # fmt: skip


def run_benchmark(
    cases_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    methods: Iterable[str] | str | None = None,
    modalities: Sequence[str] | None = None,
    weights_dir: str | os.PathLike | None = None,
    ablations: Mapping[str, str | os.PathLike] | None = None,
    published: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    panel_case: str | None = None,
    panel_count: int = 3,
    plots: bool = True,
    command: str | None = None,
    refine_steps: int | None = None,
) -> Path:
    """Run the benchmark on the unaligned cases under ``cases_root`` and write the results folder.

    Parameters
    ----------
    cases_root:
        Cases in the :class:`bsafusion.evaluation.cases.UnalignedCaseDataset` layout (``<MOD>/MRI``,
        ``<MOD>/<MOD>``, optional ``<MOD>/<MOD>_label`` and ``<MOD>_RGB``). Without labels the
        truth columns are left out and the oracle is not run.
    out_dir:
        Results folder (created); see the module docstring for its files.
    methods:
        Keys of :data:`METHOD_KEYS` (list or comma-separated string); default: all available.
    modalities:
        CT, PET and/or SPECT (default: every one found under ``cases_root``).
    weights_dir:
        Weights of ``ours`` (see :func:`weights_file`); default: the shipped weights.
    ablations:
        Ablation name -> weights file or training run folder.
    published:
        Folder of published outputs (:class:`bsafusion.evaluation.evaluate.OutputFolder` layout).
    limit:
        Only the first ``limit`` cases of each modality.
    seed:
        Seed of torch and of the classical registration's sampling (non-negative).
    device:
        ``auto``, ``cpu`` or ``cuda[:N]`` for the networks.
    progress:
        Show a progress bar over cases.
    panel_case:
        Name of a case to show first in the panels (default: each modality's first case).
    panel_count:
        Cases shown in the panels of each modality (at least 1).
    plots:
        Write the box plots.
    command:
        The command quoted in the report (default: this call in Python syntax).
    refine_steps:
        Per-pair field refinement steps for ``ours`` and the ablations (:mod:`bsafusion.inference.refine`);
        ``None`` for each modality's default, 0 for the network's field alone.

    Returns
    -------
    pathlib.Path
        ``out_dir/report.md``.

    Raises
    ------
    InputError
        Missing or malformed case folder, unknown method or modality, unavailable selected
        method, unreadable weights, ``limit`` < 1, negative ``seed``, unknown ``panel_case``,
        an ``out_dir`` that is a file or not writable (checked before anything runs).
    """
    import torch
    from tqdm.auto import tqdm

    from bsafusion.evaluation.report import write_report

    if limit is not None and int(limit) < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    if int(seed) < 0:
        raise InputError(f"seed must be non-negative, got {seed}")
    if int(panel_count) < 1:
        raise InputError(f"panel_count must be at least 1, got {panel_count}")
    if command is None:
        command = _python_command(
            cases_root, out_dir, methods=methods, modalities=modalities, weights_dir=weights_dir,
            ablations=dict(ablations or {}), published=published, limit=limit, seed=seed, device=device,
            panel_case=panel_case, panel_count=panel_count, refine_steps=refine_steps,
        )  # fmt: skip
    if modalities is not None:
        modalities = [str(m).upper() for m in modalities]
    check_output_dir(out_dir)
    datasets = case_sets(cases_root, modalities)
    device_name = str(resolve_device(device))
    torch.manual_seed(int(seed))
    chosen, skipped = build_methods(datasets, methods, weights_dir, ablations, published, int(seed), device, refine_steps)
    show = _panel_cases(datasets, limit, panel_case, int(panel_count))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(len(d) if limit is None else min(len(d), int(limit)) for d in datasets)
    rows: list[Row] = []
    panels: dict[str, list[Path]] = {}
    with tqdm(total=total, disable=not progress, desc="benchmark", unit="case") as bar:
        for case in iter_cases(datasets, limit):
            bar.set_postfix_str(f"{case.modality} {case.name}")
            case_rows, outputs = _run_case(case, chosen)
            rows += case_rows
            if case.name in show[case.modality]:
                panels.setdefault(case.modality, []).extend(_write_panels(case, chosen, outputs, out_dir))
            bar.update(1)

    settings = _settings(chosen, [d.modality for d in datasets], int(seed), device_name, published, cases_root, limit)
    with atomic_output(out_dir / "settings.json") as tmp:
        tmp.write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")
    failed = sum(row["status"] != "ok" for row in rows)
    notes = _notes(chosen, skipped, int(seed), device_name)
    if failed:
        notes += f"\n\n**{failed} of {len(rows)} runs failed** (see *Failed cases*)."
    files = write_report(rows, out_dir, title="BSAFusion benchmark", command=command, plots=plots,
                         show_time=True, notes=notes)
    _add_panels(files["report"], panels)
    return files["report"]
