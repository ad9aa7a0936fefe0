"""Datasets: shapes, determinism by (seed, epoch, index), ground-truth fields, augmentation, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from bsafusion import io
from bsafusion.colour import NEUTRAL_CHROMA, split_luma
from bsafusion.evaluation.cases import UnalignedCaseDataset
from bsafusion.modality import MOVING as MODALITIES
from bsafusion.training.data import AlignedPairDataset
from bsafusion.deform import warp_numpy
from bsafusion.errors import InputError

SIZE = 48


def _blobs(seed: int, size: int = SIZE, channels: int | None = None) -> np.ndarray:
    """Smooth random image(s) in [0, 1], zero near the border (like a head on a black background)."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels is None else (size, size, channels)
    img = ndimage.gaussian_filter(rng.random(shape), sigma=(3, 3, 0)[: len(shape)])
    img = (img - img.min()) / (img.max() - img.min())
    yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
    mask = (xx**2 + yy**2 < 0.16).astype(float)
    return img * (mask if channels is None else mask[..., None])


def _make_pairs(root, modality="CT", n=3, size=SIZE, colour=False, names=None):
    """``root/<MOD>/MRI/<i>.png`` and ``root/<MOD>/<MOD>/<i>.png``; returns the case folder."""
    base = root / modality
    for i, name in enumerate(names or [str(k) for k in range(n)]):
        io.write_image(_blobs(10 + i, size), base / "MRI" / f"{name}.png")
        moving = _blobs(100 + i, size, 3 if colour else None)
        io.write_image(moving, base / modality / f"{name}.png")
    return base


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("aligned")
    _make_pairs(root, "CT", n=3)
    return root


@pytest.fixture(scope="module")
def pet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("aligned_pet")
    _make_pairs(root, "PET", n=2, colour=True)
    return root


def test_item_shapes_and_types(ct_root):
    ds = AlignedPairDataset(ct_root, "CT", size=SIZE)
    assert len(ds) == 3 and ds.names == ["0", "1", "2"]
    item = ds[0]
    shapes = {"fixed": (1, SIZE, SIZE), "moving": (1, SIZE, SIZE), "moving_aligned": (1, SIZE, SIZE),
              "field": (2, SIZE, SIZE), "cbcr": (2, SIZE, SIZE)}  # fmt: skip
    for key, shape in shapes.items():
        assert item[key].shape == shape and item[key].dtype == torch.float32, key
    assert item["modality_index"] == 0 and item["name"] == "0"
    assert torch.allclose(item["cbcr"], torch.tensor(NEUTRAL_CHROMA))  # grey CT: neutral chroma
    assert item["field"].abs().max() > 0.5  # it is misaligned
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["fixed"].shape == (3, 1, SIZE, SIZE) and batch["name"] == ["0", "1", "2"]


def test_root_may_point_at_modality_folder(ct_root):
    a, b = AlignedPairDataset(ct_root, "CT", size=SIZE), AlignedPairDataset(ct_root / "CT", "ct", size=SIZE)
    assert a.names == b.names
    assert torch.equal(a[1]["moving"], b[1]["moving"])


def test_ground_truth_field_realigns_moving(ct_root):
    ds = AlignedPairDataset(ct_root, "CT", size=SIZE, misalignment={"max_rotation_deg": 10, "max_elastic": 6})
    for i in range(len(ds)):
        item = ds[i]
        moving, aligned = item["moving"][0].numpy(), item["moving_aligned"][0].numpy()
        realigned = warp_numpy(moving, item["field"].numpy())
        inner = (slice(8, -8), slice(8, -8))
        assert _ncc(realigned[inner], aligned[inner]) > 0.98
        assert _ncc(moving[inner], aligned[inner]) < _ncc(realigned[inner], aligned[inner]) - 0.02


def test_determinism_by_seed_epoch_index(ct_root):
    a = AlignedPairDataset(ct_root, "CT", size=SIZE, seed=7)
    b = AlignedPairDataset(ct_root, "CT", size=SIZE, seed=7)
    a.set_epoch(4)
    b.set_epoch(4)
    _ = b[2], b[0]  # access order and history do not matter
    for key in ("fixed", "moving", "moving_aligned", "field"):
        assert torch.equal(a[1][key], b[1][key]), key
    np.random.seed(123)
    torch.manual_seed(123)  # global RNGs are not used
    assert torch.equal(a[1]["field"], b[1]["field"])
    field_e4 = a[1]["field"]
    a.set_epoch(5)
    assert not torch.allclose(a[1]["field"], field_e4)
    assert not torch.allclose(a[0]["field"], a[1]["field"])
    c = AlignedPairDataset(ct_root, "CT", size=SIZE, seed=8)
    c.set_epoch(4)
    assert not torch.allclose(c[1]["field"], field_e4)


