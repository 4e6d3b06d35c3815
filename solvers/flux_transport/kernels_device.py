"""Device kernels of the flux-transport operators (CuPy ``RawKernel``), the structure of :mod:`.kernels_host`.

One CUDA thread per owned cell of a row (grid ``(ceil(n / 128), rows)``), the
same per-cell arithmetic as the host kernels, in the same order: each cell
computes its two theta and two phi face fluxes (a face is evaluated by both of
its cells, where the host kernels carry it; the values are the same). The cell
code lives in ``__device__`` functions (:data:`CELL_SOURCE`) that a plain C++
host harness compiles too (``DEV`` is ``static inline`` there), so the tests
run exactly this source on the CPU against the NumPy oracle, bit for bit
(``-ffp-contract=off``; on the device NVRTC gets ``--fmad=false`` for the same
reason). The per-step and pole functions are short array expressions written
against the array module (``xp``), so NumPy runs them in the tests.

Importing does nothing; CuPy is imported by :func:`device_kernels` when a
device run builds its operators.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CELL_SOURCE", "DEVICE_SOURCE", "DeviceKernels", "device_kernels", "BLOCK"]

BLOCK = 128
"""Threads per block along a row."""

CELL_SOURCE = r"""
typedef long long i64;

DEV double weno3(double la, double lb, double lc, double pb, double pc, double pd,
                 const double* wm, const double* wc)
{
    /* wm, wc: (C_CP, C_MC, M_T, CP_T, P_T, MC_T, eps) of the cells beside the face, stride given by caller */
    double ccp_m = wm[0], cmc_m = wm[1], pt_m = wm[4], mct_m = wm[5], eps_m = wm[6];
    double ccp_c = wc[0], cmc_c = wc[1], mt_c = wc[2], cpt_c = wc[3], eps_c = wc[6];
    double p0m = (1.0 + cmc_m) * lb - cmc_m * la;
    double p1m = cmc_c * lb + ccp_m * lc;
    double p0p = (1.0 + ccp_c) * pc - ccp_c * pd;
    double p1p = ccp_m * pc + cmc_c * pb;
    double b0m = cmc_m * (lb - la);
    double b1m = ccp_m * (lc - lb);
    double b0p = ccp_c * (pd - pc);
    double b1p = cmc_c * (pc - pb);
    double s0m = eps_m + 4.0 * (b0m * b0m);
    double s1m = eps_m + 4.0 * (b1m * b1m);
    double s0p = eps_c + 4.0 * (b0p * b0p);
    double s1p = eps_c + 4.0 * (b1p * b1p);
    double a0m = pt_m * (s1m * s1m);
    double a1m = mct_m * (s0m * s0m);
    double a0p = mt_c * (s1p * s1p);
    double a1p = cpt_c * (s0p * s0p);
    double um = (a0m * p0m + a1m * p1m) / (a0m + a1m);
    double up = (a0p * p0p + a1p * p1p) / (a0p + a1p);
    return up + um;
}

DEV double theta_face(const double* u, const double* hn, const double* hp, const double* vt_f,
                      const i64* face_kind, const double* wt, i64 R, i64 L, i64 r, i64 m)
{
    /* flux at the north face of row r, value m */
    if (face_kind[r] == 1) {
        double v = vt_f[r * L + m];
        return v >= 0.0 ? v * u[(r - 1) * L + m] : v * u[r * L + m];
    }
    double wm[7], wc[7];
    for (int q = 0; q < 7; ++q) { wm[q] = wt[q * R + r - 1]; wc[q] = wt[q * R + r]; }
    i64 a = (r - 2) * L + m, b = (r - 1) * L + m, c = r * L + m, d = (r + 1) * L + m;
    return weno3(0.5 * u[a] * hn[a], 0.5 * u[b] * hn[b], 0.5 * u[c] * hn[c],
                 0.5 * u[b] * hp[b], 0.5 * u[c] * hp[c], 0.5 * u[d] * hp[d], wm, wc);
}

