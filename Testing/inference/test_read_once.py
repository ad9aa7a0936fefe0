"""``bsafusion fuse`` reads each input file once: one decode, whatever the path (2D or volume)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bsafusion import io
from bsafusion.cli import main
from bsafusion.colour import pseudo_colour
from bsafusion.phantom import phantom_pair

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def reads(monkeypatch) -> Counter:
    """Decodes (``sitk.ReadImage``) and raw NaN scans of NIfTI data, per resolved path."""
    counts: Counter = Counter()
    read, scan = sitk.ReadImage, io._nifti_nonfinite

    def counting_read(path, *args, **kwargs):
        counts[("decode", Path(str(path)).resolve())] += 1
        return read(path, *args, **kwargs)

    def counting_scan(path):
        counts[("scan", Path(path).resolve())] += 1
        return scan(path)

    monkeypatch.setattr(sitk, "ReadImage", counting_read)
    monkeypatch.setattr(io, "_nifti_nonfinite", counting_scan)
    return counts


def _fuse(fixed: Path, moving: Path, modality: str, weights: str, out: Path) -> None:
    args = ["fuse", "--fixed", str(fixed), "--moving", str(moving), "--modality", modality, "--weights", weights,
            "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main(args) == 0


def _assert_once(reads: Counter, *paths: Path, scanned: bool) -> None:
    for path in paths:
        assert reads[("decode", path.resolve())] == 1, (path, reads)
        assert reads[("scan", path.resolve())] == (1 if scanned else 0), (path, reads)


def test_png_pair_colour_moving(tmp_path: Path, tiny_weights, reads: Counter) -> None:
    pair = phantom_pair("PET", (64, 64), seed=1)
    fixed, moving = tmp_path / "mri.png", tmp_path / "pet.png"
    io.write_image(pair.mri, fixed)
    io.write_image(pseudo_colour(pair.other, "PET"), moving)
    _fuse(fixed, moving, "PET", tiny_weights["PET"], tmp_path / "out")
    _assert_once(reads, fixed, moving, scanned=False)


def test_2d_nifti_pair(tmp_path: Path, tiny_weights, reads: Counter) -> None:
    pair = phantom_pair("CT", (64, 64), seed=2)
    fixed, moving = tmp_path / "mri.nii.gz", tmp_path / "ct.nii.gz"
    for image, path in ((pair.mri, fixed), (pair.other, moving)):
        sitk.WriteImage(sitk.GetImageFromArray(image.astype(np.float32)), str(path))
    _fuse(fixed, moving, "CT", tiny_weights["CT"], tmp_path / "out")
    _assert_once(reads, fixed, moving, scanned=True)


def test_volume_pair(tmp_path: Path, tiny_weights, reads: Counter) -> None:
    pair = phantom_pair("CT", (16, 64, 64), seed=3)
    fixed, moving = tmp_path / "mri.nii.gz", tmp_path / "ct.nii.gz"
    for image, path in ((pair.mri * 1000, fixed), (pair.other * 2000 - 1000, moving)):
        volume = sitk.GetImageFromArray(image.astype(np.float32))
        volume.SetSpacing((3.0, 3.0, 4.0))
        sitk.WriteImage(volume, str(path))
    _fuse(fixed, moving, "CT", tiny_weights["CT"], tmp_path / "out")
    _assert_once(reads, fixed, moving, scanned=True)
