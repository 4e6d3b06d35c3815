"""flux_transport numerics: grid, harmonics, operators (order, conservation), time integrators."""

import math

import numpy as np
import pytest
from mpi4py import MPI

from solvers.flux_transport.flows import FlowModel
from solvers.flux_transport.grid import SphereGrid
from solvers.flux_transport.initial import balance_flux, bipolar_map, real_harmonic, soccer_ball
from solvers.flux_transport.operators import AdvectionOperator, DiffusionOperator
from solvers.flux_transport.parallel import GHOST, Domain, split_realizations
from solvers.flux_transport.timestepping import (
    max_ratio,
    reference_integrate,
    ssprk43,
    sts_coefficients,
    sts_stages,
    sts_step,
    subcycles,
)


def _weights(grid):
    """HipFT's cell weights ``da_t da_p`` (its diagnostics integrate with them; its operators conserve in them)."""
    return (grid.diag_theta[0][:, None] * grid.diag_phi[0][None, :])[:, :, None]


def _exchanger(d):
    return lambda *a: d.halo.exchange(*[x.reshape(d.padded_shape) for x in a])


# ---------------------------------------------------------------------------- grid and harmonics


def test_grid_areas_sum_to_sphere():
    for nt, nphi in ((5, 4), (180, 359), (181, 360), (512, 1023)):
        g = SphereGrid(nt, nphi)
        assert g.total_area() == pytest.approx(4 * math.pi, rel=1e-13)
        assert g.theta[0] == 0.0 and g.theta[-1] == math.pi
        assert g.file_phi[-1] == pytest.approx(2 * math.pi, abs=0)


def test_grid_from_scales_and_refusals():
    g = SphereGrid(91, 180)
    assert SphereGrid.from_scales(g.file_phi, g.file_theta) == g
    with pytest.raises(ValueError, match="phi scale"):
        SphereGrid.from_scales(g.file_phi[:-1], g.file_theta)
    with pytest.raises(ValueError, match="theta scale"):
        SphereGrid.from_scales(g.file_phi, g.file_theta[1:])
    bent = g.file_theta.copy()
    bent[10] += 1e-3
    with pytest.raises(ValueError, match="not uniform"):
        SphereGrid.from_scales(g.file_phi, bent)
    with pytest.raises(ValueError, match="ntheta"):
        SphereGrid(4, 10)
    with pytest.raises(TypeError):
        SphereGrid(10.0, 10)


def test_real_harmonics_orthonormal_and_known_values():
    # Gauss-Legendre in cos(theta) x uniform phi integrates products of Y_l^m (l <= 6) exactly
    x, w = np.polynomial.legendre.leggauss(16)
    theta = np.arccos(x)
    phi = np.arange(32) * 2 * np.pi / 32
    T, P = np.meshgrid(theta, phi, indexing="ij")
    W = w[:, None] * (2 * np.pi / 32)
    ys = {(l, m): real_harmonic(l, m, T, P) for l, m in ((6, 0), (6, 5), (6, -5), (1, 0), (3, 2))}
    for a, ya in ys.items():
        for b, yb in ys.items():
            assert np.sum(ya * yb * W) == pytest.approx(1.0 if a == b else 0.0, abs=1e-12)
    t = np.linspace(0, np.pi, 7)
    assert np.allclose(real_harmonic(1, 0, t, 0 * t), math.sqrt(3 / (4 * math.pi)) * np.cos(t), atol=1e-15)
    c = np.cos(t)
    y60 = math.sqrt(13 / (4 * math.pi)) / 16 * (231 * c ** 6 - 315 * c ** 4 + 105 * c ** 2 - 5)
    assert np.allclose(real_harmonic(6, 0, t, 0 * t), y60, atol=1e-13)


# ---------------------------------------------------------------------------- operators on one rank


def _domain(grid, nr=1):
    return Domain(MPI.COMM_SELF, grid, nr, halo_method="pack")


def _padded(domain, values):
    """Padded flat array of ``values`` (ntheta, nphi, nr) with ghosts filled (one rank)."""
    R, C, nr = domain.padded_shape
    f = np.zeros(R * C * nr)
    f3 = f.reshape(R, C, nr)
    g = GHOST
    f3[g:-g, g:-g] = values
    domain.halo.exchange(f3)
    return f


def _interior(domain, flat):
    g = GHOST
    return flat.reshape(domain.padded_shape)[g:-g, g:-g]