DEV double phi_face(const double* u, const double* hn, const double* hp, const double* wp,
                    i64 L, i64 nr, i64 r, i64 m)
{
    /* flux at the west face of value m in row r */
    double wm[7], wc[7];
    for (int q = 0; q < 7; ++q) { wm[q] = wp[q * L + m - nr]; wc[q] = wp[q * L + m]; }
    i64 o = r * L + m;
    i64 a = o - 2 * nr, b = o - nr, c = o, d = o + nr;
    return weno3(0.5 * u[a] * hn[a], 0.5 * u[b] * hn[b], 0.5 * u[c] * hn[c],
                 0.5 * u[b] * hp[b], 0.5 * u[c] * hp[c], 0.5 * u[d] * hp[d], wm, wc);
}

DEV void advection_cell(const double* u, const double* u0, double* out, const double* hn_t,
                        const double* hp_t, const double* hn_p, const double* hp_p, const double* vt_f,
                        const i64* face_kind, const double* wt, const double* wp, const double* sth,
                        const double* st_i, const double* dt_i, const double* dp_i, i64 R, i64 L, i64 nr,
                        double a, double b, double cdt, i64 r, i64 m)
{
    double fn = theta_face(u, hn_t, hp_t, vt_f, face_kind, wt, R, L, r, m);
    double fs = theta_face(u, hn_t, hp_t, vt_f, face_kind, wt, R, L, r + 1, m);
    double fw = phi_face(u, hn_p, hp_p, wp, L, nr, r, m);
    double fe = phi_face(u, hn_p, hp_p, wp, L, nr, r, m + nr);
    double ti = st_i[r] * dt_i[r];
    double si = st_i[r];
    double aop = (sth[r + 1] * fs - sth[r] * fn) * ti + (fe - fw) * si * dp_i[m];
    i64 o = r * L + m;
    if (a == 0.0) out[o] = b * u[o] - cdt * aop;
    else out[o] = a * u0[o] + b * u[o] - cdt * aop;
}

DEV double lap(const double* x, i64 L, i64 nr, i64 r, i64 m, double an, double as_, double s, double pw,
               double pe, double eta)
{
    i64 o = r * L + m;
    double c = x[o];
    return eta * ((an * (x[o - L] - c) + as_ * (x[o + L] - c)) + s * (pw * (x[o - nr] - c) + pe * (x[o + nr] - c)));
}

DEV void diffusion_cell(const double* x, double* y, i64 L, i64 nr, const double* an, const double* as_,
                        const double* s, const double* pw, const double* pe, const double* eta, i64 r, i64 m)
{
    y[r * L + m] = lap(x, L, nr, r, m, an[r], as_[r], s[r], pw[m], pe[m], eta[m]);
}

DEV void sts_first_cell(const double* u0, double* dty0, double* ukm1, i64 L, i64 nr, const double* an,
                        const double* as_, const double* s, const double* pw, const double* pe, const double* eta,
                        double dt, double mut1, i64 r, i64 m)
{
    i64 o = r * L + m;
    double d = dt * lap(u0, L, nr, r, m, an[r], as_[r], s[r], pw[m], pe[m], eta[m]);
    dty0[o] = d;
    ukm1[o] = u0[o] + mut1 * d;
}

DEV void sts_stage_cell(const double* ukm1, const double* ukm2, const double* u0, const double* dty0, double* out,
                        i64 L, i64 nr, const double* an, const double* as_, const double* s, const double* pw,
                        const double* pe, const double* eta, double mu, double nu, double w0, double mutdt,
                        double gam, i64 r, i64 m)
{
    i64 o = r * L + m;
    double y = lap(ukm1, L, nr, r, m, an[r], as_[r], s[r], pw[m], pe[m], eta[m]);
    out[o] = mu * ukm1[o] + nu * ukm2[o] + w0 * u0[o] + mutdt * y + gam * dty0[o];
}
"""
"""The per-cell code, shared by the CUDA kernels and the C++ host harness of the tests."""

_GLOBALS = r"""
#define CELL_INDEX i64 m = m0 + (i64)blockIdx.x * blockDim.x + threadIdx.x; i64 r = r0 + (i64)blockIdx.y; \
    if (m >= m1) return;

extern "C" __global__ void advection_stage_k(const double* u, const double* u0, double* out, const double* hn_t,
    const double* hp_t, const double* hn_p, const double* hp_p, const double* vt_f, const i64* face_kind,
    const double* wt, const double* wp, const double* sth, const double* st_i, const double* dt_i,
    const double* dp_i, i64 R, i64 L, i64 nr, double a, double b, double cdt, i64 r0, i64 m0, i64 m1)
{
    CELL_INDEX
    advection_cell(u, u0, out, hn_t, hp_t, hn_p, hp_p, vt_f, face_kind, wt, wp, sth, st_i, dt_i, dp_i, R, L, nr,
                   a, b, cdt, r, m);
}

