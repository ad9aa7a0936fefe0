"""Inference API and `bsafusion fuse`: outputs, geometry, colour, the field file, bad input."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from bsafusion.model import checkpoint
from bsafusion.cli import main
from bsafusion.deform import warp_numpy
from bsafusion.errors import InputError
from bsafusion.inference.fuser import Fuser, fuse_files
from bsafusion.io import read_slice, write_image
from bsafusion.model import BSFAF, ModelConfig
from bsafusion.phantom import phantom_pair
from bsafusion.transforms import displacement_image_to_field

TINY = ModelConfig(img_size=64, channels=8, embed_dim=32, patch_size=8, heads=2, pyramid_channels=(16, 12, 8))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    model = BSFAF(TINY)
    for layers in (model.bsfa.frl, model.bsfa.rrl):  # non-trivial fields
        for layer in layers:
            torch.nn.init.normal_(layer.out.weight, std=0.02)
    root = tmp_path_factory.mktemp("weights")
    out = {}
    for mod in ("CT", "PET"):
        out[mod] = root / f"{mod}.pt"
        checkpoint.save(out[mod], model, mod)
    return out


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pngs")
    ct = phantom_pair("CT", (80, 96), seed=1)
    pet = phantom_pair("PET", (80, 96), seed=2)
    paths = {"mri": root / "mri.png", "ct": root / "ct.png", "pet_mri": root / "pet_mri.png", "pet": root / "pet.png"}
    write_image(ct.mri, paths["mri"])
    write_image(np.repeat(ct.other[..., None], 3, axis=-1), paths["ct"])  # grey stored as RGB, like Harvard
    write_image(pet.mri, paths["pet_mri"])
    write_image(pet.other_rgb, paths["pet"])
    return paths


def test_fuse_returns_outputs_on_the_fixed_grid(weights):
    pair = phantom_pair("CT", (80, 96), seed=3)
    result = Fuser("CT", weights["CT"], "cpu").fuse(pair.mri, pair.other)
    assert result.fused.shape == result.aligned.shape == (80, 96)
    assert result.field.shape == result.inverse_field.shape == (2, 80, 96)
    assert 0 <= result.fused.min() and result.fused.max() <= 1
    # the aligned image is the moving image pulled by the returned field (at full resolution)
    expected = warp_numpy(pair.other, result.field, padding="border")
    assert np.abs(expected - result.aligned).max() < 1e-4
    assert np.abs(result.field).max() > 0.05  # the test model predicts a real deformation


def test_colour_moving_gives_colour_fusion_with_its_chroma(weights):
    pair = phantom_pair("PET", (64, 64), seed=4)
    result = Fuser("PET", weights["PET"], "cpu").fuse(pair.mri, pair.other_rgb)
    assert result.fused.shape == (64, 64, 3) and result.aligned.shape == (64, 64, 3)
    assert result.fused_luma.shape == (64, 64)
    # hot spots of the PET keep their colour (chroma not neutral) in the fused image
    spread = np.ptp(result.fused, axis=-1)
    assert spread.max() > 0.2


def test_fuse_files_writes_every_output_and_a_usable_field(weights, pngs, tmp_path):
    paths = fuse_files(pngs["mri"], pngs["ct"], Fuser("CT", weights["CT"], "cpu"), tmp_path, "case")
    assert {p.name for p in tmp_path.iterdir()} == {"case_fused.png", "case_aligned.png", "case_field.nii.gz", "case_panel.png"}
    field_img = sitk.ReadImage(str(paths["field"]))
    assert field_img.GetSize() == (96, 80) and field_img.GetNumberOfComponentsPerPixel() == 2
    # SimpleITK resampling through the written field reproduces our aligned image
    moving = sitk.GetImageFromArray(read_slice(pngs["ct"]))
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field_img, sitk.sitkVectorFloat64))
    resampled = sitk.GetArrayFromImage(sitk.Resample(moving, sitk.GetImageFromArray(read_slice(pngs["mri"])), tx,
                                                     sitk.sitkLinear, 0.0))
    aligned = read_slice(paths["aligned"])
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(resampled - aligned)[inner].max() < 2.5 / 255
    assert read_slice(paths["fused"]).shape == (80, 96)


def test_pet_files_give_colour_outputs(weights, pngs, tmp_path):
    paths = fuse_files(pngs["pet_mri"], pngs["pet"], Fuser("PET", weights["PET"], "cpu"), tmp_path)
    assert read_slice(paths["fused"], grey=False).shape == (80, 96, 3)


def test_field_file_round_trips_to_the_pixel_field(weights):
    pair = phantom_pair("CT", (64, 64), seed=5)
    result = Fuser("CT", weights["CT"], "cpu").fuse(pair.mri, pair.other)
    ref = sitk.GetImageFromArray(pair.mri)
    ref.SetSpacing((0.5, 2.0))
    from bsafusion.transforms import field_to_displacement_image

    back = displacement_image_to_field(field_to_displacement_image(result.field, ref))
    assert np.allclose(back, result.field, atol=1e-5)


@pytest.mark.parametrize(
    "fixed, moving, message",
    [
        (np.full((64, 64), np.nan), np.random.rand(64, 64), "NaN"),
        (np.zeros((0, 64)), np.random.rand(64, 64), "empty"),
        (np.random.rand(4, 64, 64), np.random.rand(64, 64), "2D"),
        (np.random.rand(64, 64, 3), np.random.rand(64, 64), "2D"),
        (np.zeros((64, 64)), np.random.rand(64, 64), "constant"),
        (np.random.rand(64, 64) * 300, np.random.rand(64, 64), r"\[0, 1\]"),
    ],
)
def test_bad_arrays_raise_input_errors(weights, fixed, moving, message):
    with pytest.raises(InputError, match=message):
        Fuser("CT", weights["CT"], "cpu").fuse(fixed, moving)


def test_wrong_modality_weights_are_refused(weights):
    with pytest.raises(InputError, match="trained for CT"):
        Fuser("PET", weights["CT"], "cpu")


def test_cli_fuse_single_and_folder(weights, pngs, tmp_path):
    assert main(["fuse", "--fixed", str(pngs["mri"]), "--moving", str(pngs["ct"]), "--modality", "ct",
                 "--weights", str(weights["CT"]), "--device", "cpu", "--out", str(tmp_path / "one")]) == 0
    assert (tmp_path / "one" / "ct_fused.png").is_file()
    fixed_dir, moving_dir = tmp_path / "MRI", tmp_path / "CT"
    fixed_dir.mkdir(), moving_dir.mkdir()
    for name in ("1.png", "2.png"):
        (fixed_dir / name).write_bytes(pngs["mri"].read_bytes())
        (moving_dir / name).write_bytes(pngs["ct"].read_bytes())
    assert main(["fuse", "--fixed", str(fixed_dir), "--moving", str(moving_dir), "--modality", "CT",
                 "--weights", str(weights["CT"]), "--device", "cpu", "--out", str(tmp_path / "many"),
                 "--no-progress"]) == 0
    assert len(list((tmp_path / "many").glob("*_fused.png"))) == 2


def test_cli_fuse_user_errors_exit_2_and_write_nothing(weights, pngs, tmp_path, capsys):
    out = tmp_path / "out"
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG broken")
    for moving in (tmp_path / "missing.png", corrupt):
        code = main(["fuse", "--fixed", str(pngs["mri"]), "--moving", str(moving), "--modality", "CT",
                     "--weights", str(weights["CT"]), "--device", "cpu", "--out", str(out)])
        assert code == 2
        err = capsys.readouterr().err
        assert moving.name in err and "Traceback" not in err
        assert not out.exists() or not any(out.iterdir())
    code = main(["fuse", "--fixed", str(pngs["mri"]), "--moving", str(pngs["ct"]), "--modality", "CT",
                 "--weights", str(tmp_path / "nope.pt"), "--device", "cpu", "--out", str(out)])
    assert code == 2


def _mha(path: Path, values: np.ndarray, spacing=(1.0, 1.0), origin=(0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def _resampled(values: np.ndarray, spacing: float, origin: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """The 80x96 phantom (1 mm pixels at 0) sampled on another grid of the same physical space."""
    image = sitk.GetImageFromArray(values.astype(np.float32))
    grid = sitk.Image(shape[1], shape[0], sitk.sitkFloat32)
    grid.SetSpacing((spacing, spacing))
    grid.SetOrigin(origin)
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0))


@pytest.mark.parametrize("spacing, origin, shape", [
    (0.5, (0.0, 0.0), (160, 192)),   # finer spacing
    (1.0, (6.0, -4.0), (80, 96)),    # shifted origin
    (1.25, (-3.0, 2.0), (60, 70)),   # other size, spacing and origin
])
def test_field_reproduces_aligned_for_moving_images_on_other_grids(weights, tmp_path, spacing, origin, shape):
    """The moving file's geometry is honoured: Resample(moving file, fixed, field) == aligned output."""
    pair = phantom_pair("CT", (80, 96), seed=6)
    fixed_path = _mha(tmp_path / "mri.mha", pair.mri)
    moving_path = _mha(tmp_path / "ct.mha", _resampled(pair.other, spacing, origin, shape), (spacing,) * 2, origin)
    paths = fuse_files(fixed_path, moving_path, Fuser("CT", weights["CT"], "cpu"), tmp_path / "out")
    field = sitk.Cast(sitk.ReadImage(str(paths["field"])), sitk.sitkVectorFloat64)
    moving = sitk.ReadImage(str(moving_path))
    through_field = sitk.GetArrayFromImage(sitk.Resample(moving, sitk.ReadImage(str(fixed_path)),
                                                         sitk.DisplacementFieldTransform(field), sitk.sitkLinear, 0.0))
    aligned = read_slice(paths["aligned"])
    inner = (slice(10, -10), slice(10, -10))
    assert np.corrcoef(through_field[inner].ravel(), aligned[inner].ravel())[0, 1] > 0.97
