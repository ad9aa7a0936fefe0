"""Datasets: aligned pairs made unaligned on the fly (training), real unaligned cases (evaluation).

Folder layout (the Harvard data's, and any user data laid out the same way)::

    root/<MOD>/MRI/<name>.png        fixed image (grey)
    root/<MOD>/<MOD>/<name>.png      the other modality, same file name = same slice
    root/<MOD>/<MOD>_label/...       optional (unaligned cases): the moving image before deformation
    root/<MOD>/<MOD>_RGB/...         optional (unaligned cases): the moving image in colour

``root`` may also point directly at ``root/<MOD>``. ``<MOD>`` is CT, PET or SPECT; any format
:func:`bsafusion.io.read_slice` reads works. Files are paired by name without extension and
listed in natural order (``2`` before ``10``).

Intensities: grey images (CT, MRI; RGB files with equal channels count as grey) are used as
they are; colour images (PET, SPECT) give their luma Y, BT.601 studio range as in the Harvard
data (:mod:`bsafusion.colour`), and their chroma is kept to colour the fused image.

Items are dictionaries of float32 tensors of fixed shapes within a dataset (the default
``DataLoader`` collate works), plus ``modality_index`` (int) and ``name`` (str). Modality
classes: :data:`MODALITIES` ``("CT", "PET", "SPECT")`` are 0, 1, 2 and MRI is :data:`MRI_CLASS`
(3), the order of :data:`bsafusion.model.MODALITY_CLASSES`.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.transform import resize
from torch.utils.data import Dataset

from bsafusion.colour import NEUTRAL_CHROMA, split_luma
from bsafusion.deform import random_misalignment, warp_numpy
from bsafusion.errors import InputError
from bsafusion.io import IMAGE_SUFFIXES, image_stem, image_suffix, read_luma, read_slice

__all__ = [
    "MODALITIES",
    "MRI_CLASS",
    "HARVARD_TEST_PROFILE",
    "VALIDATION_SEED",
    "modality_index",
    "list_images",
    "AlignedPairDataset",
    "validation_pairs",
    "UnalignedCaseDataset",
]

MODALITIES: tuple[str, ...] = ("CT", "PET", "SPECT")
"""Moving modalities, in class order (CT=0, PET=1, SPECT=2)."""
MRI_CLASS = 3
"""Class index of MRI, the fixed modality."""

HARVARD_TEST_PROFILE: dict[str, float] = {
    "max_rotation_deg": 0.0,
    "max_scale": 0.0,
    "max_shear": 0.0,
    "max_translation": 0.01,
    "max_elastic": 10.0,
    "elastic_smoothness": 0.0625,
}
"""Options of :func:`~bsafusion.deform.random_misalignment` matched to the Harvard test cases.

The test misalignment is a smooth random field (noise blurred with sigma = 16 px at 256x256)
plus at most 1 % translation and no rotation; fitting each test image to its aligned truth
measured a mean of 3-4 px inside the head. These options give sigma = 0.0625 * 256 = 16 px and
a peak of 10 px, a mean of 3.2 px. Validation on ``val_aligned`` misaligns with this profile
and a fixed seed, so checkpoints are chosen on the problem the test set poses.
"""

VALIDATION_SEED = 2025
"""Seed of the validation misalignment (:func:`validation_pairs`): training validation, the
refinement tuning and the benchmark scripts all score the same pairs with the same fields."""

_MISALIGNMENT_OPTIONS = tuple(
    name for name in inspect.signature(random_misalignment).parameters if name not in ("shape", "seed")
)


def modality_index(modality: str) -> int:
    """Class index of ``modality`` (case-insensitive): CT 0, PET 1, SPECT 2, MRI 3."""
    name = str(modality).upper()
    if name == "MRI":
        return MRI_CLASS
    if name not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    return MODALITIES.index(name)


# --------------------------------------------------------------------------- folders


def _natural_key(text: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def _case_folder(root: Path, modality: str) -> Path:
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


def _paired(folders: list[Path], optional: list[Path]) -> tuple[list[str], list[list[Path]]]:
    """Names present in every folder (natural order) and their files; a missing partner is an error."""
    listings = [list_images(folder) for folder in folders + optional]
    names = sorted(listings[0], key=_natural_key)
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


def _resize(stack: np.ndarray, size: int | None) -> np.ndarray:
    """Resize ``(C, H, W)`` to ``(C, size, size)``, bilinear, anti-aliased when shrinking."""
    if size is None or stack.shape[1:] == (size, size):
        return stack
    shrink = stack.shape[1] > size or stack.shape[2] > size
    out = resize(stack, (stack.shape[0], size, size), order=1, mode="edge", anti_aliasing=shrink, preserve_range=True)
    return out.astype(np.float32)


def _check_shape(image: np.ndarray, path: Path, fixed: np.ndarray, fixed_path: Path) -> None:
    if image.shape[:2] != fixed.shape[:2]:
        raise InputError(
            f"{path}: size {image.shape[1]}x{image.shape[0]} differs from its MRI partner "
            f"{fixed_path} ({fixed.shape[1]}x{fixed.shape[0]})"
        )


def _luma_chroma(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``Y (H, W)`` and ``CbCr (2, H, W)`` (neutral for grey images)."""
    y, cbcr = read_luma(path)
    if cbcr is None:
        return y, np.full((2, *y.shape), NEUTRAL_CHROMA, np.float32)
    return y, np.ascontiguousarray(cbcr.transpose(2, 0, 1))


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


