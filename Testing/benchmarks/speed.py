"""Speed benchmark: how long one pair takes, ours against the two-stage baseline.

Measures, on this machine's CPU with ``--threads`` torch threads (2 by default, the size of the
development machine and of CI):

* **per 256x256 pair**: our network's forward pass alone; ``Fuser.fuse`` (in memory: resampling,
  forward pass, warping at full size), network field only, and with the per-pair refinement
  that is the CT default (:mod:`bsafusion.inference.refine`); end to end from files with
  :func:`bsafusion.inference.fuser.fuse_files` (read PNGs, fuse, write fused/aligned PNGs, the field and
  the quick-look panel); the classical SimpleITK affine + B-spline registration
  (:func:`bsafusion.evaluation.baselines.register_classical`, with its deterministic single ITK thread and
  with ITK's default threads); each classical fusion rule on the luma, and the Laplacian rule on
  a PET pseudo-colour image (YCbCr round trip included);
* **peak memory** of one call of each of those, in a fresh process (model loaded, inputs
  made): the rise of the resident set size over the call (the kernel's peak mark, reset
  before the call through ``/proc/self/clear_refs``; elsewhere ``getrusage``'s lifetime peak,
  an upper bound), which counts everything (numpy, torch, ITK); and the ``tracemalloc`` peak
  (Python and numpy allocations only; torch's CPU allocator is not traced);
* **scaling**: the forward pass at 128², 256², 512² (the network is size-agnostic; the shipped
  model is trained at ``img_size``) and ``Fuser.fuse`` on inputs of those sizes (it resamples to
  ``img_size``, so only the resampling and full-size warping grow); the forward pass for batches
  of 1, 2, 4, 8 pairs;
* **ours against the published architecture**: ``BSFAF.infer`` of the shipped model against a
  re-implementation of the published BSAFusion network's forward (``published_arch.py``, random
  weights, 10.0 M parameters), ``--runs`` alternating runs of the median of ``--repeats`` each,
  in one process, so both see the same machine state;
* **per-block profile** of one 256² pair under ``torch.inference_mode`` (the inference kernels):
  encoder, MDF-FR, feature pyramid, modality translator, each BSFA level's registration layers
  (FRL + RRL), the rest of BSFA (half-warps, MIND, cost volumes, integration, compositions), MMFF,
  "other", then the per-pair refinement (off by default) and the file I/O of ``fuse_files``;
  taken with forward hooks (the model code is not touched). On the CPU with ``--threads``; on a
  CUDA device, when there is one, for batches of 1 and 16 pairs (hooks synchronise the GPU).
  ``--profile-only`` prints just these two sections (about a minute);
* **``torch.compile``** (``--compiled``, optional, not part of the default run): the shipped
  model with each block of :data:`COMPILED` compiled by TorchInductor, against the eager model
  and the published architecture in the same alternating runs, with the largest difference of
  the fields and the fused image from the eager outputs (compile time is printed, not timed in).

Times are the median (and minimum) of ``--repeats`` runs after one warm-up run. The inputs are
phantom pairs (:mod:`bsafusion.phantom`) misaligned with :func:`bsafusion.deform.random_misalignment`,
so the benchmark needs no data download. ``--weights`` picks the model; by default the shipped
CT model when it exists, else an untrained model of the default :class:`ModelConfig` (same
architecture and cost); the output says which.

Usage (from the repository root)::

    python Testing/benchmarks/speed.py [--weights FILE] [--repeats 5] [--output table.md]
    python Testing/benchmarks/speed.py --profile-only --threads 2 --runs 6 --repeats 7
    python Testing/benchmarks/speed.py --compiled --threads 2 --runs 6 --repeats 7
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from bsafusion.model import checkpoint
from bsafusion.evaluation.baselines import ClassicalSettings, fuse_colour, get_rule, register_classical
from bsafusion.evaluation.baselines.fusion_rules import FUSION_RULES
from bsafusion.deform import random_misalignment
from bsafusion.inference.fuser import Fuser, fuse_files
from bsafusion.inference.refine import RefineSettings
from bsafusion.io import write_image
from bsafusion.model import BSFAF, Inference, ModelConfig
from bsafusion.phantom import phantom_pair

#: Network blocks timed with forward hooks, in the order they run: sub-module path -> label.
#: BSFA levels are its registration layers (FRL + RRL) per level; "BSFA warps, MIND, cost volumes, integration" is
#: the rest of BSFA (scaling and squaring, compositions, half-warps, MIND).
BLOCKS = {"encoder": "Encoder (Restormer + Transformer)", "mdffr": "MDF-FR (MFRH exchange, Transfer)",
          "pyramid": "Feature pyramid", "translator": "Modality translator (B_hat)"}
PAIR_SIZE = 256
SEED = 5


# --------------------------------------------------------------------------------------------- setup


def resolve_weights(weights: str | None, workdir: Path) -> tuple[Path, str]:
    """The weights file to use and a sentence saying what it is."""
    if weights:
        return Path(weights), f"weights file `{weights}`"
    shipped = checkpoint.default_weights_path("CT")
    if shipped.is_file():
        return shipped, f"shipped CT model `{shipped.name}`"
    path = workdir / "untrained_default.pt"
    torch.manual_seed(0)
    checkpoint.save(path, BSFAF(ModelConfig()), "CT")
    return path, ("**untrained** model of the default `ModelConfig` (no shipped weights yet; "
                  "same architecture, so the same cost)")


def make_pair(size: int, modality: str = "CT") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A misaligned phantom pair: fixed MRI, moving grey (luma) and moving RGB (PET/SPECT)."""
    pair = phantom_pair(modality, shape=(size, size), seed=SEED)
    mis = random_misalignment((size, size), seed=SEED)
    rgb = None if pair.other_rgb is None else np.moveaxis(mis.apply(np.moveaxis(pair.other_rgb, -1, 0)), 0, -1)
    return pair.mri, mis.apply(pair.other), rgb


