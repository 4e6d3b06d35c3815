"""Compiled host kernels of the flux-transport operators (numba): HipFT's discretisation, fused per row.

Every kernel works on this rank's padded local arrays: ``(R, C, nr)`` (rows and
columns with ``GHOST`` ghost cells, realizations trailing), passed as the 2-D view
``(R, L)`` with ``L = C * nr`` where a phi neighbour is ``nr`` values away and a
theta neighbour one row away. Per-row metric arrays have length ``R``; per-column
ones are expanded to length ``L`` (one value per column and realization), so the
innermost loop runs over contiguous memory and vectorises. Ghost values must be
filled by a halo exchange before a kernel reads them; kernels write only the
owned rows ``[r0, r1)`` and values ``[m0, m1)`` of a row.

The formulas are HipFT's (``src/hipft.f90``): face velocities attenuated by
``1 - tanh(max(|Br|) / B_att)`` of the two cells beside the face; local
Lax-Friedrichs splitting ``LN = f (v_north + alpha) / 2``, ``LP = f (v_south -
alpha) / 2`` with ``alpha`` the largest face speed over five cells; CS-WENO3 with
HipFT's non-uniform linear weights and ``eps`` the cell width; first-order
upwinding at the theta faces beside the poles; the divergence in HipFT's form
``((sth_s F_s - sth_n F_n) / (st dt) + (F_e - F_w) / (st dp))``; the five-point
diffusion operator with HipFT's metric factors. The only rearrangement is in the
WENO weights, ``(w0 p0 + w1 p1) / (w0 + w1)`` with the squared smoothness factors
cross-multiplied (one division instead of six), a rounding-level difference.

:mod:`.reference` holds the same formulas in plain NumPy on whole-sphere
arrays: the test oracle.

All kernels use ``error_model="numpy"`` (a division by zero gives inf/nan instead
of raising): without it numba guards every division with a branch and LLVM
does not vectorise the loops (4-8x slower here).
"""

from __future__ import annotations

from numba import njit

__all__ = ["attenuation_args", "flow_faces", "flow_alpha", "advection_stage", "pole_face_flux", "pole_stage",
           "diffusion_apply",
           "sts_stage", "sts_first", "pole_diffusion_contrib", "pole_sts_stage", "pole_sts_first", "ptl_max",
           "ptl_min", "weno3"]


@njit(cache=True, error_model="numpy", inline="always")
def weno3(la, lb, lc, pa, pb, pc, pd, wm, wc):
    """CS-WENO3 LLF flux at the face between cells b and c.

    ``la, lb, lc``: ``LN`` of cells a, b, c (left-biased); ``pb, pc, pd``: ``LP`` of
    cells b, c, d (right-biased); ``pa`` unused (kept for a symmetric call).
    ``wm``, ``wc``: the weight tuples ``(C_CP, C_MC, M_T, CP_T, P_T, MC_T, eps)`` of
    cells b and c.
    """
    ccp_m, cmc_m, _mt_m, _cpt_m, pt_m, mct_m, eps_m = wm
    ccp_c, cmc_c, mt_c, cpt_c, _pt_c, _mct_c, eps_c = wc
    p0m = (1.0 + cmc_m) * lb - cmc_m * la
    p1m = cmc_c * lb + ccp_m * lc
    p0p = (1.0 + ccp_c) * pc - ccp_c * pd
    p1p = ccp_m * pc + cmc_c * pb
    b0m = cmc_m * (lb - la)
    b1m = ccp_m * (lc - lb)
    b0p = ccp_c * (pd - pc)
    b1p = cmc_c * (pc - pb)
    s0m = eps_m + 4.0 * (b0m * b0m)
    s1m = eps_m + 4.0 * (b1m * b1m)
    s0p = eps_c + 4.0 * (b0p * b0p)
    s1p = eps_c + 4.0 * (b1p * b1p)
    # w0 = P_T / s0^2, w1 = MC_T / s1^2  ->  (w0 p0 + w1 p1) / (w0 + w1) with s0^2 s1^2 cleared
    a0m = pt_m * (s1m * s1m)
    a1m = mct_m * (s0m * s0m)
    a0p = mt_c * (s1p * s1p)
    a1p = cpt_c * (s0p * s0p)
    um = (a0m * p0m + a1m * p1m) / (a0m + a1m)
    up = (a0p * p0p + a1p * p1p) / (a0p + a1p)
    return up + um


