"""Read and write images with their geometry; atomic outputs.

SimpleITK does the work, so images keep their physical space (spacing, origin, direction)
from file to file. Formats: 2D PNG/JPEG/BMP/TIFF (grey or RGB), NIfTI (``.nii``,
``.nii.gz``), NRRD, MetaImage (``.mha``, ``.mhd``) and DICOM (a series in a folder).
Arrays are converted to numpy only where a step needs pixels (:func:`read_slice`).

Everything the user can fix raises :class:`~bsafusion.errors.InputError` with one line naming
the file and the problem: a missing or corrupt file, an empty image, NaN/Inf values, a 4D
image, colour where grey is required.

Every write goes through :func:`atomic_output`: the file appears complete or not at all, and
an existing file is never clobbered by a failed write.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from bsafusion.colour import split_luma
from bsafusion.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "image_suffix",
    "image_stem",
    "atomic_output",
    "read_image",
    "read_slice",
    "read_luma",
    "write_image",
    "write_dicom_series",
]

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff",
    ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm",
)  # fmt: skip
"""File name endings read and written as images (lower case)."""

_EIGHT_BIT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_LOSSY_SUFFIXES = (".jpg", ".jpeg")
_FLOAT_TYPES = {
    sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64,
    sitk.sitkComplexFloat32, sitk.sitkComplexFloat64,
}  # fmt: skip


def image_suffix(path: str | os.PathLike) -> str:
    """Lower-case ending of an image file name, with ``.nii.gz`` as one suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def image_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``a/12.nii.gz`` -> ``12``)."""
    name = Path(path).name
    return name[: len(name) - len(image_suffix(name))]


# --------------------------------------------------------------------------- atomic output


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Write ``path`` all-or-nothing: yield a temporary path, move it into place on success.

    The temporary path has the **same file name** as ``path`` (so writers that pick the format
    from the extension, e.g. ``.nii.gz``, and formats with companion files, e.g. ``.mhd`` +
    ``.raw``, work unchanged) and lies in a hidden temporary folder next to ``path`` (same file
    system, so the final :func:`os.replace` is atomic). Parent folders are created.

    On success every file the body wrote into that folder is moved next to ``path`` (companion
    files first, ``path`` last) and the folder is removed. If the body raises, the folder and
    everything in it are removed, the exception propagates, and any existing ``path`` is left
    untouched. The body may also create a *folder* at the yielded path (e.g. a DICOM series); it
    then replaces an existing folder at ``path`` (two renames: not atomic, never partial).

    Use it for every output (images, CSV, PNG panels, torch checkpoints)::

        with atomic_output("results/metrics.csv") as tmp:
            table.to_csv(tmp)
        with atomic_output("model.pt") as tmp:
            torch.save(state, tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp = tmpdir / target.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{target}: nothing was written")
        for companion in sorted(tmpdir.iterdir()):
            if companion.name != target.name:
                os.replace(companion, target.parent / companion.name)
        if tmp.is_dir() and target.is_dir():
            os.replace(target, tmpdir / ".previous")  # removed with tmpdir below
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def _reason(exc: BaseException) -> str:
    """Last meaningful line of a SimpleITK/ITK exception message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    for prefix in ("sitk::ERROR:", "ITK ERROR:"):
        text = text.split(prefix, 1)[-1].strip()
    return text[:160]


def _validate(image: sitk.Image, path: Path, allow_4d: bool) -> sitk.Image:
    size = image.GetSize()
    if image.GetDimension() > 3 and not (allow_4d and image.GetDimension() == 4):
        raise InputError(f"{path}: {image.GetDimension()}D image of size {size}; a 2D slice or 3D volume is required")
    if 0 in size or image.GetNumberOfPixels() == 0:
        raise InputError(f"{path}: empty image (size {size})")
    if image.GetPixelID() in _FLOAT_TYPES:
        values = sitk.GetArrayViewFromImage(image)
        bad = ~np.isfinite(values)
        if bad.any():
            n_nan = int(np.isnan(values).sum())
            raise InputError(f"{path}: {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values")
    return image


