"""Darcy data generator (serial): PCG against a direct solve, a manufactured solution, the GRF, HDF5 output."""

import numpy as np
import pytest
from mpi4py import MPI

from solvers.surrogates.darcy import (
    DarcySolver,
    cosine_basis,
    darcy_coefficient,
    generate_darcy,
    grf_coefficients,
    solve_darcy,
)


def dense_operator(a, face="harmonic"):
    """Oracle: the cell-centred 5-point matrix of -div(a grad u), u = 0 on the boundary, assembled
    entry by entry (scipy.sparse where available, else dense NumPy)."""
    n0, n1 = a.shape
    h0, h1 = 1.0 / n0, 1.0 / n1
    assert h0 == h1
    h = h0
    rows, cols, vals = [], [], []

    def fc(p, q):
        return 2 * p * q / (p + q) if face == "harmonic" else (p + q) / 2

    for i in range(n0):
        for j in range(n1):
            k = i * n1 + j
            diag = 0.0
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                ii, jj = i + di, j + dj
                if 0 <= ii < n0 and 0 <= jj < n1:
                    c = fc(a[i, j], a[ii, jj]) / h**2
                    rows.append(k)
                    cols.append(ii * n1 + jj)
                    vals.append(-c)
                else:
                    c = 2 * a[i, j] / h**2
                diag += c
            rows.append(k)
            cols.append(k)
            vals.append(diag)
    try:
        import scipy.sparse as sp

        return sp.csr_matrix((vals, (rows, cols)), shape=(n0 * n1, n0 * n1)), True
    except ImportError:
        A = np.zeros((n0 * n1, n0 * n1))
        np.add.at(A, (rows, cols), vals)
        return A, False


def direct_solve(a, f, face="harmonic"):
    A, sparse = dense_operator(a, face)
    if sparse:
        import scipy.sparse.linalg as spl

        return spl.spsolve(A.tocsc(), f.reshape(-1)).reshape(a.shape)
    return np.linalg.solve(A, f.reshape(-1)).reshape(a.shape)


@pytest.mark.parametrize("n", [7, 16, 21])
@pytest.mark.parametrize("face", ["harmonic", "arithmetic"])
def test_cg_matches_direct_solve(n, face):
    rng = np.random.default_rng(n)
    a = np.where(rng.random((n, n)) > 0.5, 12.0, 3.0) * (1 + 0.1 * rng.random((n, n)))
    f = 1.0 + rng.random((n, n))
    with DarcySolver(MPI.COMM_SELF, n, rtol=1e-12, face=face) as s:
        u, info = s.solve(a, f)
        Au = s.apply(u, a)
    ref = direct_solve(a, f, face)
    assert info.residual <= 1e-12 and info.iterations > 1
    assert np.linalg.norm(u - ref) <= 1e-10 * np.linalg.norm(ref)
    A, sparse = dense_operator(a, face)
    assert np.allclose(Au.reshape(-1), A @ u.reshape(-1), rtol=1e-12, atol=1e-9)


def test_manufactured_solution_second_order():
    # constant a: u = sin(pi x) sin(pi y) solves -a lap u = 2 pi^2 a u, u = 0 on the boundary
    errors = []
    for n in (16, 32, 64):
        x = (np.arange(n) + 0.5) / n
        exact = np.outer(np.sin(np.pi * x), np.sin(np.pi * x))
        a = np.full((n, n), 5.0)
        with DarcySolver(MPI.COMM_SELF, n, rtol=1e-12) as s:
            u, _ = s.solve(a, 2 * np.pi**2 * 5.0 * exact)
        errors.append(np.abs(u - exact).max())
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert errors[-1] < 2e-3
    assert np.all(rates > 1.8), (errors, rates)


