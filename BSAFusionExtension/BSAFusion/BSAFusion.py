"""BSAFusion for 3D Slicer: register and fuse CT, PET or SPECT with MRI in one stage.

The module is a thin shell around the BSAFusion core (the ``bsafusion`` Python package, shipped
inside the extension): the **Logic** pulls the two volumes out of the scene (voxels with
``slicer.util.arrayFromVolume``, geometry from the IJK -> RAS matrix), hands them to :func:`bsafusion.slicer_support.run_core` (which calls the core's
``register_and_fuse_volumes``), and loads what comes back into the scene: a transform node set as
the moving volume's parent transform, a fused volume, the aligned moving volume, a Jacobian map
and a checkerboard volume. Everything that is not a Slicer call (parameter checks, the list of
outputs, colour conversion, the checkerboard, LPS/RAS geometry, the transform file) lives in
``bsafusion.slicer_support`` and is tested in the core's CI. Options the user leaves alone are
not passed on, so the core's defaults are the only ones.

Why a worker thread and a polling timer
---------------------------------------
A run takes from seconds (GPU) to minutes (CPU). Running it on the GUI thread would freeze
Slicer, so the Widget runs :meth:`BSAFusionLogic.compute` (the core call only: no Qt, no MRML) in
a Python thread, through ``bsafusion.slicer_support.BackgroundJob``. Qt widgets and the MRML
scene may only be touched from the GUI thread, so the worker never calls back: a ``qt.QTimer``
on the GUI thread polls the job every 100 ms, moves its progress to the progress bar, and, once
the job is done, creates the output nodes (:meth:`BSAFusionLogic.loadResults`) or shows the
core's error message. Cancel sets a flag that the core checks between slices. The timer also
hands the interpreter back to Python regularly, so the worker keeps running even where the
embedding only releases Python's lock while Python code runs (torch and SimpleITK release it
themselves during their heavy loops).

Dependencies are installed only after asking
--------------------------------------------
torch comes from the PyTorch extension (``PyTorchUtils``), which picks the build matching the
machine's GPU driver; the core is pip-installed into Slicer's Python from the copy bundled with
the extension. Both only after a confirmation dialog (GUI) or an explicit
``--install-dependencies`` (batch), never silently: see
:meth:`BSAFusionLogic.setupPythonRequirements`.
"""

import logging
import os
import pathlib
import shutil
import sys
import tempfile
import traceback
from typing import Annotated, Callable, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTransformNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# The module must load before the core is installed (so that it can offer to install it), hence
# these literal lists. CI checks that they equal bsafusion.slicer_support.MODALITIES/DEVICES/AXES.
MODALITY_CHOICES = ("CT", "PET", "SPECT")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
AXIS_CHOICES = ("axial", "coronal", "sagittal")

#: Output key (see bsafusion.slicer_support.output_volumes) -> parameter node attribute.
OUTPUT_ROLES = {
    "transform": "outputTransform",
    "fused": "fusedVolume",
    "aligned": "alignedVolume",
    "jacobian": "jacobianVolume",
    "checkerboard": "checkerboardVolume",
}

#: Smallest torch the core supports (BSAFusionCore/pyproject.toml).
TORCH_REQUIREMENT = ">=2.1"


#
# BSAFusion
#


