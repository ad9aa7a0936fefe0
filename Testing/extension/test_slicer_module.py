"""The 3D Slicer extension, checked without the Slicer application.

* Static checks: the module files compile; the ``.ui`` file is valid Qt Designer XML holding
  every widget the code uses, with a plausible class, and its parameter bindings match the
  parameter node; the CMake files declare a Slicer extension (and configure, build and install
  against a stub of Slicer's CMake package when CMake is available).
* On a **real MRML scene** (slicer-core, the ``slicer-test`` extra; these tests skip without it):
  the Logic's output nodes (classes, IJK -> RAS), the transform read by Slicer's own transform
  storage node against SimpleITK reading the same file, hardening, a saved and reloaded scene,
  the Widget's background run, the dependency policy and the batch script. ``slicer_standin``
  supplies only what slicer-core lacks (``slicer.app``, Qt widgets, dialogs,
  ``ScriptedLoadableModule``, ``parameterNodeWrapper``). The core behind them is the real one
  with a tiny untrained model on small phantom volumes, so these tests check wiring and
  geometry, not registration quality.
* Rendering, PythonQt threads and the real GUI connectors need the application: the module's
  self-test ``BSAFusionTest`` covers them inside Slicer.
"""

from __future__ import annotations

import json
import py_compile
import re
import runpy
import shutil
import subprocess
import sys
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

import slicer_standin
from bsafusion import slicer_support
from bsafusion.phantom import phantom_pair
from bsafusion.inference.volume import OUTPUT_FILES

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "BSAFusionExtension"
MODULE_DIR = EXTENSION / "BSAFusion"
MODULE_PY = MODULE_DIR / "BSAFusion.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "BSAFusion.ui"
SHAPE = (8, 48, 48)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixtures of conftest.py


# ------------------------------------------------------------------------------------ fixtures


def _import_module(name: str) -> types.ModuleType:
    for stale in ("BSAFusion", "BSAFusionBatch"):
        sys.modules.pop(stale, None)
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    return __import__(name)


@pytest.fixture
def slicer_env():
    """A real MRML scene with the stand-in application (main window), BSAFusion imported against it."""
    if not slicer_standin.available():
        pytest.skip("needs slicer-core (pip install -e 'BSAFusionCore[slicer-test]')")
    recorder = slicer_standin.install()
    module = _import_module("BSAFusion")
    env = types.SimpleNamespace(rec=recorder, bsa=module, slicer=sys.modules["slicer"], widgets=[])
    yield env
    for widget in env.widgets:  # what Slicer does when it unloads the module: stop observing the scene
        widget.cleanup()
    for name in ("BSAFusion", "BSAFusionBatch"):
        sys.modules.pop(name, None)
    slicer_standin.uninstall()
    if str(MODULE_DIR) in sys.path:
        sys.path.remove(str(MODULE_DIR))


