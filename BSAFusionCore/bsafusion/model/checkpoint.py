"""Model weights and training checkpoints: atomic saves, safe loads, clear errors.

Files are plain dictionaries of tensors and primitive values, loaded with
``torch.load(..., weights_only=True)`` so a weights file can never run code. Two kinds:

* **weights** (``kind="weights"``): what inference needs: the model config, the modality the
  model was trained for, the state dict and free-form metadata (training data, steps, metrics).
* **checkpoints** (``kind="checkpoint"``): weights plus optimizer/scheduler state, step and the
  training config, so ``--resume`` continues the same schedule.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from bsafusion.errors import InputError
from bsafusion.io import atomic_output
from bsafusion import modality as modalities
from bsafusion.model.config import ModelConfig
from bsafusion.model.network import BSFAF

FORMAT = "bsafusion"
VERSION = 1
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def weights_file_name(modality: str) -> str:
    """File name of a per-modality weights file (``bsafusion_ct.pt``), shipped or in a weights folder."""
    return f"bsafusion_{modalities.moving(modality).name.lower()}.pt"


def default_weights_path(modality: str) -> Path:
    """Path of the shipped model for ``modality`` (``CT``, ``PET`` or ``SPECT``)."""
    return Path(str(resources.files("bsafusion") / "weights" / weights_file_name(modality)))


def save(path: str | Path, model: BSFAF, modality: str, kind: str = "weights", **extra: Any) -> None:
    """Write ``model`` (and ``extra`` entries: optimizer state, step, metadata...) atomically."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "modality": modality.upper(),
        "model_config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def _first_line(exc: BaseException) -> str:
    """First informative line of an exception's message, without torch's terminal colour codes
    (a heading such as "Error(s) in loading state_dict for BSFAF:" is followed by its detail)."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = [f"{lines[0]} {lines[1]}"]
    return (lines[0] if lines else type(exc).__name__)[:200]


def read(path: str | Path) -> dict[str, Any]:
    """Load a weights/checkpoint file safely and check that it is one of ours.

    Messages never repeat PyTorch's advice to load with ``weights_only=False``: for a file
    that holds objects other than tensors and plain values that would mean running its code.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a weights file")
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a BSAFusion weights file (not a PyTorch archive, or cut short)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{path}: refused: holds objects other than tensors and plain values "
                         f"(weights files are loaded without running code)") from None
    except Exception as exc:  # corrupt archive members, truncated tensors...
        raise InputError(f"{path}: corrupt weights file ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not a BSAFusion weights file")
    if payload.get("version") != VERSION:
        raise InputError(f"{path}: weights format version {payload.get('version')} is not supported (need {VERSION})")
    for key in ("model_config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise InputError(f"{path}: weights file has no {key} table")
    return payload


def load_model(path: str | Path, modality: str | None = None, device: torch.device | str = "cpu") -> BSFAF:
    """Build the model a weights file describes and load its parameters.

    ``modality`` (when given) must be one the model was trained for (``"CT"``, or one of a
    multi-modality model's ``"CT+PET+SPECT"``): a CT model applied to PET would silently give
    poor results, so it is an error.
    """
    payload = read(path)
    trained_for = str(payload.get("modality", "")).upper()
    # a model trained on several modalities together is saved as e.g. "CT+PET+SPECT"
    if modality is not None and modality.upper() not in trained_for.split("+"):
        raise InputError(f"{path}: model trained for {trained_for}, not {modality.upper()}")
    try:
        model = BSFAF(ModelConfig.from_dict(payload["model_config"]))
    except Exception as exc:  # the config comes from the file: any failure to build from it is the file's
        raise InputError(f"{path}: malformed model_config ({type(exc).__name__}: {_first_line(exc)})") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise InputError(f"{path}: weights do not match the BSFA-F architecture ({_first_line(exc)})") from None
    return model.to(device).eval()
