"""The volume pipeline's pre-alignment settings: the bounded metric sample and its accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from bsafusion.errors import InputError
from bsafusion.inference.prealign import ClassicalSettings, _sampling_per_level, check_settings, prealign_affine
from bsafusion.inference.volume import PREALIGN_SAMPLES, prealign_settings
from bsafusion.phantom import phantom_pair

SHAPE = (48, 96, 96)  # (D, H, W): 442 368 voxels at the pipeline's 2.5 mm, so the bound binds
SPACING = (2.5, 2.5, 2.5)


def test_max_samples_bounds_only_the_levels_above_it() -> None:
    image = sitk.Image([128, 128, 75], sitk.sitkFloat32)  # a 2.5 mm head; levels 4, 2, 1
    voxels = [32 * 32 * 19, 64 * 64 * 38, 128 * 128 * 75]
    unbounded = _sampling_per_level(image, ClassicalSettings())
    bounded = _sampling_per_level(image, ClassicalSettings(max_samples=25_000))
    assert unbounded == pytest.approx([0.25, 0.25, 0.25])
    assert bounded == pytest.approx([0.25, 25_000 / voxels[1], 25_000 / voxels[2]])  # 4 864 samples stay
    # where the two bounds cross, min_samples wins: a level never gets fewer samples than that
    assert _sampling_per_level(image, ClassicalSettings(max_samples=1_000))[0] == pytest.approx(4096 / voxels[0])


def test_max_samples_must_be_positive() -> None:
    with pytest.raises(InputError, match="max_samples"):
        check_settings(ClassicalSettings(max_samples=0), ndim=3, bspline=False)


def test_the_bound_grows_when_the_moving_volume_covers_a_small_part_of_the_fixed_one() -> None:
    """Samples outside the moving volume do not count: a slab covering a tenth of the fixed
    extent gets ten times the bound, so that about as many samples land inside it."""
    fixed = sitk.Image([100, 100, 50], sitk.sitkFloat32)
    fixed.SetSpacing((2.0, 2.0, 4.0))
    slab = sitk.Image([200, 200, 10], sitk.sitkFloat32)
    slab.SetSpacing((1.0, 1.0, 2.0))  # 200 x 200 x 20 mm of 200 x 200 x 200 mm
    assert prealign_settings(fixed, fixed).max_samples == PREALIGN_SAMPLES
    assert prealign_settings(fixed, slab).max_samples == pytest.approx(10 * PREALIGN_SAMPLES, rel=1e-6)
    assert prealign_settings(slab, fixed).max_samples == PREALIGN_SAMPLES  # a larger moving one: no change


def test_pipeline_settings_recover_a_known_rigid_offset() -> None:
    """MRI/CT phantom at the pipeline's working resolution; the CT's geometry moved by 6 and -4
    degrees and (7, -5, 4) mm. With the bounded sample (the finest level samples 25 000 of
    442 368 voxels instead of a quarter) the error stays well below a voxel."""
    pair = phantom_pair("CT", SHAPE, seed=2)
    fixed = sitk.GetImageFromArray(pair.mri.astype(np.float32))
    fixed.SetSpacing(SPACING)
    fixed.SetOrigin((-120.0, -120.0, -60.0))
    # SimpleITK's Euler angles compose as Rz @ Rx @ Ry: 6 degrees about z after -4 about x
    euler = sitk.Euler3DTransform((0.0, 0.0, 0.0), np.radians(-4.0), 0.0, np.radians(6.0))
    motion = np.asarray(euler.GetMatrix()).reshape(3, 3)
    centre = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()]))
    origin_m = motion @ (np.asarray(fixed.GetOrigin()) - centre) + centre + np.array([7.0, -5.0, 4.0])
    moving = sitk.GetImageFromArray(pair.other.astype(np.float32))
    moving.SetSpacing(SPACING)
    moving.SetOrigin(tuple(origin_m))
    moving.SetDirection(tuple(motion.ravel()))
    settings = prealign_settings(fixed, moving)
    assert _sampling_per_level(fixed, settings)[-1] < settings.sampling_fraction / 4

    estimate = prealign_affine(fixed, moving, rigid=True, initializer="moments", settings=settings)
    z, y, x = np.nonzero(pair.labels[:, ::4, ::4] > 0)
    points = np.array([fixed.TransformIndexToPhysicalPoint((int(i) * 4, int(j) * 4, int(k)))
                       for i, j, k in zip(x, y, z)])
    truth = origin_m + (points - np.asarray(fixed.GetOrigin())) @ motion.T
    error = np.linalg.norm(np.array([estimate.TransformPoint(tuple(p)) for p in points]) - truth, axis=1)
    start = np.linalg.norm(points - truth, axis=1)
    assert start.mean() > 8.0  # the offset is real
    assert error.mean() < 0.75, f"mean error {error.mean():.2f} mm (voxels are 2.5 mm)"