def _image(array: np.ndarray) -> sitk.Image:
    """Anisotropic, off-origin, obliquely oriented: any axis flip or swap shows."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing((1.5, 1.4, 3.0))
    image.SetOrigin((-30.0, -25.0, 12.0))
    image.SetDirection(tuple(sitk.VersorTransform((0.1, 0.2, 1.0), 0.3).GetMatrix()))
    return image


def _push(env, image: sitk.Image, name: str):
    node = env.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.CreateDefaultDisplayNodes()
    env.bsa.BSAFusionLogic.pushVolume(image, node)
    return node


def _push_pair(env, modality: str, seed: int = 5, moving: np.ndarray | None = None):
    pair = phantom_pair(modality, shape=SHAPE, seed=seed)
    return _push(env, _image(pair.mri), "MRI"), _push(env, _image(pair.other if moving is None else moving), modality)


def _run(env, modality, weights, **kwargs):
    fixed, moving = _push_pair(env, modality)
    logic = env.bsa.BSAFusionLogic()
    kwargs = {"prealign": False, **kwargs}
    nodes, result = logic.process(fixed, moving, modality, weights=weights[modality], device="cpu", **kwargs)
    return logic, fixed, moving, nodes, result


def _ijk_to_ras(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


# ---------------------------------------------------------------------------- static checks


def test_module_files_compile(tmp_path):
    files = sorted(EXTENSION.rglob("*.py"))
    assert {f.name for f in files} >= {"BSAFusion.py", "BSAFusionBatch.py", "BSAFusionBatchTest.py"}
    for f in files:
        py_compile.compile(str(f), cfile=str(tmp_path / (f.stem + ".pyc")), doraise=True)


# What each widget name's suffix promises, and the Qt/CTK/MRML classes that keep the promise.
_CLASS_BY_SUFFIX = {
    "CollapsibleButton": {"ctkCollapsibleButton"},
    "Button": {"QPushButton"},
    "Selector": {"qMRMLNodeComboBox"},
    "ComboBox": {"QComboBox"},
    "CheckBox": {"QCheckBox"},
    "Slider": {"ctkSliderWidget"},
    "LineEdit": {"ctkPathLineEdit", "QLineEdit"},
    "SpinBox": {"QSpinBox"},
    "Bar": {"QProgressBar"},
    "Label": {"QLabel"},
}


def test_ui_file_has_every_widget_the_code_uses():
    widgets = _ui_widgets()
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.find("widget").get("class") == "qMRMLWidget"
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_PY.read_text()))
    assert {"runButton", "cancelButton", "progressBar", "statusLabel", "opacitySlider", "flickerButton"} <= used
    assert not used - set(widgets), f"used in BSAFusion.py but missing from the .ui: {sorted(used - set(widgets))}"
    for name in used:
        suffix = next(s for s in _CLASS_BY_SUFFIX if name.endswith(s))
        assert widgets[name].get("class") in _CLASS_BY_SUFFIX[suffix], (name, widgets[name].get("class"))


def test_ui_mrml_widgets_receive_the_scene_and_custom_widgets_are_declared():
    root = ET.parse(UI_FILE).getroot()
    combos = {n for n, w in _ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert combos and combos == receivers
    used_classes = {w.get("class") for w in root.iter("widget")}
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    assert {c for c in used_classes if not c.startswith("Q")} <= declared


def test_ui_parameter_bindings_match_the_parameter_node(slicer_env):
    """Every parameter has a widget of a class Slicer's GUI connectors accept for its type."""
    import pathlib

    specs = slicer_env.bsa.BSAFusionParameterNode.allParameters
    bound = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget
    assert set(bound) == set(specs)
    for param, widget in bound.items():
        base, notes, _ = specs[param]
        cls = widget.get("class")
        if isinstance(base, type) and issubclass(base, slicer_env.slicer.vtkMRMLNode):
            assert cls == "qMRMLNodeComboBox", param
            types_in_ui = [s.text for s in widget.find("property[@name='nodeTypes']/stringlist")]
            assert types_in_ui == [base.__name__], param
        elif base is bool:
            assert cls == "QCheckBox", param
        elif base is int:
            assert cls == "QSpinBox" and any(type(n).__name__ == "WithinRange" for n in notes), param
        elif base is float:
            assert cls == "ctkSliderWidget" and any(type(n).__name__ == "WithinRange" for n in notes), param
        elif base is pathlib.Path:
            assert cls == "ctkPathLineEdit", param
        else:
            assert base is str and cls == "QComboBox", param
            choice = next(n for n in notes if type(n).__name__ == "Choice")
            items = [i.findtext("property/string") for i in widget.findall("item")]
            assert items == list(choice.choices), param


def test_module_choice_lists_match_the_core(slicer_env):
    bsa = slicer_env.bsa
    assert bsa.MODALITY_CHOICES == slicer_support.MODALITIES
    assert bsa.DEVICE_CHOICES == slicer_support.DEVICES
    assert bsa.AXIS_CHOICES == slicer_support.AXES


def test_module_metadata(slicer_env):
    parent = types.SimpleNamespace()
    slicer_env.bsa.BSAFusion(parent)
    assert parent.title == "BSAFusion" and parent.categories == ["Registration"]
    assert "BSFA-F" in parent.acknowledgementText and parent.helpText.strip()