# ---------------------------------------------------------------------------------------------- per step
@njit(cache=True, error_model="numpy")
def attenuation_args(u, inv_b, face_att, at_t, at_p, r0, r1, m0, m1, nr):
    """``max(|Br|) / B_att`` of the two cells beside every face HipFT attenuates (the argument of its tanh).

    2-D views ``(R, L)``. ``at_t[r]``: the north face of row ``r`` for rows ``r0 .. r1``
    (inclusive: the south face of the last owned row) where ``face_att[r]``;
    ``at_p[r, m]``: the west face of value ``m`` for ``m0 .. m1 + nr`` on rows ``r0 .. r1 - 1``.
    The caller applies ``np.tanh`` in place (NumPy's SIMD tanh: numba's calls libm one value at a time).
    """
    n = m1 - m0
    ib = inv_b[m0:m1]
    for r in range(r0, r1 + 1):
        if face_att[r]:
            un, uc, a = u[r - 1, m0:m1], u[r, m0:m1], at_t[r, m0:m1]
            for k in range(n):
                a[k] = max(abs(un[k]), abs(uc[k])) * ib[k]
    ibe = inv_b[m0:m1 + nr]
    for r in range(r0, r1):
        uw, uc, a = u[r, m0 - nr:m1], u[r, m0:m1 + nr], at_p[r, m0:m1 + nr]
        for k in range(n + nr):
            a[k] = max(abs(uw[k]), abs(uc[k])) * ibe[k]


@njit(cache=True, error_model="numpy")
def flow_faces(vt0, vp0, th_t, th_p, face_att, attenuate, vt_f, vp_f, mt, mp, r0, r1, m0, m1, nr, dt_i, st_i, dp_i,
               interior):
    """Attenuated face velocities, the face-speed maxima of each cell and the CFL rate (HipFT's
    ``update_flow`` and ``get_flow_dtmax`` in one pass).

    2-D views ``(R, L)``. ``vt0``, ``vp0``: unattenuated theta velocity at the north
    face of each row and phi velocity of each row, per value [R_sun/h]; ``th_t``,
    ``th_p``: ``tanh`` of :func:`attenuation_args` (used where ``attenuate`` and, for
    theta, ``face_att[r]``). Writes ``vt_f`` (north faces of rows ``r0 .. r1``),
    ``vp_f`` (west faces of values ``m0 .. m1 + nr``) for rows ``r0 .. r1-1``, and
    ``mt = max(|vt_n|, |vt_s|)``, ``mp = max(|vp_w|, |vp_e|)`` on the owned cells.
    Returns the largest ``mt dt_i + mp st_i dp_i`` over owned ``interior`` rows
    [1/h] (HipFT's k.v).
    """
    n = m1 - m0
    for r in range(r0, r1 + 1):
        v0, vf = vt0[r, m0:m1], vt_f[r, m0:m1]
        if attenuate and face_att[r]:
            a = th_t[r, m0:m1]
            for k in range(n):
                vf[k] = v0[k] * (1.0 - a[k])
        else:
            for k in range(n):
                vf[k] = v0[k]
    for r in range(r0, r1):
        v0, vf = vp0[r, m0:m1 + nr], vp_f[r, m0:m1 + nr]
        if attenuate:
            a = th_p[r, m0:m1 + nr]
            for k in range(n + nr):
                vf[k] = v0[k] * (1.0 - a[k])
        else:
            for k in range(n + nr):
                vf[k] = v0[k]
    rate = 0.0
    dpi = dp_i[m0:m1]
    for r in range(r0, r1):
        vn, vs = vt_f[r, m0:m1], vt_f[r + 1, m0:m1]
        vw, ve = vp_f[r, m0:m1], vp_f[r, m0 + nr:m1 + nr]
        tr, pr = mt[r, m0:m1], mp[r, m0:m1]
        for k in range(n):
            tr[k] = max(abs(vn[k]), abs(vs[k]))
            pr[k] = max(abs(vw[k]), abs(ve[k]))
        if interior[r]:
            a1 = dt_i[r]
            a2 = st_i[r]
            for k in range(n):
                rate = max(rate, tr[k] * a1 + pr[k] * a2 * dpi[k])
    return rate


