"""Field conventions, warp/compose/invert/integrate and the synthetic misalignment generator."""

import numpy as np
import pytest
import torch

from bsafusion.deform import (
    compose,
    compose_numpy,
    identity_grid,
    integrate_velocity,
    invert_numpy,
    random_misalignment,
    resize_field,
    smooth_field,
    warp,
    warp_numpy,
)


def _smooth_image(shape, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 3).astype(np.float32)


def test_identity_grid_channel_order_is_xy():
    g = identity_grid((3, 5))[0]
    assert g.shape == (2, 3, 5)
    assert g[0, 1, 4] == 4  # x = column
    assert g[1, 2, 0] == 2  # y = row


def test_warp_pulls_with_positive_x_displacement():
    img = np.zeros((20, 30), np.float32)
    img[5, 7] = 1
    u = np.zeros((2, 20, 30), np.float32)
    u[0], u[1] = 2, 1  # out(p) = img(p + (2, 1)) -> the dot appears at x=5, y=4
    out = warp_numpy(img, u)
    assert tuple(np.argwhere(out > 0.5)[0]) == (4, 5)


def test_warp_3d_channel_order():
    img = np.zeros((6, 7, 8), np.float32)
    img[3, 4, 5] = 1
    u = np.zeros((3, 6, 7, 8), np.float32)
    u[2] = 1  # z displacement only
    assert tuple(np.argwhere(warp_numpy(img, u) > 0.5)[0]) == (2, 4, 5)


def test_compose_equals_warping_twice():
    mis1 = random_misalignment((64, 64), seed=1)
    mis2 = random_misalignment((64, 64), seed=2)
    img = _smooth_image((64, 64))
    twice = warp_numpy(warp_numpy(img, mis1.field, padding="border"), mis2.field, padding="border")
    once = warp_numpy(img, compose_numpy(mis1.field, mis2.field), padding="border")
    inner = (slice(10, -10),) * 2
    assert np.abs(twice - once)[inner].max() < 0.02 * np.ptp(img)
    # a plain sum of the fields is measurably worse: the test would catch it
    summed = warp_numpy(img, mis1.field + mis2.field, padding="border")
    assert np.abs(twice - summed)[inner].max() > np.abs(twice - once)[inner].max()


def test_misalignment_is_exact_and_inverse_recovers_the_grid():
    shape = (96, 96)
    mis = random_misalignment(shape, seed=3)
    assert mis.inverse_residual < 0.05
    grid = identity_grid(shape)[0].numpy()
    # warping the coordinate grid by the field gives exactly p + u(p)
    warped_x = warp_numpy(grid[0], mis.field, padding="border")
    inner = (slice(12, -12),) * 2
    expected = (grid[0] + mis.field[0])[inner]
    ok = (expected > 0) & (expected < shape[1] - 1)
    assert np.abs(warped_x[inner] - expected)[ok].max() < 1e-3
    # the inverse undoes the misalignment of an image
    img = _smooth_image(shape, 4)
    back = warp_numpy(warp_numpy(img, mis.field), mis.inverse)
    assert np.abs(back - img)[(slice(16, -16),) * 2].max() < 0.02 * np.ptp(img)


def test_misalignment_is_seeded():
    a = random_misalignment((32, 32), seed=5).field
    assert np.array_equal(a, random_misalignment((32, 32), seed=5).field)
    assert not np.array_equal(a, random_misalignment((32, 32), seed=6).field)


def test_misalignment_3d():
    mis = random_misalignment((16, 24, 24), seed=0, max_rotation_deg=4)
    assert mis.field.shape == (3, 16, 24, 24)
    assert mis.inverse_residual < 0.05


def test_integrated_velocity_inverse_is_negated_velocity():
    rng = torch.Generator().manual_seed(0)
    v = torch.randn(1, 2, 48, 48, generator=rng)
    for _ in range(3):  # a smooth velocity, no folding
        v = torch.nn.functional.avg_pool2d(v, 9, 1, 4, count_include_pad=False)
    v = v * 3.0 / v.abs().max()
    fwd, bwd = integrate_velocity(v), integrate_velocity(-v)
    residual = compose(fwd, bwd)[..., 8:-8, 8:-8].abs().max()
    assert residual < 0.05
    assert fwd.abs().max() > 0.5  # a real deformation, not a trivial one


def test_invert_numpy_of_translation():
    u = np.zeros((2, 32, 32), np.float32)
    u[0] = 1.5
    v = invert_numpy(u)
    assert np.allclose(v[0], -1.5, atol=1e-4) and np.allclose(v[1], 0, atol=1e-4)


@pytest.mark.parametrize("size", [(32, 32), (64, 48)])
def test_resize_field_rescales_displacements(size):
    # an affine field u = 0.1 * x is scale invariant in relative terms: resampling keeps it affine
    grid = identity_grid((16, 16))
    u = 0.1 * grid
    big = resize_field(u, size)
    expected = 0.1 * identity_grid(size)
    assert torch.allclose(big, expected, atol=1e-4)


def test_smooth_field_keeps_affine_fields_and_removes_pixel_noise():
    # a Gaussian with repeated edge values leaves a constant field exactly as it is and an
    # affine one unchanged away from the borders; pixel-scale noise loses most of its energy
    grid = identity_grid((48, 48))
    constant = torch.full((1, 2, 48, 48), 1.5)
    assert torch.allclose(smooth_field(constant, 4.0), constant, atol=1e-5)
    affine = 0.1 * grid
    assert torch.allclose(smooth_field(affine, 2.0)[..., 8:-8, 8:-8], affine[..., 8:-8, 8:-8], atol=1e-4)
    noise = torch.randn(1, 2, 48, 48, generator=torch.Generator().manual_seed(0))
    assert smooth_field(noise, 2.0).std() < 0.2 * noise.std()
    assert smooth_field(noise, 0.0) is noise


def test_smooth_field_smooths_volumes_along_every_axis():
    field = torch.zeros(1, 3, 9, 9, 9)
    field[0, :, 4, 4, 4] = 1.0
    out = smooth_field(field, 1.0)
    # an impulse spreads symmetrically along depth, height and width, and its sum is kept
    assert torch.allclose(out[0, 0, 3, 4, 4], out[0, 0, 4, 3, 4]) and torch.allclose(out[0, 0, 4, 3, 4], out[0, 0, 4, 4, 3])
    assert out[0, 0, 3, 4, 4] > 0 and abs(float(out[0, 0].sum()) - 1.0) < 1e-5


def test_warp_rejects_mismatched_grids():
    with pytest.raises(ValueError):
        warp(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 9))


@pytest.mark.parametrize("sizes", [(24, 64), (64, 24)], ids=["up", "down"])
def test_image_and_field_resized_together_stay_in_register(sizes):
    """``resize_image`` and ``resize_field`` share one grid convention: no sub-pixel shift.

    An image whose value is each pixel's x coordinate and a field that holds the same
    coordinate must tell the same position after resizing. Resizing the image with
    ``align_corners=False`` shifts it by a third of a pixel (24 <-> 64 px) against the field.
    """
    from bsafusion.deform import resize_field, resize_image

    old, new = sizes
    coords = torch.arange(old, dtype=torch.float32).expand(old, old)
    image = (coords / (old - 1))[None, None]
    field = torch.stack([coords, torch.zeros_like(coords)])[None]
    image_x = resize_image(image, (new, new))[0, 0] * (new - 1)
    field_x = resize_field(field, (new, new))[0, 0]
    assert float((image_x - field_x)[2:-2, 2:-2].abs().max()) < 0.05  # pixels of the new grid