def test_cmake_files_declare_a_slicer_extension():
    top = (REPO / "CMakeLists.txt").read_text()
    for needle in ("cmake_minimum_required", "project(BSAFusion)", "EXTENSION_HOMEPAGE", 'EXTENSION_CATEGORY "Registration"',
                   "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                   'EXTENSION_DEPENDS "PyTorch"', "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "add_subdirectory(BSAFusionExtension/BSAFusion)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                   "include(${Slicer_EXTENSION_CPACK})"):
        assert needle in top, needle
    module = (MODULE_DIR / "CMakeLists.txt").read_text()
    for needle in ("slicerMacroBuildScriptedModule", "WITH_GENERIC_TESTS", "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)",
                   "add_subdirectory(Testing)", "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR"):
        assert needle in module, needle
    for listed in ("${MODULE_NAME}.py", "${MODULE_NAME}Batch.py", "Resources/Icons/${MODULE_NAME}.png",
                   "Resources/UI/${MODULE_NAME}.ui"):
        assert listed in module and (MODULE_DIR / listed.replace("${MODULE_NAME}", "BSAFusion")).is_file()
    tests = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text()
    for script in re.findall(r"slicer_add_python_unittest\(SCRIPT (\S+)\)", tests):
        assert (MODULE_DIR / "Testing" / "Python" / script).is_file()


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "BSAFusion.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


def test_extension_index_entry():
    entry = json.loads((EXTENSION / "BSAFusion.json").read_text())
    assert entry["category"] == "Registration" and entry["build_subdirectory"] == "."
    assert entry["build_dependencies"] == ["PyTorch"] and entry["scm_url"].startswith("https://")
    assert "$schema" in entry and entry["scm_revision"]


def _cmake_ready() -> bool:
    return shutil.which("cmake") is not None and (shutil.which("c++") or shutil.which("g++")) is not None


@pytest.mark.skipif(not _cmake_ready(), reason="needs cmake and a C++ compiler (project() enables C/C++)")
def test_cmake_configures_builds_and_installs_against_a_stub_slicer(tmp_path):
    """Real CMake runs the extension's CMake code; a stub Slicer package records the macro calls."""
    stub = Path(slicer_standin.__file__).parent / "cmake"
    build, prefix = tmp_path / "build", tmp_path / "install"
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # noqa: E731
    configure = run("cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={stub}", "-DBUILD_TESTING=ON")
    assert configure.returncode == 0, configure.stdout + configure.stderr
    record = (build / "slicer_stub_calls.txt").read_text()
    assert "EXTENSION BSAFusion Registration PyTorch" in record
    assert "SCRIPTED_MODULE BSAFusion SCRIPTS=BSAFusion.py;BSAFusionBatch.py" in record
    assert "RESOURCES=Resources/Icons/BSAFusion.png;Resources/UI/BSAFusion.ui GENERIC_TESTS=1" in record
    assert "UNITTEST BSAFusion.py" in record and "UNITTEST BSAFusionBatchTest.py" in record
    built = run("cmake", "--build", str(build))
    assert built.returncode == 0, built.stdout + built.stderr
    core = build / "lib" / "Slicer-5.10" / "qt-scripted-modules" / "BSAFusionCore"
    assert (core / "pyproject.toml").is_file() and (core / "bsafusion" / "inference" / "volume" / "pipeline.py").is_file()
    installed = run("cmake", "--install", str(build), "--prefix", str(prefix))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    core = prefix / "lib" / "Slicer-5.10" / "qt-scripted-modules" / "BSAFusionCore"
    assert (core / "README.md").is_file() and (core / "bsafusion" / "slicer_support.py").is_file()
    assert not list(core.rglob("__pycache__"))


# --------------------------------------------------------------------- logic (real MRML)


def test_volumes_cross_into_the_scene_with_their_geometry(slicer_env):
    """pushVolume/pullVolume against Slicer's own IJK -> RAS: an LPS point lands on its RAS twin."""
    image = _image(np.random.default_rng(0).random(SHAPE))
    node = _push(slicer_env, image, "volume")
    matrix = _ijk_to_ras(node)
    for index in ((0, 0, 0), (5, 7, 3), (47, 2, 6)):
        expected_lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = matrix @ np.array([*index, 1.0])
        np.testing.assert_allclose(slicer_support.ras_to_lps(ras[:3]), expected_lps, atol=1e-9)
    np.testing.assert_array_equal(slicer_env.slicer.util.arrayFromVolume(node), sitk.GetArrayViewFromImage(image))
    back = slicer_env.bsa.BSAFusionLogic.pullVolume(node)
    assert slicer_support.same_geometry(back, image, tolerance=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))


def test_ct_run_gives_real_nodes_on_the_fixed_grid(slicer_env, tiny_weights):
    logic, fixed, moving, nodes, result = _run(slicer_env, "CT", tiny_weights)
    slicer = slicer_env.slicer
    assert set(nodes) == {"transform", "fused", "aligned", "jacobian", "checkerboard"}
    transform = nodes["transform"]
    assert transform.GetClassName() == "vtkMRMLTransformNode" and transform.GetName() == "CT BSAFusion transform"
    assert transform.GetTransformFromParent().GetClassName() == "vtkOrientedGridTransform"
    assert moving.GetParentTransformNode() is transform and fixed.GetParentTransformNode() is None
    assert transform.GetNodeReference(slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()) is moving
    assert transform.GetNodeReference(slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole()) is fixed
    for key in ("fused", "aligned", "jacobian", "checkerboard"):
        node = nodes[key]
        assert node.GetClassName() == "vtkMRMLScalarVolumeNode", key
        assert node.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions(), key
        np.testing.assert_allclose(_ijk_to_ras(node), _ijk_to_ras(fixed), atol=1e-9, err_msg=key)
        assert node.GetDisplayNode() is not None, key
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["aligned"]),
                                  sitk.GetArrayViewFromImage(result.aligned))
    display = nodes["jacobian"].GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
    assert not display.GetAutoWindowLevel() and display.GetLevel() == 1.0
    points = slicer_support.sample_points(result.aligned, count=25, on_grid=True)
    assert slicer_support.transform_discrepancy_mm(
        result.transform, transform.GetTransformFromParent().TransformPoint, points) < 1e-3
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == 6
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTransformNode") == 1


def test_pet_run_makes_an_rgb_vector_fused_volume(slicer_env, tiny_weights):
    _, fixed, _, nodes, _ = _run(slicer_env, "PET", tiny_weights)
    fused = nodes["fused"]
    assert fused.GetClassName() == "vtkMRMLVectorVolumeNode"
    assert fused.GetImageData().GetNumberOfScalarComponents() == 3
    assert fused.GetImageData().GetScalarTypeAsString() == "unsigned char"
    assert fused.GetDisplayNode().GetClassName() == "vtkMRMLVectorVolumeDisplayNode"
    np.testing.assert_allclose(_ijk_to_ras(fused), _ijk_to_ras(fixed), atol=1e-9)
    assert nodes["aligned"].GetClassName() == "vtkMRMLScalarVolumeNode"  # PET activity stays grey


