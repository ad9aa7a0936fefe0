"""BSFA-F blocks: shapes, value ranges, field composition and the ablation switches."""

import math

import numpy as np
import pytest
import torch

from bsafusion.deform import compose, warp
from bsafusion.model import ABLATIONS, BSFAF, ModelConfig
from bsafusion.model.blocks import RestormerBlock, TransformerLayer

TINY = ModelConfig(img_size=64, channels=8, embed_dim=32, patch_size=8, heads=2, pyramid_channels=(16, 12, 8))


def _pair(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g), torch.rand(n, 1, size, size, generator=g)


def _activate_registration(model, std=0.02):
    """Give the zero-initialised registration heads real weights so fields are non-trivial."""
    torch.manual_seed(0)
    for layers in (model.bsfa.frl, model.bsfa.rrl):
        for layer in layers or []:
            torch.nn.init.normal_(layer.out.weight, std=std)


def test_blocks_keep_shapes():
    x = torch.rand(2, 8, 16, 16)
    assert RestormerBlock(8, 2)(x).shape == x.shape
    t = torch.rand(2, 10, 32)
    assert TransformerLayer(32, 4)(t).shape == t.shape


def test_forward_shapes_and_ranges():
    model = BSFAF(TINY).eval()
    a, b = _pair()
    with torch.no_grad():
        out = model(a, b)
    assert out.fused.shape == (2, 1, 64, 64)
    assert out.fused.min() >= 0 and out.fused.max() <= 1
    assert out.field_ba.shape == out.field_ab.shape == (2, 2, 64, 64)
    assert out.warped_moving.shape == b.shape
    assert [m[0].shape[-1] for m in out.alignment.middle] == [8, 16, 32]
    assert len(out.alignment.velocities) == 6  # FRL + RRL at 3 levels
    assert out.mfrh_logits[0].shape == (2, 4) and out.confusion_logits[1].shape == (2, 4)


def test_untrained_model_starts_at_identity():
    model = BSFAF(TINY).eval()
    with torch.no_grad():
        out = model(*_pair())
    assert out.field_ba.abs().max() < 1e-2


def test_full_field_is_composition_through_the_middle():
    model = BSFAF(TINY).eval()
    _activate_registration(model)
    a, b = _pair()
    with torch.no_grad():
        out = model(a, b)
        al = out.alignment
        assert al.half_a.abs().max() > 0.05 and al.half_b.abs().max() > 0.05
        # B -> middle, then middle -> A's grid through the inverse of A's half field
        from bsafusion.deform import invert

        via_middle = compose(al.half_b, invert(al.half_a))
        assert torch.allclose(al.field_ba, via_middle, atol=0.02)
        # and the two full fields are inverse to each other
        assert compose(out.field_ab, out.field_ba)[..., 8:-8, 8:-8].abs().max() < 0.05
        # a plain difference of half fields is not what the network returns
        assert (al.field_ba - (al.half_b - al.half_a)).abs().max() > 1e-3


def test_warped_moving_is_the_moving_image_pulled_by_field_ba():
    model = BSFAF(TINY).eval()
    _activate_registration(model)
    a, b = _pair()
    with torch.no_grad():
        out = model(a, b)
    assert torch.allclose(out.warped_moving, warp(b, out.field_ba), atol=1e-6)


def test_field_sigma_smooths_both_fields_on_the_finest_level():
    from dataclasses import replace

    from bsafusion.deform import diffusion, resize_field, smooth_field

    plain = BSFAF(TINY).eval()
    _activate_registration(plain, std=0.2)
    smooth = BSFAF(replace(TINY, field_sigma=4.0)).eval()
    smooth.load_state_dict(plain.state_dict())
    a, b = _pair()
    with torch.no_grad():
        rough, smoothed = plain.register(a, b), smooth.register(a, b)
        finest = plain(a, b).alignment  # fields on the finest level's grid (32² for a 64² input)
    # sigma 4 input pixels is 2 pixels of the finest grid, applied before the resize to the image
    expected_ba = resize_field(smooth_field(finest.field_ba, 2.0), (64, 64))
    expected_ab = resize_field(smooth_field(finest.field_ab, 2.0), (64, 64))
    assert torch.allclose(smoothed.field_ba, expected_ba, atol=1e-6)
    assert torch.allclose(smoothed.field_ab, expected_ab, atol=1e-6)
    assert (diffusion(smoothed.field_ba) < 0.7 * diffusion(rough.field_ba)).all()
    with pytest.raises(ValueError, match="field_sigma"):
        ModelConfig(field_sigma=-1.0)


