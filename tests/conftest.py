"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The real-data pack sits beside the checkout (../shared/data); users' machines don't have it.
_DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA = Path(os.environ.get("ORGANDETR_SHARED_DATA", _DEFAULT_SHARED))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test cleanly where it is absent."""
    if not (SHARED_DATA / "totalsegmentator" / "example_ct.nii.gz").is_file():
        pytest.skip(f"real-data pack not found at {SHARED_DATA}")
    return SHARED_DATA
