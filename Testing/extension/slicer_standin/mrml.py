"""Stand-in MRML nodes and scene (NOT Slicer; see the package docstring).

Class names and inheritance follow Slicer's MRML so that ``IsA``/``isinstance`` and node-type
checks behave alike. Images are SimpleITK images in LPS, as ``sitkUtils`` exchanges them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

LPS_RAS = np.array([-1.0, -1.0, 1.0])

#: Built-in colour node IDs the module may use (a typo would show nothing useful in Slicer).
BUILTIN_COLOR_NODE_IDS = {
    "vtkMRMLColorTableNodeGrey",
    "vtkMRMLColorTableNodeRainbow",
    "vtkMRMLColorTableNodeFileDivergingBlueRed.txt",
    "vtkMRMLColorTableNodeFileColdToHotRainbow.txt",
    "vtkMRMLColorTableNodeFileHotToColdRainbow.txt",
    "vtkMRMLColorTableNodeFileViridis.txt",
    "vtkMRMLPETProceduralColorNodePET-Heat",
}


class vtkMRMLNode:
    def __init__(self) -> None:
        self._name = ""
        self._id: str | None = None
        self._scene: "vtkMRMLScene | None" = None
        self._refs: dict[str, str] = {}
        self._attributes: dict[str, str] = {}

    def GetClassName(self) -> str:
        return type(self).__name__

    def IsA(self, class_name: str) -> bool:
        return any(c.__name__ == class_name for c in type(self).__mro__)

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = str(name)

    def GetID(self) -> str | None:
        return self._id

    def GetScene(self) -> "vtkMRMLScene | None":
        return self._scene

    def _node(self, node_id: str | None) -> "vtkMRMLNode | None":
        return None if node_id is None or self._scene is None else self._scene.GetNodeByID(node_id)

    def SetNodeReferenceID(self, role: str, node_id: str | None) -> None:
        if node_id is None:
            self._refs.pop(role, None)
            return
        if self._node(node_id) is None:
            raise ValueError(f"stand-in: reference {role!r} to {node_id!r}, which is not in the scene")
        self._refs[role] = node_id
        self._scene.recorder.record("reference", self.GetName(), role, node_id)

    AddNodeReferenceID = SetNodeReferenceID

    def GetNodeReferenceID(self, role: str) -> str | None:
        return self._refs.get(role)

    def GetNodeReference(self, role: str) -> "vtkMRMLNode | None":
        return self._node(self._refs.get(role))

    def SetAttribute(self, key: str, value: str) -> None:
        self._attributes[key] = value

    def GetAttribute(self, key: str) -> str | None:
        return self._attributes.get(key)

    def Modified(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<stand-in {self.GetClassName()} {self._id} {self._name!r}>"


class vtkMRMLTransformableNode(vtkMRMLNode):
    def SetAndObserveTransformNodeID(self, node_id: str | None) -> None:
        if node_id is not None and not isinstance(self._node(node_id), vtkMRMLTransformNode):
            raise TypeError(f"stand-in: {node_id!r} is not a transform node; cannot be a parent transform")
        self._refs["transform"] = node_id
        if node_id is None:
            self._refs.pop("transform")
        self._scene.recorder.record("parentTransform", self.GetName(), node_id)

    def GetTransformNodeID(self) -> str | None:
        return self._refs.get("transform")

    def GetParentTransformNode(self) -> "vtkMRMLTransformNode | None":
        return self._node(self._refs.get("transform"))


class _ImageData:
    """What the module and its self-test ask of vtkImageData."""

    def __init__(self, image: sitk.Image) -> None:
        self._image = image

    def GetDimensions(self) -> tuple[int, int, int]:
        return tuple(self._image.GetSize())

    def GetNumberOfScalarComponents(self) -> int:
        return self._image.GetNumberOfComponentsPerPixel()


class vtkMRMLVolumeNode(vtkMRMLTransformableNode):
    DISPLAY_CLASS = "vtkMRMLScalarVolumeDisplayNode"

    def __init__(self) -> None:
        super().__init__()
        self.image: sitk.Image | None = None

    def CreateDefaultDisplayNodes(self) -> None:
        if self.GetDisplayNode() is None:
            display = self._scene.AddNewNodeByClass(self.DISPLAY_CLASS, self.GetName() + " display")
            self._refs["display"] = display.GetID()

    def GetDisplayNode(self) -> "vtkMRMLScalarVolumeDisplayNode | None":
        return self._node(self._refs.get("display"))

    def GetImageData(self) -> _ImageData | None:
        return None if self.image is None else _ImageData(self.image)

    def GetIJKToRASMatrix(self, matrix: Any) -> None:
        """RAS = diag(-1, -1, 1) (D diag(spacing) ijk + origin), as Slicer derives it from LPS."""
        n = self.image.GetDimension()
        direction = np.array(self.image.GetDirection()).reshape(n, n)
        m = np.eye(4)
        m[:3, :3] = np.diag(LPS_RAS) @ direction @ np.diag(self.image.GetSpacing())
        m[:3, 3] = LPS_RAS * np.array(self.image.GetOrigin())
        for i in range(4):
            for j in range(4):
                matrix.SetElement(i, j, float(m[i, j]))


class vtkMRMLScalarVolumeNode(vtkMRMLVolumeNode):
    pass


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    pass


class vtkMRMLVectorVolumeNode(vtkMRMLScalarVolumeNode):
    DISPLAY_CLASS = "vtkMRMLVectorVolumeDisplayNode"


class vtkMRMLScalarVolumeDisplayNode(vtkMRMLNode):
    def __init__(self) -> None:
        super().__init__()
        self.color_node_id = "vtkMRMLColorTableNodeGrey"
        self.auto_window_level = True
        self.window_level: tuple[float, float] | None = None

    def SetAndObserveColorNodeID(self, node_id: str) -> None:
        if node_id not in BUILTIN_COLOR_NODE_IDS:
            raise ValueError(f"stand-in: unknown colour node {node_id!r}")
        self.color_node_id = node_id

    def GetColorNodeID(self) -> str:
        return self.color_node_id

    def SetAutoWindowLevel(self, flag: bool) -> None:
        self.auto_window_level = bool(flag)

    def GetAutoWindowLevel(self) -> bool:
        return self.auto_window_level

    def SetWindowLevel(self, window: float, level: float) -> None:
        self.window_level = (float(window), float(level))

    def GetWindow(self) -> float:
        return self.window_level[0]

    def GetLevel(self) -> float:
        return self.window_level[1]


class vtkMRMLVectorVolumeDisplayNode(vtkMRMLScalarVolumeDisplayNode):
    pass


class _RASTransform:
    """``GetTransformFromParent()``: the ITK (LPS) transform seen from RAS."""

    def __init__(self, itk_transform: sitk.Transform) -> None:
        self._t = itk_transform

    def TransformPoint(self, ras: tuple[float, float, float]) -> tuple[float, float, float]:
        lps = self._t.TransformPoint(tuple(float(v) for v in np.asarray(ras) * LPS_RAS))
        return tuple(float(v) for v in np.asarray(lps) * LPS_RAS)


class vtkMRMLTransformNode(vtkMRMLTransformableNode):
    def __init__(self) -> None:
        super().__init__()
        self.itk_transform: sitk.Transform | None = None  # as read from the ITK file (LPS)

    @staticmethod
    def GetMovingNodeReferenceRole() -> str:
        return "spatialRegistrationMoving"

    @staticmethod
    def GetFixedNodeReferenceRole() -> str:
        return "spatialRegistrationFixed"

    def CopyContent(self, other: "vtkMRMLTransformNode") -> None:
        self.itk_transform = other.itk_transform

    def GetTransformFromParent(self) -> _RASTransform:
        if self.itk_transform is None:
            raise ValueError("stand-in: empty transform node")
        return _RASTransform(self.itk_transform)


class vtkMRMLGridTransformNode(vtkMRMLTransformNode):
    pass


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    def __init__(self) -> None:
        super().__init__()
        self._parameters: dict[str, str] = {}

    def SetParameter(self, name: str, value: str) -> None:
        self._parameters[name] = str(value)

    def GetParameter(self, name: str) -> str:
        return self._parameters.get(name, "")

    def GetParameterNames(self) -> list[str]:
        return list(self._parameters)


class vtkMRMLSliceCompositeNode(vtkMRMLNode):
    def __init__(self) -> None:
        super().__init__()
        self.background: str | None = None
        self.foreground: str | None = None
        self.foreground_opacity = 0.0
        self.linked = False

    def SetLinkedControl(self, flag: bool) -> None:
        self.linked = bool(flag)

    def GetLinkedControl(self) -> bool:
        return self.linked


class vtkMRMLLayoutNode(vtkMRMLNode):
    SlicerLayoutConventionalView = 2
    SlicerLayoutFourUpView = 3


NODE_CLASSES = {cls.__name__: cls for cls in (
    vtkMRMLNode, vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLVectorVolumeNode,
    vtkMRMLScalarVolumeDisplayNode, vtkMRMLVectorVolumeDisplayNode, vtkMRMLTransformNode,
    vtkMRMLGridTransformNode, vtkMRMLScriptedModuleNode, vtkMRMLSliceCompositeNode,
)}


class vtkMRMLScene:
    StartCloseEvent = 0xF000
    EndCloseEvent = 0xF001

    def __init__(self, recorder: Any, with_views: bool = True) -> None:
        self.recorder = recorder
        self._nodes: list[vtkMRMLNode] = []
        self._count = 0
        self._with_views = with_views
        self._add_views()

    def _add_views(self) -> None:
        if self._with_views:  # the three slice views of the main window
            for view in ("Red", "Yellow", "Green"):
                self.AddNewNodeByClass("vtkMRMLSliceCompositeNode", f"SliceComposite{view}")

    def AddNewNodeByClass(self, class_name: str, name: str = "") -> vtkMRMLNode:
        if class_name not in NODE_CLASSES:
            raise ValueError(f"stand-in: unknown node class {class_name!r}")
        node = NODE_CLASSES[class_name]()
        node.SetName(name or class_name)
        return self.AddNode(node)

    def AddNode(self, node: vtkMRMLNode) -> vtkMRMLNode:
        self._count += 1
        node._id = f"{node.GetClassName()}{self._count}"
        node._scene = self
        self._nodes.append(node)
        self.recorder.record("addNode", node.GetClassName(), node.GetName())
        return node

    def RemoveNode(self, node: vtkMRMLNode) -> None:
        self._nodes.remove(node)
        self.recorder.record("removeNode", node.GetClassName(), node.GetName())
        node._scene = None

    def GetNodeByID(self, node_id: str) -> vtkMRMLNode | None:
        return next((n for n in self._nodes if n.GetID() == node_id), None)

    def GetNodesByClass(self, class_name: str) -> list[vtkMRMLNode]:
        return [n for n in self._nodes if n.IsA(class_name)]

    def GetFirstNodeByClass(self, class_name: str) -> vtkMRMLNode | None:
        nodes = self.GetNodesByClass(class_name)
        return nodes[0] if nodes else None

    def GetUniqueNameByString(self, base: str) -> str:
        names = {n.GetName() for n in self._nodes}
        if base not in names:
            return base
        k = 1
        while f"{base}_{k}" in names:
            k += 1
        return f"{base}_{k}"

    def Clear(self, close: int = 0) -> None:
        self._nodes.clear()
        self._add_views()

    def nodes(self) -> list[vtkMRMLNode]:
        return list(self._nodes)
