"""Architecture configuration of BSFA-F and the paper's ablation presets.

The published model uses 256x256 inputs, patch size 16, token width 256, 4 heads and two
Transformer blocks per stage. Our defaults are smaller (patch 8, width 64) so that one 256x256
pair runs in well under a second on two CPU cores and a model trains on a CPU in under an
hour; every size is a config value, so the published size is one config file away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from bsafusion.config import check_known_keys

#: The paper's ablations (Sec. "Ablation study"): name -> architecture overrides.
#: Loss-side switches (L_ce2 off for setting A) live in :data:`bsafusion.training.losses.ABLATION_LOSS_OVERRIDES`.
ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "setting_a": {"exchange": False},  # no MFRH exchange, no L_ce2
    "setting_b": {"exchange": False},  # no exchange, with L_ce2
    "no_bsfa": {"bsfa": False},  # one single-direction, single-step field
    "frl_only": {"rrl": False},  # only A's features move (all the way to B)
    "rrl_only": {"frl": False},  # only B's features move (all the way to A)
}


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of :class:`bsafusion.model.network.BSFAF`.

    Attributes
    ----------
    img_size: network input size (square); other inputs are resampled to it by inference.
    channels: width of the full-resolution Restormer features (shallow and deep).
    restormer_heads: heads of the transposed (channel) attention.
    embed_dim, patch_size, heads: token width, patch size and heads of the Transformer stage.
    encoder_depth, transfer_depth: Transformer layers of the encoder and of the Transfer blocks.
    pyramid_channels: channels of the alignment feature pyramid, coarse to fine; its length is
        the number of BSFA steps (resolutions img_size/patch_size * 2**k).
    integration_steps: scaling-and-squaring steps turning each predicted velocity into a field.
    correlation_radius: shifts (pixels of each level) of the cost volume fed to the
        registration layers; 0 gives the paper's plain feature concatenation.
    mind_guidance: also give the registration layers the MIND descriptors of both half-warped
        images and their cost volume (modality-independent matching evidence).
    translation: decode ``B_hat`` (A in B's modality, :mod:`bsafusion.model.translation`) from
        A's alignment features; with ``mind_guidance`` the A side of the MIND evidence is then
        ``B_hat`` instead of A, so the registration layers compare like with like.
    matching: block matching of those MIND descriptors gives every registration layer a
        starting velocity and its evidence (:class:`~bsafusion.model.bsfa.MatchingPrior`).
    exchange: inject each image's MFRH into the other's tokens (MDF-FR exchange).
    bsfa: stepwise bidirectional alignment; ``False`` predicts one field in one step.
    frl, rrl: forward (A -> middle) and reverse (B -> middle) registration layers.
    field_sigma: Gaussian sigma, in input-image pixels, of a smoothing of both output fields
        (on the finest level's grid, before they are resized to the image); 0 leaves the
        composed BSFA steps as they are. The misalignment the network is built for is smooth
        (a 32² grid holds it to within 0.001 NCC, ``Testing/benchmarks/field_resolution.py``)
        while each registration layer's velocity carries pixel-scale noise that no true field
        has; smoothing removes that noise at the cost of a few operations on a small grid.
    """

    img_size: int = 256
    channels: int = 16
    restormer_heads: int = 2
    embed_dim: int = 64
    patch_size: int = 8
    heads: int = 4
    encoder_depth: int = 2
    transfer_depth: int = 2
    pyramid_channels: tuple[int, ...] = (48, 32, 16)
    integration_steps: int = 5
    correlation_radius: int = 3
    mind_guidance: bool = True
    translation: bool = False
    matching: bool = False
    exchange: bool = True
    bsfa: bool = True
    frl: bool = True
    rrl: bool = True
    field_sigma: float = 0.0

    def __post_init__(self) -> None:
        finest = self.patch_size // 2 ** (len(self.pyramid_channels) - 1)
        if finest < 1 or self.patch_size % 2 ** (len(self.pyramid_channels) - 1):
            raise ValueError("patch_size must be divisible by 2**(len(pyramid_channels) - 1)")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.matching and not self.mind_guidance:
            raise ValueError("matching needs mind_guidance (it matches the MIND descriptors)")
        if not (self.frl or self.rrl):
            raise ValueError("at least one of frl / rrl must be enabled")
        if self.field_sigma < 0:
            raise ValueError(f"field_sigma must be >= 0, got {self.field_sigma}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pyramid_channels"] = list(self.pyramid_channels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        check_known_keys(data, cls, "model config keys")
        data = dict(data)
        if "pyramid_channels" in data:
            data["pyramid_channels"] = tuple(data["pyramid_channels"])
        return cls(**data)

    def with_ablation(self, name: str) -> "ModelConfig":
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; choose from {sorted(ABLATIONS)}")
        return replace(self, **ABLATIONS[name])
