"""Per-volume intensity normalisation to [0, 1], per modality, and modality sanity checks.

Why per volume
--------------
The network sees one slice at a time. If each slice were scaled by its own minimum and
maximum, a slice through the skull top and a slice through the ventricles would get different
grey levels for the same tissue, and the stacked fused volume would flicker from slice to
slice. Every rule below therefore computes **one** mapping per volume and applies it to all of
its slices.

The rules (what :func:`intensity_range` returns)
------------------------------------------------
``MRI`` (the fixed volume)
    Robust percentiles: ``[p0.5, p99.5]`` of the voxel values -> ``[0, 1]``, clipped. MRI has no
    absolute unit, so only a robust min-max is meaningful; the percentiles ignore a few hot
    voxels (vessels, artefacts) that would otherwise darken the whole volume.
``CT``
    If the volume is in Hounsfield units (see :func:`looks_like_hounsfield`: it contains air,
    values <= -500 HU), a linear **window** :data:`CT_WINDOW` = ``[-15, 105]`` HU (level 45,
    width 120) -> ``[0, 1]``, clipped. It was chosen to match the CT slices the network was
    trained on (the Harvard atlas, and the phantom fitted to them, :mod:`bsafusion.phantom`):
    CSF (about 8 HU) -> 0.2, white matter (25 HU) -> 0.34, grey matter (40 HU) -> 0.47,
    bone -> 1, air and fat -> 0. A CT that is not in HU (no negative values: raw scanner
    values, or HU shifted by +1024 as some files store it) has no known scale: it falls back
    to the MRI rule (robust percentiles), which also keeps bone white and brain mid-grey.
``PET`` / ``SPECT``
    **SUV-like** scaling: a pure scale factor, no offset (activity is proportional to tracer
    concentration, so ratios between regions, what an SUV conveys, are kept), by a *robust
    maximum*, the 99.5th percentile of the positive voxels, then clipped to ``[0, 1]``;
    negative values (reconstruction undershoot) become 0. Without the injected dose and the
    patient's weight a true SUV cannot be computed, and the robust maximum makes the scale
    independent of the unit (Bq/ml, counts, SUV) without letting one hot voxel darken
    everything.

Percentiles of volumes larger than 2 million voxels are taken on a regular subsample (every
k-th voxel), which changes them by far less than one grey level and keeps this step well under
a second for a 256 x 256 x 150 volume.

Modality checks
---------------
:func:`check_modality` catches the mix-ups a user makes: the fixed volume is a CT (in HU), the
moving PET/SPECT volume is a CT in HU, or a DICOM *Modality* tag (0008,0060), when the reader
kept it, contradicts the modality asked for.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from bsafusion import modality as modalities
from bsafusion.errors import InputError

__all__ = [
    "CT_WINDOW",
    "MRI_PERCENTILES",
    "EMISSION_PERCENTILE",
    "looks_like_hounsfield",
    "intensity_range",
    "normalise_volume",
    "check_modality",
]

#: Hounsfield window ``(low, high)`` mapped to [0, 1] for CT in HU (level 45, width 120).
CT_WINDOW: tuple[float, float] = (-15.0, 105.0)
#: Percentiles mapped to 0 and 1 for MRI (and for CT not in HU).
MRI_PERCENTILES: tuple[float, float] = (0.5, 99.5)
#: Percentile of the positive voxels taken as the "robust maximum" of PET/SPECT.
EMISSION_PERCENTILE: float = 99.5

_AIR_HU = -500.0  # anything at or below is air in a CT in Hounsfield units
_MAX_SAMPLES = 2_000_000


def _sample(values: np.ndarray) -> np.ndarray:
    """Every k-th voxel, so that at most about two million remain (percentiles only)."""
    flat = values.ravel()
    step = max(1, flat.size // _MAX_SAMPLES)
    return flat[::step]


def looks_like_hounsfield(values: np.ndarray) -> bool:
    """Whether a CT array is in Hounsfield units: at least 0.1 % of its voxels are air (<= -500).

    A head CT always contains air around the head (-1000 HU); MRI, PET and SPECT never hold
    such negative values, which is also how :func:`check_modality` spots a CT given as MRI/PET.
    """
    sample = _sample(np.asarray(values))
    return bool(np.mean(sample <= _AIR_HU) >= 1e-3)


def intensity_range(
    values: np.ndarray, modality: str, ct_window: tuple[float, float] = CT_WINDOW
) -> tuple[float, float]:
    """The values mapped to 0 and 1 for a volume of ``modality`` (see the module docstring).

    Parameters
    ----------
    values : numpy.ndarray
        All voxels of the volume (any shape), finite.
    modality : {"MRI", "CT", "PET", "SPECT"}
        Case-insensitive.
    ct_window : (float, float)
        Hounsfield window for CT in HU.

    Returns
    -------
    (low, high) with ``high > low``.

    Raises
    ------
    InputError
        Unknown modality, or a volume with no contrast (constant, or no positive voxel for
        PET/SPECT).

    Examples
    --------
    >>> intensity_range(np.array([-1000.0, 0.0, 40.0, 1500.0]), "CT")
    (-15.0, 105.0)
    >>> intensity_range(np.array([0.0, 2.0, 4.0]), "PET")
    (0.0, 3.99)
    """
    name = modalities.get(modality).name
    values = np.asarray(values)
    if name == "CT" and looks_like_hounsfield(values):
        low, high = float(ct_window[0]), float(ct_window[1])
        if not high > low:
            raise InputError(f"CT window must be (low, high) with high > low, got {ct_window}")
        return low, high
    sample = _sample(values).astype(np.float64, copy=False)
    if name in ("PET", "SPECT"):
        positive = sample[sample > 0]
        high = float(np.percentile(positive, EMISSION_PERCENTILE)) if positive.size else 0.0
        if high <= 0:
            raise InputError(f"{name} volume has no positive activity (all voxels <= 0)")
        return 0.0, high
    low, high = (float(v) for v in np.percentile(sample, MRI_PERCENTILES))
    if high <= low:  # more than 99 % of one value: fall back to the full range
        low, high = float(sample.min()), float(sample.max())
    if high <= low:
        raise InputError(f"{name} volume is constant ({low:g}); nothing to register")
    return low, high


def normalise_volume(
    image: sitk.Image, modality: str, ct_window: tuple[float, float] = CT_WINDOW, name: str = "volume"
) -> sitk.Image:
    """Map a scalar volume to float32 in [0, 1] with one rule for the whole volume.

    Parameters
    ----------
    image : SimpleITK.Image
        Scalar image (any pixel type); its geometry is kept.
    modality : {"MRI", "CT", "PET", "SPECT"}
        Which rule (module docstring).
    ct_window : (float, float)
        Hounsfield window used when a CT is in HU.
    name : str
        How error messages call the volume (e.g. its file name).

    Returns
    -------
    SimpleITK.Image of float32, same size, origin, spacing and direction.

    Raises
    ------
    InputError
        Colour/vector pixels, NaN or infinite values, no contrast, unknown modality.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        components = image.GetNumberOfComponentsPerPixel()
        raise InputError(f"{name}: {components}-component pixels; a scalar (grey) volume is required")
    values = sitk.GetArrayViewFromImage(image)
    if np.iscomplexobj(values):
        raise InputError(f"{name}: complex pixels; a real-valued volume is required")
    if not np.isfinite(values).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    try:
        low, high = intensity_range(values, modality, ct_window)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(1.0 / (high - low))
    out = sitk.GetImageFromArray(np.clip(scaled, 0.0, 1.0, out=scaled))
    out.CopyInformation(image)
    return out


