"""MMFF: multi-modal feature fusion and reconstruction.

B's deep and shallow features are warped into A's grid by the predicted field (features are
warped, not the image, so the fusion sees the encoder's representation), the **FusionBLK**
(1x1 projection + Restormer block) fuses the deep features, the result is concatenated with
both shallow feature maps (they carry edges and fine detail) and the **reconstruction layer**
maps them to the fused image. A sigmoid keeps the output in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from bsafusion.deform import warp
from bsafusion.model.blocks import RestormerBlock, cat_channels, conv_block, pointwise
from bsafusion.model.config import ModelConfig


class FusionBlock(nn.Module):
    """FusionBLK: fuse A's and aligned B's deep features."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(2 * channels, channels, 1)
        self.block = RestormerBlock(channels, heads)

    def forward(self, deep_a: torch.Tensor, deep_b_aligned: torch.Tensor) -> torch.Tensor:
        return self.block(pointwise(self.project, cat_channels([deep_a, deep_b_aligned])))


class Reconstruction(nn.Module):
    """Fused deep features + both shallow features -> fused image in [0, 1]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_block(3 * channels, channels), conv_block(channels, channels))
        self.out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, fused: torch.Tensor, shallow_a: torch.Tensor, shallow_b_aligned: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.body(cat_channels([fused, shallow_a, shallow_b_aligned]))))


class MMFF(nn.Module):
    """Warp B's features by ``field_ba``, FusionBLK, reconstruction."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fusion = FusionBlock(cfg.channels, cfg.restormer_heads)
        self.reconstruction = Reconstruction(cfg.channels)

    def forward(
        self,
        deep_a: torch.Tensor,
        deep_b: torch.Tensor,
        shallow_a: torch.Tensor,
        shallow_b: torch.Tensor,
        field_ba: torch.Tensor,
    ) -> torch.Tensor:
        # one warp of both maps: one sampling grid, and grid_sample treats channels independently
        deep_b_aligned, shallow_b_aligned = warp(torch.cat([deep_b, shallow_b], dim=1), field_ba).split(
            [deep_b.shape[1], shallow_b.shape[1]], dim=1)
        return self.reconstruction(self.fusion(deep_a, deep_b_aligned), shallow_a, shallow_b_aligned)
