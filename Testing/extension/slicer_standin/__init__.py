"""A STAND-IN for the parts of 3D Slicer that slicer-core lacks. THE SCENE IS REAL.

Why it exists
-------------
The PyPI package ``slicer-core`` (the ``slicer-test`` extra of BSAFusionCore) gives a headless
``import slicer`` with Slicer's real MRML library: the scene, every ``vtkMRML*`` node class,
storage nodes, ``vtkSlicerTransformLogic``, ``slicer.util``'s array and node helpers, and real
VTK. It has no application: no ``slicer.app``, no Qt, no ``ScriptedLoadableModule``, no
``parameterNodeWrapper``. This package fills exactly those gaps so that the scripted module
(``BSAFusionExtension/BSAFusion/BSAFusion.py``) imports and runs on the real scene:

* ``slicer.app``: a temporary path and a layout manager that records ``setLayout``;
* ``slicer.util``'s dialogs (``errorDisplay``, ``confirmOkCancelDisplay``...), ``pip_install``,
  ``loadUI`` and ``exit`` record what the module asked; ``loadVolume`` and ``saveScene`` (which
  go through the application's IO manager in Slicer) call the MRML logic the application would
  end in;
* ``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper``: small imitations; the
  parameter values live in a real ``vtkMRMLScriptedModuleNode``;
* ``qt`` and ``ctk`` (:mod:`.qt_ctk`): widgets built from the real ``.ui`` file (attributes
  only, no drawing); ``qt.QTimer`` only records start/stop: tests call the timer slots.
* ``cmake/``: a stub of Slicer's CMake package (``SlicerConfig.cmake``) so that real CMake can
  configure, build and install the extension; its macros check their arguments and record each
  call.

Not imitated: rendering, the Qt event loop, PythonQt's threads, the real parameter-node GUI
connectors, the Extensions Manager. The module's self-test (``BSAFusionTest``) checks those
inside Slicer.

Usage
-----
>>> standin = install()          # doctest: +SKIP
>>> import BSAFusion             # doctest: +SKIP  (now imports against real MRML + the stand-in)
>>> uninstall()                  # doctest: +SKIP
"""

from __future__ import annotations

import sys

from .recorder import Recorder

_MODULE_NAMES = ("slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "qt", "ctk", "PyTorchUtils")
_saved: dict[str, object] = {}
_installed: list[object] = []


def available() -> bool:
    """Whether slicer-core's real MRML can be imported (and not the unrelated PyPI ``slicer``)."""
    try:
        import slicer
    except ImportError:
        return False
    return hasattr(slicer, "vtkMRMLScene") and hasattr(slicer, "vtkMRMLTransformStorageNode")


def install(headless: bool = False) -> Recorder:
    """A fresh real scene as ``slicer.mrmlScene``, plus the stand-ins; returns the recorder.

    ``headless=True`` imitates ``Slicer --no-main-window`` (no layout manager, no slice views).
    """
    from . import qt_ctk, slicer_api

    uninstall()
    recorder = Recorder()
    installed, modules = slicer_api.install(recorder, headless=headless)
    modules.update(qt_ctk.build(recorder))
    for name in _MODULE_NAMES:
        if name in sys.modules:
            _saved[name] = sys.modules.pop(name)
    sys.modules.update(modules)
    _installed.append(installed)
    return recorder


def uninstall() -> None:
    """Undo :func:`install` (anything imported against it is the caller's to drop)."""
    for name in _MODULE_NAMES:
        sys.modules.pop(name, None)
    sys.modules.update(_saved)
    _saved.clear()
    while _installed:
        _installed.pop().restore()
