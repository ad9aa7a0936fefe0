"""Instance refinement: per-pair optimisation of the network's field.

Learning-based registration is often followed by a short optimisation of the predicted field
on the pair at hand ("instance optimisation", the usual last step of Learn2Reg entries). It is off by
default: on the validation pairs every setting tried makes the shipped network's field worse
(below), but it stays available (``--refine-steps N``, ``refine=`` in the API) for data where a
per-pair fit helps.

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

Measured on the first 12 validation pairs of each modality, starting from the shipped
network's field (``Testing/benchmarks/tune_refinement.py``; NCC against the truth, network
alone -> refined, 100 steps, grid 16, smoothness 1): CT 0.897 -> 0.887 (MIND) / 0.777 (LNCC to
``B_hat``), PET 0.967 -> 0.922 (MIND) / 0.958 (LNCC), SPECT 0.970 -> 0.947 (MIND) / 0.935
(LNCC). Hence the modality table (:mod:`bsafusion.modality`) sets ``refine_steps`` to 0
everywhere, and its ``refine_on_translation`` picks, per modality, the less harmful similarity
for users who switch refinement on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from bsafusion import modality as modalities
from bsafusion.deform import diffusion, resize_field, resize_image, warp
from bsafusion.errors import InputError
from bsafusion.model.descriptors import mind_descriptor
from bsafusion.similarity import multiscale_lncc

__all__ = ["RefineSettings", "default_settings", "refine_field"]


@dataclass(frozen=True)
class RefineSettings:
    """How the field is refined; ``steps=0`` switches refinement off.

    The defaults and the per-modality choices (``refine_steps`` and ``refine_on_translation``
    of :mod:`bsafusion.modality`) are chosen on the validation pairs by
    ``Testing/benchmarks/tune_refinement.py`` (``BSAFusionCore/docs/network.md``); 128 px and 100
    Adam steps cost about 0.33 s per pair on 2 CPU cores (``Testing/benchmarks/speed.py``).
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
    """Settings for a moving modality: its default steps unless ``steps`` is given, and its similarity."""
    row = modalities.moving(modality)
    return replace(RefineSettings(), steps=row.refine_steps if steps is None else int(steps),
                   use_translation=row.refine_on_translation)


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
        moving_s = resize_image(moving.detach(), small)
        start = resize_field(field.detach(), small)
        if translation is not None and settings.use_translation:
            reference = resize_image(translation.detach(), small)

            def dissimilarity(moved: torch.Tensor) -> torch.Tensor:
                return (1 - multiscale_lncc(moved, reference)).sum()
        else:
            target = mind_descriptor(resize_image(fixed.detach(), small))

            def dissimilarity(moved: torch.Tensor) -> torch.Tensor:
                return (mind_descriptor(moved) - target).pow(2).mean(dim=(1, 2, 3)).sum()
        ctrl = torch.zeros(field.shape[0], 2, settings.grid, settings.grid, device=field.device, requires_grad=True)
        optimiser = torch.optim.Adam([ctrl], lr=settings.lr)
        for _ in range(settings.steps):
            total = start + resize_field(ctrl, small)
            moved = warp(moving_s, total, padding="border")
            loss = dissimilarity(moved) + settings.smoothness * diffusion(ctrl).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        residual = resize_field(ctrl.detach(), shape)
    return field.detach() + residual
