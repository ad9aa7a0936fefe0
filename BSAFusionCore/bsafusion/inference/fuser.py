"""Inference: register and fuse unaligned 2D pairs with a trained BSFA-F model.

The fixed image (MRI) defines the output geometry. Both images are resampled to the network
size (``cfg.img_size``, :func:`bsafusion.deform.resize_image`, the fields' grid convention); the
network registers them (:meth:`~bsafusion.model.BSFAF.register`), per-pair refinement
(:mod:`bsafusion.inference.refine`, off by default) may replace its field, and the network fuses
with the field kept (:meth:`~bsafusion.model.BSFAF.fuse`). The results are brought back to the
fixed image's size: the field is resampled *and rescaled* to the fixed grid's pixels, the moving image
is warped at full resolution by that field, and the fused luma is resampled bilinearly; where
both the fixed and the aligned moving image are background, it keeps the fixed image's
background (:mod:`bsafusion.inference.background`).
PET/SPECT are fused on their Y channel (YCbCr); the aligned chroma (Cb, Cr) is put back.

Field convention: see :mod:`bsafusion.deform` (pixels of the fixed grid, channels x, y;
``aligned = warp(moving, field)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from skimage.transform import resize
from tqdm import tqdm

from bsafusion import modality as modalities
from bsafusion.colour import merge_luma, split_luma, warp_chroma
from bsafusion.deform import invert, resize_field, resize_image, warp
from bsafusion.errors import InputError
from bsafusion.device import resolve_device
from bsafusion.inference.background import keep_background
from bsafusion.inference.refine import RefineSettings, default_settings, refine_field
from bsafusion.io import (
    GEOMETRY_FREE_SUFFIXES,
    IMAGE_SUFFIXES,
    as_slice_image,
    image_stem,
    image_suffix,
    read_image,
    slice_pixels,
    staged_outputs,
    write_image,
    write_in_parallel,
)
from bsafusion.model import BSFAF, checkpoint
from bsafusion.transforms import field_to_displacement_image
from bsafusion.visualize import checkerboard, save_panel

#: Smallest image side (pixels) accepted: below it an image holds too little structure to
#: register, and the network would only see it blown up to its input size.
MIN_SIZE = 16


@dataclass
class FusionResult:
    """Outputs for one pair, on the fixed image's grid, values in [0, 1]."""

    fused: np.ndarray  # (H, W) grey, or (H, W, 3) RGB for a colour moving image
    fused_luma: np.ndarray  # (H, W) the network's output (Y channel for colour)
    aligned: np.ndarray  # moving image aligned to the fixed one, (H, W) or (H, W, 3)
    aligned_luma: np.ndarray  # (H, W)
    field: np.ndarray  # (2, H, W) pixels, aligns moving -> fixed
    inverse_field: np.ndarray  # (2, H, W) pixels, aligns fixed -> moving (bidirectional output)


def _check_size(shape: Sequence[int], name: str) -> None:
    if min(shape[:2]) < MIN_SIZE:
        raise InputError(f"{name}: image of {shape[1]}x{shape[0]} pixels; registration needs at least "
                         f"{MIN_SIZE}x{MIN_SIZE}")


def _check_image(image: np.ndarray, name: str, allow_rgb: bool) -> np.ndarray:
    try:
        image = np.asarray(image)
    except ValueError:  # ragged nested sequences
        raise InputError(f"{name}: not an image array (ragged or irregular nesting)") from None
    if image.dtype.kind == "c":
        raise InputError(f"{name}: complex values; a real-valued image is required")
    if image.dtype.kind not in "biuf":
        raise InputError(f"{name}: {image.dtype} values; a numeric image is required")
    image = image.astype(np.float32)
    if image.size == 0:
        raise InputError(f"{name}: empty image")
    if image.ndim == 3 and image.shape[-1] == 3 and allow_rgb:
        pass
    elif image.ndim != 2:
        raise InputError(f"{name}: expected a 2D {'grey or RGB ' if allow_rgb else 'grey '}image, got shape {image.shape}")
    _check_size(image.shape, name)
    if not np.isfinite(image).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    if image.min() < -1e-3 or image.max() > 1 + 1e-3:
        raise InputError(f"{name}: values must be scaled to [0, 1] (got {image.min():.3g}..{image.max():.3g})")
    return np.clip(image, 0, 1)


