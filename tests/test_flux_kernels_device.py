"""flux_transport device kernels on the CPU: the CUDA cell code through a C++ harness, the array-module parts with
NumPy, both against the host kernels bit for bit; the CUDA source through nvcc where it is installed."""

import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest
from mpi4py import MPI

from solvers.flux_transport import kernels_device as KD
from solvers.flux_transport import kernels_host as KH
from solvers.flux_transport.flows import FlowModel
from solvers.flux_transport.grid import SphereGrid
from solvers.flux_transport.operators import AdvectionOperator, DiffusionOperator
from solvers.flux_transport.parallel import GHOST, Domain

HARNESS = r"""
#include <cmath>
#define DEV static inline
""" + KD.CELL_SOURCE + r"""
extern "C" void advection_rows(const double* u, const double* u0, double* out, const double* hn_t, const double* hp_t,
    const double* hn_p, const double* hp_p, const double* vt_f, const i64* face_kind, const double* wt,
    const double* wp, const double* sth, const double* st_i, const double* dt_i, const double* dp_i, i64 R, i64 L,
    i64 nr, double a, double b, double cdt, i64 r0, i64 r1, i64 m0, i64 m1)
{
    for (i64 r = r0; r < r1; ++r)
        for (i64 m = m0; m < m1; ++m)
            advection_cell(u, u0, out, hn_t, hp_t, hn_p, hp_p, vt_f, face_kind, wt, wp, sth, st_i, dt_i, dp_i, R, L,
                           nr, a, b, cdt, r, m);
}
extern "C" void sts_rows(const double* ukm1, const double* ukm2, const double* u0, const double* dty0, double* out,
    i64 L, i64 nr, const double* an, const double* as_, const double* s, const double* pw, const double* pe,
    const double* eta, double mu, double nu, double w0, double mutdt, double gam, i64 r0, i64 r1, i64 m0, i64 m1)
{
    for (i64 r = r0; r < r1; ++r)
        for (i64 m = m0; m < m1; ++m)
            sts_stage_cell(ukm1, ukm2, u0, dty0, out, L, nr, an, as_, s, pw, pe, eta, mu, nu, w0, mutdt, gam, r, m);
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the host harness of the CUDA cell code")
    d = tmp_path_factory.mktemp("kd")
    src = os.path.join(d, "h.cpp")
    lib = os.path.join(d, "h.so")
    with open(src, "w") as fh:
        fh.write(HARNESS)
    subprocess.run([cxx, "-O2", "-ffp-contract=off", "-shared", "-fPIC", src, "-o", lib], check=True)
    return ctypes.CDLL(lib)


def _ptr(a):
    assert a.flags.c_contiguous
    return a.ctypes.data_as(ctypes.c_void_p)


def _args(vals):
    out = []
    for v in vals:
        if isinstance(v, np.ndarray):
            out.append(_ptr(v))
        elif isinstance(v, float):
            out.append(ctypes.c_double(v))
        else:
            out.append(ctypes.c_longlong(int(v)))
    return out


def _setup(nt, nphi, nr, rng):
    grid = SphereGrid(nt, nphi)
    d = Domain(MPI.COMM_SELF, grid, nr, halo_method="pack")
    k = np.linspace(0.9, 1.2, nr)
    flows = FlowModel(nr, dr=np.array([46.0, -262.0, -379.0])[:, None] * k * 40,
                      mf=np.array([22.0, 11.0, -28.0])[:, None] * k * 40, attenuate_gauss=np.linspace(200, 500, nr))
    f = np.zeros(d.padded_shape)
    f[GHOST:-GHOST, GHOST:-GHOST] = rng.standard_normal((nt, nphi, nr)) * 300
    f[GHOST, GHOST:-GHOST] = f[GHOST, GHOST:-GHOST].mean(axis=0)
    f[-GHOST - 1, GHOST:-GHOST] = f[-GHOST - 1, GHOST:-GHOST].mean(axis=0)
    d.halo.exchange(f)
    return grid, d, flows, f.reshape(-1)


@pytest.mark.parametrize("nt,nphi,nr", [(13, 11, 1), (21, 17, 3)])
def test_cuda_cell_code_matches_host_kernels(harness, rng, nt, nphi, nr):
    grid, d, flows, F = _setup(nt, nphi, nr, rng)
    try:
        ex = lambda *a: d.halo.exchange(*[x.reshape(d.padded_shape) for x in a])  # noqa: E731
        op = AdvectionOperator(d, grid, flows)
        op.prepare(F, ex)
        b = op.b
        R, L = b.R, b.L
        two = op._two
        u0 = F * 0.5
        for a, bb, c in ((0.0, 1.0, 0.3), (2.0 / 3.0, 1.0 / 3.0, 0.05)):
            want = np.zeros((R, L))
            got = np.zeros((R, L))
            KH.advection_stage(two(F), two(u0), want, two(op.hn_t), two(op.hp_t), two(op.hn_p), two(op.hp_p),
                               two(op.vt_f), op.face_kind, op.wt, op.wp, op.sth, op.st_i, op.dt_i, op.dp_i,
                               b.r_int[0], b.r_int[1], *b.m_own, b.nr, a, bb, c, op.ft_n, op.ft_s, op.fp)
            harness.advection_rows(*_args([two(F), two(u0), got, two(op.hn_t), two(op.hp_t), two(op.hn_p),
                                           two(op.hp_p), two(op.vt_f), op.face_kind, op.wt, op.wp, op.sth, op.st_i,
                                           op.dt_i, op.dp_i, R, L, b.nr, a, bb, c, b.r_int[0], b.r_int[1],
                                           *b.m_own]))
            assert np.array_equal(got, want)
        dop = DiffusionOperator(d, grid, np.linspace(0.05, 0.2, nr))
        k2, z, dty = F * 0.3, F * 0.7, F * 0.01
        want = np.zeros((R, L))
        got = np.zeros((R, L))
        coeffs = (0.7, -0.2, 0.5, 0.013, 0.02)
        KH.sts_stage(two(F), two(k2), two(z), two(dty), want, b.r_int[0], b.r_int[1], *b.m_own, b.nr, dop.an,
                     dop.as_, dop.s, dop.pw, dop.pe, dop.eta_m, *coeffs)
        harness.sts_rows(*_args([two(F), two(k2), two(z), two(dty), got, L, b.nr, dop.an, dop.as_, dop.s, dop.pw,
                                 dop.pe, dop.eta_m, *coeffs, b.r_int[0], b.r_int[1], *b.m_own]))
        assert np.array_equal(got, want)
    finally:
        d.free()


def test_array_module_parts_match_host_kernels_with_numpy(rng):
    grid, d, flows, F = _setup(17, 14, 2, rng)
    try:
        ex = lambda *a: d.halo.exchange(*[x.reshape(d.padded_shape) for x in a])  # noqa: E731
        op = AdvectionOperator(d, grid, flows)
        op.prepare(F, ex)
        want = [x.copy() for x in (op.hn_t, op.hp_t, op.hn_p, op.hp_p)]
        rate = op.rate
        for x in (op.hn_t, op.hp_t, op.hn_p, op.hp_p, op.vt_f, op.vp_f, op.mt, op.mp, op.th_t, op.th_p):
            x[...] = 0.0
        op.K = KD.DeviceKernels(np)
        got_rate = op.prepare(F, ex)
        assert got_rate == rate
        for g, w in zip((op.hn_t, op.hp_t, op.hn_p, op.hp_p), want):
            assert np.array_equal(g, w)
    finally:
        d.free()


def test_launch_grid_covers_every_owned_value():
    grid, block = KD.launch_grid(2, 9, 6, 6 + 300)
    assert block == (KD.BLOCK, 1, 1) and grid == (3, 7, 1)
    assert KD.launch_grid(2, 2, 0, 10)[0][1] == 0


def test_cuda_source_compiles_with_nvcc(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed (the source is compiled by NVRTC on a device run)")
    src = tmp_path / "k.cu"
    src.write_text(KD.DEVICE_SOURCE)
    res = subprocess.run([nvcc, "-c", "--fmad=false", "-std=c++14", str(src), "-o", str(tmp_path / "k.o")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
