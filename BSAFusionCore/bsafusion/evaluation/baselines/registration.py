"""Classical registration baseline: SimpleITK Mattes mutual information, affine then B-spline.

Why this module exists
----------------------
The two-stage pipeline a user can run today (register with a classical tool, then fuse with a
classical rule) is what BSFA-F has to beat. This module is that registration step, with
documented, fixed defaults (:class:`ClassicalSettings`) so that the baseline is reproducible and
not hand-tuned per case. Its first stage is the product's own pre-alignment,
:func:`bsafusion.inference.prealign.prealign_affine`.

Method
------
1. **Rigid, then affine** (:func:`~bsafusion.inference.prealign.prealign_affine`): a centred rigid transform initialised by
   ``CenteredTransformInitializer`` (image centres, or centres of mass with
   ``initializer="moments"``), then a full affine transform started from it, both optimised by
   regular-step gradient descent with parameter scales estimated from physical shifts (so
   translations, angles and matrix entries move comparably).
2. **B-spline** (free-form deformation, Rueckert et al. 1999): a cubic B-spline transform whose
   control mesh over the fixed image is refined with the pyramid up to ``mesh_size`` (8x8),
   optimised by gradient descent with a line search on top of the affine one (the affine is
   the moving initial transform; the result is ``affine o bspline``).

Both stages maximise **Mattes mutual information** (Mattes et al. 2003), which suits
multimodal pairs (MRI vs CT/PET/SPECT) because it assumes no intensity relation. Both are
**multi-resolution**: shrink factors ``(4, 2, 1)`` with Gaussian smoothing ``(2, 1, 0)`` voxels.
The metric is evaluated on a random subset of voxels drawn with a **fixed seed**, and ITK runs
on one thread, so results are bit-identical run to run.

Outputs follow :mod:`bsafusion.deform`: the dense field (pixels of the fixed grid, channels
x, y, pulling the moving image) is sampled from the composite transform with
``sitk.TransformToDisplacementField`` and converted from millimetres to pixels with
:func:`bsafusion.transforms.displacement_image_to_field`, so ``warp_numpy(moving, field)``
reproduces the aligned image that ``sitk.Resample`` gives.

References
----------
.. [1] D. Mattes, D. R. Haynor, H. Vesselle, T. K. Lewellen and W. Eubank, "PET-CT image
   registration in the chest using free-form deformations," IEEE Transactions on Medical
   Imaging, vol. 22, no. 1, pp. 120-128, 2003.
.. [2] D. Rueckert, L. I. Sonoda, C. Hayes, D. L. G. Hill, M. O. Leach and D. J. Hawkes,
   "Nonrigid registration using free-form deformations: application to breast MR images,"
   IEEE Transactions on Medical Imaging, vol. 18, no. 8, pp. 712-721, 1999.
.. [3] B. C. Lowekamp, D. T. Chen, L. Ibanez and D. Blezek, "The design of SimpleITK,"
   Frontiers in Neuroinformatics, vol. 7, 45, 2013.

Examples
--------
>>> from bsafusion.phantom import phantom_pair
>>> from bsafusion.deform import random_misalignment
>>> pair = phantom_pair("CT", shape=(96, 96), seed=1)
>>> moving = random_misalignment((96, 96), seed=2).apply(pair.other)
>>> result = register_classical(pair.mri, moving)
>>> result.aligned.shape, result.field.shape
((96, 96), (2, 96, 96))
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from bsafusion.deform import warp_numpy
from bsafusion.errors import InputError
from bsafusion.inference.prealign import (
    ClassicalSettings,
    check_settings,
    itk_threads,
    mi_method,
    prealign_affine,
)
from bsafusion.checks import as_image
from bsafusion.transforms import displacement_image_to_field

__all__ = ["ClassicalResult", "register_classical"]


@dataclass
class ClassicalResult:
    """Output of :func:`register_classical`, on the fixed image's grid.

    Attributes
    ----------
    aligned:
        ``(H, W)`` float32, the moving image resampled onto the fixed grid by SimpleITK
        (linear interpolation, 0 outside the moving image).
    field:
        ``(2, H, W)`` float32 pixels, the same mapping as a dense field in the
        :mod:`bsafusion.deform` convention: ``warp_numpy(moving, field) ~= aligned``.
    transform:
        The composite SimpleITK transform (fixed -> moving points, unit spacing, zero origin).
    metric:
        Final Mattes mutual information value of the last stage (ITK sign: lower is better).
    """

    aligned: np.ndarray
    field: np.ndarray
    transform: sitk.Transform = dc_field(repr=False)
    metric: float = float("nan")

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Align another image of the moving grid (e.g. the RGB moving image) with :attr:`field`.

        ``image`` is ``(H, W)`` or ``(H, W, C)``; zero padding outside (black, which for RGB
        is also neutral chroma).
        """
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 3:
            return np.moveaxis(warp_numpy(np.moveaxis(image, -1, 0), self.field), 0, -1)
        return warp_numpy(image, self.field)


