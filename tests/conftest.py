"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# train.amp=auto / predict measure bf16 against fp32 on CPUs with bf16 instructions and may pick either by
# timing; the suite runs as on a CPU without them (fp32 everywhere, results independent of the machine).
# tests/test_cpu_amp.py sets it per test; subprocesses the tests start inherit it.
os.environ.setdefault("ORGANDETR_CPU_BF16", "0")

# The real-data pack sits beside the checkout (../shared/data); users' machines don't have it.
_DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA = Path(os.environ.get("ORGANDETR_SHARED_DATA", _DEFAULT_SHARED))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test cleanly where it is absent."""
    if not (SHARED_DATA / "totalsegmentator" / "example_ct.nii.gz").is_file():
        pytest.skip(f"real-data pack not found at {SHARED_DATA}")
    return SHARED_DATA
