"""HipFT's advection and diffusion operators on this rank's block: metric arrays, compiled kernels, pole caps.

Both operators work on padded local arrays of shape ``(R, C, nr)`` (rows and
columns with ``GHOST`` ghost cells, realizations trailing) whose ghosts were
filled by the caller's halo exchange; the arithmetic is in compiled kernels
(:mod:`.kernels_host`, numba), one fused pass per stage, and the whole-sphere
NumPy oracle in :mod:`.reference` computes the same numbers. The pole rows are
updated from the net flux through the cap edge, summed over every phi column in
one fixed order (:class:`~solvers.flux_transport.parallel.PoleReducer`), so the
fields have the same bits on any number of ranks.
"""

from __future__ import annotations

import numpy as np

from . import kernels_host as K
from .parallel import GHOST

__all__ = ["AdvectionOperator", "DiffusionOperator", "Block"]

_HUGE = float(np.finfo(np.float64).max)


def _kernels(xp):
    """The kernel set for the array module: numba host kernels, or CuPy device kernels."""
    if xp is np:
        return K
    from .kernels_device import device_kernels

    return device_kernels(xp)


class Block:
    """Index ranges and padded metric arrays of one rank's block (not collective, cheap)."""

    def __init__(self, domain, grid):
        g = GHOST
        d = domain
        self.R, self.C, self.nr = d.padded_shape
        self.L = self.C * self.nr
        nt = grid.ntheta
        self.rows = d.global_rows()
        self.valid = (self.rows >= 0) & (self.rows <= nt - 1)
        self.interior = (self.rows >= 1) & (self.rows <= nt - 2)
        self.r_own = (g, g + d.ntl)
        self.r_int = (g + (1 if d.owns_north else 0), g + d.ntl - (1 if d.owns_south else 0))
        self.m_own = (g * self.nr, (g + d.npl) * self.nr)
        self.cols = (d.col0 - g + np.arange(self.C)) % grid.nphi
        self.north_row = g if d.owns_north else -1
        self.south_row = g + d.ntl - 1 if d.owns_south else -1
        self.npl = d.npl

    def per_row(self, values, fill=0.0):
        """Global per-row values ``(ntheta,)`` (or ``(ntheta, k)``) on the padded rows."""
        values = np.asarray(values)
        out = np.full((self.R,) + values.shape[1:], fill, dtype=values.dtype)
        out[self.valid] = values[self.rows[self.valid]]
        return out

    def per_value(self, col_values):
        """Per-column values ``(nphi,)`` on the padded columns, repeated for each realization ``(L,)``."""
        return np.ascontiguousarray(np.repeat(np.asarray(col_values, dtype=np.float64)[self.cols], self.nr))