@njit(cache=True, error_model="numpy")
def flow_alpha(vt_f, vp_f, mt, mp, row_ok, hn_t, hp_t, hn_p, hp_p, r0, r1, m0, m1, nr, interior):
    """Local Lax-Friedrichs speeds and the split velocities of the owned cells (HipFT's ``set_lf_alpha``).

    ``alpha_t`` of a cell is the largest ``mt`` over rows ``r-2 .. r+2`` that exist
    (``row_ok``; a missing row is replaced by row ``r``, which changes no maximum),
    ``alpha_p`` the largest ``mp`` over columns ``c-2 .. c+2`` (periodic through the
    ghosts: ``mt``, ``mp`` exchanged first). Writes ``hn_t = vt_north + alpha_t``,
    ``hp_t = vt_south - alpha_t`` and the same in phi (zero on the pole rows, which
    have no phi fluxes).
    """
    n = m1 - m0
    for r in range(r0, r1):
        ra = r - 2 if row_ok[r - 2] else r
        rb = r - 1 if row_ok[r - 1] else r
        rc = r + 1 if row_ok[r + 1] else r
        rd = r + 2 if row_ok[r + 2] else r
        t0, t1, t2, t3, t4 = mt[ra, m0:m1], mt[rb, m0:m1], mt[r, m0:m1], mt[rc, m0:m1], mt[rd, m0:m1]
        vn, vs = vt_f[r, m0:m1], vt_f[r + 1, m0:m1]
        hn, hp = hn_t[r, m0:m1], hp_t[r, m0:m1]
        for k in range(n):
            at = max(max(max(max(t0[k], t1[k]), t2[k]), t3[k]), t4[k])
            hn[k] = vn[k] + at
            hp[k] = vs[k] - at
        qn, qp = hn_p[r, m0:m1], hp_p[r, m0:m1]
        if interior[r]:
            a = mp[r, m0 - 2 * nr:m1 - 2 * nr]
            b = mp[r, m0 - nr:m1 - nr]
            c = mp[r, m0:m1]
            d = mp[r, m0 + nr:m1 + nr]
            e = mp[r, m0 + 2 * nr:m1 + 2 * nr]
            vw, ve = vp_f[r, m0:m1], vp_f[r, m0 + nr:m1 + nr]
            for k in range(n):
                ap = max(max(max(max(a[k], b[k]), c[k]), d[k]), e[k])
                qn[k] = vw[k] + ap
                qp[k] = ve[k] - ap
        else:
            for k in range(n):
                qn[k] = 0.0
                qp[k] = 0.0


# ---------------------------------------------------------------------------------------------- per stage
@njit(cache=True, error_model="numpy")
def _theta_faces(u, hn, hp, vt_f, kind, wt, r, m0, m1, out):
    """Theta fluxes at the north face of row ``r`` for values ``m0 .. m1``: WENO3 (kind 2) or upwind (kind 1)."""
    n = m1 - m0
    if kind == 1:
        v = vt_f[r, m0:m1]
        un = u[r - 1, m0:m1]
        uc = u[r, m0:m1]
        for k in range(n):
            out[k] = v[k] * un[k] if v[k] >= 0.0 else v[k] * uc[k]
        return
    ua, ub, uc, ud = u[r - 2, m0:m1], u[r - 1, m0:m1], u[r, m0:m1], u[r + 1, m0:m1]
    na, nb, nc = hn[r - 2, m0:m1], hn[r - 1, m0:m1], hn[r, m0:m1]
    pb, pc, pd = hp[r - 1, m0:m1], hp[r, m0:m1], hp[r + 1, m0:m1]
    q = r - 1
    wm = (wt[0, q], wt[1, q], wt[2, q], wt[3, q], wt[4, q], wt[5, q], wt[6, q])
    wc = (wt[0, r], wt[1, r], wt[2, r], wt[3, r], wt[4, r], wt[5, r], wt[6, r])
    for k in range(n):
        out[k] = weno3(0.5 * ua[k] * na[k], 0.5 * ub[k] * nb[k], 0.5 * uc[k] * nc[k], 0.0,
                       0.5 * ub[k] * pb[k], 0.5 * uc[k] * pc[k], 0.5 * ud[k] * pd[k], wm, wc)


