"""Fusion metrics of the BSAFusion paper: Q_AB/F, Q_CV, Q_VIF, Q_S and Q_SSIM.

Every function takes the fused image first, then the two source images: ``metric(fused, a, b)``.
Inputs are 2-D arrays of the same shape and the **same intensity scale**, normally ``[0, 1]``
(float images of this package) or ``[0, 255]`` (8-bit images); they are computed in float64.

Intensity range (one rule for all)
----------------------------------
Where a definition has constants tied to an intensity scale, the function takes
``data_range`` (default 1.0, i.e. images in ``[0, 1]``; pass 255 for 8-bit images) and
**rescales internally** to the scale the constants were published for:

* :func:`q_cv` and :func:`q_vif` rescale to ``[0, 255]`` (``x * 255 / data_range``) because
  their published constants (Q_CV's squared-grey-level errors, VIFF's visual-noise variance
  ``0.005 * 255^2``) assume 8-bit grey levels. Q_CV *values* therefore are in 8-bit grey levels
  squared whatever the input scale, so they are comparable with published tables.
* :func:`q_ssim` passes ``data_range`` to SSIM (constants ``C1 = (0.01 L)^2, C2 = (0.03 L)^2``).
* :func:`q_s` uses ``data_range`` only to decide when a window is flat (standard deviation
  below ``1e-6 * data_range``); the index itself is scale-invariant.
* :func:`q_abf` is scale-invariant (ratios of gradient strengths and orientations) and has no
  ``data_range``.

Higher is better for all of them except :func:`q_cv` (lower is better); see
:data:`bsafusion.evaluation.metrics.HIGHER_IS_BETTER`.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from bsafusion.errors import InputError
from bsafusion.checks import as_images, check_data_range, check_int, check_min_size
from bsafusion.evaluation.metrics.registration import ssim

__all__ = ["q_abf", "q_cv", "q_vif", "q_s", "q_ssim", "mannos_sakrison"]

_NAMES = ("fused", "a", "b")

# Sobel kernels, for correlation: _SOBEL_X differentiates along x (columns), _SOBEL_Y along y.
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = _SOBEL_X.T


def _inputs(
    fused: np.ndarray, a: np.ndarray, b: np.ndarray, data_range: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The three images validated as float64 of one shape, and the checked ``data_range``."""
    fused, a, b = as_images(_NAMES, (fused, a, b))
    return fused, a, b, check_data_range(data_range)


