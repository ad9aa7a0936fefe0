"""Input checks shared by every function that scores images or fields.

Metrics, baselines and field utilities accept numpy arrays, anything :func:`numpy.asarray`
reads and torch tensors; these checks turn them into float64 numpy arrays or raise
:class:`bsafusion.errors.InputError` naming the argument: wrong dimensions, mismatched shapes,
NaN/Inf values, empty arrays, bad parameters. One place, so one input is refused with the same
words wherever it is given.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from bsafusion.errors import InputError

__all__ = ["to_numpy", "real_array", "finite_float64", "as_image", "as_images", "check_data_range", "check_int",
           "check_min_size", "as_field", "as_mask"]


def to_numpy(x: Any) -> np.ndarray:
    """Array view of ``x``; torch tensors are detached and moved to the CPU (no torch import)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _is_real(arr: np.ndarray) -> bool:
    numeric = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    return numeric and arr.dtype != bool


def real_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a real numeric numpy array (any shape), or :class:`InputError` naming ``name``."""
    try:
        arr = to_numpy(x)
    except Exception as exc:  # noqa: BLE001 - anything unconvertible is the caller's input
        raise InputError(f"{name}: cannot be read as an array ({exc})") from exc
    if not _is_real(arr):
        raise InputError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


def finite_float64(arr: np.ndarray, name: str, kind: str) -> np.ndarray:
    """``arr`` as float64 once checked non-empty and finite (``kind`` names it in the message)."""
    if arr.size == 0:
        raise InputError(f"{name}: empty {kind} (shape {arr.shape})")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: contains NaN or Inf values")
    return arr


def as_image(x: Any, name: str, ndims: tuple[int, ...] = (2,)) -> np.ndarray:
    """Validate one image and return it as float64.

    Accepts numpy arrays, anything :func:`numpy.asarray` reads, and torch tensors (detached,
    moved to the CPU). Raises :class:`InputError`, naming ``name``, for a non-numeric array, a
    dimension not in ``ndims``, an empty array or non-finite values.
    """
    arr = real_array(x, name)
    if arr.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise InputError(f"{name}: expected a {want} array, got shape {arr.shape}")
    return finite_float64(arr, name, "array")


def as_images(
    names: Sequence[str], arrays: Sequence[Any], ndims: tuple[int, ...] = (2,)
) -> list[np.ndarray]:
    """Validate several images with :func:`as_image` and check they all have the same shape."""
    out = [as_image(x, n, ndims) for n, x in zip(names, arrays)]
    for n, x in zip(names[1:], out[1:]):
        if x.shape != out[0].shape:
            raise InputError(f"shape mismatch: {names[0]} is {out[0].shape}, {n} is {x.shape}")
    return out


def check_data_range(data_range: float) -> float:
    """``data_range`` (the span of possible values, 1 or 255) as a positive finite float."""
    value = float(data_range)
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"data_range must be a positive finite number, got {data_range!r}")
    return value


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int if it is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        want = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InputError(f"{name} must be {want}, got {value!r}")
    return int(value)


def check_min_size(arr: np.ndarray, minimum: int, what: str) -> None:
    """Windowed metrics (``what``) need ``minimum`` pixels a side: refuse smaller images by name."""
    if min(arr.shape) < minimum:
        raise InputError(f"{what} needs images of at least {minimum} pixels per side, got shape {arr.shape}")


def as_field(x: Any, name: str) -> np.ndarray:
    """Validate a displacement field of shape ``(n, *spatial)`` with ``n`` = 2 or 3."""
    arr = real_array(x, name)
    if arr.ndim not in (3, 4) or arr.shape[0] != arr.ndim - 1:
        raise InputError(
            f"{name}: expected a displacement field of shape (2, H, W) or (3, D, H, W) "
            f"(channels x, y[, z]; no batch axis), got shape {arr.shape}"
        )
    return finite_float64(arr, name, "field")


def as_mask(mask: Any, spatial: tuple[int, ...]) -> np.ndarray:
    """A boolean mask on the grid ``spatial`` that selects at least one pixel."""
    m = to_numpy(mask)
    if m.shape != spatial:
        raise InputError(f"mask shape {m.shape} does not match the field grid {spatial}")
    if m.dtype != bool:
        if not np.all(np.isfinite(m)):
            raise InputError("mask contains NaN or Inf values")
        m = m != 0
    if not m.any():
        raise InputError("mask selects no pixels")
    return m
