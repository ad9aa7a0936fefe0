"""The fused image keeps the MRI's background where neither image shows anything.

Outside the head both Harvard images are flat: the MRI is exactly black and the moving luma sits
exactly at its floor (0 for CT, 16/255 for studio-range PET/SPECT luma). The network's output
there is a faint, uneven haze instead (a sigmoid never reaches 0: grey levels 0 to 7 of 255 on
validation pairs), invisible at a normal window but present in every file we write, and it
makes the structure metrics misjudge half of the image: Q_S and Q_VIF score an exactly flat
window as perfectly fused and a window with the least variance as not fused at all. The rule
here is the one a reader expects: a pixel that is background in the fixed image *and* in the
aligned moving image is background in the fused image, with the fixed image's value.

"Background" is the image's own minimum, within one 8-bit grey level (the luma conversion
leaves round-off of that order on a flat floor); an image without an exactly flat floor (noisy
clinical MRI) has few such pixels, so the rule then changes almost nothing. Pixels next to
anatomy are never touched: the aligned moving image is interpolated there and rises above its
floor.
"""

from __future__ import annotations

import torch

#: How far above its minimum a pixel still counts as background: one 8-bit grey level.
FLOOR_TOLERANCE = 1.0 / 255.0


def _at_floor(images: torch.Tensor) -> torch.Tensor:
    floor = images.amin(dim=tuple(range(1, images.ndim)), keepdim=True)
    return images <= floor + FLOOR_TOLERANCE


def background_mask(fixed: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
    """Where both ``(N, 1, H, W)`` sources are at their floor (each pair's own minima)."""
    return _at_floor(fixed) & _at_floor(aligned)


def keep_background(fused: torch.Tensor, fixed: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
    """``fused`` with the fixed image's background where both sources are background
    (:func:`background_mask`); all three are ``(N, 1, H, W)`` on one grid."""
    background = background_mask(fixed, aligned)
    floor = fixed.amin(dim=(1, 2, 3), keepdim=True).expand_as(fused)
    return torch.where(background, floor, fused)