class AdvectionOperator:
    """``div(v Br)`` by HipFT's CS-WENO3 with local Lax-Friedrichs splitting, attenuated face flows.

    Not collective to build; :meth:`prepare` and :meth:`stage` are collective on
    the ranks of the domain (halo exchanges, pole sums). Per step, :meth:`prepare`
    re-evaluates the face velocities from the current field (attenuation at each
    face from the larger ``|Br|`` of its two cells), the Lax-Friedrichs speeds and
    the CFL rate, as HipFT does every step; per stage, :meth:`stage` computes the
    WENO3 face fluxes (first-order upwind at the theta faces beside the poles),
    the divergence and the SSPRK stage combination in one pass per row.
    """

    def __init__(self, domain, grid, flows, xp=np):
        self.domain = domain
        self.grid = grid
        self.flows = flows
        self.xp = xp
        b = Block(domain, grid)
        self.b = b
        R, C, nr, L = b.R, b.C, b.nr, b.L
        nt = grid.ntheta
        vt0, vp0 = flows.face_velocities(grid)  # (nt + 1, nr), (nt, nr)
        fok = (b.rows >= 0) & (b.rows <= nt)  # faces 0 .. ntheta: north face of each padded row
        self.vt0 = np.zeros((R, nr))
        self.vt0[fok] = vt0[b.rows[fok]]
        self.vt0 = np.ascontiguousarray(np.tile(self.vt0, (1, C)))  # (R, L): per value
        self.vp0 = np.ascontiguousarray(np.tile(b.per_row(vp0), (1, C)))
        inv_b = flows.inverse_attenuation()
        self.attenuate = inv_b is not None
        inv_b = np.zeros(nr) if inv_b is None else np.asarray(inv_b, dtype=np.float64)
        self.inv_b = np.ascontiguousarray(np.tile(inv_b, C))
        rows = b.rows
        self.face_att = ((rows >= 1) & (rows <= nt - 1) & self.attenuate).astype(np.bool_)
        kind = np.zeros(R + 1, dtype=np.int64)
        frows = np.append(rows, rows[-1] + 1)
        kind[(frows >= 2) & (frows <= nt - 2)] = 2
        kind[(frows == 1) | (frows == nt - 1)] = 1
        self.face_kind = kind
        fac = grid.advection_factors()
        sth = np.zeros(R + 1)
        ok = (frows >= 0) & (frows <= nt)
        sth[ok] = fac["sth"][frows[ok]]
        self.sth = sth
        self.st_i = b.per_row(fac["st_i"])
        self.dt_i = b.per_row(fac["dt_i"])
        self.row_ok = b.valid.astype(np.bool_)
        self.interior = b.interior.astype(np.bool_)
        self.wt = np.ascontiguousarray(b.per_row(grid.weno_t.T).T)
        self.wp = np.ascontiguousarray(np.stack([b.per_value(grid.weno_p[q]) for q in range(7)]))
        self.dp_i = b.per_value(fac["dp_i"])
        self.dp = b.per_value(fac["dp"])
        self.cap_n, self.cap_s = fac["cap_n"], fac["cap_s"]
        shape = (R, C, nr)
        self.vt_f, self.vp_f, self.mt, self.mp, self.hn_t, self.hp_t, self.hn_p, self.hp_p = (
            np.zeros(shape) for _ in range(8))
        self.ft_n, self.ft_s, self.fp = (np.zeros(L) for _ in range(3))
        self.th_t = np.zeros(shape)
        self.th_p = np.zeros(shape)
        self.pole_buf = np.zeros(b.npl * nr)
        self.prepared = False
        self.rate = 0.0
        self.K = _kernels(xp)
        if xp is not np:  # metric arrays and work arrays on the device; flags stay on the host
            for name in ("vt0", "vp0", "inv_b", "wt", "wp", "sth", "st_i", "dt_i", "dp_i", "dp", "face_kind", "vt_f",
                         "vp_f", "mt", "mp", "hn_t", "hp_t", "hn_p", "hp_p", "th_t", "th_p"):
                setattr(self, name, xp.asarray(getattr(self, name)))

    def _two(self, x):
        return x.reshape(self.b.R, self.b.L)

    # ------------------------------------------------------------------ per step
    def prepare(self, F, exchange) -> float:
        """Flows, Lax-Friedrichs speeds and the local CFL rate for the coming step from ``F`` (ghosts filled).

        ``exchange(*arrays)`` fills the ghosts of ``(R, C, nr)`` arrays (two calls:
        the face-speed maxima, then the split velocities). Returns this rank's
        largest ``k.v`` [1/h] (HipFT's ``get_flow_dtmax`` before ``0.5 safety / rate``).
        """
        b = self.b
        two = self._two
        r0, r1 = b.r_own
        m0, m1 = b.m_own
        if self.attenuate:  # tanh of the attenuation argument on the rows the kernel reads, in NumPy's SIMD tanh
            self.K.attenuation_args(two(F), self.inv_b, self.face_att, two(self.th_t), two(self.th_p), r0, r1, m0,
                                    m1, b.nr)
            xp = self.xp
            xp.tanh(self.th_t[r0:r1 + 1], out=self.th_t[r0:r1 + 1])
            xp.tanh(self.th_p[r0:r1], out=self.th_p[r0:r1])
        self.rate = self.K.flow_faces(self.vt0, self.vp0, two(self.th_t), two(self.th_p), self.face_att,
                                      self.attenuate, two(self.vt_f), two(self.vp_f), two(self.mt), two(self.mp), r0,
                                      r1, m0, m1, b.nr, self.dt_i, self.st_i, self.dp_i, self.interior)
        exchange(self.mt, self.mp)
        self.K.flow_alpha(two(self.vt_f), two(self.vp_f), two(self.mt), two(self.mp), self.row_ok, two(self.hn_t),
                          two(self.hp_t), two(self.hn_p), two(self.hp_p), r0, r1, m0, m1, b.nr, self.interior)
        exchange(self.hn_t, self.hp_t, self.hn_p, self.hp_p)
        self.prepared = True
        return self.rate

    # ------------------------------------------------------------------ per stage
    def stage(self, u, u0, out, a: float, bcoef: float, cdt: float) -> None:
        """``out = a u0 + bcoef u - cdt div(v u)`` on the owned cells (``u`` ghosts filled).

        Collective on the ranks of the pole process rows (the cap sums).
        """
        b = self.b
        R, L, nr = b.R, b.L, b.nr
        u2, o2 = u.reshape(R, L), out.reshape(R, L)
        z2 = u0.reshape(R, L) if u0 is not None else u2
        m0, m1 = b.m_own
        two = lambda x: x.reshape(R, L)  # noqa: E731
        self.K.advection_stage(u2, z2, o2, two(self.hn_t), two(self.hp_t), two(self.hn_p), two(self.hp_p),
                               two(self.vt_f), self.face_kind, self.wt, self.wp, self.sth, self.st_i, self.dt_i,
                               self.dp_i, b.r_int[0], b.r_int[1], m0, m1, nr, a, bcoef, cdt, self.ft_n, self.ft_s,
                               self.fp)
        self._poles(u2, z2, o2, a, bcoef, cdt)

    def apply(self, u, y) -> None:
        """``y = dBr/dt = -div(v u)`` on the owned cells (``u`` ghosts filled; :meth:`prepare` called)."""
        self.stage(u, None, y, 0.0, 0.0, 1.0)

    def _poles(self, u2, z2, o2, a, bcoef, cdt) -> None:
        d = self.domain
        if not (d.poles.north or d.poles.south):
            return
        b = self.b
        m0, m1 = b.m_own
        vt2 = self.vt_f.reshape(b.R, b.L)
        north = south = None
        if b.north_row >= 0:
            self.K.pole_face_flux(u2, vt2, b.north_row + 1, m0, m1, self.dp, self.pole_buf)
            north = self.pole_buf.reshape(b.npl, b.nr).copy()
        if b.south_row >= 0:
            self.K.pole_face_flux(u2, vt2, b.south_row, m0, m1, self.dp, self.pole_buf)
            south = self.pole_buf.reshape(b.npl, b.nr).copy()
        ns, ss = d.poles.sums(north, south)
        if ns is not None:
            self.K.pole_stage(u2, z2, o2, b.north_row, m0, m1, b.nr, np.ascontiguousarray(ns * self.cap_n), a,
                              bcoef, cdt)
        if ss is not None:
            self.K.pole_stage(u2, z2, o2, b.south_row, m0, m1, b.nr, np.ascontiguousarray(-ss * self.cap_s), a,
                              bcoef, cdt)

    def unattenuated_rate(self) -> float:
        """This rank's ``k.v`` of the flows without attenuation (an upper bound for any field) [1/h]."""
        b = self.b
        vt0, vp0 = self.flows.face_velocities(self.grid)
        mt = np.maximum(np.abs(vt0[:-1]), np.abs(vt0[1:]))
        mp = np.abs(vp0)
        fac = self.grid.advection_factors()
        k = mt * fac["dt_i"][:, None] + mp * (fac["st_i"] * float(fac["dp_i"].max()))[:, None]
        rows = b.rows[b.r_own[0]:b.r_own[1]]
        rows = rows[(rows >= 1) & (rows <= self.grid.ntheta - 2)]
        return float(k[rows].max()) if rows.size else 0.0


