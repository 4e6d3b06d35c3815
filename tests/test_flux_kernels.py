"""flux_transport compiled kernels against the whole-sphere NumPy oracle (reference.py), on odd sizes: bit for bit."""

import math

import numpy as np
import pytest
from mpi4py import MPI

from solvers.flux_transport import reference as ref
from solvers.flux_transport.flows import FlowModel
from solvers.flux_transport.grid import SphereGrid
from solvers.flux_transport.initial import soccer_ball
from solvers.flux_transport.operators import AdvectionOperator, DiffusionOperator
from solvers.flux_transport.parallel import GHOST, Domain
from solvers.flux_transport.timestepping import sts_coefficients

SIZES = [(13, 11, 1), (17, 10, 3), (29, 23, 2)]


def _domain(grid, nr):
    return Domain(MPI.COMM_SELF, grid, nr, halo_method="pack")


def _exchanger(d):
    return lambda *a: d.halo.exchange(*[x.reshape(d.padded_shape) for x in a])


def _padded(d, values):
    R, C, nr = d.padded_shape
    f = np.zeros((R, C, nr))
    f[GHOST:-GHOST, GHOST:-GHOST] = values
    d.halo.exchange(f)
    return f.reshape(-1)


def _inner(d, flat):
    return flat.reshape(d.padded_shape)[GHOST:-GHOST, GHOST:-GHOST]


def _field(rng, nt, nphi, nr, scale=300.0):
    f = rng.standard_normal((nt, nphi, nr)) * scale
    f[0] = f[0].mean(axis=0)
    f[-1] = f[-1].mean(axis=0)
    return f


def _flows(nr, attenuate=True):
    k = np.linspace(0.8, 1.3, nr)
    return FlowModel(nr, dr=np.array([46.0, -262.0, -379.0])[:, None] * k * 50,
                     mf=np.array([22.0, 11.0, -28.0])[:, None] * k * 50, vt_const=0.02,
                     attenuate_gauss=np.linspace(200.0, 600.0, nr) if attenuate else None)


def _scales(nt, nphi, rng):
    """A file-like grid: single-precision scales (HipFT's weights then differ from uniform in the 7th digit)."""
    g = SphereGrid(nt, nphi)
    theta = g.file_theta.astype(np.float32).astype(np.float64)
    phi = g.file_phi.astype(np.float32).astype(np.float64)
    return SphereGrid(nt, nphi, theta=theta, phi=phi)


@pytest.mark.parametrize("nt,nphi,nr", SIZES)
@pytest.mark.parametrize("attenuate", [False, True])
def test_advection_kernels_match_oracle(rng, nt, nphi, nr, attenuate):
    grid = _scales(nt, nphi, rng)
    d = _domain(grid, nr)
    try:
        flows = _flows(nr, attenuate)
        op = AdvectionOperator(d, grid, flows)
        f = _field(rng, nt, nphi, nr)
        F = _padded(d, f)
        rate = op.prepare(F, _exchanger(d))
        vt0, vp0 = flows.face_velocities(grid)
        inv_b = flows.inverse_attenuation() if attenuate else np.zeros(nr)
        vt, vp = ref.attenuated_faces(grid, vt0, vp0, inv_b, f)
        hs = ref.split_velocities(vt, vp)
        aop = ref.advection_rhs(grid, f, vt, *hs)
        # the same operations in the same order (attenuation through NumPy's tanh in both): the same bits
        assert rate == ref.advection_rate(grid, vt, vp)
        for got, want in zip((op.hn_t, op.hp_t, op.hn_p, op.hp_p), hs):
            assert np.array_equal(_inner(d, got.reshape(-1)), want)
        out = np.zeros_like(F)
        u0 = _padded(d, _field(rng, nt, nphi, nr))
        for a, b, c in ((0.0, 1.0, 0.37), (2.0 / 3.0, 1.0 / 3.0, 0.1)):
            op.stage(F, u0, out, a, b, c)
            want = 1.0 * f - c * aop if a == 0.0 else a * _inner(d, u0) + b * f - c * aop
            assert np.array_equal(_inner(d, out), want)
        assert np.all(_inner(d, out)[0] == _inner(d, out)[0, :1])  # the cap stays one value
    finally:
        d.free()


