"""Building blocks shared by the BSFA-F sub-networks: Restormer and Transformer layers.

* :class:`RestormerBlock` follows Zamir et al., *Restormer: Efficient Transformer for
  High-Resolution Image Restoration*, CVPR 2022: multi-Dconv head *transposed* attention (MDTA,
  attention across channels, so the cost is linear in the number of pixels, which is what lets
  it run at full image resolution) and a gated-Dconv feed-forward network (GDFN).
* :class:`TransformerLayer` is a pre-norm ViT encoder layer (Dosovitskiy et al., ICLR 2021) on
  token sequences, used for the alignment features and the Transfer blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an ``(N, C, H, W)`` map (Restormer's 'WithBias' norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention: a ``C x C`` attention map per head."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.qkv_dw = nn.Conv2d(channels * 3, channels * 3, 3, padding=1, groups=channels * 3, bias=False)
        self.project = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(n, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project((attn @ v).reshape(n, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network."""

    def __init__(self, channels: int, expansion: float = 2.0) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, hidden * 2, 1, bias=False)
        self.dw = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dw(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class RestormerBlock(nn.Module):
    """``x + MDTA(LN(x))`` then ``x + GDFN(LN(x))``."""

    def __init__(self, channels: int, heads: int, expansion: float = 2.0) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.attn = MDTA(channels, heads)
        self.norm2 = ChannelLayerNorm(channels)
        self.ffn = GDFN(channels, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class TransformerLayer(nn.Module):
    """Pre-norm multi-head self-attention + MLP on ``(N, L, D)`` token sequences."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm1(tokens)
        tokens = tokens + self.attn(h, h, h, need_weights=False)[0]
        return tokens + self.mlp(self.norm2(tokens))


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv + LeakyReLU, the plain workhorse of the decoders."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2))
