"""Classical two-stage baselines: register with SimpleITK, then fuse with a fixed rule.

These are what a user would run today instead of BSFA-F (issue 5). The evaluation suite runs
them next to the network on the same cases:

* :func:`register_classical` - Mattes-MI affine then B-spline registration of a 2D pair,
  returning the aligned moving image and the dense field (:mod:`bsafusion.deform` convention);
  :func:`prealign_affine` is its 2D/3D physical-space affine/rigid stage, reused by volumes.
* :data:`FUSION_RULES` - ``average``, ``max_abs`` and ``laplacian`` (pyramid) fusion of luma;
  :func:`fuse_colour` fuses the Y channel of PET/SPECT and puts the chroma back.

Example
-------
>>> from bsafusion.evaluation.baselines import register_classical, fuse_colour
>>> result = register_classical(mri, ct)                     # doctest: +SKIP
>>> fused = fuse_colour("laplacian", mri, result.aligned)    # doctest: +SKIP
"""

from bsafusion.evaluation.baselines.fusion_rules import (
    FUSION_RULES,
    fuse_average,
    fuse_colour,
    fuse_laplacian,
    fuse_max_abs,
    get_rule,
)
from bsafusion.evaluation.baselines.registration import ClassicalResult, ClassicalSettings, prealign_affine, register_classical

__all__ = [
    "FUSION_RULES",
    "ClassicalResult",
    "ClassicalSettings",
    "fuse_average",
    "fuse_colour",
    "fuse_laplacian",
    "fuse_max_abs",
    "get_rule",
    "prealign_affine",
    "register_classical",
]
