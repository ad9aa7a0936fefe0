"""Tests of bsafusion.evaluation.metrics.fusion: hand-computed cases, identities, monotonicity, validation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from bsafusion.errors import InputError
from bsafusion.evaluation.metrics import FUSION_METRICS, HIGHER_IS_BETTER, q_abf, q_cv, q_s, q_ssim, q_vif

SIZE = 64


def _smooth_noise(seed: int, size: int = SIZE, sigma: float = 2.0) -> np.ndarray:
    x = ndimage.gaussian_filter(np.random.default_rng(seed).random((size, size)), sigma)
    return (x - x.min()) / (x.max() - x.min())


@pytest.fixture(scope="module")
def sources() -> tuple[np.ndarray, np.ndarray]:
    """Two different [0, 1] 'modalities': textures plus a disc (A) and a rectangle (B)."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    a = 0.6 * _smooth_noise(1) + 0.4 * (((xx - 20) ** 2 + (yy - 30) ** 2) < 150)
    b = 0.6 * _smooth_noise(2) + 0.4 * ((np.abs(xx - 40) < 10) & (np.abs(yy - 35) < 15))
    return a, b


# Sigmoid factors of Q_AB/F computed by hand from the published constants.
_QG = lambda g: 0.9994 / (1 + np.exp(-15 * (g - 0.5)))  # noqa: E731
_QA = lambda o: 0.9879 / (1 + np.exp(-22 * (o - 0.8)))  # noqa: E731
_QABF_MAX = _QG(1.0) * _QA(1.0)  # 0.998847 * 0.975919 = 0.974793


def _mannos_sakrison(r: float) -> float:
    return 2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1))


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
def test_registry_covers_every_fusion_metric() -> None:
    assert set(FUSION_METRICS) == {"q_abf", "q_cv", "q_vif", "q_s", "q_ssim"}
    assert set(FUSION_METRICS) <= set(HIGHER_IS_BETTER)
    assert HIGHER_IS_BETTER["q_cv"] is False
    assert all(HIGHER_IS_BETTER[k] for k in FUSION_METRICS if k != "q_cv")


# ---------------------------------------------------------------------------------------------
# Q_AB/F
# ---------------------------------------------------------------------------------------------
def test_q_abf_source_with_itself_is_the_constant_product(sources) -> None:
    a, _ = sources
    assert _QABF_MAX == pytest.approx(0.974793, abs=1e-6)
    assert q_abf(a, a, a) == pytest.approx(_QABF_MAX, abs=1e-12)


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_q_abf_contrast_change_hand_value(sources, factor: float) -> None:
    # F = factor * A: every gradient ratio is 1/2, every orientation equal, so
    # Q^{AF} = Q_g(0.5) Q_alpha(1) at every pixel, whatever the weights.
    a, _ = sources
    expected = _QG(0.5) * _QA(1.0)
    assert expected == pytest.approx(0.4997 * 0.975919, abs=1e-5)
    assert q_abf(factor * a, a, a) == pytest.approx(expected, abs=1e-12)


def test_q_abf_gradient_weights_hand_value(sources) -> None:
    # F = A, B = 2A: Q^{AF} is the maximum everywhere, Q^{BF} = Q_g(0.5) Q_alpha(1) everywhere,
    # and the weights are g_A and g_B = 2 g_A, so Q = (Q_max + 2 Q_half) / 3 (L = 1).
    a, _ = sources
    half = _QG(0.5) * _QA(1.0)
    assert q_abf(a, a, 2 * a) == pytest.approx((_QABF_MAX + 2 * half) / 3, abs=1e-12)


def test_q_abf_orientation_difference_is_taken_modulo_pi() -> None:
    # Horizontal edges (s_x = 0 -> alpha = pi/2). Tilting them by a tiny +/- x-ramp moves alpha
    # to pi/2 - eps or -pi/2 + eps: the same edge line either way, so both must score alike and
    # high (without the wrap, the -pi/2 side would count as opposite and score about 0).
    yy, xx = np.mgrid[:32, :32].astype(float)
    a = yy / 31.0
    up = q_abf(a + 1e-3 * xx / 31.0, a, a)
    down = q_abf(a - 1e-3 * xx / 31.0, a, a)
    assert up > 0.9 and down > 0.9
    assert up == pytest.approx(down, abs=1e-3)


