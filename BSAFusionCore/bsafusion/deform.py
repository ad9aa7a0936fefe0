"""Displacement fields: warp, compose, invert, integrate, resize; synthetic misalignment.

Field convention (used by every module of the package)
-----------------------------------------------------
* A displacement field ``u`` on an image grid of ``n`` spatial dimensions is a tensor of shape
  ``(N, n, *spatial)`` (torch) or ``(n, *spatial)`` (numpy), in **pixels** (voxels) of that grid.
* Channels are in **ITK order**: channel 0 is the displacement along *x* (the last array axis,
  columns), channel 1 along *y* (rows), channel 2 along *z* (slices, 3D only).
  Arrays themselves are indexed ``[..., z, y, x]`` as numpy/torch do.
* Fields **pull**: ``warp(I, u)(p) = I(p + u(p))``. ``u`` lives on the *output* grid (the fixed
  image) and points into the *input* image (the moving one). This is the convention of ITK's
  ``DisplacementFieldTransform`` (a transform maps fixed points to moving points), so a field
  converts to an ITK transform by scaling pixels to millimetres and rotating by the direction
  matrix, without inversion (see :mod:`bsafusion.inference.volume`).
* With ``phi_u(p) = p + u(p)``, ``warp(warp(I, u1), u2) = I o phi_u1 o phi_u2``;
  :func:`compose` returns that field, ``u2 + warp(u1, u2)``.

Interpolation is linear with ``align_corners=True`` (pixel centres at integer positions
``0 .. size-1``); outside the grid, images are zero-padded or border-extended, fields are
border-extended.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from bsafusion.checks import as_field
from bsafusion.errors import InputError

__all__ = [
    "identity_grid",
    "warp",
    "compose",
    "invert",
    "integrate_velocity",
    "diffusion",
    "resize_image",
    "resize_field",
    "smooth_field",
    "jacobian_determinant",
    "warp_numpy",
    "compose_numpy",
    "invert_numpy",
    "Misalignment",
    "random_affine_field",
    "random_elastic_field",
    "random_misalignment",
]


def identity_grid(
    shape: Sequence[int], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Pixel coordinates of a grid of ``shape`` (``(H, W)`` or ``(D, H, W)``).

    Returns a tensor of shape ``(1, n, *shape)`` with channels in ITK order (x, y[, z]).
    """
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")  # (z,) y, x
    return torch.stack(mesh[::-1], dim=0).unsqueeze(0)