class Fuser:
    """A loaded model ready to register and fuse pairs of one modality.

    Examples
    --------
    >>> fuser = Fuser("CT")                                   # doctest: +SKIP
    >>> result = fuser.fuse(mri, ct)                          # doctest: +SKIP
    >>> result.fused.shape == mri.shape                       # doctest: +SKIP
    True

    ``refine`` sets the per-pair refinement of the network's field (:mod:`bsafusion.inference.refine`):
    ``None`` for the modality's default (:data:`bsafusion.modality` table), an int for a number
    of steps (0 = off), or full :class:`~bsafusion.inference.refine.RefineSettings`.
    ``keep_background=False`` gives the network's fused output untouched where both images are
    background (:mod:`bsafusion.inference.background`), for studies of that rule.
    """

    def __init__(
        self,
        modality: str,
        weights: str | Path | None = None,
        device: str = "auto",
        refine: RefineSettings | int | None = None,
        keep_background: bool = True,
    ) -> None:
        self.modality = modalities.moving(modality).name
        self.keep_background = keep_background
        self.weights = Path(weights) if weights else checkpoint.default_weights_path(self.modality)
        self.device = resolve_device(device)
        self.model: BSFAF = checkpoint.load_model(self.weights, self.modality, self.device)
        self.refine = refine if isinstance(refine, RefineSettings) else default_settings(self.modality, refine)

    @torch.no_grad()
    def fuse_batch(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                   names: Sequence[tuple[str, str]] | None = None) -> list[FusionResult]:
        """Fuse several (fixed, moving) pairs of equal size in one network call.

        ``names`` (per pair, fixed and moving) are what error messages call the images; by
        default ``pair <i> fixed`` and ``pair <i> moving``.
        """
        if not pairs:
            return []
        if names is None:
            names = [(f"pair {i} fixed", f"pair {i} moving") for i in range(len(pairs))]
        fixed_list, luma_list, chroma_list = [], [], []
        for (fixed, moving), (fixed_name, moving_name) in zip(pairs, names):
            fixed = _check_image(fixed, fixed_name, allow_rgb=False)
            moving = _check_image(moving, moving_name, allow_rgb=True)
            if moving.ndim == 3 and not (np.ptp(moving, axis=-1) < 1e-6).all():
                if not modalities.get(self.modality).colour:
                    raise InputError(f"{moving_name}: colour image given as {self.modality}, which is grey; "
                                     f"is it {' or '.join(modalities.COLOUR)}?")
                luma, chroma = split_luma(moving)
            elif moving.ndim == 3:  # grey stored as RGB: its own luma (as the data loaders do)
                luma, chroma = moving[..., 0], None
            else:
                luma, chroma = moving, None
            for name, values in ((fixed_name, fixed), (moving_name, luma)):
                if values.max() - values.min() < 1e-6:
                    raise InputError(f"{name}: constant image (no structure); nothing to register")
            fixed_list.append(fixed)
            luma_list.append(luma)
            chroma_list.append(chroma)
        shape = fixed_list[0].shape
        if any(f.shape != shape for f in fixed_list):
            raise InputError("fuse_batch needs fixed images of one size; call fuse() per pair otherwise")
        dev = self.device
        fixed_t = torch.from_numpy(np.stack(fixed_list))[:, None].to(dev)
        moving_full = torch.stack([
            resize_image(torch.from_numpy(m)[None, None], shape)[0] for m in luma_list
        ]).to(dev)
        net = (self.model.cfg.img_size,) * 2
        fixed_net, moving_net = resize_image(fixed_t, net), resize_image(moving_full, net)
        # the network runs in inference mode (its inference kernels, no autograd bookkeeping);
        # refinement optimises a field with autograd, so it gets ordinary copies
        with torch.inference_mode():
            registration = self.model.register(fixed_net, moving_net)
        field_net, inverse_net = registration.field_ba, registration.field_ab
        if self.refine.steps:
            translation = None if registration.translation is None else registration.translation.clone()
            field_net = refine_field(fixed_net, moving_net, field_net.clone(), self.refine, translation)
            inverse_net = invert(field_net)
        field = resize_field(field_net, shape)
        inverse = resize_field(inverse_net, shape)
        # the moving image is warped once, at full size (the network's own warp is for training)
        # border padding: the studio-range background of PET/SPECT luma is 16/255, not 0
        aligned_luma = warp(moving_full, field, padding="border")
        with torch.inference_mode():
            fused_net = self.model.fuse(registration, field_net)
        fused_luma = resize_image(fused_net, shape).clamp(0, 1)
        if self.keep_background:
            fused_luma = keep_background(fused_luma, fixed_t, aligned_luma)

        results = []
        for i, chroma in enumerate(chroma_list):
            y_fused = fused_luma[i, 0].cpu().numpy()
            y_aligned = aligned_luma[i, 0].cpu().numpy()
            if chroma is not None:
                chroma_t = resize_image(torch.from_numpy(np.moveaxis(chroma, -1, 0))[None].to(dev), shape)
                chroma_al = warp_chroma(chroma_t, field[i : i + 1])[0].cpu().numpy()
                chroma_al = np.moveaxis(chroma_al, 0, -1)
                fused, aligned = merge_luma(y_fused, chroma_al), merge_luma(y_aligned, chroma_al)
            else:
                fused, aligned = y_fused, y_aligned
            results.append(FusionResult(fused, y_fused, aligned, y_aligned,
                                        field[i].cpu().numpy(), inverse[i].cpu().numpy()))
        return results

    def fuse(self, fixed: np.ndarray, moving: np.ndarray,
             names: tuple[str, str] = ("fixed", "moving")) -> FusionResult:
        """Register ``moving`` (grey or RGB) to ``fixed`` (grey) and fuse them.

        Both are arrays scaled to [0, 1], at least :data:`MIN_SIZE` pixels a side; a moving
        array of another size is stretched to the fixed one (arrays carry no geometry: give
        files to :func:`fuse_files` to have physical geometry respected). Colour moving images
        are accepted for PET/SPECT only. ``names`` are what error messages call them.
        """
        return self.fuse_batch([(fixed, moving)], [names])[0]


