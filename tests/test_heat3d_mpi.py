"""examples/heat3d.py end to end: parallel result equals the serial solve bit for bit."""

import importlib.util
import os

import pytest
from mpi4py import MPI

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(240, method="thread")]

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "heat3d.py")


def _load():
    spec = importlib.util.spec_from_file_location("heat3d_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("extra", [[], ["--periodic"], ["--no-overlap"]])
def test_heat3d_matches_serial_solve(extra, tmp_path):
    mod = _load()
    png = MPI.COMM_WORLD.bcast(str(tmp_path / "slice.png"), root=0)
    status = mod.main(["--n", "13", "--steps", "12", "--check", "--png", png] + extra)
    assert status == 0
    if MPI.COMM_WORLD.rank == 0:
        assert os.path.getsize(png) > 1000


def test_shell_slabs_cover_the_boundary_layer_once():
    import numpy as np

    mod = _load()
    for n in [(1, 1, 1), (2, 3, 1), (5, 4, 6), (3, 3, 3)]:
        count = np.zeros(tuple(m + 2 for m in n), int)
        for s in mod.shell_slabs(n):
            count[s] += 1
        inner = np.zeros_like(count)
        inner[tuple(slice(2, max(2, m)) for m in n)] = 1
        interior = np.zeros_like(count)
        interior[tuple(slice(1, m + 1) for m in n)] = 1
        covered = count + inner
        assert np.all(covered[interior == 1] >= 1) and np.all(covered[interior == 0] == 0)
        if min(n) > 1:
            assert np.all(covered[interior == 1] == 1)