# --------------------------------------------------------------------------- training pairs


class AlignedPairDataset(Dataset):
    """Aligned MRI/<MOD> slice pairs, misaligned on the fly with a known field (training).

    Parameters
    ----------
    root:
        Folder such as ``harvard/train_aligned`` (or ``harvard/train_aligned/<MOD>``).
    modality:
        ``"CT"``, ``"PET"`` or ``"SPECT"``.
    size:
        Images are resized to ``size x size`` if needed (bilinear, anti-aliased).
    augment:
        Random flips and 90-degree rotations (the 8 symmetries of the square), applied
        identically to both aligned images *before* misalignment.
    seed:
        With :meth:`set_epoch` and the index, the only source of randomness: item ``i`` of epoch
        ``e`` is a pure function of ``(seed, e, i)``, so resumed training sees the same data.
    misalignment:
        Keyword arguments of :func:`bsafusion.deform.random_misalignment` (``max_rotation_deg``,
        ``max_elastic``, ...); ``None`` for its defaults; ``False`` for none (zero field).

    Items
    -----
    ``fixed`` (1, S, S)
        MRI.
    ``moving`` (1, S, S)
        The other modality (luma Y for colour images) misaligned by a random affine + elastic
        deformation; outside the image the border value is repeated.
    ``moving_aligned`` (1, S, S)
        The same before misalignment: the truth.
    ``field`` (2, S, S)
        Ground-truth registration field in pixels (:mod:`bsafusion.deform` convention):
        ``warp(moving, field) ~= moving_aligned``. Use it to evaluate, not to train.
    ``cbcr`` (2, S, S)
        Chroma of ``moving_aligned`` (:data:`~bsafusion.colour.NEUTRAL_CHROMA` for grey).
    ``modality_index`` (int), ``name`` (str: file name without extension).

    Raises
    ------
    InputError
        Missing folders, empty folder, image without partner (at construction); unreadable
        image or pair of different sizes (when the item is read).

    Examples
    --------
    >>> ds = AlignedPairDataset("../shared/data/harvard/train_aligned", "CT")  # doctest: +SKIP
    >>> ds.set_epoch(3); item = ds[0]                                         # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike,
        modality: str,
        size: int = 256,
        augment: bool = True,
        seed: int = 0,
        misalignment: dict[str, Any] | None | bool = None,
    ) -> None:
        self.modality = str(modality).upper()
        self.modality_index = modality_index(self.modality)
        if self.modality_index == MRI_CLASS:
            raise InputError("modality must be the moving modality (CT, PET or SPECT), not MRI")
        if int(size) < 8:
            raise InputError(f"size must be at least 8 pixels, got {size}")
        if misalignment is True:
            misalignment = None
        if isinstance(misalignment, dict):
            unknown = sorted(set(misalignment) - set(_MISALIGNMENT_OPTIONS))
            if unknown:
                raise InputError(
                    f"unknown misalignment option(s) {', '.join(unknown)}; known: {', '.join(_MISALIGNMENT_OPTIONS)}"
                )
        self.root = _case_folder(Path(root), self.modality)
        self.names, files = _paired([self.root / "MRI", self.root / self.modality], [])
        self.fixed_files = [f[0] for f in files]
        self.moving_files = [f[1] for f in files]
        self.size = int(size)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.misalignment = misalignment
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.names)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws :meth:`__getitem__` makes.

        With ``DataLoader(num_workers>0, persistent_workers=True)`` workers keep their own copy:
        call this before creating the epoch's iterator and do not use persistent workers.
        """
        self.epoch = int(epoch)

    def _load(self, index: int) -> np.ndarray:
        """``(4, S, S)``: fixed, moving luma, moving Cb, moving Cr (aligned, resized)."""
        fixed_path, moving_path = self.fixed_files[index], self.moving_files[index]
        fixed = read_slice(fixed_path, grey=True)
        y, cbcr = _luma_chroma(moving_path)
        _check_shape(y, moving_path, fixed, fixed_path)
        return _resize(np.concatenate([fixed[None], y[None], cbcr]).astype(np.float32), self.size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]  # IndexError when out of range, negatives allowed
        stack = self._load(index)
        aug_seq, mis_seq = np.random.SeedSequence([self.seed, self.epoch, index]).spawn(2)
        if self.augment:
            rng = np.random.default_rng(aug_seq)
            stack = np.rot90(stack, k=int(rng.integers(4)), axes=(1, 2))
            if rng.integers(2):
                stack = stack[:, :, ::-1]
        fixed, aligned, cbcr = stack[0], stack[1], stack[2:]
        shape = aligned.shape
        if self.misalignment is False:
            moving, field = aligned, np.zeros((2, *shape), np.float32)
        else:
            kwargs = self.misalignment or {}
            mis = random_misalignment(shape, seed=np.random.default_rng(mis_seq), **kwargs)
            moving = warp_numpy(np.ascontiguousarray(aligned), mis.field, padding="border")
            field = mis.inverse
        return {
            "fixed": _tensor(fixed[None]),
            "moving": _tensor(moving[None]),
            "moving_aligned": _tensor(aligned[None]),
            "field": _tensor(field),
            "cbcr": _tensor(cbcr),
            "modality_index": self.modality_index,
            "name": self.names[index],
        }