def network_inputs(model: BSFAF, size: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    fixed, moving, _ = make_pair(size)
    f = torch.from_numpy(fixed)[None, None].repeat(batch, 1, 1, 1)
    m = torch.from_numpy(moving)[None, None].repeat(batch, 1, 1, 1)
    return f.to(next(model.parameters()).device), m.to(next(model.parameters()).device)


def pair_tasks(fuser: Fuser, workdir: Path) -> dict[str, Callable[[], object]]:
    """Zero-argument callables, one per row of the per-pair table (256x256)."""
    fixed, moving, _ = make_pair(PAIR_SIZE)
    _, _, pet_rgb = make_pair(PAIR_SIZE, "PET")
    fixed_png = write_image(fixed, workdir / "in" / "fixed.png")
    moving_png = write_image(moving, workdir / "in" / "moving.png")
    f_t, m_t = network_inputs(fuser.model, fuser.model.cfg.img_size)

    def forward() -> object:
        with torch.inference_mode():
            return fuser.model.infer(f_t, m_t)

    refined = Fuser("CT", fuser.weights, device="cpu", refine=RefineSettings().steps)  # per-pair refinement (off by default)

    tasks: dict[str, Callable[[], object]] = {
        f"Ours: forward pass ({fuser.model.cfg.img_size}²)": forward,
        "Ours: `Fuser.fuse` (in memory)": lambda: fuser.fuse(fixed, moving),
        f"Ours: `Fuser.fuse` + refinement ({refined.refine.steps} steps, off by default)": lambda: refined.fuse(fixed, moving),
        "Ours: end to end, files (`fuse_files`)": lambda: fuse_files(fixed_png, moving_png, fuser, workdir / "out", "bench"),
        "SimpleITK affine + B-spline (1 ITK thread, deterministic)": lambda: register_classical(fixed, moving),
        "SimpleITK affine + B-spline (ITK default threads)": lambda: register_classical(
            fixed, moving, ClassicalSettings(threads=None)),
    }
    for name in FUSION_RULES:
        tasks[f"Fusion rule `{name}` (luma)"] = (lambda rule: lambda: get_rule(rule)(fixed, moving))(name)
    tasks["Fusion rule `laplacian`, PET RGB (YCbCr)"] = lambda: fuse_colour("laplacian", fixed, pet_rgb)
    return tasks


# --------------------------------------------------------------------------------------------- measuring


def timeit(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, min) seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def block_times(model: BSFAF, fixed: torch.Tensor, moving: torch.Tensor, repeats: int) -> tuple[dict[str, float], float]:
    """Mean seconds per :meth:`BSFAF.infer` (inference mode) spent in each block, and the total.

    Keys are labels in run order: :data:`BLOCKS`, each BSFA level's registration layers, the
    rest of BSFA, MMFF and "other" (field resizing, input checks). Hooks synchronise the GPU,
    so GPU totals include the synchronisation.
    """
    device = fixed.device
    hooked: dict[str, list[nn.Module]] = {label: [model.get_submodule(path)] for path, label in BLOCKS.items() if _has(model, path)}
    for side in ("frl", "rrl"):
        for level, layer in enumerate(getattr(model.bsfa, side) or []):
            hooked.setdefault(f"BSFA level {level} (FRL+RRL)", []).append(layer)
    hooked["BSFA (all)"] = [model.bsfa]
    hooked["MMFF (fusion, reconstruction)"] = [model.mmff]
    spent = {label: 0.0 for label in hooked}
    starts: dict[int, float] = {}
    handles = []

    def pre(module: nn.Module, _inputs: object) -> None:
        _sync(device)
        starts[id(module)] = time.perf_counter()

    def post(label: str) -> Callable[..., None]:
        def hook(module: nn.Module, _inputs: object, _output: object) -> None:
            _sync(device)
            spent[label] += time.perf_counter() - starts[id(module)]
        return hook

    for label, mods in hooked.items():
        for module in mods:
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post(label)))
    try:
        with torch.inference_mode():
            model.infer(fixed, moving)  # warm-up
            spent.update({label: 0.0 for label in spent})
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                model.infer(fixed, moving)
            _sync(device)
            total = (time.perf_counter() - start) / repeats
    finally:
        for handle in handles:
            handle.remove()
    out = {label: t / repeats for label, t in spent.items()}
    bsfa = out.pop("BSFA (all)")
    mmff = out.pop("MMFF (fusion, reconstruction)")
    out["BSFA warps, MIND, cost volumes, integration"] = max(0.0, bsfa - sum(v for k, v in out.items() if k.startswith("BSFA level")))
    out["MMFF (fusion, reconstruction)"] = mmff
    out["Other (field resize, checks)"] = max(0.0, total - sum(out.values()))
    return out, total