extern "C" __global__ void diffusion_apply_k(const double* x, double* y, i64 L, i64 nr, const double* an,
    const double* as_, const double* s, const double* pw, const double* pe, const double* eta, i64 r0, i64 m0, i64 m1)
{
    CELL_INDEX
    diffusion_cell(x, y, L, nr, an, as_, s, pw, pe, eta, r, m);
}

extern "C" __global__ void sts_first_k(const double* u0, double* dty0, double* ukm1, i64 L, i64 nr,
    const double* an, const double* as_, const double* s, const double* pw, const double* pe, const double* eta,
    double dt, double mut1, i64 r0, i64 m0, i64 m1)
{
    CELL_INDEX
    sts_first_cell(u0, dty0, ukm1, L, nr, an, as_, s, pw, pe, eta, dt, mut1, r, m);
}

extern "C" __global__ void sts_stage_k(const double* ukm1, const double* ukm2, const double* u0,
    const double* dty0, double* out, i64 L, i64 nr, const double* an, const double* as_, const double* s,
    const double* pw, const double* pe, const double* eta, double mu, double nu, double w0, double mutdt,
    double gam, i64 r0, i64 m0, i64 m1)
{
    CELL_INDEX
    sts_stage_cell(ukm1, ukm2, u0, dty0, out, L, nr, an, as_, s, pw, pe, eta, mu, nu, w0, mutdt, gam, r, m);
}
"""

DEVICE_SOURCE = "#define DEV __device__ __forceinline__\n" + CELL_SOURCE + _GLOBALS
"""The CUDA source of the device kernels (NVRTC, ``--fmad=false``)."""


def launch_grid(r0: int, r1: int, m0: int, m1: int, block: int = BLOCK) -> tuple:
    """``(grid, block)`` of a kernel over rows ``[r0, r1)`` and values ``[m0, m1)`` (one thread per value)."""
    n = max(m1 - m0, 0)
    return ((n + block - 1) // block, max(r1 - r0, 0), 1), (block, 1, 1)


class DeviceKernels:
    """The functions of :mod:`.kernels_host` for CuPy arrays (same names and arguments).

    Not collective. Hot stencils launch the ``RawKernel`` s of :data:`DEVICE_SOURCE`
    on the current stream; the per-step flow functions and the pole rows are array
    expressions of ``xp`` (they also run with NumPy: the tests compare them with
    the host kernels).
    """

    def __init__(self, xp, module=None):
        self.xp = xp
        self.module = module

    # ------------------------------------------------------------------ hot stencils (RawKernel)
    def _launch(self, name, r0, r1, m0, m1, args):
        if r1 <= r0 or m1 <= m0:
            return
        grid, block = launch_grid(r0, r1, m0, m1)
        self.module.get_function(name)(grid, block, args)

    def advection_stage(self, u, u0, out, hn_t, hp_t, hn_p, hp_p, vt_f, face_kind, wt, wp, sth, st_i, dt_i, dp_i,
                        r0, r1, m0, m1, nr, a, b, cdt, ft_n=None, ft_s=None, fp=None):
        """As :func:`.kernels_host.advection_stage`."""
        R, L = u.shape
        f8, i8 = np.float64, np.int64
        self._launch("advection_stage_k", r0, r1, m0, m1,
                     (u, u0, out, hn_t, hp_t, hn_p, hp_p, vt_f, face_kind, wt, wp, sth, st_i, dt_i, dp_i, i8(R),
                      i8(L), i8(nr), f8(a), f8(b), f8(cdt), i8(r0), i8(m0), i8(m1)))

    def diffusion_apply(self, x, y, r0, r1, m0, m1, nr, an, as_, s, pw, pe, eta):
        """As :func:`.kernels_host.diffusion_apply`."""
        L = x.shape[1]
        i8 = np.int64
        self._launch("diffusion_apply_k", r0, r1, m0, m1, (x, y, i8(L), i8(nr), an, as_, s, pw, pe, eta, i8(r0),
                                                           i8(m0), i8(m1)))

    def sts_first(self, u0, dty0, ukm1, r0, r1, m0, m1, nr, an, as_, s, pw, pe, eta, dt, mut1):
        """As :func:`.kernels_host.sts_first`."""
        L = u0.shape[1]
        f8, i8 = np.float64, np.int64
        self._launch("sts_first_k", r0, r1, m0, m1, (u0, dty0, ukm1, i8(L), i8(nr), an, as_, s, pw, pe, eta, f8(dt),
                                                     f8(mut1), i8(r0), i8(m0), i8(m1)))

    def sts_stage(self, ukm1, ukm2, u0, dty0, out, r0, r1, m0, m1, nr, an, as_, s, pw, pe, eta, mu, nu, w0, mutdt,
                  gam):
        """As :func:`.kernels_host.sts_stage`."""
        L = ukm1.shape[1]
        f8, i8 = np.float64, np.int64
        self._launch("sts_stage_k", r0, r1, m0, m1,
                     (ukm1, ukm2, u0, dty0, out, i8(L), i8(nr), an, as_, s, pw, pe, eta, f8(mu), f8(nu), f8(w0),
                      f8(mutdt), f8(gam), i8(r0), i8(m0), i8(m1)))

    # ------------------------------------------------------------------ per step and poles (array expressions)
    def attenuation_args(self, u, inv_b, face_att, at_t, at_p, r0, r1, m0, m1, nr):
        """As :func:`.kernels_host.attenuation_args`."""
        xp = self.xp
        rows = np.nonzero(np.asarray(face_att[r0:r1 + 1]))[0] + r0
        if rows.size:
            rr = xp.asarray(rows)
            at_t[rr, m0:m1] = xp.maximum(xp.abs(u[rr - 1, m0:m1]), xp.abs(u[rr, m0:m1])) * inv_b[m0:m1]
        at_p[r0:r1, m0:m1 + nr] = (xp.maximum(xp.abs(u[r0:r1, m0 - nr:m1]), xp.abs(u[r0:r1, m0:m1 + nr]))
                                   * inv_b[m0:m1 + nr])

    def flow_faces(self, vt0, vp0, th_t, th_p, face_att, attenuate, vt_f, vp_f, mt, mp, r0, r1, m0, m1, nr, dt_i,
                   st_i, dp_i, interior):
        """As :func:`.kernels_host.flow_faces`."""
        xp = self.xp
        att = np.asarray(face_att[r0:r1 + 1]).astype(bool) & bool(attenuate)
        vt_f[r0:r1 + 1, m0:m1] = vt0[r0:r1 + 1, m0:m1]
        rows = np.nonzero(att)[0] + r0
        if rows.size:
            rr = xp.asarray(rows)
            vt_f[rr, m0:m1] = vt0[rr, m0:m1] * (1.0 - th_t[rr, m0:m1])
        if attenuate:
            vp_f[r0:r1, m0:m1 + nr] = vp0[r0:r1, m0:m1 + nr] * (1.0 - th_p[r0:r1, m0:m1 + nr])
        else:
            vp_f[r0:r1, m0:m1 + nr] = vp0[r0:r1, m0:m1 + nr]
        mt[r0:r1, m0:m1] = xp.maximum(xp.abs(vt_f[r0:r1, m0:m1]), xp.abs(vt_f[r0 + 1:r1 + 1, m0:m1]))
        mp[r0:r1, m0:m1] = xp.maximum(xp.abs(vp_f[r0:r1, m0:m1]), xp.abs(vp_f[r0:r1, m0 + nr:m1 + nr]))
        inner = np.nonzero(np.asarray(interior[r0:r1]))[0] + r0
        if not inner.size:
            return 0.0
        ri = xp.asarray(inner)
        k = mt[ri, m0:m1] * xp.asarray(dt_i)[ri, None] + mp[ri, m0:m1] * xp.asarray(st_i)[ri, None] * dp_i[m0:m1]
        return float(k.max())

    def flow_alpha(self, vt_f, vp_f, mt, mp, row_ok, hn_t, hp_t, hn_p, hp_p, r0, r1, m0, m1, nr, interior):
        """As :func:`.kernels_host.flow_alpha`."""
        xp = self.xp
        ok = np.asarray(row_ok)
        for r in range(r0, r1):
            rs = [rr if ok[rr] else r for rr in (r - 2, r - 1, r, r + 1, r + 2)]
            at = xp.maximum(xp.maximum(xp.maximum(xp.maximum(mt[rs[0], m0:m1], mt[rs[1], m0:m1]), mt[rs[2], m0:m1]),
                                       mt[rs[3], m0:m1]), mt[rs[4], m0:m1])
            hn_t[r, m0:m1] = vt_f[r, m0:m1] + at
            hp_t[r, m0:m1] = vt_f[r + 1, m0:m1] - at
            if interior[r]:
                sl = [mp[r, m0 + d * nr:m1 + d * nr] for d in (-2, -1, 0, 1, 2)]
                ap = xp.maximum(xp.maximum(xp.maximum(xp.maximum(sl[0], sl[1]), sl[2]), sl[3]), sl[4])
                hn_p[r, m0:m1] = vp_f[r, m0:m1] + ap
                hp_p[r, m0:m1] = vp_f[r, m0 + nr:m1 + nr] - ap
            else:
                hn_p[r, m0:m1] = 0.0
                hp_p[r, m0:m1] = 0.0

    def pole_face_flux(self, u, vt_f, r_face, m0, m1, dp, out):
        """As :func:`.kernels_host.pole_face_flux`."""
        xp = self.xp
        v = vt_f[r_face, m0:m1]
        f = xp.where(v >= 0.0, v * u[r_face - 1, m0:m1], v * u[r_face, m0:m1])
        out[:m1 - m0] = _host(f * dp[m0:m1])

    def pole_stage(self, u, u0, out, r, m0, m1, nr, rate, a, b, cdt):
        """As :func:`.kernels_host.pole_stage`."""
        xp = self.xp
        rr = xp.asarray(np.tile(np.asarray(rate), (m1 - m0) // nr))
        if a == 0.0:
            out[r, m0:m1] = b * u[r, m0:m1] - cdt * rr
        else:
            out[r, m0:m1] = a * u0[r, m0:m1] + b * u[r, m0:m1] - cdt * rr

    def pole_diffusion_contrib(self, x, r_pole, r_next, m0, m1, eta2, dp, out):
        """As :func:`.kernels_host.pole_diffusion_contrib`."""
        out[:m1 - m0] = _host(eta2[m0:m1] * (x[r_next, m0:m1] - x[r_pole, m0:m1]) * dp[m0:m1])

    def pole_sts_first(self, u0, dty0, ukm1, r, m0, m1, nr, y, dt, mut1):
        """As :func:`.kernels_host.pole_sts_first`."""
        xp = self.xp
        d = dt * xp.asarray(np.tile(np.asarray(y), (m1 - m0) // nr))
        dty0[r, m0:m1] = d
        ukm1[r, m0:m1] = u0[r, m0:m1] + mut1 * d

    def pole_sts_stage(self, ukm1, ukm2, u0, dty0, out, r, m0, m1, nr, y, mu, nu, w0, mutdt, gam):
        """As :func:`.kernels_host.pole_sts_stage`."""
        xp = self.xp
        yy = xp.asarray(np.tile(np.asarray(y), (m1 - m0) // nr))
        out[r, m0:m1] = (mu * ukm1[r, m0:m1] + nu * ukm2[r, m0:m1] + w0 * u0[r, m0:m1] + mutdt * yy
                         + gam * dty0[r, m0:m1])

    def ptl_max(self, f, af, r0, r1, m0, m1, fmin):
        """As :func:`.kernels_host.ptl_max`."""
        xp = self.xp
        ff, aa = f[r0:r1, m0:m1], af[r0:r1, m0:m1]
        mask = xp.abs(ff) > fmin
        if not bool(mask.any()):
            return -1.0
        return float(xp.where(mask, xp.abs(aa), -1.0).max())

    def ptl_min(self, f, af, r0, r1, m0, m1, nr, interior, amax, fmin, huge):
        """As :func:`.kernels_host.ptl_min`."""
        best = huge
        hf, ha = _host(f), _host(af)
        from . import kernels_host as K

        return min(best, K.ptl_min(hf, ha, r0, r1, m0, m1, nr, np.asarray(_host(interior)), amax, fmin, huge))


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def device_kernels(xp):
    """A :class:`DeviceKernels` with the module compiled for the current device (CuPy imported here)."""
    module = xp.RawModule(code=DEVICE_SOURCE, options=("--std=c++14", "--fmad=false"))
    return DeviceKernels(xp, module)
