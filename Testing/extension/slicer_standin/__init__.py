"""A STAND-IN for the few 3D Slicer APIs the BSAFusion module calls. THIS IS NOT SLICER.

Why it exists
-------------
3D Slicer cannot be installed on the machines that run our CI, yet the scripted module
(``BSAFusionExtension/BSAFusion/BSAFusion.py``) should not reach users with wiring mistakes: a
colour volume pushed into a scalar node, a transform that is never set as the moving volume's
parent, an output that is never created, a widget name the code uses but the ``.ui`` file lacks.
This package replaces ``slicer``, ``slicer.util``, ``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper``, ``qt``, ``ctk``, ``vtk`` and ``sitkUtils`` in ``sys.modules``
with small Python imitations that **record** what the module does (nodes created, references,
parent transforms, display settings, dialogs, pip installs, view layers), so tests can assert on
it.

What it imitates, and how faithfully
------------------------------------
* MRML nodes and the scene (:mod:`.mrml`): node classes with Slicer's names and inheritance
  (``vtkMRMLVectorVolumeNode`` is a ``vtkMRMLScalarVolumeNode``...), IDs, names, node
  references, parent transforms, display nodes. A volume node stores a ``SimpleITK`` image in
  LPS, as ``sitkUtils`` would hand it over; ``GetIJKToRASMatrix`` converts to RAS as Slicer does.
* ``slicer.util.loadTransform`` really parses the ITK transform file with SimpleITK and
  ``GetTransformFromParent().TransformPoint`` maps RAS points through it (LPS flip on both
  sides), i.e. it assumes Slicer's documented LPS->RAS conversion; it cannot test that Slicer
  does it.
* It is **stricter** than Slicer where Slicer would silently do the wrong thing: pushing a
  3-component image into a scalar node, setting a non-transform node as a parent transform,
  unknown node classes or colour tables all raise here.
* Widgets (:mod:`.qt_ctk_vtk`): ``slicer.util.loadUI`` builds one fake widget per named widget of
  the real ``.ui`` file (attributes only, no drawing), so ``self.ui.<name>`` fails for a name the
  file lacks; ``qt.QTimer`` only records start/stop: tests call the timer slots themselves.
* ``cmake/``: a stub of Slicer's CMake package (``SlicerConfig.cmake``) so that real CMake can
  configure, build and install the extension in CI; its macros check their arguments (listed
  files exist, metadata set) and record each call.
* Not imitated at all: rendering, Qt event loop, threads inside Slicer, PythonQt's GIL handling,
  the real parameter-node GUI connectors, the Extensions Manager. Those are checked by the
  module's own self-test (``BSAFusionTest``), which runs inside a real Slicer.

Usage
-----
>>> standin = install()          # doctest: +SKIP
>>> import BSAFusion             # doctest: +SKIP  (now imports against the stand-in)
>>> standin.events[-1]           # doctest: +SKIP
>>> uninstall()                  # doctest: +SKIP
"""

from __future__ import annotations

import sys

from .recorder import Recorder

_MODULE_NAMES = (
    "slicer", "slicer.util", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper",
    "qt", "ctk", "vtk", "sitkUtils", "PyTorchUtils",
)
_saved: dict[str, object] = {}


def install(headless: bool = False) -> Recorder:
    """Put the stand-in modules into ``sys.modules``; returns the recorder of what happens.

    ``headless=True`` imitates ``Slicer --no-main-window`` (no layout manager).
    """
    from . import qt_ctk_vtk, slicer_api, sitkutils

    uninstall()
    recorder = Recorder()
    modules = slicer_api.build(recorder, headless=headless)
    modules.update(qt_ctk_vtk.build(recorder))
    modules["sitkUtils"] = sitkutils.build(recorder, modules["slicer"])
    for name in _MODULE_NAMES:
        if name in sys.modules:
            _saved[name] = sys.modules[name]
    for name in _MODULE_NAMES:
        sys.modules.pop(name, None)
    sys.modules.update(modules)
    return recorder


def uninstall() -> None:
    """Remove the stand-in modules (and anything imported against them is the caller's to drop)."""
    for name in _MODULE_NAMES:
        sys.modules.pop(name, None)
    sys.modules.update(_saved)
    _saved.clear()