def output_names(stem: str) -> dict[str, str]:
    """File names of the outputs of one 2D pair."""
    return {"fused": f"{stem}_fused.png", "aligned": f"{stem}_aligned.png",
            "field": f"{stem}_field.nii.gz", "panel": f"{stem}_panel.png"}


def write_result(result: FusionResult, fixed_image: sitk.Image, out_dir: str | Path, stem: str,
                 fixed: np.ndarray, moving: np.ndarray) -> dict[str, Path]:
    """Write fused / aligned PNGs, the displacement field (``.nii.gz``, mm) and a quick-look panel.

    The four files are published together or not at all (:func:`bsafusion.io.staged_outputs`).
    The field file is an ITK displacement field on the fixed image's grid (vectors in physical
    units of the fixed image: pixels times spacing, which is 1 for PNG), usable directly as
    ``sitk.DisplacementFieldTransform`` to resample the moving image onto the fixed one.
    """
    out_dir = Path(out_dir)
    names = output_names(stem)
    geometry = fixed_image if fixed_image.GetNumberOfComponentsPerPixel() == 1 else sitk.VectorIndexSelectionCast(fixed_image, 0)
    moving_show = moving if moving.shape[:2] == fixed.shape else resize(moving, fixed.shape, order=1, anti_aliasing=True)
    field = field_to_displacement_image(result.field, geometry)
    panel = [("fixed (MRI)", fixed), ("moving", moving_show), ("aligned", result.aligned),
             ("checkerboard", checkerboard(fixed, result.aligned_luma)), ("fused", result.fused)]
    with staged_outputs(out_dir) as stage:
        # the float64 field's gzip stream is the slowest (about half of the writing), so it goes
        # first and the other three share the second thread
        write_in_parallel([
            lambda: write_image(field, stage / names["field"]),
            lambda: save_panel(stage / names["panel"], panel),
            lambda: write_image(result.fused, stage / names["fused"]),
            lambda: write_image(result.aligned, stage / names["aligned"]),
        ])
    return {key: out_dir / name for key, name in names.items()}


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6, atol=1e-9)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6 * max(a.GetSpacing()))
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def moving_on_fixed_grid(fixed: sitk.Image, moving: sitk.Image, fixed_path: Path, moving_path: Path) -> sitk.Image:
    """The moving image on the fixed image's pixel grid, in physical space.

    The same grid: unchanged. Otherwise, when both files store geometry (NIfTI, MHA, NRRD):
    resampled (linear, identity transform in physical space, outside filled with its minimum),
    so the written field, applied to the *original* moving file with ``sitk.Resample``, gives the
    aligned image. PNG/JPEG/BMP/TIFF store no origin or direction, so a pair of those must share
    its size (pixel grid): stretching one onto the other would make the field's physical
    meaning false.

    Raises
    ------
    InputError
        Differing grids with a format without geometry; images that overlap less than
        :data:`bsafusion.inference.volume.geometry.MIN_OVERLAP` in physical space.
    """
    if _same_grid(fixed, moving):
        return moving
    free = [p for p in (fixed_path, moving_path) if image_suffix(p) in GEOMETRY_FREE_SUFFIXES]
    if free:
        raise InputError(f"{moving_path}: {moving.GetSize()[0]}x{moving.GetSize()[1]} pixels (spacing "
                         f"{moving.GetSpacing()}) on another grid than {fixed_path} ({fixed.GetSize()[0]}x"
                         f"{fixed.GetSize()[1]}, spacing {fixed.GetSpacing()}); {free[0].name} stores no "
                         f"physical geometry, so the pair must have the same size (resample one, or use NIfTI/MHA/NRRD)")
    from bsafusion.inference.volume.geometry import MIN_OVERLAP, coverage_mask, overlap_fraction  # bsafusion.inference.volume imports us

    identity = sitk.Transform(2, sitk.sitkIdentity)
    overlap = overlap_fraction(fixed, moving, coverage_mask(fixed, moving, identity))
    if overlap < MIN_OVERLAP:
        raise InputError(f"{moving_path}: overlaps {fixed_path} by only {100 * overlap:.1f}% in physical space "
                         f"(at least {100 * MIN_OVERLAP:.0f}% needed); check origin and spacing")
    lowest = float(sitk.GetArrayViewFromImage(moving).min())
    return sitk.Resample(moving, fixed, identity, sitk.sitkLinear, lowest, moving.GetPixelID())