def _known_transform(reference: sitk.Image) -> sitk.CompositeTransform:
    """A non-symmetric fixed -> moving transform: rotation, shear, shift and a smooth random field."""
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((0.98, 0.06, 0.02, -0.05, 1.03, 0.01, 0.03, -0.02, 0.99))
    affine.SetTranslation((4.0, -2.5, 1.5))
    affine.SetCenter(reference.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in reference.GetSize()]))
    rng = np.random.default_rng(1)
    size = reference.GetSize()[::-1]
    field = np.stack([ndimage.gaussian_filter(rng.normal(0.0, 8.0, size), 2.0) for _ in range(3)], axis=-1)
    displacement = sitk.GetImageFromArray(field, isVector=True)
    displacement.CopyInformation(reference)
    total = sitk.CompositeTransform(3)
    total.AddTransform(affine)
    total.AddTransform(sitk.DisplacementFieldTransform(displacement))
    return total


def _read_with_slicer(env, path: Path):
    node = env.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode", "read back")
    storage = env.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


def test_transform_file_maps_points_in_slicer_as_in_simpleitk_both_ways(slicer_env, tmp_path):
    """Slicer's storage node and SimpleITK read the same file; points agree in RAS and LPS."""
    reference = _image(np.zeros(SHAPE))
    transform = _known_transform(reference)
    path = slicer_support.write_slicer_transform(transform, reference, tmp_path)
    node = _read_with_slicer(slicer_env, path)
    from_file = slicer_support.read_slicer_transform(path)
    points = slicer_support.sample_points(reference, count=40, margin=0.15, on_grid=True)
    moved = np.array([transform.TransformPoint(tuple(p)) for p in points])
    assert np.linalg.norm(moved - points, axis=1).min() > 1.0  # far from identity: a direction error shows
    to_moving = node.GetTransformFromParent().TransformPoint
    assert slicer_support.transform_discrepancy_mm(from_file, to_moving, points) < 1e-3
    assert slicer_support.transform_discrepancy_mm(transform, to_moving, points) < 1e-3
    to_fixed = node.GetTransformToParent().TransformPoint  # Slicer inverts the grid numerically
    back = np.array([slicer_support.ras_to_lps(to_fixed(tuple(slicer_support.lps_to_ras(q)))) for q in moved])
    assert np.abs(back - points).max() < 0.05
    resampled = sitk.Resample(_image(np.random.default_rng(2).random(SHAPE)), reference, from_file)
    assert sitk.GetArrayViewFromImage(resampled).std() > 0  # the file is a usable ITK transform too


def test_transform_file_is_compressed(tmp_path):
    reference = _image(np.zeros((30, 96, 96)))
    path = slicer_support.write_slicer_transform(_known_transform(reference), reference, tmp_path)
    uncompressed = 24 * int(np.prod(reference.GetSize()))  # ITK's .h5: three float64 per voxel
    assert path.suffix == ".nrrd" and path.stat().st_size < uncompressed / 2  # float32 + gzip: 0.45 here


def test_hardening_gives_the_cores_aligned_volume(slicer_env, tiny_weights):
    pair = phantom_pair("CT", shape=SHAPE, seed=5)
    fixed_image, moving_image = _image(pair.mri), _image(pair.other)
    shift = sitk.TranslationTransform(3, (4.5, -3.0, 0.0))
    moving_image = sitk.Resample(moving_image, moving_image, shift, sitk.sitkLinear, float(pair.other.min()))
    fixed, moving = _push(slicer_env, fixed_image, "MRI"), _push(slicer_env, moving_image, "CT")
    logic = slicer_env.bsa.BSAFusionLogic()
    nodes, result = logic.process(fixed, moving, "CT", weights=tiny_weights["CT"], device="cpu", harden=True)
    assert moving.GetParentTransformNode() is None and nodes["transform"].GetScene() is slicer_env.slicer.mrmlScene
    hardened = logic.pullVolume(moving)  # Slicer resampled it through the transform, on a grid of its choice
    on_fixed = sitk.GetArrayFromImage(sitk.Resample(hardened, fixed_image, sitk.Transform(), sitk.sitkLinear))
    aligned = sitk.GetArrayFromImage(result.aligned)
    core = (slice(1, -1), slice(6, -6), slice(6, -6))  # away from the border, where fill values differ
    assert _ncc(on_fixed[core], aligned[core]) > 0.99
    assert _ncc(sitk.GetArrayFromImage(moving_image)[core], aligned[core]) < 0.99  # hardening did something


