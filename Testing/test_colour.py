"""RGB <-> YCbCr: exact inverse, textbook values, cross-checks, and the Harvard data's convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2ycbcr

from bsafusion.colour import NEUTRAL_CHROMA, merge_luma, rgb_to_ycbcr, split_luma, ycbcr_to_rgb


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).random((9, 7, 3))


@pytest.mark.parametrize("full_range", [False, True])
def test_round_trip(rgb, full_range):
    back = ycbcr_to_rgb(rgb_to_ycbcr(rgb, full_range=full_range), full_range=full_range)
    assert back.dtype == rgb.dtype
    np.testing.assert_allclose(back, rgb, atol=1e-6, rtol=0)
    back32 = ycbcr_to_rgb(rgb_to_ycbcr(rgb.astype(np.float32), full_range=full_range), full_range=full_range)
    assert back32.dtype == np.float32
    np.testing.assert_allclose(back32, rgb, atol=1e-6, rtol=0)


def test_grey_has_neutral_chroma():
    g = np.linspace(0, 1, 11)
    grey = np.stack([g, g, g], axis=-1)
    full = rgb_to_ycbcr(grey, full_range=True)
    np.testing.assert_allclose(full[..., 0], g, atol=1e-12)
    np.testing.assert_allclose(full[..., 1:], NEUTRAL_CHROMA, atol=1e-12)
    studio = rgb_to_ycbcr(grey)
    np.testing.assert_allclose(studio[..., 0], (16 + 219 * g) / 255, atol=1e-12)
    np.testing.assert_allclose(studio[..., 1:], NEUTRAL_CHROMA, atol=1e-12)
    assert NEUTRAL_CHROMA == pytest.approx(128 / 255)


def test_pure_red_textbook_values():
    red = np.array([1.0, 0.0, 0.0])
    # BT.601 studio range, 8-bit: (81.481, 90.203, 240)
    np.testing.assert_allclose(rgb_to_ycbcr(red) * 255, [81.481, 90.203, 240.0], atol=1e-9)
    # JFIF: Y = 0.299, Cb = 128 - 0.168736*255, Cr = 128 + 0.5*255
    np.testing.assert_allclose(rgb_to_ycbcr(red, full_range=True) * 255, [76.245, 84.97232, 255.5], atol=1e-9)


def test_matches_skimage_studio_range(rgb):
    np.testing.assert_allclose(rgb_to_ycbcr(rgb) * 255, rgb2ycbcr(rgb), atol=1e-9)


def test_full_range_matches_pil(rgb):
    rgb8 = np.round(rgb * 255).astype(np.uint8)
    pil = np.asarray(Image.fromarray(rgb8, "RGB").convert("YCbCr")).astype(float)
    ours = rgb_to_ycbcr(rgb8 / 255.0, full_range=True) * 255
    assert np.abs(ours - pil).max() <= 1.0


def test_split_merge(rgb):
    y, cbcr = split_luma(rgb)
    assert y.shape == (9, 7) and cbcr.shape == (9, 7, 2)
    np.testing.assert_allclose(merge_luma(y, cbcr), rgb, atol=1e-6)
    bright = merge_luma(np.ones_like(y), cbcr)
    assert bright.min() >= 0 and bright.max() <= 1 and np.isclose(bright.max(), 1.0)


def test_channel_axis_and_torch(rgb):
    expected = rgb_to_ycbcr(rgb)
    np.testing.assert_allclose(rgb_to_ycbcr(np.moveaxis(rgb, -1, 0), channel_axis=0), np.moveaxis(expected, -1, 0))
    t = torch.from_numpy(np.moveaxis(rgb, -1, 0)[None].astype(np.float32))
    y, cbcr = split_luma(t, channel_axis=-3)
    assert y.shape == (1, 9, 7) and cbcr.shape == (1, 2, 9, 7)
    np.testing.assert_allclose(y[0].numpy(), expected[..., 0], atol=1e-6)
    np.testing.assert_allclose(merge_luma(y, cbcr, channel_axis=-3).numpy(), t.numpy(), atol=1e-5)


def test_integer_input_rejected():
    with pytest.raises(TypeError, match="float"):
        rgb_to_ycbcr(np.zeros((2, 2, 3), np.uint8))


def _unclipped_luma_errors(stored_paths, rgb_paths, full_range):
    """|stored luma - our luma of the RGB| (8-bit units) where no RGB channel is clipped."""
    errors = []
    for grey_path, rgb_path in zip(stored_paths, rgb_paths):
        stored = np.asarray(Image.open(grey_path).convert("RGB"))[..., 0].astype(float)
        rgb8 = np.asarray(Image.open(rgb_path).convert("RGB"))
        ours = rgb_to_ycbcr(rgb8 / 255.0, full_range=full_range)[..., 0] * 255
        unclipped = ((rgb8 > 0) & (rgb8 < 255)).all(axis=-1)
        errors.append(np.abs(stored - ours)[unclipped])
    return np.concatenate(errors)


@pytest.mark.shared_data
@pytest.mark.parametrize("modality", ["PET", "SPECT"])
def test_harvard_luma_is_bt601_studio_range(harvard_dir, modality):
    """The stored moving luma is our (studio-range) luma of the stored RGB, within rounding.

    Where an RGB channel is clipped at 0 or 255 the data's RGB was made from its YCbCr and
    clipped, so its luma is no longer the stored one; those pixels are left out.
    """
    case = harvard_dir / "test_unaligned" / modality
    names = sorted(p.name for p in (case / modality).glob("*.png"))[:6]
    stored = [case / modality / n for n in names]
    rgb = [case / f"{modality}_RGB" / n for n in names]
    studio = _unclipped_luma_errors(stored, rgb, full_range=False)
    assert studio.size > 10000
    assert studio.max() <= 1.0
    full = _unclipped_luma_errors(stored, rgb, full_range=True)
    assert full.mean() > 3.0  # the JPEG convention does not fit this data
    results = harvard_dir / "official_results" / modality
    fused = sorted(p.name for p in (results / "Fusion").glob("*.png"))[:3]
    official = _unclipped_luma_errors(
        [results / "Fusion_GRAY" / n for n in fused], [results / "Fusion" / n for n in fused], full_range=False
    )
    assert official.max() <= 1.0


def test_warped_chroma_is_neutral_where_it_comes_from_outside():
    import torch

    from bsafusion.colour import NEUTRAL_CHROMA, warp_chroma

    cbcr = torch.full((1, 2, 16, 16), 0.9)
    shift = torch.zeros(1, 2, 16, 16)
    shift[:, 0] = 4.0  # pull from 4 px to the right: the last 4 columns come from outside
    out = warp_chroma(cbcr, shift)
    torch.testing.assert_close(out[..., -3:], torch.full_like(out[..., -3:], NEUTRAL_CHROMA))
    torch.testing.assert_close(out[..., :10], cbcr[..., :10])
