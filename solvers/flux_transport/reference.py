"""Plain NumPy versions of HipFT's flux-transport operators on whole-sphere arrays: the test oracle.

Arrays are ``(ntheta, nphi, nr)`` (rows pole to pole, periodic phi columns,
realizations trailing); phi neighbours come from ``np.roll``. Each function
evaluates the same expression, in the same order, as its compiled kernel in
:mod:`.kernels_host`, so the two agree bit for bit; they are written for
reading, not for speed, and the solver never calls them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["attenuated_faces", "split_velocities", "advection_rhs", "diffusion_rhs", "practical_limit",
           "advection_rate", "euler_limit", "history"]


def _w(roll_by, x):
    """``x`` at column ``c - roll_by`` (``roll_by = 1``: the west neighbour)."""
    return np.roll(x, roll_by, axis=1)


def _ring_sum(terms):
    """Sum of ``(nphi, nr)`` terms over phi, as the pole reduction takes it (pairwise, per realization)."""
    return np.ascontiguousarray(terms.T).sum(axis=-1)


def attenuated_faces(grid, vt0, vp0, inv_b, f):
    """``(vt, vp)``: theta velocity at faces ``(ntheta + 1, nphi, nr)`` and phi velocity at west faces
    ``(ntheta, nphi, nr)``, times ``1 - tanh(max(|f|) / B_att)`` of the two cells beside each interior face
    (HipFT's ``update_flow``)."""
    nt, npc, nr = f.shape
    a = np.abs(f)
    vt = np.broadcast_to(vt0[:, None, :], (nt + 1, npc, nr)).copy()
    b = np.maximum(a[:-1], a[1:])
    vt[1:nt] = vt[1:nt] * (1.0 - np.tanh(b * inv_b))
    b = np.maximum(_w(1, a), a)
    vp = vp0[:, None, :] * (1.0 - np.tanh(b * inv_b))
    return vt, vp


def split_velocities(vt, vp):
    """HipFT's ``set_lf_alpha``: ``(hn_t, hp_t, hn_p, hp_p)`` = ``v_north + alpha_t``, ``v_south - alpha_t``,
    ``v_west + alpha_p``, ``v_east - alpha_p`` per cell (phi parts zero on the pole rows)."""
    nt = vp.shape[0]
    mt = np.maximum(np.abs(vt[:-1]), np.abs(vt[1:]))
    mp = np.maximum(np.abs(vp), np.abs(_w(-1, vp)))
    at = np.zeros_like(mt)
    for d in range(-2, 3):
        lo, hi = max(0, -d), min(nt, nt - d)
        at[lo:hi] = np.maximum(at[lo:hi], mt[lo + d:hi + d])
    ap = np.maximum(np.maximum(np.maximum(np.maximum(_w(2, mp), _w(1, mp)), mp), _w(-1, mp)), _w(-2, mp))
    hn_t = vt[:-1] + at
    hp_t = vt[1:] - at
    hn_p = vp + ap
    hp_p = _w(-1, vp) - ap
    hn_p[0] = hn_p[-1] = 0.0
    hp_p[0] = hp_p[-1] = 0.0
    return hn_t, hp_t, hn_p, hp_p


def advection_rate(grid, vt, vp):
    """HipFT's ``k.v`` maximum: ``max(|vt_n|, |vt_s|) dt_i + max(|vp_w|, |vp_e|) st_i dp_i`` over interior cells."""
    fac = grid.advection_factors()
    mt = np.maximum(np.abs(vt[:-1]), np.abs(vt[1:]))
    mp = np.maximum(np.abs(vp), np.abs(_w(-1, vp)))
    k = mt * fac["dt_i"][:, None, None] + mp * fac["st_i"][:, None, None] * fac["dp_i"][None, :, None]
    return float(k[1:-1].max())


def _weno3(la, lb, lc, pb, pc, pd, wm, wc):
    ccp_m, cmc_m, _, _, pt_m, mct_m, eps_m = wm
    ccp_c, cmc_c, mt_c, cpt_c, _, _, eps_c = wc
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
    a0m = pt_m * (s1m * s1m)
    a1m = mct_m * (s0m * s0m)
    a0p = mt_c * (s1p * s1p)
    a1p = cpt_c * (s0p * s0p)
    um = (a0m * p0m + a1m * p1m) / (a0m + a1m)
    up = (a0p * p0p + a1p * p1p) / (a0p + a1p)
    return up + um


def advection_rhs(grid, f, vt, hn_t, hp_t, hn_p, hp_p):
    """HipFT's ``advection_operator_weno3``: ``div(v f)`` on every cell ``(ntheta, nphi, nr)`` (caps included)."""
    nt = f.shape[0]
    fac = grid.advection_factors()
    LN = 0.5 * f * hn_t
    LP = 0.5 * f * hp_t
    wt = grid.weno_t
    ft = np.zeros((nt + 1,) + f.shape[1:])
    for j in range(2, nt - 1):  # WENO3 faces 2 .. ntheta-2 (face j between rows j-1 and j)
        wm = tuple(wt[q, j - 1] for q in range(7))
        wc = tuple(wt[q, j] for q in range(7))
        ft[j] = _weno3(LN[j - 2], LN[j - 1], LN[j], LP[j - 1], LP[j], LP[j + 1], wm, wc)
    for j in (1, nt - 1):  # first-order upwind beside the poles
        v = vt[j]
        ft[j] = np.where(v >= 0.0, v * f[j - 1], v * f[j])
    LN = 0.5 * f * hn_p
    LP = 0.5 * f * hp_p
    wp = grid.weno_p[:, None, :, None]
    wm = tuple(np.roll(wp[q], 1, axis=1) for q in range(7))
    wc = tuple(wp[q] for q in range(7))
    fp = _weno3(_w(2, LN), _w(1, LN), LN, _w(1, LP), LP, _w(-1, LP), wm, wc)  # west face of every column
    sth = fac["sth"][:, None, None]
    ti = (fac["st_i"] * fac["dt_i"])[:, None, None]
    si = fac["st_i"][:, None, None]
    aop = (sth[1:] * ft[1:] - sth[:-1] * ft[:-1]) * ti + (_w(-1, fp) - fp) * si * fac["dp_i"][None, :, None]
    dp = fac["dp"][:, None]
    aop[0] = _ring_sum(ft[1] * dp) * fac["cap_n"]
    aop[-1] = -_ring_sum(ft[nt - 1] * dp) * fac["cap_s"]
    return aop


def diffusion_rhs(grid, x, eta):
    """HipFT's ``diffusion_operator_cd``: ``div(eta grad x)`` on every cell (caps included); ``eta (nr,)``."""
    d = grid.diffusion_factors()
    an = d["an"][:, None, None]
    as_ = d["as"][:, None, None]
    s = d["s"][:, None, None]
    pw = d["pw"][None, :, None]
    pe = d["pe"][None, :, None]
    y = np.zeros_like(x)
    c = x[1:-1]
    y[1:-1] = eta * ((an[1:-1] * (x[:-2] - c) + as_[1:-1] * (x[2:] - c))
                     + s[1:-1] * (pw * (_w(1, c) - c) + pe * (_w(-1, c) - c)))
    dp = d["dp"][:, None]
    y[0] = _ring_sum((2.0 * eta) * (x[1] - x[0]) * dp) * d["cap_n"]
    y[-1] = -_ring_sum((2.0 * eta) * (x[-1] - x[-2]) * dp) * d["cap_s"]
    return y


def euler_limit(grid, eta, safety: float = 0.95) -> float:
    """HipFT's explicit Euler limit ``safety * 2 / max Gershgorin radius`` over interior cells [h]."""
    d = grid.diffusion_factors()
    s = d["s"][1:-1, None]
    rad = 2.0 * (d["an"][1:-1, None] + d["as"][1:-1, None] + s * (d["pw"] + d["pe"])[None, :])
    return safety * 2.0 / (float(rad.max()) * float(np.max(eta)))


def practical_limit(f, af, dt_in: float, fmin: float = 1e-14, safe: float = 0.95) -> float:
    """HipFT's ``get_dtime_diffusion_ptl`` on whole arrays (``af = L f``)."""
    big = np.finfo(np.float64).max
    mask = np.abs(f) > fmin
    if not mask.any():
        return big
    amax = float(np.abs(af)[mask].max())
    if amax <= 0.0:
        return big
    best = big
    nt = f.shape[0]
    for j, k, i in np.argwhere((np.abs(af) == amax) & mask):
        if j == 0 or j == nt - 1:
            continue
        npc = f.shape[1]
        for jj, kk in ((j - 1, k), (j + 1, k), (j, (k - 1) % npc), (j, (k + 1) % npc)):
            du = f[j, k, i] - f[jj, kk, i]
            df = af[j, k, i] - af[jj, kk, i]
            if du * df < -fmin:
                best = min(best, -du / df)
    best *= safe
    return max(best, dt_in)


def history(grid, f, polar_colat_deg: float = 30.0) -> dict:
    """HipFT's ``analysis_step`` integrals of ``f (ntheta, nphi, nr)`` (sums in its weights, units of R_sun^2)."""
    da_t, sn, cs = grid.diag_theta
    da_p, cpd, spd = grid.diag_phi
    lim = polar_colat_deg * (np.pi / 180.0)
    fv = f * (da_t[:, None] * da_p[None, :])[..., None]
    north = (grid.h_t <= lim)[:, None, None]
    south = (grid.h_t >= np.pi - lim)[:, None, None]
    pos = np.where(fv > 0, fv, 0.0)
    neg = np.where(fv > 0, 0.0, fv)
    return {"flux_p": pos.sum(axis=(0, 1)), "flux_m": neg.sum(axis=(0, 1)),
            "flux_p_n": (pos * north).sum(axis=(0, 1)), "flux_m_n": (neg * north).sum(axis=(0, 1)),
            "flux_p_s": (pos * south).sum(axis=(0, 1)), "flux_m_s": (neg * south).sum(axis=(0, 1)),
            "eq1": (f * ((sn * da_t)[:, None] * cpd[None, :])[..., None]).sum(axis=(0, 1)),
            "eq2": (f * ((sn * da_t)[:, None] * spd[None, :])[..., None]).sum(axis=(0, 1)),
            "ax": (f * ((cs * da_t)[:, None] * da_p[None, :])[..., None]).sum(axis=(0, 1))}
