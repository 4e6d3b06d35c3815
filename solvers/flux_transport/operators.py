"""Finite-volume operators on the sphere: conservative diffusion and WENO3 / local Lax-Friedrichs advection.

Both work on padded local arrays of shape ``(R, C, nr)`` (rows and columns with
``GHOST`` ghost cells, realizations trailing), flattened. Every shift of the
stencil is then a contiguous slice of the flat array (a row is ``C * nr``
elements, a column ``nr``), so each elementwise step is one fast contiguous
NumPy/CuPy operation over all interior rows at once; values computed in ghost
columns are meaningless and are overwritten by the next halo exchange. The pole
rows are updated from the net flux through the cap edge (:class:`PoleReducer`).

Sign convention: ``apply(F, Y)`` writes ``Y = dF/dt`` (not ``div``).
"""

from __future__ import annotations

import math

import numpy as np

from .parallel import GHOST

__all__ = ["DiffusionOperator", "AdvectionOperator", "weno3_face", "BLOCK"]

BLOCK = 16384
"""Host block size [values] of the WENO face passes (about 128 KiB per scratch array)."""


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def weno3_face(xp, a, b, c, out, tmp, eps: float):
    """WENO3 value at the face right of cell ``b`` from cells ``a, b, c`` (left-biased).

    ``out = b + (d1 + (d0 - d1) / (1 + 2 ((eps + d0^2) / (eps + d1^2))^2)) / 2`` with
    ``d0 = b - a``, ``d1 = c - b``: Jiang & Shu's weights 1/3 and 2/3 with
    smoothness ``d^2`` and HipFT's ``eps`` (the cell width in radians). ``a`` and
    ``c`` are overwritten; ``out`` and ``tmp`` must be distinct from the inputs.
    """
    xp.subtract(b, a, out=a)  # d0
    xp.subtract(c, b, out=c)  # d1
    xp.multiply(a, a, out=tmp)
    tmp += eps
    xp.multiply(c, c, out=out)
    out += eps
    tmp /= out
    tmp *= tmp
    tmp *= 2.0
    tmp += 1.0
    a -= c
    a /= tmp
    a += c
    a *= 0.5
    xp.add(b, a, out=out)
    return out


