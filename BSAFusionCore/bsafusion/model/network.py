"""BSFA-F: the whole network, encoder -> MDF-FR -> BSFA -> MMFF.

``A`` is the fixed image (MRI), ``B`` the moving one (CT, or the Y channel of PET/SPECT), both
``(N, 1, H, W)`` in [0, 1] with ``H = W = cfg.img_size`` (inference resamples other sizes).

Two entries, as in VoxelMorph (``registration=True``): :meth:`BSFAF.forward` is training's and
returns everything the losses need (:class:`BSFAFOutput`); inference calls
:meth:`BSFAF.register`, may replace the field (per-pair refinement, outside the network), and
then :meth:`BSFAF.fuse`: no discriminator, classifier or network-size warp is computed that
nobody reads. :meth:`BSFAF.infer` is the two in a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bsafusion.deform import resize_field, smooth_field, warp
from bsafusion.model.bsfa import BSFA, AlignmentResult, FeaturePyramid
from bsafusion.modality import CLASS_NAMES
from bsafusion.model.config import ModelConfig
from bsafusion.model.encoder import EncodedImage, Encoder
from bsafusion.model.mdffr import MDFFR, ModalityFeatureHead
from bsafusion.model.mmff import MMFF
from bsafusion.model.translation import ModalityTranslator


@dataclass
class BSFAFOutput:
    """Everything the network predicts; fields are full-resolution pixels (see ``deform``)."""

    fused: torch.Tensor  # (N, 1, H, W) in [0, 1]
    field_ba: torch.Tensor  # (N, 2, H, W) aligns B (moving) to A (fixed)
    field_ab: torch.Tensor  # (N, 2, H, W) aligns A to B
    warped_moving: torch.Tensor  # warp(B, field_ba)
    translation: torch.Tensor | None  # (N, 1, H, W) A in B's modality (cfg.translation), else None
    alignment: AlignmentResult  # per-step velocities and middle features (pyramid resolution)
    mfrh_logits: tuple[torch.Tensor, torch.Tensor]  # L_ce1 logits of A and B
    discriminator_logits: tuple[torch.Tensor, torch.Tensor]  # discriminator on detached features
    confusion_logits: tuple[torch.Tensor, torch.Tensor]  # frozen discriminator on live features


@dataclass
class Registration:
    """The registration half's result (:meth:`BSFAF.register`); fields are input-size pixels."""

    field_ba: torch.Tensor  # (N, 2, H, W) aligns B (moving) to A (fixed)
    field_ab: torch.Tensor  # (N, 2, H, W) aligns A to B
    translation: torch.Tensor | None  # (N, 1, H, W) A in B's modality (cfg.translation), else None
    encoded: EncodedImage  # A's and B's features stacked on the batch axis, for :meth:`BSFAF.fuse`


@dataclass
class Inference:
    """What inference needs from the network (:meth:`BSFAF.infer`)."""

    fused: torch.Tensor  # (N, 1, H, W) in [0, 1]
    field_ba: torch.Tensor  # (N, 2, H, W) aligns B to A
    field_ab: torch.Tensor  # (N, 2, H, W) aligns A to B
    translation: torch.Tensor | None  # B_hat, or None


@dataclass
class _LossInputs:
    """What only training reads: MDF-FR's aligned tokens, the MFRH features and BSFA's steps."""

    align_a: torch.Tensor
    align_b: torch.Tensor
    mfrh_a: torch.Tensor
    mfrh_b: torch.Tensor
    alignment: AlignmentResult