@pytest.mark.parametrize("nt,nphi,nr", SIZES)
def test_diffusion_kernels_match_oracle_bitwise(rng, nt, nphi, nr):
    grid = _scales(nt, nphi, rng)
    d = _domain(grid, nr)
    try:
        eta = np.linspace(0.05, 0.3, nr)
        op = DiffusionOperator(d, grid, eta)
        f = _field(rng, nt, nphi, nr)
        F = _padded(d, f)
        y = np.zeros_like(F)
        op.apply(F, y)
        want = ref.diffusion_rhs(grid, f, eta)
        assert np.array_equal(_inner(d, y), want)
        # one fused super step (first stage + stages) against the oracle's formula
        co = sts_coefficients(7, "rkg2")
        dt = 0.3
        u0, dty0, k1, k2, new = (np.zeros_like(F) for _ in range(5))
        u0[:] = F
        op.sts_first(u0, dty0, k1, dt, co.mut[1])
        k2[:] = u0
        r_u0 = f.copy()
        r_dty0 = dt * ref.diffusion_rhs(grid, r_u0, eta)
        r_k1 = r_u0 + co.mut[1] * r_dty0
        r_k2 = r_u0.copy()
        for j in range(2, co.s + 1):
            d.halo.exchange(k1.reshape(d.padded_shape))
            op.sts_stage(k1, k2, u0, dty0, new, co.mu[j], co.nu[j], co.mut[j] * dt, co.gam[j])
            k2, k1, new = k1, new, k2
            w0 = 1.0 - co.mu[j] - co.nu[j]
            lap = ref.diffusion_rhs(grid, r_k1, eta)
            r_new = co.mu[j] * r_k1 + co.nu[j] * r_k2 + w0 * r_u0 + (co.mut[j] * dt) * lap + co.gam[j] * r_dty0
            r_k2, r_k1 = r_k1, r_new
        assert np.array_equal(_inner(d, k1), r_k1)
        # HipFT's Euler limit from the Gershgorin bound
        assert 0.95 * 2.0 / op.local_rate == pytest.approx(ref.euler_limit(grid, eta), rel=1e-14)
    finally:
        d.free()


def test_diffusion_conserves_in_hipft_weights_on_file_scales(rng):
    grid = _scales(41, 37, rng)
    d = _domain(grid, 2)
    try:
        op = DiffusionOperator(d, grid, np.array([0.2, 1.0]))
        f = _field(rng, 41, 37, 2)
        F = _padded(d, f)
        y = np.zeros_like(F)
        op.apply(F, y)
        w = (grid.diag_theta[0][:, None] * grid.diag_phi[0][None, :])[:, :, None]
        net = (_inner(d, y) * w).sum(axis=(0, 1))
        # exact in uniform HipFT weights; on single-precision scales to the scales' own non-uniformity
        assert np.all(np.abs(net) < 1e-6 * (np.abs(_inner(d, y)) * w).sum(axis=(0, 1)))
    finally:
        d.free()


def test_practical_limit_matches_oracle(rng):
    from solvers.flux_transport import FluxTransport, load_config

    cfg = load_config(data={"n_realizations": 2, "grid": {"ntheta": 31, "nphi": 40}, "initial": {"kind": "bipolar"},
                            "flow": {"enabled": False}, "diffusion": {"eta_km2_s": [300.0, 800.0]}})
    m = FluxTransport(MPI.COMM_SELF, cfg, output=False)
    try:
        f = np.ascontiguousarray(m.gather(0).transpose(1, 2, 0))
        af = ref.diffusion_rhs(m.grid, f, m.eta)
        for dt_in in (0.0, 1e3):
            assert m.practical_limit(dt_in) == ref.practical_limit(f, af, dt_in)
        assert m.practical_limit(0.0) > m.dt_exp  # the point of the limit: far beyond the Euler step
    finally:
        m.free()


def test_weno_weights_reduce_to_jiang_shu_on_uniform_grids():
    g = SphereGrid(21, 30)
    assert np.allclose(g.weno_t[:6, 1:-1].T, [0.5, 0.5, 1 / 3, 2 / 3, 1 / 3, 2 / 3], rtol=1e-15)
    assert np.allclose(g.weno_p[:6].T, [0.5, 0.5, 1 / 3, 2 / 3, 1 / 3, 2 / 3], rtol=1e-15)
    assert np.allclose(g.weno_t[6], g.dtheta) and np.allclose(g.weno_p[6], g.dphi)


def test_rigid_rotation_keeps_soccer_ball_through_fused_stages():
    """One eighth of a turn at CFL ~0.5 through the kernels, 61 x 120: max error 4.1e-3 (budget 5e-3)."""
    grid = SphereGrid(61, 120)
    d = _domain(grid, 1)
    try:
        op = AdvectionOperator(d, grid, FlowModel(1, rigid_omega=2.0))
        f = _padded(d, soccer_ball(grid)[:, :, None])
        omega = 2.0 * 5.172413793103448e-3
        turn = 2 * math.pi / omega
        n = int(round(0.125 * turn / (0.5 * grid.dphi / omega)))
        dt = 0.125 * turn / n
        ex = _exchanger(d)
        ex(f)
        op.prepare(f, ex)
        f1, f2 = np.zeros_like(f), np.zeros_like(f)
        for _ in range(n):
            ex(f)
            op.stage(f, None, f1, 0.0, 1.0, 0.5 * dt)
            ex(f1)
            op.stage(f1, None, f2, 0.0, 1.0, 0.5 * dt)
            ex(f2)
            op.stage(f2, f, f1, 2.0 / 3.0, 1.0 / 3.0, dt / 6.0)
            ex(f1)
            op.stage(f1, None, f, 0.0, 1.0, 0.5 * dt)
        exact = soccer_ball(grid, phase=0.25 * math.pi)
        assert np.abs(_inner(d, f)[:, :, 0] - exact).max() < 5e-3
    finally:
        d.free()
