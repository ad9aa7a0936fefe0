"""Registration metrics: similarity of aligned images and quality of displacement fields.

Image similarity (:func:`ncc`, :func:`mutual_information`,
:func:`normalized_mutual_information`, :func:`ssim`, :func:`mae`) compares a fixed image with
the moving image once it has been warped onto the fixed grid. Field metrics
(:func:`endpoint_error`, :func:`jacobian_determinant`, :func:`folding_fraction`) follow the
package convention of :mod:`bsafusion.deform`: a field has shape ``(n, *spatial)`` in pixels,
channel 0 is the displacement along *x* (the **last** array axis), channel 1 along *y*,
channel 2 along *z* (3-D only), and it maps ``p -> phi(p) = p + u(p)``.

Every public function validates its inputs and raises :class:`bsafusion.errors.InputError`
for wrong dimensions, mismatched shapes, NaN/Inf values or empty arrays. Image metrics accept
2-D and 3-D arrays; they are computed in float64.

The input checks are :mod:`bsafusion.checks`; :func:`jacobian_determinant`, a property of a
field that the volume pipeline writes out, lives in :mod:`bsafusion.deform`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from skimage.metrics import structural_similarity

from bsafusion.checks import as_field, as_images, as_mask, check_data_range, check_int, check_min_size
from bsafusion.deform import jacobian_determinant
from bsafusion.errors import InputError

__all__ = [
    "ncc",
    "mutual_information",
    "normalized_mutual_information",
    "ssim",
    "mae",
    "endpoint_error",
    "jacobian_determinant",
    "folding_fraction",
]


# --------------------------------------------------------------------------------------------
# image similarity
# --------------------------------------------------------------------------------------------
def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Global normalised cross-correlation (Pearson correlation of the intensities).

    Parameters
    ----------
    a, b : ndarray
        2-D or 3-D images of the same shape.

    Returns
    -------
    float
        ``sum((a - mean a)(b - mean b)) / sqrt(sum((a - mean a)^2) sum((b - mean b)^2))``,
        in ``[-1, 1]``; 1 for ``b = s a + t`` with ``s > 0``, -1 for ``s < 0``.
        Higher is better. Raises :class:`InputError` if either image is constant
        (the correlation is then undefined).

    References
    ----------
    .. [1] J. P. Lewis, "Fast normalized cross-correlation," Vision Interface, pp. 120-123, 1995.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.arange(16.0).reshape(4, 4)
    >>> round(ncc(a, 2 * a + 1), 6), round(ncc(a, -a), 6)
    (1.0, -1.0)
    """
    a, b = as_images(("a", "b"), (a, b), ndims=(2, 3))
    da = a - a.mean()
    db = b - b.mean()
    na = np.sqrt(np.sum(da * da))
    nb = np.sqrt(np.sum(db * db))
    if na == 0 or nb == 0:
        raise InputError("ncc is undefined for a constant image")
    return float(np.clip(np.sum(da * db) / (na * nb), -1.0, 1.0))


