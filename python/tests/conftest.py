"""Shared fixtures of the fp4swift pytest suite. Numeric references live in reference.py."""
from __future__ import annotations

import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fp4swift as f4  # noqa: E402


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test's name: fresh data per test, reproducible per run."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture
def restore_threads():
    """Restores the library's thread count after a test that changes it."""
    n = f4.get_num_threads()
    yield
    f4.set_num_threads(n)