def _read_dicom_series(directory: Path, series_id: str | None) -> sitk.Image:
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "No Series were found" goes to stderr
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if not ids:
        raise InputError(f"{directory}: folder holds no DICOM series")
    files = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), sid) for sid in ids}
    if series_id is None:
        series_id = max(ids, key=lambda sid: len(files[sid]))
        if len(ids) > 1:
            others = ", ".join(f"{sid} ({len(files[sid])} files)" for sid in ids if sid != series_id)
            warnings.warn(
                f"{directory}: {len(ids)} DICOM series; reading the largest, {series_id} "
                f"({len(files[series_id])} files); others: {others}. Pass series_id to choose.",
                stacklevel=3,
            )
    elif series_id not in files:
        raise InputError(f"{directory}: no DICOM series {series_id!r}; found {', '.join(ids)}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[series_id])
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{directory}: cannot read DICOM series {series_id} ({_reason(exc)})") from None


def read_image(path: str | os.PathLike, series_id: str | None = None, allow_4d: bool = False) -> sitk.Image:
    """Read an image file, or a DICOM series from a folder, with its geometry.

    Parameters
    ----------
    path:
        Image file (PNG, JPEG, BMP, TIFF, NIfTI, NRRD, MHA/MHD, single DICOM file) or a folder
        holding a DICOM series.
    series_id:
        DICOM SeriesInstanceUID to read when the folder holds several series. By default the
        series with the most files is read and a :class:`UserWarning` lists the others.
    allow_4d:
        Accept 4D images (otherwise an error, like 5D and more).

    Returns
    -------
    The image, pixel type as stored (colour images are vector images).

    Raises
    ------
    InputError
        Missing path, unreadable or corrupt file, empty image, NaN/Inf values, 4D image.
    """
    path = Path(path)
    if path.is_dir():
        image = _read_dicom_series(path, series_id)
    elif not path.exists():
        raise InputError(f"{path}: no such file or folder")
    elif path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"{path}: unreadable or corrupt image file ({_reason(exc)})") from None
    return _validate(image, path, allow_4d)