def _has(model: nn.Module, path: str) -> bool:
    try:
        return model.get_submodule(path) is not None
    except AttributeError:
        return False


def pipeline_times(fuser: Fuser, workdir: Path, repeats: int) -> dict[str, float]:
    """Seconds of one 256² pair from files: reading, the network, refinement (CT default steps), writing.

    ``fuse_files`` end to end, minus ``Fuser.fuse`` in memory, is the I/O (decode, encode,
    field and panel files); refinement is ``Fuser.fuse`` with the CT default refinement minus
    without it.
    """
    fixed, moving, _ = make_pair(PAIR_SIZE)
    fixed_png = write_image(fixed, workdir / "in" / "fixed.png")
    moving_png = write_image(moving, workdir / "in" / "moving.png")
    refined = Fuser("CT", fuser.weights, device="cpu", refine=RefineSettings().steps)
    plain, _ = timeit(lambda: fuser.fuse(fixed, moving), repeats)
    with_refine, _ = timeit(lambda: refined.fuse(fixed, moving), repeats)
    files, _ = timeit(lambda: fuse_files(fixed_png, moving_png, fuser, workdir / "out", "bench"), repeats)
    return {"fuse": plain, "refinement": max(0.0, with_refine - plain), "io": max(0.0, files - plain), "files": files,
            "refine_steps": refined.refine.steps}


