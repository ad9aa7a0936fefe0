"""Tests of bsafusion.evaluation.metrics.registration: hand-computed cases and the field convention."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from bsafusion.errors import InputError
from bsafusion.evaluation.metrics import (
    HIGHER_IS_BETTER,
    endpoint_error,
    folding_fraction,
    jacobian_determinant,
    mae,
    mutual_information,
    ncc,
    normalized_mutual_information,
    ssim,
)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    x = ndimage.gaussian_filter(np.random.default_rng(11).random((48, 48)), 2)
    return (x - x.min()) / (x.max() - x.min())


def _affine_field(matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """u(p) = (M - I) p with p = (x, y[, z]) in ITK order: channel c along array axis n-1-c."""
    n = len(shape)
    coords = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")[::-1]  # x, y[, z]
    p = np.stack(coords)
    return np.einsum("ij,j...->i...", matrix - np.eye(n), p)


def test_registry_lists_registration_scores() -> None:
    expected = {
        "ncc": True,
        "mutual_information": True,
        "normalized_mutual_information": True,
        "ssim": True,
        "mae": False,
        "endpoint_error": False,
        "folding_fraction": False,
    }
    for name, higher in expected.items():
        assert HIGHER_IS_BETTER[name] is higher


# ---------------------------------------------------------------------------------------------
# image similarity
# ---------------------------------------------------------------------------------------------
def test_ncc_hand_values(image) -> None:
    assert ncc(image, 3.0 * image + 2.0) == pytest.approx(1.0, abs=1e-12)
    assert ncc(image, -image) == pytest.approx(-1.0, abs=1e-12)
    # centred a = [-1.5, -.5, .5, 1.5], b = [-1.5, .5, -.5, 1.5]: 4 / (sqrt(5) sqrt(5)) = 0.8
    assert ncc(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 3.0], [2.0, 4.0]])) == pytest.approx(0.8)
    vol = np.random.default_rng(1).random((4, 5, 6))
    assert ncc(vol, 2 * vol) == pytest.approx(1.0)  # 3-D accepted
    with pytest.raises(InputError):
        ncc(image, np.ones_like(image))


def test_mutual_information_hand_values() -> None:
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert mutual_information(a, a, bins=2) == pytest.approx(np.log(2))  # nats
    assert mutual_information(a, b, bins=2) == pytest.approx(0.0, abs=1e-12)
    # p = [[1/4, 1/4], [0, 1/2]] on a 2x2 table: I = H(A) + H(B) - H(A,B)
    c = np.array([[0.0, 0.0, 1.0, 1.0]])
    d = np.array([[0.0, 1.0, 1.0, 1.0]])
    h = lambda p: -sum(x * np.log(x) for x in p if x > 0)  # noqa: E731
    expected = h([0.5, 0.5]) + h([0.25, 0.75]) - h([0.25, 0.25, 0.5])
    assert mutual_information(c, d, bins=2) == pytest.approx(expected, abs=1e-12)


def test_mutual_information_with_itself_is_entropy(image) -> None:
    counts, _ = np.histogram(image, bins=64)
    p = counts[counts > 0] / image.size
    entropy = -np.sum(p * np.log(p))
    assert mutual_information(image, image) == pytest.approx(entropy, abs=1e-12)
    assert mutual_information(image, image, bins=16) < entropy


def test_mutual_information_independent_noise_is_near_zero() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.random((256, 256)), rng.random((256, 256))
    # plug-in bias ~ (bins - 1)^2 / (2 N) = 225 / 131072 = 0.0017 nats
    assert mutual_information(a, b, bins=16) < 0.01
    # an increasing affine map moves the bin edges with the data: MI = H(A), about log 16
    assert mutual_information(a, 2 * a + 1, bins=16) == pytest.approx(mutual_information(a, a, bins=16))
    assert mutual_information(a, 2 * a + 1, bins=16) == pytest.approx(np.log(16), abs=0.01)
    assert normalized_mutual_information(a, b, bins=16) == pytest.approx(1.0, abs=0.01)


def test_mutual_information_falls_with_misalignment(image) -> None:
    values = [mutual_information(image, np.roll(image, s, axis=1), bins=32) for s in (0, 1, 3, 8)]
    assert np.all(np.diff(values) < 0)


def test_normalized_mutual_information(image) -> None:
    assert normalized_mutual_information(image, image) == pytest.approx(2.0)
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert normalized_mutual_information(a, b, bins=2) == pytest.approx(1.0)  # (log2 + log2) / log4
    with pytest.raises(InputError):
        normalized_mutual_information(np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(InputError):
        mutual_information(a, b, bins=1)


def test_ssim_matches_skimage(image) -> None:
    other = np.clip(image + np.random.default_rng(3).normal(0, 0.05, image.shape), 0, 1)
    expected = structural_similarity(
        image, other, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(image, other) == pytest.approx(expected, abs=1e-12)
    assert ssim(image, image) == pytest.approx(1.0)
    assert ssim(255 * image, 255 * other, data_range=255) == pytest.approx(expected, abs=1e-9)


def test_mae_hand_value() -> None:
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    b = np.ones((2, 2))
    assert mae(a, b) == pytest.approx(1.0)  # (1 + 0 + 1 + 2) / 4
    assert mae(a, a) == 0.0


@pytest.mark.parametrize("metric", [ncc, mutual_information, normalized_mutual_information, ssim, mae])
def test_image_metric_validation(image, metric) -> None:
    bad = image.copy()
    bad[1, 1] = np.nan
    for args in [
        (image, image[:-1]),
        (bad, image),
        (image, np.where(image > 0.5, np.inf, image)),
        (np.zeros((0, 3)), np.zeros((0, 3))),
        (image[0], image[0]),  # 1-D
        (image[None, None], image[None, None]),  # 4-D
    ]:
        with pytest.raises(InputError):
            metric(*args)


# ---------------------------------------------------------------------------------------------
# endpoint error
# ---------------------------------------------------------------------------------------------
def test_endpoint_error_constant_fields() -> None:
    field = np.zeros((2, 6, 7))
    field[0], field[1] = 1.0, 2.0
    truth = np.zeros((2, 6, 7))
    truth[0], truth[1] = 4.0, 6.0
    assert endpoint_error(field, truth) == pytest.approx(5.0)  # |(-3, -4)|
    # spacing is (sx, sy), matching channel order: (-3 * 2, -4 * 0.5) -> sqrt(40)
    assert endpoint_error(field, truth, spacing=(2.0, 0.5)) == pytest.approx(np.sqrt(40.0))
    vol_f = np.zeros((3, 3, 4, 5))
    vol_t = np.zeros((3, 3, 4, 5))
    vol_t[0], vol_t[1], vol_t[2] = 1.0, 2.0, 2.0
    assert endpoint_error(vol_f, vol_t) == pytest.approx(3.0)
    assert endpoint_error(vol_f, vol_t, spacing=(1.0, 1.0, 2.0)) == pytest.approx(np.sqrt(21.0))


def test_endpoint_error_spacing_follows_channel_order() -> None:
    # error only along x (channel 0): spacing (sx=3, sy=1) must scale it by 3, not by 1
    field = np.zeros((2, 4, 4))
    truth = np.zeros((2, 4, 4))
    truth[0] = 1.0
    assert endpoint_error(field, truth, spacing=(3.0, 1.0)) == pytest.approx(3.0)
    assert endpoint_error(field, truth, spacing=(1.0, 3.0)) == pytest.approx(1.0)


def test_endpoint_error_mask() -> None:
    field = np.zeros((2, 4, 4))
    truth = np.zeros((2, 4, 4))
    truth[0, :2] = 2.0  # top half wrong by 2 pixels
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2] = True
    assert endpoint_error(field, truth) == pytest.approx(1.0)
    assert endpoint_error(field, truth, mask=mask) == pytest.approx(2.0)
    assert endpoint_error(field, truth, mask=~mask) == pytest.approx(0.0)
    with pytest.raises(InputError):
        endpoint_error(field, truth, mask=np.zeros((4, 4), dtype=bool))
    with pytest.raises(InputError):
        endpoint_error(field, truth, mask=mask[:3])


def test_endpoint_error_validation() -> None:
    f2 = np.zeros((2, 4, 4))
    for bad in [
        (f2, np.zeros((2, 4, 5))),  # grid mismatch
        (np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 4))),  # batch axis
        (np.zeros((3, 4, 4)), np.zeros((3, 4, 4))),  # 3 channels on a 2-D grid
        (np.full((2, 4, 4), np.nan), f2),
        (np.zeros((2, 0, 4)), np.zeros((2, 0, 4))),
    ]:
        with pytest.raises(InputError):
            endpoint_error(*bad)
    for spacing in [(1.0,), (1.0, 0.0), (1.0, -2.0), (1.0, np.nan)]:
        with pytest.raises(InputError):
            endpoint_error(f2, f2, spacing=spacing)


# ---------------------------------------------------------------------------------------------
# Jacobian determinant and folding
# ---------------------------------------------------------------------------------------------
def test_jacobian_of_2d_affine_field_is_det_a() -> None:
    m = np.array([[1.2, 0.3], [-0.1, 0.9]])  # rows/cols in (x, y) order
    det = jacobian_determinant(_affine_field(m, (9, 11)))
    assert det.shape == (9, 11)
    np.testing.assert_allclose(det, np.linalg.det(m), atol=1e-12)


def test_jacobian_of_3d_affine_field_is_det_a() -> None:
    m = np.array([[1.1, 0.2, -0.3], [0.05, 0.8, 0.1], [0.4, -0.2, 1.3]])  # (x, y, z) order
    det = jacobian_determinant(_affine_field(m, (5, 6, 7)))
    assert det.shape == (5, 6, 7)
    np.testing.assert_allclose(det, np.linalg.det(m), atol=1e-12)
    # m is chosen so that reading the channels in (z, y, x) order would change the determinant
    wrong = np.linalg.det(np.eye(3) + (m - np.eye(3))[::-1])
    assert abs(wrong - np.linalg.det(m)) > 0.1


def test_jacobian_channel_order_x_is_last_axis() -> None:
    s = 0.5
    h, w = 6, 8
    yy, xx = np.mgrid[:h, :w].astype(float)
    # x-displacement growing along x (last axis): a stretch, det = 1 + s
    stretch = np.stack([s * xx, np.zeros_like(xx)])
    np.testing.assert_allclose(jacobian_determinant(stretch), 1 + s, atol=1e-12)
    # x-displacement growing along y: a shear, det = 1 (a channel/axis swap gives 1 + s)
    shear = np.stack([s * yy, np.zeros_like(yy)])
    np.testing.assert_allclose(jacobian_determinant(shear), 1.0, atol=1e-12)
    # u = (a x, b y): det = (1 + a)(1 + b); a swap bug gives 1 - a b
    a, b = 0.5, -0.2
    det = jacobian_determinant(np.stack([a * xx, b * yy]))
    np.testing.assert_allclose(det, (1 + a) * (1 + b), atol=1e-12)
    # 3-D: z-displacement (channel 2) growing along z (first axis)
    zz = np.mgrid[:4, :5, :6][0].astype(float)
    field = np.zeros((3, 4, 5, 6))
    field[2] = s * zz
    np.testing.assert_allclose(jacobian_determinant(field), 1 + s, atol=1e-12)
    field = np.zeros((3, 4, 5, 6))
    field[0] = s * zz  # x-displacement growing along z: shear
    np.testing.assert_allclose(jacobian_determinant(field), 1.0, atol=1e-12)


def test_jacobian_matches_bsafusion_warp_convention() -> None:
    # a field built with the package's own affine generator has det = det of its linear part
    from bsafusion import deform

    h, w = 16, 20
    yy, xx = np.mgrid[:h, :w].astype(float)
    u = np.stack([0.25 * (xx - w / 2), np.zeros_like(xx)])  # stretch x by 1.25 (pull)
    image = (np.abs(xx - w / 2) < 3).astype(float)
    warped = deform.warp_numpy(image, u)
    # pulling with a stretch of 1.25 shrinks the bar: warped(p) = image(1.25 (x - w/2) + w/2)
    assert warped.sum() < image.sum()
    np.testing.assert_allclose(jacobian_determinant(u), 1.25, atol=1e-12)


def test_folding_fraction() -> None:
    assert folding_fraction(np.zeros((2, 12, 12))) == 0.0
    # smooth bump in u_x: du_x/dx = -A/(sigma sqrt(e)) ~ -2 < -1 in a band -> folding there only
    h, w = 20, 40
    xx = np.mgrid[:h, :w][1].astype(float)
    bump = 10.0 * np.exp(-((xx - 20) ** 2) / (2 * 3.0**2))
    field = np.stack([bump, np.zeros_like(bump)])
    det = jacobian_determinant(field)
    frac = folding_fraction(field)
    assert 0.0 < frac < 0.5
    assert frac == pytest.approx(np.mean(det <= 0))
    # the same bump on the y channel along x is a shear: no folding
    assert folding_fraction(np.stack([np.zeros_like(bump), bump])) == 0.0
    # mask: only the folded columns
    mask = det <= 0
    assert folding_fraction(field, mask=mask) == 1.0
    assert folding_fraction(field, mask=~mask) == 0.0
    # collapsing x onto a single column (det = 0 exactly) counts as folding (det <= 0)
    assert folding_fraction(np.stack([-xx, np.zeros_like(xx)])) == 1.0
    # a global mirror flip folds everywhere
    assert folding_fraction(np.stack([-2.0 * xx, np.zeros_like(xx)])) == 1.0


def test_jacobian_validation() -> None:
    for bad in [np.zeros((2, 1, 5)), np.zeros((2, 5)), np.zeros((1, 2, 5, 5)), np.full((2, 4, 4), np.inf)]:
        with pytest.raises(InputError):
            jacobian_determinant(bad)
