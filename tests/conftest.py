"""Shared fixtures: random generators, the typezoo, and GPU availability."""

import zlib

import numpy as np
import pytest

from hpcore.arrays import cupy_or_none


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name, so failures reproduce."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def cupy():
    cp = cupy_or_none()
    if cp is None:
        pytest.skip("no CuPy / CUDA device on this machine")
    return cp
