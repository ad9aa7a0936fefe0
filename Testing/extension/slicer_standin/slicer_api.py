"""Stand-in for what slicer-core lacks: ``slicer.app``, the Qt dialogs of ``slicer.util``,
``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper`` (NOT Slicer).

Everything else is the real ``slicer`` package of slicer-core: the MRML scene, node classes,
storage nodes, ``vtkSlicerTransformLogic``, ``slicer.util``'s array and node helpers, real VTK.
The functions of ``slicer.util`` that need the application are replaced by the calls the
application would end in: ``loadVolume`` by ``vtkSlicerVolumesLogic.AddArchetypeVolume``,
``saveScene`` (``.mrb``) by ``vtkSlicerApplicationLogic.SaveSceneToSlicerDataBundleDirectory``
and ``Zip``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import tempfile
import types
import typing
import unittest
from typing import Any

from .recorder import Recorder


# --------------------------------------------------------------------------------------------
# slicer.util
# --------------------------------------------------------------------------------------------


def _util_replacements(recorder: Recorder, slicer: types.ModuleType) -> dict[str, Any]:
    """The ``slicer.util`` functions that need ``slicer.app`` or Qt, as recording stand-ins."""

    def loadVolume(path: str, properties: dict | None = None):
        volumes = slicer.vtkSlicerVolumesLogic()
        volumes.SetMRMLScene(slicer.mrmlScene)
        node = volumes.AddArchetypeVolume(str(path), pathlib.Path(path).name.split(".")[0])
        if node is None:
            raise RuntimeError(f"Failed to load node from file: {path}")
        recorder.record("loadVolume", str(path))
        return node

    def saveScene(path: str, properties: dict | None = None) -> bool:
        application = slicer.vtkSlicerApplicationLogic()
        application.SetMRMLScene(slicer.mrmlScene)
        with tempfile.TemporaryDirectory(prefix="slicer-standin-mrb-") as tmp:
            bundle = os.path.join(tmp, pathlib.Path(path).stem)
            os.makedirs(bundle)
            saved = application.SaveSceneToSlicerDataBundleDirectory(bundle) and application.Zip(str(path), bundle)
        recorder.record("saveScene", str(path))
        return bool(saved)

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
        from .qt_ctk import widgets_from_ui

        return widgets_from_ui(path)

    def childWidgetVariables(root: Any):
        return root.children_namespace()

    return {name: value for name, value in locals().items() if callable(value) and name[0].islower()
            and name not in ("recorder", "slicer")}


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


def _build_scripted(recorder: Recorder, slicer: types.ModuleType) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

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

        def getParameterNode(self):
            scene = slicer.mrmlScene
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
                node = scene.GetNthNodeByClass(i, "vtkMRMLScriptedModuleNode")
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


def _build_wrapper(slicer: types.ModuleType) -> types.ModuleType:
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
        return isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode)

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

            def __init__(self, node: Any) -> None:
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

            def AddObserver(self, event: Any, method: Any, priority: float = 0.0) -> int:
                return self.parameterNode.AddObserver(event, method, priority)

            def RemoveObserver(self, tag: int) -> None:
                self.parameterNode.RemoveObserver(tag)

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


class Installed:
    """What :func:`install` changed in the real ``slicer`` package, so :meth:`restore` can undo it."""

    def __init__(self, slicer: types.ModuleType, replaced: dict[tuple[Any, str], Any]) -> None:
        self.slicer, self.replaced = slicer, replaced

    def restore(self) -> None:
        for (owner, name), value in self.replaced.items():
            if value is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


_MISSING = object()


def install(recorder: Recorder, headless: bool = False) -> tuple[Installed, dict[str, types.ModuleType]]:
    """Give the real ``slicer`` package a fresh scene and the stand-ins; returns the undo and new modules.

    ``headless=True`` imitates ``Slicer --no-main-window`` (no layout manager, no slice views).
    """
    import slicer
    import slicer.util

    scene = slicer.vtkMRMLScene()
    if not headless:
        for _ in range(3):  # the Red, Yellow and Green slice views' composite nodes
            scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")

    class _LayoutManager:
        def setLayout(self, layout: int) -> None:
            recorder.record("setLayout", layout)

        def mrmlSliceLogics(self):
            import vtk

            return vtk.vtkCollection()  # no rendered views: nothing to fit

    class _App:
        temporaryPath = tempfile.mkdtemp(prefix="slicer-standin-")

        def layoutManager(self) -> _LayoutManager | None:
            return None if headless else _LayoutManager()

        def processEvents(self) -> None:
            pass

    scripted, wrapper = _build_scripted(recorder, slicer), _build_wrapper(slicer)
    changes: dict[tuple[Any, str], Any] = {(slicer, "mrmlScene"): scene, (slicer, "app"): _App(),
                                           (slicer, "modules"): types.SimpleNamespace(),
                                           (slicer, "ScriptedLoadableModule"): scripted,
                                           (slicer, "parameterNodeWrapper"): wrapper}
    changes.update({(slicer.util, name): f for name, f in _util_replacements(recorder, slicer).items()})
    replaced = {}
    for (owner, name), value in changes.items():
        replaced[(owner, name)] = getattr(owner, name, _MISSING)
        setattr(owner, name, value)
    return Installed(slicer, replaced), {"slicer.ScriptedLoadableModule": scripted,
                                         "slicer.parameterNodeWrapper": wrapper}