def test_augmentation_is_identical_on_both_images(tmp_path):
    # MRI and CT are the same asymmetric image: any mismatch in the flips shows.
    image = _blobs(1)
    image[5:12, 20:40] = 1.0
    for folder in ("MRI", "CT"):
        io.write_image(image, tmp_path / "CT" / folder / "0.png")
    original = np.round(image * 255) / 255
    ds = AlignedPairDataset(tmp_path, "CT", size=SIZE, augment=True)
    symmetries = [np.rot90(original, k) for k in range(4)] + [np.rot90(original, k)[:, ::-1] for k in range(4)]
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[0]
        fixed = item["fixed"][0].numpy()
        assert torch.equal(item["fixed"], item["moving_aligned"])
        matches = [k for k, s in enumerate(symmetries) if np.allclose(fixed, s, atol=1e-6)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) >= 4  # the augmentation really varies
    plain = AlignedPairDataset(tmp_path, "CT", size=SIZE, augment=False)
    for epoch in range(3):
        plain.set_epoch(epoch)
        np.testing.assert_allclose(plain[0]["fixed"][0].numpy(), original, atol=1e-6)


def test_misalignment_repeats_the_border(tmp_path):
    # studio-range luma has a grey (16/255) background: zero padding would draw a false edge
    image = 0.3 + 0.5 * _blobs(3)
    for folder in ("MRI", "CT"):
        io.write_image(image, tmp_path / "CT" / folder / "0.png")
    shift = {"max_translation": 0.2, "max_rotation_deg": 20}
    for epoch in range(3):
        ds = AlignedPairDataset(tmp_path, "CT", size=SIZE, misalignment=shift)
        ds.set_epoch(epoch)
        assert float(ds[0]["moving"].min()) > 0.29


def test_colour_moving_gives_luma_and_chroma(pet_root):
    ds = AlignedPairDataset(pet_root, "PET", size=SIZE, augment=False, misalignment=False)
    item = ds[1]
    y, cbcr = split_luma(io.read_slice(pet_root / "PET" / "PET" / "1.png", grey=False))
    np.testing.assert_allclose(item["moving_aligned"][0].numpy(), y, atol=1e-6)
    np.testing.assert_allclose(item["cbcr"].numpy(), np.moveaxis(cbcr, -1, 0), atol=1e-6)
    assert item["modality_index"] == 1
    assert torch.equal(item["moving"], item["moving_aligned"]) and not item["field"].any()


def test_misalignment_options(ct_root):
    still = {"max_rotation_deg": 0, "max_scale": 0, "max_shear": 0, "max_translation": 0, "max_elastic": 0}
    item = AlignedPairDataset(ct_root, "CT", size=SIZE, misalignment=still)[0]
    assert item["field"].abs().max() < 1e-4
    with pytest.raises(InputError, match="unknown misalignment option"):
        AlignedPairDataset(ct_root, "CT", misalignment={"max_rotation": 3})


def test_resize(tmp_path):
    _make_pairs(tmp_path, "SPECT", n=1, size=40, colour=True)
    item = AlignedPairDataset(tmp_path, "SPECT", size=24)[0]
    assert item["fixed"].shape == (1, 24, 24) and item["cbcr"].shape == (2, 24, 24)
    assert 0 <= float(item["fixed"].min()) and float(item["fixed"].max()) <= 1


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="expected folders"):
        AlignedPairDataset(tmp_path, "CT")
    base = tmp_path / "CT"
    (base / "MRI").mkdir(parents=True)
    (base / "CT").mkdir()
    with pytest.raises(InputError, match="no images found"):
        AlignedPairDataset(tmp_path, "CT")
    io.write_image(_blobs(0), base / "MRI" / "1.png")
    with pytest.raises(InputError, match=r"MRI/1\.png: no partner named '1' in .*CT/CT"):
        AlignedPairDataset(tmp_path, "CT")
    io.write_image(_blobs(0, size=40), base / "CT" / "1.png")
    io.write_image(_blobs(0), base / "CT" / "2.png")
    with pytest.raises(InputError, match=r"CT/2\.png: no partner named '2'"):
        AlignedPairDataset(tmp_path, "CT")
    (base / "CT" / "2.png").unlink()
    ds = AlignedPairDataset(tmp_path, "CT", size=SIZE)
    with pytest.raises(InputError, match=r"CT/1\.png: size 40x40 differs from its MRI partner"):
        ds[0]
    with pytest.raises(IndexError):
        ds[1]