def block_table(model: BSFAF, device: torch.device, batch: int, repeats: int, io: dict[str, float] | None) -> list[str]:
    """Markdown rows of :func:`block_times` on ``device`` for ``batch`` pairs (plus refinement and I/O on the CPU)."""
    fixed, moving = network_inputs(model, model.cfg.img_size, batch)
    per_block, total = block_times(model, fixed.to(device), moving.to(device), repeats)
    rows = list(per_block.items())
    if io is not None:
        rows += [(f"Refinement ({io['refine_steps']} steps, off by default)", io["refinement"]),
                 ("I/O (read PNGs, write outputs)", io["io"])]
        total_all = total + io["io"]
    else:
        total_all = total
    lines = [f"| Block ({device.type}, batch {batch}) | ms | Share of forward |", "|---|---:|---:|"]
    for name, seconds in rows:
        lines.append(f"| {name} | {_ms(seconds)} | {seconds / total:.0%} |")
    lines.append(f"| **Forward total** | **{_ms(total)}** | 100% |")
    if io is not None:
        lines.append(f"| End to end from files (`fuse_files`, no refinement) | {_ms(io['files'])} | |")
    return lines


def _published_network() -> nn.Module:
    """The published BSAFusion architecture of ``published_arch.py`` (random weights, seed 0)."""
    spec = importlib.util.spec_from_file_location("published_arch", Path(__file__).with_name("published_arch.py"))
    published_arch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(published_arch)
    torch.manual_seed(0)
    return published_arch.PublishedBSAFusion().eval()


def _alternating_ms(models: dict[str, BSFAF], runs: int, repeats: int) -> tuple[dict[str, list[float]], list[float]]:
    """Per run, each model's ``infer`` then the published network, median of ``repeats`` each (ms).

    Each model gets a pair at its own ``img_size``; the published network always a 256² pair,
    as its authors run it.
    """
    published = _published_network()
    fixed, moving = network_inputs(next(iter(models.values())), PAIR_SIZE)
    inputs = {name: network_inputs(model, model.cfg.img_size) for name, model in models.items()}
    ours: dict[str, list[float]] = {name: [] for name in models}
    theirs: list[float] = []
    with torch.inference_mode():
        for _ in range(runs):
            for name, model in models.items():
                ours[name].append(timeit(lambda: model.infer(*inputs[name]), repeats)[0] * 1e3)
            theirs.append(timeit(lambda: published(fixed, moving), repeats)[0] * 1e3)
    return ours, theirs