def _to_8bit_scale(data_range: float, *images: np.ndarray) -> list[np.ndarray]:
    """``images`` rescaled by ``255 / data_range``, the grey-level scale of 8-bit constants."""
    scale = 255.0 / data_range
    return [x * scale for x in images]


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel responses ``(s_x, s_y)`` with zero padding (MATLAB ``conv2(..., 'same')``)."""
    sx = ndimage.correlate(x, _SOBEL_X, mode="constant", cval=0.0)
    sy = ndimage.correlate(x, _SOBEL_Y, mode="constant", cval=0.0)
    return sx, sy


# --------------------------------------------------------------------------------------------
# Q_AB/F
# --------------------------------------------------------------------------------------------
QABF_CONSTANTS = {
    "gamma_g": 0.9994, "kappa_g": -15.0, "sigma_g": 0.5,  # edge strength sigmoid
    "gamma_a": 0.9879, "kappa_a": -22.0, "sigma_a": 0.8,  # orientation sigmoid
}


def _edge_preservation(
    g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray
) -> np.ndarray:
    """Per-pixel edge preservation ``Q^{XF} = Q_g^{XF} Q_alpha^{XF}`` of source X in F."""
    c = QABF_CONSTANTS
    hi = np.maximum(g_src, g_f)
    lo = np.minimum(g_src, g_f)
    strength = np.ones_like(hi)  # equal strengths (both zero included) are perfectly preserved
    np.divide(lo, hi, out=strength, where=hi > 0)
    d = np.abs(a_src - a_f)
    d = np.minimum(d, np.pi - d)  # angle between two lines, orientations being defined mod pi
    orient = 1.0 - d / (np.pi / 2.0)
    q_g = c["gamma_g"] / (1.0 + np.exp(c["kappa_g"] * (strength - c["sigma_g"])))
    q_a = c["gamma_a"] / (1.0 + np.exp(c["kappa_a"] * (orient - c["sigma_a"])))
    return q_g * q_a


def _strength_orientation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx, sy = _sobel(x)
    g = np.hypot(sx, sy)
    ratio = np.zeros_like(sx)
    nz = sx != 0
    np.divide(sy, sx, out=ratio, where=nz)
    alpha = np.where(nz, np.arctan(ratio), np.pi / 2.0)
    return g, alpha


def q_abf(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Gradient-based fusion performance Q^{AB/F} of Xydeas and Petrovic.

    For each source X in {A, B}, Sobel filters (zero padding at the border) give the edge
    strength ``g = sqrt(s_x^2 + s_y^2)`` and orientation ``alpha = arctan(s_y / s_x)``
    (``pi/2`` where ``s_x = 0``). The relative strength is ``G^{XF} = min(g_X, g_F) /
    max(g_X, g_F)`` (1 where both are equal) and the relative orientation
    ``A^{XF} = 1 - |alpha_X - alpha_F| / (pi/2)``, where the orientation difference is the angle
    between the two edge lines (taken modulo pi, so it lies in ``[0, pi/2]``). They are
    mapped by sigmoids ``Q_g = Gamma_g / (1 + exp(kappa_g (G - sigma_g)))`` and
    ``Q_alpha = Gamma_a / (1 + exp(kappa_a (A - sigma_a)))`` with the standard constants
    ``Gamma_g = 0.9994, kappa_g = -15, sigma_g = 0.5, Gamma_a = 0.9879, kappa_a = -22,
    sigma_a = 0.8``, and ``Q^{XF} = Q_g Q_alpha``. The result is
    ``sum(Q^{AF} w_A + Q^{BF} w_B) / sum(w_A + w_B)`` with weights ``w_X = g_X^L``, ``L = 1``.

    Implementation details follow the widely used MATLAB code of the VIFB benchmark
    (``metricsQabf.m``) [3]_: Sobel kernels, zero padding, ``arctan`` (not ``arctan2``),
    ``pi/2`` for vertical gradients, weights ``g^1``. Two deliberate differences, both fixing
    corner cases: (i) VIFB sets ``G^{XF} = g_F`` instead of 1 when ``g_X == g_F``, which makes
    the result depend on the intensity scale; (ii) VIFB uses ``|alpha_X - alpha_F|`` without
    wrapping, so two nearly horizontal edges at +89 and -89 degrees count as opposite; here,
    as in Z. Liu's fusion-metrics toolbox (``metricXydeas.m``) [4]_, the difference is taken
    modulo pi. With these constants a fused image identical to both sources scores
    ``Q_g(1) Q_alpha(1) = 0.99885 * 0.97592 = 0.9748``, not 1: the published constants are
    used as they are, for comparability with published tables.

    Parameters
    ----------
    fused, a, b : ndarray
        2-D images of the same shape and intensity scale (any scale: the metric is
        scale-invariant).

    Returns
    -------
    float
        Q^{AB/F} in ``[0, 0.9748]``. Higher is better. Raises :class:`InputError` when both
        sources have no gradient at all (the weights sum to zero).

    References
    ----------
    .. [1] C. S. Xydeas and V. Petrovic, "Objective image fusion performance measure,"
       Electronics Letters, vol. 36, no. 4, pp. 308-309, 2000.
    .. [2] V. Petrovic and C. Xydeas, "Objective image fusion performance characterisation,"
       Proc. Tenth IEEE International Conference on Computer Vision (ICCV), vol. 2,
       pp. 1866-1871, 2005.
    .. [3] X. Zhang, P. Ye and G. Xiao, "VIFB: A visible and infrared image fusion benchmark,"
       Proc. IEEE/CVF CVPR Workshops, pp. 468-478, 2020.
    .. [4] Z. Liu, E. Blasch, Z. Xue, J. Zhao, R. Laganiere and W. Wu, "Objective assessment of
       multiresolution image fusion algorithms for context enhancement in night vision: a
       comparative study," IEEE Transactions on Pattern Analysis and Machine Intelligence,
       vol. 34, no. 1, pp. 94-109, 2012.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> a = ndimage.gaussian_filter(np.random.default_rng(0).random((32, 32)), 2)
    >>> round(q_abf(a, a, a), 4)
    0.9748
    """
    fused, a, b = as_images(_NAMES, (fused, a, b))
    g_f, a_f = _strength_orientation(fused)
    g_a, a_a = _strength_orientation(a)
    g_b, a_b = _strength_orientation(b)
    den = float(np.sum(g_a + g_b))
    if den == 0:
        raise InputError("q_abf is undefined: neither source image has any gradient")
    num = np.sum(_edge_preservation(g_a, a_a, g_f, a_f) * g_a + _edge_preservation(g_b, a_b, g_f, a_f) * g_b)
    return float(num / den)