def _dicom_modality(image: sitk.Image) -> str | None:
    key = "0008|0060"
    return image.GetMetaData(key).strip().upper() if image.HasMetaDataKey(key) else None


def check_modality(image: sitk.Image, modality: str, name: str = "volume") -> None:
    """Raise :class:`InputError` when ``image`` evidently is not of ``modality``.

    Two checks, both cheap and free of false alarms on real data: a DICOM Modality tag
    (``MR``, ``CT``, ``PT``, ``NM``), when present, must match; and a volume that is not
    supposed to be a CT must not look like a CT in Hounsfield units
    (:func:`looks_like_hounsfield`: MRI, PET and SPECT have no values at -500 and below).
    Anything subtler (a CT stored without HU given as MRI) cannot be told from the voxels
    alone and is not flagged.
    """
    row = modalities.get(modality)
    expected = row.name
    tag = _dicom_modality(image)
    known = {v for m in modalities.TABLE for v in m.dicom}
    if tag in known and tag not in row.dicom:
        raise InputError(f"{name}: DICOM Modality is {tag}, but a {expected} volume is expected here")
    scalar = image.GetNumberOfComponentsPerPixel() == 1
    if expected != "CT" and scalar and looks_like_hounsfield(sitk.GetArrayViewFromImage(image)):
        raise InputError(f"{name}: looks like a CT in Hounsfield units (air at -500 and below), "
                         f"but a {expected} volume is expected here")
