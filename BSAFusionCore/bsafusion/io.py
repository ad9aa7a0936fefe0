"""Read and write images with their geometry; atomic outputs.

SimpleITK does the work, so images keep their physical space (spacing, origin, direction)
from file to file. Formats: 2D PNG/JPEG/BMP/TIFF (grey or RGB), NIfTI (``.nii``,
``.nii.gz``), NRRD, MetaImage (``.mha``, ``.mhd``) and DICOM (a series in a folder).
Arrays are converted to numpy only where a step needs pixels (:func:`read_slice`).

Everything the user can fix raises :class:`~bsafusion.errors.InputError` with one line naming
the file and the problem: a missing or corrupt file, an empty image, NaN/Inf values, a 4D
image, colour where grey is required.

Every write goes through :func:`staged_outputs` (a set of files) or :func:`atomic_output` (one
file): outputs appear complete or not at all, an existing file is never clobbered by a failed
write, and images and transforms are read back before they are published.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import locale
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

try:
    import fcntl
except ImportError:  # Windows: no locks (see _locked)
    fcntl = None  # type: ignore[assignment]

from bsafusion.colour import split_luma
from bsafusion.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "image_suffix",
    "image_stem",
    "GEOMETRY_FREE_SUFFIXES",
    "check_output_dir",
    "staged_outputs",
    "atomic_output",
    "WRITE_THREADS",
    "write_in_parallel",
    "check_direction",
    "read_image",
    "read_slice_image",
    "as_slice_image",
    "slice_pixels",
    "luma_pixels",
    "read_slice",
    "read_luma",
    "write_image",
    "as_eight_bit",
    "write_transform",
    "write_dicom_series",
]

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff",
    ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm",
)  # fmt: skip
"""File name endings read and written as images (lower case)."""

_EIGHT_BIT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
GEOMETRY_FREE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""Formats that store no origin or direction (pixel grids only)."""
_ORTHONORMAL_TOLERANCE = 1e-4  # NIfTI stores directions as float32 quaternions
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

_STAGE_PREFIX = ".bsafusion-"
_STAGE_SUFFIX = ".tmp"
_OWNER = ".owner"  # flocked by the run that owns a staging folder, for as long as it lives
_BACKUP = ".previous"
# OSError numbers that mean "the output cannot be written", not "a bug": turned into InputError
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


def check_output_dir(path: str | os.PathLike) -> Path:
    """Check, before any computation, that ``path`` can become an output folder; return it.

    The nearest existing folder on the way to ``path`` must be a folder in which a file can be
    created (probed with an anonymous temporary file, so nothing appears and nothing is
    created when the check fails or the run fails later).

    Raises
    ------
    InputError
        ``path`` or one of its parents is a file, or the folder is not writable.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file {existing}"
        raise InputError(f"{path}: output folder {where}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=_STAGE_PREFIX):
            pass
    except OSError as exc:
        raise InputError(f"{path}: output folder is not writable ({exc.strerror or exc})") from None
    return path


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive lock on ``folder`` (``flock`` on its descriptor; released if the process dies).

    Publications and clean-ups of staging folders in one output folder take it, so two runs
    never interleave their renames. Without ``fcntl`` (Windows) there is no lock.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _is_stale(stage: Path) -> bool:
    """A staging folder whose owner died (its owner lock is free, or was never taken)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(stage / _OWNER, os.O_RDONLY)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _remove_stale_stages(folder: Path) -> None:
    for entry in folder.glob(f"{_STAGE_PREFIX}*{_STAGE_SUFFIX}"):
        if entry.is_dir() and _is_stale(entry):
            shutil.rmtree(entry, ignore_errors=True)