def _joint_histogram(a: np.ndarray, b: np.ndarray, bins: int) -> np.ndarray:
    """Joint probability table of ``a`` and ``b``, ``bins`` equal bins over each image's range."""
    bins = check_int(bins, "bins", 2)
    ranges = [(float(x.min()), float(x.max())) for x in (a, b)]
    # a constant image gets one bin's worth of range so that numpy's edges stay finite
    ranges = [(lo, hi) if hi > lo else (lo - 0.5, lo + 0.5) for lo, hi in ranges]
    hist, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins, range=ranges)
    return hist / hist.sum()


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 64) -> float:
    """Mutual information of the intensities of two images, in nats.

    Parameters
    ----------
    a, b : ndarray
        2-D or 3-D images of the same shape.
    bins : int, optional
        Number of equal-width histogram bins per image; each image's bins span its own
        ``[min, max]`` (a constant image gets a single occupied bin). Default 64.

    Returns
    -------
    float
        ``I(A;B) = sum_ij p_ij log(p_ij / (p_i p_j)) = H(A) + H(B) - H(A,B)`` with natural
        logarithms, from the joint histogram (plug-in estimate, no smoothing). ``I(A;A)`` is
        the entropy ``H(A)`` of the same histogram. Higher is better. The plug-in estimate is
        biased upwards by about ``(bins - 1)^2 / (2 N)`` for ``N`` pixels, so independent
        images give a small positive value rather than 0.

    References
    ----------
    .. [1] F. Maes, A. Collignon, D. Vandermeulen, G. Marchal and P. Suetens, "Multimodality
       image registration by maximization of mutual information," IEEE Transactions on
       Medical Imaging, vol. 16, no. 2, pp. 187-198, 1997.
    .. [2] P. Viola and W. M. Wells III, "Alignment by maximization of mutual information,"
       International Journal of Computer Vision, vol. 24, no. 2, pp. 137-154, 1997.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[0.0, 0.0], [1.0, 1.0]])
    >>> round(mutual_information(a, a, bins=2), 6)  # = log 2, the entropy of a
    0.693147
    """
    a, b = as_images(("a", "b"), (a, b), ndims=(2, 3))
    p = _joint_histogram(a, b, bins)
    return max(0.0, _entropy(p.sum(axis=1)) + _entropy(p.sum(axis=0)) - _entropy(p))


def normalized_mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 64) -> float:
    """Studholme's normalised mutual information ``(H(A) + H(B)) / H(A, B)``.

    Parameters
    ----------
    a, b : ndarray
        2-D or 3-D images of the same shape.
    bins : int, optional
        Histogram bins per image, as in :func:`mutual_information`. Default 64.

    Returns
    -------
    float
        A value in ``[1, 2]``: 2 when one image determines the other's histogram bin,
        1 for independent images. Higher is better. Raises :class:`InputError` when both
        images are constant (``H(A, B) = 0``).

    References
    ----------
    .. [1] C. Studholme, D. L. G. Hill and D. J. Hawkes, "An overlap invariant entropy measure
       of 3D medical image alignment," Pattern Recognition, vol. 32, no. 1, pp. 71-86, 1999.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[0.0, 0.0], [1.0, 1.0]])
    >>> normalized_mutual_information(a, a, bins=2)
    2.0
    """
    a, b = as_images(("a", "b"), (a, b), ndims=(2, 3))
    p = _joint_histogram(a, b, bins)
    h_joint = _entropy(p)
    if h_joint == 0:
        raise InputError("normalized mutual information is undefined for two constant images")
    return float((_entropy(p.sum(axis=1)) + _entropy(p.sum(axis=0))) / h_joint)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity (SSIM) with the settings of Wang et al. (2004).

    A thin wrapper of :func:`skimage.metrics.structural_similarity` with
    ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False`` (11x11 Gaussian window,
    ``K1 = 0.01``, ``K2 = 0.03``), i.e. the reference MATLAB ``ssim_index`` settings.

    Parameters
    ----------
    a, b : ndarray
        2-D or 3-D images of the same shape, at least 11 pixels per side.
    data_range : float, optional
        Intensity range ``L`` of the images (1.0 for ``[0, 1]``, 255 for ``[0, 255]``); it sets
        the stabilising constants ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2``. Default 1.0.

    Returns
    -------
    float
        Mean SSIM, at most 1 (identical images). Higher is better.

    References
    ----------
    .. [1] Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image quality assessment:
       from error visibility to structural similarity," IEEE Transactions on Image Processing,
       vol. 13, no. 4, pp. 600-612, 2004.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.random.default_rng(0).random((32, 32))
    >>> ssim(a, a)
    1.0
    """
    a, b = as_images(("a", "b"), (a, b), ndims=(2, 3))
    data_range = check_data_range(data_range)
    check_min_size(a, 11, "ssim")
    value = structural_similarity(
        a, b, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    return float(value)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute error ``mean(|a - b|)``, in the images' intensity unit.

    Parameters
    ----------
    a, b : ndarray
        2-D or 3-D images of the same shape.

    Returns
    -------
    float
        Mean absolute difference; 0 for identical images. Lower is better.

    References
    ----------
    .. [1] C. J. Willmott and K. Matsuura, "Advantages of the mean absolute error (MAE) over
       the root mean square error (RMSE) in assessing average model performance," Climate
       Research, vol. 30, no. 1, pp. 79-82, 2005.

    Examples
    --------
    >>> import numpy as np
    >>> mae(np.array([[0.0, 1.0]]).repeat(2, 0), np.array([[1.0, 1.0]]).repeat(2, 0))
    0.5
    """
    a, b = as_images(("a", "b"), (a, b), ndims=(2, 3))
    return float(np.mean(np.abs(a - b)))


