"""Darcy generator under MPI: the same solution on 1, 2 and 4 ranks, rank groups, errors on every rank."""

import numpy as np
import pytest
from mpi4py import MPI
from mpi_checks import raises_everywhere, verdict

from solvers.surrogates.darcy import DarcySolver, generate_darcy, solve_darcy

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(240)]


@pytest.mark.parametrize("n", [16, 19])
def test_same_solution_on_every_rank_count(n):
    comm = MPI.COMM_WORLD
    ref = None
    if comm.rank == 0:
        a0, ref, _ = solve_darcy(MPI.COMM_SELF, n, 11, rtol=1e-12)
    ok, detail = True, ""
    for size in sorted({2, 4, comm.size} & set(range(2, comm.size + 1))):
        sub = comm.Split(0 if comm.rank < size else MPI.UNDEFINED, comm.rank)
        if sub != MPI.COMM_NULL:
            a, u, info = solve_darcy(sub, n, 11, rtol=1e-12)
            if sub.rank == 0:
                err = np.linalg.norm(u - ref) / np.linalg.norm(ref)
                if not (np.array_equal(a, a0) and err < 1e-10):
                    ok, detail = False, f"{size} ranks: coefficient equal {np.array_equal(a, a0)}, rel err {err:.2e}"
            sub.Free()
    verdict(comm, ok, detail)


def test_distributed_operator_matches_serial():
    comm = MPI.COMM_WORLD
    n = 13
    rng = np.random.default_rng(3)
    a = np.where(rng.random((n, n)) > 0.4, 12.0, 3.0)
    v = rng.standard_normal((n, n))
    with DarcySolver(MPI.COMM_SELF, n) as s:
        ref = s.apply(v, a)
    with DarcySolver(comm, n) as s:
        sl = s.local_slices
        Av = s.apply(np.ascontiguousarray(v[sl]), np.ascontiguousarray(a[sl]))
        dims = s.decomposition.dims
    err = np.abs(Av - ref[sl]).max()
    verdict(comm, err < 1e-9 * np.abs(ref).max(), f"dims {dims}: max err {err:.2e}")


def test_generate_in_rank_groups_matches_one_group(tmp_path_factory):
    comm = MPI.COMM_WORLD
    h5py = pytest.importorskip("h5py")
    base = comm.bcast(str(tmp_path_factory.mktemp("darcy")) if comm.rank == 0 else None)
    generate_darcy(comm, f"{base}/all.h5", 5, 10, seed=2, group_size=comm.size, dtype="float64", rtol=1e-12)
    summary = generate_darcy(comm, f"{base}/groups.h5", 5, 10, seed=2, group_size=1, dtype="float64", rtol=1e-12)
    assert summary["groups"] == comm.size
    ok, detail = True, ""
    if comm.rank == 0:
        with h5py.File(f"{base}/all.h5") as f, h5py.File(f"{base}/groups.h5") as g:
            ok = np.array_equal(f["inputs"][...], g["inputs"][...]) and np.allclose(
                f["outputs"][...], g["outputs"][...], rtol=1e-9, atol=1e-14)
            ok = ok and list(g["seeds"][...]) == [2, 3, 4, 5, 6] and g.attrs["ranks"] == comm.size
            detail = "datasets differ"
    verdict(comm, ok, detail)


def test_errors_on_every_rank(tmp_path_factory):
    comm = MPI.COMM_WORLD
    raises_everywhere(comm, ValueError, lambda: DarcySolver(comm, 16, rtol=1.0 if comm.rank == 1 else 1e-8),
                      match="rtol")
    raises_everywhere(comm, ValueError, lambda: generate_darcy(comm, "x.h5", 2, 8, group_size=comm.size + 1),
                      match="group_size")
    with DarcySolver(comm, 16) as s:
        bad = np.ones(s.local_shape) * (-1.0 if comm.rank == comm.size - 1 else 1.0)
        raises_everywhere(comm, ValueError, lambda: s.solve(bad), match="> 0")