# --------------------------------------------------------------------------------------------
# Q_CV
# --------------------------------------------------------------------------------------------
def _block_reduce(x: np.ndarray, size: int, func) -> np.ndarray:
    """Apply ``func`` over non-overlapping ``size x size`` blocks (partial edge blocks kept)."""
    rows = range(0, x.shape[0], size)
    cols = range(0, x.shape[1], size)
    return np.array([[func(x[i : i + size, j : j + size]) for j in cols] for i in rows])


def mannos_sakrison(shape: tuple[int, int], reference_size: int | None = None) -> np.ndarray:
    """Mannos-Sakrison CSF sampled on the (unshifted) FFT grid of an image of ``shape``.

    Frequencies follow the reference implementation of Q_CV: normalised frequency
    (Nyquist = 1, MATLAB ``freqspace``) times ``size / 8``, i.e. ``k / 4`` cycles per degree
    for integer frequency index ``k`` (cycles per image). The same pixel pattern therefore
    counts differently in a 128-pixel crop and in a 256-pixel image; with ``reference_size``
    every axis is mapped as that size's would be (frequency per pixel times
    ``reference_size / 4``), so a crop is filtered as the full image it came from.
    """
    h, w = shape
    u = np.fft.fftfreq(w) * 2.0 * ((reference_size or w) / 8.0)
    v = np.fft.fftfreq(h) * 2.0 * ((reference_size or h) / 8.0)
    r = np.hypot(u[None, :], v[:, None])
    return 2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1))