def test_inference_entry_gives_training_s_fields_and_fusion_and_nothing_else(monkeypatch):
    model = BSFAF(TINY.with_ablation("full")).eval()
    _activate_registration(model)
    a, b = _pair()
    with torch.no_grad():
        out = model(a, b)
        called = []
        monkeypatch.setattr(model.mdffr, "discriminate", lambda *args, **kw: called.append("discriminate"))
        monkeypatch.setattr(model.head, "classify", lambda *args, **kw: called.append("classify"))
        inferred = model.infer(a, b)
        registration = model.register(a, b)
        other = torch.roll(registration.field_ba, 3, dims=-1)
        fused_other = model.fuse(registration, other)
    assert called == []  # no loss-only head runs at inference
    assert set(vars(inferred)) == {"fused", "field_ba", "field_ab", "translation"}
    for name in ("fused", "field_ba", "field_ab"):
        assert torch.equal(getattr(inferred, name), getattr(out, name)), name
    assert not torch.allclose(fused_other, inferred.fused, atol=1e-5)  # fuse() uses the field it is given


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_ablation_switches_remove_their_blocks():
    full = BSFAF(TINY.with_ablation("full"))
    frl_only = BSFAF(TINY.with_ablation("frl_only"))
    rrl_only = BSFAF(TINY.with_ablation("rrl_only"))
    no_bsfa = BSFAF(TINY.with_ablation("no_bsfa"))
    assert frl_only.bsfa.rrl is None and rrl_only.bsfa.frl is None
    assert _count(frl_only) == _count(rrl_only) < _count(full)
    assert _count(no_bsfa) < _count(frl_only)
    a, b = _pair()
    for name, model in (("frl_only", frl_only), ("rrl_only", rrl_only)):
        _activate_registration(model)
        with torch.no_grad():
            out = model(a, b)
        moving_side = out.alignment.half_a if name == "frl_only" else out.alignment.half_b
        still_side = out.alignment.half_b if name == "frl_only" else out.alignment.half_a
        assert still_side.abs().max() == 0 and moving_side.abs().max() > 0.05, name
    with torch.no_grad():
        out = no_bsfa(a, b)
    assert len(out.alignment.velocities) == 1 and len(out.alignment.middle) == 1


def test_exchange_switch_changes_alignment_features():
    torch.manual_seed(0)
    with_x = BSFAF(TINY)
    without = BSFAF(TINY.with_ablation("setting_b"))
    without.load_state_dict(with_x.state_dict())  # same weights, only the exchange differs
    a, b = _pair()
    with torch.no_grad():
        enc = with_x.encoder(torch.cat([a, b]))
        ta, tb = enc.tokens.chunk(2)
        ma, mb = enc.mfrh.chunk(2)
        fa_x, _ = with_x.mdffr(ta, ma, tb, mb)
        fa_n, _ = without.mdffr(ta, ma, tb, mb)
        # with the exchange, A's features depend on B's head token; without, they do not
        fa_n2, _ = without.mdffr(ta, ma, tb, mb * 0)
        fa_x2, _ = with_x.mdffr(ta, ma, tb, mb * 0)
    assert not torch.allclose(fa_x, fa_n)
    assert torch.allclose(fa_n, fa_n2)
    assert not torch.allclose(fa_x, fa_x2)


def test_ablation_names_are_the_papers():
    assert set(ABLATIONS) == {"full", "setting_a", "setting_b", "no_bsfa", "frl_only", "rrl_only"}
    with pytest.raises(ValueError):
        TINY.with_ablation("nonsense")


def test_rejects_bad_shapes():
    model = BSFAF(TINY)
    with pytest.raises(ValueError):
        model(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 60, 60))
    with pytest.raises(ValueError):
        model(torch.rand(1, 1, 60, 60), torch.rand(1, 1, 60, 60))