class BSFAF(nn.Module):
    """Bidirectional Stepwise Feature Alignment and Fusion network."""

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ModelConfig()
        self.head = ModalityFeatureHead(self.cfg.embed_dim, len(CLASS_NAMES))
        self.encoder = Encoder(self.cfg, self.head)
        self.mdffr = MDFFR(self.cfg, len(CLASS_NAMES))
        self.pyramid = FeaturePyramid(self.cfg)
        self.bsfa = BSFA(self.cfg)
        self.mmff = MMFF(self.cfg)
        self.translator = (
            ModalityTranslator(self.cfg.channels, self.cfg.embed_dim, self.cfg.patch_size) if self.cfg.translation else None
        )

    def register(self, fixed: torch.Tensor, moving: torch.Tensor) -> Registration:
        """The registration half: both fields at input size, ``B_hat``, and what :meth:`fuse` needs."""
        registration, _ = self._align(fixed, moving, for_losses=False)
        return registration

    def fuse(self, registration: Registration, field_ba: torch.Tensor) -> torch.Tensor:
        """The fusion half (MMFF): fuse A with B's features pulled by ``field_ba``, ``(N, 1, H, W)`` in [0, 1].

        ``field_ba`` is the registration's own field or a replacement on the same grid (refined).
        """
        enc = registration.encoded
        shallow_a, shallow_b = enc.shallow.chunk(2, dim=0)
        deep_a, deep_b = enc.deep.chunk(2, dim=0)
        # the fusion losses must not bend the registration: the field reaches MMFF detached
        # (registration learns from its own losses; both tasks still share the encoder)
        return self.mmff(deep_a, deep_b, shallow_a, shallow_b, field_ba.detach())

    def infer(self, fixed: torch.Tensor, moving: torch.Tensor) -> Inference:
        """Register and fuse for inference: the fields, the fused image and ``B_hat``, nothing else."""
        registration = self.register(fixed, moving)
        return Inference(self.fuse(registration, registration.field_ba), registration.field_ba,
                         registration.field_ab, registration.translation)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> BSFAFOutput:
        """Register and fuse with every output the training losses read."""
        registration, extra = self._align(fixed, moving)
        return BSFAFOutput(
            fused=self.fuse(registration, registration.field_ba),
            field_ba=registration.field_ba,
            field_ab=registration.field_ab,
            warped_moving=warp(moving, registration.field_ba),
            translation=registration.translation,
            alignment=extra.alignment,
            mfrh_logits=(self.head.classify(extra.mfrh_a), self.head.classify(extra.mfrh_b)),
            discriminator_logits=(
                self.mdffr.discriminate(extra.align_a.detach()),
                self.mdffr.discriminate(extra.align_b.detach()),
            ),
            confusion_logits=(
                self.mdffr.discriminate(extra.align_a, detach_weights=True),
                self.mdffr.discriminate(extra.align_b, detach_weights=True),
            ),
        )

    def _align(self, fixed: torch.Tensor, moving: torch.Tensor, for_losses: bool = True) -> tuple[Registration, _LossInputs]:
        """Encoder, MDF-FR, pyramid, translator and BSFA; ``for_losses=False`` skips what only losses read."""
        if fixed.shape != moving.shape or fixed.ndim != 4 or fixed.shape[1] != 1:
            raise ValueError(f"expected two (N, 1, H, W) tensors of equal shape, got {fixed.shape} and {moving.shape}")
        if fixed.shape[-1] % self.cfg.patch_size or fixed.shape[-2] % self.cfg.patch_size:
            raise ValueError(f"image size {tuple(fixed.shape[2:])} is not a multiple of {self.cfg.patch_size}")
        n = fixed.shape[0]
        enc = self.encoder(torch.cat([fixed, moving], dim=0))
        tokens_a, tokens_b = enc.tokens.chunk(2, dim=0)
        mfrh_a, mfrh_b = enc.mfrh.chunk(2, dim=0)
        align_a, align_b = self.mdffr(tokens_a, mfrh_a, tokens_b, mfrh_b)

        h, w = enc.grid
        token_map = torch.cat([align_a, align_b], dim=0).transpose(1, 2).reshape(2 * n, -1, h, w)
        pyramid = self.pyramid(token_map, enc.deep)
        translation = None
        guide_a = fixed
        if self.translator is not None:
            translation = self.translator(fixed, token_map[:n])
            # detached: the translation learns from its own loss, not by bending towards
            # whatever makes the registration loss smaller
            guide_a = translation.detach()
        alignment = self.bsfa([lvl[:n] for lvl in pyramid], [lvl[n:] for lvl in pyramid], guide_a, moving,
                              with_middle=for_losses)
        size = fixed.shape[2:]
        sigma = self.cfg.field_sigma * alignment.field_ba.shape[-1] / size[-1]  # on the finest level's grid
        registration = Registration(resize_field(smooth_field(alignment.field_ba, sigma), size),
                                    resize_field(smooth_field(alignment.field_ab, sigma), size), translation, enc)
        return registration, _LossInputs(align_a, align_b, mfrh_a, mfrh_b, alignment)
