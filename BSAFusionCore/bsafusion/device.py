"""Choice of the torch device from a user's ``auto`` / ``cpu`` / ``cuda[:N]``.

Its own module because inference, the volume pipeline, the benchmark, the Slicer support and
training all need it, and inference should not import the training stack to get it.
"""

from __future__ import annotations

import torch

from bsafusion.errors import InputError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but no CUDA device is available")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)
