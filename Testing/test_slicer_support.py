"""bsafusion.slicer_support: the Slicer module's non-Slicer logic, tested without Slicer.

Results come from the real volume pipeline on small phantom volumes (8 x 48 x 48) with a tiny
untrained model: the tests check wiring, geometry and conversions, not registration quality.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from bsafusion import slicer_support
from bsafusion.model import checkpoint
from bsafusion.errors import InputError
from bsafusion.phantom import phantom_pair
from bsafusion.slicer_support import (
    BackgroundJob,
    RunRequest,
    checkerboard_volume,
    jacobian_window_level,
    lps_to_ras,
    output_volumes,
    ras_to_lps,
    run_core,
    sample_points,
    to_display_rgb,
    transform_discrepancy_mm,
    validate_parameters,
    write_slicer_transform,
    read_slicer_transform,
    ijk_to_ras,
    image_from_node_array,
    same_geometry,
)
from bsafusion.inference.volume import Cancelled

SHAPE = (8, 48, 48)
SPACING = (1.5, 1.4, 3.0)
ORIGIN = (-30.0, -25.0, 12.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixtures of conftest.py


def _volume(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    return image


@pytest.fixture(scope="module")
def results(tiny_weights) -> dict[str, tuple[RunRequest, object]]:
    out = {}
    for modality in ("CT", "PET"):
        pair = phantom_pair(modality, shape=SHAPE, seed=5)
        params = validate_parameters(modality, tiny_weights[modality], device="cpu", prealign=False)
        request = RunRequest(_volume(pair.mri), _volume(pair.other), params, names=("mri", "other"))
        out[modality] = (request, run_core(request))
    return out


# ------------------------------------------------------------------------------- parameters


def test_validate_parameters_normalises_and_keeps_choices(tiny_weights):
    p = validate_parameters(" pet ", tiny_weights["PET"], device="CPU", prealign=0, axis="Coronal", batch_size=3)
    assert (p.modality, p.device, p.prealign, p.axis, p.batch_size) == ("PET", "cpu", False, "coronal", 3)
    assert str(p.weights) == tiny_weights["PET"]


@pytest.mark.parametrize("kwargs, needle", [
    ({"modality": "MRI"}, "unknown modality"),
    ({"axis": "oblique"}, "unknown slice axis"),
    ({"device": "gpu"}, "unknown device"),
    ({"batch_size": 0}, "batch size"),
    ({"batch_size": 2.5}, "batch size"),
    ({"batch_size": True}, "batch size"),
    ({"refine_steps": -1}, "refinement steps"),
])
def test_validate_parameters_rejects_bad_choices(tiny_weights, kwargs, needle):
    args = {"modality": "CT", "weights": tiny_weights["CT"], **kwargs}
    with pytest.raises(InputError, match=needle):
        validate_parameters(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_validate_parameters_rejects_cuda_without_gpu(tiny_weights):
    with pytest.raises(InputError, match="CUDA"):
        validate_parameters("CT", tiny_weights["CT"], device="cuda")


def test_validate_parameters_weights_file_must_exist(tmp_path):
    with pytest.raises(InputError, match="missing.pt: weights file not found"):
        validate_parameters("CT", tmp_path / "missing.pt")
    with pytest.raises(InputError, match="is a folder"):
        validate_parameters("CT", tmp_path)


def test_validate_parameters_shipped_model(monkeypatch, tmp_path):
    shipped = tmp_path / "bsafusion_ct.pt"
    monkeypatch.setattr(checkpoint, "default_weights_path", lambda modality: shipped)
    with pytest.raises(InputError, match="no shipped CT model.*choose a weights file"):
        validate_parameters("CT", "")
    shipped.write_bytes(b"x")  # existence is all that is checked here; the core reads it
    assert validate_parameters("CT", None).weights is None
    assert validate_parameters("CT", "  ").weights is None


def test_choice_lists_match_the_core():
    from bsafusion.modality import MOVING as MODALITIES
    from bsafusion.inference.volume.geometry import AXES

    assert slicer_support.MODALITIES == MODALITIES
    assert slicer_support.AXES == tuple(AXES)
    assert slicer_support.DEVICES == ("auto", "cpu", "cuda")


# ---------------------------------------------------------------------------- BackgroundJob


def test_background_job_progress_is_visible_while_it_runs():
    gate, reported = threading.Event(), threading.Event()

    def work(progress, cancel):
        progress(0.5, "half way")
        reported.set()
        assert gate.wait(5)
        progress(1.7, "clipped")
        return "result"

    job = BackgroundJob(work).start()
    assert reported.wait(5)
    assert job.progress() == (0.5, "half way") and not job.done
    with pytest.raises(RuntimeError, match="still running"):
        job.outcome()
    gate.set()
    assert job.wait(5)
    assert job.progress() == (1.0, "clipped")
    assert job.outcome() == "result"


def test_background_job_hands_errors_to_the_caller():
    def work(progress, cancel):
        raise InputError("bad volume")

    job = BackgroundJob(work).start()
    assert job.wait(5)
    with pytest.raises(InputError, match="bad volume"):
        job.outcome()


def test_background_job_cancel_reaches_the_work():
    started = threading.Event()

    def work(progress, cancel):
        started.set()
        for _ in range(500):
            if cancel():
                raise Cancelled("stopped")
            threading.Event().wait(0.01)
        return "finished"

    job = BackgroundJob(work).start()
    assert started.wait(5)
    job.cancel()
    assert job.cancel_requested and job.wait(5)
    with pytest.raises(Cancelled):
        job.outcome()


def test_run_core_cancel_raises_cancelled(results):
    request, _ = results["CT"]
    with pytest.raises(Cancelled):
        run_core(request, cancel=lambda: True)


def test_run_core_reports_progress_and_uses_volume_names(results, tiny_weights):
    request, _ = results["CT"]
    seen = []
    run_core(request, progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    flat = RunRequest(request.fixed, sitk.Image(request.moving.GetSize(), sitk.sitkFloat32),
                      request.parameters, names=("mri.nrrd", "empty.nrrd"))
    flat.moving.CopyInformation(request.fixed)
    with pytest.raises(InputError, match="empty.nrrd"):
        run_core(flat)


# ------------------------------------------------------------------------------------ outputs


def test_output_volumes_for_ct(results):
    request, result = results["CT"]
    specs = {s.key: s for s in output_volumes(result, request.fixed, "CT head")}
    assert list(specs) == ["fused", "aligned", "jacobian", "checkerboard"]
    assert specs["fused"].node_class == "vtkMRMLScalarVolumeNode"
    assert specs["aligned"].image is result.aligned or np.array_equal(
        sitk.GetArrayViewFromImage(specs["aligned"].image), sitk.GetArrayViewFromImage(result.aligned))
    assert specs["jacobian"].color_node_id == "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
    assert specs["jacobian"].window_level[1] == 1.0
    assert specs["fused"].name == "CT head BSAFusion fused"
    for spec in specs.values():
        assert slicer_support.same_geometry(spec.image, request.fixed), spec.key
        assert spec.image.GetNumberOfComponentsPerPixel() == (3 if spec.node_class.endswith("VectorVolumeNode") else 1)


def test_output_volumes_for_pet_give_an_8bit_colour_volume(results):
    request, result = results["PET"]
    fused = next(s for s in output_volumes(result, request.fixed, "PET") if s.key == "fused")
    assert fused.node_class == "vtkMRMLVectorVolumeNode"
    assert fused.image.GetPixelID() == sitk.sitkVectorUInt8
    expected = np.round(np.clip(sitk.GetArrayViewFromImage(result.fused), 0, 1) * 255)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(fused.image), expected)


def test_output_volumes_refuse_an_output_off_the_fixed_grid(results):
    request, result = results["CT"]
    shifted = sitk.Image(result.fused)
    shifted.SetOrigin(tuple(o + 1.0 for o in shifted.GetOrigin()))
    broken = SimpleNamespace(fused=shifted, aligned=result.aligned, jacobian=result.jacobian)
    with pytest.raises(ValueError, match="'fused' is not on the fixed volume's grid"):
        output_volumes(broken, request.fixed, "CT")


def test_to_display_rgb():
    rgb = sitk.GetImageFromArray(np.array([[[[0.0, 0.5, 1.0], [1.2, -0.1, 0.25]]]], np.float32), isVector=True)
    rgb.SetSpacing((2.0, 3.0, 4.0))
    out = to_display_rgb(rgb)
    assert out.GetPixelID() == sitk.sitkVectorUInt8 and out.GetSpacing() == (2.0, 3.0, 4.0)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out)[0, 0], [[0, 128, 255], [255, 0, 64]])
    grey = _volume(np.zeros(SHAPE))
    assert to_display_rgb(grey) is grey
    two = sitk.GetImageFromArray(np.zeros((2, 2, 2, 2), np.float32), isVector=True)
    with pytest.raises(ValueError, match="3 components"):
        to_display_rgb(two)


def test_checkerboard_alternates_blocks_of_the_two_volumes():
    rng = np.random.default_rng(0)
    a, b = rng.random(SHAPE), rng.random(SHAPE) + 5.0
    board = sitk.GetArrayFromImage(checkerboard_volume(_volume(a), _volume(b), tiles=4))
    lo, hi = np.percentile(a, [1.0, 99.0])  # each volume is stretched to [0, 1] by its percentiles
    from_a = np.isclose(board, np.clip((a - lo) / (hi - lo), 0, 1), atol=1e-6)
    # block (z, y, x) of size (2, 12, 12): parity of the block index decides the source
    zz, yy, xx = np.meshgrid(np.arange(SHAPE[0]) // 2, np.arange(SHAPE[1]) // 12, np.arange(SHAPE[2]) // 12,
                             indexing="ij")
    even = (zz + yy + xx) % 2 == 0
    assert from_a[even].mean() > 0.99 and from_a[~even].mean() < 0.05
    assert board.min() >= 0.0 and board.max() <= 1.0


def test_checkerboard_refuses_different_grids():
    a = _volume(np.ones(SHAPE))
    b = sitk.Image(a)
    b.SetSpacing((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="not on the fixed volume's grid"):
        checkerboard_volume(a, b)


def test_jacobian_window_level_is_centred_on_one():
    assert jacobian_window_level(_volume(np.ones(SHAPE))) == (0.1, 1.0)
    values = np.ones(SHAPE)
    values.flat[::2] = 1.3
    window, level = jacobian_window_level(_volume(values))
    assert level == 1.0 and window == pytest.approx(0.6)
    assert jacobian_window_level(_volume(np.full(SHAPE, -4.0)))[0] == 2.0


def test_quality_summary_mentions_consistency_and_folding(results):
    _, result = results["CT"]
    text = slicer_support.quality_summary(result)
    assert f"{result.inverse_consistency_mm:.2f} mm" in text and "% of voxels" in text


def test_node_names_are_distinct():
    names = slicer_support.node_names("CT")
    assert len(set(names.values())) == 5 and all(n.startswith("CT BSAFusion") for n in names.values())


# ------------------------------------------------------------------- transform and coordinates


def test_ras_lps_flip():
    np.testing.assert_array_equal(ras_to_lps([10.0, -20.0, 30.0]), [-10.0, 20.0, 30.0])
    p = np.array([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]])
    np.testing.assert_array_equal(lps_to_ras(ras_to_lps(p)), p)


def test_sample_points_stay_inside_the_image():
    image = _volume(np.zeros(SHAPE))
    points = sample_points(image, count=50, margin=0.2)
    assert points.shape == (50, 3)
    index = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in points])
    size = np.array(image.GetSize()) - 1
    assert (index >= 0.2 * size - 1e-6).all() and (index <= 0.8 * size + 1e-6).all()
    grid = sample_points(image, count=10, on_grid=True)
    index = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in grid])
    np.testing.assert_allclose(index, np.round(index), atol=1e-9)


def _slicer_like(transform: sitk.Transform):
    """What Slicer does with an ITK file: the same mapping, expressed in RAS."""
    return lambda ras: lps_to_ras(transform.TransformPoint(tuple(ras_to_lps(ras))))


def test_transform_file_round_trip_keeps_the_mapping(results, tmp_path):
    request, result = results["CT"]
    path = write_slicer_transform(result.transform, request.fixed, tmp_path / "sub")
    assert path.suffix == ".nrrd" and path.is_file()
    loaded = read_slicer_transform(path)
    points = sample_points(request.fixed, count=30)
    assert transform_discrepancy_mm(result.transform, _slicer_like(loaded), points) < 1e-3


def test_geometry_round_trip_through_an_ijk_to_ras_matrix():
    image = _volume(np.random.default_rng(0).random(SHAPE))
    image.SetDirection(tuple(sitk.VersorTransform((0.3, -0.2, 1.0), 0.4).GetMatrix()))
    matrix = ijk_to_ras(image)
    ras = matrix @ np.array([3.0, 5.0, 2.0, 1.0])
    np.testing.assert_allclose(ras_to_lps(ras[:3]), image.TransformIndexToPhysicalPoint((3, 5, 2)), atol=1e-9)
    back = image_from_node_array(sitk.GetArrayFromImage(image), matrix)
    assert same_geometry(back, image, tolerance=1e-9)


def test_unchosen_options_are_left_to_the_core(tiny_weights):
    assert validate_parameters("CT", tiny_weights["CT"]).core_options() == {"weights": Path(tiny_weights["CT"])}
    chosen = validate_parameters("CT", tiny_weights["CT"], prealign=False, refine_steps=0).core_options()
    assert chosen["prealign"] is False and chosen["refine_steps"] == 0


def test_transform_discrepancy_catches_a_missing_lps_ras_conversion():
    shift = sitk.TranslationTransform(3, (4.0, -3.0, 2.0))
    points = sample_points(_volume(np.zeros(SHAPE)), count=10)
    assert transform_discrepancy_mm(shift, _slicer_like(shift), points) < 1e-9
    forgot = lambda ras: shift.TransformPoint(tuple(ras))  # LPS transform applied to RAS points  # noqa: E731
    assert transform_discrepancy_mm(shift, forgot, points) == pytest.approx(2 * np.hypot(4.0, 3.0))