def q_cv(
    fused: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 1.0,
    window: int = 16,
    alpha: float = 1.0,
) -> float:
    """Chen-Varshney human-perception-inspired fusion metric Q_CV (lower is better).

    The images are rescaled to ``[0, 255]`` (``x * 255 / data_range``) and split into
    non-overlapping ``window x window`` regions (partial regions at the bottom/right border
    are kept, with their actual pixels). For each region W:

    * saliency ``lambda_X(W) = sum_{p in W} g_X(p)^alpha``, ``g_X`` the Sobel gradient magnitude
      of source X (zero padding);
    * the difference image ``X - F`` is filtered in the frequency domain by the
      Mannos-Sakrison contrast sensitivity function
      ``S(r) = 2.6 (0.0192 + 0.144 r) exp(-(0.144 r)^1.1)``, with ``r`` in cycles per degree
      mapped as in the reference code (normalised frequency times ``size / 8``);
      ``D_X(W)`` is the mean of the squared filtered difference over W;
    * ``Q_CV = sum_W (lambda_A D_A + lambda_B D_B) / sum_W (lambda_A + lambda_B)``.

    Follows Z. Liu's implementation (``metricChen.m``, also used by VIFB, ``metricsQcv.m``)
    except: (i) that code min-max normalises each image to 0..255 and rounds to integers;
    here the three images are rescaled with one common factor ``255 / data_range`` and not
    rounded, so a fused image with different contrast than the sources is not silently
    renormalised; (ii) that code uses ``alpha = 5``; the default here is ``alpha = 1`` (pass
    ``alpha=5`` to match it).

    Parameters
    ----------
    fused, a, b : ndarray
        2-D images of the same shape and intensity scale.
    data_range : float, optional
        Intensity range of the inputs (1.0 for ``[0, 1]``, 255 for ``[0, 255]``). Default 1.0.
    window : int, optional
        Side of the square local regions. Default 16 (as in the paper and reference code).
    alpha : float, optional
        Exponent of the edge strength in the regional saliency. Default 1.

    Returns
    -------
    float
        Q_CV >= 0 in squared 8-bit grey levels; 0 when the fused image equals both sources.
        Lower is better. Raises :class:`InputError` when neither source has any gradient.

    References
    ----------
    .. [1] H. Chen and P. K. Varshney, "A human perception inspired quality metric for image
       fusion based on regional information," Information Fusion, vol. 8, no. 2,
       pp. 193-207, 2007.
    .. [2] J. L. Mannos and D. J. Sakrison, "The effects of a visual fidelity criterion on the
       encoding of images," IEEE Transactions on Information Theory, vol. 20, no. 4,
       pp. 525-536, 1974.
    .. [3] Z. Liu, E. Blasch, Z. Xue, J. Zhao, R. Laganiere and W. Wu, "Objective assessment of
       multiresolution image fusion algorithms for context enhancement in night vision: a
       comparative study," IEEE Transactions on Pattern Analysis and Machine Intelligence,
       vol. 34, no. 1, pp. 94-109, 2012.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.random.default_rng(0).random((32, 32))
    >>> q_cv(a, a, a)
    0.0
    """
    fused, a, b, data_range = _inputs(fused, a, b, data_range)
    window = check_int(window, "window", 1)
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha <= 0:
        raise InputError(f"alpha must be a positive finite number, got {alpha!r}")
    fused, a, b = _to_8bit_scale(data_range, fused, a, b)

    lam = [_block_reduce(np.hypot(*_sobel(x)) ** alpha, window, np.sum) for x in (a, b)]
    csf = mannos_sakrison(fused.shape)
    dist = []
    for x in (a, b):
        filtered = np.real(np.fft.ifft2(np.fft.fft2(x - fused) * csf))
        dist.append(_block_reduce(filtered * filtered, window, np.mean))
    den = float(np.sum(lam[0] + lam[1]))
    if den == 0:
        raise InputError("q_cv is undefined: neither source image has any gradient")
    return float(np.sum(lam[0] * dist[0] + lam[1] * dist[1]) / den)


# --------------------------------------------------------------------------------------------
# Q_VIF (VIFF)
# --------------------------------------------------------------------------------------------
# VIFF's constants, shared with its differentiable training version (``training.losses.viff``)
VIFF_SCALE_WEIGHTS = np.array([1.0, 0.0, 0.15, 1.0]) / 2.15
VIFF_NOISE_VAR = 0.005 * 255.0 * 255.0  # visual noise sigma_n^2 for 8-bit grey levels
VIFF_EPS = 1e-10  # flat-window guard
VIFF_C = 1e-7  # additive constant of the scale scores
_VIFF_MIN_SIZE = 41  # smallest side for which the 4th scale is not empty


def _gaussian_valid(x: np.ndarray, size: int) -> np.ndarray:
    """``filter2(fspecial('gaussian', size, size / 5), x, 'valid')`` (odd ``size``).

    The kernel is separable (no coefficient falls below MATLAB's ``eps * max`` cut-off for
    these sizes), so two 1-D passes give the same result.
    """
    r = size // 2
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-(t * t) / (2.0 * (size / 5.0) ** 2))
    k /= k.sum()
    out = ndimage.correlate1d(x, k, axis=0, mode="constant")
    out = ndimage.correlate1d(out, k, axis=1, mode="constant")
    return out[r : x.shape[0] - r, r : x.shape[1] - r]


