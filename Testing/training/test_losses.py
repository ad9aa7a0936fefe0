"""The differentiable Chen-Varshney, VIFF and edge terms against the Q_CV, Q_VIF and Q_AB/F metrics they train for."""

import numpy as np
import torch
from scipy import ndimage

from bsafusion.evaluation.metrics.fusion import q_abf, q_cv, q_vif
from bsafusion.training.losses import chen_varshney, edge_preservation, sobel_magnitude, stronger_edges, viff


def _images(size: int = 256) -> list[np.ndarray]:
    """Three smooth images that are black at the border, as brain slices are."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:size, :size] / size
    disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.16
    return [ndimage.gaussian_filter(rng.random((size, size)), 3) * disc for _ in range(3)]


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float64))[None, None]


def _descend(loss, start: np.ndarray, a: np.ndarray, b: np.ndarray, steps: int, lr: float, dtype=torch.float32) -> np.ndarray:
    """``start`` after ``steps`` Adam steps on ``loss(fused, a, b)``; every gradient must be finite."""
    f = _tensor(start).to(dtype).requires_grad_(True)
    ta, tb = _tensor(a).to(dtype), _tensor(b).to(dtype)
    optimiser = torch.optim.Adam([f], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        loss(f, ta, tb).sum().backward()
        assert torch.isfinite(f.grad).all()
        optimiser.step()
    return f.detach()[0, 0].double().numpy()


def test_chen_varshney_is_q_cv_in_unit_intensities():
    fused, a, b = _images()
    expected = q_cv(fused, a, b) / 255.0**2
    assert abs(float(chen_varshney(*map(_tensor, (fused, a, b)))) - expected) < 0.01 * expected


def test_a_crop_is_filtered_as_the_full_image_would_be():
    """The same 128-pixel block scores alike whether it is a crop or a quarter of a 256 image."""
    fused, a, b = (np.tile(x[64:192, 64:192], (2, 2)) for x in _images())
    crop = chen_varshney(*(_tensor(x[:128, :128]) for x in (fused, a, b)))
    whole = chen_varshney(*map(_tensor, (fused, a, b)))
    assert abs(float(crop) - float(whole)) < 0.01 * float(whole)


def test_descending_it_lowers_q_cv():
    fused, a, b = _images()
    result = _descend(chen_varshney, fused, a, b, steps=20, lr=0.01, dtype=torch.float64)
    assert q_cv(result, a, b) < 0.5 * q_cv(fused, a, b)


def test_viff_is_q_vif():
    fused, a, b = _images()
    fused = 0.6 * fused + 0.3 * a  # distinct gains from the two sources
    expected = q_vif(fused, a, b)
    assert abs(float(viff(*map(_tensor, (fused, a, b)))) - expected) < 1e-3 * expected


def test_ascending_viff_raises_q_vif():
    _, a, b = _images(128)
    result = _descend(lambda f, x, y: -viff(f, x, y), 0.5 * (a + b), a, b, steps=20, lr=0.005)
    assert q_vif(result, a, b) > q_vif(0.5 * (a + b), a, b) + 0.05


def test_stronger_edges_matches_the_vector_where_the_gradient_term_matches_the_magnitude():
    _, a, b = _images(128)
    a, b = 2.0 * a, 0.5 * b  # A's edges are the stronger ones almost everywhere
    ta, tb = _tensor(a), _tensor(b)
    assert float(stronger_edges(ta, ta, tb)) < 0.05 * float(stronger_edges(tb, ta, tb))
    # A with its polarity flipped has A's edge magnitudes but the opposite vectors
    blank = torch.zeros_like(ta)
    flipped = _tensor(a.max() - a)
    assert float((sobel_magnitude(flipped) - sobel_magnitude(ta)).abs().max()) < 1e-9
    assert float(stronger_edges(ta, ta, blank)) == 0.0
    assert float(stronger_edges(flipped, ta, blank)) > 0.5 * float(sobel_magnitude(ta).mean())


def test_descending_stronger_edges_raises_q_abf():
    _, a, b = _images(128)
    start = 0.5 * (a + b)
    result = _descend(stronger_edges, start, a, b, steps=30, lr=0.005)
    assert q_abf(result, a, b) > q_abf(start, a, b) + 0.05


def test_edge_preservation_is_q_abf():
    fused, a, b = _images()
    # the black border and a quantised image: vanishing and exactly vertical gradients included
    for f in (fused, 0.6 * fused + 0.3 * a, np.maximum(a, b), np.round(255 * (0.7 * a + 0.3 * b)) / 255):
        expected = q_abf(f, a, b)
        assert abs(float(edge_preservation(*map(_tensor, (f, a, b)))) - expected) < 1e-4


def test_ascending_edge_preservation_raises_q_abf_with_finite_gradients():
    _, a, b = _images(128)
    start = 0.5 * (a + b)
    result = _descend(lambda f, x, y: -edge_preservation(f, x, y), start, a, b, steps=30, lr=0.005)
    assert q_abf(result, a, b) > q_abf(start, a, b) + 0.05