def test_q_abf_range_and_symmetry(sources) -> None:
    a, b = sources
    rng = np.random.default_rng(3)
    for fused in (0.5 * (a + b), np.maximum(a, b), rng.random(a.shape), a):
        value = q_abf(fused, a, b)
        assert 0.0 <= value <= _QABF_MAX + 1e-12
        assert q_abf(fused, b, a) == pytest.approx(value, abs=1e-12)
    # a fused image equal to one source is between nothing and everything
    assert 0.2 < q_abf(a, a, b) < _QABF_MAX


def test_q_abf_is_scale_invariant(sources) -> None:
    a, b = sources
    f = 0.5 * (a + b)
    assert q_abf(255 * f, 255 * a, 255 * b) == pytest.approx(q_abf(f, a, b), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Q_CV
# ---------------------------------------------------------------------------------------------
def test_q_cv_zero_for_identical_images(sources) -> None:
    a, b = sources
    assert q_cv(a, a, a) == 0.0
    assert q_cv(b, b, b) == 0.0


def test_q_cv_constant_offset_hand_value(sources) -> None:
    # F = A + c: the difference is pure DC, the CSF at r = 0 is 2.6 * 0.0192, images are
    # rescaled by 255 / data_range, so D = (255 c * 0.04992)^2 in every region.
    a, _ = sources
    c = 0.1
    expected = (255 * c * 2.6 * 0.0192) ** 2
    assert q_cv(a + c, a, a) == pytest.approx(expected, rel=1e-9)
    assert q_cv(255 * (a + c), 255 * a, 255 * a, data_range=255) == pytest.approx(expected, rel=1e-9)


def test_q_cv_sinusoid_hand_value(sources) -> None:
    # A 4-cycles-per-image sinusoid along x on a 64 x 64 grid: r = 4 / 4 = 1 cycle/degree in
    # the reference frequency mapping; each 16-pixel region holds one full period, so
    # D = (255 amp S(1))^2 / 2 in every region, whatever the saliency weights.
    a, _ = sources
    amp = 0.05
    xx = np.arange(SIZE)[None, :].repeat(SIZE, axis=0)
    wave = amp * np.sin(2 * np.pi * 4 * xx / SIZE)
    expected = (255 * amp * _mannos_sakrison(1.0)) ** 2 / 2
    assert q_cv(a + wave, a, a) == pytest.approx(expected, rel=1e-9)
    # along y at 8 cycles: r = 2 cycles/degree
    wave_y = amp * np.sin(2 * np.pi * 8 * xx.T / SIZE)
    assert q_cv(a + wave_y, a, a) == pytest.approx((255 * amp * _mannos_sakrison(2.0)) ** 2 / 2, rel=1e-9)


def test_q_cv_saliency_weighting_hand_value() -> None:
    # A has edges only in the left part, B only in the right; F = A everywhere. Regions are
    # weighted by the sources' own gradient sums (alpha = 1): Q = sum(lam_B D_B) /
    # sum(lam_A + lam_B). 40 is not a multiple of 16: the last row/column of regions is
    # 8 pixels wide and keeps its own pixels. Checked against a region-by-region computation.
    n = 40
    xx = np.arange(n)[None, :].repeat(n, axis=0).astype(float)
    yy = xx.T
    a = np.where(xx < 16, np.where((xx - 8) ** 2 + (yy - 20) ** 2 < 30, 0.8, 0.2), 0.5)
    b = np.where(xx >= 16, np.where(yy < 34, 0.3, 0.9) + 0.2 * (xx > 30), 0.5)
    value = q_cv(a, a, b, window=16)
    diff = 255 * (b - a)
    u = np.fft.fftfreq(n) * n / 4
    r = np.hypot(u[None, :], u[:, None])
    filt = np.real(np.fft.ifft2(np.fft.fft2(diff) * _mannos_sakrison(r)))
    grad = lambda x: np.hypot(  # noqa: E731
        ndimage.correlate(x, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], mode="constant"),
        ndimage.correlate(x, [[-1, -2, -1], [0, 0, 0], [1, 2, 1]], mode="constant"),
    )
    ga, gb = grad(255 * a), grad(255 * b)
    num = den = 0.0
    for i in (0, 16, 32):
        for j in (0, 16, 32):
            blk = (slice(i, i + 16), slice(j, j + 16))
            num += gb[blk].sum() * np.mean(filt[blk] ** 2)
            den += ga[blk].sum() + gb[blk].sum()
    assert value == pytest.approx(num / den, rel=1e-9)
    assert q_cv(a, b, a, window=16) == pytest.approx(value, rel=1e-12)


