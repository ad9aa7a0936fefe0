"""Local normalised cross-correlation, shared by the training losses and the per-pair refinement.

LNCC compares intensities window by window, up to a local gain and offset: right for images of
one modality (the warped moving image against its aligned truth in training, or against the
network's translation ``B_hat`` of the fixed image at inference), wrong across modalities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["local_ncc", "multiscale_lncc"]


def local_ncc(x: torch.Tensor, y: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """Mean local normalised cross-correlation (squared, as in VoxelMorph) in ``window`` boxes.

    ``x`` and ``y`` are ``(N, 1, H, W)``; returns one value per batch item, ``(N,)``.
    """
    kernel = torch.ones(1, 1, window, window, device=x.device, dtype=x.dtype) / window**2
    pad = window // 2

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, padding=pad)

    mx, my = mean(x), mean(y)
    cov = mean(x * y) - mx * my
    vx = (mean(x * x) - mx**2).clamp(min=0)
    vy = (mean(y * y) - my**2).clamp(min=0)
    return (cov**2 / (vx * vy + eps)).flatten(1).mean(dim=1)


def multiscale_lncc(x: torch.Tensor, y: torch.Tensor, scales: tuple[int, ...] = (1, 2, 4)) -> torch.Tensor:
    """LNCC per batch item ``(N,)``, averaged over the images average-pooled by ``scales``.

    A 9x9 LNCC only "sees" displacements of a few pixels; pooling by 2 and 4 widens the windows
    to 18 and 36 pixels, so larger displacements get a signal and the full-resolution term
    refines them.
    """
    values = []
    for s in scales:
        xs, ys = (F.avg_pool2d(x, s), F.avg_pool2d(y, s)) if s > 1 else (x, y)
        values.append(local_ncc(xs, ys))
    return torch.stack(values).mean(dim=0)
