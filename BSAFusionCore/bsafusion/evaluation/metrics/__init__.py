"""Metrics of fusion quality and registration accuracy.

* :mod:`bsafusion.evaluation.metrics.fusion` - the paper's fusion metrics, ``metric(fused, a, b)``:
  Q_AB/F, Q_CV (lower is better), Q_VIF (VIFF), Q_S (Piella), Q_SSIM.
* :mod:`bsafusion.evaluation.metrics.registration` - similarity of aligned images (NCC, mutual
  information, SSIM, MAE) and displacement-field quality (endpoint error, Jacobian
  determinant, folding fraction) in the field convention of :mod:`bsafusion.deform`.

:data:`FUSION_METRICS` maps a name to ``callable(fused, a, b) -> float`` called with its
defaults, i.e. for images in ``[0, 1]`` (``data_range=1.0``); for 8-bit images call the
functions directly with ``data_range=255``. :data:`HIGHER_IS_BETTER` tells, for every scalar
metric name of the package (fusion and registration), whether a higher value is better.
:func:`jacobian_determinant` returns a map, not a score, and is not listed there.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from bsafusion.evaluation.metrics.fusion import q_abf, q_cv, q_s, q_ssim, q_vif
from bsafusion.evaluation.metrics.registration import (
    endpoint_error,
    folding_fraction,
    jacobian_determinant,
    mae,
    mutual_information,
    ncc,
    normalized_mutual_information,
    ssim,
)

__all__ = [
    "q_abf",
    "q_cv",
    "q_vif",
    "q_s",
    "q_ssim",
    "ncc",
    "mutual_information",
    "normalized_mutual_information",
    "ssim",
    "mae",
    "endpoint_error",
    "jacobian_determinant",
    "folding_fraction",
    "FUSION_METRICS",
    "HIGHER_IS_BETTER",
]

FUSION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "q_abf": q_abf,
    "q_cv": q_cv,
    "q_vif": q_vif,
    "q_s": q_s,
    "q_ssim": q_ssim,
}

HIGHER_IS_BETTER: dict[str, bool] = {
    # fusion
    "q_abf": True,
    "q_cv": False,
    "q_vif": True,
    "q_s": True,
    "q_ssim": True,
    # registration: aligned-image similarity
    "ncc": True,
    "mutual_information": True,
    "normalized_mutual_information": True,
    "ssim": True,
    "mae": False,
    # registration: displacement fields
    "endpoint_error": False,
    "folding_fraction": False,
}
