"""Backward-Euler diffusion through petsc4py's KSP: ``A (I - dt L) f_new = A f_old`` (symmetric form)."""

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
    are scaled by the cell area, which makes the matrix symmetric positive
    definite (CG with a Jacobi preconditioner by default; PETSc options with the
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
        # indices of the ring next to each cap, gathered in phi order on the cap owner
        self.ring_north = self._ring(1) if d.poles.north else None
        self.ring_south = self._ring(d.ntl - 2) if d.poles.south else None
        self.cache: OrderedDict = OrderedDict()
        self.area = grid.cell_area

    def _ring(self, local_row: int) -> np.ndarray:
        d = self.domain
        g = GHOST
        mine = self.idx[g + local_row, g:g + d.npl].copy()
        parts = d.poles.row_comm.allgather(mine)
        return np.concatenate(parts)

    def _matrix(self, eta: float, dt: float):
        key = (eta, dt)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        PETSc = self.PETSc
        d = self.domain
        grid = self.grid
        g = GHOST
        nphi = grid.nphi
        A = PETSc.Mat().createAIJ(size=((self.n_local, self.total), (self.n_local, self.total)),
                                  nnz=(5, 4), comm=self.comm)
        A.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, False)
        half = np.sin(0.5 * grid.dtheta)
        for li in self.inner_rows:
            j = d.row0 + li
            area = grid.cell_area[j]
            denom = grid.dtheta * 2.0 * grid.sin_theta[j] * half
            cn = grid.sin_faces[j - 1] / denom
            cs = grid.sin_faces[j] / denom
            cp = grid.dtheta / (2.0 * grid.sin_theta[j] ** 2 * half * grid.dphi ** 2)
            for k in range(d.npl):
                row = int(self.idx[g + li, g + k])
                cols = [row, int(self.idx[g + li - 1, g + k]), int(self.idx[g + li + 1, g + k]),
                        int(self.idx[g + li, g + k - 1]), int(self.idx[g + li, g + k + 1])]
                vals = [area * (1.0 + dt * eta * (cn + cs + 2 * cp)), -area * dt * eta * cn,
                        -area * dt * eta * cs, -area * dt * eta * cp, -area * dt * eta * cp]
                A.setValues(row, cols, vals, addv=PETSc.InsertMode.ADD_VALUES)
        cap = grid.cap_area
        cpole = grid.sin_faces[0] * grid.dphi / (grid.dtheta * cap)
        for own, ring, pidx in ((self.own_north, self.ring_north, self.north_idx),
                                (self.own_south, self.ring_south, self.south_idx)):
            if own:
                cols = [pidx] + [int(c) for c in ring]
                vals = [cap * (1.0 + dt * eta * nphi * cpole)] + [-cap * dt * eta * cpole] * nphi
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
            rhs = [(interior[self.inner_rows] * self.grid.cell_area[d.row0 + self.inner_rows][:, None]).ravel()]
            if self.own_north:
                rhs.append(np.array([interior[0, 0] * self.grid.cap_area]))
            if self.own_south:
                rhs.append(np.array([interior[d.ntl - 1, 0] * self.grid.cap_area]))
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
