"""Classical two-stage baselines: register with SimpleITK, then fuse with a fixed rule.

These are what a user would run instead of BSFA-F. The evaluation suite runs
them next to the network on the same cases:

* :func:`register_classical` - Mattes-MI affine then B-spline registration of a 2D pair,
  returning the aligned moving image and the dense field (:mod:`bsafusion.deform` convention);
  its affine/rigid stage is the product's pre-alignment (:mod:`bsafusion.inference.prealign`).
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
from bsafusion.evaluation.baselines.registration import ClassicalResult, register_classical
from bsafusion.inference.prealign import ClassicalSettings

__all__ = [
    "FUSION_RULES",
    "ClassicalResult",
    "ClassicalSettings",
    "fuse_average",
    "fuse_colour",
    "fuse_laplacian",
    "fuse_max_abs",
    "get_rule",
    "register_classical",
]
