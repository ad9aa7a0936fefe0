"""Stand-in ``slicer`` package: util, app, ScriptedLoadableModule, parameterNodeWrapper (NOT Slicer)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import tempfile
import types
import typing
import unittest
from typing import Any

import SimpleITK as sitk

from . import mrml
from .recorder import Recorder

_KEEP = object()  # slicer.util.setSliceViewerLayers' "keep current" marker


# --------------------------------------------------------------------------------------------
# slicer.util
# --------------------------------------------------------------------------------------------


def _build_util(recorder: Recorder, slicer: types.ModuleType) -> types.ModuleType:
    util = types.ModuleType("slicer.util")
    scene = recorder.scene

    class MRMLNodeNotFoundException(Exception):
        pass

    class VTKObservationMixin:
        def __init__(self) -> None:
            self.observations: list[tuple[Any, Any, Any]] = []

        def addObserver(self, obj: Any, event: Any, method: Any, *args: Any) -> None:
            self.observations.append((obj, event, method))

        def removeObserver(self, obj: Any, event: Any, method: Any) -> None:
            self.observations = [o for o in self.observations if o != (obj, event, method)]

        def removeObservers(self, *args: Any) -> None:
            self.observations.clear()

    def loadTransform(path: str) -> mrml.vtkMRMLTransformNode:
        if not os.path.isfile(path):
            raise RuntimeError(f"Failed to load node from file: {path}")
        node = scene.AddNewNodeByClass("vtkMRMLTransformNode", pathlib.Path(path).name.split(".")[0])
        node.itk_transform = sitk.ReadTransform(str(path))  # a real parse of the ITK file
        recorder.record("loadTransform", str(path))
        return node

    def loadVolume(path: str, properties: dict | None = None) -> mrml.vtkMRMLVolumeNode:
        if not os.path.exists(path):
            raise RuntimeError(f"Failed to load node from file: {path}")
        image = sitk.ReadImage(str(path))
        cls = "vtkMRMLVectorVolumeNode" if image.GetNumberOfComponentsPerPixel() > 1 else "vtkMRMLScalarVolumeNode"
        node = scene.AddNewNodeByClass(cls, pathlib.Path(path).name.split(".")[0])
        node.CreateDefaultDisplayNodes()
        node.image = image
        recorder.record("loadVolume", str(path))
        return node

    def saveScene(path: str, properties: dict | None = None) -> bool:
        listing = [{"class": n.GetClassName(), "name": n.GetName(), "id": n.GetID()} for n in scene.nodes()]
        pathlib.Path(path).write_text(json.dumps({"stand-in scene": listing}, indent=1))
        recorder.record("saveScene", str(path))
        return True

    def arrayFromVolume(node: mrml.vtkMRMLVolumeNode):
        return sitk.GetArrayFromImage(node.image)

    def getNodesByClass(class_name: str) -> list[mrml.vtkMRMLNode]:
        return scene.GetNodesByClass(class_name)

    def getNode(name: str) -> mrml.vtkMRMLNode:
        for node in scene.nodes():
            if node.GetName() == name or node.GetID() == name:
                return node
        raise MRMLNodeNotFoundException(name)

    def setSliceViewerLayers(background: Any = _KEEP, foreground: Any = _KEEP, label: Any = _KEEP,
                             foregroundOpacity: float | None = None, labelOpacity: float | None = None,
                             fit: bool = False, rotateToVolumePlane: bool = False) -> None:
        for layer in (background, foreground, label):
            if layer is not _KEEP and layer is not None:
                if not isinstance(layer, mrml.vtkMRMLVolumeNode) or layer.GetScene() is not scene:
                    raise TypeError(f"stand-in: slice view layer must be a volume node in the scene, got {layer!r}")
        for composite in scene.GetNodesByClass("vtkMRMLSliceCompositeNode"):
            if background is not _KEEP:
                composite.background = background.GetID() if background is not None else None
            if foreground is not _KEEP:
                composite.foreground = foreground.GetID() if foreground is not None else None
            if foregroundOpacity is not None:
                composite.foreground_opacity = float(foregroundOpacity)
        recorder.record("sliceLayers", {
            "background": None if background is _KEEP or background is None else background.GetName(),
            "foreground": None if foreground is _KEEP or foreground is None else foreground.GetName(),
            "keepBackground": background is _KEEP, "keepForeground": foreground is _KEEP,
            "foregroundOpacity": foregroundOpacity,
        })

    def errorDisplay(text: str, windowTitle: str | None = None, parent: Any = None, standardButtons: Any = None,
                     **kwargs: Any) -> None:
        recorder.record("errorDisplay", str(text), kwargs)

    def infoDisplay(text: str, windowTitle: str | None = None, **kwargs: Any) -> None:
        recorder.record("infoDisplay", str(text))

    def confirmOkCancelDisplay(text: str, windowTitle: str | None = None, **kwargs: Any) -> bool:
        recorder.record("confirmOkCancelDisplay", str(text))
        return recorder.confirm_answer

    def delayDisplay(message: str, autoCloseMsec: int = 1000, **kwargs: Any) -> None:
        recorder.record("delayDisplay", str(message))

    def pip_install(requirements: Any) -> None:
        recorder.record("pip_install", requirements, _snapshot(requirements))

    def exit(status: int = 0) -> None:
        raise SystemExit(status)

    def loadUI(path: str):
        from .qt_ctk_vtk import widgets_from_ui

        return widgets_from_ui(path)

    def childWidgetVariables(root: Any):
        return root.children_namespace()

    for name, value in list(locals().items()):
        if not name.startswith("_") and name not in ("util", "scene", "recorder", "slicer"):
            setattr(util, name, value)
    return util


def _snapshot(requirements: Any) -> list[str]:
    """Files of each local path handed to pip, captured before a temporary copy disappears."""
    paths = requirements if isinstance(requirements, (list, tuple)) else [requirements]
    found: list[str] = []
    for p in paths:
        root = pathlib.Path(str(p))
        if root.is_dir():
            found += sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file())
    return found


# --------------------------------------------------------------------------------------------
# slicer.ScriptedLoadableModule
# --------------------------------------------------------------------------------------------


def _build_scripted(recorder: Recorder) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    scene = recorder.scene

    class ScriptedLoadableModule:
        def __init__(self, parent: Any) -> None:
            self.parent = parent

    class _Layout:
        def __init__(self) -> None:
            self.widgets: list[Any] = []

        def addWidget(self, widget: Any) -> None:
            self.widgets.append(widget)

        def addStretch(self, *args: Any) -> None:
            pass

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent if parent is not None else types.SimpleNamespace(isEntered=True)
            self.moduleName = type(self).__name__[: -len("Widget")]

        def setup(self) -> None:
            self.layout = _Layout()

        def resourcePath(self, filename: str) -> str:
            module_dir = os.path.dirname(sys.modules[type(self).__module__].__file__)
            return os.path.join(module_dir, "Resources", filename)

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent: Any = None) -> None:
            self.moduleName = type(self).__name__[: -len("Logic")]

        def getParameterNode(self) -> mrml.vtkMRMLScriptedModuleNode:
            for node in scene.GetNodesByClass("vtkMRMLScriptedModuleNode"):
                if node.GetAttribute("ModuleName") == self.moduleName:
                    return node
            node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message: str, msec: int = 1000) -> None:
            recorder.record("delayDisplay", str(message))

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


# --------------------------------------------------------------------------------------------
# slicer.parameterNodeWrapper: typed attributes stored in a vtkMRMLScriptedModuleNode
# --------------------------------------------------------------------------------------------


def _build_wrapper() -> types.ModuleType:
    module = types.ModuleType("slicer.parameterNodeWrapper")

    @dataclasses.dataclass
    class Choice:
        choices: Any

    @dataclasses.dataclass
    class WithinRange:
        minimum: float
        maximum: float

    @dataclasses.dataclass
    class Default:
        value: Any

    missing = object()

    def _split(hint: Any) -> tuple[Any, tuple]:
        if typing.get_origin(hint) is typing.Annotated:
            args = typing.get_args(hint)
            return args[0], tuple(args[1:])
        return hint, ()

    def _is_node_type(base: Any) -> bool:
        return isinstance(base, type) and issubclass(base, mrml.vtkMRMLNode)

    def parameterNodeWrapper(cls: type) -> type:
        hints = typing.get_type_hints(cls, include_extras=True)
        specs: dict[str, tuple[Any, tuple, Any]] = {}
        for name, hint in hints.items():
            base, notes = _split(hint)
            default = cls.__dict__.get(name, missing)
            for note in notes:
                if isinstance(note, Default):
                    default = note.value
            if default is missing:
                default = (None if _is_node_type(base) else
                           {bool: False, int: 0, float: 0.0, str: "", pathlib.Path: pathlib.Path()}[base])
            specs[name] = (base, notes, default)

        def validate(name: str, value: Any) -> Any:
            base, notes, _ = specs[name]
            if _is_node_type(base):
                if value is not None and not isinstance(value, base):
                    raise ValueError(f"stand-in parameter {name}: expected {base.__name__}, got {value!r}")
                return value
            if base is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if base is pathlib.Path and isinstance(value, str):
                value = pathlib.Path(value)
            if not isinstance(value, base):
                raise ValueError(f"stand-in parameter {name}: expected {base.__name__}, got {value!r}")
            for note in notes:
                if isinstance(note, Choice) and value not in list(note.choices):
                    raise ValueError(f"stand-in parameter {name}: {value!r} not in {note.choices}")
                if isinstance(note, WithinRange) and not note.minimum <= value <= note.maximum:
                    raise ValueError(f"stand-in parameter {name}: {value!r} outside {note}")
            return value

        class Wrapper:
            """Stand-in parameter node wrapper: values persist in the scripted module node."""

            allParameters = specs

            def __init__(self, node: mrml.vtkMRMLScriptedModuleNode) -> None:
                object.__setattr__(self, "parameterNode", node)
                for name, (_, _, default) in specs.items():
                    if name not in node.GetParameterNames() and node.GetNodeReferenceID(name) is None:
                        setattr(self, name, default)

            def __getattr__(self, name: str) -> Any:
                if name not in specs:
                    raise AttributeError(name)
                base, _, _ = specs[name]
                node = object.__getattribute__(self, "parameterNode")
                if _is_node_type(base):
                    return node.GetNodeReference(name)
                raw = node.GetParameter(name)
                if base is bool:
                    return raw == "true"
                return base(raw)

            def __setattr__(self, name: str, value: Any) -> None:
                if name not in specs:
                    raise AttributeError(f"stand-in: {cls.__name__} has no parameter {name!r}")
                value = validate(name, value)
                node = self.parameterNode
                if _is_node_type(specs[name][0]):
                    node.SetNodeReferenceID(name, None if value is None else value.GetID())
                else:
                    node.SetParameter(name, ("true" if value else "false") if isinstance(value, bool) else str(value))

            def connectGui(self, ui: Any) -> str:
                return "gui-tag"

            def disconnectGui(self, tag: Any) -> None:
                pass

        Wrapper.__name__ = Wrapper.__qualname__ = cls.__name__
        Wrapper.__doc__ = cls.__doc__
        return Wrapper

    module.parameterNodeWrapper = parameterNodeWrapper
    module.Choice, module.WithinRange, module.Default = Choice, WithinRange, Default
    return module


# --------------------------------------------------------------------------------------------
# the slicer package
# --------------------------------------------------------------------------------------------


def build(recorder: Recorder, headless: bool = False) -> dict[str, types.ModuleType]:
    slicer = types.ModuleType("slicer")
    slicer.__path__ = []  # a package, so "from slicer.util import ..." works
    slicer.__doc__ = "STAND-IN for 3D Slicer's slicer package (tests only; see slicer_standin)."
    recorder.scene = mrml.vtkMRMLScene(recorder, with_views=not headless)
    slicer.mrmlScene = recorder.scene
    for name in dir(mrml):
        if name.startswith("vtkMRML"):
            setattr(slicer, name, getattr(mrml, name))

    class _LayoutManager:
        def setLayout(self, layout: int) -> None:
            recorder.record("setLayout", layout)

    class _App:
        temporaryPath = tempfile.mkdtemp(prefix="slicer-standin-")

        def layoutManager(self) -> _LayoutManager | None:
            return None if headless else _LayoutManager()

        def processEvents(self) -> None:
            pass

    class vtkSlicerTransformLogic:
        def hardenTransform(self, node: mrml.vtkMRMLVolumeNode) -> None:
            parent = node.GetParentTransformNode()
            if parent is None:
                return
            node.image = sitk.Resample(node.image, node.image, parent.itk_transform, sitk.sitkLinear, 0.0)
            node.SetAndObserveTransformNodeID(None)
            recorder.record("hardenTransform", node.GetName())

    slicer.app = _App()
    slicer.vtkSlicerTransformLogic = vtkSlicerTransformLogic
    slicer.modules = types.SimpleNamespace()
    slicer.util = _build_util(recorder, slicer)
    slicer.ScriptedLoadableModule = _build_scripted(recorder)
    slicer.parameterNodeWrapper = _build_wrapper()
    return {
        "slicer": slicer,
        "slicer.util": slicer.util,
        "slicer.ScriptedLoadableModule": slicer.ScriptedLoadableModule,
        "slicer.parameterNodeWrapper": slicer.parameterNodeWrapper,
    }