def _diffusion_error(nt, nphi):
    grid = SphereGrid(nt, nphi)
    d = _domain(grid)
    try:
        op = DiffusionOperator(d, grid, np.array([1.0]))
        f0 = soccer_ball(grid)
        F = _padded(d, f0[:, :, None])
        Y = np.zeros_like(F)
        op.apply(F, Y)
        y = _interior(d, Y)[:, :, 0]
        return np.sqrt(np.sum((y + 42 * f0) ** 2) / np.sum(f0 ** 2)) / 42
    finally:
        d.free()


def test_diffusion_operator_soccer_ball_second_order():
    errs = [_diffusion_error(nt, nphi) for nt, nphi in ((46, 90), (91, 180), (181, 360))]
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(1.9 < o < 2.1 for o in orders), (errs, orders)
    # the 360 x 180 validation grid: relative error of the eigenvalue -42, about 1e-3
    assert _diffusion_error(180, 359) < 1.05e-3


def test_diffusion_conserves_flux_and_spares_constants(rng):
    grid = SphereGrid(37, 48)
    d = _domain(grid, nr=3)
    try:
        eta = np.array([1.0, 2.5, 0.1])
        op = DiffusionOperator(d, grid, eta)
        vals = rng.standard_normal((37, 48, 3))
        vals[0] = vals[0].mean(axis=0)
        vals[-1] = vals[-1].mean(axis=0)
        F = _padded(d, vals)
        Y = np.zeros_like(F)
        op.apply(F, Y)
        y = _interior(d, Y)
        area = _weights(grid)
        total = np.abs(vals * area).sum(axis=(0, 1))
        assert np.all(np.abs((y * area).sum(axis=(0, 1))) < 1e-12 * total * np.abs(y).max())
        assert np.all(y[0] == y[0, :1]) and np.all(y[-1] == y[-1, :1])  # caps stay single values
        F = _padded(d, np.full((37, 48, 3), 7.0))
        op.apply(F, Y)
        assert np.abs(_interior(d, Y)).max() < 1e-9
    finally:
        d.free()


def test_advection_conserves_flux(rng):
    grid = SphereGrid(37, 48)
    d = _domain(grid, nr=2)
    try:
        flows = FlowModel(2, dr=np.array([[46.0, 60], [-262, -200], [-379, -300]]) * 100,
                          mf=np.array([[22.0, 30], [11, 11], [-28, -20]]) * 100, vt_const=0.01,
                          attenuate_gauss=np.array([2.0, 0.5]))
        op = AdvectionOperator(d, grid, flows)
        vals = rng.standard_normal((37, 48, 2))
        vals[0] = vals[0].mean(axis=0)
        vals[-1] = vals[-1].mean(axis=0)
        F = _padded(d, vals)
        rate = op.prepare(F, _exchanger(d))
        Y = np.zeros_like(F)
        op.apply(F, Y)
        y = _interior(d, Y)
        area = _weights(grid)
        scale = (np.abs(y) * area).sum(axis=(0, 1))
        assert np.all(np.abs((y * area).sum(axis=(0, 1))) < 1e-13 * scale)
        assert np.all(y[0] == y[0, :1]) and np.all(y[-1] == y[-1, :1])
        assert rate > 0 and op.unattenuated_rate() >= rate
    finally:
        d.free()


def _rotate(nt, nphi, turns):
    """Rigid rotation of the soccer ball by ``turns`` of a turn at CFL ~0.6; returns the max error."""
    grid = SphereGrid(nt, nphi)
    d = _domain(grid)
    try:
        omega_kms = 2.0  # km/s
        op = AdvectionOperator(d, grid, FlowModel(1, rigid_omega=omega_kms))
        f = _padded(d, soccer_ball(grid)[:, :, None])
        rate = omega_kms * 5.172413793103448e-3  # rad/h
        period = 2 * math.pi / rate
        nsteps = int(round(turns * period / (0.6 * grid.dphi / rate)))
        dt = turns * period / nsteps
        f1, y = np.zeros_like(f), np.zeros_like(f)

        def rhs(u, out):
            d.halo.exchange(u.reshape(d.padded_shape))
            op.apply(u, out)

        d.halo.exchange(f.reshape(d.padded_shape))
        op.prepare(f, _exchanger(d))
        for _ in range(nsteps):
            ssprk43(np, f, dt, rhs, f1, y)
        exact = soccer_ball(grid, phase=turns * 2 * math.pi)
        return np.abs(_interior(d, f)[:, :, 0] - exact).max()
    finally:
        d.free()


