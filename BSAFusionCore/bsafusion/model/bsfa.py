"""BSFA: bidirectional stepwise feature alignment.

Alignment features of A and B are arranged in a pyramid, coarse to fine (the token grid, then
x2, x4, ...). At every level the **forward registration layer** (FRL) predicts a velocity
moving A's (already half-warped) features towards the middle, and the **reverse registration
layer** (RRL) one moving B's. Each velocity is exponentiated (scaling and squaring), so every
step is diffeomorphic with an exact inverse, and the steps are *composed* (warp of fields):

    u_A <- u_A o exp(v_A),      u_A^-1 <- exp(-v_A) o u_A^-1       (same for B)

Displacement is path-independent, so the full fields go through the middle position:

    field_BA = u_B o u_A^-1   (on A's grid; warp(B, field_BA) is B aligned to A)
    field_AB = u_A o u_B^-1   (on B's grid)

Fields follow :mod:`bsafusion.deform` (pixels of the level's grid, channels x, y, pull).
``bsfa=False`` (ablation "no BSFA") predicts a single field for B in one step at the finest
level; ``frl=False`` / ``rrl=False`` keep only one side moving, all the way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bsafusion.deform import compose, integrate_velocity, resize_field, warp
from bsafusion.model.blocks import conv_block
from bsafusion.model.config import ModelConfig
from bsafusion.model.descriptors import mind_descriptor

MIND_CHANNELS = 4


class FeaturePyramid(nn.Module):
    """Alignment features, coarse to fine: token map, then upsampled + pooled deep features."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ch = cfg.pyramid_channels
        self.first = conv_block(cfg.embed_dim, ch[0])
        self.refine = nn.ModuleList(conv_block(ch[k - 1] + cfg.channels, ch[k]) for k in range(1, len(ch)))

    def forward(self, token_map: torch.Tensor, deep: torch.Tensor) -> list[torch.Tensor]:
        levels = [self.first(token_map)]
        for block in self.refine:
            up = F.interpolate(levels[-1], scale_factor=2, mode="bilinear", align_corners=False)
            pooled = F.adaptive_avg_pool2d(deep, up.shape[2:])
            levels.append(block(torch.cat([up, pooled], dim=1)))
        return levels


def local_correlation(own: torch.Tensor, other: torch.Tensor, radius: int) -> torch.Tensor:
    """Cost volume: cosine similarity of ``own(p)`` and ``other(p + s)`` for every shift ``s``.

    Shifts cover ``[-radius, radius]^2`` pixels of the level, row-major over (dy, dx); the
    output has ``(2 * radius + 1) ** 2`` channels. This is the correlation layer of optical-flow
    networks (PWC-Net, Sun et al., CVPR 2018): it hands the registration layer explicit
    evidence of where each feature moved, instead of leaving it to discover the comparison.
    """
    a = _unit_channels(own)
    b = F.pad(_unit_channels(other), (radius,) * 4)
    h, w = own.shape[2:]
    size = 2 * radius + 1
    return torch.cat(
        [(a * b[:, :, dy : dy + h, dx : dx + w]).sum(dim=1, keepdim=True) for dy in range(size) for dx in range(size)],
        dim=1,
    )


def reverse_correlation(cost: torch.Tensor, radius: int) -> torch.Tensor:
    """``local_correlation(other, own, radius)`` from ``cost = local_correlation(own, other, radius)``.

    ``other(p) . own(p + s)`` is ``own(q) . other(q - s)`` at ``q = p + s``: channel ``-s`` of
    ``cost`` moved by ``s``, zero where ``p + s`` falls outside (the zero padding of
    :func:`local_correlation`). The same products in the same order, so the same numbers,
    for one copy instead of ``(2 * radius + 1) ** 2`` channel-wide products: the FRL and the RRL
    of a level see the same pair from the two sides.
    """
    h, w = cost.shape[2:]
    size = 2 * radius + 1
    padded = F.pad(cost.flip(1), (radius,) * 4)
    out = torch.empty_like(cost)
    for dy in range(size):
        for dx in range(size):
            k = dy * size + dx  # shift s = (dy - radius, dx - radius)
            out[:, k] = padded[:, k, dy : dy + h, dx : dx + w]  # channel -s, read at p + s
    return out