def _viff_maps(ref: np.ndarray, dist: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per scale: (VID map, VIND map, gain map g) of ``dist`` against ``ref`` (Sheikh-Bovik GSM)."""
    out = []
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1  # 17, 9, 5, 3
        if scale > 1:
            ref = _gaussian_valid(ref, n)[::2, ::2]
            dist = _gaussian_valid(dist, n)[::2, ::2]
        mu1 = _gaussian_valid(ref, n)
        mu2 = _gaussian_valid(dist, n)
        s1 = np.maximum(_gaussian_valid(ref * ref, n) - mu1 * mu1, 0.0)
        s2 = np.maximum(_gaussian_valid(dist * dist, n) - mu2 * mu2, 0.0)
        s12 = _gaussian_valid(ref * dist, n) - mu1 * mu2

        g = s12 / (s1 + VIFF_EPS)
        sv = s2 - g * s12
        flat1 = s1 < VIFF_EPS
        g[flat1] = 0.0
        sv[flat1] = s2[flat1]
        s1[flat1] = 0.0
        flat2 = s2 < VIFF_EPS
        g[flat2] = 0.0
        sv[flat2] = 0.0
        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0.0
        sv = np.maximum(sv, VIFF_EPS)

        vid = np.log10(1.0 + g * g * s1 / (sv + VIFF_NOISE_VAR))
        vind = np.log10(1.0 + s1 / VIFF_NOISE_VAR)
        out.append((vid, vind, g))
    return out


def q_vif(fused: np.ndarray, a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Visual information fidelity for fusion (VIFF) of Han, Cai, Cao and Xu (2013).

    This is the real VIFF, not the sum of two single-image VIF scores. The images are
    rescaled to ``[0, 255]``. For each source X and each of 4 scales (Gaussian windows of
    17, 9, 5, 3 pixels with ``sigma = size / 5``, 'valid' filtering, dyadic downsampling
    after low-pass filtering from scale 2 on), the Gaussian-scale-mixture channel model of
    Sheikh and Bovik gives, per pixel, the gain ``g = sigma_XF / sigma_X^2``, the distortion
    variance ``sigma_v^2 = sigma_F^2 - g sigma_XF`` and

    * visual information with distortion ``VID = log10(1 + g^2 sigma_X^2 / (sigma_v^2 +
      sigma_n^2))``,
    * visual information without distortion ``VIND = log10(1 + sigma_X^2 / sigma_n^2)``,

    with visual noise ``sigma_n^2 = 0.005 * 255^2`` and the usual guards for flat windows
    and negative gains. At each pixel the source with the **smaller** gain ``g`` is kept
    (ties: B), as in the authors' public code ``VIFF_Public.m``; the scale score is
    ``VIFF_k = sum(VID + C) / sum(VIND + C)`` with ``C = 1e-7``, and
    ``VIFF = sum_k p_k VIFF_k`` with scale weights ``p = [1, 0, 0.15, 1] / 2.15``.
    This follows the published definition and the authors' reference implementation
    (re-implemented here, not copied).

    Parameters
    ----------
    fused, a, b : ndarray
        2-D images of the same shape and intensity scale, at least 41 pixels per side
        (smaller images leave the coarsest scale empty).
    data_range : float, optional
        Intensity range of the inputs (1.0 for ``[0, 1]``, 255 for ``[0, 255]``); the visual
        noise constant is defined for 8-bit grey levels. Default 1.0.

    Returns
    -------
    float
        VIFF, about 1 when the fused image equals both sources; below 1 when information is
        lost (blur, noise), possibly above 1 for contrast-enhanced fusion. Higher is better.
        Raises :class:`InputError` when both sources are constant.

    References
    ----------
    .. [1] Y. Han, Y. Cai, Y. Cao and X. Xu, "A new image fusion performance metric based on
       visual information fidelity," Information Fusion, vol. 14, no. 2, pp. 127-135, 2013.
    .. [2] H. R. Sheikh and A. C. Bovik, "Image information and visual quality," IEEE
       Transactions on Image Processing, vol. 15, no. 2, pp. 430-444, 2006.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> a = ndimage.gaussian_filter(np.random.default_rng(0).random((64, 64)), 2)
    >>> round(q_vif(a, a, a), 6)
    1.0
    """
    fused, a, b, data_range = _inputs(fused, a, b, data_range)
    check_min_size(fused, _VIFF_MIN_SIZE, "q_vif")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        raise InputError("q_vif is undefined: both source images are constant (no information)")
    fused, a, b = _to_8bit_scale(data_range, fused, a, b)

    maps_a = _viff_maps(a, fused)
    maps_b = _viff_maps(b, fused)
    per_scale = []
    for (vid_a, vind_a, g_a), (vid_b, vind_b, g_b) in zip(maps_a, maps_b):
        take_a = g_a < g_b
        vid = np.where(take_a, vid_a, vid_b)
        vind = np.where(take_a, vind_a, vind_b)
        per_scale.append(np.sum(vid + VIFF_C) / np.sum(vind + VIFF_C))
    return float(np.dot(VIFF_SCALE_WEIGHTS, per_scale))


# --------------------------------------------------------------------------------------------
# Q_S (Piella)
# --------------------------------------------------------------------------------------------
def _box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over every ``size x size`` window fully inside ``x`` (sliding, step 1)."""
    rows = sliding_window_view(x, size, axis=0).mean(axis=-1)
    return sliding_window_view(rows, size, axis=1).mean(axis=-1)


def _uiqi_map(
    mx: np.ndarray, my: np.ndarray, vx: np.ndarray, vy: np.ndarray, cxy: np.ndarray, tol: float
) -> np.ndarray:
    """Wang-Bovik UIQI per window from local means, variances and covariance.

    Flat-window rules of the authors' ``img_qi.m``: if both variances vanish, ``Q0 =
    2 mx my / (mx^2 + my^2)``; if both means vanish, ``Q0 = 2 cxy / (vx + vy)``; if both
    vanish, ``Q0 = 1``.
    """
    d_var = vx + vy
    d_mean = mx * mx + my * my
    var_ok = d_var > tol
    mean_ok = d_mean > tol
    q = np.ones_like(d_var)
    both = var_ok & mean_ok
    q[both] = 4.0 * cxy[both] * mx[both] * my[both] / (d_var[both] * d_mean[both])
    only_mean = ~var_ok & mean_ok
    q[only_mean] = 2.0 * mx[only_mean] * my[only_mean] / d_mean[only_mean]
    only_var = var_ok & ~mean_ok
    q[only_var] = 2.0 * cxy[only_var] / d_var[only_var]
    return q


def q_s(
    fused: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 1.0,
    window: int = 8,
    weighted: bool = False,
) -> float:
    """Piella-Heijmans structure-based fusion quality index Q_S.

    With ``Q0(x, f | w)`` the Wang-Bovik universal image quality index of x and f in window
    ``w`` and the local saliency ``s(x | w)`` = variance of x in w,

    ``Q_S = 1/|W| sum_w [lambda(w) Q0(a, f | w) + (1 - lambda(w)) Q0(b, f | w)]``,
    ``lambda(w) = s(a | w) / (s(a | w) + s(b | w))`` (0.5 where both sources are flat).

    Windows are ``window x window`` (default 8x8, the UIQI window of Wang and Bovik) sliding
    with step 1 over every position fully inside the image (no padding). With
    ``weighted=True`` the mean over windows becomes the *weighted fusion quality index*
    Q_W of the same paper: window ``w`` counts with ``c(w) = max(s(a|w), s(b|w)) / sum_w'
    max(s(a|w'), s(b|w'))``. A window is flat when its standard deviation is below
    ``1e-6 * data_range``; UIQI's 0/0 cases then follow the rules of Wang and Bovik's code
    (two flat windows with equal means give 1).

    Parameters
    ----------
    fused, a, b : ndarray
        2-D images of the same shape and intensity scale, at least ``window`` pixels per side.
    data_range : float, optional
        Intensity range of the inputs, used only for the flatness tolerance. Default 1.0.
    window : int, optional
        Side of the sliding square window. Default 8.
    weighted : bool, optional
        Return Q_W (saliency-weighted windows) instead of Q_S. Default False.

    Returns
    -------
    float
        Q_S in ``[-1, 1]``, 1 when the fused image equals both sources. Higher is better.

    References
    ----------
    .. [1] G. Piella and H. Heijmans, "A new quality metric for image fusion," Proc. IEEE
       International Conference on Image Processing (ICIP), vol. 3, pp. 173-176, 2003.
    .. [2] Z. Wang and A. C. Bovik, "A universal image quality index," IEEE Signal Processing
       Letters, vol. 9, no. 3, pp. 81-84, 2002.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.random.default_rng(0).random((16, 16))
    >>> q_s(a, a, a)
    1.0
    """
    fused, a, b, data_range = _inputs(fused, a, b, data_range)
    window = check_int(window, "window", 2)
    check_min_size(fused, window, "q_s")
    tol = (1e-6 * data_range) ** 2

    # second moments of globally centred images: same variances, less cancellation
    c = {k: x - x.mean() for k, x in (("f", fused), ("a", a), ("b", b))}
    mean = {k: _box_mean(x, window) for k, x in c.items()}
    var = {k: np.maximum(_box_mean(x * x, window) - mean[k] ** 2, 0.0) for k, x in c.items()}
    cov = {k: _box_mean(c[k] * c["f"], window) - mean[k] * mean["f"] for k in ("a", "b")}
    offset = {"f": fused.mean(), "a": a.mean(), "b": b.mean()}
    mu = {k: mean[k] + offset[k] for k in mean}

    q0 = {
        k: _uiqi_map(mu[k], mu["f"], var[k], var["f"], cov[k], 2.0 * tol)
        for k in ("a", "b")
    }
    s_sum = var["a"] + var["b"]
    lam = np.full_like(s_sum, 0.5)
    np.divide(var["a"], s_sum, out=lam, where=s_sum > 2.0 * tol)
    local = lam * q0["a"] + (1.0 - lam) * q0["b"]
    if not weighted:
        return float(local.mean())
    cw = np.maximum(var["a"], var["b"])
    total = cw.sum()
    if total <= tol * cw.size:
        return float(local.mean())  # both sources flat everywhere: all windows count the same
    return float(np.sum(cw * local) / total)


# --------------------------------------------------------------------------------------------
# Q_SSIM
# --------------------------------------------------------------------------------------------
def q_ssim(fused: np.ndarray, a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of the fused image against both sources, averaged: ``(SSIM(F, A) + SSIM(F, B)) / 2``.

    The BSAFusion paper reports the SSIM of the fused image against both sources. Some
    implementations (e.g. VIFB's ``metricsSsim.m``) report the *sum*, in ``[-2, 2]``; the
    average is used here so that the value stays in SSIM's own range (multiply by 2 to compare
    with a summed table). SSIM is :func:`bsafusion.evaluation.metrics.registration.ssim`, i.e.
    :func:`skimage.metrics.structural_similarity` with the settings of Wang et al. (11x11
    Gaussian window, ``sigma = 1.5``, population covariance, ``K1 = 0.01``, ``K2 = 0.03``).

    Parameters
    ----------
    fused, a, b : ndarray
        2-D images of the same shape and intensity scale, at least 11 pixels per side.
    data_range : float, optional
        Intensity range of the inputs (1.0 for ``[0, 1]``, 255 for ``[0, 255]``). Default 1.0.

    Returns
    -------
    float
        Q_SSIM, at most 1 (fused equals both sources). Higher is better.

    References
    ----------
    .. [1] Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image quality assessment:
       from error visibility to structural similarity," IEEE Transactions on Image Processing,
       vol. 13, no. 4, pp. 600-612, 2004.
    .. [2] X. Zhang, P. Ye and G. Xiao, "VIFB: A visible and infrared image fusion benchmark,"
       Proc. IEEE/CVF CVPR Workshops, pp. 468-478, 2020.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.random.default_rng(0).random((32, 32))
    >>> q_ssim(a, a, a)
    1.0
    """
    fused, a, b, data_range = _inputs(fused, a, b, data_range)
    check_min_size(fused, 11, "q_ssim")
    return 0.5 * (ssim(fused, a, data_range) + ssim(fused, b, data_range))
