"""The published BSAFusion network's inference forward, re-implemented for timing only.

Follows the authors' code (``modal_2d/RegFusion_lite.py``, ``Restormer.py``, ``classifier.py``
and ``BSAFusion_test.py`` of github.com/slrl123/BSAFusion) layer by layer, with random
weights: run time does not depend on them. Sizes are the published ones: 256x256 input,
patch 16, token width 256, 4 heads, 2 ViT blocks per stage (classifier, Transfer per side,
modality discriminator), registration decoder 256-64-32-16-8-1 per side, fusion decoder
256-64-32-16-12-8; 10.0 M parameters. The forward is what their test script runs per pair:
encoder on both images, classifier + Transfer + discriminator, the two registration
decoders, the image warp and the fusion decoder. MONAI's ``SABlock`` / ``MLPBlock`` are
written out (qkv without bias, soft-max attention, GELU MLP); dropout is off at inference.
Not part of the package: only ``Testing/benchmarks/speed.py`` uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _grid_warp(flow: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Their ``Warper2d``: pixel flow -> normalised grid -> ``grid_sample`` (align_corners False)."""
    n, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij")
    grid = torch.stack([xs, ys])[None] + flow
    grid = torch.stack([2 * grid[:, 0] / (h - 1) - 1, 2 * grid[:, 1] / (w - 1) - 1], dim=-1)
    return F.grid_sample(image, grid, align_corners=False)


class _MDTA(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Sequential(nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1)) for _ in range(3))
        self.out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = F.layer_norm(x, x.shape[-2:])
        q = self.q(y).flatten(2).transpose(1, 2)
        k = self.k(y).flatten(2)
        v = self.v(y).flatten(2).transpose(1, 2)
        attn = torch.softmax((k @ q).reshape(n, -1), dim=1).reshape(n, c, c)
        return self.out((v @ attn).transpose(1, 2).reshape(n, c, h, w)) + x


class _GDFN(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = (nn.Sequential(nn.Conv2d(c, 4 * c, 1), nn.Conv2d(4 * c, 4 * c, 3, padding=1)) for _ in range(2))
        self.out = nn.Conv2d(4 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, x.shape[-2:])
        return x + self.out(F.gelu(self.a(y)) * self.b(y))


class _Restormer(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 1), _MDTA(cout), _GDFN(cout))


class _ViT(nn.Module):
    def __init__(self, dim: int = 256, heads: int = 4, mlp: int = 256) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)  # their block applies norm2 twice
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(self.norm2(x)).reshape(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(n, length, dim))
        return x + self.mlp(self.norm2(x))


class _Classifier(nn.Module):
    """Patch embedding (+ interpolated positional map) for ``embed``, 2 ViT blocks, cls head."""

    def __init__(self, embed: bool) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 256, 16, stride=16)
        self.pos = nn.Parameter(torch.randn(1, 1, 256, 256))
        self.embed = embed
        self.blocks = nn.Sequential(_ViT(), _ViT())
        self.norm = nn.LayerNorm(256)
        self.head = nn.Sequential(nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 2))
        self.cls = nn.Parameter(torch.zeros(1, 1, 256))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.embed:
            x = self.patch(x + F.interpolate(self.pos, size=x.shape[2:], mode="bilinear", align_corners=True))
            x = x.flatten(2).transpose(1, 2)
        x = self.blocks(torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1))
        return self.head(x[:, 0]), x[:, 0], x[:, 1:]


class _RegBlock(nn.Module):
    def __init__(self, c: int, cout: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(2 * c, c, 1), nn.LeakyReLU())
        self.att1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.att2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.flow = nn.Sequential(nn.Conv2d(c, 2, 3, padding=1), nn.Tanh())
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), nn.Conv2d(c, cout, 1), nn.LeakyReLU())

    def cross(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        a = self.att1(f1)
        m = a * self.att2(f2)
        return a * torch.softmax(m.flatten(2), dim=2).reshape(m.shape) + f1

    def forward(self, f1: torch.Tensor, cat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f2 = self.squeeze(cat)
        f1 = self.cross(f1, f2) + self.cross(f2, f1)
        f1 = f1 + self.res(f1)
        return self.up(f1), self.flow(f1)


class _Up(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), nn.Conv2d(cin, cout, 1),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.InstanceNorm2d(cout), nn.LeakyReLU())


class _Upsampler(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(cin, cout, 1), nn.ReLU())
        self.b = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(cout, cout, 1), nn.ReLU())