def test_runs_at_other_sizes_than_trained():
    model = BSFAF(TINY).eval()
    with torch.no_grad():
        out = model(*_pair(1, 96))
    assert out.fused.shape == (1, 1, 96, 96) and np.isfinite(out.field_ba.numpy()).all()


def test_translator_feeds_the_registration_and_learns_only_from_its_own_loss():
    from bsafusion.training.losses import LossWeights, compute_losses

    cfg = ModelConfig(**{**TINY.to_dict(), "pyramid_channels": TINY.pyramid_channels, "translation": True})
    model = BSFAF(cfg)
    assert BSFAF(TINY).translator is None and BSFAF(TINY)(*_pair(n=1)).translation is None
    _activate_registration(model)
    seen = {}
    model.bsfa.register_forward_hook(lambda module, args, output: seen.update(image_a=args[2]))
    a, b = _pair()
    out = model(a, b)
    assert out.translation.shape == a.shape
    # the MIND evidence of A's side is B_hat, not A
    assert torch.equal(seen["image_a"], out.translation) and not torch.equal(seen["image_a"], a)
    batch = {"fixed": a, "moving": b, "moving_aligned": a.flip(-1), "modality_index": torch.tensor([0, 1])}
    registration_only = LossWeights(**{k: 0.0 for k in ("ce1", "ce2", "smooth", "consistency", "ssim", "intensity", "gradient")})
    compute_losses(out, batch, registration_only)["total"].backward()
    assert all(p.grad is None or not p.grad.any() for p in model.translator.parameters())
    model.zero_grad()
    terms = compute_losses(model(a, b), batch, LossWeights(translation=1.0))
    assert "translation" in terms
    terms["total"].backward()
    assert any(p.grad is not None and p.grad.any() for p in model.translator.parameters())


def test_block_matching_finds_a_known_shift():
    from bsafusion.model.bsfa import MatchingPrior, block_matching, expected_shift

    g = torch.Generator().manual_seed(3)
    own = torch.rand(1, 4, 40, 40, generator=g)
    other = torch.roll(own, shifts=(1, 2), dims=(2, 3))  # other(p + (2, 1)) = own(p)
    shift, confidence = expected_shift(block_matching(own, other, radius=3), 3, torch.tensor(1000.0))
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    assert torch.allclose(shift[inner][:, 0], torch.tensor(2.0), atol=0.05)  # x
    assert torch.allclose(shift[inner][:, 1], torch.tensor(1.0), atol=0.05)  # y
    assert confidence[inner].min() > 0.9
    # moving own half-way towards other is the pull velocity -shift / 2
    prior = MatchingPrior(radius=3, smoothing=1)
    with torch.no_grad():
        prior.log_beta.fill_(math.log(1000.0))
        _, velocity = prior(own, other)
    assert float(velocity[inner][:, 0].mean()) == pytest.approx(-0.5 * float(shift[inner][:, 0].mean()), rel=0.2)


def test_matching_registers_before_training_when_the_translation_is_exact():
    from bsafusion.deform import random_elastic_field
    from bsafusion.phantom import phantom_pair

    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY.to_dict(), "pyramid_channels": TINY.pyramid_channels, "img_size": 128,
                         "translation": True, "matching": True})
    model = BSFAF(cfg).eval()
    pair = phantom_pair("CT", (128, 128), seed=2)
    truth = torch.from_numpy(pair.other.astype(np.float32))[None, None]
    deformation = torch.from_numpy(random_elastic_field((128, 128), np.random.default_rng(4), 5.0, 0.125))[None]
    moving = warp(truth, deformation, padding="border")
    model.translator.forward = lambda image_a, tokens: truth  # an exact B_hat
    with torch.no_grad():
        out = model(torch.from_numpy(pair.mri.astype(np.float32))[None, None], moving)
    from bsafusion.deform import invert

    target = invert(deformation, iterations=40)
    head = torch.from_numpy(pair.labels > 0)
    before = target.norm(dim=1)[0][head].mean()
    after = (out.field_ba - target).norm(dim=1)[0][head].mean()
    assert after < 0.5 * before, (float(before), float(after))