class BSAFusion(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "BSAFusion"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["The BSAFusion contributors"]
        self.parent.helpText = """
Registers an unaligned CT, PET or SPECT volume (moving) to an MRI volume (fixed) and fuses them in
one stage with the BSFA-F network. Outputs: a displacement-field transform applied to the moving
volume, the fused volume (colour for PET/SPECT), the aligned moving volume, a Jacobian map of the
deformation and a checkerboard. Use the fade slider, flicker, checkerboard and Jacobian buttons
to judge the registration before trusting the fused volume.
"""
        self.parent.acknowledgementText = """
Implements BSFA-F from "BSAFusion: A Bidirectional Stepwise Feature Alignment Network for
Unaligned Medical Image Fusion" (AAAI 2025). Not a medical device: for research use only.
"""


#
# Parameter node
#


@parameterNodeWrapper
class BSAFusionParameterNode:
    """GUI state, saved with the scene.

    fixedVolume / movingVolume: the MRI and the CT/PET/SPECT volume.
    useShippedWeights / weightsFile: the model shipped for the modality, or a weights file.
    device, prealign, sliceAxis, refineSteps: passed to the core (see bsafusion.inference.volume);
    refineSteps < 0 (shown as "modality default") leaves the core's per-modality default.
    Their defaults here are the core's (CI compares them with register_and_fuse_volumes).
    hardenTransform: harden the transform into the moving volume after the run.
    output*: nodes written by the last run (reused by the next one).
    foregroundOpacity: the fade slider.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    modality: Annotated[str, Choice(list(MODALITY_CHOICES))] = "CT"
    useShippedWeights: bool = True
    weightsFile: pathlib.Path
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    prealign: bool = True
    sliceAxis: Annotated[str, Choice(list(AXIS_CHOICES))] = "axial"
    refineSteps: Annotated[int, WithinRange(-1, 10000)] = -1
    hardenTransform: bool = False
    outputTransform: vtkMRMLTransformNode
    fusedVolume: vtkMRMLScalarVolumeNode
    alignedVolume: vtkMRMLScalarVolumeNode
    jacobianVolume: vtkMRMLScalarVolumeNode
    checkerboardVolume: vtkMRMLScalarVolumeNode
    foregroundOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# BSAFusionWidget
#


class BSAFusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI wiring only: reads the .ui, connects signals, calls the logic."""

    POLL_MS = 100
    FLICKER_MS = 500

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._run = None  # (request, fixed node, moving node, harden) of the run in progress
        self._pollTimer = None
        self._flickerTimer = None
        self._flickerVisible = True

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BSAFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BSAFusionLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_MS)
        self._pollTimer.connect("timeout()", self._pollJob)
        self._flickerTimer = qt.QTimer()
        self._flickerTimer.setInterval(self.FLICKER_MS)
        self._flickerTimer.connect("timeout()", self._flickerStep)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.runButton.connect("clicked(bool)", self.onRunButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.installButton.connect("clicked(bool)", self.onInstallButton)
        self.ui.useShippedWeightsCheckBox.connect("toggled(bool)", self._updateWeightsEnabled)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.overlayButton.connect("clicked(bool)", self.onShowOverlay)
        self.ui.flickerButton.connect("toggled(bool)", self.onFlickerToggled)
        self.ui.checkerboardButton.connect("clicked(bool)", self.onShowCheckerboard)
        self.ui.jacobianButton.connect("clicked(bool)", self.onShowJacobian)
        self.ui.fusedButton.connect("clicked(bool)", self.onShowFused)
        self.ui.layoutButton.connect("clicked(bool)", self.onLayoutButton)

        self.ui.cancelButton.enabled = False
        self.ui.progressBar.setValue(0)
        self.initializeParameterNode()

    # -- module life cycle (as in Slicer's scripted module template) --------------------------

    def cleanup(self) -> None:
        self._stopFlicker()
        if self._job is not None:
            self._job.cancel()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._stopFlicker()
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self._job.cancel()  # its inputs and outputs belong to the scene being closed
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.fixedVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[BSAFusionParameterNode]) -> None:
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Each widget bound to a parameter has the dynamic property "SlicerParameterName".
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()
            self._updateWeightsEnabled(self._parameterNode.useShippedWeights)

    def _updateButtons(self, caller=None, event=None) -> None:
        pn = self._parameterNode
        ready = bool(pn and pn.fixedVolume and pn.movingVolume and pn.fixedVolume != pn.movingVolume)
        running = self._job is not None
        self.ui.runButton.enabled = ready and not running
        self.ui.runButton.toolTip = "Register and fuse" if ready else "Select two different volumes"
        self.ui.cancelButton.enabled = running
        self.ui.inputsCollapsibleButton.enabled = not running
        hasOutputs = bool(pn and pn.outputTransform)
        for button in (self.ui.overlayButton, self.ui.flickerButton, self.ui.checkerboardButton,
                       self.ui.jacobianButton, self.ui.fusedButton):
            button.enabled = hasOutputs and not running

    def _updateWeightsEnabled(self, useShipped) -> None:
        self.ui.weightsPathLineEdit.enabled = not useShipped

    # -- run -----------------------------------------------------------------------------------

    def onInstallButton(self) -> None:
        try:
            self.logic.setupPythonRequirements(askConfirmation=True)
            slicer.util.infoDisplay("PyTorch and the BSAFusion core are installed.")
        except Exception as exc:
            self._showError(exc)

    def onRunButton(self) -> None:
        if self._job is not None:
            return
        pn = self._parameterNode
        try:
            self.logic.setupPythonRequirements(askConfirmation=True)
            request = self.logic.prepare(
                pn.fixedVolume, pn.movingVolume, pn.modality,
                weights=None if pn.useShippedWeights else pn.weightsFile,
                device=pn.device, prealign=pn.prealign, axis=pn.sliceAxis,
                refineSteps=None if pn.refineSteps < 0 else pn.refineSteps,
                ownTransformNode=pn.outputTransform,
            )
            from bsafusion.slicer_support import BackgroundJob
        except Exception as exc:
            self._showError(exc)
            return
        self._stopFlicker()
        self._run = (request, pn.fixedVolume, pn.movingVolume, pn.hardenTransform)
        logic = self.logic
        self._job = BackgroundJob(lambda progress, cancel: logic.compute(request, progress, cancel)).start()
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = "Starting..."
        self._updateButtons()
        self._pollTimer.start()

    def onCancelButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = "Cancelling (the core stops after the current slices)..."

    def _pollJob(self) -> None:
        """GUI thread, every POLL_MS: show progress; when the job ends, load or report."""
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        fraction, message = job.progress()
        self.ui.progressBar.setValue(int(round(100 * fraction)))
        if message and not job.cancel_requested:
            self.ui.statusLabel.text = message
        if not job.done:
            return
        self._pollTimer.stop()
        self._job = None
        request, fixedNode, movingNode, harden = self._run
        self._run = None
        if self._parameterNode is None:  # the scene was closed meanwhile
            self.ui.statusLabel.text = "The scene was closed; the result was discarded."
            return
        try:
            result = job.outcome()
        except Exception as exc:
            if self.logic.isCancellation(exc):
                self.ui.statusLabel.text = "Cancelled; the scene was not changed."
                self.ui.progressBar.setValue(0)
            else:
                self._showError(exc)
            self._updateButtons()
            return
        try:
            pn = self._parameterNode
            nodes = self.logic.loadResults(request, result, fixedNode, movingNode,
                                           outputs=self.logic.outputsFromParameterNode(pn), harden=harden)
            self.logic.storeOutputs(pn, nodes)
            self.logic.setupViews()
            self.logic.showOverlay(fixedNode, movingNode, pn.foregroundOpacity)
            from bsafusion.slicer_support import quality_summary

            self.ui.statusLabel.text = "Done: " + quality_summary(result)
            self.ui.progressBar.setValue(100)
        except Exception as exc:
            self._showError(exc)
        self._updateButtons()

    def _showError(self, exc: BaseException) -> None:
        """The core's message in a box; the traceback under "Show details" and in the log."""
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        logging.error(details)
        self.ui.statusLabel.text = "Failed."
        slicer.util.errorDisplay(f"BSAFusion: {exc}", detailedText=details)

    # -- checking the registration ---------------------------------------------------------------

    def onOpacityChanged(self, value) -> None:
        if not self._flickerTimer.isActive():
            self.logic.setForegroundOpacity(value)

    def onShowOverlay(self) -> None:
        self._stopFlicker()
        self._showOverlay()

    def _showOverlay(self) -> None:
        pn = self._parameterNode
        self.logic.showOverlay(pn.fixedVolume, pn.movingVolume, pn.foregroundOpacity)

    def onFlickerToggled(self, on) -> None:
        """Swap the foreground between hidden and opaque every FLICKER_MS: motion reveals misalignment."""
        if on:
            self._showOverlay()
            self._flickerVisible = True
            self._flickerTimer.start()
        else:
            self._stopFlicker()

    def _flickerStep(self) -> None:
        self._flickerVisible = not self._flickerVisible
        self.logic.setForegroundOpacity(1.0 if self._flickerVisible else 0.0)

    def _stopFlicker(self) -> None:
        """Stop flickering and restore the fade slider's opacity (no-op when not flickering)."""
        if self._flickerTimer is None or not self._flickerTimer.isActive():
            return
        self._flickerTimer.stop()
        if self._parameterNode:
            self.logic.setForegroundOpacity(self._parameterNode.foregroundOpacity)
        self.ui.flickerButton.checked = False  # re-enters onFlickerToggled(False): timer already stopped

    def onShowCheckerboard(self) -> None:
        self._stopFlicker()
        self.logic.showCheckerboard(self._parameterNode.checkerboardVolume)

    def onShowJacobian(self) -> None:
        self._stopFlicker()
        self.logic.showJacobian(self._parameterNode.fixedVolume, self._parameterNode.jacobianVolume)

    def onShowFused(self) -> None:
        self._stopFlicker()
        self.logic.showFused(self._parameterNode.fusedVolume)

    def onLayoutButton(self) -> None:
        self.logic.setupViews()