@functools.lru_cache(maxsize=32)
def _grid_constants(spatial: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity grid of ``spatial`` and the ``size - 1`` divisors, per channel.

    Cached: a network forward warps about a hundred times on three grids, and building these
    was a dozen small tensor operations per warp. Built outside inference mode, so that the
    cached tensors serve autograd too.
    """
    ndim = len(spatial)
    with torch.inference_mode(False):
        identity = identity_grid(spatial, device, dtype)
        # channel c is along array axis (ndim - 1 - c): x is the last axis
        sizes = torch.tensor([spatial[ndim - 1 - c] for c in range(ndim)], device=device, dtype=dtype)
        return identity, (sizes.view(1, ndim, *([1] * ndim)) - 1).clamp(min=1)


def _sampling_grid(field: torch.Tensor) -> torch.Tensor:
    """Turn a pixel displacement field into the normalised grid ``grid_sample`` expects."""
    spatial = tuple(field.shape[2:])
    ndim = len(spatial)
    if field.shape[1] != ndim:
        raise ValueError(f"field has {field.shape[1]} channels for a {ndim}-D grid")
    identity, divisors = _grid_constants(spatial, field.device, field.dtype)
    norm = 2.0 * (identity + field) / divisors - 1.0
    return norm.movedim(1, -1)


def warp(
    image: torch.Tensor, field: torch.Tensor, mode: str = "bilinear", padding: str = "zeros"
) -> torch.Tensor:
    """Pull ``image`` (``(N, C, *spatial)``) through ``field`` (``(N, n, *spatial)``).

    ``out(p) = image(p + field(p))``; ``mode`` is ``"bilinear"`` (linear in 3D too) or
    ``"nearest"``; ``padding`` is ``"zeros"`` or ``"border"``.
    """
    if image.shape[2:] != field.shape[2:]:
        raise ValueError(f"image grid {tuple(image.shape[2:])} != field grid {tuple(field.shape[2:])}")
    if field.shape[0] != image.shape[0] and field.shape[0] == 1:
        field = field.expand(image.shape[0], *field.shape[1:])
    grid = _sampling_grid(field)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=True)


def compose(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Field equivalent to warping by ``u1`` first, then by ``u2``.

    ``warp(I, compose(u1, u2)) ~= warp(warp(I, u1), u2)``; the result is ``u2 + warp(u1, u2)``
    (a warp of fields, not a sum).
    """
    return u2 + warp(u1, u2, padding="border")


def invert(u: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Inverse of a displacement field by fixed-point iteration ``v = -warp(u, v)``.

    Converges for smooth fields whose Jacobian stays positive (no folding); the residual
    ``compose(u, v)`` is what callers should report when accuracy matters.
    """
    v = -u
    for _ in range(iterations):
        v = -warp(u, v, padding="border")
    return v


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Exponentiate a stationary velocity field by scaling and squaring.

    The result is a diffeomorphic displacement field whose inverse is
    ``integrate_velocity(-velocity)``, which is why the registration layers predict velocities.
    """
    u = velocity / (2**steps)
    for _ in range(steps):
        u = compose(u, u)
    return u


def diffusion(field: torch.Tensor) -> torch.Tensor:
    """Per-sample diffusion regulariser of ``(N, C, H, W)``: mean squared forward difference along y plus x.

    Training penalises the predicted velocities with it and refinement its control grid: one
    definition, so "smooth" means the same in both.
    """
    dy = field[:, :, 1:, :] - field[:, :, :-1, :]
    dx = field[:, :, :, 1:] - field[:, :, :, :-1]
    return dy.pow(2).mean(dim=(1, 2, 3)) + dx.pow(2).mean(dim=(1, 2, 3))


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample ``(N, C, H, W)`` images to ``size`` (bilinear, anti-aliased when shrinking).

    The grid convention is the fields' (``align_corners=True``: corner pixel centres stay
    put, as in :func:`resize_field`), so an image and its field resized together still match
    pixel for pixel. PyTorch's ``antialias=True`` ignores ``align_corners`` (it always works on
    pixel edges) and would shift the image against its field by up to half a pixel, so
    shrinking is anti-aliased here by a Gaussian prefilter instead (sigma ``(factor - 1) / 2``
    source pixels per axis, scikit-image's choice).
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    for axis, (old, new) in enumerate(zip(image.shape[-2:], size)):
        sigma = ((old - 1) / max(new - 1, 1) - 1) / 2
        if sigma > 0:
            image = _gaussian_along(image, sigma, dim=image.ndim - 2 + axis)
    return F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=True)


