"""Inference: register and fuse unaligned 2D pairs with a trained BSFA-F model.

The fixed image (MRI) defines the output geometry. Both images are resampled to the network
size (``cfg.img_size``), the network runs once, and the results are brought back to the fixed
image's size: the field is resampled *and rescaled* to the fixed grid's pixels, the moving image
is warped at full resolution by that field, and the fused luma is resampled bilinearly.
PET/SPECT are fused on their Y channel (YCbCr); the aligned chroma (Cb, Cr) is put back.

Field convention: see :mod:`bsafusion.deform` (pixels of the fixed grid, channels x, y;
``aligned = warp(moving, field)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from skimage.transform import resize
from tqdm import tqdm

from bsafusion import checkpoint
from bsafusion.colour import NEUTRAL_CHROMA, merge_luma, split_luma
from bsafusion.deform import resize_field, warp
from bsafusion.errors import InputError
from bsafusion.io import read_image, read_luma, read_slice, write_image
from bsafusion.model import BSFAF
from bsafusion.refine import RefineSettings, default_settings, refine_field
from bsafusion.device import resolve_device
from bsafusion.transforms import field_to_displacement_image
from bsafusion.visualize import checkerboard, save_panel

MODALITIES = ("CT", "PET", "SPECT")


@dataclass
class FusionResult:
    """Outputs for one pair, on the fixed image's grid, values in [0, 1]."""

    fused: np.ndarray  # (H, W) grey, or (H, W, 3) RGB for a colour moving image
    fused_luma: np.ndarray  # (H, W) the network's output (Y channel for colour)
    aligned: np.ndarray  # moving image aligned to the fixed one, (H, W) or (H, W, 3)
    aligned_luma: np.ndarray  # (H, W)
    field: np.ndarray  # (2, H, W) pixels, aligns moving -> fixed
    inverse_field: np.ndarray  # (2, H, W) pixels, aligns fixed -> moving (bidirectional output)