def test_weno3_rotation_close_to_third_order():
    errs = [_rotate(nt, nphi, 0.25) for nt, nphi in ((23, 40), (45, 80), (89, 160))]
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert orders[-1] > 2.7, (errs, orders)


# ---------------------------------------------------------------------------- time integrators


def test_sts_stage_rule():
    assert sts_stages(0.0) == 3 and sts_stages(1e-9, "rkl2") == 3
    for r in (0.5, 3.0, 17.0, 133.0, 1e4):
        for method in ("rkg2", "rkl2"):
            s = sts_stages(r, method)
            assert s >= 3 and s % 2 == 1
            assert max_ratio(s, method) >= r - 1e-9
    # HipFT's formula for RKG2: s = ceil((sqrt(25 + 24 r) - 3) / 2), made odd
    assert sts_stages(133.0) == 27
    assert subcycles(133.0, 75) == 1 and subcycles(1e5, 75) > 1
    n = subcycles(1e5, 31)
    assert sts_stages(1e5 / n) <= 31 and sts_stages(1e5 / (n - 1)) > 31


def test_rkg2_coefficients_match_hipft_first_stages():
    c = sts_coefficients(9, "rkg2")
    w = 6.0 / (13 * 8)
    assert c.mut[1] == pytest.approx(w)
    assert (c.mu[2], c.nu[2], c.gam[2]) == pytest.approx((0.5, -0.1, 0.0))
    c = sts_coefficients(9, "rkl2")
    w = 4.0 / (81 + 9 - 2)
    assert c.mut[1] == pytest.approx(w / 3) and (c.mu[2], c.nu[2]) == pytest.approx((1.5, -0.5))
    assert c.gam[2] == pytest.approx(-w)


@pytest.mark.parametrize("method", ["rkg2", "rkl2"])
def test_sts_stable_and_second_order_on_a_stiff_diagonal_system(method):
    lam = -np.geomspace(1e-3, 2.0, 200)  # explicit Euler limit dt_exp = 1
    op = lambda u: lam * u  # noqa: E731
    for ratio in (5.0, 60.0, 500.0):
        s = sts_stages(ratio, method)
        c = sts_coefficients(s, method)
        out = reference_integrate(np.ones_like(lam), ratio, op, c)
        assert np.all(np.abs(out) <= 1.0 + 1e-12)  # stable over the whole spectrum
    # second order in time: integrate u' = -0.7 u to t = 1 in n steps, stages fixed
    c = sts_coefficients(9, method)
    errs = []
    for n in (4, 8, 16):
        u = np.ones(1)
        for _ in range(n):
            u = reference_integrate(u, 1.0 / n, lambda v: -0.7 * v, c)
        errs.append(abs(u[0] - math.exp(-0.7)))
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(1.9 < o < 2.2 for o in orders), (errs, orders)


def test_sts_step_in_place_matches_reference(rng):
    lam = -np.geomspace(1e-2, 3.0, 50)
    f = rng.standard_normal(50)
    c = sts_coefficients(11, "rkg2")
    ref = reference_integrate(f, 7.0, lambda v: lam * v, c)
    work = [np.zeros(50) for _ in range(6)]
    g = f.copy()
    sts_step(np, g, 7.0, c, lambda u, y: np.multiply(lam, u, out=y), work)
    assert np.allclose(g, ref, rtol=1e-13, atol=1e-15)


def test_ssprk43_third_order():
    errs = []
    for n in (10, 20, 40):
        u = np.array([1.0])
        f1, y = np.zeros(1), np.zeros(1)
        for _ in range(n):
            ssprk43(np, u, 1.0 / n, lambda v, out: np.multiply(v, -1.3 + 0.0, out=out), f1, y)
        errs.append(abs(u[0] - math.exp(-1.3)))
    assert math.log2(errs[0] / errs[1]) > 2.9 and math.log2(errs[1] / errs[2]) > 2.9


# ---------------------------------------------------------------------------- maps


def test_bipolar_map_balanced_and_split_realizations():
    grid = SphereGrid(91, 180)
    br = bipolar_map(grid)
    area = grid.cell_area[:, None]
    assert abs((br * area).sum()) < 1e-12 * (np.abs(br) * area).sum()
    assert np.all(br[0] == br[0, 0]) and np.all(br[-1] == br[-1, 0])
    assert np.abs(br).max() > 100
    b = balance_flux(grid, br + 0.3)
    assert abs((b * area).sum()) < 1e-12 * (np.abs(b) * area).sum()
    assert split_realizations(10, 3) == [(0, 3), (3, 6), (6, 10)]