def _make_cases(root, modality="PET", n=3, label=True, rgb=True):
    base = root / modality
    for i in range(n):
        io.write_image(_blobs(i), base / "MRI" / f"{i}.png")
        colour = _blobs(50 + i, channels=3)
        y = split_luma(colour)[0]
        io.write_image(np.stack([y] * 3, -1), base / modality / f"{i}.png")  # stored like Harvard: luma as RGB
        if label:
            io.write_image(y, base / f"{modality}_label" / f"{i}.png")
        if rgb:
            io.write_image(colour, base / f"{modality}_RGB" / f"{i}.png")
    return base


def test_unaligned_cases_with_and_without_optional_folders(tmp_path):
    base = _make_cases(tmp_path / "full")
    ds = UnalignedCaseDataset(tmp_path / "full", "PET")
    assert len(ds) == 3 and ds.has_label and ds.has_rgb
    item = ds[2]
    assert set(item) == {"fixed", "moving", "moving_label", "moving_rgb", "moving_cbcr", "modality_index", "name"}
    assert item["moving_rgb"].shape == (3, SIZE, SIZE) and item["moving_cbcr"].shape == (2, SIZE, SIZE)
    assert item["moving"].shape == item["moving_label"].shape == (1, SIZE, SIZE)
    np.testing.assert_allclose(
        item["moving_rgb"].numpy(), np.moveaxis(io.read_slice(base / "PET_RGB" / "2.png", grey=False), -1, 0)
    )
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["moving_rgb"].shape == (2, 3, SIZE, SIZE)
    assert UnalignedCaseDataset(base, "PET")[0]["name"] == "0"
    assert UnalignedCaseDataset(tmp_path / "full", "PET", size=32)[0]["moving_cbcr"].shape == (2, 32, 32)

    _make_cases(tmp_path / "bare", label=False, rgb=False)
    bare = UnalignedCaseDataset(tmp_path / "bare", "PET")
    assert set(bare[0]) == {"fixed", "moving", "modality_index", "name"}

    (base / "PET_label" / "1.png").unlink()
    with pytest.raises(InputError, match=r"MRI/1\.png: no partner named '1' in .*PET_label"):
        UnalignedCaseDataset(tmp_path / "full", "PET")


# --------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_harvard_dataset_lengths(harvard_dir):
    train = {m: len(AlignedPairDataset(harvard_dir / "train_aligned", m)) for m in MODALITIES}
    test = {m: len(UnalignedCaseDataset(harvard_dir / "test_unaligned", m)) for m in MODALITIES}
    val = {m: len(AlignedPairDataset(harvard_dir / "val_aligned", m)) for m in MODALITIES}
    assert train == {"CT": 144, "PET": 192, "SPECT": 260}
    assert val == {"CT": 20, "PET": 20, "SPECT": 20}
    assert test == {"CT": 10, "PET": 28, "SPECT": 39}


@pytest.mark.shared_data
def test_harvard_items(harvard_dir):
    pet = AlignedPairDataset(harvard_dir / "train_aligned", "PET", size=128, seed=3)
    item = pet[0]
    assert item["moving"].shape == (1, 128, 128) and item["modality_index"] == 1
    assert not torch.allclose(item["cbcr"], torch.tensor(NEUTRAL_CHROMA))  # colour: real chroma
    realigned = warp_numpy(item["moving"][0].numpy(), item["field"].numpy())
    inner = (slice(16, -16), slice(16, -16))
    assert _ncc(realigned[inner], item["moving_aligned"][0].numpy()[inner]) > 0.98

    ct = UnalignedCaseDataset(harvard_dir / "test_unaligned", "CT")
    assert ct.has_label and not ct.has_rgb and ct[0]["fixed"].shape == (1, 256, 256)
    spect = UnalignedCaseDataset(harvard_dir / "test_unaligned", "SPECT")[0]
    assert spect["moving_rgb"].shape == (3, 256, 256)
    # stored luma is BT.601 studio range: black background at 16/255
    assert float(spect["moving"].min()) == pytest.approx(16 / 255, abs=1e-6)