def _millions(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def compare_published(model: BSFAF, threads: int, runs: int, repeats: int) -> list[str]:
    """Ours (``model.infer``) against the published architecture, alternating, median of ``repeats`` each run."""
    ours, theirs_ms = _alternating_ms({"ours": model}, runs, repeats)
    ours_ms = ours["ours"]
    ratios = [o / t for o, t in zip(ours_ms, theirs_ms)]
    return [f"| Network ({threads} threads, 256² pair, median of {repeats}) | Parameters | ms per run ({runs} alternating runs) |",
            "|---|---:|---|",
            f"| Published BSAFusion architecture (random weights) | {_millions(_published_network()):.1f} M | {', '.join(f'{t:.0f}' for t in theirs_ms)} |",
            f"| Ours, `BSFAF.infer` (inference mode) | {_millions(model):.2f} M | {', '.join(f'{t:.0f}' for t in ours_ms)} |",
            f"| Ratio ours / published | | {', '.join(f'{r:.2f}' for r in ratios)} (median {np.median(ratios):.2f}) |"]


#: Architecture variants of the shipped configuration timed by ``--variants``: what a retrained
#: network would have to change to run in half the published network's time. Each is
#: :class:`ModelConfig` overrides; the registration levels follow ``pyramid_channels`` (coarse
#: to fine from the token grid, so two levels end at 64² and one at 32² for a 256² input).
VARIANTS: dict[str, dict[str, object]] = {
    "shipped architecture": {},
    "registration to 64² (2 levels)": {"pyramid_channels": (48, 32)},
    "registration to 32² (1 level)": {"pyramid_channels": (48,)},
    "features 12 channels (encoder, translator, MMFF)": {"channels": 12},
    "1 Transformer + 1 Transfer layer": {"encoder_depth": 1, "transfer_depth": 1},
    "network at 192² (inputs resampled)": {"img_size": 192},
    "registration to 64² + features 12": {"pyramid_channels": (48, 32), "channels": 12},
    "registration to 64² + network at 192²": {"pyramid_channels": (48, 32), "img_size": 192},
}


def compare_variants(base: ModelConfig, threads: int, runs: int, repeats: int) -> list[str]:
    """:data:`VARIANTS` of ``base`` (random weights: the time does not depend on them) against the
    published architecture, alternating within each run; the ratio is per run, then its median."""
    torch.manual_seed(0)
    models = {name: BSFAF(replace(base, **overrides)).eval() for name, overrides in VARIANTS.items()}
    ours, theirs = _alternating_ms(models, runs, repeats)
    lines = [f"| Variant ({threads} threads, median of {repeats} per run, {runs} runs) | Parameters | ms (median of runs) | ratio to published (median) |",
             "|---|---:|---:|---:|",
             f"| Published BSAFusion architecture, 256² | {_millions(_published_network()):.1f} M | {np.median(theirs):.0f} | 1 |"]
    for name, model in models.items():
        ratio = np.median([o / t for o, t in zip(ours[name], theirs)])
        lines.append(f"| {name} | {_millions(model):.2f} M | {np.median(ours[name]):.0f} | {ratio:.2f} |")
    return lines


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss_bytes(field: str = "VmRSS") -> int | None:
    """``VmRSS`` (current) or ``VmHWM`` (peak) from ``/proc/self/status``, in bytes."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_since_reset(before: int) -> int:
    """Peak RSS rise since :func:`_reset_peak_rss`; ``getrusage`` where ``/proc`` is missing."""
    peak = _rss_bytes("VmHWM")
    if peak is None:  # not Linux: the process-lifetime peak (an upper bound)
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = usage if sys.platform == "darwin" else usage * 1024
    return max(0, peak - before)


def measure_memory_here(task: str, weights: Path, threads: int) -> dict[str, float]:
    """Run one task once in this (fresh) process; its peak RSS rise and tracemalloc peak (MiB)."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        fuser = Fuser("CT", weights, device="cpu", refine=0)
        fn = pair_tasks(fuser, Path(tmp))[task]
        _reset_peak_rss()
        before = _rss_bytes() or 0
        tracemalloc.start()
        fn()
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rise = _peak_since_reset(before)
    return {"rss_rise_mib": rise / 2**20, "tracemalloc_mib": traced / 2**20}


def measure_memory(task: str, weights: Path, threads: int) -> dict[str, float]:
    """:func:`measure_memory_here` in a child process, so earlier tasks do not mask the peak."""
    cmd = [sys.executable, __file__, "--weights", str(weights), "--threads", str(threads), "--_memory-task", task]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def profile_section(model: BSFAF, workdir: Path, args: argparse.Namespace) -> list[str]:
    """The published-architecture comparison and the per-block profiles (CPU; GPU batch 1 and 16 when present)."""
    fuser = Fuser("CT", checkpoint.default_weights_path("CT") if args.weights is None else args.weights, device="cpu", refine=0)
    lines = ["", f"#### Ours against the published architecture ({args.threads} threads)", ""]
    lines += compare_published(model, args.threads, args.runs, args.repeats)
    lines += ["", f"#### Forward pass by block ({model.cfg.img_size}², mean of {args.repeats}), CPU {args.threads} threads", ""]
    lines += block_table(model, torch.device("cpu"), 1, args.repeats, pipeline_times(fuser, workdir, args.repeats))
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        model.to(gpu)
        for batch in (1, 16):
            lines += ["", f"#### Forward pass by block, GPU ({torch.cuda.get_device_name(gpu)}), batch {batch}", ""]
            lines += block_table(model, gpu, batch, args.repeats, None)
        model.to("cpu")
    else:
        lines += ["", "GPU profile (batch 1 and 16): not run, no CUDA device on this machine."]
    return lines


def run(args: argparse.Namespace) -> str:
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        weights, what = resolve_weights(args.weights, workdir)
        fuser = Fuser("CT", weights, device="cpu", refine=0)
        model = fuser.model
        cfg = model.cfg
        params = sum(p.numel() for p in model.parameters())
        lines += [
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, CPU only.",
            f"Model: {what}; img_size {cfg.img_size}, channels {cfg.channels}, embed_dim {cfg.embed_dim}, "
            f"patch {cfg.patch_size}, {params / 1e6:.2f} M parameters.",
            f"Inputs: phantom CT-MRI pair (seed {SEED}) misaligned by `random_misalignment`. "
            f"Times: median (min) of {args.repeats} runs after one warm-up, milliseconds.",
            "",
            f"#### Per {PAIR_SIZE}×{PAIR_SIZE} pair",
            "",
            "| Method | Median ms | Min ms | Peak RSS rise MiB | tracemalloc peak MiB |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, fn in pair_tasks(fuser, workdir).items():
            median, best = timeit(fn, args.repeats)
            mem = measure_memory(name, weights, args.threads) if args.memory else None
            mem_cols = (f"{mem['rss_rise_mib']:.0f} | {mem['tracemalloc_mib']:.1f}" if mem else "- | -")
            lines.append(f"| {name} | {_ms(median)} | {_ms(best)} | {mem_cols} |")
            print(f"  done: {name}", file=sys.stderr)

        lines += ["", "#### Image size (one pair)", "",
                  f"| Size | Forward pass at that size, ms | `Fuser.fuse` (resamples to {cfg.img_size}²), ms |",
                  "|---|---:|---:|"]
        for size in args.sizes:
            f_t, m_t = network_inputs(model, size)
            fixed, moving, _ = make_pair(size)
            with torch.inference_mode():
                fwd, _ = timeit(lambda: model.infer(f_t, m_t), args.repeats)
            fus, _ = timeit(lambda: fuser.fuse(fixed, moving), args.repeats)
            lines.append(f"| {size}² | {_ms(fwd)} | {_ms(fus)} |")
            print(f"  done: size {size}", file=sys.stderr)

        lines += ["", f"#### Batch size (forward pass, {cfg.img_size}²)", "",
                  "| Pairs per batch | ms per batch | ms per pair |", "|---:|---:|---:|"]
        for batch in args.batches:
            f_t, m_t = network_inputs(model, cfg.img_size, batch)
            with torch.inference_mode():
                fwd, _ = timeit(lambda: model.infer(f_t, m_t), args.repeats)
            lines.append(f"| {batch} | {_ms(fwd)} | {_ms(fwd / batch)} |")
            print(f"  done: batch {batch}", file=sys.stderr)

        lines += profile_section(model, workdir, args)
    return "\n".join(lines)


#: Sub-modules of :class:`BSFAF` compiled by ``--compiled``, one model per entry; ``+`` joins
#: blocks compiled together. Compiling ``infer`` as a whole is left out: on the CPU it takes
#: minutes and breaks into graphs at the data-dependent branches of the blocks anyway.
COMPILED = ("encoder", "mmff", "bsfa", "translator", "encoder+mdffr+pyramid+translator+bsfa+mmff")


def _compiled_copy(weights: Path, blocks: str, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[BSFAF, float, Inference]:
    """A fresh copy of the model at ``weights`` with ``blocks`` compiled, the seconds its first
    call on the pair took (the compilation) and that call's outputs."""
    model = checkpoint.load_model(weights, "CT", "cpu").eval()
    for name in blocks.split("+"):
        setattr(model, name, torch.compile(getattr(model, name), dynamic=False))
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.infer(fixed, moving)
    return model, time.perf_counter() - started, out


def compare_compiled(weights: Path, threads: int, runs: int, repeats: int) -> list[str]:
    """The eager model and each :data:`COMPILED` copy against the published architecture, alternating."""
    eager = checkpoint.load_model(weights, "CT", "cpu").eval()
    fixed, moving = network_inputs(eager, PAIR_SIZE)
    models, compile_s, differences = {"eager (as shipped)": eager}, {}, {}
    with torch.inference_mode():
        reference = eager.infer(fixed, moving)
    for blocks in COMPILED:
        models[blocks], compile_s[blocks], out = _compiled_copy(weights, blocks, fixed, moving)
        differences[blocks] = max((getattr(out, k) - getattr(reference, k)).abs().max().item()
                                  for k in ("field_ba", "field_ab", "fused"))
    ours, theirs = _alternating_ms(models, runs, repeats)
    eager_ms = ours["eager (as shipped)"]
    lines = [f"| Model ({threads} threads, 256² pair, median of {repeats} per run, {runs} runs) | first call s | "
             "ms (median of runs) | ratio to eager (median) | ratio to published (median) | largest output difference |",
             "|---|---:|---:|---:|---:|---:|",
             f"| Published BSAFusion architecture | | {np.median(theirs):.0f} | | 1 | |"]
    for name, times in ours.items():
        to_eager = np.median([t / e for t, e in zip(times, eager_ms)])
        to_published = np.median([t / p for t, p in zip(times, theirs)])
        first = f"{compile_s[name]:.0f}" if name in compile_s else ""
        difference = f"{differences[name]:.1e}" if name in differences else ""
        lines.append(f"| {name} | {first} | {np.median(times):.0f} | {to_eager:.2f} | {to_published:.2f} | {difference} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="model weights (default: shipped CT model, else an untrained default model)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="image sizes to scale over")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8], help="batch sizes to scale over")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory columns (each needs a fresh process)")
    parser.add_argument("--output", help="also write the Markdown tables to this file")
    parser.add_argument("--runs", type=int, default=6, help="alternating runs of ours vs the published architecture (default 6)")
    parser.add_argument("--profile-only", action="store_true",
                        help="only the published comparison and the per-block profiles (a minute instead of ten)")
    parser.add_argument("--variants", action="store_true",
                        help="only the architecture variants against the published network (what a faster retrained network needs)")
    parser.add_argument("--compiled", action="store_true",
                        help="only the shipped model with torch.compile on each of its blocks against eager and the published network")
    parser.add_argument("--_memory-task", dest="memory_task", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    if args.memory_task:  # child process of measure_memory
        print(json.dumps(measure_memory_here(args.memory_task, Path(args.weights), args.threads)))
        return 0
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.variants:
        lines = ["", f"#### Architecture variants against the published architecture ({args.threads} threads)", ""]
        table = "\n".join(lines + compare_variants(ModelConfig.from_dict(checkpoint.read(checkpoint.default_weights_path("CT"))["model_config"]),
                                                     args.threads, args.runs, args.repeats))
    elif args.compiled:
        with tempfile.TemporaryDirectory() as tmp:
            weights, _ = resolve_weights(args.weights, Path(tmp))
            lines = ["", f"#### torch.compile against eager and the published architecture ({args.threads} threads)", ""]
            table = "\n".join(lines + compare_compiled(weights, args.threads, args.runs, args.repeats))
    elif args.profile_only:
        with tempfile.TemporaryDirectory() as tmp:
            weights, _ = resolve_weights(args.weights, Path(tmp))
            table = "\n".join(profile_section(checkpoint.load_model(weights, "CT", "cpu").eval(), Path(tmp), args))
    else:
        table = run(args)
    table += f"\n\nBenchmark wall time: {time.perf_counter() - start:.0f} s."
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
