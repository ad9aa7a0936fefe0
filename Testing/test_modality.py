"""The modality table is the one source every modality check and per-modality choice reads."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bsafusion import InputError, modality
from bsafusion.evaluation.baselines import ClassicalSettings
from bsafusion.evaluation.cases import UnalignedCaseDataset
from bsafusion.inference import Fuser
from bsafusion.inference.intensity import intensity_range
from bsafusion.inference.refine import default_settings
from bsafusion.inference.volume import register_and_fuse_volumes
from bsafusion.model import checkpoint
from bsafusion.phantom import phantom_pair
from bsafusion.slicer_support import validate_parameters
from bsafusion.training.data import AlignedPairDataset

ONE_MESSAGE = re.compile(r"^unknown modality 'XR'; choose one of (MRI, )?CT, PET, SPECT$")


def test_class_indices_are_those_of_the_shipped_classifier():
    assert modality.CLASS_NAMES == ("CT", "PET", "SPECT", "MRI")
    assert all(modality.CLASS_NAMES[m.class_index] == m.name for m in modality.TABLE)
    assert modality.ALL == ("MRI", "CT", "PET", "SPECT")  # seeds the phantom's streams
    assert modality.MOVING == ("CT", "PET", "SPECT") and modality.COLOUR == ("PET", "SPECT")


def test_lookup_ignores_case_and_space_and_moving_excludes_mri():
    assert modality.get(" spect ").name == "SPECT" and modality.get("mri").class_index == 3
    with pytest.raises(InputError, match=r"choose one of CT, PET, SPECT$"):
        modality.moving("MRI")


@pytest.mark.parametrize("check", [
    lambda tmp: modality.get("XR"),
    lambda tmp: checkpoint.default_weights_path("XR"),
    lambda tmp: Fuser("XR"),
    lambda tmp: default_settings("XR"),
    lambda tmp: intensity_range(np.ones(3), "XR"),
    lambda tmp: phantom_pair("XR", (32, 32)),
    lambda tmp: validate_parameters("XR", ""),
    lambda tmp: ClassicalSettings.for_modality("XR"),
    lambda tmp: AlignedPairDataset(tmp, "XR"),
    lambda tmp: UnalignedCaseDataset(tmp, "XR"),
    lambda tmp: register_and_fuse_volumes(None, None, "XR"),
], ids=["table", "weights", "fuser", "refine", "intensity", "phantom", "slicer", "baseline", "training", "cases", "volume"])
def test_every_check_reads_the_table_and_says_one_thing(check, tmp_path: Path):
    with pytest.raises(InputError) as info:
        check(tmp_path)
    assert ONE_MESSAGE.match(str(info.value)), str(info.value)