def smooth_field(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing (``sigma`` in grid pixels, edge values repeated) of ``(N, n, *spatial)`` fields.

    Each component is blurred along every spatial axis; ``sigma <= 0`` returns ``field`` itself.
    """
    if sigma <= 0:
        return field
    for dim in range(2, field.ndim):
        field = _gaussian_along(field, sigma, dim)
    return field


def _gaussian_along(image: torch.Tensor, sigma: float, dim: int) -> torch.Tensor:
    """Gaussian blur of ``image`` along one spatial axis (edge values repeated outside)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    moved = image.movedim(dim, -1)
    flat = moved.reshape(-1, 1, moved.shape[-1])
    blurred = F.conv1d(F.pad(flat, (radius, radius), mode="replicate"), kernel.view(1, 1, -1))
    return blurred.reshape(moved.shape).movedim(-1, dim)


def resize_field(field: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a field to grid ``size`` and rescale its pixel values to the new grid."""
    old = field.shape[2:]
    ndim = len(old)
    if tuple(old) == tuple(size):
        return field
    mode = "bilinear" if ndim == 2 else "trilinear"
    out = F.interpolate(field, size=tuple(size), mode=mode, align_corners=True)
    scale = [(size[ndim - 1 - c] - 1) / max(old[ndim - 1 - c] - 1, 1) for c in range(ndim)]
    return out * torch.tensor(scale, dtype=out.dtype, device=out.device).view(1, ndim, *([1] * ndim))


# --------------------------------------------------------------------------- numpy wrappers


def _field_batch(field: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))[None]


def _as_batch(image: np.ndarray, ndim: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if t.ndim == ndim:
        return t[None, None]
    if t.ndim == ndim + 1:
        return t[None]
    raise ValueError(f"expected a {ndim}-D image with optional leading channel axis, got shape {image.shape}")


def warp_numpy(image: np.ndarray, field: np.ndarray, mode: str = "bilinear", padding: str = "zeros") -> np.ndarray:
    """:func:`warp` for numpy: ``image`` is ``spatial`` or ``(C, *spatial)``, ``field`` ``(n, *spatial)``."""
    ndim = field.shape[0]
    with torch.no_grad():
        out = warp(_as_batch(image, ndim), _field_batch(field), mode=mode, padding=padding)
    out_np = out[0].numpy()
    return out_np[0] if image.ndim == ndim else out_np


def compose_numpy(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """:func:`compose` for numpy fields of shape ``(n, *spatial)``."""
    with torch.no_grad():
        return compose(_field_batch(u1), _field_batch(u2))[0].numpy()


def invert_numpy(u: np.ndarray, iterations: int = 30) -> np.ndarray:
    """:func:`invert` for a numpy field of shape ``(n, *spatial)``."""
    with torch.no_grad():
        return invert(_field_batch(u), iterations)[0].numpy()


# --------------------------------------------------------------------------- synthetic misalignment


@dataclass(frozen=True)
class Misalignment:
    """A known synthetic deformation.

    Attributes
    ----------
    field:
        ``(n, *spatial)`` pixels, exact by construction: ``warped = warp(original, field)``.
        It maps the *warped* (moving) grid into the *original* (aligned) image.
    inverse:
        ``(n, *spatial)`` pixels, the registration ground truth: ``warp(warped, inverse)``
        recovers the original, i.e. it maps the fixed grid into the moving image. Obtained by
        fixed-point inversion; ``inverse_residual`` is its maximum error in pixels.
    inverse_residual:
        ``max |compose(field, inverse)|`` over the interior (pixels).
    """

    field: np.ndarray
    inverse: np.ndarray
    inverse_residual: float

    def apply(self, image: np.ndarray, mode: str = "bilinear") -> np.ndarray:
        """Misalign ``image`` (``spatial`` or ``(C, *spatial)``) with :attr:`field`."""
        return warp_numpy(image, self.field, mode=mode, padding="zeros")


def _rotation_matrix(ndim: int, angles_rad: np.ndarray) -> np.ndarray:
    if ndim == 2:
        c, s = np.cos(angles_rad[0]), np.sin(angles_rad[0])
        return np.array([[c, -s], [s, c]])
    rot = np.eye(3)
    for axis, angle in enumerate(angles_rad):
        c, s = np.cos(angle), np.sin(angle)
        r = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    return rot


def random_affine_field(
    shape: Sequence[int],
    rng: np.random.Generator,
    max_rotation_deg: float = 8.0,
    max_scale: float = 0.06,
    max_shear: float = 0.04,
    max_translation: float = 0.04,
) -> np.ndarray:
    """Displacement field of a random affine map about the grid centre.

    Rotation, log-isotropic scale, shear and translation are drawn uniformly in
    ``[-max, max]``; translation is a fraction of each axis length. Returns ``(n, *shape)``
    pixels in ITK channel order.
    """
    ndim = len(shape)
    n_rot = 1 if ndim == 2 else 3
    rot = _rotation_matrix(ndim, np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, n_rot)))
    scale = np.exp(rng.uniform(-max_scale, max_scale))
    shear = np.eye(ndim)
    for i in range(ndim):
        for j in range(ndim):
            if i < j:
                shear[i, j] = rng.uniform(-max_shear, max_shear)
    matrix = scale * rot @ shear
    sizes_xyz = np.array(shape[::-1], dtype=np.float64)
    translation = rng.uniform(-max_translation, max_translation, ndim) * sizes_xyz
    centre = (sizes_xyz - 1) / 2.0
    grid = identity_grid(shape, dtype=torch.float64)[0].numpy().reshape(ndim, -1)
    rel = grid - centre[:, None]
    moved = matrix @ rel + centre[:, None] + translation[:, None]
    return (moved - grid).reshape(ndim, *shape).astype(np.float32)


def random_elastic_field(
    shape: Sequence[int], rng: np.random.Generator, max_displacement: float = 4.0, smoothness: float = 0.12
) -> np.ndarray:
    """Smooth random displacement field (Gaussian-smoothed white noise).

    ``smoothness`` is the Gaussian sigma as a fraction of the smallest axis; the field is scaled
    so that its largest displacement is ``max_displacement`` pixels.
    """
    ndim = len(shape)
    sigma = smoothness * min(shape)
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect") for _ in range(ndim)])
    peak = np.sqrt((field**2).sum(axis=0)).max()
    if peak > 0:
        field *= max_displacement / peak
    return field.astype(np.float32)


def random_misalignment(
    shape: Sequence[int],
    seed: int | np.random.Generator | None = None,
    max_rotation_deg: float = 8.0,
    max_scale: float = 0.06,
    max_shear: float = 0.04,
    max_translation: float = 0.04,
    max_elastic: float = 4.0,
    elastic_smoothness: float = 0.12,
    inverse_iterations: int = 40,
) -> Misalignment:
    """Random affine + smooth elastic misalignment with its exact field and inverse.

    The elastic field is applied first, then the affine one (``field = compose(elastic,
    affine)``), so the result mimics a pose difference plus local tissue deformation.
    The defaults model a pose difference plus mild tissue deformation (mean displacement about
    10 px at 256x256, mostly affine). The Harvard test cases are smaller and almost purely
    elastic (mean 3-4 px); ``BSAFusionCore/docs/network.md`` gives the matching profile.
    Translations and elastic smoothness scale with the grid, and ``max_elastic`` is in pixels
    at 256 and scaled to the grid size.

    Examples
    --------
    >>> mis = random_misalignment((64, 64), seed=0)
    >>> mis.field.shape
    (2, 64, 64)
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    affine = random_affine_field(shape, rng, max_rotation_deg, max_scale, max_shear, max_translation)
    elastic = random_elastic_field(shape, rng, max_elastic * min(shape) / 256.0, elastic_smoothness)
    field = compose_numpy(elastic, affine)
    inverse = invert_numpy(field, inverse_iterations)
    residual = compose_numpy(field, inverse)
    margin = tuple(slice(max(2, s // 8), s - max(2, s // 8)) for s in shape)
    interior = residual[(slice(None),) + margin]
    return Misalignment(field, inverse, float(np.sqrt((interior**2).sum(axis=0)).max()))


def jacobian_determinant(field: np.ndarray) -> np.ndarray:
    """Jacobian determinant map of ``phi(p) = p + u(p)`` for a 2-D or 3-D displacement field.

    Parameters
    ----------
    field : ndarray
        ``u`` of shape ``(2, H, W)`` or ``(3, D, H, W)`` in pixels, channels in ITK order:
        channel 0 is the displacement along *x*, the **last** array axis; channel 1 along *y*;
        channel 2 along *z*, the first spatial axis (see :mod:`bsafusion.deform`). Every
        spatial size must be at least 2.

    Returns
    -------
    ndarray
        ``det(I + du/dp)`` on the grid (shape ``(H, W)`` or ``(D, H, W)``), with
        ``J_ij = delta_ij + d u_i / d x_j`` where ``x_j`` is spatial coordinate ``j`` in ITK
        order (array axis ``n - 1 - j``). Derivatives are central differences
        (:func:`numpy.gradient`; one-sided at the border). The determinant is the local
        volume change: 1 preserves volume, ``<= 0`` means folding. Pixel spacing does not
        change it (``J_mm = S J S^-1``).

    References
    ----------
    .. [1] J. Ashburner, "A fast diffeomorphic image registration algorithm," NeuroImage,
       vol. 38, no. 1, pp. 95-113, 2007.
    .. [2] G. Balakrishnan, A. Zhao, M. R. Sabuncu, J. Guttag and A. V. Dalca, "VoxelMorph: a
       learning framework for deformable medical image registration," IEEE Transactions on
       Medical Imaging, vol. 38, no. 8, pp. 1788-1800, 2019.

    Examples
    --------
    >>> import numpy as np
    >>> u = np.zeros((2, 5, 6))
    >>> u[0] = 0.5 * np.arange(6.0)[None, :]   # x-displacement grows with x: stretch by 1.5
    >>> float(jacobian_determinant(u).mean())
    1.5
    """
    u = as_field(field, "field")
    n = u.shape[0]
    if min(u.shape[1:]) < 2:
        raise InputError(f"jacobian_determinant needs at least 2 pixels per axis, got grid {u.shape[1:]}")
    # jac[i][j] = d phi_i / d x_j; coordinate x_j (ITK order) runs along array axis n - 1 - j
    jac = [[np.gradient(u[i], axis=n - 1 - j) + (1.0 if i == j else 0.0) for j in range(n)] for i in range(n)]
    if n == 2:
        return jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    return (
        jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
        - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
        + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0])
    )
