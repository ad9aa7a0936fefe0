"""Model weights and training checkpoints: atomic saves, safe loads, clear errors.

Files are plain dictionaries of tensors and primitive values, loaded with
``torch.load(..., weights_only=True)`` so a weights file can never run code. Two kinds:

* **weights** (``kind="weights"``): what inference needs: the model config, the modality the
  model was trained for, the state dict and free-form metadata (training data, steps, metrics).
* **checkpoints** (``kind="checkpoint"``): weights plus optimizer/scheduler state, step and the
  training config, so ``--resume`` continues the same schedule.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

from bsafusion.errors import InputError
from bsafusion.io import atomic_output
from bsafusion.model import MODALITY_CLASSES, BSFAF, ModelConfig

FORMAT = "bsafusion"
VERSION = 1


def default_weights_path(modality: str) -> Path:
    """Path of the shipped model for ``modality`` (``CT``, ``PET`` or ``SPECT``)."""
    modality = modality.upper()
    if modality not in MODALITY_CLASSES[:3]:
        raise InputError(f"unknown modality {modality!r}; choose CT, PET or SPECT")
    return Path(str(resources.files("bsafusion") / "weights" / f"bsafusion_{modality.lower()}.pt"))


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


def read(path: str | Path) -> dict[str, Any]:
    """Load a weights/checkpoint file safely and check that it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle with code, truncated file...
        raise InputError(f"{path}: not a readable BSAFusion weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not a BSAFusion weights file")
    if payload.get("version") != VERSION:
        raise InputError(f"{path}: weights format version {payload.get('version')} is not supported (need {VERSION})")
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
        cfg = ModelConfig.from_dict(payload["model_config"])
        model = BSFAF(cfg)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: weights do not match the BSFA-F architecture ({first_line})") from None
    return model.to(device).eval()