@njit(cache=True, error_model="numpy")
def advection_stage(u, u0, out, hn_t, hp_t, hn_p, hp_p, vt_f, face_kind, wt, wp, sth, st_i, dt_i, dp_i,
                    r0, r1, m0, m1, nr, a, b, cdt, ft_n, ft_s, fp):
    """``out = a u0 + b u - cdt div(v u)`` on the owned interior rows ``[r0, r1)`` (one SSPRK stage).

    2-D views ``(R, L)``. ``face_kind[r]``: 1 upwind, 2 WENO3 at the north face of
    row ``r``; ``wt (7, R)`` and ``wp (7, L)`` HipFT's linear weights and eps per row and
    per value; ``sth (R + 1)`` the sine at every face row; ``ft_n``, ``ft_s``,
    ``fp``: scratch of length ``L``. The theta flux of a face is computed once
    (carried from a row's south face to the next row's north face) and the phi
    fluxes once per row.
    """
    if r0 >= r1:
        return
    n = m1 - m0
    _theta_faces(u, hn_t, hp_t, vt_f, face_kind[r0], wt, r0, m0, m1, ft_n)
    w0, w1, w2, w3 = wp[0, m0 - nr:m1], wp[1, m0 - nr:m1], wp[2, m0 - nr:m1], wp[3, m0 - nr:m1]
    w4, w5, w6 = wp[4, m0 - nr:m1], wp[5, m0 - nr:m1], wp[6, m0 - nr:m1]
    v0, v1, v2, v3 = wp[0, m0:m1 + nr], wp[1, m0:m1 + nr], wp[2, m0:m1 + nr], wp[3, m0:m1 + nr]
    v4, v5, v6 = wp[4, m0:m1 + nr], wp[5, m0:m1 + nr], wp[6, m0:m1 + nr]
    dpi = dp_i[m0:m1]
    for r in range(r0, r1):
        _theta_faces(u, hn_t, hp_t, vt_f, face_kind[r + 1], wt, r + 1, m0, m1, ft_s)
        ua, ub, uc, ud = (u[r, m0 - 2 * nr:m1 - nr], u[r, m0 - nr:m1], u[r, m0:m1 + nr], u[r, m0 + nr:m1 + 2 * nr])
        na, nb, nc = hn_p[r, m0 - 2 * nr:m1 - nr], hn_p[r, m0 - nr:m1], hn_p[r, m0:m1 + nr]
        pb, pc, pd = hp_p[r, m0 - nr:m1], hp_p[r, m0:m1 + nr], hp_p[r, m0 + nr:m1 + 2 * nr]
        for k in range(n + nr):
            fp[k] = weno3(0.5 * ua[k] * na[k], 0.5 * ub[k] * nb[k], 0.5 * uc[k] * nc[k], 0.0,
                          0.5 * ub[k] * pb[k], 0.5 * uc[k] * pc[k], 0.5 * ud[k] * pd[k],
                          (w0[k], w1[k], w2[k], w3[k], w4[k], w5[k], w6[k]),
                          (v0[k], v1[k], v2[k], v3[k], v4[k], v5[k], v6[k]))
        sn = sth[r]
        ss = sth[r + 1]
        ti = st_i[r] * dt_i[r]
        si = st_i[r]
        ur = u[r, m0:m1]
        orow = out[r, m0:m1]
        if a == 0.0:
            for k in range(n):
                aop = (ss * ft_s[k] - sn * ft_n[k]) * ti + (fp[k + nr] - fp[k]) * si * dpi[k]
                orow[k] = b * ur[k] - cdt * aop
        else:
            zr = u0[r, m0:m1]
            for k in range(n):
                aop = (ss * ft_s[k] - sn * ft_n[k]) * ti + (fp[k + nr] - fp[k]) * si * dpi[k]
                orow[k] = a * zr[k] + b * ur[k] - cdt * aop
        for k in range(n):
            ft_n[k] = ft_s[k]


