"""Shared fixtures: location of the project's real data (skipped cleanly when absent), and a
tiny untrained model for tests that check wiring rather than quality.

torch and the model are imported inside the fixtures, so that test modules which never ask
for them do not pay for the import.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BSAFUSION_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def harvard_dir() -> Path:
    """``../shared/data/harvard`` or skip."""
    path = SHARED_DATA / "harvard"
    if not (path / "test_unaligned").is_dir():
        pytest.skip(f"real data not found at {path}")
    return path


@pytest.fixture(scope="session")
def volumes_dir() -> Path:
    """``../shared/data/volumes`` or skip."""
    path = SHARED_DATA / "volumes"
    if not (path / "vm_head_ct.mha").is_file():
        pytest.skip(f"real volumes not found at {path}")
    return path


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    """Six aligned 64x64 MRI/CT phantom pairs in the training layout (``root/CT/{MRI,CT}``)."""
    from bsafusion.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, n_pairs=6, modalities=("CT",), shape=(64, 64), seed=1)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's duration (restored afterwards).

    Tiny models on 2 shared CI cores run several times faster with one thread. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> dict[str, str]:
    """Paths of tiny untrained BSFAF checkpoints, ``{"CT": path, "PET": path}`` (seed 0)."""
    import torch

    from bsafusion.model import checkpoint
    from bsafusion.model import BSFAF, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(img_size=64, channels=8, embed_dim=32, patch_size=8, heads=2, pyramid_channels=(16, 12, 8))
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for modality in ("CT", "PET"):
        paths[modality] = str(folder / f"tiny_{modality}.pt")
        checkpoint.save(paths[modality], BSFAF(cfg), modality)
    return paths