class PublishedBSAFusion(nn.Module):
    """Encoder, ModelTransfer_lite, RegNet_lite and FusionNet_lite of the published code."""

    def __init__(self) -> None:
        super().__init__()
        self.rb1, self.rb2 = _Restormer(1, 8), _Restormer(8, 3)
        self.classifier, self.discriminator = _Classifier(True), _Classifier(False)
        self.transfer1, self.transfer2 = nn.Sequential(_ViT(), _ViT()), nn.Sequential(_ViT(), _ViT())
        self.cls1, self.cls2 = nn.Parameter(torch.zeros(1, 1, 256)), nn.Parameter(torch.zeros(1, 1, 256))
        ch = [256, 64, 32, 16, 8, 1]
        self.reg1 = nn.ModuleList(_RegBlock(ch[i], ch[i + 1]) for i in range(5))
        self.reg2 = nn.ModuleList(_RegBlock(ch[i], ch[i + 1]) for i in range(5))
        self.ups = nn.ModuleList(_Up(ch[i], ch[i + 1]) for i in range(4))
        cn = [256, 64, 32, 16, 12, 8]
        self.fuse = nn.ModuleList([_Restormer(2 * cn[0], cn[1])] + [_Restormer(3 * cn[i], cn[i + 1]) for i in (1, 2, 3)])
        self.upsample = nn.ModuleList(_Upsampler(cn[i], cn[i + 1]) for i in range(3))
        self.out = nn.Sequential(_Restormer(cn[4] + 16, cn[4]), _Restormer(cn[4], 1), nn.Sigmoid())

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(fused, flow, warped moving)`` for one pair batch, as their test script computes them."""
        shallow1, shallow2 = self.rb1(img1), self.rb1(img2)
        deep1, deep2 = self.rb2(shallow1), self.rb2(shallow2)
        _, c1, t1 = self.classifier(deep1)
        _, c2, t2 = self.classifier(deep2)
        length = t1.shape[1]
        x1 = torch.cat([t1 + c2[:, None].expand(-1, length, -1), self.cls1.expand(t1.shape[0], -1, -1)], dim=1)
        x2 = torch.cat([t2 + c1[:, None].expand(-1, length, -1), self.cls2.expand(t2.shape[0], -1, -1)], dim=1)
        a1, a2 = self.transfer1(x1)[:, 1:], self.transfer2(x2)[:, 1:]
        self.discriminator(a1), self.discriminator(a2)
        side = img1.shape[-1] // 16
        grid = lambda t: t.transpose(1, 2).reshape(t.shape[0], -1, side, side)
        f1, f2, u1, u2 = grid(a1), grid(a2), grid(t1), grid(t2)
        g1, g2, flows = f1, f2, []
        for level in range(5):
            cat = torch.cat([f1, f2], dim=1)
            g1, flow1 = self.reg1[level](g1, cat)
            g2, flow2 = self.reg2[level](g2, cat)
            f1, f2 = _grid_warp(flow1, f1), _grid_warp(flow2, f2)
            if level < 4:
                f1, f2 = self.ups[level](f1), self.ups[level](f2)
            scale = 2 ** (4 - level)
            flows.append((flow1, flow2, scale))
        up = lambda f, s: F.interpolate(f, scale_factor=s, mode="bilinear", align_corners=True) * s if s > 1 else f
        flow = sum(up(b, s) - up(a, s) for a, b, s in flows)
        feature = None
        for level in range(4):
            flow_d = F.interpolate(flow, size=u2.shape[2:], mode="bilinear") / 2 ** (4 - level)
            joined = torch.cat([u1, _grid_warp(flow_d, u2)], dim=1)
            feature = self.fuse[level](joined if feature is None else torch.cat([joined, feature], dim=1))
            if level < 3:
                up_a, up_b = self.upsample[level].a, self.upsample[level].b
                u1, u2, feature = up_a(u1), up_a(u2), up_b(feature)
        feature = F.interpolate(feature, scale_factor=2, mode="bilinear")
        fused = self.out(torch.cat([feature, shallow1, _grid_warp(flow, shallow2)], dim=1))
        return fused, flow, _grid_warp(flow, img2)
