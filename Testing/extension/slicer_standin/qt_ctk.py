"""Stand-in ``qt``, ``ctk`` and widgets read from a real ``.ui`` file (NOT Qt).

Widgets are plain Python objects holding the properties the module reads or writes; they are
built from the module's actual Qt Designer file, so a widget the code uses but the file lacks
fails with ``AttributeError``. Signals are recorded by ``connect`` and fired by tests with
``emit``; like PythonQt, a slot gets only as many of the signal's arguments as it accepts; a
checkable button fires ``toggled(bool)`` when ``checked`` changes, as in Qt.
"""

from __future__ import annotations

import inspect
import types
import xml.etree.ElementTree as ET
from typing import Any, Callable

from .recorder import Recorder

#: Properties each widget class starts with (what the module reads before writing).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "QPushButton": {"enabled": True, "checked": False, "checkable": False, "text": "", "toolTip": ""},
    "QCheckBox": {"enabled": True, "checked": False, "text": "", "toolTip": ""},
    "QComboBox": {"enabled": True, "toolTip": "", "currentIndex": 0},
    "QLabel": {"enabled": True, "text": "", "toolTip": ""},
    "QProgressBar": {"enabled": True, "value": 0, "visible": True},
    "ctkSliderWidget": {"enabled": True, "value": 0.0, "minimum": 0.0, "maximum": 99.0, "toolTip": ""},
    "ctkPathLineEdit": {"enabled": True, "currentPath": "", "toolTip": ""},
    "ctkCollapsibleButton": {"enabled": True, "collapsed": False, "text": ""},
    "qMRMLNodeComboBox": {"enabled": True, "toolTip": "", "nodeTypes": []},
    "qMRMLWidget": {"enabled": True},
}


class FakeWidget:
    def __init__(self, cls: str, name: str) -> None:
        object.__setattr__(self, "className", cls)
        object.__setattr__(self, "objectName", name)
        object.__setattr__(self, "slots", {})
        object.__setattr__(self, "items", [])
        object.__setattr__(self, "_children", {})
        for key, value in _DEFAULTS.get(cls, {"enabled": True}).items():
            object.__setattr__(self, key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        changed = name == "checked" and getattr(self, "checked", None) != value
        object.__setattr__(self, name, value)
        if changed:
            self.emit("toggled(bool)", value)

    # Qt-like API used by the module
    def connect(self, signal: str, slot: Callable) -> None:
        self.slots.setdefault(signal, []).append(slot)

    def emit(self, signal: str, *args: Any) -> None:
        for slot in list(self.slots.get(signal, [])):
            slot(*args[: _accepted(slot, len(args))])

    def setValue(self, value: Any) -> None:
        self.value = value

    def setEnabled(self, flag: bool) -> None:
        self.enabled = bool(flag)

    def setMRMLScene(self, scene: Any) -> None:
        object.__setattr__(self, "mrmlScene", scene)

    def children_namespace(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(**self._children)

    def __repr__(self) -> str:
        return f"<stand-in {self.className} {self.objectName}>"


def _accepted(slot: Callable, available: int) -> int:
    """How many signal arguments PythonQt passes: at most what the slot's signature takes."""
    params = inspect.signature(slot).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return available
    return min(available, sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params))


def _value(prop: ET.Element) -> Any:
    child = prop[0]
    if child.tag == "bool":
        return child.text == "true"
    if child.tag in ("double",):
        return float(child.text)
    if child.tag == "number":
        return int(child.text)
    if child.tag == "stringlist":
        return [s.text or "" for s in child]
    return child.text or ""


def widgets_from_ui(path: str) -> FakeWidget:
    """The root widget of a Qt Designer file, with every named child in ``children_namespace()``."""
    tree = ET.parse(path)
    root_xml = tree.getroot().find("widget")
    root = FakeWidget(root_xml.get("class"), root_xml.get("name"))
    for element in root_xml.iter("widget"):
        if element is root_xml:
            continue
        widget = FakeWidget(element.get("class"), element.get("name"))
        for prop in element.findall("property"):
            if prop.get("stdset") != "0" and len(prop):
                object.__setattr__(widget, prop.get("name"), _value(prop))
        for item in element.findall("item"):
            widget.items.append(item.find("property/string").text)
        root._children[widget.objectName] = widget
    return root


def build(recorder: Recorder) -> dict[str, types.ModuleType]:
    qt = types.ModuleType("qt")
    qt.__doc__ = "STAND-IN for PythonQt's qt module (tests only)."

    class QTimer:
        """Records start/stop; tests call the connected slot themselves (no event loop here)."""

        def __init__(self, *args: Any) -> None:
            self.interval = 0
            self.active = False
            self.slots: list[Callable] = []

        def setInterval(self, ms: int) -> None:
            self.interval = int(ms)

        def connect(self, signal: str, slot: Callable) -> None:
            self.slots.append(slot)

        def start(self, *args: Any) -> None:
            self.active = True
            recorder.record("timerStart", self.interval)

        def stop(self) -> None:
            self.active = False

        def isActive(self) -> bool:
            return self.active

        def fire(self) -> None:
            for slot in list(self.slots):
                slot()

        @staticmethod
        def singleShot(ms: int, slot: Callable) -> None:
            recorder.record("singleShot", ms)

    qt.QTimer = QTimer
    qt.QObject = object

    ctk = types.ModuleType("ctk")
    ctk.__doc__ = "STAND-IN for ctk (tests only)."

    return {"qt": qt, "ctk": ctk}
