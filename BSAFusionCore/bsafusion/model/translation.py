"""Modality translation: the fixed image re-expressed in the moving image's modality.

MDF-FR exchanges the modality heads so that A's alignment features carry B's modality
information. :class:`ModalityTranslator` makes that representation explicit: it decodes A's
finest alignment features (coarse context, from the exchanged tokens) together with A's deep
full-resolution features into ``B_hat``, an image of A's anatomy with B's contrast, trained
with an L1 loss against the aligned truth of B (``losses.translation``).

Why it is there: registering B to ``B_hat`` is a *mono-modal* problem. With MIND or features of
MRI against PET, the registration layers must first learn what corresponds across contrasts
before any matching signal exists; measured on two CPU cores they did not leave the identity
within the training budget. ``B_hat`` gives the layers (and the per-pair refinement,
:mod:`bsafusion.refine`) evidence in which the same tissue looks the same.

The output layer is linear, not a sigmoid: with L1 on mostly black images a sigmoid output
collapses to black early and never recovers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bsafusion.model.blocks import conv_block


class ModalityTranslator(nn.Module):
    """``B_hat`` from A's finest alignment level and A's deep features."""

    def __init__(self, level_channels: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_block(level_channels + channels, channels), conv_block(channels, channels))
        self.out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, finest_a: torch.Tensor, deep_a: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(finest_a, size=deep_a.shape[2:], mode="bilinear", align_corners=False)
        return self.out(self.body(torch.cat([up, deep_a], dim=1)))
