"""Backward-Euler diffusion through petsc4py's KSP: ``W (I - dt L) f_new = W f_old`` (symmetric form).

``L`` is the explicit solver's operator (HipFT's five-point ``div(eta grad Br)`` with
its metric factors and caps, :meth:`SphereGrid.diffusion_factors`), so implicit and
explicit runs discretize the same equation in space. ``W`` is diagonal: for a cell
``(j, k)``, ``w = h_dt(j) dp(k) / st_i(j)``, which makes ``W L`` symmetric, since
``w_j an_j = w_{j-1} as_{j-1}`` and ``w_k pw_k = w_{k-1} pe_{k-1}``. For a cap it is
chosen so that the cap-to-ring coupling is symmetric too.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .parallel import GHOST

__all__ = ["ImplicitDiffusion"]


class ImplicitDiffusion:
    """Unconditionally stable backward-Euler diffusion steps, one KSP solve per realization.

    Collective on the group (``domain.decomp.comm``) to build and to :meth:`step`.
    Unknowns: every non-cap cell of this rank (row-major), plus one unknown per
    cap, owned by the rank at phi coordinate 0 of the cap's process row. Rows
    are scaled by the weights ``W`` of the module docstring (:attr:`weights`,
    :attr:`cap_weights`), which make the matrix symmetric positive definite
    (CG with a Jacobi preconditioner by default; PETSc options with the
    prefix ``ft_`` override, e.g. ``-ft_ksp_type gmres``). The global numbering of
    neighbours comes from one halo exchange of a field of indices. Unlike the
    explicit schemes, a Krylov solve sums over ranks: results agree across rank
    counts to the solver tolerance, not bit for bit.
    """

    def __init__(self, domain, grid, diffusion, xp=np, rtol: float = 1e-12):
        try:
            import petsc4py

            petsc4py.init()
            from petsc4py import PETSc
        except ImportError as exc:
            raise ImportError("needs petsc4py (pip install 'hpcore[petsc]'); it is not installed") from exc
        from mpi4py import MPI

        self.PETSc = PETSc
        self.domain = domain
        self.grid = grid
        self.op = diffusion
        self.xp = xp
        self.rtol = rtol
        d = domain
        comm = d.decomp.comm
        self.comm = comm
        g = GHOST
        nt = grid.ntheta
        rows = np.arange(d.row0, d.row0 + d.ntl)
        self.inner_rows = np.nonzero((rows >= 1) & (rows <= nt - 2))[0]  # local row indices
        self.own_north = d.poles.north and d.col0 == 0
        self.own_south = d.poles.south and d.col0 == 0
        n_cells = self.inner_rows.size * d.npl
        n_local = n_cells + int(self.own_north) + int(self.own_south)
        start = comm.exscan(n_local, op=MPI.SUM) or 0
        total = comm.allreduce(n_local, op=MPI.SUM)
        north_idx = start + n_cells if self.own_north else -1
        south_idx = start + n_cells + int(self.own_north) if self.own_south else -1
        north_idx = comm.allreduce(north_idx, op=MPI.MAX)
        south_idx = comm.allreduce(south_idx, op=MPI.MAX)
        self.n_local, self.start, self.total = n_local, start, total
        self.north_idx, self.south_idx = north_idx, south_idx
        # global index of every cell, ghosts from the neighbours
        R, C, _ = d.padded_shape
        idx = np.full((R, C), -1.0)
        interior = idx[g:g + d.ntl, g:g + d.npl]
        cells = start + np.arange(n_cells, dtype=np.float64).reshape(self.inner_rows.size, d.npl)
        interior[self.inner_rows] = cells
        if d.owns_north:
            interior[0] = north_idx
        if d.owns_south:
            interior[d.ntl - 1] = south_idx
        d.halo.exchange(idx)
        self.idx = idx.astype(np.int64)
        # indices (and global columns) of the ring next to each cap, gathered on the cap owner
        self.ring_north = self._ring(1) if d.poles.north else None
        self.ring_south = self._ring(d.ntl - 2) if d.poles.south else None
        self.cache: OrderedDict = OrderedDict()
        # the operator's factors and the symmetrizing weights W (module docstring)
        self.factors = f = grid.diffusion_factors()
        rows = d.row0 + self.inner_rows
        self.cols = (d.col0 + np.arange(d.npl)) % grid.nphi
        row_w = grid.h_dt[rows] / grid.h_st_i[rows]
        self.weights = row_w[:, None] * f["dp"][self.cols][None, :]  # (inner rows, npl)
        nt = grid.ntheta
        self.cap_weights = (grid.h_dt[1] / grid.h_st_i[1] * f["an"][1] / (2.0 * f["cap_n"]),
                            grid.h_dt[nt - 2] / grid.h_st_i[nt - 2] * f["as"][nt - 2] / (2.0 * f["cap_s"]))

    def _ring(self, local_row: int) -> tuple:
        """(global unknown index, global phi column) of the ring cells next to a cap, all ranks of
        the cap's process row. Collective on the pole row communicator."""
        d = self.domain
        g = GHOST
        mine = (self.idx[g + local_row, g:g + d.npl].copy(), (d.col0 + np.arange(d.npl)) % self.grid.nphi)
        parts = d.poles.row_comm.allgather(mine)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _matrix(self, eta: float, dt: float):
        key = (eta, dt)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        PETSc = self.PETSc
        d = self.domain
        g = GHOST
        A = PETSc.Mat().createAIJ(size=((self.n_local, self.total), (self.n_local, self.total)),
                                  nnz=(5, 4), comm=self.comm)
        A.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, False)
        f = self.factors
        ed = eta * dt
        for i, li in enumerate(self.inner_rows):
            j = d.row0 + li
            a_n, a_s, s_j = f["an"][j], f["as"][j], f["s"][j]
            for k in range(d.npl):
                w = self.weights[i, k]
                c = self.cols[k]
                cw, ce = s_j * f["pw"][c], s_j * f["pe"][c]
                row = int(self.idx[g + li, g + k])
                cols = [row, int(self.idx[g + li - 1, g + k]), int(self.idx[g + li + 1, g + k]),
                        int(self.idx[g + li, g + k - 1]), int(self.idx[g + li, g + k + 1])]
                vals = [w * (1.0 + ed * (a_n + a_s + cw + ce)), -w * ed * a_n, -w * ed * a_s, -w * ed * cw,
                        -w * ed * ce]
                A.setValues(row, cols, vals, addv=PETSc.InsertMode.ADD_VALUES)
        for own, ring, pidx, w, cap in ((self.own_north, self.ring_north, self.north_idx, self.cap_weights[0],
                                         f["cap_n"]),
                                        (self.own_south, self.ring_south, self.south_idx, self.cap_weights[1],
                                         f["cap_s"])):
            if own:
                ring_idx, ring_col = ring
                coupling = 2.0 * cap * f["dp"][ring_col]  # L_cap = sum_k 2 eta cap dp_k (x_k - x_cap)
                cols = [pidx] + [int(c) for c in ring_idx]
                vals = [w * (1.0 + ed * coupling.sum())] + list(-w * ed * coupling)
                A.setValues(pidx, cols, vals, addv=PETSc.InsertMode.ADD_VALUES)
        A.assemble()
        ksp = PETSc.KSP().create(comm=self.comm)
        ksp.setOperators(A)
        ksp.setType("cg")
        ksp.getPC().setType("jacobi")
        ksp.setTolerances(rtol=self.rtol, atol=0.0, max_it=100000)
        ksp.setOptionsPrefix("ft_")
        ksp.setFromOptions()
        self.cache[key] = (A, ksp)
        while len(self.cache) > 8:
            _, (a_old, k_old) = self.cache.popitem(last=False)
            k_old.destroy()
            a_old.destroy()
        return A, ksp

    def step(self, f_flat, dt: float) -> None:
        """Replace ``f`` by the backward-Euler solution after ``dt`` [h]. Collective on the group."""
        PETSc = self.PETSc
        d = self.domain
        g = GHOST
        R, C, nr = d.padded_shape
        f3 = f_flat.reshape(R, C, nr)
        host = f3.get() if hasattr(f3, "get") else f3
        for r in range(nr):
            A, ksp = self._matrix(float(self.op.eta[r]), float(dt))
            interior = np.asarray(host[g:g + d.ntl, g:g + d.npl, r])
            rhs = [(interior[self.inner_rows] * self.weights).ravel()]
            if self.own_north:
                rhs.append(np.array([interior[0, 0] * self.cap_weights[0]]))
            if self.own_south:
                rhs.append(np.array([interior[d.ntl - 1, 0] * self.cap_weights[1]]))
            b = PETSc.Vec().createWithArray(np.concatenate(rhs) if rhs else np.zeros(0), comm=self.comm)
            x = b.duplicate()
            x.set(0.0)
            ksp.solve(b, x)
            reason = ksp.getConvergedReason()
            if reason < 0:
                raise RuntimeError(f"implicit diffusion: KSP did not converge (reason {reason}, "
                                   f"{ksp.getIterationNumber()} iterations)")
            sol = x.getArray().copy()
            n_cells = self.inner_rows.size * d.npl
            new = interior.copy()
            new[self.inner_rows] = sol[:n_cells].reshape(self.inner_rows.size, d.npl)
            pos = n_cells
            poles = [None, None]
            if self.own_north:
                poles[0] = sol[pos]
                pos += 1
            if self.own_south:
                poles[1] = sol[pos]
            if d.poles.north:
                poles[0] = d.poles.row_comm.bcast(poles[0], root=0)
                new[0] = poles[0]
            if d.poles.south:
                poles[1] = d.poles.row_comm.bcast(poles[1], root=0)
                new[d.ntl - 1] = poles[1]
            f3[g:g + d.ntl, g:g + d.npl, r] = self.xp.asarray(new)
            b.destroy()
            x.destroy()

    def free(self) -> None:
        """Destroy the cached PETSc matrices and solvers. Safe to call twice."""
        for A, ksp in self.cache.values():
            ksp.destroy()
            A.destroy()
        self.cache.clear()
