"""RGB <-> YCbCr for float images in [0, 1]: fuse the luma, put the chroma back.

PET and SPECT slices are pseudo-colour. As in the image-fusion literature, only their luma Y
takes part in registration and fusion; the chroma (Cb, Cr) of the aligned moving image is put
back afterwards (:func:`split_luma` / :func:`merge_luma`).

Which YCbCr
-----------
ITU-R BT.601 with **studio range** by default (``full_range=False``): the 8-bit definition
``Y in [16, 235]``, ``Cb, Cr in [16, 240]``, divided by 255. It is MATLAB's ``rgb2ycbcr`` and
``skimage.color.rgb2ycbcr`` (divided by 255), and it is what the Harvard data set we evaluate
on used: its stored PET/SPECT luma (``test_unaligned/PET/PET``) equals the studio-range Y of
the matching ``PET_RGB`` image within 8-bit rounding wherever no RGB channel is clipped, and
so does ``official_results/*/Fusion_GRAY`` against ``Fusion``; the full-range (JPEG) luma is off
by 7-8 grey levels on average there. Training on studio-range luma keeps our inputs on the
same scale as that data. ``full_range=True`` gives the JPEG/JFIF variant (``Y in [0, 1]``).

With ``R, G, B`` in [0, 1] (studio range, coefficients of BT.601 scaled to 8 bits)::

    Y  =  16/255 + ( 65.481 R + 128.553 G +  24.966 B) / 255
    Cb = 128/255 + (-37.797 R -  74.203 G + 112.000 B) / 255
    Cr = 128/255 + (112.000 R -  93.786 G -  18.214 B) / 255

and full range (JFIF)::

    Y  =           0.299    R + 0.587    G + 0.114    B
    Cb = 128/255 - 0.168736 R - 0.331264 G + 0.5      B
    Cr = 128/255 + 0.5      R - 0.418688 G - 0.081312 B

Both put neutral chroma at :data:`NEUTRAL_CHROMA` = 128/255 (the 8-bit standards' 128), so a
grey pixel has ``Cb = Cr = 128/255``. The inverse transforms are the exact matrix inverses.

Grey images are their own luma: the data loaders use the grey value itself (not its
studio-range Y) for CT/MRI, and neutral chroma (see :func:`bsafusion.io.read_luma`).

Functions accept numpy arrays or torch tensors, with the colour channels on ``channel_axis``
(last by default, like scikit-image; use ``channel_axis=-3`` for ``(N, 3, H, W)`` tensors).

References
----------
ITU-R Recommendation BT.601-7, *Studio encoding parameters of digital television*, 2011.
JPEG File Interchange Format 1.02 (full-range YCbCr).

Examples
--------
>>> import numpy as np
>>> ycc = rgb_to_ycbcr(np.array([1.0, 0.0, 0.0]))  # pure red
>>> np.round(ycc * 255, 3)
array([ 81.481,  90.203, 240.   ])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bsafusion.errors import InputError

__all__ = ["NEUTRAL_CHROMA", "rgb_to_ycbcr", "ycbcr_to_rgb", "split_luma", "merge_luma", "pseudo_colour"]

NEUTRAL_CHROMA = 128.0 / 255.0
"""Cb and Cr of a grey pixel (both conventions)."""

_STUDIO = np.array(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=np.float64
) / 255.0
_STUDIO_OFFSET = np.array([16.0, 128.0, 128.0]) / 255.0
_FULL = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float64
)
_FULL_OFFSET = np.array([0.0, 128.0, 128.0]) / 255.0


def _forward(full_range: bool) -> tuple[np.ndarray, np.ndarray]:
    return (_FULL, _FULL_OFFSET) if full_range else (_STUDIO, _STUDIO_OFFSET)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _apply(x: Any, matrix: np.ndarray, offset: np.ndarray, channel_axis: int, pre_offset: bool) -> Any:
    """``matrix @ x + offset`` (or ``matrix @ (x - offset)``) along ``channel_axis``."""
    if _is_torch(x):
        import torch

        if not torch.is_floating_point(x):
            raise TypeError(f"expected a float tensor in [0, 1], got {x.dtype}")
        if x.shape[channel_axis] != 3:
            raise ValueError(f"expected 3 channels on axis {channel_axis}, got shape {tuple(x.shape)}")
        last = torch.movedim(x, channel_axis, -1)
        m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
        o = torch.as_tensor(offset, dtype=x.dtype, device=x.device)
        out = (last - o) @ m.T if pre_offset else last @ m.T + o
        return torch.movedim(out, -1, channel_axis)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"expected a float array in [0, 1], got {x.dtype} (divide 8-bit images by 255)")
    if x.shape[channel_axis] != 3:
        raise ValueError(f"expected 3 channels on axis {channel_axis}, got shape {x.shape}")
    last = np.moveaxis(x.astype(np.float64, copy=False), channel_axis, -1)
    out = (last - offset) @ matrix.T if pre_offset else last @ matrix.T + offset
    return np.moveaxis(out, -1, channel_axis).astype(x.dtype, copy=False)


def rgb_to_ycbcr(rgb: Any, channel_axis: int = -1, full_range: bool = False) -> Any:
    """Convert RGB in [0, 1] to YCbCr in [0, 1] (BT.601, studio range unless ``full_range``).

    Parameters
    ----------
    rgb:
        Float array or tensor with 3 channels on ``channel_axis``.
    channel_axis:
        Axis of the colour channels.
    full_range:
        ``False``: BT.601 studio range (the Harvard data's convention); ``True``: JPEG full range.

    Returns
    -------
    Same type, shape and float dtype, channels ``(Y, Cb, Cr)``.
    """
    matrix, offset = _forward(full_range)
    return _apply(rgb, matrix, offset, channel_axis, pre_offset=False)


def ycbcr_to_rgb(ycc: Any, channel_axis: int = -1, full_range: bool = False) -> Any:
    """Exact inverse of :func:`rgb_to_ycbcr` (no clipping: out-of-gamut values stay)."""
    matrix, offset = _forward(full_range)
    return _apply(ycc, np.linalg.inv(matrix), offset, channel_axis, pre_offset=True)


def split_luma(rgb: Any, channel_axis: int = -1, full_range: bool = False) -> tuple[Any, Any]:
    """``(Y, CbCr)`` of an RGB image: Y drops ``channel_axis``, CbCr keeps it with 2 channels.

    Examples
    --------
    >>> y, cbcr = split_luma(np.zeros((4, 5, 3)))
    >>> y.shape, cbcr.shape
    ((4, 5), (4, 5, 2))
    """
    ycc = rgb_to_ycbcr(rgb, channel_axis, full_range)
    if _is_torch(ycc):
        import torch

        y, cb, cr = torch.unbind(ycc, dim=channel_axis)
        return y, torch.stack([cb, cr], dim=channel_axis)
    y, cb, cr = np.moveaxis(ycc, channel_axis, 0)
    return y, np.stack([cb, cr], axis=channel_axis)


def merge_luma(y: Any, cbcr: Any, channel_axis: int = -1, full_range: bool = False) -> Any:
    """RGB image from a (fused) luma and the chroma of the colour source, clipped to [0, 1].

    ``y`` has the spatial shape of ``cbcr`` without ``channel_axis``; the result has 3 channels
    on that axis. This is the "fuse Y, put Cb/Cr back" step.
    """
    if _is_torch(cbcr):
        import torch

        cb, cr = torch.unbind(cbcr, dim=channel_axis)
        ycc = torch.stack([torch.as_tensor(y, dtype=cbcr.dtype, device=cbcr.device), cb, cr], dim=channel_axis)
        return ycbcr_to_rgb(ycc, channel_axis, full_range).clamp(0.0, 1.0)
    cbcr = np.asarray(cbcr)
    y = np.asarray(y)
    if cbcr.shape[channel_axis] != 2:
        raise ValueError(f"expected 2 chroma channels on axis {channel_axis}, got shape {cbcr.shape}")
    cb, cr = np.moveaxis(cbcr, channel_axis, 0)
    if y.shape != cb.shape:
        raise ValueError(f"luma shape {y.shape} does not match chroma shape {cb.shape}")
    dtype = np.result_type(y.dtype, cbcr.dtype, np.float32)
    ycc = np.stack([y.astype(dtype), cb.astype(dtype), cr.astype(dtype)], axis=channel_axis)
    return np.clip(ycbcr_to_rgb(ycc, channel_axis, full_range), 0.0, 1.0)


# Lookup tables: (position, R, G, B) control points, 8-bit colours read off the Harvard slices.
_LUTS = {
    "PET": np.array(
        [
            [0.00, 0, 0, 0],
            [0.08, 0, 0, 46],
            [0.20, 0, 2, 111],
            [0.30, 0, 38, 182],
            [0.40, 4, 80, 239],
            [0.50, 79, 138, 175],
            [0.60, 143, 180, 111],
            [0.70, 215, 228, 39],
            [0.78, 245, 240, 8],
            [0.85, 254, 177, 0],
            [0.92, 255, 81, 0],
            [1.00, 254, 11, 6],
        ]
    ),
    "SPECT": np.array(
        [
            [0.00, 0, 0, 0],
            [0.06, 9, 17, 17],
            [0.12, 23, 42, 43],
            [0.20, 47, 56, 82],
            [0.30, 72, 18, 119],
            [0.40, 108, 21, 137],
            [0.50, 141, 49, 136],
            [0.60, 179, 80, 118],
            [0.70, 212, 98, 77],
            [0.80, 244, 111, 18],
            [0.90, 253, 147, 78],
            [1.00, 252, 184, 171],
        ]
    ),
}


def pseudo_colour(grey: np.ndarray, lut: str = "PET") -> np.ndarray:
    """Map a grey image in [0, 1] to RGB pseudo-colour like the Harvard PET/SPECT slices.

    The Harvard PET and SPECT images are colour, and the pipeline fuses their Y channel in
    YCbCr and puts Cb/Cr back; demo data must exercise that path, so emission images are
    coloured with lookup tables whose control points were read off those slices: ``"PET"`` is
    a muted jet (black, navy, blue, grey-green, yellow, orange, red) and ``"SPECT"`` goes black,
    dark teal, purple, magenta, orange, peach. Both start at black, so background stays black.

    Parameters
    ----------
    grey : numpy.ndarray
        Values in [0, 1] (clipped), any shape; usually ``(H, W)``.
    lut : {"PET", "SPECT"}
        Which lookup table (case-insensitive).

    Returns
    -------
    numpy.ndarray of float32, shape ``(*grey.shape, 3)``, RGB in [0, 1].
    """
    table = _LUTS.get(str(lut).upper())
    if table is None:
        raise InputError(f"unknown pseudo-colour table {lut!r}; choose one of {', '.join(_LUTS)}")
    values = np.clip(np.asarray(grey, dtype=np.float64), 0.0, 1.0)
    rgb = [np.interp(values, table[:, 0], table[:, c] / 255.0) for c in (1, 2, 3)]
    return np.stack(rgb, axis=-1).astype(np.float32)


def warp_chroma(cbcr: "torch.Tensor", field: "torch.Tensor") -> "torch.Tensor":
    """Warp ``(N, 2, H, W)`` chroma by a :mod:`bsafusion.deform` field, neutral outside the image.

    Zero padding would mean Cb = Cr = 0, a saturated green border; chroma is warped as its
    offset from neutral grey, so what comes in from outside is grey.
    """
    from bsafusion.deform import warp

    return warp(cbcr - NEUTRAL_CHROMA, field) + NEUTRAL_CHROMA
