"""MDF-FR: modality-discrepancy-free feature representation.

* :class:`ModalityFeatureHead` (MFRH) is a learned class-style token prepended to every image's
  tokens; after the encoder's Transformer layers it holds the image's global (modality)
  information. A linear classifier on it is trained with **L_ce1** (which modality is this?).
  The initial token is shared by all images: were it per modality, the classification would be
  trivial and the head would learn nothing about the image.
* :class:`MDFFR` performs the **exchange** (image A's tokens continue with B's MFRH prepended
  and vice versa, so each image's features are re-expressed with the other's modality
  information) and the two **Transfer** blocks, whose outputs are the alignment features.
  A modality discriminator on the pooled alignment features gives **L_ce2**: the discriminator
  learns to classify on *detached* features, while the features are pushed to make its
  prediction uniform through a frozen copy of its weights (the "domain confusion" loss of
  Tzeng et al., ICCV 2015). That is our reading of "L_ce2 makes the features no longer reveal
  their modality"; training the classifier and the features on the same uniform target would
  be satisfied by a constant classifier and teach the features nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bsafusion.model.blocks import TransformerLayer
from bsafusion.modality import CLASS_NAMES
from bsafusion.model.config import ModelConfig


class ModalityFeatureHead(nn.Module):
    """The MFRH token and its modality classifier (L_ce1)."""

    def __init__(self, dim: int, num_classes: int = len(CLASS_NAMES)) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.token, std=0.02)
        self.classifier = nn.Linear(dim, num_classes)

    def prepend(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def classify(self, mfrh: torch.Tensor) -> torch.Tensor:
        return self.classifier(mfrh)


class MDFFR(nn.Module):
    """MFRH exchange + Transfer blocks + modality discriminator (L_ce2)."""

    def __init__(self, cfg: ModelConfig, num_classes: int = len(CLASS_NAMES)) -> None:
        super().__init__()
        self.exchange = cfg.exchange
        self.transfer = nn.ModuleList(TransformerLayer(cfg.embed_dim, cfg.heads) for _ in range(cfg.transfer_depth))
        self.discriminator = nn.Linear(cfg.embed_dim, num_classes)

    def forward(
        self, tokens_a: torch.Tensor, mfrh_a: torch.Tensor, tokens_b: torch.Tensor, mfrh_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Alignment features ``(N, L, D)`` of A and B."""
        head_a, head_b = (mfrh_b, mfrh_a) if self.exchange else (mfrh_a, mfrh_b)
        seq = torch.cat(
            [torch.cat([head_a[:, None], tokens_a], dim=1), torch.cat([head_b[:, None], tokens_b], dim=1)], dim=0
        )
        for layer in self.transfer:
            seq = layer(seq)
        out_a, out_b = seq[:, 1:].chunk(2, dim=0)
        return out_a, out_b

    def discriminate(self, features: torch.Tensor, detach_weights: bool = False) -> torch.Tensor:
        """Modality logits of pooled features; ``detach_weights`` freezes the discriminator."""
        pooled = features.mean(dim=1)
        if detach_weights:
            return F.linear(pooled, self.discriminator.weight.detach(), self.discriminator.bias.detach())
        return self.discriminator(pooled)