@njit(cache=True, error_model="numpy")
def pole_face_flux(u, vt_f, r_face, m0, m1, dp, out):
    """Upwind flux through the cap edge times the column width, ``out[m] = F(face r_face) dp`` (HipFT's ``fn``)."""
    for m in range(m0, m1):
        v = vt_f[r_face, m]
        f = v * u[r_face - 1, m] if v >= 0.0 else v * u[r_face, m]
        out[m - m0] = f * dp[m]


@njit(cache=True, error_model="numpy")
def pole_stage(u, u0, out, r, m0, m1, nr, rate, a, b, cdt):
    """``out[r] = a u0 + b u - cdt rate`` on a pole row (``rate (nr,)``: the cap's right-hand side)."""
    for m in range(m0, m1):
        i = (m - m0) % nr
        if a == 0.0:
            out[r, m] = b * u[r, m] - cdt * rate[i]
        else:
            out[r, m] = a * u0[r, m] + b * u[r, m] - cdt * rate[i]


# ---------------------------------------------------------------------------------------------- diffusion
@njit(cache=True, error_model="numpy")
def diffusion_apply(x, y, r0, r1, m0, m1, nr, an, as_, s, pw, pe, eta):
    """``y = div(eta grad x)`` on owned interior rows (HipFT's five-point operator, ``eta`` per value)."""
    n = m1 - m0
    pwr, per, er = pw[m0:m1], pe[m0:m1], eta[m0:m1]
    for r in range(r0, r1):
        a1, a2, s1 = an[r], as_[r], s[r]
        xc, xn, xs = x[r, m0:m1], x[r - 1, m0:m1], x[r + 1, m0:m1]
        xw, xe = x[r, m0 - nr:m1 - nr], x[r, m0 + nr:m1 + nr]
        yr = y[r, m0:m1]
        for k in range(n):
            c = xc[k]
            yr[k] = er[k] * ((a1 * (xn[k] - c) + a2 * (xs[k] - c)) + s1 * (pwr[k] * (xw[k] - c) + per[k] * (xe[k] - c)))


@njit(cache=True, error_model="numpy")
def sts_first(u0, dty0, ukm1, r0, r1, m0, m1, nr, an, as_, s, pw, pe, eta, dt, mut1):
    """``dty0 = dt L(u0)``, ``ukm1 = u0 + mut1 dty0`` on owned interior rows (the first STS stage)."""
    n = m1 - m0
    pwr, per, er = pw[m0:m1], pe[m0:m1], eta[m0:m1]
    for r in range(r0, r1):
        a1, a2, s1 = an[r], as_[r], s[r]
        xc, xn, xs = u0[r, m0:m1], u0[r - 1, m0:m1], u0[r + 1, m0:m1]
        xw, xe = u0[r, m0 - nr:m1 - nr], u0[r, m0 + nr:m1 + nr]
        dr, kr = dty0[r, m0:m1], ukm1[r, m0:m1]
        for k in range(n):
            c = xc[k]
            d = dt * (er[k] * ((a1 * (xn[k] - c) + a2 * (xs[k] - c))
                               + s1 * (pwr[k] * (xw[k] - c) + per[k] * (xe[k] - c))))
            dr[k] = d
            kr[k] = c + mut1 * d


