"""Building blocks shared by the BSFA-F sub-networks: Restormer and Transformer layers.

* :class:`RestormerBlock` follows Zamir et al., *Restormer: Efficient Transformer for
  High-Resolution Image Restoration*, CVPR 2022: multi-Dconv head *transposed* attention (MDTA,
  attention across channels, so the cost is linear in the number of pixels, which is what lets
  it run at full image resolution) and a gated-Dconv feed-forward network (GDFN).
* :class:`TransformerLayer` is a pre-norm ViT encoder layer (Dosovitskiy et al., ICLR 2021) on
  token sequences, used for the alignment features and the Transfer blocks.

Each block has two implementations of the same arithmetic. The reference one (training, and
anything outside ``torch.inference_mode``) is written as the papers describe the block; the
inference one (:func:`inference_kernels`) is what a CPU runs fast: the Restormer block in bands
of rows that stay in cache, on channels-last maps with 1x1 convolutions as GEMMs, its attention
from an accumulated Gram matrix with the output projection folded in
(:meth:`RestormerBlock._infer`), and ``scaled_dot_product_attention`` (a fused kernel that never
stores the ``L x L`` map) for the token attention. Same parameters, same results up to float
rounding (``Testing/model/test_fast_path.py`` pins the two against each other).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def inference_kernels() -> bool:
    """Whether blocks take their inference implementation: under ``torch.inference_mode()``.

    Inference mode (no autograd, which the inference kernels do not need to support) is what
    every inference entry runs under; ``torch.no_grad()`` keeps the reference implementation,
    which is how the equivalence test gets both from one model.
    """
    return torch.is_inference_mode_enabled()


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout under :func:`inference_kernels`, unchanged otherwise.

    A one-channel map is both layouts at once and ``contiguous`` leaves its NCHW strides, from
    which a convolution writes NCHW; its channels-last strides are set explicitly.
    """
    if not inference_kernels():
        return x
    if x.shape[1] == 1 and x.stride(1) != 1:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last).copy_(x)
    return x.contiguous(memory_format=torch.channels_last)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an ``(N, C, H, W)`` map (Restormer's 'WithBias' norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def cat_channels(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors, dim=1)``; under :func:`inference_kernels`, channels-last.

    oneDNN convolutions run channels-last natively (NCHW costs a reorder around each call),
    and a concatenation of mixed layouts comes out NCHW: converting the parts costs less than
    converting the result, as the parts that are channels-last already are not copied twice.
    """
    return torch.cat([channels_last(t) for t in tensors], dim=1)


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1x1 convolution; under :func:`inference_kernels`, one matrix product.

    On a channels-last map a 1x1 convolution is ``(pixels x C_in) @ W^T``: a dense GEMM,
    about twice as fast on the CPU as the convolution kernel PyTorch picks for it.
    """
    if not inference_kernels():
        return conv(x)
    out = F.linear(channels_last(x).permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)
    return out.permute(0, 3, 1, 2)


def _cosines_exact(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``normalize(q) @ normalize(k)^T`` over the last (pixel) axis, computed in float64.

    Each entry sums ``H * W`` products (65 536 at 256x256); a float32 sum keeps about 4e-5 of
    rounding there, which the registration layers amplify to 1e-3 px in the fields, so two
    float32 orders of summation (two memory layouts) would disagree by that much. Exact
    cosines make the attention independent of the layout to float32 precision.
    """
    q, k = F.normalize(q.double(), dim=-1), F.normalize(k.double(), dim=-1)
    return q @ k.transpose(-2, -1)


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
        attn = (_cosines_exact(q, k).to(x.dtype) * self.temperature).softmax(dim=-1)
        return self.project((attn @ v).reshape(n, c, h, w))

    def attention(self, gram: torch.Tensor) -> torch.Tensor:
        """The attention as one ``C x C`` matrix per image, projection included, from a Gram matrix.

        ``gram`` is the float64 ``(N, 2C, 2C)`` Gram matrix of the q and k channels over all
        pixels; cosines are its q-k blocks over the row norms (F.normalize's ``eps`` kept).
        ``project(attn @ v)`` is then ``v @ M^T`` with ``M = W_project @ blockdiag(attn)``.
        """
        n, c2, _ = gram.shape
        c = c2 // 2
        heads, d = self.heads, c // self.heads
        norms = gram.diagonal(dim1=1, dim2=2).sqrt().clamp(min=1e-12)
        cos = (gram[:, :c, c:] / (norms[:, :c, None] * norms[:, None, c:])).reshape(n, heads, d, heads, d)
        cos = torch.stack([cos[:, h, :, h] for h in range(heads)], dim=1).to(self.project.weight.dtype)
        attn = (cos * self.temperature).softmax(dim=-1)
        return torch.einsum("ohi,nhij->nohj", self.project.weight.reshape(c, heads, d), attn).reshape(n, c, c)


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
        if inference_kernels():
            return self._infer(x)
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """The block in two passes over bands of rows, so the wide maps never leave the cache.

        At 256x256 the 3C-channel qkv map and the 4C-channel GDFN map are 12-17 MB per image;
        written out whole and read back, memory traffic was most of the encoder's time. Every
        step but the attention is per pixel or 3x3, so a band of rows (plus one halo row each
        side) is computed independently. Pass 1: LayerNorm, qkv and its depth-wise conv per
        band, the q/k Gram matrix accumulated (float32 per band, float64 across bands: exact
        to float32 precision like :func:`_cosines_exact`), v kept; then ``x + v @ M^T`` in one
        product (:meth:`MDTA.attention`). Pass 2: LayerNorm, GDFN and the residual per band.
        On a GPU the band is the whole image (one launch per step).
        """
        x = channels_last(x)
        n, c, h, w = x.shape
        rows = _band_rows(x)
        attn, ffn = self.attn, self.ffn
        v = x.new_empty(n, h, w, c)
        gram = x.new_zeros(n, 2 * c, 2 * c, dtype=torch.float64)
        for r0, r1, qkv in _bands(x, rows, self.norm1, attn.qkv, attn.qkv_dw):
            qkv = qkv.permute(0, 2, 3, 1)  # (n, rows, w, 3c)
            qk = qkv[..., : 2 * c].reshape(n, -1, 2 * c)
            gram += (qk.transpose(1, 2) @ qk).double()
            v[:, r0:r1] = qkv[..., 2 * c :]
        x = torch.baddbmm(x.permute(0, 2, 3, 1).reshape(n, h * w, c), v.view(n, h * w, c), attn.attention(gram).transpose(1, 2))
        x = x.view(n, h, w, c).permute(0, 3, 1, 2)
        out = torch.empty_like(x)
        for r0, r1, hidden in _bands(x, rows, self.norm2, ffn.project_in, ffn.dw):
            x1, x2 = hidden.chunk(2, dim=1)
            out[:, :, r0:r1] = x[:, :, r0:r1] + pointwise(ffn.project_out, F.gelu(x1) * x2)
        return out


#: Pixels per band and torch thread of :meth:`RestormerBlock._infer` on the CPU (all images of
#: the batch): the band's widest map (4C = 64 channels) stays within about 1 MB per core, the L2
#: cache of each core. Measured on the encoder (256², 1 thread): 2 048 to 8 192 pixels all about
#: twice as fast as the whole image at once.
BAND_PIXELS = 4096


def _band_rows(x: torch.Tensor) -> int:
    """Rows per band: :data:`BAND_PIXELS` per thread over the batch, at least 8 (each band recomputes 2 halo rows)."""
    n, _, h, w = x.shape
    if x.device.type != "cpu":
        return h
    return min(h, max(8, BAND_PIXELS * torch.get_num_threads() // max(1, n * w)))


def _bands(x: torch.Tensor, rows: int, norm: nn.Module, conv1x1: nn.Conv2d,
           depthwise: nn.Conv2d) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``depthwise(conv1x1(norm(x)))`` band by band: yields ``(r0, r1, rows r0..r1 of it)``.

    Each band is computed from its rows plus one halo row each side; at the image's top and
    bottom the halo is the depth-wise convolution's zero padding (columns keep theirs).
    """
    h = x.shape[2]
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        lo, hi = max(r0 - 1, 0), min(r1 + 1, h)
        hidden = pointwise(conv1x1, norm(x[:, :, lo:hi]))
        if lo == r0 or hi == r1:
            hidden = channels_last(F.pad(hidden, (0, 0, 1 if lo == r0 else 0, 1 if hi == r1 else 0)))
        yield r0, r1, F.conv2d(hidden, depthwise.weight, depthwise.bias, padding=(0, 1), groups=depthwise.groups)


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
        tokens = tokens + (self._infer_attention(h) if inference_kernels() else self.attn(h, h, h, need_weights=False)[0])
        return tokens + self.mlp(self.norm2(tokens))

    def _infer_attention(self, h: torch.Tensor) -> torch.Tensor:
        """``self.attn(h, h, h)`` with its own weights through ``scaled_dot_product_attention``.

        nn.MultiheadAttention's CPU path stores the ``heads x L x L`` score map (1025 tokens:
        4 M floats per image) and reads it twice; the fused kernel works in tiles.
        """
        n, length, dim = h.shape
        heads = self.attn.num_heads
        qkv = F.linear(h, self.attn.in_proj_weight, self.attn.in_proj_bias)
        q, k, v = qkv.reshape(n, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, dim)
        return self.attn.out_proj(out)


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv + LeakyReLU, the plain workhorse of the decoders."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2))
