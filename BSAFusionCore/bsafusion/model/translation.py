"""Modality translation: the fixed image re-expressed in the moving image's modality.

MDF-FR exchanges the modality heads so that A's alignment features carry B's modality
information. :class:`ModalityTranslator` makes that representation explicit: a small U-Net on
A whose bottleneck (at the token grid) also receives A's exchanged alignment tokens, decodes
``B_hat``, an image of A's anatomy with B's contrast. It is trained with an L1 loss against the
aligned truth of B (``losses.translation``); the tokens tell it which contrast to produce, so
one network serves CT, PET and SPECT.

Why it is there: registering B to ``B_hat`` is a *mono-modal* problem. Block matching of MIND
descriptors in the network's three-level pyramid, with no learning at all, brings 12
validation pairs per modality from NCC 0.864 / 0.953 / 0.967 (CT / PET / SPECT, unregistered)
to 0.980 / 0.995 / 0.996 when ``B_hat`` is the truth itself, but *lowers* them (0.820 / 0.728 /
0.878) when the MRI is matched against B directly: the evidence of where things moved exists
only between images of one contrast (``Testing/benchmarks/matching_upper_bound.py``,
``BSAFusionCore/docs/network.md``).

The output layer is linear, not a sigmoid: with L1 on mostly black images a sigmoid output
collapses to black early and does not recover.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bsafusion.model.blocks import cat_channels, channels_last, conv_block


class ModalityTranslator(nn.Module):
    """U-Net ``A -> B_hat`` with A's alignment tokens joined at the bottleneck."""

    def __init__(self, channels: int, token_dim: int, patch_size: int) -> None:
        super().__init__()
        depth = int(round(math.log2(patch_size)))
        if 2**depth != patch_size:
            raise ValueError(f"the translator needs a power-of-two patch size, got {patch_size}")
        widths = [channels * (k + 1) for k in range(depth + 1)]  # 16, 32, 48, 64 for patch 8
        self.down = nn.ModuleList(
            [nn.Sequential(conv_block(1, widths[0]), conv_block(widths[0], widths[0]))]
            + [conv_block(widths[k - 1], widths[k]) for k in range(1, depth + 1)]
        )
        self.bottleneck = conv_block(widths[-1] + token_dim, widths[-1])
        self.up = nn.ModuleList(conv_block(widths[k + 1] + widths[k], widths[k]) for k in reversed(range(depth)))
        self.out = nn.Conv2d(widths[0], 1, 3, padding=1)

    def forward(self, image_a: torch.Tensor, token_map_a: torch.Tensor) -> torch.Tensor:
        skips = []
        x = channels_last(image_a)  # one channel: free, and the convolutions below stay channels-last
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        x = self.bottleneck(cat_channels([x, token_map_a]))
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = block(cat_channels([x, skip]))
        return self.out(x)
