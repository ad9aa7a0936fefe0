"""Shared fixtures: location of the project's real data (skipped cleanly when absent)."""

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