def validation_pairs(
    root: str | os.PathLike,
    modality: str,
    seed: int = VALIDATION_SEED,
    misalignment: dict[str, float] | None = None,
) -> AlignedPairDataset:
    """Aligned pairs misaligned once and for all, to select and tune on.

    No augmentation, and the epoch stays 0, so item ``i`` is the same pair with the same field
    every time it is read. ``misalignment`` defaults to :data:`HARVARD_TEST_PROFILE`.
    """
    profile = dict(HARVARD_TEST_PROFILE if misalignment is None else misalignment)
    return AlignedPairDataset(root, modality, augment=False, seed=seed, misalignment=profile)


# --------------------------------------------------------------------------- evaluation cases


class UnalignedCaseDataset(Dataset):
    """Real unaligned MRI/<MOD> cases (evaluation), with the aligned truth when available.

    Parameters
    ----------
    root:
        Folder such as ``harvard/test_unaligned`` (or ``harvard/test_unaligned/<MOD>``) holding
        ``MRI/`` and ``<MOD>/``, optionally ``<MOD>_label/`` and ``<MOD>_RGB/``. An optional
        folder that exists must hold a partner for every case.
    modality:
        ``"CT"``, ``"PET"`` or ``"SPECT"``.
    size:
        Resize every image to ``size x size`` (default: keep; images of one case must have the
        same size, and cases of different sizes need ``batch_size=1``).

    Items
    -----
    ``fixed`` (1, H, W)
        MRI.
    ``moving`` (1, H, W)
        The moving image (its luma if stored in colour).
    ``moving_label`` (1, H, W), only with ``<MOD>_label/``
        The moving image before deformation (aligned with ``fixed``).
    ``moving_rgb`` (3, H, W) and ``moving_cbcr`` (2, H, W), only with ``<MOD>_RGB/``
        The moving image in colour and its chroma (warp the chroma with the estimated field
        and merge it with the fused luma to colour the result).
    ``modality_index`` (int), ``name`` (str).
    """

    def __init__(self, root: str | os.PathLike, modality: str, size: int | None = None) -> None:
        self.modality = str(modality).upper()
        self.modality_index = modality_index(self.modality)
        if self.modality_index == MRI_CLASS:
            raise InputError("modality must be the moving modality (CT, PET or SPECT), not MRI")
        self.root = _case_folder(Path(root), self.modality)
        self.optional = [
            key for key, folder in (("moving_label", "_label"), ("moving_rgb", "_RGB"))
            if (self.root / f"{self.modality}{folder}").is_dir()
        ]  # fmt: skip
        suffix = {"moving_label": "_label", "moving_rgb": "_RGB"}
        extra = [self.root / f"{self.modality}{suffix[key]}" for key in self.optional]
        self.names, self.files = _paired([self.root / "MRI", self.root / self.modality], extra)
        self.size = None if size is None else int(size)

    @property
    def has_label(self) -> bool:
        """Whether items carry ``moving_label`` (the aligned truth)."""
        return "moving_label" in self.optional

    @property
    def has_rgb(self) -> bool:
        """Whether items carry ``moving_rgb`` and ``moving_cbcr``."""
        return "moving_rgb" in self.optional

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]
        fixed_path, moving_path, *extra_paths = self.files[index]
        fixed = read_slice(fixed_path, grey=True)
        planes = {"fixed": fixed[None], "moving": read_slice(moving_path, grey=True, to_luma=True)[None]}
        for key, path in zip(self.optional, extra_paths):
            if key == "moving_label":
                planes[key] = read_slice(path, grey=True, to_luma=True)[None]
            else:
                rgb = read_slice(path, grey=False)
                planes[key] = rgb.transpose(2, 0, 1)
                planes["moving_cbcr"] = split_luma(rgb)[1].transpose(2, 0, 1)
        paths = dict(zip(["fixed", "moving", *self.optional], [fixed_path, moving_path, *extra_paths]))
        for key, plane in planes.items():
            _check_shape(plane[0], paths.get(key, paths.get("moving_rgb")), fixed, fixed_path)
        item: dict[str, Any] = {
            key: _tensor(_resize(plane.astype(np.float32), self.size)) for key, plane in planes.items()
        }
        item["modality_index"] = self.modality_index
        item["name"] = self.names[index]
        return item