def test_saved_scene_reloads_with_the_transform_and_its_references(slicer_env, tiny_weights, tmp_path):
    _, fixed, moving, nodes, result = _run(slicer_env, "CT", tiny_weights)
    slicer = slicer_env.slicer
    bundle = tmp_path / "scene.mrb"
    assert slicer.util.saveScene(str(bundle))
    application = slicer.vtkSlicerApplicationLogic()
    reloaded = slicer.vtkMRMLScene()
    application.SetMRMLScene(reloaded)
    (tmp_path / "unpacked").mkdir()
    assert application.OpenSlicerDataBundle(str(bundle), str(tmp_path / "unpacked"))
    transform = reloaded.GetFirstNodeByName("CT BSAFusion transform")
    assert transform is not None and transform.GetTransformFromParent() is not None
    role = slicer.vtkMRMLTransformNode
    assert transform.GetNodeReference(role.GetFixedNodeReferenceRole()).GetName() == "MRI"
    assert transform.GetNodeReference(role.GetMovingNodeReferenceRole()).GetName() == "CT"
    assert reloaded.GetFirstNodeByName("CT").GetParentTransformNode() is transform
    points = slicer_support.sample_points(result.aligned, count=10, on_grid=True)
    assert slicer_support.transform_discrepancy_mm(
        result.transform, transform.GetTransformFromParent().TransformPoint, points) < 1e-3
    assert transform.GetStorageNode().GetFileName().endswith(".nrrd")