def test_grf_coefficients_and_threshold():
    c1, c2 = grf_coefficients(5, 16), grf_coefficients(5, 16)
    assert np.array_equal(c1, c2) and c1[0, 0] == 0.0
    assert not np.array_equal(c1, grf_coefficients(6, 16))
    # decay of the spectrum: (pi^2 |k|^2 + 9)^-1 for alpha = 2
    k = np.arange(16)
    coef = 3.0 * (np.pi**2 * (k[:, None] ** 2 + k[None, :] ** 2) + 9.0) ** -1.0
    rng = np.random.default_rng(5)
    xi = rng.standard_normal((16, 16))
    ref = xi * coef
    ref[0, 0] = 0
    assert np.allclose(c1, ref)
    a = darcy_coefficient(5, 24, n_modes=16)
    assert set(np.unique(a)) <= {3.0, 12.0} and 0.1 < (a == 12).mean() < 0.9
    part = darcy_coefficient(5, 24, n_modes=16, slices=(slice(3, 10), slice(11, 24)))
    assert np.array_equal(part, a[3:10, 11:24])
    b = cosine_basis(4, 8)
    assert b.shape == (4, 8) and np.allclose(b[0], 1) and np.allclose(b[1], np.cos(np.pi * (np.arange(8) + 0.5) / 8))


def test_same_field_at_two_resolutions():
    # the series is evaluated at cell centres: coarse centre (i + 1/2)/16 is fine centre (3i + 1 + 1/2)/48
    coarse = darcy_coefficient(9, 16)
    fine = darcy_coefficient(9, 48)
    assert np.array_equal(coarse, fine[1::3, 1::3])
    assert not np.array_equal(coarse, darcy_coefficient(10, 16))


def test_bad_arguments():
    with pytest.raises(ValueError, match="resolution"):
        DarcySolver(MPI.COMM_SELF, 1)
    with pytest.raises(ValueError, match="method"):
        DarcySolver(MPI.COMM_SELF, 8, method="gmres")
    with pytest.raises(ValueError, match="face"):
        DarcySolver(MPI.COMM_SELF, 8, face="geometric")
    with DarcySolver(MPI.COMM_SELF, 8) as s:
        with pytest.raises(ValueError, match="a_local"):
            s.solve(np.ones((8, 9)))
        with pytest.raises(ValueError, match="> 0"):
            s.solve(-np.ones((8, 8)))
    with DarcySolver(MPI.COMM_SELF, 32, max_iterations=3) as s:
        with pytest.raises(RuntimeError, match="did not converge"):
            s.solve(np.full((32, 32), 3.0))


def test_petsc_agrees_with_cg():
    pytest.importorskip("petsc4py", reason="petsc4py is not installed: the PETSc KSP path is not checked here")
    a, u, _ = solve_darcy(MPI.COMM_SELF, 20, 4, rtol=1e-12)
    a2, u2, info = solve_darcy(MPI.COMM_SELF, 20, 4, method="petsc", rtol=1e-12)
    assert info.method == "petsc" and np.array_equal(a, a2)
    assert np.linalg.norm(u - u2) <= 1e-9 * np.linalg.norm(u)


def test_generate_writes_dataset(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "d.h5"
    summary = generate_darcy(MPI.COMM_SELF, str(path), 3, 12, seed=7, dtype="float64")
    assert summary["samples"] == 3 and summary["groups"] == 1
    with h5py.File(path, "r") as f:
        assert f["inputs"].shape == (3, 12, 12) and f["outputs"].shape == (3, 12, 12)
        assert list(f["seeds"][...]) == [7, 8, 9]
        assert f.attrs["resolution"] == 12 and f.attrs["problem"] == "darcy"
        assert "harmonic" in f.attrs["discretization"]
        a1, u1 = f["inputs"][1], f["outputs"][1]
    a, u, _ = solve_darcy(MPI.COMM_SELF, 12, 8)
    assert np.array_equal(a, a1)
    assert np.allclose(u, u1, rtol=1e-8, atol=1e-12)
    assert np.all(u1 > 0)