def _open_stage(folder: Path) -> tuple[Path, int]:
    """A new staging folder in ``folder`` and the descriptor holding its owner lock."""
    with _locked(folder):  # a clean-up never sees a stage before its owner lock is taken
        _remove_stale_stages(folder)
        stage = Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, suffix=_STAGE_SUFFIX, dir=folder))
        fd = os.open(stage / _OWNER, os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
    return stage, fd


def _sync(path: Path) -> None:
    """Flush a staged file (or every file of a staged folder) to disk: late ENOSPC shows here."""
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(stage: Path, folder: Path, last: str | None) -> None:
    """Move every entry of ``stage`` into ``folder``, all or none (``last`` moved last).

    An existing entry is kept in ``stage`` (hard link for files, so it never disappears;
    rename for folders) until every new entry is in place; if any move fails, the new entries
    are removed and the old ones put back.
    """
    entries = sorted((p for p in stage.iterdir() if p.name != _OWNER), key=lambda p: (p.name == last, p.name))
    if not entries:
        raise FileNotFoundError(f"{folder / (last or '')}: nothing was written")
    for entry in entries:
        _sync(entry)
    backup = stage / _BACKUP
    backup.mkdir()
    done: list[tuple[Path, bool]] = []
    with _locked(folder):
        try:
            for entry in entries:
                target = folder / entry.name
                kept = target.exists() or target.is_symlink()
                if kept:
                    _keep(target, backup / entry.name)
                os.replace(entry, target)
                done.append((target, kept))
        except BaseException:
            for target, kept in reversed(done):
                _remove(target)
                if kept:
                    os.replace(backup / target.name, target)
            raise
    _fsync_folder(folder)


def _keep(target: Path, copy: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        os.replace(target, copy)
        return
    try:
        os.link(target, copy, follow_symlinks=False)
    except OSError:  # file systems without hard links: the old file is briefly absent
        os.replace(target, copy)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the renames are done regardless
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_outputs(out_dir: str | os.PathLike, last: str | None = None) -> Iterator[Path]:
    """Write a set of outputs all-or-nothing: yield a private staging folder, publish it on success.

    The staging folder is a hidden ``.bsafusion-XXXX.tmp/`` inside ``out_dir`` (same file
    system, so publishing is renames), owned by this run through a lock that dies with the
    process. When the body returns, every file and folder it wrote there is flushed to disk
    and moved into ``out_dir`` under a lock on ``out_dir``, all or none (``last`` moved last,
    e.g. a ``.mhd`` after its ``.raw``); existing entries of the same names are replaced. If
    the body raises, or the process is interrupted (SIGINT, or SIGTERM through the CLI),
    nothing is published and the staging folder is removed. A folder left by a killed run
    (SIGKILL, power loss) is removed by the next run that writes into ``out_dir``. Two runs
    writing the same names into one folder each publish a complete set; the later one wins.

    Raises
    ------
    InputError
        ``out_dir`` cannot be created, or a write fails for lack of space or permission.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stage, owner = _open_stage(out_dir)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from None
    try:
        yield stage
        _publish(stage, out_dir, last)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) or exc.errno not in _WRITE_ERRNOS:
            raise
        raise InputError(f"{out_dir}: cannot write the outputs ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        os.close(owner)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Write one output ``path`` all-or-nothing: :func:`staged_outputs` for a single entry.

    The yielded temporary path has the **same file name** as ``path`` (so writers that pick
    the format from the extension, e.g. ``.nii.gz``, and formats with companion files, e.g.
    ``.mhd`` + ``.raw``, work unchanged); companions are published with it, ``path`` last. The
    body may also create a *folder* at the yielded path (e.g. a DICOM series). Parent folders
    are created; an existing ``path`` is untouched if the body raises.

    Use it for every output (images, CSV, PNG panels, torch checkpoints)::

        with atomic_output("results/metrics.csv") as tmp:
            table.to_csv(tmp)
        with atomic_output("model.pt") as tmp:
            torch.save(state, tmp)
    """
    target = Path(path)
    with staged_outputs(target.parent, last=target.name) as stage:
        yield stage / target.name
        if not (stage / target.name).exists():
            raise FileNotFoundError(f"{target}: nothing was written")


#: Files written at once by :func:`write_in_parallel`. Each writer is one encoder or gzip stream
#: (single-threaded, and run outside Python's lock by SimpleITK and Pillow) followed by its
#: read-back check, so two of them keep two cores busy where one left a core idle.
WRITE_THREADS = 2


def write_in_parallel(writers: Sequence[Callable[[], Any]]) -> None:
    """Run ``writers`` on :data:`WRITE_THREADS` threads; raise the first failure once all stopped.

    Give the slowest writer first, so that the last one to finish is short and the threads end
    together. After a failure (or an interruption) the writers not yet started are dropped, and
    the ones running are waited for, so a staging folder (:func:`staged_outputs`) is never
    removed under a running writer.
    """
    with ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="bsafusion-write") as pool:
        futures = [pool.submit(writer) for writer in writers]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    for future in futures:
        if not future.cancelled():
            future.result()


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


# NIfTI-1 / NIfTI-2 header: (size, datatype offset, dim offset and type, vox_offset offset and type)
_NIFTI_LAYOUTS = {348: (70, 40, "h", 108, "f"), 540: (12, 16, "q", 168, "q")}
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nifti_nonfinite(path: Path) -> tuple[int, int]:
    """NaN and infinite voxel counts of a float NIfTI file, read from its raw data.

    SimpleITK's NIfTI reader turns NaN into 0, so a partly-NaN file would look valid and an
    all-NaN one merely constant; the voxels are therefore counted in the file itself.
    Non-float files and headers this does not understand give ``(0, 0)`` (the SimpleITK read
    that follows reports real corruption).
    """
    opener = gzip.open if image_suffix(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(540)
            for order in "<>":
                size = int(np.frombuffer(head[:4], f"{order}i4")[0]) if len(head) >= 4 else 0
                if size in _NIFTI_LAYOUTS and len(head) >= size:
                    break
            else:
                return 0, 0
            type_at, dim_at, dim_type, offset_at, offset_type = _NIFTI_LAYOUTS[size]
            datatype = int(np.frombuffer(head, f"{order}i2", 1, type_at)[0])
            if datatype not in _NIFTI_FLOATS:
                return 0, 0
            dims = np.frombuffer(head, f"{order}{dim_type}", 8, dim_at).astype(np.int64)
            count = int(np.prod(dims[1 : 1 + int(np.clip(dims[0], 1, 7))]))
            handle.seek(int(np.frombuffer(head, f"{order}{offset_type}", 1, offset_at)[0]))
            values = np.frombuffer(handle.read(count * int(_NIFTI_FLOATS[datatype][1])), order + _NIFTI_FLOATS[datatype])
    except (OSError, EOFError, ValueError, OverflowError):
        return 0, 0
    n_nan = int(np.isnan(values).sum())
    return n_nan, int(np.isinf(values).sum())


def check_direction(image: sitk.Image, name: str) -> sitk.Image:
    """Refuse a direction matrix that is not a rotation or reflection (orthonormal columns).

    A sheared or scaled matrix (even of determinant 1) cannot be stored faithfully in NIfTI,
    and outputs "in the fixed geometry" would silently be in another one.
    """
    n = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(n, n)
    if not np.isfinite(direction).all():
        raise InputError(f"{name}: direction matrix {direction.ravel().tolist()} is not finite")
    deviation = float(np.abs(direction.T @ direction - np.eye(n)).max())
    if deviation > _ORTHONORMAL_TOLERANCE:
        raise InputError(f"{name}: direction matrix is not orthonormal (sheared or scaled; D^T D differs from "
                         f"the identity by {deviation:.3g}); a rotation is required")
    return image


@contextlib.contextmanager
def _kept_locale() -> Iterator[None]:
    """GDCM switches the process's C locale to "C", which turns Python's default text
    encoding into ASCII for the rest of the process; put the locale back afterwards."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _read_dicom_series(directory: Path, series_id: str | None) -> sitk.Image:
    with _kept_locale():
        return _read_gdcm_series(directory, series_id)


def _read_gdcm_series(directory: Path, series_id: str | None) -> sitk.Image:
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "No Series were found" goes to stderr
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if not ids:
        images = sorted(p.name for p in directory.iterdir() if image_suffix(p) in IMAGE_SUFFIXES)
        if images:
            raise InputError(f"{directory}: folder holds no DICOM series but {len(images)} other image files "
                             f"(e.g. {images[0]}); give a file, or pair two folders of slices")
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
    else:
        _check_readable(path)
        image = _read_file(path)
        if image_suffix(path) in (".nii", ".nii.gz") and image.GetPixelID() in _FLOAT_TYPES:
            n_nan, n_inf = _nifti_nonfinite(path)
            if n_nan or n_inf:
                raise InputError(f"{path}: {n_nan} NaN and {n_inf} infinite values")
    return _validate(image, path, allow_4d)


def _read_file(path: Path) -> sitk.Image:
    """``sitk.ReadImage`` with what native readers print to file descriptor 2 caught.

    On failure MetaIO and GDCM print the real reason while ITK's exception often says only
    "No such file or directory"; that printed reason goes into the one-line error instead of
    onto the terminal. On success the printed text (warnings) is passed on to stderr.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            image, error = sitk.ReadImage(str(path)), None
        except RuntimeError as exc:
            image, error = None, exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        printed = sink.read().decode("utf-8", "replace")
    if error is None:
        sys.stderr.write(printed)
        return image
    lines = [line.strip() for line in printed.splitlines() if line.strip()]
    reason = lines[-1][:160] if lines else _reason(error)
    raise InputError(f"{path}: unreadable or corrupt image file ({reason})")


def _check_readable(path: Path) -> None:
    """An empty or unopenable file gets its own message (SimpleITK says "does not exist")."""
    try:
        with open(path, "rb") as handle:
            if not handle.read(1):
                raise InputError(f"{path}: empty file")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


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


def read_slice_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 2D image with its geometry (a 3D image with one slice counts as 2D).

    Raises
    ------
    InputError
        Everything :func:`read_image` raises, an image with more than one slice, a direction
        matrix that is not orthonormal.
    """
    return as_slice_image(read_image(path), path)


def as_slice_image(image: sitk.Image, path: str | os.PathLike) -> sitk.Image:
    """An image :func:`read_image` gave, as the 2D slice :func:`read_slice_image` returns (same checks)."""
    size = image.GetSize()
    if image.GetDimension() == 3 and size[2] == 1:
        image = image[:, :, 0]
    if image.GetDimension() != 2:
        raise InputError(f"{path}: {image.GetDimension()}D image of size {size}; a 2D slice is required")
    return check_direction(image, str(path))


def _slice_values(image: sitk.Image, name: str | os.PathLike) -> np.ndarray:
    """Pixels of a 2D image as ``(H, W, 3)`` float32 in [0, 1] (grey repeated, alpha dropped)."""
    values = sitk.GetArrayFromImage(image)
    if values.ndim == 2:
        values = values[..., None]
    if np.iscomplexobj(values):
        raise InputError(f"{name}: complex pixels; a real-valued image is required")
    channels = values.shape[-1]
    if channels == 2 and values.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{name}: 2-component {values.dtype} pixels (complex values or a vector field?); "
                         f"grey, grey + alpha (8 or 16 bits) or RGB is required")
    if channels in (1, 2):  # grey, grey + alpha
        values = values[..., :1]
    elif channels in (3, 4):  # RGB, RGBA
        values = values[..., :3]
    else:
        raise InputError(f"{name}: {channels}-component pixels; grey or RGB is required")
    rgb = _to_unit_range(values)
    return np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb


def _is_grey(rgb: np.ndarray) -> bool:
    return bool(np.ptp(rgb, axis=-1).max() <= 1e-6)


def slice_pixels(image: sitk.Image, name: str | os.PathLike, grey: bool | None = True,
                 to_luma: bool = False) -> np.ndarray:
    """Pixels of a 2D image (from :func:`read_slice_image`) as :func:`read_slice` returns them.

    ``grey=None``: ``(H, W)`` when the colour channels are equal, ``(H, W, 3)`` otherwise (a
    moving image, which may be either, decoded once).
    """
    rgb = _slice_values(image, name)
    if grey is None:
        grey = _is_grey(rgb)
    if not grey:
        return np.ascontiguousarray(rgb)
    if _is_grey(rgb):
        return np.ascontiguousarray(rgb[..., 0])
    if not to_luma:
        raise InputError(f"{name}: RGB where grey is required (the colour channels differ)")
    return split_luma(rgb)[0].astype(np.float32)


def luma_pixels(image: sitk.Image, name: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Luma and chroma of a 2D image (from :func:`read_slice_image`) as :func:`read_luma` returns them."""
    rgb = _slice_values(image, name)
    if _is_grey(rgb):
        return np.ascontiguousarray(rgb[..., 0]), None
    y, cbcr = split_luma(rgb)
    return y.astype(np.float32), cbcr.astype(np.float32)


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
        Everything :func:`read_slice_image` raises, complex pixels, RGB where grey is required.
    """
    return slice_pixels(read_slice_image(path), path, grey, to_luma)


def read_luma(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Luma and chroma of a 2D image: ``(Y (H, W), CbCr (H, W, 2))``, or ``(value, None)`` if grey.

    Grey images (including RGB with equal channels) are their own luma; colour images give the
    Y and CbCr of :func:`bsafusion.colour.split_luma`. Values are float32 in [0, 1].
    """
    return luma_pixels(read_slice_image(path), path)


# --------------------------------------------------------------------------- writing


def _eight_bit_levels(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0.0, 1.0) * 255.0)


def as_eight_bit(values: np.ndarray) -> np.ndarray:
    """Float values in [0, 1] as an 8-bit file written by :func:`write_image` gives them back
    (clipped, rounded to 1/255), float32: what a written PNG holds, without writing it."""
    return (_eight_bit_levels(np.asarray(values)) / 255.0).astype(np.float32)


def _eight_bit(values: np.ndarray, path: Path) -> np.ndarray:
    """Pixels for an 8-bit format: floats in [0, 1] -> uint8 (clip, round); integers as they are."""
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if values.dtype == np.uint8:
        return values
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise InputError(f"{path}: cannot write NaN/Inf values")
        return _eight_bit_levels(values).astype(np.uint8)
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
            _check_written(out, tmp, path)
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot write image ({_reason(exc)})") from None
    return path


def _check_written(image: sitk.Image, written: Path, path: Path) -> None:
    """Read the written file back before it is published: a full disk can make writers (ITK's
    gzip stream) stop half-way without an error, leaving a file that reads as valid zeros."""
    try:
        back = sitk.ReadImage(str(written))
    except RuntimeError:
        raise InputError(f"{path}: cannot write image (the written file does not read back; disk full?)") from None
    same = back.GetSize() == image.GetSize()
    if same and image_suffix(path) not in _LOSSY_SUFFIXES:
        expected, found = sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(back)
        if found.ndim == expected.ndim + 1 and found.shape[:-1] == expected.shape:  # BMP: grey as 3 channels
            expected = np.broadcast_to(expected[..., None], found.shape)
        same = expected.shape == found.shape and np.array_equal(expected, found, equal_nan=expected.dtype.kind in "fc")
    if not same:
        raise InputError(f"{path}: cannot write image (the written file differs from the image; disk full?)")


def write_transform(transform: sitk.Transform, path: str | os.PathLike,
                    probe: Sequence[Sequence[float]] = ()) -> Path:
    """Write an ITK transform atomically (``.h5``, ``.tfm``...) and check it reads back.

    ``probe``: points whose mapping the written file must reproduce (e.g. corners and centre
    of the fixed grid); a file cut short by a full disk maps them elsewhere or does not load.

    Raises
    ------
    InputError
        A write error (permission, disk full) or a file that does not read back the same.
    """
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            sitk.WriteTransform(transform, str(tmp))
            back = sitk.ReadTransform(str(tmp))
            for point in probe:
                if not np.allclose(back.TransformPoint(point), transform.TransformPoint(point), atol=1e-6):
                    raise InputError(f"{path}: cannot write transform (the written file maps points differently; disk full?)")
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot write transform ({_reason(exc)})") from None
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
        with _kept_locale(), atomic_output(directory) as tmp:
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