def test_rerun_reuses_output_nodes_and_replaces_one_of_the_wrong_class(slicer_env, tiny_weights):
    logic, fixed, moving, nodes, _ = _run(slicer_env, "CT", tiny_weights)
    scene = slicer_env.slicer.mrmlScene
    again, _ = logic.process(fixed, moving, "PET", weights=tiny_weights["PET"], device="cpu", prealign=False,
                             outputs=nodes, ownTransformNode=nodes["transform"])
    assert again["transform"] is nodes["transform"] and again["aligned"] is nodes["aligned"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLTransformNode") == 1
    assert again["fused"] is not nodes["fused"] and again["fused"].GetClassName() == "vtkMRMLVectorVolumeNode"
    assert nodes["fused"].GetScene() is scene  # the user's old grey node is left alone
    assert moving.GetParentTransformNode() is nodes["transform"]


def test_options_left_out_take_the_cores_defaults_and_chosen_ones_reach_it(slicer_env, tiny_weights, monkeypatch):
    import inspect

    from bsafusion.inference.volume import register_and_fuse_volumes

    fixed, moving = _push_pair(slicer_env, "CT")
    logic = slicer_env.bsa.BSAFusionLogic()
    calls = []
    monkeypatch.setattr(slicer_support, "register_and_fuse_volumes", lambda *a, **k: calls.append(k))
    logic.compute(logic.prepare(fixed, moving, "CT", weights=tiny_weights["CT"]))
    logic.compute(logic.prepare(fixed, moving, "CT", weights=tiny_weights["CT"], device="cpu", prealign=False,
                                axis="coronal", refineSteps=0))
    chosen = {k: calls[1][k] for k in ("device", "prealign", "axis", "refine_steps")}
    assert chosen == {"device": "cpu", "prealign": False, "axis": "coronal", "refine_steps": 0}
    assert not {"device", "prealign", "axis", "refine_steps", "batch_size"} & set(calls[0])
    core = inspect.signature(register_and_fuse_volumes).parameters
    gui = slicer_env.bsa.BSAFusionParameterNode.allParameters  # the GUI needs values: they must be the core's
    assert (gui["device"][2], gui["prealign"][2], gui["sliceAxis"][2]) == (
        core["device"].default, core["prealign"].default, core["axis"].default)
    assert gui["refineSteps"][2] < 0 and core["refine_steps"].default is None  # "modality default"


def test_volumes_under_another_transform_are_refused(slicer_env, tiny_weights):
    fixed, moving = _push_pair(slicer_env, "CT")
    other = slicer_env.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode", "manual")
    moving.SetAndObserveTransformNodeID(other.GetID())
    logic = slicer_env.bsa.BSAFusionLogic()
    with pytest.raises(ValueError, match="'CT' is under the transform 'manual'"):
        logic.prepare(fixed, moving, "CT", weights=tiny_weights["CT"])
    logic.prepare(fixed, moving, "CT", weights=tiny_weights["CT"], ownTransformNode=other)  # our own: fine
    fixed.SetAndObserveTransformNodeID(other.GetID())
    with pytest.raises(ValueError, match="fixed volume 'MRI'"):
        logic.prepare(fixed, moving, "CT", weights=tiny_weights["CT"], ownTransformNode=other)


def test_bad_parameters_fail_before_any_volume_is_read(slicer_env, tiny_weights, tmp_path, monkeypatch):
    from bsafusion.errors import InputError

    fixed, moving = _push_pair(slicer_env, "CT")
    logic = slicer_env.bsa.BSAFusionLogic()
    pulls = []
    monkeypatch.setattr(logic, "pullVolume", lambda node: pulls.append(node))
    with pytest.raises(InputError, match="missing.pt"):
        logic.prepare(fixed, moving, "CT", weights=tmp_path / "missing.pt")
    with pytest.raises(InputError, match="refinement steps"):
        logic.prepare(fixed, moving, "CT", weights=tiny_weights["CT"], refineSteps=-2)
    with pytest.raises(ValueError, match="same node"):
        logic.prepare(fixed, fixed, "CT")
    with pytest.raises(ValueError, match="select a fixed"):
        logic.prepare(None, moving, "CT")
    assert pulls == []


def _layers(env) -> list[tuple]:
    """(background name, foreground name, foreground opacity) of each real slice composite node."""
    scene = env.slicer.mrmlScene
    name = lambda node_id: scene.GetNodeByID(node_id).GetName() if node_id else None  # noqa: E731
    return [(name(c.GetBackgroundVolumeID()), name(c.GetForegroundVolumeID()), c.GetForegroundOpacity())
            for c in (scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                      for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")))]


def test_views_layout_links_and_layers(slicer_env, tiny_weights):
    logic, fixed, moving, nodes, _ = _run(slicer_env, "CT", tiny_weights)
    slicer = slicer_env.slicer
    logic.setupViews()
    assert slicer_env.rec.of("setLayout") == [(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView,)]
    scene = slicer.mrmlScene
    assert all(scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").GetLinkedControl() for i in range(3))
    logic.showOverlay(fixed, moving, 0.3)
    assert _layers(slicer_env) == [("MRI", "CT", 0.3)] * 3
    logic.showCheckerboard(nodes["checkerboard"])
    assert _layers(slicer_env) == [("CT BSAFusion checkerboard", None, 0.3)] * 3
    logic.showJacobian(fixed, nodes["jacobian"])
    assert _layers(slicer_env) == [("MRI", "CT BSAFusion jacobian", 0.6)] * 3
    logic.showFused(nodes["fused"])
    assert _layers(slicer_env)[0][:2] == ("CT BSAFusion fused", None)


def test_views_without_a_main_window():
    if not slicer_standin.available():
        pytest.skip("needs slicer-core (pip install -e 'BSAFusionCore[slicer-test]')")
    recorder = slicer_standin.install(headless=True)
    try:
        bsa = _import_module("BSAFusion")
        bsa.BSAFusionLogic().setupViews()
        assert recorder.of("setLayout") == []
    finally:
        sys.modules.pop("BSAFusion", None)
        slicer_standin.uninstall()


# ------------------------------------------------------- widget (real scene, stand-in Qt)


def _widget(env, modality, weights, moving_array=None):
    widget = env.bsa.BSAFusionWidget(types.SimpleNamespace(isEntered=True))
    widget.setup()
    env.widgets.append(widget)
    fixed, moving = _push_pair(env, modality, moving=moving_array)
    pn = widget._parameterNode
    pn.fixedVolume, pn.movingVolume, pn.modality = fixed, moving, modality
    pn.useShippedWeights, pn.weightsFile, pn.device, pn.prealign = False, Path(weights[modality]), "cpu", False
    widget._updateButtons()
    return widget, fixed, moving


def _poll_until_done(widget, timeout=60.0):
    """What the GUI's QTimer does every 100 ms; returns the progress values shown."""
    shown, end = [], time.monotonic() + timeout
    bar = widget.ui.progressBar
    bar.setValue = lambda v: (shown.append(v), object.__setattr__(bar, "value", v))
    while widget._job is not None:
        assert time.monotonic() < end, "background job did not finish"
        widget._pollTimer.fire()
        time.sleep(0.01)
    return shown


def test_widget_runs_the_core_in_the_background_and_loads_results(slicer_env, tiny_weights):
    widget, fixed, moving = _widget(slicer_env, "CT", tiny_weights)
    assert widget.ui.runButton.enabled and not widget.ui.checkerboardButton.enabled
    widget.ui.runButton.emit("clicked(bool)", False)
    assert widget._job is not None and widget._pollTimer.isActive()
    assert not widget.ui.runButton.enabled and widget.ui.cancelButton.enabled
    assert not widget.ui.inputsCollapsibleButton.enabled
    assert slicer_env.slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTransformNode") == 0  # not before the end
    shown = _poll_until_done(widget)
    assert shown[-1] == 100 and shown == sorted(shown)
    assert widget.ui.statusLabel.text.startswith("Done: inverse consistency")
    pn = widget._parameterNode
    assert moving.GetParentTransformNode() is pn.outputTransform is not None
    assert pn.fusedVolume is not None and pn.checkerboardVolume is not None and pn.jacobianVolume is not None
    assert slicer_env.rec.of("errorDisplay") == []
    assert _layers(slicer_env)[0][:2] == ("MRI", "CT")
    assert widget.ui.runButton.enabled and widget.ui.checkerboardButton.enabled and not widget.ui.cancelButton.enabled
    assert not widget._pollTimer.isActive()


def test_widget_cancel_leaves_the_scene_unchanged(slicer_env, tiny_weights):
    widget, fixed, moving = _widget(slicer_env, "CT", tiny_weights)
    nodes_before = slicer_env.slicer.mrmlScene.GetNumberOfNodes()
    widget.ui.runButton.emit("clicked(bool)", False)
    widget.ui.cancelButton.emit("clicked(bool)", False)
    _poll_until_done(widget)
    assert widget.ui.statusLabel.text.startswith("Cancelled")
    assert slicer_env.slicer.mrmlScene.GetNumberOfNodes() == nodes_before
    assert moving.GetParentTransformNode() is None and widget._parameterNode.outputTransform is None
    assert slicer_env.rec.of("errorDisplay") == [] and widget.ui.runButton.enabled


def test_widget_shows_the_core_error_message(slicer_env, tiny_weights):
    widget, fixed, moving = _widget(slicer_env, "CT", tiny_weights, moving_array=np.zeros(SHAPE))
    widget.ui.runButton.emit("clicked(bool)", False)
    _poll_until_done(widget)
    (text, kwargs), = slicer_env.rec.of("errorDisplay")
    assert text.startswith("BSAFusion: CT:")  # the core's InputError, naming the moving node
    assert "Traceback" in kwargs["detailedText"]
    assert widget._parameterNode.outputTransform is None and widget.ui.statusLabel.text == "Failed."


def test_widget_reports_bad_parameters_without_starting_a_job(slicer_env, tiny_weights, tmp_path):
    widget, _, _ = _widget(slicer_env, "CT", tiny_weights)
    widget._parameterNode.weightsFile = tmp_path / "nothing.pt"
    widget.ui.runButton.emit("clicked(bool)", False)
    assert widget._job is None and not widget._pollTimer.isActive()
    (text, _), = slicer_env.rec.of("errorDisplay")
    assert "nothing.pt: weights file not found" in text


def test_widget_fade_flicker_and_one_click_views(slicer_env, tiny_weights):
    widget, fixed, moving = _widget(slicer_env, "CT", tiny_weights)
    widget.ui.runButton.emit("clicked(bool)", False)
    _poll_until_done(widget)
    opacity = lambda: _layers(slicer_env)[0][2]  # noqa: E731
    widget.ui.opacitySlider.emit("valueChanged(double)", 0.3)
    assert opacity() == 0.3
    widget._parameterNode.foregroundOpacity = 0.3
    widget.ui.flickerButton.checked = True  # emits toggled(True), as Qt does
    assert widget._flickerTimer.isActive()
    widget._flickerTimer.fire()
    assert opacity() == 0.0
    widget._flickerTimer.fire()
    assert opacity() == 1.0
    widget.ui.checkerboardButton.emit("clicked(bool)", False)  # any other view stops flickering
    assert not widget._flickerTimer.isActive() and not widget.ui.flickerButton.checked
    assert _layers(slicer_env) == [("CT BSAFusion checkerboard", None, 0.3)] * 3  # fade restored
    widget.ui.jacobianButton.emit("clicked(bool)", False)
    assert _layers(slicer_env)[0][1] == "CT BSAFusion jacobian"
    widget.ui.fusedButton.emit("clicked(bool)", False)
    assert _layers(slicer_env)[0][0] == "CT BSAFusion fused"
    widget.ui.layoutButton.emit("clicked(bool)", False)
    assert slicer_env.rec.of("setLayout")


# ------------------------------------------------------------------------- dependencies


def test_core_is_installed_only_after_the_user_agrees(slicer_env, monkeypatch):
    logic = slicer_env.bsa.BSAFusionLogic()
    monkeypatch.setattr(logic, "_importable", lambda name: name != "bsafusion")
    assert Path(logic.bundledCorePath()) == REPO / "BSAFusionCore"
    slicer_env.rec.confirm_answer = False
    with pytest.raises(RuntimeError, match="cancelled"):
        logic.setupPythonRequirements(askConfirmation=True)
    assert len(slicer_env.rec.of("confirmOkCancelDisplay")) == 1 and slicer_env.rec.of("pip_install") == []
    slicer_env.rec.confirm_answer = True
    logic.setupPythonRequirements(askConfirmation=True)
    (requirements, files), = slicer_env.rec.of("pip_install")
    assert isinstance(requirements, list) and len(requirements) == 1
    assert Path(requirements[0]) != REPO / "BSAFusionCore"  # a temporary copy: the install dir may be read-only
    assert "pyproject.toml" in files and "bsafusion/inference/volume/pipeline.py" in files
    assert not any("__pycache__" in f or ".egg-info" in f for f in files)


def test_batch_mode_never_installs_without_the_flag(slicer_env, monkeypatch):
    logic = slicer_env.bsa.BSAFusionLogic()
    monkeypatch.setattr(logic, "_importable", lambda name: name != "bsafusion")
    with pytest.raises(RuntimeError, match="--install-dependencies"):
        logic.setupPythonRequirements(askConfirmation=False, allowInstall=False)
    assert slicer_env.rec.of("confirmOkCancelDisplay") == [] and slicer_env.rec.of("pip_install") == []


def test_torch_comes_from_the_pytorch_extension(slicer_env, monkeypatch):
    logic = slicer_env.bsa.BSAFusionLogic()
    monkeypatch.setattr(logic, "_importable", lambda name: name != "torch")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # extension not installed
    with pytest.raises(RuntimeError, match="'PyTorch' extension"):
        logic.setupPythonRequirements()
    calls = []

    class PyTorchUtilsLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, **kwargs):
            calls.append(kwargs)
            return None if len(calls) > 1 else types.SimpleNamespace(__version__="2.5")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    logic.setupPythonRequirements(askConfirmation=True)
    assert calls == [{"askConfirmation": True, "torchVersionRequirement": ">=2.1"}]
    with pytest.raises(RuntimeError, match="PyTorch was not installed"):
        logic.setupPythonRequirements(askConfirmation=True)  # the user declined in PyTorchUtils' dialog


# --------------------------------------------------------------------------------- batch


def _write_pair(folder: Path, modality: str = "CT") -> tuple[Path, Path]:
    pair = phantom_pair(modality, shape=SHAPE, seed=5)
    fixed, moving = folder / "mri.nrrd", folder / f"{modality.lower()}.nrrd"
    sitk.WriteImage(_image(pair.mri), str(fixed))
    sitk.WriteImage(_image(pair.other), str(moving))
    return fixed, moving


def test_batch_writes_the_core_outputs_and_the_scene(slicer_env, tiny_weights, tmp_path, capsys):
    batch = _import_module("BSAFusionBatch")
    fixed, moving = _write_pair(tmp_path)
    out = tmp_path / "out"
    status = batch.main(["--fixed", str(fixed), "--moving", str(moving), "--modality", "ct", "--out", str(out),
                         "--weights", tiny_weights["CT"], "--device", "cpu", "--no-prealign",
                         "--scene", str(out / "scene.mrb")])
    assert status == 0, capsys.readouterr().err
    for pattern in OUTPUT_FILES.values():
        assert (out / pattern.format(stem="bsafusion")).is_file(), pattern
    assert (out / "scene.mrb").is_file()
    printed = capsys.readouterr().out
    assert "done: inverse consistency" in printed and "[100.0 %]" in printed
    assert [Path(p).name for (p,) in slicer_env.rec.of("loadVolume")] == ["mri.nrrd", "ct.nrrd"]
    moving_node = slicer_env.slicer.util.getNode("ct")
    assert moving_node.GetParentTransformNode() is not None  # same logic as the GUI


def test_batch_exit_status_on_errors(slicer_env, tiny_weights, tmp_path, capsys, monkeypatch):
    batch = _import_module("BSAFusionBatch")
    fixed, moving = _write_pair(tmp_path)
    base = ["--fixed", str(fixed), "--moving", str(moving), "--out", str(tmp_path / "o"), "--device", "cpu",
            "--no-prealign"]
    assert batch.main(base + ["--modality", "CT", "--weights", str(tmp_path / "x.pt")]) == 2
    assert "x.pt: weights file not found" in capsys.readouterr().err
    assert batch.main(base + ["--modality", "MRI"]) == 2  # argparse refuses; Slicer keeps running
    missing = ["--fixed", str(tmp_path / "none.nrrd")] + base[2:] + ["--modality", "CT"]
    assert batch.main(missing) == 2 and "none.nrrd: file not found" in capsys.readouterr().err
    monkeypatch.setattr(sys.modules["BSAFusion"].BSAFusionLogic, "_importable", staticmethod(lambda n: n != "bsafusion"))
    assert batch.main(base + ["--modality", "CT", "--weights", tiny_weights["CT"]]) == 1
    assert "--install-dependencies" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_batch_script_exits_slicer_with_the_status(slicer_env, tiny_weights, tmp_path, monkeypatch):
    fixed, moving = _write_pair(tmp_path)
    monkeypatch.setattr(sys, "argv", ["BSAFusionBatch.py", "--fixed", str(fixed), "--moving", str(moving),
                                      "--modality", "CT", "--out", str(tmp_path / "out"), "--no-prealign",
                                      "--weights", str(tmp_path / "missing.pt")])
    with pytest.raises(SystemExit) as exited:  # slicer.util.exit(status) in the stand-in
        runpy.run_path(str(MODULE_DIR / "BSAFusionBatch.py"), run_name="__main__")
    assert exited.value.code == 2
    hidden = _import_module("BSAFusionBatch")
    parent = types.SimpleNamespace()
    hidden.BSAFusionBatch(parent)  # Slicer loads every .py of the folder as a module: this one hides
    assert parent.hidden is True


# ------------------------------------------------------------------------------ self-test


def test_module_self_test_code_runs_against_the_standin(slicer_env):
    """Only checks that BSAFusionTest itself is sound Python; its claims need a real Slicer."""
    test = slicer_env.bsa.BSAFusionTest()
    test.runTest()
    assert sum("Test passed" in e[0] for e in slicer_env.rec.of("delayDisplay")) == 3