def block_matching(own: torch.Tensor, other: torch.Tensor, radius: int, window: int = 3) -> torch.Tensor:
    """Cost volume of ``-SSD(own(p), other(p + s))`` averaged over ``window x window`` blocks.

    Shifts are row-major over (dy, dx) in ``[-radius, radius]``, like :func:`local_correlation`.
    Unlike a cosine, SSD keeps the contrast between a match and a near-match of MIND vectors
    (whose cosines all lie close to 1).
    """
    h, w = own.shape[2:]
    padded = F.pad(other, (radius,) * 4, mode="replicate")
    size = 2 * radius + 1
    ssd = torch.cat(
        [((own - padded[:, :, dy : dy + h, dx : dx + w]) ** 2).mean(dim=1, keepdim=True) for dy in range(size) for dx in range(size)],
        dim=1,
    )
    return -_box_mean(ssd, window)


def _unit_channels(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=1)``: the norm as a sum of squares (linalg's strided channel reduction is 20x slower)."""
    return x / x.square().sum(dim=1, keepdim=True).sqrt().clamp(min=1e-12)


def _box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over ``window x window`` blocks inside the image, each channel on its own.

    ``F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)``, as a
    zero-padded box convolution divided by the number of pixels inside: same sums, and the
    depth-wise convolution is about 7x faster than CPU average pooling at stride 1.
    """
    pad = window // 2
    c = x.shape[1]
    box = x.new_ones(c, 1, window, window)
    sums = F.conv2d(F.pad(x, (pad,) * 4), box, groups=c)
    count = F.conv2d(F.pad(torch.ones_like(x[:1, :1]), (pad,) * 4), box[:1])
    return sums / count


def expected_shift(cost: torch.Tensor, radius: int, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft arg-max of a cost volume: the expected shift (x, y pixels) and the peak probability."""
    prob = torch.softmax(beta * cost, dim=1)
    steps = torch.arange(-radius, radius + 1, dtype=cost.dtype, device=cost.device)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    shift = torch.stack([(prob * dx.reshape(1, -1, 1, 1)).sum(dim=1), (prob * dy.reshape(1, -1, 1, 1)).sum(dim=1)], dim=1)
    return shift, prob.amax(dim=1, keepdim=True)


