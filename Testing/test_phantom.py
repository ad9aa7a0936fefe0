"""Tests of the procedural head phantom (bsafusion.phantom), the demo and CI data generator.

Small grids (64 x 64, 128 x 128 for contrast medians, 32^3) keep the whole file to about a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bsafusion import InputError
from bsafusion import modality
from bsafusion import phantom as ph
from bsafusion.colour import pseudo_colour

SMALL = (64, 64)
VOL = (32, 32, 32)
ALL_LABELS = set(range(8))
# relative path of a pair image in the Harvard train_aligned layout: MOD/MRI/N.png, MOD/MOD/N.png
HARVARD_PATTERN = re.compile(r"^(CT|PET|SPECT)/(MRI|\1)/[0-9]+\.png$")


def _median(image: np.ndarray, labels: np.ndarray, label: int) -> float:
    values = image[labels == label]
    assert values.size > 0, f"label {ph.LABEL_NAMES[label]} absent"
    return float(np.median(values))


@pytest.fixture(scope="module")
def slice128() -> np.ndarray:
    return ph.head_labels((128, 128), seed=1)


# ---------------------------------------------------------------------------- labels


@pytest.mark.parametrize("shape", [SMALL, VOL])
def test_labels_are_deterministic_and_seeded(shape):
    a = ph.head_labels(shape, seed=3)
    b = ph.head_labels(shape, seed=3)
    c = ph.head_labels(shape, seed=4)
    assert a.shape == tuple(shape) and np.issubdtype(a.dtype, np.integer)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.01  # another seed draws another head


@pytest.mark.parametrize("seed", range(4))
def test_2d_slice_holds_every_tissue_and_the_lesion_is_an_overlay(seed):
    with_lesion = ph.head_labels(SMALL, seed)
    without = ph.head_labels(SMALL, seed, lesion=False)
    assert set(np.unique(with_lesion)) == ALL_LABELS
    assert set(np.unique(without)) == ALL_LABELS - {ph.LESION}
    # same anatomy: the flag only paints the lesion
    keep = with_lesion != ph.LESION
    np.testing.assert_array_equal(with_lesion[keep], without[keep])


def test_3d_head_is_whole_and_changes_along_z():
    labels = ph.head_labels(VOL, seed=0)
    assert set(np.unique(labels)) == ALL_LABELS
    for face in (labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[..., 0], labels[..., -1]):
        assert face.max() == ph.BACKGROUND  # the head is not cut by the box
    brain = np.isin(labels, [ph.GREY_MATTER, ph.WHITE_MATTER, ph.VENTRICLE, ph.LESION]).sum(axis=(1, 2))
    assert brain[15] > brain[8] > 0 and brain[15] > brain[23] > 0  # ellipsoidal: widest mid-volume
    assert (labels[12] != labels[20]).mean() > 0.05


def test_bad_shapes_and_labels_raise_input_error():
    with pytest.raises(InputError):
        ph.head_labels((64,), seed=0)
    with pytest.raises(InputError):
        ph.head_labels((4, 64), seed=0)
    with pytest.raises(InputError):
        ph.render(np.zeros(SMALL, dtype=np.float32), "MRI", 0)
    with pytest.raises(InputError):
        ph.render(np.full(SMALL, 9), "MRI", 0)
    with pytest.raises(InputError):
        ph.head_labels(SMALL, seed=-1)
    with pytest.raises(InputError):
        ph.render(np.zeros(SMALL, dtype=np.int16), "CT", seed=1.5)


# ---------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("modality", modality.ALL)
@pytest.mark.parametrize("shape", [SMALL, VOL])
def test_render_is_float32_in_unit_range(modality, shape):
    labels = ph.head_labels(shape, seed=2)
    image = ph.render(labels, modality, seed=2)
    assert image.dtype == np.float32 and image.shape == labels.shape
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image.max() > 0.5  # uses the range, not a sliver of it


@pytest.mark.parametrize("modality", modality.ALL)
def test_render_is_deterministic_case_insensitive_and_noise_is_seeded(modality):
    labels = ph.head_labels(SMALL, seed=5)
    a = ph.render(labels, modality, seed=5)
    np.testing.assert_array_equal(a, ph.render(labels, modality.lower(), seed=5))
    assert np.abs(a - ph.render(labels, modality, seed=6)).mean() > 1e-3


@pytest.mark.parametrize("name", ["XR", "", "T1", "ultrasound"])
def test_unknown_modality_raises_input_error(name):
    labels = ph.head_labels(SMALL, seed=0)
    with pytest.raises(InputError):
        ph.render(labels, name, 0)
    with pytest.raises(InputError):
        ph.phantom_pair(name, SMALL)


def test_ct_contrast_bone_brightest_air_black(slice128):
    ct = ph.render(slice128, "CT", seed=1)
    m = {k: _median(ct, slice128, k) for k in ph.LABEL_NAMES}
    assert m[ph.SKULL] > 0.75
    assert m[ph.SKULL] > m[ph.GREY_MATTER] > m[ph.WHITE_MATTER] > m[ph.CSF] > m[ph.BACKGROUND]
    assert m[ph.GREY_MATTER] > m[ph.VENTRICLE] + 0.15
    assert m[ph.BACKGROUND] == 0.0  # air below the brain window
    assert m[ph.LESION] < m[ph.WHITE_MATTER]  # hypodense lesion


def test_mri_is_t2_like_csf_bright(slice128):
    mri = ph.render(slice128, "MRI", seed=1)
    m = {k: _median(mri, slice128, k) for k in ph.LABEL_NAMES}
    assert m[ph.VENTRICLE] > m[ph.GREY_MATTER] > m[ph.WHITE_MATTER] > m[ph.SKULL]
    assert m[ph.CSF] > m[ph.GREY_MATTER]
    assert m[ph.LESION] > m[ph.GREY_MATTER]  # T2-hyperintense lesion
    assert m[ph.BACKGROUND] < 0.05
    assert m[ph.VENTRICLE] == max(m.values())


def test_pet_grey_matter_hot_lesion_hotter(slice128):
    pet = ph.render(slice128, "PET", seed=1)
    m = {k: _median(pet, slice128, k) for k in ph.LABEL_NAMES}
    assert m[ph.LESION] > m[ph.GREY_MATTER] > m[ph.WHITE_MATTER] > m[ph.VENTRICLE]
    assert m[ph.GREY_MATTER] > 1.3 * m[ph.WHITE_MATTER]
    assert m[ph.BACKGROUND] < 0.05


def test_spect_perfusion_contrast_and_lesion_defect(slice128):
    spect = ph.render(slice128, "SPECT", seed=1)
    m = {k: _median(spect, slice128, k) for k in ph.LABEL_NAMES}
    assert m[ph.GREY_MATTER] > m[ph.WHITE_MATTER] > m[ph.VENTRICLE]
    assert m[ph.LESION] < m[ph.GREY_MATTER]  # hypoperfused


def test_resolution_orders_ct_mri_sharper_than_pet_sharper_than_spect(slice128):
    def sharpness(image):
        gy, gx = np.gradient(image.astype(np.float64))
        return float(np.hypot(gx, gy)[slice128 != ph.BACKGROUND].mean() / image[slice128 != 0].mean())

    s = {mod: sharpness(ph.render(slice128, mod, seed=1)) for mod in modality.ALL}
    assert min(s["CT"], s["MRI"]) > s["PET"] > s["SPECT"]


# ---------------------------------------------------------------------------- pseudo-colour


def test_pseudo_colour_luts():
    ramp = np.linspace(0.0, 1.0, 256).reshape(16, 16)
    pet, spect = pseudo_colour(ramp, "PET"), pseudo_colour(ramp, "spect")
    for rgb in (pet, spect):
        assert rgb.shape == (16, 16, 3) and rgb.dtype == np.float32
        assert rgb.min() >= 0.0 and rgb.max() <= 1.0
        np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])  # background stays black
        assert np.ptp(rgb, axis=-1).max() > 0.5  # really coloured, not grey
    assert np.abs(pet - spect).mean() > 0.1
    assert pet.reshape(-1, 3)[100, 2] > pet.reshape(-1, 3)[100, 0]  # cold PET is blue
    assert pet[-1, -1, 0] > 0.9 and pet[-1, -1, 2] < 0.1  # hot PET is red
    mid = spect.reshape(-1, 3)[110]
    assert mid[0] > mid[1] and mid[2] > mid[1]  # SPECT middle is purple
    np.testing.assert_array_equal(pseudo_colour(np.array([-1.0, 2.0])), pseudo_colour(np.array([0.0, 1.0])))
    with pytest.raises(InputError):
        pseudo_colour(ramp, "viridis")


# ---------------------------------------------------------------------------- pairs


@pytest.mark.parametrize("modality", ["CT", "PET", "spect"])
def test_phantom_pair_is_aligned_and_coloured_like_harvard(modality):
    pair = ph.phantom_pair(modality, SMALL, seed=7)
    assert pair.modality == modality.upper()
    np.testing.assert_array_equal(pair.labels, ph.head_labels(SMALL, 7))
    np.testing.assert_array_equal(pair.mri, ph.render(pair.labels, "MRI", 7))
    np.testing.assert_array_equal(pair.other, ph.render(pair.labels, modality, 7))
    assert pair.mri.shape == pair.other.shape == SMALL
    if pair.modality == "CT":
        assert pair.other_rgb is None
    else:
        assert pair.other_rgb.shape == (*SMALL, 3) and pair.other_rgb.dtype == np.float32
        np.testing.assert_array_equal(pair.other_rgb, pseudo_colour(pair.other, modality))


def test_phantom_pair_3d_and_mri_partner_rejected():
    pair = ph.phantom_pair("PET", VOL, seed=1)
    assert pair.mri.shape == VOL and pair.other_rgb.shape == (*VOL, 3)
    with pytest.raises(InputError):
        ph.phantom_pair("MRI", SMALL)


# ---------------------------------------------------------------------------- left-right asymmetry


@pytest.mark.parametrize("seed", range(3))
def test_3d_phantom_is_left_right_asymmetric_on_the_documented_side(seed):
    assert ph.LESION_SIDE == "left"  # patient left = larger column indices (LPS, radiological)
    width = VOL[-1]
    labels = ph.head_labels(VOL, seed)
    lesion_cols = np.nonzero(labels == ph.LESION)[-1]
    assert lesion_cols.size >= 10
    assert lesion_cols.min() >= width // 2  # the whole lesion is on the patient's left

    no_lesion = ph.head_labels(VOL, seed, lesion=False)
    ventricle_cols = np.nonzero(no_lesion == ph.VENTRICLE)[-1]
    left, right = (ventricle_cols >= width // 2).sum(), (ventricle_cols < width // 2).sum()
    assert left > 1.25 * right  # the left lateral ventricle is the larger

    mri = ph.render(labels, "MRI", seed)
    left_half, mirrored_right = mri[..., width // 2 :], mri[..., : width // 2][..., ::-1]
    flip_gap = np.abs(left_half - mirrored_right).mean()
    noise_gap = np.abs(mri - ph.render(labels, "MRI", seed + 100)).mean()  # same head, new noise
    assert flip_gap > 0.02 and flip_gap > 1.5 * noise_gap


# ---------------------------------------------------------------------------- dataset on disk


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def test_written_dataset_has_the_harvard_layout(tmp_path):
    pairs = ph.write_phantom_dataset(tmp_path, n_pairs=2, shape=SMALL, seed=0)
    rel = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    expected = {f"{m}/{sub}/{n}.png" for m in ("CT", "PET", "SPECT") for sub in ("MRI", m) for n in (1, 2)}
    assert rel == expected
    assert all(HARVARD_PATTERN.match(r) for r in rel)
    assert [tuple(p.relative_to(tmp_path).as_posix() for p in pair) for pair in pairs][:2] == [
        ("CT/MRI/1.png", "CT/CT/1.png"),
        ("CT/MRI/2.png", "CT/CT/2.png"),
    ]
    for r in rel:
        image = _read(tmp_path / r)
        assert image.dtype == np.uint8 and image.shape == (*SMALL, 3)
        grey = r.split("/")[1] in ("MRI", "CT")
        equal_channels = (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
        assert equal_channels == grey, r
    # each pair is its own head, and the set is reproducible
    assert (_read(tmp_path / "CT/MRI/1.png") != _read(tmp_path / "CT/MRI/2.png")).any()
    again = tmp_path / "again"
    ph.write_phantom_dataset(again, n_pairs=1, modalities=("pet",), shape=SMALL, seed=0)
    np.testing.assert_array_equal(_read(again / "PET/PET/1.png"), _read(tmp_path / "PET/PET/1.png"))


def test_write_dataset_rejects_bad_requests(tmp_path):
    with pytest.raises(InputError):
        ph.write_phantom_dataset(tmp_path, n_pairs=0, shape=SMALL)
    with pytest.raises(InputError):
        ph.write_phantom_dataset(tmp_path, n_pairs=1, modalities=("MRI",), shape=SMALL)
    with pytest.raises(InputError):
        ph.write_phantom_dataset(tmp_path, n_pairs=1, shape=VOL)


@pytest.mark.shared_data
def test_written_layout_matches_the_real_harvard_set(harvard_dir, tmp_path):
    real_root = harvard_dir / "train_aligned"
    if not real_root.is_dir():
        pytest.skip(f"{real_root} not found")
    real = [p.relative_to(real_root).as_posix() for p in real_root.rglob("*.png")]
    assert real and all(HARVARD_PATTERN.match(r) for r in real)
    real_dirs = {r.rsplit("/", 1)[0] for r in real}
    ph.write_phantom_dataset(tmp_path, n_pairs=1, shape=(256, 256), seed=0)
    ours = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")]
    assert {r.rsplit("/", 1)[0] for r in ours} == real_dirs
    for sub in sorted(real_dirs):  # same storage: 8-bit RGB, 256 x 256
        example = next((real_root / sub).glob("*.png"))
        assert _read(example).shape == _read(tmp_path / sub / "1.png").shape
