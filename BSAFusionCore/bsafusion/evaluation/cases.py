"""Real unaligned MRI/<MOD> cases, with the aligned truth when available: what evaluation scores.

Folder layout: :mod:`bsafusion.layout`. Intensities: grey images (CT, MRI; RGB files with
equal channels count as grey) are used as they are; colour images (PET, SPECT) give their luma
Y, BT.601 studio range as in the Harvard data (:mod:`bsafusion.colour`), and their chroma is
kept to colour the fused image. Items are dictionaries of float32 tensors of fixed shapes
within a dataset, plus ``modality_index`` (the class of :mod:`bsafusion.modality`) and ``name``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from bsafusion import modality as modalities
from bsafusion.colour import split_luma
from bsafusion.io import read_slice
from bsafusion.layout import as_tensor, case_folder, check_same_size, paired_files, resize_stack

__all__ = ["UnalignedCaseDataset"]


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
        self.modality = modalities.moving(modality).name
        self.modality_index = modalities.get(self.modality).class_index
        self.root = case_folder(Path(root), self.modality)
        self.optional = [
            key for key, folder in (("moving_label", "_label"), ("moving_rgb", "_RGB"))
            if (self.root / f"{self.modality}{folder}").is_dir()
        ]  # fmt: skip
        suffix = {"moving_label": "_label", "moving_rgb": "_RGB"}
        extra = [self.root / f"{self.modality}{suffix[key]}" for key in self.optional]
        self.names, self.files = paired_files([self.root / "MRI", self.root / self.modality], extra)
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
            check_same_size(plane[0], paths.get(key, paths.get("moving_rgb")), fixed, fixed_path)
        item: dict[str, Any] = {
            key: as_tensor(resize_stack(plane.astype(np.float32), self.size)) for key, plane in planes.items()
        }
        item["modality_index"] = self.modality_index
        item["name"] = self.names[index]
        return item