class MatchingPrior(nn.Module):
    """Where each of ``own``'s descriptors sits in ``other``, as a velocity to start from.

    Block matching of the two sides' (half-warped) descriptors gives the shift ``s`` with
    ``other(p + s) ~ own(p)``; moving ``own`` half-way to ``other`` is the pull velocity
    ``-s / 2``. The shift is box-filtered (``smoothing`` level pixels: the fields to recover are
    smooth, single matches are noisy) and scaled by a learnt ``gate`` (0.5 at first); the
    soft-max sharpness ``beta`` is learnt too. The registration layer adds its own learnt
    correction and sees the shift and its confidence as inputs. Parameter-free matching, the
    layer's starting point, is what makes a field appear in the first training steps; learnt
    layers alone had not left the identity after 500 CPU steps.
    """

    def __init__(self, radius: int, smoothing: int) -> None:
        super().__init__()
        self.radius = radius
        self.smoothing = smoothing
        self.log_beta = nn.Parameter(torch.tensor(math.log(30.0)))
        self.gate = nn.Parameter(torch.tensor(0.5))

    def forward(self, own: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(evidence, velocity)``: shift + confidence (3 channels) and the prior velocity."""
        shift, confidence = expected_shift(block_matching(own, other, self.radius), self.radius, self.log_beta.exp())
        k = self.smoothing
        smooth = F.avg_pool2d(F.pad(shift, (k // 2,) * 4, mode="replicate"), k, stride=1) if k > 1 else shift
        return torch.cat([shift, confidence], dim=1), -self.gate * smooth


class RegistrationLayer(nn.Module):
    """Predicts a velocity (pixels, x/y channels) from both sides' features and their correlation.

    The paper's registration layers see the two feature maps. We add (switchable, see
    :class:`~bsafusion.model.config.ModelConfig`) their local correlation (``radius > 0``) and
    the MIND descriptors of both half-warped images with *their* correlation (``mind``).
    With ``matching`` (needs ``mind``), a :class:`MatchingPrior` on the MIND descriptors adds
    its shift and confidence to the inputs and its velocity to the output.
    Measured on CPU-budget training: with features alone the layers stayed at the identity for
    500+ steps (validation NCC equal to the unregistered one), because cross-modal features
    must be learnt before any matching signal exists.
    """

    def __init__(self, channels: int, radius: int = 3, mind: bool = True, matching: bool = False, smoothing: int = 1) -> None:
        super().__init__()
        self.radius = radius
        self.mind = mind
        corr = (2 * radius + 1) ** 2 if radius > 0 else 0
        extra = 2 * MIND_CHANNELS + (2 * max(radius, 1) + 1) ** 2 if mind else 0
        self.matching = MatchingPrior(max(radius, 1), smoothing) if matching else None
        extra += 3 if matching else 0
        self.body = nn.Sequential(conv_block(2 * channels + corr + extra, channels), conv_block(channels, channels))
        self.out = nn.Conv2d(channels, 2, 3, padding=1)
        # start at the identity transform, as VoxelMorph does
        nn.init.normal_(self.out.weight, std=1e-5)
        nn.init.zeros_(self.out.bias)

    def correlations(
        self, own: torch.Tensor, other: torch.Tensor, own_mind: torch.Tensor | None, other_mind: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The cost volumes this layer reads: of the features (``radius > 0``) and of MIND (``mind``)."""
        feature_cost = local_correlation(own, other, self.radius) if self.radius > 0 else None
        mind_cost = local_correlation(own_mind, other_mind, max(self.radius, 1)) if self.mind else None
        return feature_cost, mind_cost

    def forward(
        self,
        own: torch.Tensor,
        other: torch.Tensor,
        own_mind: torch.Tensor | None = None,
        other_mind: torch.Tensor | None = None,
        costs: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """Velocity for ``own``; ``costs`` are this layer's cost volumes when already computed.

        ``costs`` is ``(features, MIND)``: :meth:`correlations` of the same inputs (the BSFA
        derives the RRL's from the FRL's with :func:`reverse_correlation`).
        """
        feature_cost, mind_cost = costs if costs is not None else self.correlations(own, other, own_mind, other_mind)
        inputs = [own, other]
        if feature_cost is not None:
            inputs.append(feature_cost)
        if self.mind:
            inputs += [own_mind, other_mind, mind_cost]
        if self.matching is None:
            return self.out(self.body(torch.cat(inputs, dim=1)))
        evidence, prior = self.matching(own_mind, other_mind)
        return self.out(self.body(torch.cat([*inputs, evidence], dim=1))) + prior


@dataclass
class AlignmentResult:
    """Fields on the finest pyramid level and what the losses need."""

    field_ba: torch.Tensor  # aligns B to A, on A's grid
    field_ab: torch.Tensor  # aligns A to B, on B's grid
    half_a: torch.Tensor  # u_A: A -> middle
    half_b: torch.Tensor  # u_B: B -> middle
    velocities: list[torch.Tensor]  # every predicted velocity, coarse to fine
    velocity_levels: list[int]  # pyramid level of each velocity (for level-weighted smoothness)
    middle: list[tuple[torch.Tensor, torch.Tensor]]  # (A, B) features warped to the middle, per level


class BSFA(nn.Module):
    """FRL/RRL per level, or one single-step field when ``cfg.bsfa`` is off."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_levels = len(cfg.pyramid_channels)
        levels = range(n_levels) if cfg.bsfa else [n_levels - 1]

        def layers() -> nn.ModuleList:
            # the matching prior is smoothed over 3, 5, 9 level pixels coarse to fine (24, 20,
            # 18 image pixels at the shipped patch size 8): about the fields' correlation length
            return nn.ModuleList(
                RegistrationLayer(cfg.pyramid_channels[k], cfg.correlation_radius, cfg.mind_guidance, cfg.matching, 2 ** (k + 1) + 1)
                for k in levels
            )

        self.frl = layers() if cfg.frl and cfg.bsfa else None
        self.rrl = layers() if cfg.rrl or not cfg.bsfa else None

    def forward(
        self,
        pyr_a: list[torch.Tensor],
        pyr_b: list[torch.Tensor],
        image_a: torch.Tensor,
        image_b: torch.Tensor,
        with_middle: bool = True,
    ) -> AlignmentResult:
        """Stepwise fields; ``image_a`` / ``image_b`` give the MIND evidence of each side.

        ``image_a`` is A itself, or ``B_hat`` (A translated into B's modality) when the network
        has a translator: it is on A's grid either way, and the half-warps treat it as A.
        ``with_middle=False`` (inference) leaves ``middle`` empty: only the consistency loss reads it.
        """
        n_levels = len(pyr_a)
        levels = range(n_levels) if self.cfg.bsfa else [n_levels - 1]
        ref = pyr_a[levels[0]]
        zero = ref.new_zeros(ref.shape[0], 2, *ref.shape[2:])
        u_a, inv_a, u_b, inv_b = zero, zero, zero, zero
        velocities: list[torch.Tensor] = []
        velocity_levels: list[int] = []
        middle = []
        for step, level in enumerate(levels):
            fa, fb = pyr_a[level], pyr_b[level]
            size = fa.shape[2:]
            u_a, inv_a, u_b, inv_b = (resize_field(u, size) for u in (u_a, inv_a, u_b, inv_b))
            wa = warp(fa, u_a, padding="border")
            wb = warp(fb, u_b, padding="border")
            ma = mb = None
            if self.cfg.mind_guidance:
                ma = warp(mind_descriptor(F.adaptive_avg_pool2d(image_a, size)), u_a, padding="border")
                mb = warp(mind_descriptor(F.adaptive_avg_pool2d(image_b, size)), u_b, padding="border")
            new = {}
            costs_a = costs_b = None
            if self.frl is not None and self.rrl is not None:
                costs_a = self.frl[step].correlations(wa, wb, ma, mb)
                radii = (self.cfg.correlation_radius, max(self.cfg.correlation_radius, 1))
                costs_b = tuple(None if c is None else reverse_correlation(c, r) for c, r in zip(costs_a, radii))
            if self.frl is not None:
                new["a"] = self.frl[step](wa, wb, ma, mb, costs_a)
            if self.rrl is not None:
                new["b"] = self.rrl[step](wb, wa, mb, ma, costs_b)
            steps = self.cfg.integration_steps
            if "a" in new:
                u_a = compose(u_a, integrate_velocity(new["a"], steps))
                inv_a = compose(integrate_velocity(-new["a"], steps), inv_a)
            if "b" in new:
                u_b = compose(u_b, integrate_velocity(new["b"], steps))
                inv_b = compose(integrate_velocity(-new["b"], steps), inv_b)
            for v in new.values():
                velocities.append(v)
                velocity_levels.append(level)
            if with_middle:
                middle.append((warp(fa, u_a, padding="border"), warp(fb, u_b, padding="border")))
        return AlignmentResult(
            field_ba=compose(u_b, inv_a),
            field_ab=compose(u_a, inv_b),
            half_a=u_a,
            half_b=u_b,
            velocities=velocities,
            velocity_levels=velocity_levels,
            middle=middle,
        )
