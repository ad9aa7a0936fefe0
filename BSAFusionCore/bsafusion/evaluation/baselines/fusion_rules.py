"""Classical pixel-level fusion rules: the second stage of a two-stage baseline.

Why this module exists
----------------------
After a classical registration (:mod:`bsafusion.evaluation.baselines.registration`) a user fuses with a
fixed rule. These are the rules the fusion literature compares against, applied to grey images
or luma in [0, 1]:

* :func:`fuse_average` - the pixelwise mean; keeps both sources but halves the contrast of
  details present in only one of them.
* :func:`fuse_max_abs` - pixelwise the value of **larger magnitude**. The images here are
  non-negative, so this is the pixelwise maximum (the usual "max" rule); the absolute value only
  matters for signed inputs such as detail coefficients, where it is the classic choose-max
  selection of Burt & Kolczynski.
* :func:`fuse_laplacian` - multi-scale: Laplacian pyramids of both images (Burt & Adelson), the
  max-abs rule on every detail (band-pass) level, the average on the low-pass base, then the
  pyramid is collapsed. Details of both sources survive at full contrast while the overall
  brightness is averaged.

:func:`fuse_colour` applies any rule to the luma of a PET/SPECT pseudo-colour image and puts
its chroma back (:func:`bsafusion.colour.split_luma` / :func:`~bsafusion.colour.merge_luma`),
as the network's pipeline does. :data:`FUSION_RULES` maps rule names to functions.

References
----------
.. [1] P. J. Burt and E. H. Adelson, "The Laplacian pyramid as a compact image code," IEEE
   Transactions on Communications, vol. 31, no. 4, pp. 532-540, 1983.
.. [2] P. J. Burt and R. J. Kolczynski, "Enhanced image capture through fusion," Proc. 4th
   International Conference on Computer Vision, pp. 173-182, 1993.

Examples
--------
>>> import numpy as np
>>> a = np.array([[0.2, 0.9]]); b = np.array([[0.6, 0.1]])
>>> fuse_average(a, b)
array([[0.4, 0.5]])
>>> fuse_max_abs(a, b)
array([[0.6, 0.9]])
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from bsafusion.colour import merge_luma, split_luma
from bsafusion.errors import InputError
from bsafusion.checks import as_images

__all__ = ["FUSION_RULES", "fuse_average", "fuse_max_abs", "fuse_laplacian", "get_rule", "fuse_colour"]

FusionRule = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: Gaussian sigma (pixels) of the pyramid's low-pass filter before each 2x decimation; 1.0 is
#: close to Burt & Adelson's 5-tap kernel with a = 0.4.
PYRAMID_SIGMA = 1.0
#: Coarsest pyramid level is kept at least this many pixels per side.
PYRAMID_MIN_SIZE = 8


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two 2D images of equal shape (float64)."""
    a, b = as_images(("a", "b"), (a, b), ndims=(2,))
    return a, b


def fuse_average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixelwise mean ``(a + b) / 2`` of two 2D images of equal shape (float64)."""
    a, b = _pair(a, b)
    return 0.5 * (a + b)


def _select_max_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(np.abs(a) >= np.abs(b), a, b)  # ties keep a


def fuse_max_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixelwise the value of larger magnitude (``a`` on ties); for images >= 0, the maximum."""
    a, b = _pair(a, b)
    return _select_max_abs(a, b)


def _reduce(image: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(image, PYRAMID_SIGMA, mode="reflect")[::2, ::2]


def _expand(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return resize(image, shape, order=1, mode="edge", anti_aliasing=False)


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Detail levels, fine to coarse, then the low-pass base: ``levels + 1`` arrays.

    ``detail_k = G_k - expand(G_{k+1})`` with ``G_0 = image`` and ``G_{k+1} = reduce(G_k)``
    (Gaussian blur, keep every other pixel); the last entry is ``G_levels``. Collapsing with
    :func:`collapse_pyramid` gives ``image`` back exactly (up to float rounding), whatever the
    filters, because each detail stores what the expanded coarser level misses.
    """
    pyramid = []
    current = image
    for _ in range(levels):
        coarse = _reduce(current)
        pyramid.append(current - _expand(coarse, current.shape))
        current = coarse
    pyramid.append(current)
    return pyramid


def collapse_pyramid(pyramid: list[np.ndarray]) -> np.ndarray:
    """Inverse of :func:`laplacian_pyramid`."""
    image = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        image = detail + _expand(image, detail.shape)
    return image


def _max_levels(shape: tuple[int, ...]) -> int:
    levels, side = 0, min(shape)
    while (side + 1) // 2 >= PYRAMID_MIN_SIZE:
        side = (side + 1) // 2
        levels += 1
    return levels


def fuse_laplacian(a: np.ndarray, b: np.ndarray, levels: int = 4) -> np.ndarray:
    """Laplacian-pyramid fusion: max-abs on the detail levels, average on the base.

    Parameters
    ----------
    a, b:
        2D images of equal shape in [0, 1].
    levels:
        Number of detail levels (4: on 256x256 the details are at 256, 128, 64 and 32 pixels
        and the base at 16x16, i.e. structures larger than about 1/16 of the field of view are
        averaged). Reduced automatically so that the base keeps at least
        :data:`PYRAMID_MIN_SIZE` pixels per side.

    Returns
    -------
    numpy.ndarray
        float64, clipped to [0, 1] (choosing details from different sources can overshoot).

    References
    ----------
    .. [1] Burt and Adelson 1983; Burt and Kolczynski 1993 (see the module docstring).
    """
    a, b = _pair(a, b)
    if int(levels) != levels or levels < 0:
        raise InputError(f"levels must be a non-negative integer, got {levels!r}")
    levels = min(int(levels), _max_levels(a.shape))
    pa, pb = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    fused = [_select_max_abs(da, db) for da, db in zip(pa[:-1], pb[:-1])]
    fused.append(0.5 * (pa[-1] + pb[-1]))
    return np.clip(collapse_pyramid(fused), 0.0, 1.0)


#: Rule name -> function ``(a, b) -> fused`` (2D arrays in [0, 1]).
FUSION_RULES: dict[str, FusionRule] = {
    "average": fuse_average,
    "max_abs": fuse_max_abs,
    "laplacian": fuse_laplacian,
}


def get_rule(rule: str | FusionRule) -> FusionRule:
    """A rule function from its name in :data:`FUSION_RULES` (callables pass through)."""
    if callable(rule):
        return rule
    if rule not in FUSION_RULES:
        raise InputError(f"unknown fusion rule {rule!r}; choose one of {', '.join(FUSION_RULES)}")
    return FUSION_RULES[rule]


def fuse_colour(rule: str | FusionRule, fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Fuse a grey ``fixed`` image with a grey or RGB ``moving`` one (already aligned).

    A grey ``moving`` (``(H, W)``) is fused directly. An RGB one (``(H, W, 3)`` in [0, 1], e.g.
    PET/SPECT pseudo-colour) is split into YCbCr (BT.601, :mod:`bsafusion.colour`); ``rule``
    fuses ``fixed`` with its luma Y, and the moving image's Cb/Cr are put back, so the colour
    coding of the functional image survives while the anatomy of ``fixed`` enters the luma.

    Returns ``(H, W)`` float64 for grey input, ``(H, W, 3)`` RGB clipped to [0, 1] for colour.
    """
    fn = get_rule(rule)
    moving = np.asarray(moving)
    if moving.ndim == 3 and moving.shape[-1] == 3:
        luma, chroma = split_luma(moving.astype(np.float64))
        return merge_luma(fn(fixed, luma), chroma)
    return fn(fixed, moving)
