"""The field agreement of ``Testing/benchmarks/field_response.py``: gain and cosine mean what they say."""

import numpy as np
import pytest
import torch
from benchmark_scripts import load_benchmark

from bsafusion.deform import random_elastic_field


def _field(seed: int) -> torch.Tensor:
    return torch.from_numpy(random_elastic_field((48, 48), np.random.default_rng(seed), 4.0, 0.125))[None].float()


def test_gain_is_the_share_of_the_true_field_recovered():
    agreement = load_benchmark("field_response").agreement
    truth = _field(0)
    half = agreement(0.5 * truth, truth)
    assert half.gain == pytest.approx(0.5, abs=1e-6) and half.cosine == pytest.approx(1.0, abs=1e-6)
    reversed_ = agreement(-truth, truth)
    assert reversed_.gain == pytest.approx(-1.0, abs=1e-6) and reversed_.cosine == pytest.approx(-1.0, abs=1e-6)


def test_a_field_unrelated_to_the_truth_has_no_gain_whatever_its_length():
    agreement = load_benchmark("field_response").agreement
    truth, other = _field(0), _field(1)
    other = other - (other.flatten() @ truth.flatten()) / (truth.flatten() @ truth.flatten()) * truth  # orthogonal to the truth
    unrelated = agreement(3.0 * other, truth)
    assert abs(unrelated.gain) < 1e-5 and abs(unrelated.cosine) < 1e-5
    assert agreement(torch.zeros_like(truth), truth).gain == 0.0
    with pytest.raises(ValueError, match="zero"):
        agreement(truth, torch.zeros_like(truth))