#
# BSAFusionLogic
#


class BSAFusionLogic(ScriptedLoadableModuleLogic):
    """Runs BSAFusion on two volume nodes; usable from the GUI, batch scripts and tests.

    One run is three steps so that the slow one can leave the GUI thread:

    1. :meth:`prepare` (GUI thread): check parameters, pull the volumes out of the scene;
    2. :meth:`compute` (any thread): the core call, no Qt and no MRML;
    3. :meth:`loadResults` (GUI thread): create or refresh the output nodes.

    :meth:`process` chains them synchronously (batch, self-test).
    """

    def getParameterNode(self):
        return BSAFusionParameterNode(super().getParameterNode())

    # -- dependencies ------------------------------------------------------------------------

    @staticmethod
    def bundledCorePath() -> Optional[str]:
        """The BSAFusionCore folder shipped with the module, or None.

        Installed or build tree: ``<module dir>/BSAFusionCore`` (copied there by CMake).
        Source checkout added through Application Settings > Modules: ``<repo>/BSAFusionCore``.
        """
        moduleDir = os.path.dirname(os.path.abspath(__file__))
        for candidate in (os.path.join(moduleDir, "BSAFusionCore"),
                          os.path.join(moduleDir, os.pardir, os.pardir, "BSAFusionCore")):
            if os.path.isfile(os.path.join(candidate, "pyproject.toml")):
                return os.path.normpath(candidate)
        return None

    @staticmethod
    def _importable(name: str) -> bool:
        import importlib.util

        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    def setupPythonRequirements(self, askConfirmation: bool = True, allowInstall: bool = True) -> None:
        """Make sure torch and the core can be imported; install them only with consent.

        ``askConfirmation``: ask in a dialog before installing (GUI). ``allowInstall=False``
        (batch without ``--install-dependencies``): never install, raise with instructions.
        Raises ``RuntimeError`` when a dependency is missing and not installed.
        """
        if sys.version_info < (3, 10):
            raise RuntimeError(f"BSAFusion needs 3D Slicer 5.10 or newer (Python 3.10+); this Slicer has Python "
                               f"{sys.version_info.major}.{sys.version_info.minor}.")
        if not self._importable("torch"):
            if not allowInstall:
                raise RuntimeError("PyTorch is not installed in Slicer's Python. Install the 'PyTorch' extension "
                                   "(Extensions Manager), or rerun the batch script with --install-dependencies.")
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError("BSAFusion needs PyTorch. Install the 'PyTorch' extension from the Extensions "
                                   "Manager, restart Slicer and run again.") from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torch = torchLogic.installTorch(askConfirmation=askConfirmation,
                                                torchVersionRequirement=TORCH_REQUIREMENT)
                if torch is None:
                    raise RuntimeError("PyTorch was not installed; BSAFusion cannot run without it.")
        if not self._importable("bsafusion"):
            corePath = self.bundledCorePath()
            if corePath is None:
                raise RuntimeError("The BSAFusion core (BSAFusionCore) was not found next to the module; "
                                   "reinstall the extension.")
            if not allowInstall:
                raise RuntimeError(f"The BSAFusion core is not installed in Slicer's Python. Rerun with "
                                   f"--install-dependencies, or: slicer.util.pip_install(['{corePath}'])")
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    "BSAFusion needs its core Python package (and numpy, scipy, scikit-image, matplotlib, "
                    "PyYAML and tqdm if missing) installed into Slicer's Python with pip. This needs a "
                    f"network connection and may take a few minutes.\n\nInstall from:\n{corePath}",
                    "BSAFusion: install Python packages"):
                raise RuntimeError("Installation of the BSAFusion core was cancelled; nothing was changed.")
            self._pipInstallCore(corePath)

    @staticmethod
    def _pipInstallCore(corePath: str) -> None:
        """pip-install a temporary copy: the extension folder may be read-only, and pip builds in place."""
        with tempfile.TemporaryDirectory(prefix="BSAFusionCore-") as tmp:
            source = os.path.join(tmp, "BSAFusionCore")
            shutil.copytree(corePath, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
            slicer.util.pip_install([source])
        import importlib

        importlib.invalidate_caches()

    # -- one run -------------------------------------------------------------------------------

    def prepare(self, fixedVolumeNode, movingVolumeNode, modality: str, weights=None, device: Optional[str] = None,
                prealign: Optional[bool] = None, axis: Optional[str] = None, refineSteps: Optional[int] = None,
                ownTransformNode=None):
        """Check the parameters and pull both volumes out of the scene (GUI thread).

        Returns a ``bsafusion.slicer_support.RunRequest``. Options left at ``None`` take the
        core's defaults. Volumes are read as stored, without their parent transforms, so a
        volume under another transform is refused (the outputs would not line up); the moving
        volume may be under ``ownTransformNode``, the transform of a previous BSAFusion run,
        which this run replaces.
        """
        from bsafusion import slicer_support

        if fixedVolumeNode is None or movingVolumeNode is None:
            raise ValueError("select a fixed (MRI) and a moving (CT/PET/SPECT) volume")
        if fixedVolumeNode == movingVolumeNode:
            raise ValueError("the fixed and the moving volume are the same node")
        parameters = slicer_support.validate_parameters(modality, weights, device, prealign, axis,
                                                        refine_steps=refineSteps)
        for node, role in ((fixedVolumeNode, "fixed"), (movingVolumeNode, "moving")):
            parent = node.GetParentTransformNode()
            if parent is not None and not (role == "moving" and parent == ownTransformNode):
                raise ValueError(f"the {role} volume '{node.GetName()}' is under the transform '{parent.GetName()}'; "
                                 "harden or remove that transform first")
        return slicer_support.RunRequest(self.pullVolume(fixedVolumeNode), self.pullVolume(movingVolumeNode),
                                         parameters, names=(fixedVolumeNode.GetName(), movingVolumeNode.GetName()))

    @staticmethod
    def pullVolume(volumeNode):
        """The node's voxels and geometry as a SimpleITK image (LPS), without its parent transform."""
        from bsafusion.slicer_support import image_from_node_array

        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return image_from_node_array(slicer.util.arrayFromVolume(volumeNode).copy(),
                                     slicer.util.arrayFromVTKMatrix(matrix))

    @staticmethod
    def pushVolume(image, volumeNode) -> None:
        """Put a SimpleITK image (LPS) into a volume node: voxels and IJK -> RAS matrix."""
        import SimpleITK as sitk
        from bsafusion.slicer_support import ijk_to_ras

        slicer.util.updateVolumeFromArray(volumeNode, sitk.GetArrayFromImage(image))
        volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras(image)))

    def compute(self, request, progress: Optional[Callable] = None, cancel: Optional[Callable] = None):
        """The core's registration and fusion (any thread: touches neither Qt nor MRML)."""
        from bsafusion.slicer_support import run_core

        return run_core(request, progress, cancel)

    @staticmethod
    def isCancellation(exc: BaseException) -> bool:
        from bsafusion.inference.volume import Cancelled

        return isinstance(exc, Cancelled)

    def loadResults(self, request, result, fixedVolumeNode, movingVolumeNode, outputs: Optional[dict] = None,
                    harden: bool = False) -> dict:
        """Create (or refresh) the output nodes from the core's result (GUI thread).

        ``outputs`` maps output keys (``transform``, ``fused``, ``aligned``, ``jacobian``,
        ``checkerboard``) to nodes of a previous run to reuse; a volume node of the wrong class
        (e.g. a grey fused volume from a CT run, now PET) is left alone and a new one is made.
        Returns the nodes by key. The transform becomes the moving volume's parent transform
        (hardened into it when ``harden``) and records the fixed/moving volumes as its
        registration references.
        """
        from bsafusion import slicer_support

        outputs = dict(outputs or {})
        names = slicer_support.node_names(movingVolumeNode.GetName())
        volumes = slicer_support.output_volumes(result, request.fixed, movingVolumeNode.GetName())
        nodes = {"transform": self._loadTransform(result.transform, request.fixed, outputs.get("transform"),
                                                  names["transform"])}
        transformNode = nodes["transform"]
        transformNode.SetNodeReferenceID(slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole(), movingVolumeNode.GetID())
        transformNode.SetNodeReferenceID(slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole(), fixedVolumeNode.GetID())
        movingVolumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
        if harden:
            slicer.vtkSlicerTransformLogic().hardenTransform(movingVolumeNode)
        for spec in volumes:
            node = self._volumeNode(outputs.get(spec.key), spec.node_class, spec.name)
            self.pushVolume(spec.image, node)
            displayNode = node.GetDisplayNode()
            if spec.color_node_id:
                displayNode.SetAndObserveColorNodeID(spec.color_node_id)
            if spec.window_level:
                displayNode.SetAutoWindowLevel(False)
                displayNode.SetWindowLevel(*spec.window_level)
            nodes[spec.key] = node
        return nodes

    @staticmethod
    def _loadTransform(transform, fixedImage, existingNode, name: str):
        """Read the core's transform through Slicer's transform storage node (which converts LPS to RAS).

        The file is a compressed displacement field (``write_slicer_transform``); the storage
        node stays attached, so saving the scene writes the transform as a compressed ``.nrrd``
        again. An ``existingNode`` (a previous run's, or the user's choice) is refreshed in place,
        keeping its ID and references.
        """
        from bsafusion.slicer_support import write_slicer_transform

        node = existingNode or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode", name)
        storageNode = node.GetStorageNode()
        if storageNode is None or not storageNode.IsA("vtkMRMLTransformStorageNode"):
            storageNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
            node.SetAndObserveStorageNodeID(storageNode.GetID())
        with tempfile.TemporaryDirectory(prefix="BSAFusion-") as tmp:
            path = write_slicer_transform(transform, fixedImage, tmp)
            storageNode.SetFileName(str(path))
            if not storageNode.ReadData(node):
                raise RuntimeError(f"Slicer could not read the BSAFusion transform ({path})")
        storageNode.SetFileName(f"{node.GetName()}.nrrd")  # the temporary file is gone; a scene save writes this
        storageNode.SetDefaultWriteFileExtension("nrrd")  # not Slicer's uncompressed .h5
        storageNode.SetUseCompression(True)
        return node

    @staticmethod
    def _volumeNode(existingNode, className: str, name: str):
        if existingNode is not None and existingNode.GetClassName() == className:
            return existingNode
        node = slicer.mrmlScene.AddNewNodeByClass(className, slicer.mrmlScene.GetUniqueNameByString(name))
        node.CreateDefaultDisplayNodes()
        return node

    def process(self, fixedVolumeNode, movingVolumeNode, modality: str, weights=None, device: Optional[str] = None,
                prealign: Optional[bool] = None, axis: Optional[str] = None, refineSteps: Optional[int] = None,
                harden: bool = False, outputs: Optional[dict] = None, progress: Optional[Callable] = None,
                cancel: Optional[Callable] = None, ownTransformNode=None):
        """prepare + compute + loadResults on the calling thread; returns ``(nodes, result)``."""
        request = self.prepare(fixedVolumeNode, movingVolumeNode, modality, weights, device, prealign, axis,
                               refineSteps, ownTransformNode=ownTransformNode)
        result = self.compute(request, progress, cancel)
        nodes = self.loadResults(request, result, fixedVolumeNode, movingVolumeNode, outputs, harden)
        return nodes, result

    @staticmethod
    def outputsFromParameterNode(parameterNode) -> dict:
        return {key: getattr(parameterNode, attr) for key, attr in OUTPUT_ROLES.items()
                if getattr(parameterNode, attr) is not None}

    @staticmethod
    def storeOutputs(parameterNode, nodes: dict) -> None:
        for key, node in nodes.items():
            setattr(parameterNode, OUTPUT_ROLES[key], node)

    # -- views -------------------------------------------------------------------------------

    @staticmethod
    def setupViews() -> None:
        """Three slice views and 3D (four-up), slice views linked (no-op without a main window)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        for compositeNode in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            compositeNode.SetLinkedControl(True)

    @staticmethod
    def showOverlay(fixedVolumeNode, foregroundVolumeNode, opacity: float = 0.5) -> None:
        """Fixed as background, the (transformed) moving volume as foreground, faded by ``opacity``."""
        slicer.util.setSliceViewerLayers(background=fixedVolumeNode, foreground=foregroundVolumeNode,
                                         foregroundOpacity=float(opacity), fit=True)

    @staticmethod
    def setForegroundOpacity(opacity: float) -> None:
        slicer.util.setSliceViewerLayers(foregroundOpacity=float(opacity))

    @staticmethod
    def showCheckerboard(checkerboardVolumeNode) -> None:
        slicer.util.setSliceViewerLayers(background=checkerboardVolumeNode, foreground=None, fit=True)

    @staticmethod
    def showJacobian(fixedVolumeNode, jacobianVolumeNode, opacity: float = 0.6) -> None:
        """The Jacobian map (blue: compressed, red: expanded) over the fixed volume."""
        slicer.util.setSliceViewerLayers(background=fixedVolumeNode, foreground=jacobianVolumeNode,
                                         foregroundOpacity=float(opacity), fit=True)

    @staticmethod
    def showFused(fusedVolumeNode) -> None:
        slicer.util.setSliceViewerLayers(background=fusedVolumeNode, foreground=None, fit=True)


#
# BSAFusionTest
#


class BSAFusionTest(ScriptedLoadableModuleTest):
    """Self-test, run inside Slicer (Developer mode > Reload and Test, or ctest).

    Makes a small unaligned phantom pair with the core's head phantom (no download), pushes it
    into the scene with the logic's pushVolume, runs the logic, and checks that the transform node, the fused
    and the aligned volumes exist on the fixed volume's grid, that the aligned volume equals the
    core's output, and that the transform node maps points as the core's transform does (which
    checks the LPS/RAS conversion Slicer does when it loads the ITK file).
    """

    SHAPE = (12, 64, 64)  # z, y, x
    SPACING = (1.2, 1.2, 2.5)  # x, y, z in mm

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_bad_parameters_are_refused()
        self.setUp()
        self.test_ct_run()
        self.setUp()
        self.test_pet_run_gives_colour_volume()

    # -- helpers -------------------------------------------------------------------------------

    def _weights(self, modality: str) -> Optional[str]:
        """The shipped model when present; otherwise a tiny untrained one (wiring, not quality)."""
        from bsafusion.model import checkpoint

        if checkpoint.default_weights_path(modality).is_file():
            return None
        from bsafusion.model import BSFAF, ModelConfig

        path = os.path.join(slicer.app.temporaryPath, f"BSAFusionTest_{modality}.pt")
        cfg = ModelConfig(img_size=64, channels=8, embed_dim=32, patch_size=8, heads=2, pyramid_channels=(16, 12, 8))
        checkpoint.save(path, BSFAF(cfg), modality)
        self.delayDisplay(f"No shipped {modality} model: using an untrained test model")
        return path

    def _phantomPair(self, modality: str):
        """Fixed MRI and a moving CT/PET volume (activity, grey) rotated/shifted by a known rigid transform."""
        import numpy as np
        import SimpleITK as sitk
        from bsafusion.phantom import phantom_pair

        pair = phantom_pair(modality, shape=self.SHAPE, seed=3)
        fixed = sitk.GetImageFromArray(pair.mri.astype(np.float32))
        fixed.SetSpacing(self.SPACING)
        fixed.SetOrigin((-40.0, -35.0, 10.0))
        moving = sitk.GetImageFromArray(pair.other.astype(np.float32))
        moving.CopyInformation(fixed)
        rigid = sitk.Euler3DTransform(fixed.TransformContinuousIndexToPhysicalPoint(
            [(s - 1) / 2 for s in fixed.GetSize()]), 0.0, 0.0, 0.08, (3.0, -2.0, 0.0))
        moving = sitk.Resample(moving, moving, rigid, sitk.sitkLinear, 0.0)
        nodes = []
        for image, name in ((fixed, "PhantomMRI"), (moving, f"Phantom{modality}")):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
            node.CreateDefaultDisplayNodes()
            BSAFusionLogic.pushVolume(image, node)
            nodes.append(node)
        return tuple(nodes)

    def _assertOnFixedGrid(self, node, fixedNode):
        self.assertEqual(node.GetImageData().GetDimensions(), fixedNode.GetImageData().GetDimensions())
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(a)
        fixedNode.GetIJKToRASMatrix(b)
        for i in range(4):
            for j in range(4):
                self.assertAlmostEqual(a.GetElement(i, j), b.GetElement(i, j), places=4)

    def _run(self, modality: str):
        fixedNode, movingNode = self._phantomPair(modality)
        logic = BSAFusionLogic()
        fractions = []
        nodes, result = logic.process(fixedNode, movingNode, modality, weights=self._weights(modality),
                                      device="auto", progress=lambda f, m="": fractions.append(f))
        self.assertTrue(fractions, "the core reported no progress")
        return logic, fixedNode, movingNode, nodes, result

    # -- tests ---------------------------------------------------------------------------------

    def test_bad_parameters_are_refused(self):
        self.delayDisplay("Parameters are checked before any work")
        fixedNode, movingNode = self._phantomPair("CT")
        logic = BSAFusionLogic()
        from bsafusion.errors import InputError

        with self.assertRaises(InputError):
            logic.prepare(fixedNode, movingNode, "MRI")
        with self.assertRaises(InputError):
            logic.prepare(fixedNode, movingNode, "CT", weights=os.path.join(slicer.app.temporaryPath, "missing.pt"))
        with self.assertRaises(ValueError):
            logic.prepare(fixedNode, fixedNode, "CT")
        self.delayDisplay("Test passed")

    def test_ct_run(self):
        self.delayDisplay("CT-MRI: transform, fused and aligned volumes")
        import numpy as np
        import SimpleITK as sitk
        from bsafusion import slicer_support

        logic, fixedNode, movingNode, nodes, result = self._run("CT")
        self.assertEqual(set(nodes), set(OUTPUT_ROLES))
        transformNode = nodes["transform"]
        self.assertTrue(transformNode.IsA("vtkMRMLTransformNode"))
        self.assertEqual(movingNode.GetParentTransformNode(), transformNode)
        self.assertEqual(nodes["fused"].GetClassName(), "vtkMRMLScalarVolumeNode")
        for key in ("fused", "aligned", "jacobian", "checkerboard"):
            self._assertOnFixedGrid(nodes[key], fixedNode)
        aligned = slicer.util.arrayFromVolume(nodes["aligned"])
        np.testing.assert_allclose(aligned, sitk.GetArrayFromImage(result.aligned), atol=1e-5)
        points = slicer_support.sample_points(BSAFusionLogic.pullVolume(fixedNode), count=25, on_grid=True)
        worst = slicer_support.transform_discrepancy_mm(
            result.transform, transformNode.GetTransformFromParent().TransformPoint, points)
        self.assertLess(worst, 0.1, f"transform node differs from the core's transform by {worst:.3f} mm")
        logic.showCheckerboard(nodes["checkerboard"])
        logic.showJacobian(fixedNode, nodes["jacobian"])
        logic.showOverlay(fixedNode, movingNode, 0.5)
        self.delayDisplay("Test passed")

    def test_pet_run_gives_colour_volume(self):
        self.delayDisplay("PET-MRI: the fused volume is an RGB vector volume")
        logic, fixedNode, movingNode, nodes, result = self._run("PET")
        self.assertEqual(nodes["fused"].GetClassName(), "vtkMRMLVectorVolumeNode")
        self.assertEqual(nodes["fused"].GetImageData().GetNumberOfScalarComponents(), 3)
        self._assertOnFixedGrid(nodes["fused"], fixedNode)
        self.delayDisplay("Test passed")