class DiffusionOperator:
    """HipFT's five-point ``div(eta grad Br)`` with its metric factors, fused with the STS stages.

    Not collective to build; :meth:`apply`, :meth:`sts_first` and :meth:`sts_stage`
    are collective on the ranks of the pole process rows. ``eta`` is per
    realization [R_sun^2/h].
    """

    def __init__(self, domain, grid, eta, xp=np):
        self.domain = domain
        self.grid = grid
        self.xp = xp
        b = Block(domain, grid)
        self.b = b
        eta = np.asarray(eta, dtype=np.float64).reshape(b.nr)
        self.eta = eta
        f = grid.diffusion_factors()
        inner = b.interior
        self.an = np.where(inner, b.per_row(f["an"]), 0.0)
        self.as_ = np.where(inner, b.per_row(f["as"]), 0.0)
        self.s = np.where(inner, b.per_row(f["s"]), 0.0)
        self.pw = b.per_value(f["pw"])
        self.pe = b.per_value(f["pe"])
        self.dp = b.per_value(f["dp"])
        self.eta_m = np.ascontiguousarray(np.tile(eta, b.C))
        self.eta2_m = np.ascontiguousarray(np.tile(eta + eta, b.C))
        self.cap_n, self.cap_s = f["cap_n"], f["cap_s"]
        self.interior = inner.astype(np.bool_)
        self.pole_buf = np.zeros(b.npl * b.nr)
        self.K = _kernels(xp)
        if xp is not np:
            for name in ("an", "as_", "s", "pw", "pe", "dp", "eta_m", "eta2_m"):
                setattr(self, name, xp.asarray(getattr(self, name)))
        # HipFT's Gershgorin bound over this rank's interior cells: sum |coef| = 2 eta (an + as + s (pw + pe))
        rows = np.arange(b.r_int[0], b.r_int[1])
        cols = np.arange(GHOST, GHOST + b.npl)
        emax = float(eta.max()) if eta.size else 0.0
        if rows.size and emax > 0.0:
            pw = f["pw"][b.cols[cols]]
            pe = f["pe"][b.cols[cols]]
            rad = 2.0 * (self.an[rows, None] + self.as_[rows, None] + self.s[rows, None] * (pw + pe)[None, :])
            self.local_rate = float(rad.max()) * emax
        else:
            self.local_rate = 0.0
        """Largest Gershgorin radius on this rank [1/h]; the Euler limit is ``0.95 * 2 / max over ranks``."""

    def _two(self, x):
        return x.reshape(self.b.R, self.b.L)

    def _pole_values(self, x2):
        """Operator values ``(nr,)`` of the caps (None where not held). Collective on the pole process rows."""
        d = self.domain
        if not (d.poles.north or d.poles.south):
            return None, None
        b = self.b
        m0, m1 = b.m_own
        north = south = None
        if b.north_row >= 0:
            self.K.pole_diffusion_contrib(x2, b.north_row, b.north_row + 1, m0, m1, self.eta2_m, self.dp,
                                          self.pole_buf)
            north = self.pole_buf.reshape(b.npl, b.nr).copy()
        if b.south_row >= 0:
            self.K.pole_diffusion_contrib(x2, b.south_row - 1, b.south_row, m0, m1, self.eta2_m, self.dp,
                                          self.pole_buf)
            south = self.pole_buf.reshape(b.npl, b.nr).copy()
        ns, ss = d.poles.sums(north, south)
        return (None if ns is None else np.ascontiguousarray(ns * self.cap_n),
                None if ss is None else np.ascontiguousarray(-ss * self.cap_s))

    def apply(self, x, y) -> None:
        """``y = L x`` on the owned cells (``x`` ghosts filled)."""
        b = self.b
        x2, y2 = self._two(x), self._two(y)
        m0, m1 = b.m_own
        self.K.diffusion_apply(x2, y2, b.r_int[0], b.r_int[1], m0, m1, b.nr, self.an, self.as_, self.s, self.pw,
                               self.pe, self.eta_m)
        yn, ys = self._pole_values(x2)
        for r, v in ((b.north_row, yn), (b.south_row, ys)):
            if v is not None:
                y2[r, m0:m1] = self.xp.asarray(np.tile(v, b.npl))

    def sts_first(self, u0, dty0, ukm1, dt: float, mut1: float) -> None:
        """``dty0 = dt L(u0)``, ``ukm1 = u0 + mut1 dty0`` on the owned cells (``u0`` ghosts filled)."""
        b = self.b
        a, d, k = self._two(u0), self._two(dty0), self._two(ukm1)
        m0, m1 = b.m_own
        self.K.sts_first(a, d, k, b.r_int[0], b.r_int[1], m0, m1, b.nr, self.an, self.as_, self.s, self.pw,
                         self.pe, self.eta_m, dt, mut1)
        yn, ys = self._pole_values(a)
        for r, v in ((b.north_row, yn), (b.south_row, ys)):
            if v is not None:
                self.K.pole_sts_first(a, d, k, r, m0, m1, b.nr, v, dt, mut1)

    def sts_stage(self, ukm1, ukm2, u0, dty0, out, mu, nu, mutdt, gam) -> None:
        """``out = mu ukm1 + nu ukm2 + (1 - mu - nu) u0 + mutdt L(ukm1) + gam dty0`` (``ukm1`` ghosts filled)."""
        b = self.b
        k1, k2, z, d, o = (self._two(x) for x in (ukm1, ukm2, u0, dty0, out))
        m0, m1 = b.m_own
        w0 = 1.0 - mu - nu
        self.K.sts_stage(k1, k2, z, d, o, b.r_int[0], b.r_int[1], m0, m1, b.nr, self.an, self.as_, self.s, self.pw,
                         self.pe, self.eta_m, mu, nu, w0, mutdt, gam)
        yn, ys = self._pole_values(k1)
        for r, v in ((b.north_row, yn), (b.south_row, ys)):
            if v is not None:
                self.K.pole_sts_stage(k1, k2, z, d, o, r, m0, m1, b.nr, v, mu, nu, w0, mutdt, gam)

    def ptl_local(self, f, af, amax: float = None):
        """HipFT's practical-limit pieces on this rank: ``max |L f|`` (``amax`` None) or the local minimum ratio."""
        b = self.b
        f2, a2 = self._two(f), self._two(af)
        m0, m1 = b.m_own
        r0, r1 = b.r_own
        if amax is None:
            return self.K.ptl_max(f2, a2, r0, r1, m0, m1, 1e-14)
        return self.K.ptl_min(f2, a2, r0, r1, m0, m1, b.nr, self.interior, amax, 1e-14, _HUGE)
