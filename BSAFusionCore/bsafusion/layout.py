"""The case-folder layout the datasets read, shared by training and evaluation.

Folder layout (the Harvard data's, and any user data laid out the same way)::

    root/<MOD>/MRI/<name>.png        fixed image (grey)
    root/<MOD>/<MOD>/<name>.png      the other modality, same file name = same slice
    root/<MOD>/<MOD>_label/...       optional (unaligned cases): the moving image before deformation
    root/<MOD>/<MOD>_RGB/...         optional (unaligned cases): the moving image in colour

``root`` may also point directly at ``root/<MOD>``. ``<MOD>`` is CT, PET or SPECT; any format
:func:`bsafusion.io.read_slice` reads works. Files are paired by name without extension and
listed in natural order (``2`` before ``10``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.transform import resize

from bsafusion.colour import NEUTRAL_CHROMA
from bsafusion.errors import InputError
from bsafusion.io import IMAGE_SUFFIXES, image_stem, image_suffix, read_luma

__all__ = ["natural_key", "case_folder", "list_images", "paired_files", "resize_stack", "check_same_size",
           "luma_chroma", "as_tensor"]


def natural_key(text: str) -> list[Any]:
    """Sort key putting ``2`` before ``10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def case_folder(root: Path, modality: str) -> Path:
    """``root/<MOD>`` or ``root`` itself, whichever holds ``MRI/`` and ``<MOD>/``."""
    for base in (root / modality, root):
        if (base / "MRI").is_dir() and (base / modality).is_dir():
            return base
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    raise InputError(f"{root}: expected folders {modality}/MRI and {modality}/{modality} (or MRI and {modality})")


def list_images(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by name without extension (hidden files skipped)."""
    found: dict[str, Path] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or not path.is_file() or image_suffix(path) not in IMAGE_SUFFIXES:
            continue
        stem = image_stem(path)
        if stem in found:
            raise InputError(f"{path}: two images named {stem!r} in {folder} ({found[stem].name})")
        found[stem] = path
    return found


def paired_files(folders: list[Path], optional: list[Path]) -> tuple[list[str], list[list[Path]]]:
    """Names present in every folder (natural order) and their files; a missing partner is an error."""
    listings = [list_images(folder) for folder in folders + optional]
    names = sorted(listings[0], key=natural_key)
    if not names:
        raise InputError(f"{folders[0]}: no images found")
    for listing, folder in zip(listings, folders + optional):
        for stem, path in listing.items():
            if stem not in listings[0]:
                raise InputError(f"{path}: no partner named {stem!r} in {folders[0]}")
        for stem in names:
            if stem not in listing:
                raise InputError(f"{listings[0][stem]}: no partner named {stem!r} in {folder}")
    return names, [[listing[stem] for listing in listings] for stem in names]


def resize_stack(stack: np.ndarray, size: int | None) -> np.ndarray:
    """Resize ``(C, H, W)`` to ``(C, size, size)``, bilinear, anti-aliased when shrinking."""
    if size is None or stack.shape[1:] == (size, size):
        return stack
    shrink = stack.shape[1] > size or stack.shape[2] > size
    out = resize(stack, (stack.shape[0], size, size), order=1, mode="edge", anti_aliasing=shrink, preserve_range=True)
    return out.astype(np.float32)


def check_same_size(image: np.ndarray, path: Path, fixed: np.ndarray, fixed_path: Path) -> None:
    """A case's images share one pixel grid: the datasets pair them pixel for pixel."""
    if image.shape[:2] != fixed.shape[:2]:
        raise InputError(
            f"{path}: size {image.shape[1]}x{image.shape[0]} differs from its MRI partner "
            f"{fixed_path} ({fixed.shape[1]}x{fixed.shape[0]})"
        )


def luma_chroma(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``Y (H, W)`` and ``CbCr (2, H, W)`` (neutral for grey images)."""
    y, cbcr = read_luma(path)
    if cbcr is None:
        return y, np.full((2, *y.shape), NEUTRAL_CHROMA, np.float32)
    return y, np.ascontiguousarray(cbcr.transpose(2, 0, 1))


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A contiguous float32 tensor (what the default ``DataLoader`` collate stacks)."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