class DiffusionOperator:
    """Second-order conservative finite-volume diffusion ``d Br/dt = div(eta grad Br)``.

    Not collective to build; :meth:`apply` is collective on the ranks of the pole
    process rows (their pole sums). For an interior cell ``j`` (area ``A_j``):

    ``dF/dt = eta / A_j [ s_{j+1/2} dphi (F_{j+1} - F_j) / dtheta - s_{j-1/2} dphi
    (F_j - F_{j-1}) / dtheta + dtheta / (sin t_j dphi) (F_{k+1} - 2 F_k + F_{k-1}) ]``

    and for a cap, ``eta / A_cap`` times the sum over the ring of the flux through
    the cap edge. ``eta`` is per realization [R_sun^2/h].
    """

    def __init__(self, domain, grid, eta, xp=np):
        self.domain = domain
        self.grid = grid
        self.xp = xp
        g = GHOST
        R, C, nr = domain.padded_shape
        self.L = C * nr
        self.nr = nr
        self.s, self.e = g * self.L, (R - g) * self.L
        eta = np.asarray(eta, dtype=np.float64).reshape(nr)
        self.eta = eta
        rows = domain.global_rows()[g:R - g]
        nt = grid.ntheta
        cN = np.zeros(rows.size)
        cS = np.zeros(rows.size)
        cP = np.zeros(rows.size)
        inner = (rows >= 1) & (rows <= nt - 2)
        j = rows[inner]
        half = math.sin(0.5 * grid.dtheta)
        denom = grid.dtheta * 2.0 * grid.sin_theta[j] * half
        cN[inner] = grid.sin_faces[j - 1] / denom
        cS[inner] = grid.sin_faces[j] / denom
        cP[inner] = grid.dtheta / (2.0 * grid.sin_theta[j] ** 2 * half * grid.dphi ** 2)
        cC = cN + cS + 2.0 * cP

        def full(row):
            a = np.broadcast_to(row[:, None, None] * eta[None, None, :], (rows.size, C, nr))
            return xp.asarray(np.ascontiguousarray(a).reshape(-1))

        self.cN, self.cS, self.cP, self.cC = full(cN), full(cS), full(cP), full(cC)
        self.block = BLOCK if xp is np else 0
        self.cpole_north = grid.sin_faces[0] * grid.dphi / (grid.dtheta * grid.cap_area) * eta
        self.cpole_south = grid.sin_faces[-1] * grid.dphi / (grid.dtheta * grid.cap_area) * eta
        emax = float(eta.max()) if eta.size else 0.0
        rate = float(cC.max()) * emax if cC.size else 0.0
        if domain.owns_north or domain.owns_south:
            rate = max(rate, grid.nphi * float(self.cpole_north.max()))
        self.local_rate = rate
        """Largest Gershgorin half-radius on this rank [1/h]; the explicit limit is 0.95 / max over ranks."""

    def apply(self, F, Y, T):
        """``Y = dF/dt`` from ``F`` (flat padded arrays, ghosts filled); ``T`` is scratch."""
        xp = self.xp
        s, e, L, nr = self.s, self.e, self.L, self.nr
        block = self.block or (e - s)
        for a in range(s, e, block):
            b = min(a + block, e)
            c = slice(a - s, b - s)  # coefficient index
            t, y = T[a:b], Y[a:b]
            xp.add(F[a - nr:b - nr], F[a + nr:b + nr], out=t)
            t *= self.cP[c]
            xp.multiply(F[a - L:b - L], self.cN[c], out=y)
            y += t
            xp.multiply(F[a + L:b + L], self.cS[c], out=t)
            y += t
            xp.multiply(F[a:b], self.cC[c], out=t)
            y -= t
        self._poles(F, Y)
        return Y

    def _poles(self, F, Y):
        d = self.domain
        if not (d.poles.north or d.poles.south):
            return
        g = GHOST
        R, C, nr = d.padded_shape
        F3 = F.reshape(R, C, nr)
        Y3 = Y.reshape(R, C, nr)
        cols = slice(g, g + d.npl)
        north = south = None
        if d.poles.north:
            north = _host(F3[g + 1, cols] - F3[g, cols]) * self.cpole_north
        if d.poles.south:
            last = g + d.ntl - 1
            south = _host(F3[last - 1, cols] - F3[last, cols]) * self.cpole_south
        ns, ss = d.poles.sums(north, south)
        if ns is not None:
            Y3[g] = self.xp.asarray(ns)
        if ss is not None:
            Y3[g + d.ntl - 1] = self.xp.asarray(ss)


