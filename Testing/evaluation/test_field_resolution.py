"""The coarse-grid fit of ``Testing/benchmarks/field_resolution.py``: units kept, finer grids fit better."""

import numpy as np
import torch
from benchmark_scripts import load_benchmark

from bsafusion.deform import identity_grid, random_elastic_field


def test_a_coarse_fit_keeps_displacements_in_image_pixels():
    fit = load_benchmark("field_resolution").fit_on_grid
    constant = torch.full((1, 2, 64, 64), 3.0)
    assert torch.allclose(fit(constant, 16), constant, atol=1e-5)
    affine = 0.05 * identity_grid((64, 64))
    assert torch.allclose(fit(affine, 32)[..., 4:-4, 4:-4], affine[..., 4:-4, 4:-4], atol=0.02)


def test_finer_grids_fit_a_smooth_field_better():
    fit = load_benchmark("field_resolution").fit_on_grid
    field = torch.from_numpy(random_elastic_field((64, 64), np.random.default_rng(0), 6.0, 0.125))[None].float()
    errors = [float((fit(field, s) - field).norm(dim=1).mean()) for s in (8, 16, 32)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.2 * errors[0]
