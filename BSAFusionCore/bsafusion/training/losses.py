"""Training losses of BSFA-F, every weight a config value.

Terms (the ``name`` is the key in the loss dictionary and the CSV log):

``ce1``
    L_ce1: cross-entropy of the MFRH classifier (fixed image -> MRI, moving -> its modality).
``ce2``
    L_ce2: the modality discriminator learns to classify *detached* alignment features, and the
    features are pushed towards a uniform prediction of the frozen discriminator
    (cross-entropy to the uniform distribution minus its minimum ``log K``); see
    :mod:`bsafusion.model.mdffr` for why it is split this way.
``smooth``
    Mean squared spatial gradient of every predicted velocity, finer steps weighted more
    (weight ``2**level``, normalised to sum to 1), as the published code does.
``consistency``
    ``|field_AB o field_BA|`` (the two directions must be inverse) plus ``1 - cosine`` between
    A's and B's alignment features warped to the middle position, at every level.
``registration``
    ``1 - LNCC(warp(moving, field_BA), moving_aligned)`` (9x9 windows, averaged over the images
    pooled by 1, 2 and 4 for capture range): the warped moving image against its aligned
    version, available for synthetic misalignment.
``mind``
    Modality-independent similarity (MIND, Heinrich et al., MedIA 2012, 4-neighbourhood
    self-similarity) between the warped moving image and the fixed one; off by default, for
    fine-tuning on real unaligned pairs without any aligned truth.
``supervised_field``
    Endpoint error against the field of the synthetic misalignment (training pairs only: the
    field is the one the data loader drew, never a test truth). Off by default; the shipped
    models use it as the registration curriculum: with only image similarity the registration
    layers stayed at the identity for the whole CPU budget, and the endpoint error gives every
    layer a direct, well-scaled gradient from the first step.
``translation``
    ``L1(B_hat, moving_aligned)``: the modality translation of MDF-FR (A decoded into B's
    contrast, :mod:`bsafusion.model.translation`) against the aligned truth of B.
``ssim`` / ``intensity`` / ``gradient``
    Fusion: ``1 - mean(SSIM(F, A), SSIM(F, B'))``; ``L1(F, max(A, B'))``;
    ``L1(|Sobel F|, max(|Sobel A|, |Sobel B'|))``. ``B'`` is the aligned truth of the moving
    image when the batch has it (``fusion_target="aligned"``) and otherwise the warped moving
    image, detached so that fusion losses do not bend the registration.
``perceptual``
    Fusion: the Chen-Varshney distortion of ``F`` from both sources (:func:`chen_varshney`, the
    quantity the paper's Q_CV metric reports, in squared ``[0, 1]`` units); off by default. The
    SSIM and max terms leave ``F`` wherever their compromise lands; this term says how far from
    each source a reader perceives it, weighted by where that source has edges.
``information``
    Fusion: ``1 - VIFF`` (:func:`viff`, the visual information fidelity that the paper's Q_VIF
    metric reports); off by default. VIFF counts, per window, how much of a source's signal
    survives in ``F`` with its contrast; it rewards the local contrast that the max and SSIM
    terms average away.
``edges``
    Fusion: L1 between the Sobel gradient *vector* of ``F`` and that of the source whose edge
    is stronger at each pixel (:func:`stronger_edges`); off by default. ``gradient`` matches the
    magnitude only; Q_AB/F also scores the orientation each source's edge keeps in ``F``.
``preservation``
    Fusion: ``1 - Q_AB/F`` (:func:`edge_preservation`, the Xydeas-Petrovic edge preservation
    that the paper's Q_AB/F metric reports); off by default. ``edges`` pulls ``F`` towards one
    source's gradient per pixel; Q_AB/F scores how much of *each* source's edge, in strength
    and orientation, survives, weighted by that source's edge strength, through sigmoids that
    give nothing for an edge kept at less than half its strength. This term trains that score.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bsafusion.config import check_known_keys
from bsafusion.deform import compose, diffusion
from bsafusion.evaluation.metrics.fusion import QABF_CONSTANTS, VIFF_C, VIFF_EPS, VIFF_NOISE_VAR, VIFF_SCALE_WEIGHTS, mannos_sakrison
from bsafusion import modality as modalities
from bsafusion.model.descriptors import gaussian_window, mind_descriptor
from bsafusion.model.network import BSFAFOutput
from bsafusion.similarity import multiscale_lncc

#: Loss-side overrides of the paper's ablations (architecture side: ``model.config.ABLATIONS``).
ABLATION_LOSS_OVERRIDES: dict[str, dict[str, float]] = {"setting_a": {"ce2": 0.0}}

MRI_CLASS = modalities.get("MRI").class_index


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (0 switches a term off). Defaults used for the shipped models."""

    ce1: float = 0.05
    ce2: float = 0.05
    smooth: float = 0.5
    consistency: float = 0.1
    registration: float = 1.0
    mind: float = 0.0
    supervised_field: float = 0.0
    translation: float = 0.0
    ssim: float = 1.0
    intensity: float = 1.0
    gradient: float = 2.0
    perceptual: float = 0.0
    information: float = 0.0
    edges: float = 0.0
    preservation: float = 0.0
    fusion_target: str = "aligned"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LossWeights":
        check_known_keys(data, cls, "loss weight keys")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- primitives


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5) per batch item."""
    win = gaussian_window(device=x.device).to(x.dtype)
    pad = win.shape[-1] // 2
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), win)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx**2
    syy = blur(y * y) - my**2
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(dim=1)


def sobel(x: torch.Tensor, padding: str = "replicate") -> torch.Tensor:
    """Sobel gradient ``(N, 2, H, W)`` (x, y) of ``(N, 1, H, W)`` images.

    ``padding`` is a :func:`torch.nn.functional.pad` mode: ``"replicate"`` for training terms
    (no false edge at a crop's border), ``"constant"`` (zeros) where a term must filter as the
    metrics do.
    """
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    k = torch.stack([kx, kx.t()])[:, None]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode=padding), k)


def _magnitude(gradient: torch.Tensor) -> torch.Tensor:
    """Length ``(N, 1, H, W)`` of a ``(N, 2, H, W)`` gradient, kept differentiable at zero."""
    return torch.sqrt((gradient**2).sum(dim=1, keepdim=True) + 1e-12)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|Sobel gradient| of ``(N, 1, H, W)`` images (replicate padding)."""
    return _magnitude(sobel(x))


def stronger_edges(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean L1 between the Sobel vector of ``fused`` and that of the source with the stronger edge, per item.

    The ``gradient`` term matches magnitudes only, so an edge may come out with its direction
    or polarity changed and still satisfy it; Q_AB/F scores both (the edge orientation of each
    source has to survive in the fused image).
    """
    ga, gb = sobel(a), sobel(b)
    a_wins = (ga**2).sum(dim=1, keepdim=True) >= (gb**2).sum(dim=1, keepdim=True)
    return (sobel(fused) - torch.where(a_wins, ga, gb)).abs().flatten(1).mean(dim=1)


def edge_preservation(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Differentiable Q_AB/F (Xydeas and Petrovic 2000) of ``fused`` from ``a`` and ``b``, per batch item.

    As :func:`bsafusion.evaluation.metrics.fusion.q_abf`, with its constants and zero-padded
    Sobel filters. The metric's orientation difference, ``arctan`` of each gradient's slope
    compared modulo pi, is the angle between the two edge lines; here it is computed as
    ``atan2(|g_X x g_F|, |g_X . g_F|)``, the same angle without the division by ``s_x``, so
    that vertical gradients need no special case. A small epsilon keeps the magnitudes and that
    angle differentiable where a gradient vanishes; the value differs from the metric's by
    less than 1e-4 on brain slices.
    """
    c = QABF_CONSTANTS
    grad_f = sobel(fused, padding="constant")
    mag_f = _magnitude(grad_f)
    score, weights = 0.0, 0.0
    for source in (a, b):
        grad_s = sobel(source, padding="constant")
        mag_s = _magnitude(grad_s)
        strength = torch.minimum(mag_s, mag_f) / torch.maximum(mag_s, mag_f)
        dot = (grad_s * grad_f).sum(dim=1, keepdim=True)
        cross = grad_s[:, :1] * grad_f[:, 1:] - grad_s[:, 1:] * grad_f[:, :1]
        angle = torch.atan2(torch.sqrt(cross * cross + 1e-12), dot.abs() + 1e-12)
        orientation = 1.0 - angle / (math.pi / 2.0)
        q_g = c["gamma_g"] / (1.0 + torch.exp(c["kappa_g"] * (strength - c["sigma_g"])))
        q_a = c["gamma_a"] / (1.0 + torch.exp(c["kappa_a"] * (orientation - c["sigma_a"])))
        score = score + (q_g * q_a * mag_s).flatten(1).sum(dim=1)
        weights = weights + mag_s.flatten(1).sum(dim=1)
    return score / weights.clamp_min(1e-12)


def chen_varshney(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, window: int = 16) -> torch.Tensor:
    """Differentiable Chen-Varshney distortion of ``fused`` from ``a`` and ``b``, per batch item.

    As :func:`bsafusion.evaluation.metrics.fusion.q_cv` (``alpha = 1``): per ``window``-sized
    block, the mean square of ``X - F`` filtered by the contrast sensitivity function, weighted
    by the block's Sobel edge strength in ``X``, summed over both sources and normalised by the
    total weight. Two differences keep it a smooth training term: intensities stay in
    ``[0, 1]`` (the metric's value divided by ``255**2``) and the Sobel filter pads by
    replication (the metric pads with zeros, which only changes border blocks). The image
    sides must be multiples of ``window``.
    """
    # the crops are filtered as the 256-pixel images the metric scores
    csf = torch.from_numpy(mannos_sakrison(tuple(fused.shape[-2:]), reference_size=256)).to(fused)
    weighted, weights = 0.0, 0.0
    for source in (a, b):
        saliency = F.avg_pool2d(sobel_magnitude(source), window)
        filtered = torch.fft.ifft2(torch.fft.fft2(source - fused) * csf).real
        weighted = weighted + (saliency * F.avg_pool2d(filtered * filtered, window)).flatten(1).sum(dim=1)
        weights = weights + saliency.flatten(1).sum(dim=1)
    return weighted / weights.clamp_min(1e-12)


def _gaussian_valid(x: torch.Tensor, size: int) -> torch.Tensor:
    """Separable Gaussian filter (``sigma = size / 5``), 'valid' part only, as VIFF filters."""
    t = torch.arange(size, dtype=x.dtype, device=x.device) - size // 2
    k = torch.exp(-(t * t) / (2.0 * (size / 5.0) ** 2))
    k = k / k.sum()
    return F.conv2d(F.conv2d(x, k.view(1, 1, -1, 1)), k.view(1, 1, 1, -1))


def _viff_maps(ref: torch.Tensor, dist: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per scale: (VID, VIND, gain) maps of ``dist`` against ``ref`` in 8-bit units."""
    out = []
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1  # 17, 9, 5, 3
        if scale > 1:
            ref = _gaussian_valid(ref, n)[..., ::2, ::2]
            dist = _gaussian_valid(dist, n)[..., ::2, ::2]
        mu1, mu2 = _gaussian_valid(ref, n), _gaussian_valid(dist, n)
        s1 = (_gaussian_valid(ref * ref, n) - mu1 * mu1).clamp_min(0.0)
        s2 = (_gaussian_valid(dist * dist, n) - mu2 * mu2).clamp_min(0.0)
        s12 = _gaussian_valid(ref * dist, n) - mu1 * mu2
        flat1, flat2 = s1 < VIFF_EPS, s2 < VIFF_EPS
        # flat windows carry no information; their gain is 0 and must not send a gradient
        g = s12 / torch.where(flat1, torch.ones_like(s1), s1)
        valid = ~flat1 & ~flat2 & (g >= 0)
        g = torch.where(valid, g, torch.zeros_like(g))
        sv = torch.where(valid, s2 - g * s12, torch.where(flat2, torch.zeros_like(s2), s2)).clamp_min(VIFF_EPS)
        s1 = torch.where(flat1, torch.zeros_like(s1), s1)
        vid = torch.log10(1.0 + g * g * s1 / (sv + VIFF_NOISE_VAR))
        vind = torch.log10(1.0 + s1 / VIFF_NOISE_VAR)
        out.append((vid, vind, g))
    return out


def viff(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Differentiable VIFF (Han et al. 2013) of ``fused`` from ``a`` and ``b``, per batch item.

    As :func:`bsafusion.evaluation.metrics.fusion.q_vif` on ``[0, 1]`` images: four scales of
    the Sheikh-Bovik channel model, at each pixel the source with the smaller gain (the
    choice itself carries no gradient), scale scores weighted as the metric weights them.
    Needs sides of at least 41 pixels, as the metric does.
    """
    fused, a, b = (255.0 * x for x in (fused, a, b))
    maps_a, maps_b = _viff_maps(a, fused), _viff_maps(b, fused)
    score = 0.0
    for weight, (vid_a, vind_a, g_a), (vid_b, vind_b, g_b) in zip(VIFF_SCALE_WEIGHTS.tolist(), maps_a, maps_b):
        take_a = g_a < g_b
        vid, vind = torch.where(take_a, vid_a, vid_b), torch.where(take_a, vind_a, vind_b)
        score = score + weight * (vid + VIFF_C).flatten(1).sum(dim=1) / (vind + VIFF_C).flatten(1).sum(dim=1)
    return score


# --------------------------------------------------------------------------- the loss


def compute_losses(out: BSFAFOutput, batch: dict[str, torch.Tensor], weights: LossWeights) -> dict[str, torch.Tensor]:
    """All weighted-in terms (unweighted values) and their weighted sum under ``"total"``.

    ``batch`` holds ``fixed``, ``moving``, ``modality_index`` and, for synthetic pairs,
    ``moving_aligned`` and ``field``.
    """
    fixed = batch["fixed"]
    terms: dict[str, torch.Tensor] = {}
    if weights.ce1:
        logits_a, logits_b = out.mfrh_logits
        target_b = batch["modality_index"].to(fixed.device).long()
        terms["ce1"] = 0.5 * (
            F.cross_entropy(logits_a, torch.full_like(target_b, MRI_CLASS)) + F.cross_entropy(logits_b, target_b)
        )
    if weights.ce2:
        target_b = batch["modality_index"].to(fixed.device).long()
        disc_a, disc_b = out.discriminator_logits
        conf_a, conf_b = out.confusion_logits
        classify = 0.5 * (
            F.cross_entropy(disc_a, torch.full_like(target_b, MRI_CLASS)) + F.cross_entropy(disc_b, target_b)
        )
        log_k = math.log(conf_a.shape[1])
        uniform = 0.5 * sum(-F.log_softmax(c, dim=1).mean(dim=1).mean() - log_k for c in (conf_a, conf_b))
        terms["ce2"] = classify + uniform
    if weights.smooth:
        levels = out.alignment.velocity_levels
        level_w = torch.tensor([2.0**lvl for lvl in levels])
        level_w = level_w / level_w.sum()
        terms["smooth"] = sum(w * diffusion(v).mean() for w, v in zip(level_w.tolist(), out.alignment.velocities))
    if weights.consistency:
        round_trip = compose(out.field_ab, out.field_ba).abs().mean()
        middle = sum(
            (1 - F.cosine_similarity(a, b, dim=1)).mean() for a, b in out.alignment.middle
        ) / len(out.alignment.middle)
        terms["consistency"] = round_trip + middle
    has_truth = "moving_aligned" in batch
    if weights.registration and has_truth:
        terms["registration"] = 1 - multiscale_lncc(out.warped_moving, batch["moving_aligned"]).mean()
    if weights.mind:
        terms["mind"] = (mind_descriptor(out.warped_moving) - mind_descriptor(fixed)).abs().mean()
    if weights.translation and has_truth and out.translation is not None:
        terms["translation"] = (out.translation - batch["moving_aligned"]).abs().mean()
    if weights.supervised_field and "field" in batch:
        terms["supervised_field"] = torch.sqrt(((out.field_ba - batch["field"]) ** 2).sum(dim=1) + 1e-8).mean()

    if weights.fusion_target == "aligned" and has_truth:
        other = batch["moving_aligned"]
    else:
        other = out.warped_moving.detach()
    fused = out.fused
    if weights.ssim:
        terms["ssim"] = 1 - 0.5 * (ssim(fused, fixed) + ssim(fused, other)).mean()
    if weights.intensity:
        terms["intensity"] = (fused - torch.maximum(fixed, other)).abs().mean()
    if weights.gradient:
        target = torch.maximum(sobel_magnitude(fixed), sobel_magnitude(other))
        terms["gradient"] = (sobel_magnitude(fused) - target).abs().mean()
    if weights.perceptual:
        terms["perceptual"] = chen_varshney(fused, fixed, other).mean()
    if weights.information:
        terms["information"] = 1.0 - viff(fused, fixed, other).mean()
    if weights.edges:
        terms["edges"] = stronger_edges(fused, fixed, other).mean()
    if weights.preservation:
        terms["preservation"] = 1.0 - edge_preservation(fused, fixed, other).mean()

    total = sum(getattr(weights, name) * value for name, value in terms.items())
    terms["total"] = total
    return terms