def _to_unit_range(values: np.ndarray) -> np.ndarray:
    """Scale pixel values to [0, 1] (float32); see :func:`read_slice` for the rule."""
    if values.dtype == np.uint8:
        return values.astype(np.float32) / 255.0
    if values.dtype == np.uint16:
        return values.astype(np.float32) / 65535.0
    if values.dtype == np.bool_:
        return values.astype(np.float32)
    out = values.astype(np.float64)
    lo, hi = float(out.min()), float(out.max())
    if np.issubdtype(values.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return out.astype(np.float32)
    if hi == lo:
        return np.zeros(out.shape, np.float32)
    return ((out - lo) / (hi - lo)).astype(np.float32)


def _slice_array(path: Path) -> np.ndarray:
    """Pixels of a 2D image as ``(H, W, C)`` float32 in [0, 1]."""
    image = read_image(path)
    size = image.GetSize()
    if image.GetDimension() == 3 and size[2] == 1:
        image = image[:, :, 0]
    if image.GetDimension() != 2:
        raise InputError(f"{path}: {image.GetDimension()}D image of size {size}; a 2D slice is required")
    values = sitk.GetArrayFromImage(image)
    if values.ndim == 2:
        values = values[..., None]
    if np.iscomplexobj(values):
        raise InputError(f"{path}: complex pixels; a real-valued image is required")
    return _to_unit_range(values)


def _colour_channels(values: np.ndarray, path: Path) -> np.ndarray:
    channels = values.shape[-1]
    if channels in (1, 2):  # grey, grey + alpha
        return np.repeat(values[..., :1], 3, axis=-1)
    if channels in (3, 4):  # RGB, RGBA
        return values[..., :3]
    raise InputError(f"{path}: {channels}-component pixels; grey or RGB is required")


def _is_grey(rgb: np.ndarray) -> bool:
    return bool(np.ptp(rgb, axis=-1).max() <= 1e-6)


def read_slice(path: str | os.PathLike, grey: bool = True, to_luma: bool = False) -> np.ndarray:
    """Read a 2D image as float32 in [0, 1]: ``(H, W)`` if ``grey`` else ``(H, W, 3)``.

    Scaling: 8-bit images are divided by 255, 16-bit by 65535; float images already within
    [0, 1] are kept; anything else (floats outside [0, 1], signed or 32-bit integers) is
    min-max normalised to [0, 1] (a constant image becomes 0). A 3D image with one slice counts
    as 2D. Alpha channels are dropped.

    ``grey=True``: a grey image, or an RGB image whose channels are equal (the Harvard CT/MRI
    are stored so), gives its value; an RGB image whose channels differ is an error unless
    ``to_luma``, which returns its luma Y (:func:`bsafusion.colour.rgb_to_ycbcr`).
    ``grey=False``: always ``(H, W, 3)``, grey images repeated on the three channels.

    Raises
    ------
    InputError
        Everything :func:`read_image` raises, a 3D volume, RGB where grey is required.
    """
    path = Path(path)
    rgb = _colour_channels(_slice_array(path), path)
    if not grey:
        return np.ascontiguousarray(rgb)
    if _is_grey(rgb):
        return np.ascontiguousarray(rgb[..., 0])
    if not to_luma:
        raise InputError(f"{path}: RGB where grey is required (the colour channels differ)")
    return split_luma(rgb)[0].astype(np.float32)


def read_luma(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Luma and chroma of a 2D image: ``(Y (H, W), CbCr (H, W, 2))``, or ``(value, None)`` if grey.

    Grey images (including RGB with equal channels) are their own luma; colour images give the
    Y and CbCr of :func:`bsafusion.colour.split_luma`. Values are float32 in [0, 1].
    """
    path = Path(path)
    rgb = _colour_channels(_slice_array(path), path)
    if _is_grey(rgb):
        return np.ascontiguousarray(rgb[..., 0]), None
    y, cbcr = split_luma(rgb)
    return y.astype(np.float32), cbcr.astype(np.float32)


# --------------------------------------------------------------------------- writing


def _eight_bit(values: np.ndarray, path: Path) -> np.ndarray:
    """Pixels for an 8-bit format: floats in [0, 1] -> uint8 (clip, round); integers as they are."""
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if values.dtype == np.uint8:
        return values
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise InputError(f"{path}: cannot write NaN/Inf values")
        return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    if values.dtype == np.uint16 and image_suffix(path) == ".png":
        return values
    if np.issubdtype(values.dtype, np.integer) and values.size and values.min() >= 0 and values.max() <= 255:
        return values.astype(np.uint8)
    raise InputError(f"{path}: {values.dtype} values outside 0..255 cannot be stored in {image_suffix(path)}")


def _as_sitk(image: sitk.Image | np.ndarray, path: Path, vector: bool | None) -> sitk.Image:
    if isinstance(image, sitk.Image):
        if image_suffix(path) in _EIGHT_BIT_SUFFIXES and image.GetPixelID() not in (
            sitk.sitkUInt8, sitk.sitkVectorUInt8, sitk.sitkUInt16,
        ):  # fmt: skip
            values = _eight_bit(sitk.GetArrayFromImage(image), path)
            converted = sitk.GetImageFromArray(values, isVector=image.GetNumberOfComponentsPerPixel() > 1)
            converted.CopyInformation(image)
            return converted
        return image
    values = np.asarray(image)
    if vector is None:
        vector = values.ndim == 3 and values.shape[-1] in (3, 4)
    if values.dtype == np.bool_:
        values = values.astype(np.uint8)
    if image_suffix(path) in _EIGHT_BIT_SUFFIXES:
        values = _eight_bit(values, path)
    elif values.dtype == np.float16:
        values = values.astype(np.float32)
    return sitk.GetImageFromArray(values, isVector=vector)


def write_image(
    image: sitk.Image | np.ndarray,
    path: str | os.PathLike,
    reference: sitk.Image | None = None,
    vector: bool | None = None,
) -> Path:
    """Write an image atomically; the format follows the extension. Returns ``path``.

    Parameters
    ----------
    image:
        A SimpleITK image (geometry kept) or a numpy array (``(H, W)``, ``(D, H, W)``, or
        ``(H, W, 3|4)`` RGB(A), written as a vector image unless ``vector=False``).
    path:
        Output file; parent folders are created. PNG/JPEG/BMP store 8 bits: float pixels are
        taken as [0, 1], clipped and rounded to 0..255 (16-bit PNG keeps ``uint16``). These
        formats do not store origin or direction.
    reference:
        Image whose origin, spacing and direction are copied (same size required).
    vector:
        Force (``True``) or forbid (``False``) reading the last array axis as colour channels.

    Raises
    ------
    InputError
        Unknown extension, size differing from ``reference``, values an 8-bit format cannot
        hold, or a write error (permission, disk full...). Nothing is left behind.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unknown image format {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    out = _as_sitk(image, path, vector)
    if reference is not None:
        if reference.GetSize() != out.GetSize():
            raise InputError(
                f"{path}: image size {out.GetSize()} differs from the reference size {reference.GetSize()}"
            )
        out = sitk.Image(out)
        out.CopyInformation(reference)
    try:
        with atomic_output(path) as tmp:
            sitk.WriteImage(out, str(tmp), suffix not in _LOSSY_SUFFIXES)
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot write image ({_reason(exc)})") from None
    return path


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8g}"


def _new_uid() -> str:
    """A unique DICOM UID from a random UUID (ISO/IEC 9834-8, root ``2.25``)."""
    return f"2.25.{uuid.uuid4().int}"


def _dicom_pixels(volume: sitk.Image, directory: Path) -> tuple[sitk.Image, list[tuple[str, str]]]:
    """Pixel image GDCM can store, with the rescale tags it needs.

    Integer volumes that fit 16 bits (and integer-valued floats that fit ``int16``) are stored
    as they are. Other volumes are stored as ``int16`` with RescaleSlope/RescaleIntercept
    chosen to span the value range (error at most slope / 2); GDCM applies the inverse rescale
    when it is given the float image and these tags (the SimpleITK DicomSeriesFromArray recipe).
    """
    pid = volume.GetPixelID()
    if pid in (sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16):
        return volume, []
    values = sitk.GetArrayViewFromImage(volume)
    lo, hi = float(values.min()), float(values.max())
    integral = np.issubdtype(values.dtype, np.integer) or bool(np.all(values == np.round(values)))
    if integral and -32768 <= lo and hi <= 32767:
        return sitk.Cast(volume, sitk.sitkInt16), []
    intercept = float(_ds((lo + hi) / 2.0))
    slope = float(_ds(max(hi - lo, 1e-12) / 65000.0)) if hi > lo else 1.0
    tags = [
        ("0028|1052", _ds(intercept)),
        ("0028|1053", _ds(slope)),
        ("0028|0100", "16"),  # bits allocated
        ("0028|0101", "16"),  # bits stored
        ("0028|0102", "15"),  # high bit
        ("0028|0103", "1"),  # signed
    ]
    return sitk.Cast(volume, sitk.sitkFloat64), tags


def write_dicom_series(
    volume: sitk.Image,
    directory: str | os.PathLike,
    modality: str = "CT",
    series_description: str = "BSAFusion",
    patient_name: str = "Anonymous",
    patient_id: str = "BSAFUSION",
    overwrite: bool = False,
) -> list[Path]:
    """Write a 3D volume as a DICOM series, one file per slice, into a new folder.

    Follows SimpleITK's *DicomSeriesFromArray* example: every slice carries the shared study,
    series and frame-of-reference UIDs, ImageOrientationPatient (the first two direction
    columns), its own ImagePositionPatient (physical position of its first voxel),
    PixelSpacing, SliceThickness and SpacingBetweenSlices, so :func:`read_image` on the folder
    gives back origin, spacing and direction. Pixels: ``uint8``/``int16``/``uint16`` as they are,
    other integers (and integer-valued floats) as ``int16`` when they fit, otherwise ``int16``
    with RescaleSlope/RescaleIntercept (float error at most half the slope, i.e. range/130000).

    DICOM readers order slices along ``row x column`` of the orientation, so a volume whose
    direction matrix is left-handed (determinant -1) reads back as the equivalent right-handed
    volume: same voxels at the same physical points, slice order and third direction column
    reversed.

    Parameters
    ----------
    volume:
        3D (or 2D: one slice) scalar image.
    directory:
        Output folder, written atomically (a temporary folder renamed at the end).
    modality:
        DICOM Modality (0008,0060). GDCM picks the storage class from it: ``"CT"`` (default),
        ``"MR"`` and ``"PT"`` store PixelSpacing (0028,0030); ``"OT"`` (secondary capture)
        stores it as NominalScannedPixelSpacing (0018,2010), which SimpleITK reads back but
        other viewers may ignore.
    overwrite:
        Replace an existing non-empty folder (otherwise an error).

    Returns
    -------
    The written files, in slice order.
    """
    directory = Path(directory)
    if volume.GetNumberOfComponentsPerPixel() != 1:
        components = volume.GetNumberOfComponentsPerPixel()
        raise InputError(f"{directory}: DICOM series need a scalar volume, got {components} components")
    if volume.GetDimension() == 2:
        volume = sitk.JoinSeries(volume)
    if volume.GetDimension() != 3:
        raise InputError(f"{directory}: DICOM series need a 2D or 3D volume, got {volume.GetDimension()}D")
    _validate(volume, directory, allow_4d=False)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise InputError(f"{directory}: folder is not empty (pass overwrite=True to replace it)")
    pixels, rescale_tags = _dicom_pixels(volume, directory)
    d = volume.GetDirection()
    now_date, now_time = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    series_uid = _new_uid()
    shared = [
        ("0008|0008", "DERIVED\\SECONDARY"),
        ("0008|0020", now_date), ("0008|0030", now_time),
        ("0008|0021", now_date), ("0008|0031", now_time),
        ("0008|0060", modality),
        ("0008|103e", series_description),
        ("0010|0010", patient_name), ("0010|0020", patient_id),
        ("0020|000d", _new_uid()), ("0020|000e", series_uid), ("0020|0052", _new_uid()),
        ("0020|0011", "1"),
        ("0020|0037", "\\".join(_ds(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
        ("0018|0050", _ds(volume.GetSpacing()[2])),
        ("0018|0088", _ds(volume.GetSpacing()[2])),
        *rescale_tags,
    ]  # fmt: skip
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    names = [f"IM{i + 1:05d}.dcm" for i in range(volume.GetSize()[2])]
    try:
        with atomic_output(directory) as tmp:
            tmp.mkdir()
            for i, name in enumerate(names):
                image_slice = pixels[:, :, i]
                for tag, value in shared:
                    image_slice.SetMetaData(tag, value)
                position = volume.TransformIndexToPhysicalPoint((0, 0, i))
                image_slice.SetMetaData("0020|0032", "\\".join(_ds(v) for v in position))
                image_slice.SetMetaData("0020|0013", str(i + 1))
                image_slice.SetMetaData("0008|0018", f"{series_uid}.{i + 1}")
                writer.SetFileName(str(tmp / name))
                writer.Execute(image_slice)
    except RuntimeError as exc:
        raise InputError(f"{directory}: cannot write DICOM series ({_reason(exc)})") from None
    return [directory / name for name in names]