def test_q_cv_symmetry(sources) -> None:
    a, b = sources
    f = 0.5 * (a + b)
    assert q_cv(f, b, a) == pytest.approx(q_cv(f, a, b), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Q_VIF (VIFF)
# ---------------------------------------------------------------------------------------------
def test_q_vif_identity_offset_and_contrast(sources) -> None:
    a, _ = sources
    assert q_vif(a, a, a) == pytest.approx(1.0, abs=1e-9)
    # a constant offset carries all the information: g = 1, no distortion
    assert q_vif(a + 0.1, a, a) == pytest.approx(1.0, abs=1e-9)
    # contrast reduction loses information, contrast enhancement scores above 1 (VIF property)
    assert q_vif(0.5 * a, a, a) < q_vif(0.8 * a, a, a) < 1.0 < q_vif(1.3 * a, a, a)


def _gaussian_second_moment(size: int) -> float:
    """sum_t w(t) t^2 for the 1-D marginal of fspecial('gaussian', size, size / 5)."""
    t = np.arange(-(size // 2), size // 2 + 1, dtype=float)
    w = np.exp(-(t**2) / (2 * (size / 5) ** 2))
    return float(np.sum(w * t**2) / w.sum())


@pytest.mark.parametrize("gain", [0.5, 1.5])
def test_q_vif_linear_ramp_hand_value(gain: float) -> None:
    # On a linear ramp every Gaussian window sees the same variance slope^2 * m2(window);
    # low-pass + 2x downsampling keeps a ramp and doubles its slope per pixel. With F = gain * A
    # the model gives g = gain and no distortion, so at scale k
    #   VIFF_k = (log10(1 + gain^2 X_k) + C) / (log10(1 + X_k) + C),  X_k = sigma_k^2 / sigma_n^2,
    # sigma_n^2 = 0.005 * 255^2, C = 1e-7, and VIFF = sum_k p_k VIFF_k, p = [1, 0, .15, 1] / 2.15.
    n = 64
    a = np.tile(np.arange(n) / (n - 1.0), (n, 1))
    weights = np.array([1.0, 0.0, 0.15, 1.0]) / 2.15
    expected = 0.0
    for k in range(1, 5):
        slope = 255.0 / (n - 1) * 2 ** (k - 1)  # 8-bit grey levels per pixel at scale k
        x_k = slope**2 * _gaussian_second_moment(2 ** (5 - k) + 1) / (0.005 * 255.0**2)
        expected += weights[k - 1] * (np.log10(1 + gain**2 * x_k) + 1e-7) / (np.log10(1 + x_k) + 1e-7)
    assert q_vif(gain * a, a, a) == pytest.approx(expected, rel=1e-9)
    assert q_vif(255 * gain * a, 255 * a, 255 * a, data_range=255) == pytest.approx(expected, rel=1e-9)


def test_q_vif_keeps_the_worse_preserved_source(sources) -> None:
    # Per pixel VIFF keeps the source with the smaller gain (authors' code): a fused image
    # that copies A and ignores an unrelated B scores low, far below the average fusion,
    # although it preserves A perfectly.
    a, b = sources
    assert q_vif(a, a, b) < 0.05
    assert q_vif(a, a, b) < 0.5 * q_vif(0.5 * (a + b), a, b)


def test_q_vif_source_versus_blurred_source(sources) -> None:
    a, b = sources
    blurred = ndimage.gaussian_filter(a, 1.5)
    assert q_vif(a, a, a) > q_vif(blurred, a, a) + 0.1
    f = 0.5 * (a + b)
    assert q_vif(f, a, b) > q_vif(ndimage.gaussian_filter(f, 1.5), a, b)


def test_q_vif_symmetry_and_data_range(sources) -> None:
    a, b = sources
    f = 0.5 * (a + b)
    value = q_vif(f, a, b)
    assert q_vif(f, b, a) == pytest.approx(value, rel=1e-9)
    assert q_vif(255 * f, 255 * a, 255 * b, data_range=255) == pytest.approx(value, rel=1e-9)
    # the visual-noise constant is tied to the range: a wrong data_range changes the value
    assert q_vif(255 * f, 255 * a, 255 * b, data_range=1.0) != pytest.approx(value, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# Q_S (Piella)
# ---------------------------------------------------------------------------------------------
def _uiqi(x: np.ndarray, y: np.ndarray) -> float:
    """Wang-Bovik Q0 over one whole window, straight from the paper's formula."""
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    cxy = np.sum((x - mx) * (y - my)) / (x.size - 1)
    return 4 * cxy * mx * my / ((vx + vy) * (mx**2 + my**2))


def test_q_s_single_window_hand_value() -> None:
    rng = np.random.default_rng(5)
    a, b, f = rng.random((8, 8)), rng.random((8, 8)), rng.random((8, 8))
    lam = a.var() / (a.var() + b.var())
    expected = lam * _uiqi(a, f) + (1 - lam) * _uiqi(b, f)
    assert q_s(f, a, b) == pytest.approx(expected, rel=1e-10)


def test_q_s_sliding_windows_and_weighted_variant() -> None:
    rng = np.random.default_rng(6)
    a, b, f = rng.random((10, 11)), rng.random((10, 11)), rng.random((10, 11))
    local, weight = [], []
    for i in range(10 - 8 + 1):
        for j in range(11 - 8 + 1):
            w = (slice(i, i + 8), slice(j, j + 8))
            sa, sb = a[w].var(), b[w].var()
            lam = sa / (sa + sb)
            local.append(lam * _uiqi(a[w], f[w]) + (1 - lam) * _uiqi(b[w], f[w]))
            weight.append(max(sa, sb))
    local, weight = np.array(local), np.array(weight)
    assert len(local) == 12
    assert q_s(f, a, b) == pytest.approx(local.mean(), rel=1e-10)
    assert q_s(f, a, b, weighted=True) == pytest.approx(np.sum(weight * local) / weight.sum(), rel=1e-10)


def test_q_s_identity_and_flat_windows(sources) -> None:
    a, b = sources
    assert q_s(a, a, a) == pytest.approx(1.0, abs=1e-12)
    assert q_s(a, a, a, weighted=True) == pytest.approx(1.0, abs=1e-12)
    const = np.full((16, 16), 0.3)
    assert q_s(const, const, const) == 1.0  # 0/0 everywhere: Wang-Bovik's rule gives 1
    # flat sources and fused with different means: Q0 = 2 mx my / (mx^2 + my^2)
    assert q_s(np.full((16, 16), 0.6), const, const) == pytest.approx(2 * 0.18 / (0.09 + 0.36), rel=1e-12)


def test_q_s_symmetry(sources) -> None:
    a, b = sources
    f = 0.5 * (a + b)
    assert q_s(f, b, a) == pytest.approx(q_s(f, a, b), rel=1e-12)
    assert q_s(f, b, a, weighted=True) == pytest.approx(q_s(f, a, b, weighted=True), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Q_SSIM
# ---------------------------------------------------------------------------------------------
def test_q_ssim_matches_skimage(sources) -> None:
    a, b = sources
    f = np.clip(0.5 * (a + b) + np.random.default_rng(7).normal(0, 0.02, a.shape), 0, 1)
    opts = dict(data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    expected = 0.5 * (structural_similarity(f, a, **opts) + structural_similarity(f, b, **opts))
    assert q_ssim(f, a, b) == pytest.approx(expected, abs=1e-12)
    assert q_ssim(a, a, a) == pytest.approx(1.0, abs=1e-12)
    assert q_ssim(f, b, a) == pytest.approx(q_ssim(f, a, b), abs=1e-12)
    opts255 = dict(opts, data_range=255.0)
    f8, a8, b8 = 255 * f, 255 * a, 255 * b
    expected255 = 0.5 * (structural_similarity(f8, a8, **opts255) + structural_similarity(f8, b8, **opts255))
    assert q_ssim(f8, a8, b8, data_range=255) == pytest.approx(expected255, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# all metrics: degradation must be monotonic
# ---------------------------------------------------------------------------------------------
def _assert_monotonic(name: str, values: list[float]) -> None:
    steps = np.diff(values)
    if HIGHER_IS_BETTER[name]:
        assert np.all(steps < 0), f"{name} should fall as the fused image degrades: {values}"
    else:
        assert np.all(steps > 0), f"{name} should rise as the fused image degrades: {values}"


@pytest.mark.parametrize("name", sorted(FUSION_METRICS))
def test_metric_degrades_with_blur(sources, name: str) -> None:
    a, b = sources
    fused = 0.5 * (a + b)
    metric = FUSION_METRICS[name]
    values = [metric(fused, a, b)] + [metric(ndimage.gaussian_filter(fused, s), a, b) for s in (1, 2, 4)]
    _assert_monotonic(name, values)


@pytest.mark.parametrize("name", sorted(FUSION_METRICS))
def test_metric_degrades_with_noise(sources, name: str) -> None:
    a, b = sources
    fused = 0.5 * (a + b)
    noise = np.random.default_rng(8).normal(size=a.shape)
    metric = FUSION_METRICS[name]
    values = [metric(fused + s * noise, a, b) for s in (0.0, 0.02, 0.05, 0.1)]
    _assert_monotonic(name, values)


# ---------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FUSION_METRICS))
def test_invalid_inputs_raise_input_error(sources, name: str) -> None:
    a, b = sources
    metric = FUSION_METRICS[name]
    bad_nan = a.copy()
    bad_nan[3, 4] = np.nan
    bad_inf = b.copy()
    bad_inf[0, 0] = np.inf
    cases = [
        (np.stack([a, a]), a, b),  # 3-D
        (a[0], a, b),  # 1-D
        (a[:, :-1], a, b),  # shape mismatch, fused
        (a, a, b[:-2]),  # shape mismatch, source
        (bad_nan, a, b),
        (a, a, bad_inf),
        (np.zeros((0, 0)), np.zeros((0, 0)), np.zeros((0, 0))),  # empty
        (a.astype(str), a, b),  # not numeric
    ]
    for args in cases:
        with pytest.raises(InputError):
            metric(*args)


@pytest.mark.parametrize("metric", [q_cv, q_vif, q_s, q_ssim])
def test_bad_data_range_raises(sources, metric) -> None:
    a, b = sources
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(InputError):
            metric(a, a, b, data_range=bad)


def test_too_small_or_gradient_free_images_raise() -> None:
    small = np.random.default_rng(9).random((40, 40))
    with pytest.raises(InputError):
        q_vif(small, small, small)  # the 4th VIFF scale would be empty
    assert np.isfinite(q_vif(*(np.random.default_rng(9).random((41, 41)),) * 3))
    with pytest.raises(InputError):
        q_ssim(small[:10, :10], small[:10, :10], small[:10, :10])
    with pytest.raises(InputError):
        q_s(small[:7, :7], small[:7, :7], small[:7, :7])
    zero = np.zeros((16, 16))
    with pytest.raises(InputError):
        q_abf(small[:16, :16], zero, zero)
    with pytest.raises(InputError):
        q_cv(small[:16, :16], zero, zero)
    with pytest.raises(InputError):
        q_vif(small[:41, :41], np.ones((41, 41)), np.ones((41, 41)))
