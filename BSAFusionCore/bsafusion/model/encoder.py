"""Encoder: Restormer layers (shallow and deep features) and the Transformer stage.

Both images of a pair go through the same weights (the shared encoder is what lets
registration and fusion help each other). The Transformer stage carries the image's
Modality Feature Representation Head token (MFRH, :mod:`bsafusion.model.mdffr`) so that it
gathers the image's global information.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bsafusion.model.blocks import RestormerBlock, TransformerLayer, channels_last
from bsafusion.model.config import ModelConfig
from bsafusion.model.mdffr import ModalityFeatureHead


@dataclass
class EncodedImage:
    """Encoder outputs for a batch of images."""

    shallow: torch.Tensor  # (N, C, H, W) low-level detail, straight to reconstruction
    deep: torch.Tensor  # (N, C, H, W) second Restormer stage: fusion + fine alignment levels
    tokens: torch.Tensor  # (N, h*w, D) patch tokens after the Transformer layers
    mfrh: torch.Tensor  # (N, D) the image's modality feature representation head
    grid: tuple[int, int]  # (h, w) token grid


class Encoder(nn.Module):
    """Restormer -> shallow; Restormer -> deep -> patch embedding -> Transformer layers."""

    def __init__(self, cfg: ModelConfig, head: ModalityFeatureHead) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, cfg.channels, 3, padding=1)
        self.shallow = RestormerBlock(cfg.channels, cfg.restormer_heads)
        self.deep = RestormerBlock(cfg.channels, cfg.restormer_heads)
        self.patch_embed = nn.Conv2d(cfg.channels, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)
        # convolutional position encoding: size-agnostic, unlike a learned table
        self.pos = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 3, padding=1, groups=cfg.embed_dim)
        self.layers = nn.ModuleList(TransformerLayer(cfg.embed_dim, cfg.heads) for _ in range(cfg.encoder_depth))
        self.head = head

    def forward(self, image: torch.Tensor) -> EncodedImage:
        # one channel: channels-last costs nothing here, and the stem then writes channels-last
        shallow = self.shallow(self.stem(channels_last(image)))
        deep = self.deep(shallow)
        patches = self.patch_embed(deep)
        patches = patches + self.pos(patches)
        h, w = patches.shape[2:]
        seq = self.head.prepend(patches.flatten(2).transpose(1, 2))
        for layer in self.layers:
            seq = layer(seq)
        return EncodedImage(shallow, deep, seq[:, 1:], seq[:, 0], (h, w))
