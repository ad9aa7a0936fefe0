"""Image I/O: geometry round trips, DICOM series, atomic writes, clear errors."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bsafusion import io
from bsafusion.colour import rgb_to_ycbcr
from bsafusion.errors import InputError

# A proper rotation (det +1) about an oblique axis: every element differs from the identity.
ROTATION = np.array(
    [[0.8137977, -0.5438381, -0.2048741], [0.4698463, 0.8231729, -0.3187958], [0.3420201, 0.1631759, 0.9254166]]
)


def _volume(dtype=np.float32, shape=(4, 6, 5), direction=ROTATION) -> sitk.Image:
    values = np.random.default_rng(1).normal(100, 300, shape).astype(dtype)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((10.0, -20.5, 33.25))
    image.SetDirection(np.asarray(direction, float).ravel().tolist())
    return image


def _assert_same_geometry(a: sitk.Image, b: sitk.Image, atol=1e-5):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=atol)


def _assert_no_leftovers(folder):
    assert sorted(os.listdir(folder)) == [], os.listdir(folder)


def _assert_no_leftovers_but(target):
    assert os.listdir(target.parent) == [target.name]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_volume_round_trip_keeps_geometry(tmp_path, suffix):
    image = _volume()
    path = io.write_image(image, tmp_path / "sub" / f"vol{suffix}")
    back = io.read_image(path)
    _assert_same_geometry(back, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert not [p for p in os.listdir(tmp_path / "sub") if p.startswith(".")]  # no temporary left


def test_mhd_companion_file_is_moved_and_referenced(tmp_path):
    io.write_image(_volume(), tmp_path / "a.mhd")
    files = sorted(os.listdir(tmp_path))
    assert files[0] == "a.mhd" and files[1].startswith("a.") and len(files) == 2
    assert f"ElementDataFile = {files[1]}" in (tmp_path / "a.mhd").read_text()


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_slice_round_trip_keeps_spacing_and_origin(tmp_path, suffix):
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((6, 9)).astype(np.float32))
    image.SetSpacing((0.5, 1.25))
    image.SetOrigin((-3.0, 7.5))
    image.SetDirection((0.0, -1.0, 1.0, 0.0))
    back = io.read_image(io.write_image(image, tmp_path / f"s{suffix}"))
    _assert_same_geometry(back, image)
    np.testing.assert_array_equal(io.read_slice(tmp_path / f"s{suffix}"), sitk.GetArrayFromImage(image))


def test_reference_copies_geometry(tmp_path):
    reference = _volume()
    values = np.zeros((4, 6, 5), np.float32)
    back = io.read_image(io.write_image(values, tmp_path / "r.nii.gz", reference=reference))
    _assert_same_geometry(back, reference)
    with pytest.raises(InputError, match="reference size"):
        io.write_image(np.zeros((3, 3), np.float32), tmp_path / "bad.nii.gz", reference=reference)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_8bit_grey_round_trip(tmp_path, suffix):
    values = np.random.default_rng(2).integers(0, 256, (7, 11)).astype(np.uint8)
    io.write_image(values, tmp_path / f"g{suffix}")
    np.testing.assert_array_equal(io.read_slice(tmp_path / f"g{suffix}"), values / np.float32(255))


def test_float_array_to_png_is_clipped_and_rounded(tmp_path):
    values = np.array([[-0.5, 0.0, 0.2], [0.5, 1.0, 3.0]])
    io.write_image(values, tmp_path / "f.png")
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "f.png")))
    np.testing.assert_array_equal(stored, [[0, 0, 51], [128, 255, 255]])
    assert stored.dtype == np.uint8


def test_rgb_round_trip_png_and_jpeg(tmp_path):
    rgb = np.random.default_rng(3).random((16, 12, 3))
    io.write_image(rgb, tmp_path / "c.png")
    image = io.read_image(tmp_path / "c.png")
    assert image.GetNumberOfComponentsPerPixel() == 3 and image.GetSize() == (12, 16)
    back = io.read_slice(tmp_path / "c.png", grey=False)
    assert back.shape == (16, 12, 3) and back.dtype == np.float32
    np.testing.assert_allclose(back, np.round(rgb * 255) / 255, atol=1e-7)
    smooth = np.repeat(np.linspace(0.2, 0.8, 16)[:, None, None], 12, axis=1) * np.array([1.0, 0.5, 0.25])
    io.write_image(smooth, tmp_path / "c.jpg")
    assert np.abs(io.read_slice(tmp_path / "c.jpg", grey=False) - smooth).max() < 0.05


def test_uint16_png_scaled_by_65535(tmp_path):
    values = np.array([[0, 1000], [40000, 65535]], np.uint16)
    io.write_image(values, tmp_path / "d.png")
    assert sitk.ReadImage(str(tmp_path / "d.png")).GetPixelID() == sitk.sitkUInt16
    np.testing.assert_allclose(io.read_slice(tmp_path / "d.png"), values / 65535.0, rtol=1e-6)


def test_read_slice_float_scaling_rule(tmp_path):
    unit = np.array([[0.1, 0.9], [0.5, 0.25]], np.float32)
    io.write_image(unit, tmp_path / "u.mha")
    np.testing.assert_array_equal(io.read_slice(tmp_path / "u.mha"), unit)  # already in [0, 1]: kept
    hu = np.array([[-1000.0, 0.0], [1000.0, 3000.0]], np.float32)
    io.write_image(hu, tmp_path / "h.mha")
    np.testing.assert_allclose(io.read_slice(tmp_path / "h.mha"), [[0.0, 0.25], [0.5, 1.0]])
    io.write_image(np.full((2, 2), 7.0, np.float32), tmp_path / "c.mha")
    np.testing.assert_array_equal(io.read_slice(tmp_path / "c.mha"), 0.0)


def test_equal_channel_rgb_is_grey_and_colour_needs_luma(tmp_path):
    g = np.random.default_rng(4).random((5, 6))
    io.write_image(np.stack([g, g, g], -1), tmp_path / "grey.png")
    np.testing.assert_allclose(io.read_slice(tmp_path / "grey.png"), np.round(g * 255) / 255, atol=1e-7)
    assert io.read_slice(tmp_path / "grey.png", grey=False).shape == (5, 6, 3)
    io.write_image(g, tmp_path / "g1.png")
    assert io.read_slice(tmp_path / "g1.png", grey=False).shape == (5, 6, 3)
    assert io.read_luma(tmp_path / "g1.png")[1] is None

    rgb = np.random.default_rng(5).random((5, 6, 3))
    io.write_image(rgb, tmp_path / "pet.png")
    with pytest.raises(InputError, match=r"pet\.png: RGB where grey is required"):
        io.read_slice(tmp_path / "pet.png")
    stored = np.round(rgb * 255) / 255
    luma = io.read_slice(tmp_path / "pet.png", to_luma=True)
    np.testing.assert_allclose(luma, rgb_to_ycbcr(stored)[..., 0], atol=1e-6)
    y, cbcr = io.read_luma(tmp_path / "pet.png")
    assert y.shape == (5, 6) and cbcr.shape == (5, 6, 2) and y.dtype == np.float32


def test_read_slice_rejects_volume_and_accepts_single_slice(tmp_path):
    io.write_image(np.zeros((3, 4, 5), np.float32), tmp_path / "v.nii.gz")
    with pytest.raises(InputError, match=r"v\.nii\.gz: 3D image .* 2D slice is required"):
        io.read_slice(tmp_path / "v.nii.gz")
    io.write_image(np.ones((1, 4, 5), np.float32), tmp_path / "one.nii.gz")
    assert io.read_slice(tmp_path / "one.nii.gz").shape == (4, 5)


# --------------------------------------------------------------------------- DICOM


def test_dicom_series_round_trip_float(tmp_path):
    volume = _volume()
    files = io.write_dicom_series(volume, tmp_path / "dcm")
    assert [f.name for f in files] == sorted(os.listdir(tmp_path / "dcm")) and len(files) == 4
    back = io.read_image(tmp_path / "dcm")
    _assert_same_geometry(back, volume, atol=1e-6)
    values = sitk.GetArrayFromImage(volume)
    span = values.max() - values.min()
    assert np.abs(sitk.GetArrayFromImage(back) - values).max() <= span / 130000 * 1.01

    first = sitk.ReadImage(str(files[0]))
    second = sitk.ReadImage(str(files[1]))
    assert [float(v) for v in first.GetMetaData("0028|0030").split("\\")] == [0.9, 0.7]  # row, column
    assert float(first.GetMetaData("0018|0050")) == 2.5
    iop = [float(v) for v in first.GetMetaData("0020|0037").split("\\")]
    np.testing.assert_allclose(iop, [*ROTATION[:, 0], *ROTATION[:, 1]], atol=1e-9)
    ipp = [float(v) for v in second.GetMetaData("0020|0032").split("\\")]
    np.testing.assert_allclose(ipp, volume.TransformIndexToPhysicalPoint((0, 0, 1)), atol=1e-6)
    for key in ("0020|000d", "0020|000e", "0020|0052"):
        assert first.GetMetaData(key) == second.GetMetaData(key)
    assert first.GetMetaData("0008|0018") != second.GetMetaData("0008|0018")


def test_dicom_series_integer_values_exact(tmp_path):
    volume = sitk.Cast(_volume(), sitk.sitkInt16)
    io.write_dicom_series(volume, tmp_path / "dcm", modality="MR")
    back = io.read_image(tmp_path / "dcm")
    _assert_same_geometry(back, volume, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(volume))


def test_dicom_left_handed_direction_is_physically_equivalent(tmp_path):
    flipped = ROTATION @ np.diag([1.0, 1.0, -1.0])
    volume = sitk.Cast(_volume(direction=flipped), sitk.sitkInt16)
    io.write_dicom_series(volume, tmp_path / "dcm")
    back = io.read_image(tmp_path / "dcm")
    np.testing.assert_allclose(np.reshape(back.GetDirection(), (3, 3)), ROTATION, atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), volume.TransformIndexToPhysicalPoint((0, 0, 3)), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(volume)[::-1])


def test_dicom_several_series_and_overwrite(tmp_path):
    io.write_dicom_series(sitk.Cast(_volume(shape=(3, 4, 5)), sitk.sitkInt16), tmp_path / "a")
    io.write_dicom_series(sitk.Cast(_volume(shape=(5, 4, 5)), sitk.sitkInt16), tmp_path / "b")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for series in ("a", "b"):
        for f in (tmp_path / series).iterdir():
            shutil.copy(f, mixed / f"{series}_{f.name}")
    with pytest.warns(UserWarning, match="2 DICOM series; reading the largest"):
        assert io.read_image(mixed).GetSize()[2] == 5
    small_id = sitk.ReadImage(str(next((tmp_path / "a").iterdir()))).GetMetaData("0020|000e").strip()
    assert io.read_image(mixed, series_id=small_id).GetSize()[2] == 3
    with pytest.raises(InputError, match="no DICOM series 'nope'"):
        io.read_image(mixed, series_id="nope")
    with pytest.raises(InputError, match="not empty"):
        io.write_dicom_series(_volume(), tmp_path / "a")
    io.write_dicom_series(sitk.Cast(_volume(shape=(2, 4, 5)), sitk.sitkInt16), tmp_path / "a", overwrite=True)
    assert len(os.listdir(tmp_path / "a")) == 2
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "mixed"]


# --------------------------------------------------------------------------- atomic writes


def _failing_write(*args, **kwargs):
    path = str(args[1])
    with open(path, "wb") as f:  # a partial file, then the failure
        f.write(b"partial")
    raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute:\nITK ERROR: disk full")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(sitk, "WriteImage", _failing_write)
    with pytest.raises(InputError, match=r"out\.nii\.gz: cannot write image \(disk full\)"):
        io.write_image(np.zeros((3, 3), np.float32), tmp_path / "out.nii.gz")
    _assert_no_leftovers(tmp_path)


def test_failed_write_does_not_clobber(tmp_path, monkeypatch):
    io.write_image(np.full((3, 3), 0.5, np.float32), tmp_path / "keep.mha")
    before = (tmp_path / "keep.mha").read_bytes()
    monkeypatch.setattr(sitk, "WriteImage", _failing_write)
    with pytest.raises(InputError):
        io.write_image(np.zeros((3, 3), np.float32), tmp_path / "keep.mha")
    assert (tmp_path / "keep.mha").read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.mha"]


def test_atomic_output_general(tmp_path):
    target = tmp_path / "new" / "table.csv"
    with pytest.raises(ZeroDivisionError):
        with io.atomic_output(target) as tmp:
            tmp.write_text("half")
            1 / 0
    _assert_no_leftovers(tmp_path / "new")
    with io.atomic_output(target) as tmp:
        assert tmp.name == "table.csv" and tmp.parent != target.parent
        assert not target.exists()
        tmp.write_text("a,b\n")
    assert target.read_text() == "a,b\n"
    _assert_no_leftovers_but(target)
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with io.atomic_output(tmp_path / "never.txt"):
            pass
    assert not (tmp_path / "never.txt").exists()


def test_failed_dicom_write_keeps_previous_series(tmp_path, monkeypatch):
    io.write_dicom_series(sitk.Cast(_volume(), sitk.sitkInt16), tmp_path / "dcm")
    before = sorted(os.listdir(tmp_path / "dcm"))

    def broken(self, image):
        raise RuntimeError("ITK ERROR: no space left")

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", broken)
    with pytest.raises(InputError, match="no space left"):
        io.write_dicom_series(_volume(), tmp_path / "dcm", overwrite=True)
    assert sorted(os.listdir(tmp_path / "dcm")) == before
    assert os.listdir(tmp_path) == ["dcm"]


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nothere\.png: no such file"):
        io.read_image(tmp_path / "nothere.png")


@pytest.mark.parametrize("name", ["corrupt.png", "corrupt.nii.gz", "corrupt.mha"])
def test_corrupt_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x89PNG not really an image at all")
    with pytest.raises(InputError, match=re.escape(name) + ": unreadable or corrupt"):
        io.read_image(tmp_path / name)


def test_truncated_png_and_empty_file(tmp_path):
    io.write_image(np.random.default_rng(0).random((64, 64)), tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.png: unreadable or corrupt"):
        io.read_image(tmp_path / "cut.png")
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"zero\.png: empty file"):
        io.read_image(tmp_path / "zero.png")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf(tmp_path, bad):
    values = np.zeros((3, 4), np.float32)
    values[1, 2] = bad
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "bad.mha"))
    with pytest.raises(InputError, match=r"bad\.mha: .*(1 NaN|1 infinite)"):
        io.read_image(tmp_path / "bad.mha")
    with pytest.raises(InputError, match="NaN/Inf"):
        io.write_image(values, tmp_path / "bad.png")


def test_empty_image(tmp_path):
    (tmp_path / "empty.mha").write_text(
        "ObjectType = Image\nNDims = 2\nDimSize = 0 5\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    )
    with pytest.raises(InputError, match=r"empty\.mha: empty image"):
        io.read_image(tmp_path / "empty.mha")


def test_4d_image(tmp_path):
    series = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32))] * 2)
    sitk.WriteImage(series, str(tmp_path / "t.nii.gz"))
    with pytest.raises(InputError, match=r"t\.nii\.gz: 4D image"):
        io.read_image(tmp_path / "t.nii.gz")
    assert io.read_image(tmp_path / "t.nii.gz", allow_4d=True).GetDimension() == 4


def test_folder_without_dicom_and_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="no DICOM series"):
        io.read_image(tmp_path)
    with pytest.raises(InputError, match=r"x\.foo: unknown image format"):
        io.write_image(np.zeros((2, 2)), tmp_path / "x.foo")
    with pytest.raises(InputError, match="outside 0..255"):
        io.write_image(np.array([[300]], np.int32), tmp_path / "x.png")
    _assert_no_leftovers(tmp_path)


def test_suffix_helpers():
    assert io.image_suffix("a/B.NII.GZ") == ".nii.gz" and io.image_stem("a/12.nii.gz") == "12"
    assert io.image_suffix("x.png") == ".png" and io.image_stem("x.png") == "x"


def test_as_eight_bit_is_what_a_written_png_reads_back(tmp_path):
    from bsafusion.io import as_eight_bit, read_slice, write_image

    values = np.random.default_rng(3).uniform(-0.2, 1.2, (16, 20)).astype(np.float32)
    values[0, :4] = [0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0]  # rounding ties and the ends
    write_image(values, tmp_path / "x.png")
    np.testing.assert_array_equal(as_eight_bit(values), read_slice(tmp_path / "x.png"))


def test_parallel_write_raises_the_failure_after_the_running_writers_stopped(monkeypatch) -> None:
    """A failing writer's error comes back once the writers already running have finished (the
    staging folder is removed after that); writers not yet started are dropped."""
    monkeypatch.setattr(io, "WRITE_THREADS", 2)
    finished: list[str] = []
    started = threading.Event()

    def slow() -> Path:
        started.set()
        time.sleep(0.3)
        finished.append("slow")
        return Path("slow")

    def failing() -> Path:
        started.wait(5)
        raise InputError("disk full")

    def never() -> Path:
        finished.append("never")
        return Path("never")

    with pytest.raises(InputError, match="disk full"):
        io.write_in_parallel([slow, failing, never, never, never])
    assert "slow" in finished  # it had finished before the error was raised
    assert finished.count("never") < 3  # the writers not yet started when it failed were dropped