class AdvectionOperator:
    """``d Br/dt = -div(v Br)`` with WENO3 and local Lax-Friedrichs flux splitting.

    Not collective to build; :meth:`prepare` is local, :meth:`apply` collective on
    the pole process rows. At a face the flux ``v Br`` is split into
    ``F+- = (v Br +- alpha Br) / 2`` with the cell-centre velocities of the cells
    and ``alpha`` the largest ``|v|`` of the four cells of the face's stencil; ``F+``
    is reconstructed from the left (cells ``i-1, i, i+1``), ``F-`` from the right,
    with WENO3 (:func:`weno3_face`). The faces next to the poles use first-order
    upwinding with the face velocity. Theta fluxes are weighted by the face
    length ``sin(theta_face) dphi`` over the exact cell area; phi fluxes enter in
    the angular form ``(F_{k+1/2} - F_{k-1/2}) / (sin(theta) dphi)`` (the face
    integral of ``sin(theta)`` over the cell area), which moves a rigid rotation
    at exactly its angular speed; caps take the sum of the ring of edge fluxes.

    Flows are held fixed during a step: :meth:`prepare` evaluates them (and the
    attenuation from the current, ghost-filled field) once per step.
    """

    def __init__(self, domain, grid, flows, xp=np):
        self.domain = domain
        self.grid = grid
        self.flows = flows
        self.xp = xp
        g = GHOST
        R, C, nr = domain.padded_shape
        self.R, self.C, self.nr = R, C, nr
        self.L = C * nr
        self.s, self.e = g * self.L, (R - g) * self.L
        self.fs, self.fe = (g - 1) * self.L, (R - g) * self.L  # theta faces below rows g-1 .. R-g-1
        nt = grid.ntheta
        rows = domain.global_rows()
        valid = (rows >= 0) & (rows <= nt - 1)
        theta = np.where(valid, grid.theta[np.clip(rows, 0, nt - 1)], 0.0)
        vt = flows.vt(theta)  # (R, nr)
        vp = flows.vp(theta)
        vt[~valid] = 0.0
        vp[~valid] = 0.0
        vp[(rows == 0) | (rows == nt - 1)] = 0.0
        self.hvt0 = np.ascontiguousarray(np.broadcast_to((0.5 * vt)[:, None, :], (R, C, nr)))
        self.hvp0 = np.ascontiguousarray(np.broadcast_to((0.5 * vp)[:, None, :], (R, C, nr)))
        self.vface_north = flows.vt(np.array([grid.theta_faces[0]]))[0]
        self.vface_south = flows.vt(np.array([grid.theta_faces[-1]]))[0]
        self.inv_b = flows.inverse_attenuation()
        ir = rows[g:R - g]
        inner = (ir >= 1) & (ir <= nt - 2)
        j = ir[inner]
        area = 2.0 * grid.sin_theta[j] * math.sin(0.5 * grid.dtheta) * grid.dphi
        cTp = np.zeros(ir.size)
        cTm = np.zeros(ir.size)
        cPd = np.zeros(ir.size)
        cTp[inner] = grid.sin_faces[j] * grid.dphi / area
        cTm[inner] = grid.sin_faces[j - 1] * grid.dphi / area
        cPd[inner] = 1.0 / (grid.sin_theta[j] * grid.dphi)  # phi faces: angular form, exact for rotation
        self.cTp = xp.asarray(cTp[:, None])
        self.cTm = xp.asarray(cTm[:, None])
        self.cPd = xp.asarray(cPd[:, None])
        self.inv_dtheta = 1.0 / grid.dtheta
        inv_sdp = np.zeros(R)
        rr = (rows >= 1) & (rows <= nt - 2)
        inv_sdp[rr] = 1.0 / (grid.sin_theta[rows[rr]] * grid.dphi)
        self.inv_sdp = xp.asarray(inv_sdp[:, None, None])
        self.interior_rows = xp.asarray(np.nonzero(rr)[0])
        self.cap_north = grid.sin_faces[0] * grid.dphi / grid.cap_area
        self.cap_south = grid.sin_faces[-1] * grid.dphi / grid.cap_area
        self.eps_t = grid.dtheta
        self.eps_p = grid.dphi
        n = R * C * nr
        # working copies (never views of hvt0/hvp0: attenuation rescales them every step)
        self.hvt = xp.array(self.hvt0.reshape(-1), copy=True)
        self.hvp = xp.array(self.hvp0.reshape(-1), copy=True)
        self.hvt0_dev = xp.asarray(self.hvt0.reshape(-1)) if xp is not np else self.hvt0.reshape(-1)
        self.hvp0_dev = xp.asarray(self.hvp0.reshape(-1)) if xp is not np else self.hvp0.reshape(-1)
        self.alpha_t = xp.zeros(n)
        self.alpha_p = xp.zeros(n)
        self.FT = xp.zeros(n)
        self.FP = xp.zeros(n)
        self.P = xp.zeros(n)
        self.block = BLOCK if xp is np else 0
        # scratch: buf[0] also serves the divergence (all interior rows); the others one block
        self.buf = [xp.zeros(n)] + [xp.zeros(n if not self.block else self.block) for _ in range(7)]
        self.face_north = None  # (C, nr) face velocities next to the poles (attenuated)
        self.face_south = None
        # local face index of the faces next to the poles (face i: between rows i and i+1)
        self.i_north = g - domain.row0  # global face 0
        self.i_south = (nt - 2) - (domain.row0 - g)
        self.prepared = False

    # ------------------------------------------------------------------ per step
    def prepare(self, F):
        """Evaluate the flows for the coming step from ``F`` (flat, ghosts filled)."""
        xp = self.xp
        R, C, nr, L = self.R, self.C, self.nr, self.L
        hvt = self.hvt
        hvp = self.hvp
        F3 = F.reshape(R, C, nr)
        if self.inv_b is not None:
            inv_b = xp.asarray(self.inv_b)
            att = 1.0 - xp.tanh(xp.abs(F) * xp.tile(inv_b, R * C))
            xp.multiply(self.hvt0_dev, att, out=hvt)
            xp.multiply(self.hvp0_dev, att, out=hvp)
        g = GHOST
        vn = xp.asarray(self.vface_north)[None, :]
        vs = xp.asarray(self.vface_south)[None, :]
        self.face_north = self.face_south = None
        if g - 1 <= self.i_north <= R - g - 1:
            i = self.i_north
            v = xp.broadcast_to(vn, (C, nr))
            if self.inv_b is not None:
                m = xp.maximum(xp.abs(F3[i]), xp.abs(F3[i + 1]))
                v = v * (1.0 - xp.tanh(m * xp.asarray(self.inv_b)))
            self.face_north = xp.ascontiguousarray(v)
        if g - 1 <= self.i_south <= R - g - 1:
            i = self.i_south
            v = xp.broadcast_to(vs, (C, nr))
            if self.inv_b is not None:
                m = xp.maximum(xp.abs(F3[i]), xp.abs(F3[i + 1]))
                v = v * (1.0 - xp.tanh(m * xp.asarray(self.inv_b)))
            self.face_south = xp.ascontiguousarray(v)
        # alpha: largest |v| over the four cells of each face's stencil
        P = self.P
        xp.abs(hvt, out=P)
        fs, fe = self.fs, self.fe
        a = self.alpha_t
        xp.maximum(P[fs - L:fe - L], P[fs:fe], out=a[fs:fe])
        xp.maximum(a[fs:fe], P[fs + L:fe + L], out=a[fs:fe])
        xp.maximum(a[fs:fe], P[fs + 2 * L:fe + 2 * L], out=a[fs:fe])
        xp.abs(hvp, out=P)
        s, e = self.s, self.e
        a = self.alpha_p
        xp.maximum(P[s - nr:e - nr], P[s:e], out=a[s:e])
        xp.maximum(a[s:e], P[s + nr:e + nr], out=a[s:e])
        xp.maximum(a[s:e], P[s + 2 * nr:e + 2 * nr], out=a[s:e])
        self.prepared = True

    def local_rate(self) -> float:
        """Largest ``|vt| / dtheta + |vp| / (sin t dphi)`` over this rank's cells [1/h] (after :meth:`prepare`)."""
        xp = self.xp
        g = GHOST
        R, C, nr = self.R, self.C, self.nr
        vt = xp.abs(self.hvt.reshape(R, C, nr)[:, g:C - g]) * (2.0 * self.inv_dtheta)
        vp = xp.abs(self.hvp.reshape(R, C, nr)[:, g:C - g]) * 2.0 * self.inv_sdp
        rate = (vt + vp)[self.interior_rows]
        best = float(rate.max()) if rate.size else 0.0
        for face in (self.face_north, self.face_south):
            if face is not None:
                best = max(best, float(xp.abs(face[g:C - g]).max()) * self.inv_dtheta)
        return best

    def unattenuated_rate(self) -> float:
        """:meth:`local_rate` of the flows without attenuation (an upper bound for any field) [1/h]."""
        g = GHOST
        R, C = self.R, self.C
        vt = np.abs(self.hvt0[:, g:C - g]) * (2.0 * self.inv_dtheta)
        vp = np.abs(self.hvp0[:, g:C - g]) * 2.0 * _host(self.inv_sdp)
        rate = (vt + vp)[_host(self.interior_rows)]
        best = float(rate.max()) if rate.size else 0.0
        for i, v in ((self.i_north, self.vface_north), (self.i_south, self.vface_south)):
            if g - 1 <= i <= R - g - 1:
                best = max(best, float(np.abs(v).max()) * self.inv_dtheta)
        return best

    # ------------------------------------------------------------------ per stage
    def _faces(self, F, hv, alpha, out, lo, hi, step, eps):
        """WENO3-LLF fluxes at faces ``lo..hi`` (flat), stencil stride ``step``.

        On the host the faces are done in blocks of :attr:`block` values, so that
        the ~40 elementwise passes of a block stay in cache; on a GPU in one block.
        """
        xp = self.xp
        P = self.P
        xp.multiply(hv, F, out=P)
        block = self.block or (hi - lo)
        for c0 in range(lo, hi, block):
            c1 = min(c0 + block, hi)
            n = c1 - c0
            b1, b2, b3, b4, b5, b6, b7, b8 = (x[:n] for x in self.buf)
            al = alpha[c0:c1]
            m1 = slice(c0 - step, c1 - step)
            z0 = slice(c0, c1)
            p1 = slice(c0 + step, c1 + step)
            p2 = slice(c0 + 2 * step, c1 + 2 * step)
            xp.multiply(al, F[m1], out=b1)
            b1 += P[m1]  # F+ at i-1
            xp.multiply(al, F[z0], out=b2)
            xp.subtract(P[z0], b2, out=b3)  # F- at i
            b2 += P[z0]  # F+ at i
            xp.multiply(al, F[p1], out=b4)
            xp.subtract(P[p1], b4, out=b5)  # F- at i+1
            b4 += P[p1]  # F+ at i+1
            xp.multiply(al, F[p2], out=b6)
            xp.subtract(P[p2], b6, out=b6)  # F- at i+2
            weno3_face(xp, b1, b2, b4, b7, b8, eps)
            weno3_face(xp, b6, b5, b3, b1, b8, eps)
            xp.add(b7, b1, out=out[c0:c1])

    def apply(self, F, Y):
        """``Y = dF/dt`` from ``F`` (flat padded arrays, ghosts filled; :meth:`prepare` called this step)."""
        xp = self.xp
        R, C, nr, L = self.R, self.C, self.nr, self.L
        s, e = self.s, self.e
        self._faces(F, self.hvt, self.alpha_t, self.FT, self.fs, self.fe, L, self.eps_t)
        self._faces(F, self.hvp, self.alpha_p, self.FP, s - nr, e, nr, self.eps_p)
        FT3 = self.FT.reshape(R, C, nr)
        F3 = F.reshape(R, C, nr)
        for i, v in ((self.i_north, self.face_north), (self.i_south, self.face_south)):
            if v is not None:
                FT3[i] = xp.where(v > 0, v * F3[i], v * F3[i + 1])
        rows = (e - s) // L
        Y2 = Y[s:e].reshape(rows, L)
        T2 = self.buf[0][:e - s].reshape(rows, L)
        xp.multiply(self.FT[s:e].reshape(rows, L), self.cTp, out=Y2)
        xp.multiply(self.FT[s - L:e - L].reshape(rows, L), self.cTm, out=T2)
        Y2 -= T2
        xp.subtract(self.FP[s:e], self.FP[s - nr:e - nr], out=self.buf[0][:e - s])
        T2 *= self.cPd
        Y2 += T2
        xp.negative(Y2, out=Y2)
        self._poles(Y)
        return Y

    def _poles(self, Y):
        d = self.domain
        if not (d.poles.north or d.poles.south):
            return
        g = GHOST
        R, C, nr = self.R, self.C, self.nr
        FT3 = self.FT.reshape(R, C, nr)
        Y3 = Y.reshape(R, C, nr)
        cols = slice(g, g + d.npl)
        north = south = None
        if d.poles.north:
            north = _host(FT3[self.i_north, cols]) * self.cap_north
        if d.poles.south:
            south = _host(FT3[self.i_south, cols]) * self.cap_south
        ns, ss = d.poles.sums(north, south)
        if ns is not None:
            Y3[g] = self.xp.asarray(-ns)
        if ss is not None:
            Y3[g + d.ntl - 1] = self.xp.asarray(ss)
