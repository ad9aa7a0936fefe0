"""Stand-in ``sitkUtils`` (NOT Slicer's): volumes pass as SimpleITK images, stricter on node classes."""

from __future__ import annotations

import types
from typing import Any

import SimpleITK as sitk

from . import mrml
from .recorder import Recorder


def build(recorder: Recorder, slicer: types.ModuleType) -> types.ModuleType:
    module = types.ModuleType("sitkUtils")
    module.__doc__ = "STAND-IN for Slicer's sitkUtils (tests only)."

    def PullVolumeFromSlicer(node: Any) -> sitk.Image:
        """Like Slicer: the stored voxels and geometry, parent transforms ignored."""
        if isinstance(node, str):
            node = slicer.util.getNode(node)
        if not isinstance(node, mrml.vtkMRMLVolumeNode) or node.image is None:
            raise ValueError(f"stand-in: {node!r} is not a volume node with an image")
        recorder.record("pull", node.GetName())
        return sitk.Image(node.image)

    def PushVolumeToSlicer(image: sitk.Image, targetNode: Any = None, name: str | None = None,
                           className: str = "vtkMRMLScalarVolumeNode") -> mrml.vtkMRMLVolumeNode:
        if targetNode is None:
            targetNode = slicer.mrmlScene.AddNewNodeByClass(className, slicer.mrmlScene.GetUniqueNameByString(name or ""))
            targetNode.CreateDefaultDisplayNodes()
        vector_node = isinstance(targetNode, mrml.vtkMRMLVectorVolumeNode)
        vector_image = image.GetNumberOfComponentsPerPixel() > 1
        if vector_node != vector_image:
            raise TypeError(f"stand-in: a {image.GetNumberOfComponentsPerPixel()}-component image pushed into "
                            f"{targetNode.GetClassName()} (Slicer would display it wrongly)")
        targetNode.image = sitk.Image(image)
        recorder.record("push", targetNode.GetClassName(), targetNode.GetName())
        return targetNode

    module.PullVolumeFromSlicer = PullVolumeFromSlicer
    module.PushVolumeToSlicer = PushVolumeToSlicer
    return module