def fuse_files(fixed_path: str | Path, moving_path: str | Path, fuser: Fuser, out_dir: str | Path,
               stem: str | None = None) -> dict[str, Path]:
    """Read a pair of 2D images, fuse them and write every output (nothing on error).

    The moving image is first brought onto the fixed grid (:func:`moving_on_fixed_grid`).
    Output names start with ``stem``, by default the moving file's name without its image
    suffix (``pet.nii.gz`` -> ``pet``).
    """
    fixed_path, moving_path = Path(fixed_path), Path(moving_path)
    return fuse_images(read_image(fixed_path), read_image(moving_path), fixed_path, moving_path, fuser, out_dir, stem)


def fuse_images(fixed_image: sitk.Image, moving_image: sitk.Image, fixed_path: Path, moving_path: Path,
                fuser: Fuser, out_dir: str | Path, stem: str | None = None) -> dict[str, Path]:
    """:func:`fuse_files` on images already read (:func:`bsafusion.io.read_image`) from those paths.

    Each image is decoded once: the moving pixels (grey, or RGB that the fuser splits into
    luma and chroma) serve the network, the colour put back and the panel alike.
    """
    fixed_image = as_slice_image(fixed_image, fixed_path)
    moving_image = moving_on_fixed_grid(fixed_image, as_slice_image(moving_image, moving_path), fixed_path, moving_path)
    fixed = slice_pixels(fixed_image, fixed_path, grey=True)
    moving = slice_pixels(moving_image, moving_path, grey=None)
    result = fuser.fuse(fixed, moving, names=(str(fixed_path), str(moving_path)))
    return write_result(result, fixed_image, out_dir, stem or image_stem(moving_path), fixed, moving)


def pair_folder(fixed_dir: str | Path, moving_dir: str | Path) -> list[tuple[Path, Path]]:
    """Pairs of image files with the same name in two folders (the Harvard layout's convention)."""
    fixed_dir, moving_dir = Path(fixed_dir), Path(moving_dir)
    for d in (fixed_dir, moving_dir):
        if not d.is_dir():
            raise InputError(f"{d}: folder not found")
    fixed_files = {p.name: p for p in sorted(fixed_dir.iterdir()) if image_suffix(p) in IMAGE_SUFFIXES}
    moving_files = {p.name: p for p in sorted(moving_dir.iterdir()) if image_suffix(p) in IMAGE_SUFFIXES}
    missing = sorted(set(fixed_files) ^ set(moving_files))
    if missing:
        raise InputError(f"{moving_dir}: files without a partner of the same name in the other folder: {', '.join(missing[:5])}")
    if not fixed_files:
        raise InputError(f"{fixed_dir}: no images found")
    return [(fixed_files[k], moving_files[k]) for k in sorted(fixed_files)]


def fuse_folder(pairs: Iterable[tuple[Path, Path]], fuser: Fuser, out_dir: str | Path,
                progress: bool = True) -> tuple[list[dict[str, Path]], list[InputError]]:
    """Fuse every pair with a progress bar; report and continue past pairs that fail.

    Each pair's outputs are published together (all four files or none). A pair whose input
    is unusable is skipped and its error returned, so one bad file does not cost the others;
    anything else (a bug, an interruption) stops the run, keeping the pairs already finished.

    Returns
    -------
    (outputs of the fused pairs, errors of the skipped ones)
    """
    outputs, failures = [], []
    for fixed, moving in tqdm(list(pairs), desc="fuse", disable=not progress, dynamic_ncols=True):
        try:
            outputs.append(fuse_files(fixed, moving, fuser, out_dir, image_stem(moving)))
        except InputError as exc:
            failures.append(exc)
    return outputs, failures