def _check_image(image: np.ndarray, name: str, allow_rgb: bool) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.size == 0:
        raise InputError(f"{name}: empty image")
    if image.ndim == 3 and image.shape[-1] == 3 and allow_rgb:
        pass
    elif image.ndim != 2:
        raise InputError(f"{name}: expected a 2D {'grey or RGB ' if allow_rgb else 'grey '}image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    if image.min() < -1e-3 or image.max() > 1 + 1e-3:
        raise InputError(f"{name}: values must be scaled to [0, 1] (got {image.min():.3g}..{image.max():.3g})")
    return np.clip(image, 0, 1)


def _resize(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=True, antialias=True)


class Fuser:
    """A loaded model ready to register and fuse pairs of one modality.

    Examples
    --------
    >>> fuser = Fuser("CT")                                   # doctest: +SKIP
    >>> result = fuser.fuse(mri, ct)                          # doctest: +SKIP
    >>> result.fused.shape == mri.shape                       # doctest: +SKIP
    True

    ``refine`` sets the per-pair refinement of the network's field (:mod:`bsafusion.refine`):
    ``None`` for the modality's default (on for CT, off for PET/SPECT), an int for a number of
    steps (0 = off), or full :class:`~bsafusion.refine.RefineSettings`.
    """

    def __init__(
        self,
        modality: str,
        weights: str | Path | None = None,
        device: str = "auto",
        refine: RefineSettings | int | None = None,
    ) -> None:
        self.modality = modality.upper()
        if self.modality not in MODALITIES:
            raise InputError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
        self.weights = Path(weights) if weights else checkpoint.default_weights_path(self.modality)
        self.device = resolve_device(device)
        self.model: BSFAF = checkpoint.load_model(self.weights, self.modality, self.device)
        self.refine = refine if isinstance(refine, RefineSettings) else default_settings(self.modality, refine)

    @torch.no_grad()
    def fuse_batch(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[FusionResult]:
        """Fuse several (fixed, moving) pairs of equal size in one network call."""
        if not pairs:
            return []
        fixed_list, luma_list, chroma_list = [], [], []
        for i, (fixed, moving) in enumerate(pairs):
            fixed = _check_image(fixed, f"pair {i} fixed", allow_rgb=False)
            moving = _check_image(moving, f"pair {i} moving", allow_rgb=True)
            if moving.ndim == 3 and not (np.ptp(moving, axis=-1) < 1e-6).all():
                luma, chroma = split_luma(moving)
            elif moving.ndim == 3:  # grey stored as RGB: its own luma (as the data loaders do)
                luma, chroma = moving[..., 0], None
            else:
                luma, chroma = moving, None
            if fixed.max() - fixed.min() < 1e-6 or luma.max() - luma.min() < 1e-6:
                raise InputError(f"pair {i}: an image is constant (empty); nothing to register")
            fixed_list.append(fixed)
            luma_list.append(luma)
            chroma_list.append(chroma)
        shape = fixed_list[0].shape
        if any(f.shape != shape for f in fixed_list):
            raise InputError("fuse_batch needs fixed images of one size; call fuse() per pair otherwise")
        dev = self.device
        fixed_t = torch.from_numpy(np.stack(fixed_list))[:, None].to(dev)
        moving_full = torch.stack([
            _resize(torch.from_numpy(m)[None, None], shape)[0] for m in luma_list
        ]).to(dev)
        net = (self.model.cfg.img_size,) * 2
        refine = partial(refine_field, settings=self.refine) if self.refine.steps else None
        out = self.model(_resize(fixed_t, net), _resize(moving_full, net), refine=refine)
        field = resize_field(out.field_ba, shape)
        inverse = resize_field(out.field_ab, shape)
        # border padding: the studio-range background of PET/SPECT luma is 16/255, not 0
        aligned_luma = warp(moving_full, field, padding="border")
        fused_luma = _resize(out.fused, shape).clamp(0, 1)

        results = []
        for i, chroma in enumerate(chroma_list):
            y_fused = fused_luma[i, 0].cpu().numpy()
            y_aligned = aligned_luma[i, 0].cpu().numpy()
            if chroma is not None:
                chroma_t = _resize(torch.from_numpy(np.moveaxis(chroma, -1, 0))[None].to(dev), shape)
                # zero padding would mean "Cb = Cr = 0" (saturated green): pad with neutral chroma
                chroma_al = (warp(chroma_t - NEUTRAL_CHROMA, field[i : i + 1]) + NEUTRAL_CHROMA)[0].cpu().numpy()
                chroma_al = np.moveaxis(chroma_al, 0, -1)
                fused, aligned = merge_luma(y_fused, chroma_al), merge_luma(y_aligned, chroma_al)
            else:
                fused, aligned = y_fused, y_aligned
            results.append(FusionResult(fused, y_fused, aligned, y_aligned,
                                        field[i].cpu().numpy(), inverse[i].cpu().numpy()))
        return results

    def fuse(self, fixed: np.ndarray, moving: np.ndarray) -> FusionResult:
        """Register ``moving`` (grey or RGB) to ``fixed`` (grey) and fuse them."""
        return self.fuse_batch([(fixed, moving)])[0]


def write_result(result: FusionResult, fixed_image: sitk.Image, out_dir: str | Path, stem: str,
                 fixed: np.ndarray, moving: np.ndarray) -> dict[str, Path]:
    """Write fused / aligned PNGs, the displacement field (``.nii.gz``, mm) and a quick-look panel.

    The field file is an ITK displacement field on the fixed image's grid (vectors in physical
    units of the fixed image: pixels times spacing, which is 1 for PNG), usable directly as
    ``sitk.DisplacementFieldTransform`` to resample the moving image onto the fixed one.
    """
    out_dir = Path(out_dir)
    paths = {
        "fused": out_dir / f"{stem}_fused.png",
        "aligned": out_dir / f"{stem}_aligned.png",
        "field": out_dir / f"{stem}_field.nii.gz",
        "panel": out_dir / f"{stem}_panel.png",
    }
    geometry = fixed_image if fixed_image.GetNumberOfComponentsPerPixel() == 1 else sitk.VectorIndexSelectionCast(fixed_image, 0)
    write_image(result.fused, paths["fused"])
    write_image(result.aligned, paths["aligned"])
    write_image(field_to_displacement_image(result.field, geometry), paths["field"])
    moving_show = moving if moving.shape[:2] == fixed.shape else resize(moving, fixed.shape, order=1, anti_aliasing=True)
    save_panel(paths["panel"], [
        ("fixed (MRI)", fixed), ("moving", moving_show), ("aligned", result.aligned),
        ("checkerboard", checkerboard(fixed, result.aligned_luma)), ("fused", result.fused),
    ])
    return paths


def fuse_files(fixed_path: str | Path, moving_path: str | Path, fuser: Fuser, out_dir: str | Path,
               stem: str | None = None) -> dict[str, Path]:
    """Read a pair of 2D images, fuse them and write every output (nothing on error)."""
    fixed = read_slice(fixed_path, grey=True)
    luma, chroma = read_luma(moving_path)
    moving = luma if chroma is None else read_slice(moving_path, grey=False)
    result = fuser.fuse(fixed, moving)
    return write_result(result, read_image(fixed_path), out_dir, stem or Path(moving_path).stem, fixed, moving)


def pair_folder(fixed_dir: str | Path, moving_dir: str | Path) -> list[tuple[Path, Path]]:
    """Pairs of files with the same name in two folders (the Harvard layout's convention)."""
    fixed_dir, moving_dir = Path(fixed_dir), Path(moving_dir)
    for d in (fixed_dir, moving_dir):
        if not d.is_dir():
            raise InputError(f"{d}: folder not found")
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".gz", ".nrrd", ".mha", ".mhd"}
    fixed_files = {p.name: p for p in sorted(fixed_dir.iterdir()) if p.suffix.lower() in exts}
    moving_files = {p.name: p for p in sorted(moving_dir.iterdir()) if p.suffix.lower() in exts}
    missing = sorted(set(fixed_files) ^ set(moving_files))
    if missing:
        raise InputError(f"{moving_dir}: files without a partner of the same name in the other folder: {', '.join(missing[:5])}")
    if not fixed_files:
        raise InputError(f"{fixed_dir}: no images found")
    return [(fixed_files[k], moving_files[k]) for k in sorted(fixed_files)]


def fuse_folder(pairs: Iterable[tuple[Path, Path]], fuser: Fuser, out_dir: str | Path, progress: bool = True) -> list[dict[str, Path]]:
    """Fuse every pair with a progress bar; each pair's outputs are written atomically."""
    pairs = list(pairs)
    return [fuse_files(f, m, fuser, out_dir, Path(m).name.split(".")[0])
            for f, m in tqdm(pairs, desc="fuse", disable=not progress, dynamic_ncols=True)]
