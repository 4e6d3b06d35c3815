"""The theta-phi grid of the sphere: nodes pole to pole, periodic phi cells, pole caps, exact cell areas."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SphereGrid", "RSUN_CM2", "KM2_S_TO_RS2_H", "M_S_TO_RS_H", "KM_S_TO_RS_H"]

RSUN_CM2 = 4.84416e21
"""Solar radius squared [cm^2]: converts G R^2 to Mx."""
KM2_S_TO_RS2_H = 7.43162901307967e-9
"""1 km^2/s in R_sun^2/h (HipFT's ``diff_km2_s_to_rs2_hr``)."""
M_S_TO_RS_H = 5.172413793103448e-6
"""1 m/s in R_sun/h."""
KM_S_TO_RS_H = 5.172413793103448e-3
"""1 km/s in R_sun/h."""


class SphereGrid:
    """A uniform theta-phi grid of the unit sphere, HipFT's mesh.

    Not collective; cheap (1-D arrays only). Rows are ``ntheta`` colatitude nodes
    ``theta_j = j pi / (ntheta - 1)`` including both poles; the two pole rows are
    the pole caps (``0 <= theta <= dtheta/2`` and its mirror), single values stored
    once per phi column. Columns are ``nphi`` periodic cells ``phi_k = k 2 pi /
    nphi``; files carry one more column (``phi = 2 pi``, a copy of ``phi = 0``).
    Cell faces sit half-way between nodes. Areas are exact on the unit sphere:
    ``2 sin(theta_j) sin(dtheta/2) dphi`` for a cell, ``2 pi (1 - cos(dtheta/2))``
    for a cap, so the areas sum to ``4 pi`` up to rounding.

    HipFT's metric arrays (:meth:`_hipft_metrics`) come from the node scales
    themselves, as HipFT computes them from a map's ``dim1``/``dim2``: a grid built
    from a file's (single-precision) scales carries that file's tiny spacing
    differences into every weight, so diagnostics and operators agree with HipFT's
    to round-off on the same map.

    Parameters
    ----------
    ntheta : int
        Rows, poles included (>= 5).
    nphi : int
        Periodic phi cells (>= 4), i.e. the file's phi points minus one.
    theta, phi : array_like, optional
        The node scales (``ntheta`` colatitudes pole to pole; ``nphi + 1`` longitudes
        0 .. 2 pi inclusive) when they come from a file; default: exactly uniform.
    """

    def __init__(self, ntheta: int, nphi: int, theta=None, phi=None):
        for name, value, least in (("ntheta", ntheta, 5), ("nphi", nphi, 4)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
            if value < least:
                raise ValueError(f"{name}: expected >= {least}, got {value}")
        self.ntheta = int(ntheta)
        self.nphi = int(nphi)
        self.dtheta = math.pi / (self.ntheta - 1)
        self.dphi = 2.0 * math.pi / self.nphi
        j = np.arange(self.ntheta, dtype=np.float64)
        self.theta = j * math.pi / (self.ntheta - 1)
        self.theta[-1] = math.pi
        self.phi = np.arange(self.nphi, dtype=np.float64) * (2.0 * math.pi / self.nphi)
        # face j+1/2 between rows j and j+1, j = 0 .. ntheta-2
        self.theta_faces = (np.arange(self.ntheta - 1, dtype=np.float64) + 0.5) * math.pi / (self.ntheta - 1)
        self.sin_theta = np.sin(self.theta)
        self.sin_theta[0] = self.sin_theta[-1] = 0.0
        self.cos_theta = np.cos(self.theta)
        self.sin_faces = np.sin(self.theta_faces)
        half = math.sin(0.5 * self.dtheta)
        self.cap_area = 2.0 * math.pi * (1.0 - math.cos(0.5 * self.dtheta))
        # area of one stored cell; a pole row's cap is shared by its nphi entries
        self.cell_area = 2.0 * self.sin_theta * half * self.dphi
        self.cell_area[0] = self.cell_area[-1] = self.cap_area / self.nphi
        self.scale_theta = self.theta.copy() if theta is None else np.asarray(theta, dtype=np.float64).ravel().copy()
        self.scale_phi = (np.arange(self.nphi + 1, dtype=np.float64) * (2.0 * math.pi / self.nphi) if phi is None
                          else np.asarray(phi, dtype=np.float64).ravel().copy())
        if self.scale_theta.size != self.ntheta or self.scale_phi.size != self.nphi + 1:
            raise ValueError(f"scales: expected {self.ntheta} theta and {self.nphi + 1} phi values, got "
                             f"{self.scale_theta.size} and {self.scale_phi.size}")
        self._hipft_metrics()

    def _hipft_metrics(self) -> None:
        """HipFT's mesh quantities (``set_mesh``), re-indexed to this grid's rows and columns.

        Rows ``j = 0 .. ntheta-1`` are HipFT's main-mesh theta points; face ``j``
        (``j = 0 .. ntheta``) lies north of row ``j`` (faces 0 and ``ntheta`` are the
        ghost faces beyond the poles). Column ``c`` is HipFT's unique phi point
        ``k = c + 1`` (1-based ``k = c + 2``), column 0 being HipFT's ``p = 2 pi``
        point. Per row: ``t, st, ct, st_i, dt`` (row width); per face: ``th, dth,
        sth, cth``; per column: ``dp`` (cell width), ``dph_w`` / ``dph_e`` (node
        spacings across the west / east face), and HipFT's CS-WENO3 linear weights
        (``weno_t``, ``weno_p``: rows ``D_C_CP, D_C_MC, D_M_T, D_CP_T, D_P_T, D_MC_T,
        eps``) and diagnostic weights (:attr:`diag_theta`, :attr:`diag_phi`).
        """
        t = self.scale_theta
        n = self.ntheta
        half = 0.5
        th = np.empty(n + 1)
        dth = np.empty(n + 1)
        th[1:n] = half * (t[1:] + t[:-1])
        dth[1:n] = t[1:] - t[:-1]
        th[0] = th[1] - dth[1]
        th[n] = th[n - 1] + dth[n - 1]
        dth[0] = dth[1]
        dth[n] = dth[n - 1]
        self.h_t = t.copy()
        self.h_th = th
        self.h_dth = dth
        self.h_dt = th[1:] - th[:-1]
        st = np.sin(t)
        st[0] = st[-1] = 0.0
        ct = np.cos(t)
        ct[0] = ct[-1] = 1.0  # as HipFT (only ever multiplied by st = 0 there)
        self.h_st = st
        self.h_ct = ct
        st_i = np.zeros(n)
        st_i[1:-1] = 1.0 / st[1:-1]
        self.h_st_i = st_i
        self.h_sth = np.sin(np.abs(th))
        self.h_cth = np.cos(th)
        # phi: HipFT's p(1 .. np) with p(np) = p(2) + 2 pi (np = nphi + 2), here 0-based q = 0 .. nphi + 1
        m = self.nphi
        p = np.empty(m + 2)
        p[:m + 1] = self.scale_phi
        p[m + 1] = p[1] + 2.0 * math.pi
        ph = np.empty(m + 2)
        dph = np.empty(m + 2)
        ph[1:] = half * (p[1:] + p[:-1])
        dph[1:] = p[1:] - p[:-1]
        ph[0] = ph[m] - 2.0 * math.pi
        dph[0] = dph[m]
        dp = np.empty(m + 2)
        dp[:m + 1] = ph[1:] - ph[:-1]
        dp[m + 1] = dp[1]
        q = np.arange(m)
        q[0] = m  # our column 0 is HipFT's p = 2 pi point
        self.h_p = p
        self.h_q = q
        self.dp = dp[q].copy()
        """Cell widths [rad] of the ``nphi`` columns (HipFT's ``dp``)."""
        self.dph_w = dph[q].copy()
        self.dph_e = dph[q + 1].copy()

        def weights(d):
            # HipFT's load_weno on cell widths d(i-1), d(i), d(i+1)
            dm, dc, dq = d[:-2], d[1:-1], d[2:]
            tot = dm + dc + dq
            return np.stack([dc / (dc + dq), dc / (dm + dc), dm / tot, (dc + dq) / tot, dq / tot, (dm + dc) / tot])

        wt = np.zeros((7, n))
        wt[:6, 1:-1] = weights(self.h_dt)
        wt[6] = self.h_dt
        self.weno_t = wt
        wp = weights(dp)  # for q = 1 .. nphi
        wfull = np.zeros((6, m + 2))
        wfull[:, 1:m + 1] = wp
        wfull[:, 0] = wfull[:, m]
        wfull[:, m + 1] = wfull[:, 1]
        self.weno_p = np.vstack([wfull[:, q], dp[q][None, :]])
        # diagnostics (analysis_step): theta weights da_t, sin and cos at the row; phi weights by file column
        da_t = st.copy()
        sn = np.sin(t)
        cs = np.cos(t)
        da_t = sn * self.h_dt
        tav_n = half * (t[0] + t[1])
        tav_s = half * (t[-1] + t[-2])
        sn[0], cs[0] = math.sin(tav_n), math.cos(tav_n)
        sn[-1], cs[-1] = math.sin(tav_s), math.cos(tav_s)
        da_t[0] = 0.25 * sn[0] * dth[1]
        da_t[-1] = 0.25 * sn[-1] * dth[n - 1]
        self.diag_theta = np.stack([da_t, sn, cs])
        """``(3, ntheta)``: HipFT's ``da_t``, ``sin`` and ``cos`` of each row for the history integrals."""
        # file columns i = 0 .. nphi (both 0 and 2 pi); column 0 and nphi are the same cell
        da_p = np.empty(m + 1)
        da_p[1:m] = dp[1:m]
        da_p[0] = half * dph[0]
        da_p[m] = half * dph[m]
        pf = p[:m + 1]
        w = np.zeros((3, m))
        for i in range(m + 1):
            c = i % m
            w[0, c] += da_p[i]
            w[1, c] += math.cos(pf[i]) * da_p[i]
            w[2, c] += math.sin(pf[i]) * da_p[i]
        self.diag_phi = w
        """``(3, nphi)``: HipFT's ``da_p``, ``cos(p) da_p`` and ``sin(p) da_p`` per column (seam columns folded)."""

    # ------------------------------------------------------------------ HipFT's operator factors
    def advection_factors(self) -> dict:
        """Per-row, per-face and per-column factors of HipFT's advection operator.

        ``sth (ntheta + 1)`` face sines, ``st_i``, ``dt_i (ntheta)``, ``dp_i``, ``dp (nphi)``;
        ``cap_n``, ``cap_s``: HipFT's ``bc_flow_npole_fac`` (``2 / (dth pi)``).
        """
        pi_i = 1.0 / math.pi
        return {"sth": self.h_sth, "st_i": self.h_st_i, "dt_i": 1.0 / self.h_dt, "dp_i": 1.0 / self.dp,
                "dp": self.dp, "cap_n": 2.0 * (1.0 / self.h_dth[1]) * pi_i,
                "cap_s": 2.0 * (1.0 / self.h_dth[self.ntheta - 1]) * pi_i}

    def diffusion_factors(self) -> dict:
        """Factors of HipFT's five-point diffusion operator (``load_diffusion_matrix``) without eta.

        ``L x = eta ((an (x_n - x) + as (x_s - x)) + s (pw (x_w - x) + pe (x_e - x)))`` with
        ``an = dth_i(j) dt_i(j) st_i(j) sth(j)``, ``as = dth_i(j+1) dt_i(j) st_i(j) sth(j+1)``,
        ``s = st_i^2`` per row and ``pw = dph_i(k) dp_i(k)``, ``pe = dph_i(k+1) dp_i(k)`` per
        column; caps: ``cap_n = dth_i^2 / pi`` times ``sum (2 eta) (x_1 - x_0) dp``.
        """
        dth_i = 1.0 / self.h_dth
        dt_i = 1.0 / self.h_dt
        an = dth_i[:-1] * dt_i * self.h_st_i * self.h_sth[:-1]
        as_ = dth_i[1:] * dt_i * self.h_st_i * self.h_sth[1:]
        dp_i = 1.0 / self.dp
        pi_i = 1.0 / math.pi
        return {"an": an, "as": as_, "s": self.h_st_i * self.h_st_i, "pw": (1.0 / self.dph_w) * dp_i,
                "pe": (1.0 / self.dph_e) * dp_i, "dp": self.dp,
                "cap_n": pi_i * dth_i[1] ** 2, "cap_s": pi_i * dth_i[self.ntheta - 1] ** 2}

    # ------------------------------------------------------------------ scales of files
    @property
    def shape(self) -> tuple:
        """``(ntheta, nphi)``: the stored (unique-cell) grid."""
        return (self.ntheta, self.nphi)

    @property
    def file_phi(self) -> np.ndarray:
        """The phi scale of files, ``nphi + 1`` points from 0 to 2 pi inclusive."""
        return np.linspace(0.0, 2.0 * math.pi, self.nphi + 1)

    @property
    def file_theta(self) -> np.ndarray:
        """The theta scale of files, ``ntheta`` points from 0 to pi inclusive."""
        return self.theta.copy()

    @classmethod
    def from_scales(cls, phi, theta, tol: float = 1e-5, name: str = "map") -> "SphereGrid":
        """The grid of a HipFT map from its scales (phi with the 2 pi copy, theta pole to pole).

        Raises ``ValueError`` naming ``name`` when the scales do not cover the sphere
        uniformly (HipFT's grids are uniform; this solver does not interpolate).
        """
        phi = np.asarray(phi, dtype=np.float64).ravel()
        theta = np.asarray(theta, dtype=np.float64).ravel()
        if phi.size < 5 or theta.size < 5:
            raise ValueError(f"{name}: scales too short (phi {phi.size}, theta {theta.size} points; need >= 5)")
        if abs(phi[0]) > tol or abs(phi[-1] - 2 * math.pi) > tol:
            raise ValueError(f"{name}: phi scale must run from 0 to 2 pi inclusive, got {phi[0]:.6g} .. "
                             f"{phi[-1]:.6g}")
        if abs(theta[0]) > tol or abs(theta[-1] - math.pi) > tol:
            raise ValueError(f"{name}: theta scale must run from 0 to pi inclusive (poles included), got "
                             f"{theta[0]:.6g} .. {theta[-1]:.6g}")
        grid = cls(theta.size, phi.size - 1, theta=theta, phi=phi)
        dphi_err = float(np.max(np.abs(phi - grid.file_phi)))
        dtheta_err = float(np.max(np.abs(theta - grid.theta)))
        if dphi_err > tol * 10 or dtheta_err > tol * 10:
            raise ValueError(f"{name}: scales are not uniform (max deviation phi {dphi_err:.3g}, theta "
                             f"{dtheta_err:.3g} rad); this solver needs HipFT's uniform mesh")
        return grid

    def total_area(self) -> float:
        """Sum of all stored cell areas (4 pi up to rounding)."""
        return float(self.cell_area.sum() * self.nphi)

    def __eq__(self, other) -> bool:
        """Same shape (a file's scales may differ from the exact ones in their last float32 bits)."""
        return isinstance(other, SphereGrid) and self.shape == other.shape

    def __hash__(self) -> int:
        return hash(self.shape)

    def __repr__(self) -> str:
        return f"SphereGrid(ntheta={self.ntheta}, nphi={self.nphi})"
