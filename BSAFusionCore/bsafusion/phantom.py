"""Procedural head phantom: the product's own demo and CI data.

Why this module exists
----------------------
The demo, the tests and CI must run on a fresh machine with no download, so the product makes
its own multimodal image pairs. A seeded generator draws a head (tissue label map) with varied
anatomy, then *renders* it as MRI, CT, PET and SPECT with modality-like contrasts, resolution and
noise. The MRI and the other image of a pair share one label map, so the pair is **aligned**;
:mod:`bsafusion.deform` makes it unaligned, exactly as the real aligned Harvard pairs are used.
Only numpy and scipy are needed (SimpleITK to write PNGs).

Everything is deterministic given ``seed``: the same seed gives bit-identical arrays, another
seed gives another head (size, position, rotation, skull thickness, cortical folding, ventricle
size, lesion position and size, and for 2D the axial level of the slice).

Array layout and orientation (the same for 2D and 3D)
-----------------------------------------------------
Arrays are indexed ``[z, y, x]`` (3D, ``(D, H, W)``) or ``[y, x]`` (2D, ``(H, W)``), and the
indices follow **LPS** with an identity direction matrix (SimpleITK's default):

* column index (x, last axis) grows towards the patient's **left**;
* row index (y) grows towards **posterior** (the face is at row 0, at the top of the image,
  as in the Harvard slices);
* slice index (z, 3D only) grows towards **superior**.

Displayed as an image (row 0 at the top), this is the radiological convention of the Harvard
data: the patient's left is on the viewer's right.

Left-right asymmetry (on purpose)
---------------------------------
A head is nearly mirror-symmetric, so a left-right flip bug in a volume pipeline would go
unnoticed on a symmetric phantom. This phantom is asymmetric by construction, always on the
same side, :data:`LESION_SIDE` = ``"left"``: the lesion (when ``lesion=True``) and the **larger
lateral ventricle** lie in the patient's **left** hemisphere, i.e. in the half of the array with
the **larger column indices** (``x >= W / 2``; the right-hand half of a displayed slice).

Labels
------
``BACKGROUND`` (air) 0, ``SCALP`` 1, ``SKULL`` 2, ``CSF`` 3 (subarachnoid space, sulci,
interhemispheric fissure), ``GREY_MATTER`` 4 (folded cortex and deep nuclei), ``WHITE_MATTER``
5, ``VENTRICLE`` 6, ``LESION`` 7 (optional tumour-like blob).

Contrasts (see :func:`render`)
------------------------------
* **MRI**: T2-weighted like most Harvard MRIs: CSF and ventricles bright, grey matter brighter
  than white matter, cortical bone dark, scalp fat bright, lesion hyperintense; partial-volume
  smoothing, a smooth multiplicative bias field and Rician noise.
* **CT**: brain window: bone white, grey matter slightly brighter than white matter, CSF dark
  grey, air black; lesion hypodense; little blur, a little noise inside the head.
* **PET** (FDG): grey matter hot, white matter lower, CSF cold, lesion hottest; low resolution
  (Gaussian blur, FWHM about 7 px at 256), count-like noise.
* **SPECT** (perfusion): grey matter high, white matter lower, lesion *hypo*-perfused; blurrier
  still (FWHM about 12 px at 256) and noisier.

PET and SPECT are also returned as RGB pseudo-colour (:func:`bsafusion.colour.pseudo_colour`), with lookup
tables fitted by eye to the colours of the Harvard PET (black, navy, blue, grey-green, yellow,
orange, red: a muted *jet*) and SPECT (black, dark teal, purple, magenta, orange, peach) slices,
so that the YCbCr path of the pipeline is exercised on demo data too.

Example
-------
>>> from bsafusion.phantom import phantom_pair
>>> pair = phantom_pair("PET", shape=(128, 128), seed=3)
>>> pair.mri.shape, pair.other_rgb.shape
((128, 128), (128, 128, 3))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from bsafusion import modality as modality_table
from bsafusion.colour import pseudo_colour
from bsafusion.errors import InputError

__all__ = [
    "BACKGROUND",
    "SCALP",
    "SKULL",
    "CSF",
    "GREY_MATTER",
    "WHITE_MATTER",
    "VENTRICLE",
    "LESION",
    "LABEL_NAMES",
    "LESION_SIDE",
    "head_labels",
    "render",
    "PhantomPair",
    "phantom_pair",
    "write_phantom_dataset",
]

BACKGROUND, SCALP, SKULL, CSF, GREY_MATTER, WHITE_MATTER, VENTRICLE, LESION = range(8)
LABEL_NAMES: dict[int, str] = {
    BACKGROUND: "background",
    SCALP: "scalp",
    SKULL: "skull",
    CSF: "csf",
    GREY_MATTER: "grey_matter",
    WHITE_MATTER: "white_matter",
    VENTRICLE: "ventricle",
    LESION: "lesion",
}
#: Patient side of the lesion and of the larger lateral ventricle: columns ``x >= W / 2``.
LESION_SIDE = "left"

# --------------------------------------------------------------------------------------------
# Smooth random fields
# --------------------------------------------------------------------------------------------

_NOISE_GRID = 32  # cells per side of the periodic noise lattices


class _NoiseField:
    """A smooth, periodic 3D Gaussian random field with unit standard deviation.

    It is sampled at arbitrary 3D points, so 2D slices and 3D volumes draw from the same
    continuous anatomy. ``frequency`` is the number of lattice cells per unit of the sampling
    coordinates; the correlation length is about ``sigma / frequency`` units.
    """

    def __init__(self, rng: np.random.Generator, frequency: float, sigma: float = 1.5) -> None:
        grid = ndimage.gaussian_filter(rng.standard_normal((_NOISE_GRID,) * 3), sigma, mode="wrap")
        grid -= grid.mean()
        grid /= grid.std()
        self._coeffs = ndimage.spline_filter(grid, order=3, mode="grid-wrap")
        self._frequency = frequency
        self._offset = rng.uniform(0, _NOISE_GRID, size=3)

    def __call__(self, points: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        """Field values at ``points`` of shape ``(3, *spatial)`` (x, y, z first).

        With a boolean ``where`` (shape ``spatial``), only those points are evaluated (the
        others are 0): cubic interpolation of millions of voxels is the phantom's main cost.
        """
        selected = points.reshape(3, -1) if where is None else points[:, where]
        coords = selected * self._frequency + self._offset[:, None]
        values = ndimage.map_coordinates(
            self._coeffs, coords, order=3, mode="grid-wrap", prefilter=False
        )
        if where is None:
            return values.reshape(points.shape[1:])
        out = np.zeros(points.shape[1:])
        out[where] = values
        return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise on the image grid, unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="reflect")
    std = field.std()
    return field / std if std > 0 else field


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Anatomy:
    """Seeded anatomical parameters; lengths are in normalised units (image half-width = 1)."""

    scale: float
    semi_axes: tuple[float, float, float]  # head ellipsoid (x, y, z)
    centre: tuple[float, float, float]
    yaw: float  # in-plane rotation (radians)
    pitch: float  # tilt about the left-right axis (radians)
    scalp: float
    skull: float
    csf_rim: float
    cortex: float
    sulcus_depth: float
    ventricle_size: float
    ventricle_asymmetry: float  # left (x > 0) ventricle width / right ventricle width
    lesion_centre: tuple[float, float, float]
    lesion_radius: float
    slice_z: float  # axial level of a 2D slice, head-local units


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Draw one head's parameters (always in the same order, so a seed fixes them all)."""
    u = rng.uniform
    scale = u(0.93, 1.05)
    semi = (0.72 * scale * u(0.95, 1.04), 0.86 * scale * u(0.96, 1.04), 0.84 * scale)
    centre = (u(-0.03, 0.03), u(-0.03, 0.03), u(-0.08, -0.02))
    yaw = math.radians(u(-6.0, 6.0))
    pitch = math.radians(u(-5.0, 5.0))
    slice_z = u(-0.04, 0.16)
    lesion_centre = (u(0.22, 0.36), u(-0.34, 0.3), u(-0.05, 0.25))
    return _Anatomy(
        scale=scale,
        semi_axes=semi,
        centre=centre,
        yaw=yaw,
        pitch=pitch,
        scalp=u(0.03, 0.042),
        skull=u(0.045, 0.06),
        csf_rim=u(0.012, 0.02),
        cortex=u(0.04, 0.05),
        sulcus_depth=u(0.15, 0.2),
        ventricle_size=u(0.85, 1.25),
        ventricle_asymmetry=u(1.3, 1.55),
        lesion_centre=lesion_centre,
        lesion_radius=u(0.09, 0.14),
        slice_z=slice_z,
    )


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"phantom shape must be a sequence of 2 or 3 integers, got {shape!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise InputError(f"phantom shape must be (H, W) or (D, H, W) with sides >= 8, got {shape}")
    return shape


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"phantom seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _world_points(shape: tuple[int, ...], slice_z: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised world coordinates ``(3, *shape)`` (x, y, z) in [-1, 1] and the voxel spacing.

    2D grids are the plane ``z = slice_z``. The spacing is in array-axis order (as
    ``distance_transform_edt`` wants it), so distances come out in the same normalised units
    as the anatomy's thicknesses.
    """
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    spacing = np.array([2.0 / (n - 1) for n in shape])
    if len(shape) == 2:
        y, x = np.meshgrid(*axes, indexing="ij")
        z = np.full_like(x, slice_z)
    else:
        z, y, x = np.meshgrid(*axes, indexing="ij")
    return np.stack([x, y, z]), spacing


def _to_head_frame(points: np.ndarray, anat: _Anatomy) -> np.ndarray:
    """World points -> head-local points (undo the head's position, yaw and pitch)."""
    p = points - np.asarray(anat.centre).reshape(3, *([1] * (points.ndim - 1)))
    cy, sy = math.cos(anat.yaw), math.sin(anat.yaw)
    x = cy * p[0] + sy * p[1]
    y = -sy * p[0] + cy * p[1]
    cp, sp = math.cos(anat.pitch), math.sin(anat.pitch)
    y, z = cp * y + sp * p[2], -sp * y + cp * p[2]
    return np.stack([x, y, z])


def _ellipsoid(q: np.ndarray, centre: Sequence[float], semi: Sequence[float], angle: float = 0.0) -> np.ndarray:
    """Normalised radius of ``q`` in an ellipsoid rotated by ``angle`` about z."""
    dx, dy, dz = (q[i] - centre[i] for i in range(3))
    c, s = math.cos(angle), math.sin(angle)
    rx, ry = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((rx / semi[0]) ** 2 + (ry / semi[1]) ** 2 + (dz / semi[2]) ** 2)


def _lateral_ventricle(q: np.ndarray, side: int, width: float) -> np.ndarray:
    """One lateral ventricle: broad frontal horn beside the midline, narrow body, broad atrium.

    ``t`` runs from the tip of the frontal horn (0) to the tip of the occipital horn (1); the
    centre line moves laterally backwards, so the pair opens like the Harvard slices show.
    """
    y_front, y_back = -0.27, 0.32
    t = (q[1] - y_front) / (y_back - y_front)
    inside_t = (t > 0) & (t < 1)
    t = np.clip(t, 0.0, 1.0)
    centre_x = side * (0.052 + 0.15 * t**2)
    profile = 0.036 + 0.012 * np.cos(2 * np.pi * (t - 0.12)) ** 2  # broad horns, narrow body
    half_width = width * profile * (1.0 - (2 * t - 1) ** 2) ** 0.3
    height = 0.28 * width  # scales with the ventricle size
    dz = (q[2] - 0.05) / height
    taper = np.sqrt(np.clip(1.0 - dz**2, 0.0, None))
    return inside_t & (np.abs(q[0] - centre_x) < half_width * taper)


def head_labels(shape: Sequence[int], seed: int, lesion: bool = True) -> np.ndarray:
    """Draw a tissue label map of a head: 2D axial slice ``(H, W)`` or volume ``(D, H, W)``.

    Parameters
    ----------
    shape : sequence of int
        ``(H, W)`` for an axial slice (at a seeded level through the lateral ventricles) or
        ``(D, H, W)`` for a volume (ellipsoidal head; slices change along z). Sides >= 8.
    seed : int
        Fixes every random choice: the same seed gives the same array.
    lesion : bool
        Add a tumour-like blob in the patient's left hemisphere (:data:`LESION_SIDE`).

    Returns
    -------
    numpy.ndarray of int16, labels ``BACKGROUND`` .. ``LESION`` (see the module docstring).
    Layers are at least one voxel thick at any resolution, so each label is present even at
    64 x 64 (the lesion and ventricles at least in 2D slices, by construction of the level).
    """
    shape = _check_shape(shape)
    rng = np.random.default_rng(_check_seed(seed))
    anat = _draw_anatomy(rng)
    boundary_noise = _NoiseField(rng, frequency=5.0)
    scalp_noise = _NoiseField(rng, frequency=6.0)
    skull_noise = _NoiseField(rng, frequency=5.0)
    sulcus_noise = _NoiseField(rng, frequency=24.0, sigma=1.2)
    depth_noise = _NoiseField(rng, frequency=8.0)
    fissure_noise = _NoiseField(rng, frequency=6.0)
    lesion_noise = _NoiseField(rng, frequency=10.0)
    winding = [_NoiseField(rng, frequency=4.0) for _ in range(3)]
    lesion_z_jitter = rng.uniform(-0.02, 0.02)

    points, spacing = _world_points(shape, anat.slice_z * anat.scale + anat.centre[2])
    q = _to_head_frame(points, anat)
    qs = q / anat.scale  # anatomy inside the skull scales with the head
    h = float(spacing.max())  # minimum layer thickness: one voxel

    # head surface: ellipsoid with a gently perturbed boundary
    rho = _ellipsoid(q, (0, 0, 0), anat.semi_axes)
    direction = q / (np.sqrt((q**2).sum(0)) + 1e-9)
    near = rho < 1.12  # the perturbation never moves the surface further out than this
    rho = rho * (1.0 + 0.02 * boundary_noise(direction, near))
    head = near & (rho < 1.0)
    depth = ndimage.distance_transform_edt(head, sampling=spacing)

    # layers by depth below the skin; the skull is thicker at the front and back
    t_scalp = np.maximum(anat.scalp * (1 + 0.2 * scalp_noise(direction, head)), h)
    t_skull = anat.skull * (1 + 0.25 * skull_noise(direction, head) + 0.35 * np.abs(direction[1]))
    t_skull = np.maximum(t_skull, h)
    t_csf = np.maximum(anat.csf_rim, h)
    skull_top = t_scalp
    csf_top = skull_top + t_skull
    brain_top = csf_top + t_csf
    brain = depth > brain_top
    brain_depth = depth - brain_top

    # cortical folding: sulci are thin bands around the zero set of a noise field sampled on
    # a slowly shrinking, gently bent shell, so they run roughly radially and wind like real
    # sulci; the cortex then follows them (grey matter = tissue near CSF, below)
    outer = brain & (brain_depth < 2.5 * anat.sulcus_depth)  # deepest possible sulcus
    below = np.where(outer, brain_depth, 0.0)
    bend = np.stack([field(q, outer) for field in winding])
    shell = direction * (1.0 + 0.3 * below) + 0.35 * below * bend
    local_depth = anat.sulcus_depth * (1 + 0.35 * depth_noise(shell, outer))
    taper = np.where(outer, np.clip(1.0 - below / np.maximum(local_depth, 1e-6), 0.0, 1.0), 0.0)
    sulcal = taper > 0
    sulci = sulcal & (np.abs(sulcus_noise(shell, sulcal)) < 0.085 + 0.07 * taper)

    # interhemispheric fissure: everywhere on the midline but the callosal/diencephalic core
    # (so axial slices show it in front of and behind the ventricles, and fully above them)
    width = max(0.006, 0.45 * h)
    core = np.hypot((qs[1] - 0.04) / 0.36, (qs[2] + 0.1) / 0.44) < 1.0
    fissure = brain & ~core & (np.abs(qs[0]) < 0.02 + width)
    fissure &= np.abs(qs[0] - 0.012 * fissure_noise(qs, fissure)) < width

    # lateral (Sylvian) fissures: deep clefts from the lateral surface towards the insula
    sylvian = brain & (np.abs(qs[0]) > 0.34) & (np.abs(qs[2]) < 0.14)
    sylvian_y = qs[1] + 0.04 - 0.25 * (np.abs(qs[0]) - 0.35) - 0.02 * fissure_noise(2 * qs, sylvian)
    sylvian_width = np.clip((np.abs(qs[0]) - 0.32) / 0.3, 0.0, 1.0) * 0.028 + 0.4 * h
    sylvian &= np.abs(sylvian_y) < sylvian_width
    tissue = brain & ~sulci & ~fissure & ~sylvian
    to_csf = ndimage.distance_transform_edt(tissue, sampling=spacing)
    cortex = tissue & (to_csf <= max(anat.cortex, h))

    labels = np.zeros(shape, dtype=np.int16)
    labels[head] = SCALP
    labels[depth > skull_top] = SKULL
    labels[depth > csf_top] = CSF
    labels[tissue] = WHITE_MATTER
    labels[cortex] = GREY_MATTER

    # deep grey nuclei (caudate heads, lentiform nuclei, thalami), both sides
    for side in (-1, 1):
        nuclei = (
            (_ellipsoid(qs, (side * 0.1, -0.17, 0.06), (0.05, 0.075, 0.16)) < 1)
            | (_ellipsoid(qs, (side * 0.215, -0.03, 0.04), (0.05, 0.125, 0.15), side * 0.25) < 1)
            | (_ellipsoid(qs, (side * 0.085, 0.1, 0.04), (0.065, 0.085, 0.14)) < 1)
        )
        labels[nuclei & tissue & (to_csf > 1.5 * max(anat.cortex, h))] = GREY_MATTER

    # lateral ventricles (left one larger: the documented asymmetry) and the third ventricle
    size = anat.ventricle_size
    ventricles = _lateral_ventricle(qs, -1, size) | _lateral_ventricle(qs, +1, size * anat.ventricle_asymmetry)
    third = _ellipsoid(qs, (0.0, 0.1, -0.02), (max(0.012 * size, 0.45 * h), 0.1, 0.1)) < 1.0
    labels[(ventricles | third) & brain] = VENTRICLE

    if lesion:
        cx, cy, cz = anat.lesion_centre
        if len(shape) == 2:  # put the lesion on the slice
            cz = anat.slice_z + lesion_z_jitter
        r = _ellipsoid(qs, (cx, cy, cz), (max(anat.lesion_radius, 2.2 * h),) * 3)  # >= a few voxels
        candidate = brain & (r < 1.5)
        blob = candidate & (r * (1.0 + 0.18 * lesion_noise(qs, candidate)) < 1.0)
        labels[blob & brain] = LESION
    return labels


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

# tissue -> base intensity, in label order: bg, scalp, skull, csf, gm, wm, ventricle, lesion
_CONTRAST = {
    "MRI": np.array([0.0, 0.62, 0.07, 0.93, 0.56, 0.36, 0.95, 0.80]),
    "CT": np.array([0.0, 0.40, 1.00, 0.2, 0.47, 0.40, 0.2, 0.31]),
    "PET": np.array([0.0, 0.10, 0.04, 0.03, 1.00, 0.34, 0.02, 1.30]),
    "SPECT": np.array([0.0, 0.20, 0.12, 0.08, 1.00, 0.42, 0.05, 0.35]),
}
# marrow (diploe) inside thick skull: T2 moderately bright, CT less dense than cortical bone
_DIPLOE = {"MRI": 0.32, "CT": 0.80}
# point-spread sigma in normalised units (image half-width = 1): 2.8 px / 5 px at 256
_PSF_SIGMA = {"PET": 0.022, "SPECT": 0.04}


def _check_modality(modality: str) -> str:
    return modality_table.get(modality).name


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise InputError(f"labels must be a 2D or 3D array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size == 0 or labels.min() < 0 or labels.max() > LESION:
        raise InputError(f"labels must lie in 0..{LESION} (see bsafusion.phantom)")
    return labels


def _norm_sigma(shape: tuple[int, ...], sigma: float) -> list[float]:
    """A blur of ``sigma`` normalised units, in pixels along each axis."""
    return [sigma * (n - 1) / 2.0 for n in shape]


def render(labels: np.ndarray, modality: str, seed: int) -> np.ndarray:
    """Render a label map as one imaging modality, float32 in [0, 1].

    Parameters
    ----------
    labels : numpy.ndarray of int
        A 2D or 3D map from :func:`head_labels`.
    modality : {"MRI", "CT", "PET", "SPECT"}
        Case-insensitive. Anything else raises :class:`~bsafusion.errors.InputError`.
    seed : int
        Fixes texture, bias field and noise; each modality draws its own stream, so PET and
        SPECT of one seed do not share noise.

    Returns
    -------
    numpy.ndarray of float32, same shape as ``labels``. PET and SPECT are grey activity maps
    here; :func:`bsafusion.colour.pseudo_colour` turns them into the RGB look of the Harvard data.

    Notes
    -----
    Blur widths of PET and SPECT are given in normalised units, so a 64 x 64 phantom looks like
    a downsampled 256 x 256 one; MRI and CT blur is sub-pixel (partial-volume only).
    """
    labels = _check_labels(labels)
    name = _check_modality(modality)
    rng = np.random.default_rng([_check_seed(seed), modality_table.ALL.index(name)])
    shape = labels.shape
    image = _CONTRAST[name][labels]

    if name in _DIPLOE:  # cancellous bone in the middle of thick skull
        inside_skull = ndimage.distance_transform_edt(labels == SKULL)
        image = np.where(inside_skull > 1.5, _DIPLOE[name], image)

    texture_sigma = 1.5 if name in ("MRI", "CT") else 3.0
    texture_amp = {"MRI": 0.05, "CT": 0.025, "PET": 0.12, "SPECT": 0.1}[name]
    image = image * (1.0 + texture_amp * _smooth_noise(rng, shape, texture_sigma))

    if name == "MRI":
        image = ndimage.gaussian_filter(image, 0.6)  # partial volume
        coords = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
        gradient = np.tensordot(rng.uniform(-0.08, 0.08, size=len(shape)), coords, axes=1)
        bias = 1.0 + gradient + 0.05 * _smooth_noise(rng, shape, 0.25 * min(shape))
        sigma = 0.01
        noisy_re = image * bias + sigma * rng.standard_normal(shape)
        noisy_im = sigma * rng.standard_normal(shape)
        image = np.sqrt(noisy_re**2 + noisy_im**2)  # Rician magnitude noise
    elif name == "CT":
        image = ndimage.gaussian_filter(image, 0.4)
        inside = image > 0.02  # air is far below the brain window: it stays black
        image = image + 0.012 * rng.standard_normal(shape) * inside
    else:  # emission tomography: low resolution, count noise, reconstruction smoothing
        image = ndimage.gaussian_filter(image, _norm_sigma(shape, _PSF_SIGMA[name]))
        strength = 0.05 if name == "PET" else 0.07
        image = image + strength * np.sqrt(np.clip(image, 0, None)) * rng.standard_normal(shape)
        image = ndimage.gaussian_filter(image, _norm_sigma(shape, 0.25 * _PSF_SIGMA[name]))
        peak = np.percentile(image, 99.8)
        image = image / peak if peak > 0 else image
    return np.clip(image, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Pairs and datasets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomPair:
    """An aligned MRI / other-modality pair rendered from one label map.

    Attributes
    ----------
    modality : str
        ``"CT"``, ``"PET"`` or ``"SPECT"``.
    mri : numpy.ndarray
        T2-like MRI, float32 in [0, 1].
    other : numpy.ndarray
        The other modality as grey, float32 in [0, 1] (for PET/SPECT: the activity map).
    other_rgb : numpy.ndarray or None
        ``(H, W, 3)`` pseudo-colour for PET and SPECT (as the Harvard data), ``None`` for CT.
    labels : numpy.ndarray
        The shared label map (ground truth for segmentation-based checks such as Dice).
    """

    modality: str
    mri: np.ndarray
    other: np.ndarray
    other_rgb: np.ndarray | None
    labels: np.ndarray


def _check_partner(modality: str) -> str:
    return modality_table.moving(modality).name


def phantom_pair(
    modality: str, shape: Sequence[int] = (256, 256), seed: int = 0, lesion: bool = True
) -> PhantomPair:
    """Make an aligned MRI/``modality`` pair from one seeded head.

    ``modality`` is ``"CT"``, ``"PET"`` or ``"SPECT"`` (case-insensitive); ``shape`` may be 2D or
    3D (``other_rgb`` is then ``(D, H, W, 3)``). The pair is aligned on purpose: misalignment
    with a known field is added by :mod:`bsafusion.deform`.
    """
    name = _check_partner(modality)
    labels = head_labels(shape, seed, lesion=lesion)
    mri = render(labels, "MRI", seed)
    other = render(labels, name, seed)
    other_rgb = pseudo_colour(other, name) if modality_table.get(name).colour else None
    return PhantomPair(modality=name, mri=mri, other=other, other_rgb=other_rgb, labels=labels)


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    """float [0, 1] grey ``(H, W)`` or RGB ``(H, W, 3)`` -> uint8 ``(H, W, 3)``."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)  # grey stored with equal channels
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_phantom_dataset(
    root: str | Path,
    n_pairs: int,
    modalities: Sequence[str] = ("CT", "PET", "SPECT"),
    shape: Sequence[int] = (256, 256),
    seed: int = 0,
) -> list[tuple[Path, Path]]:
    """Write aligned phantom pairs as PNGs in the layout of the Harvard ``train_aligned`` set.

    For each modality ``M`` and ``N`` in ``1 .. n_pairs``: ``root/M/MRI/N.png`` and
    ``root/M/M/N.png``, 8-bit RGB; MRI and CT are grey with three equal channels, PET and SPECT
    are pseudo-colour (:func:`bsafusion.colour.pseudo_colour`), exactly as the real data is stored, so every
    loader written for the Harvard data reads the demo set unchanged. Each pair has its own
    head, derived from ``(seed, modality, N)``; existing files are overwritten. Files are
    written with SimpleITK (a dependency of the package) and read back by Pillow or SimpleITK.

    Returns
    -------
    list of (mri_path, other_path), in the order written.
    """
    import SimpleITK as sitk  # a declared dependency; only needed here

    shape = _check_shape(shape)
    if len(shape) != 2:
        raise InputError(f"the PNG dataset is 2D; shape must be (H, W), got {shape}")
    if int(n_pairs) < 1:
        raise InputError(f"n_pairs must be at least 1, got {n_pairs}")
    names = [_check_partner(m) for m in modalities]
    if not names:
        raise InputError("modalities is empty")
    root = Path(root)
    written: list[tuple[Path, Path]] = []
    for name in names:
        mri_dir, other_dir = root / name / "MRI", root / name / name
        mri_dir.mkdir(parents=True, exist_ok=True)
        other_dir.mkdir(parents=True, exist_ok=True)
        for index in range(1, int(n_pairs) + 1):
            sequence = np.random.SeedSequence([_check_seed(seed), modality_table.ALL.index(name), index])
            pair_seed = int(sequence.generate_state(1)[0])
            pair = phantom_pair(name, shape, pair_seed)
            other = pair.other if pair.other_rgb is None else pair.other_rgb
            mri_path, other_path = mri_dir / f"{index}.png", other_dir / f"{index}.png"
            for image, path in ((pair.mri, mri_path), (other, other_path)):
                sitk.WriteImage(sitk.GetImageFromArray(_to_rgb8(image), isVector=True), str(path))
            written.append((mri_path, other_path))
    return written