@njit(cache=True, error_model="numpy")
def sts_stage(ukm1, ukm2, u0, dty0, out, r0, r1, m0, m1, nr, an, as_, s, pw, pe, eta, mu, nu, w0, mutdt, gam):
    """One STS stage fused with its operator: ``out = mu ukm1 + nu ukm2 + w0 u0 + mutdt L(ukm1) + gam dty0``."""
    n = m1 - m0
    pwr, per, er = pw[m0:m1], pe[m0:m1], eta[m0:m1]
    for r in range(r0, r1):
        a1, a2, s1 = an[r], as_[r], s[r]
        xc, xn, xs = ukm1[r, m0:m1], ukm1[r - 1, m0:m1], ukm1[r + 1, m0:m1]
        xw, xe = ukm1[r, m0 - nr:m1 - nr], ukm1[r, m0 + nr:m1 + nr]
        k2, z, d, o = ukm2[r, m0:m1], u0[r, m0:m1], dty0[r, m0:m1], out[r, m0:m1]
        for k in range(n):
            c = xc[k]
            y = er[k] * ((a1 * (xn[k] - c) + a2 * (xs[k] - c)) + s1 * (pwr[k] * (xw[k] - c) + per[k] * (xe[k] - c)))
            o[k] = mu * c + nu * k2[k] + w0 * z[k] + mutdt * y + gam * d[k]


@njit(cache=True, error_model="numpy")
def pole_diffusion_contrib(x, r_pole, r_next, m0, m1, eta2, dp, out):
    """Cap-edge diffusive flux terms ``(2 eta) (x[r_next] - x[r_pole]) dp`` per value (HipFT's ``fn``)."""
    for m in range(m0, m1):
        out[m - m0] = eta2[m] * (x[r_next, m] - x[r_pole, m]) * dp[m]


@njit(cache=True, error_model="numpy")
def pole_sts_stage(ukm1, ukm2, u0, dty0, out, r, m0, m1, nr, y, mu, nu, w0, mutdt, gam):
    """The STS stage on a pole row with the cap's operator value ``y (nr,)``."""
    for m in range(m0, m1):
        i = (m - m0) % nr
        out[r, m] = mu * ukm1[r, m] + nu * ukm2[r, m] + w0 * u0[r, m] + mutdt * y[i] + gam * dty0[r, m]


@njit(cache=True, error_model="numpy")
def pole_sts_first(u0, dty0, ukm1, r, m0, m1, nr, y, dt, mut1):
    """The first STS stage on a pole row with the cap's operator value ``y (nr,)``."""
    for m in range(m0, m1):
        i = (m - m0) % nr
        d = dt * y[i]
        dty0[r, m] = d
        ukm1[r, m] = u0[r, m] + mut1 * d


# ---------------------------------------------------------------------------------------------- PTL
@njit(cache=True, error_model="numpy")
def ptl_max(f, af, r0, r1, m0, m1, fmin):
    """Largest ``|L f|`` over owned cells where ``|f| > fmin`` (-1 if none)."""
    best = -1.0
    for r in range(r0, r1):
        for m in range(m0, m1):
            if abs(f[r, m]) > fmin:
                v = abs(af[r, m])
                if v > best:
                    best = v
    return best


@njit(cache=True, error_model="numpy")
def ptl_min(f, af, r0, r1, m0, m1, nr, interior, amax, fmin, huge):
    """HipFT's practical limit at the cells where ``|L f| == amax``: ``min(-du / dLf)`` over the four neighbours
    whose difference pair has ``du dLf < -fmin`` (``huge`` if none)."""
    best = huge
    for r in range(r0, r1):
        if not interior[r]:
            continue
        for m in range(m0, m1):
            if amax == abs(af[r, m]) and abs(f[r, m]) > fmin:
                for rr, mm in ((r - 1, m), (r + 1, m), (r, m - nr), (r, m + nr)):
                    du = f[r, m] - f[rr, mm]
                    df = af[r, m] - af[rr, mm]
                    if du * df < -fmin:
                        v = -du / df
                        if v < best:
                            best = v
    return best
