"""comms.HaloExchange on one rank: every exchanged direction is an in-field periodic copy.

On ``MPI.COMM_SELF`` each rank is its own neighbour on every periodic axis, so the
whole exchange is the in-field copy path (including the whole-run item views used
for slabs along the last axis). References: the same global-array check as the
MPI tests, and ``np.pad(mode="wrap")`` for a fully periodic box stencil.
"""

import numpy as np
import pytest
from mpi4py import MPI
from test_halo_mpi import _run_case

from comms import CartDecomposition, HaloExchange

pytestmark = pytest.mark.timeout(120, method="thread")


@pytest.mark.parametrize("variant", ["datatype", "pack"])
@pytest.mark.parametrize("seed", range(24))
def test_random_cases_on_one_rank(seed, variant):
    _run_case(MPI.COMM_SELF, seed, variant)


@pytest.mark.parametrize("dtype,comps", [(np.float64, ()), (np.uint8, (3,)), (np.int16, (2, 3)),
                                         (np.complex128, ()), (np.float32, (5,))])
@pytest.mark.parametrize("ghost", [(1, 1, 1), (3, 2, 1), (2, 1, 3), (1, 2, 0)])
def test_box_equals_wrap_padding(dtype, comps, ghost):
    shape = (5, 7, 6)
    rng = np.random.default_rng(sum(ghost) + len(comps))
    interior = rng.integers(0, 100, size=shape + comps).astype(dtype)
    with CartDecomposition(MPI.COMM_SELF, shape, periodic=True) as d:
        with HaloExchange(d, ghost=ghost, stencil="box", method="pack") as h:
            field = np.full(h.full_shape + comps, 99, dtype=dtype)
            field[tuple(slice(g, g + n) for g, n in zip(ghost, shape))] = interior
            h.exchange(field)
    expected = np.pad(interior, [(g, g) for g in ghost] + [(0, 0)] * len(comps), mode="wrap")
    np.testing.assert_array_equal(field, expected)