def _to_sitk(image: np.ndarray) -> sitk.Image:
    """A 2D array as a float32 SimpleITK image with unit spacing, zero origin, identity direction."""
    return sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float32))


def _mesh_schedule(mesh_size: Sequence[int], levels: int) -> tuple[list[int], list[int]]:
    """Initial B-spline mesh and per-level scale factors ending at ``mesh_size``.

    The mesh doubles from level to level (coarse mesh on the coarse image) as often as
    ``mesh_size`` allows: 8x8 over 3 levels is 2x2, 4x4, 8x8; 6x6 is 3x3, 3x3, 6x6.
    """
    doublings = 0
    while doublings < levels - 1 and all(m % 2 ** (doublings + 1) == 0 for m in mesh_size):
        doublings += 1
    factors = [1] * (levels - 1 - doublings) + [2**k for k in range(doublings + 1)]
    return [m // 2**doublings for m in mesh_size], factors


def _bspline_stage(fixed: sitk.Image, moving: sitk.Image, affine: sitk.Transform,
                   settings: ClassicalSettings) -> tuple[sitk.Transform, float]:
    """Optimise a B-spline transform on top of ``affine``; returns ``affine o bspline``."""
    initial_mesh, factors = _mesh_schedule(settings.mesh_size, len(settings.shrink_factors))
    bspline = sitk.BSplineTransformInitializer(fixed, initial_mesh, order=3)
    reg = mi_method(fixed, settings)
    # L-BFGS-B cannot follow a mesh that is refined between levels (its scales keep the size
    # of the first mesh); gradient descent with a line search and physical-shift scales can.
    reg.SetOptimizerAsGradientDescentLineSearch(
        learningRate=5.0,
        numberOfIterations=settings.bspline_iterations,
        convergenceMinimumValue=1e-4,
        convergenceWindowSize=5,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetMovingInitialTransform(affine)
    reg.SetInitialTransformAsBSpline(bspline, inPlace=True, scaleFactors=factors)
    reg.Execute(fixed, moving)
    # moving point = affine(bspline(p)); CompositeTransform applies its last transform first
    return sitk.CompositeTransform([affine, bspline]), reg.GetMetricValue()


def register_classical(
    fixed: np.ndarray, moving: np.ndarray, settings: ClassicalSettings | None = None
) -> ClassicalResult:
    """Register ``moving`` to ``fixed`` (2D, grey, [0, 1]) with MI affine then B-spline.

    Parameters
    ----------
    fixed, moving:
        2D float arrays (the fixed image, e.g. MRI, and the moving one, e.g. CT or the luma of
        PET/SPECT). They may differ in size; the outputs live on the fixed grid. Pixels are
        taken as 1 x 1 (the fields are in pixels anyway).
    settings:
        See :class:`ClassicalSettings` (documented defaults: 32 bins, 25 % random sampling with
        a fixed seed, shrink 4/2/1 with smoothing 2/1/0 voxels, affine by regular-step gradient
        descent, then a cubic B-spline refined to 8x8 by gradient descent with line search,
        one ITK thread).

    Returns
    -------
    ClassicalResult
        ``aligned`` (SimpleITK resampling of ``moving``), ``field`` (the equivalent dense
        field, :mod:`bsafusion.deform` convention), ``transform`` and the final ``metric``.

    Raises
    ------
    InputError
        For non-2D, empty, non-finite or constant images.
    """
    settings = settings or ClassicalSettings()
    fixed_np = as_image(fixed, "fixed", ndims=(2,))
    moving_np = as_image(moving, "moving", ndims=(2,))
    for name, arr in (("fixed", fixed_np), ("moving", moving_np)):
        if np.ptp(arr) < 1e-6:
            raise InputError(f"{name}: the image is constant; there is nothing to register")
        if min(arr.shape) < 4 * max(settings.shrink_factors):
            raise InputError(f"{name}: image {arr.shape} too small for shrink factor {max(settings.shrink_factors)}")
    check_settings(settings, 2, bspline=True)
    fixed_img, moving_img = _to_sitk(fixed_np), _to_sitk(moving_np)

    transform = prealign_affine(fixed_img, moving_img, rigid=False, settings=settings)
    metric = float("nan")
    if settings.mesh_size is not None:
        with itk_threads(settings.threads):
            transform, metric = _bspline_stage(fixed_img, moving_img, transform, settings)

    aligned = sitk.Resample(moving_img, fixed_img, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    displacement = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, fixed_img.GetSize(), fixed_img.GetOrigin(),
        fixed_img.GetSpacing(), fixed_img.GetDirection(),
    )
    return ClassicalResult(
        aligned=sitk.GetArrayFromImage(aligned).astype(np.float32),
        field=displacement_image_to_field(displacement),
        transform=transform,
        metric=float(metric),
    )