# --------------------------------------------------------------------------------------------
# displacement fields
# --------------------------------------------------------------------------------------------
def endpoint_error(
    field: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
) -> float:
    """Mean endpoint error between an estimated and a true displacement field.

    Parameters
    ----------
    field, truth : ndarray
        Displacement fields of shape ``(2, H, W)`` or ``(3, D, H, W)`` in pixels, channels in
        ITK order (x, y[, z]) as in :mod:`bsafusion.deform`; both on the same grid.
    mask : ndarray of bool, optional
        Boolean array of the grid shape ``(H, W)`` / ``(D, H, W)``; only ``True`` pixels are
        averaged (e.g. the head, to ignore the background). Default: all pixels.
    spacing : sequence of float, optional
        Pixel size per channel in ITK order ``(sx, sy[, sz])`` (e.g. millimetres, as
        ``SimpleITK.Image.GetSpacing()`` returns it); channel ``c`` is multiplied by
        ``spacing[c]`` before the norm, so the error is in those units. Default: pixels.

    Returns
    -------
    float
        ``mean_p || (field(p) - truth(p)) * spacing ||_2``. Lower is better.

    References
    ----------
    .. [1] S. Baker, D. Scharstein, J. P. Lewis, S. Roth, M. J. Black and R. Szeliski, "A
       database and evaluation methodology for optical flow," International Journal of
       Computer Vision, vol. 92, no. 1, pp. 1-31, 2011.

    Examples
    --------
    >>> import numpy as np
    >>> u = np.zeros((2, 4, 4)); v = np.zeros((2, 4, 4)); v[0] = 3.0; v[1] = 4.0
    >>> endpoint_error(u, v)
    5.0
    >>> endpoint_error(u, v, spacing=(2.0, 0.5))
    6.324555320336759
    """
    field = as_field(field, "field")
    truth = as_field(truth, "truth")
    if field.shape != truth.shape:
        raise InputError(f"shape mismatch: field is {field.shape}, truth is {truth.shape}")
    diff = field - truth
    n = field.shape[0]
    if spacing is not None:
        sp = np.asarray(spacing, dtype=np.float64).ravel()
        if sp.shape != (n,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise InputError(f"spacing must be {n} positive finite numbers (x, y[, z]), got {spacing!r}")
        diff = diff * sp.reshape((n,) + (1,) * n)
    err = np.sqrt(np.sum(diff * diff, axis=0))
    if mask is not None:
        err = err[as_mask(mask, field.shape[1:])]
    return float(err.mean())


def folding_fraction(field: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of pixels (voxels) where the mapping folds, ``det J <= 0``.

    Parameters
    ----------
    field : ndarray
        Displacement field of shape ``(2, H, W)`` or ``(3, D, H, W)`` in the package
        convention (see :func:`jacobian_determinant`).
    mask : ndarray of bool, optional
        Grid-shaped boolean array; the fraction is taken over ``True`` pixels only.

    Returns
    -------
    float
        ``mean(det J <= 0)`` in ``[0, 1]``. Lower is better; 0 for a diffeomorphic field.

    References
    ----------
    .. [1] G. Balakrishnan, A. Zhao, M. R. Sabuncu, J. Guttag and A. V. Dalca, "VoxelMorph: a
       learning framework for deformable medical image registration," IEEE Transactions on
       Medical Imaging, vol. 38, no. 8, pp. 1788-1800, 2019.

    Examples
    --------
    >>> import numpy as np
    >>> folding_fraction(np.zeros((2, 8, 8)))
    0.0
    """
    det = jacobian_determinant(field)
    if mask is not None:
        det = det[as_mask(mask, det.shape)]
    return float(np.mean(det <= 0))
