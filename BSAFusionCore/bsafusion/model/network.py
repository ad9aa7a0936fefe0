"""BSFA-F: the whole network, encoder -> MDF-FR -> BSFA -> MMFF.

``A`` is the fixed image (MRI), ``B`` the moving one (CT, or the Y channel of PET/SPECT), both
``(N, 1, H, W)`` in [0, 1] with ``H = W = cfg.img_size`` (inference resamples other sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bsafusion.deform import invert, resize_field, warp
from bsafusion.model.bsfa import BSFA, AlignmentResult, FeaturePyramid
from bsafusion.modality import CLASS_NAMES
from bsafusion.model.config import ModelConfig
from bsafusion.model.encoder import Encoder
from bsafusion.model.mdffr import MDFFR, ModalityFeatureHead
from bsafusion.model.mmff import MMFF
from bsafusion.model.translation import ModalityTranslator

#: ``refine(fixed, moving, field_ba, translation=B_hat)``: a per-pair replacement of the
#: predicted field (inference only); ``B_hat`` is ``None`` for a network without a translator.
Refiner = Callable[..., torch.Tensor]


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

    def forward(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        refine: Refiner | None = None,
    ) -> BSFAFOutput:
        """Register and fuse; ``refine(fixed, moving, field_ba, translation=...)`` may replace the field.

        With ``refine`` (inference only, e.g. :func:`bsafusion.inference.refine.refine_field`), MMFF fuses
        with the refined field, ``field_ab`` becomes its numerical inverse, and ``alignment``
        still describes the network's own prediction.
        """
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
        alignment = self.bsfa([lvl[:n] for lvl in pyramid], [lvl[n:] for lvl in pyramid], guide_a, moving)

        size = fixed.shape[2:]
        field_ba = resize_field(alignment.field_ba, size)
        field_ab = resize_field(alignment.field_ab, size)
        if refine is not None:
            field_ba = refine(fixed, moving, field_ba, translation=translation)
            field_ab = invert(field_ba)
        shallow_a, shallow_b = enc.shallow.chunk(2, dim=0)
        deep_a, deep_b = enc.deep.chunk(2, dim=0)
        # the fusion losses must not bend the registration: the field reaches MMFF detached
        # (registration learns from its own losses; both tasks still share the encoder)
        fused = self.mmff(deep_a, deep_b, shallow_a, shallow_b, field_ba.detach())

        return BSFAFOutput(
            fused=fused,
            field_ba=field_ba,
            field_ab=field_ab,
            warped_moving=warp(moving, field_ba),
            translation=translation,
            alignment=alignment,
            mfrh_logits=(self.head.classify(mfrh_a), self.head.classify(mfrh_b)),
            discriminator_logits=(self.mdffr.discriminate(align_a.detach()), self.mdffr.discriminate(align_b.detach())),
            confusion_logits=(
                self.mdffr.discriminate(align_a, detach_weights=True),
                self.mdffr.discriminate(align_b, detach_weights=True),
            ),
        )
