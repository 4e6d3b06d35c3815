"""2-D Darcy flow data: thresholded Gaussian random coefficients, distributed PCG solves, HDF5 datasets.

The problem is the FNO paper's (Li et al. 2021, Sec. 5.2): ``-div(a grad u) = f`` on the unit
square, ``u = 0`` on the boundary, ``f = 1``, with a piecewise-constant coefficient ``a = 12``
where a Gaussian random field ``psi`` is ``>= 0`` and ``a = 3`` where it is negative. ``psi``
has covariance ``(-Laplacian + tau^2)^(-alpha)`` with ``tau = 3``, ``alpha = 2`` and Neumann
(cosine) eigenfunctions, as in the paper's MATLAB generator (``GRF.m``): a truncated cosine
series ``psi(x, y) = sum_{k1,k2} xi_{k1 k2} c_{k1 k2} cos(pi k1 x) cos(pi k2 y)`` with
``c = tau^(alpha-1) (pi^2 (k1^2 + k2^2) + tau^2)^(-alpha/2)``, ``xi ~ N(0, 1)`` and the constant
mode removed. Here the series has ``n_modes`` terms per axis independent of the grid and is
evaluated at cell centres, so one seed gives the same coefficient at every resolution (data for
zero-shot super-resolution) and every rank evaluates only its own cells.

Discretization: cell-centred finite volumes on ``R x R`` cells of width ``h = 1/R`` (unknowns at
cell centres ``((i + 1/2) h, (j + 1/2) h)``, axis 0 is x), the 5-point flux stencil with
**harmonic** face coefficients ``2 a_P a_N / (a_P + a_N)`` (exact flux continuity across a jump
of ``a``; ``face="arithmetic"`` gives ``(a_P + a_N) / 2``), and the Dirichlet condition imposed
on the boundary faces, half a cell from the centre (face coefficient ``2 a_P``). The matrix is
symmetric positive definite; the discrete solution converges at second order for smooth
coefficients.

Solvers: Jacobi-preconditioned conjugate gradients on a :class:`comms.CartDecomposition` with
ghost cells filled by :class:`comms.HaloExchange` (numba kernel on the host, CuPy array
expressions on the device), or PETSc's KSP (CG + Jacobi) through petsc4py when it is installed.
Many samples are solved at once by splitting the communicator into groups of ranks, each group
solving its samples on its own decomposition (:func:`generate_darcy`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from hpcore import agree, as_comm
from hpcore.arrays import array_module, is_device_array

__all__ = ["DarcySolver", "SolveInfo", "grf_coefficients", "darcy_coefficient", "cosine_basis",
           "face_coefficients", "solve_darcy", "generate_darcy", "FACES", "DARCY_DEFAULTS"]

logger = logging.getLogger(__name__)

FACES = ("harmonic", "arithmetic")
DARCY_DEFAULTS = {"alpha": 2.0, "tau": 3.0, "n_modes": 32, "a_high": 12.0, "a_low": 3.0, "forcing": 1.0}
"""The FNO paper's Darcy setup (GRF(alpha=2, tau=3), a in {3, 12}, f = 1)."""


# --------------------------------------------------------------------------- coefficients

def grf_coefficients(seed: int, n_modes: int = 32, alpha: float = 2.0, tau: float = 3.0) -> np.ndarray:
    """Random cosine-series coefficients of one Gaussian random field sample. Not collective.

    Returns ``(n_modes, n_modes)`` float64: ``xi * tau^(alpha-1) (pi^2 |k|^2 + tau^2)^(-alpha/2)``
    with ``xi ~ N(0, 1)`` from ``numpy.random.default_rng(seed)`` and the ``(0, 0)`` mode zero.
    The same seed gives the same coefficients on every rank and at every resolution.
    """
    if isinstance(n_modes, bool) or int(n_modes) != n_modes or n_modes < 2:
        raise ValueError(f"n_modes: expected an int >= 2, got {n_modes!r}")
    if not (alpha > 0 and tau > 0):
        raise ValueError(f"alpha, tau: expected > 0, got alpha={alpha!r}, tau={tau!r}")
    rng = np.random.default_rng(int(seed))
    xi = rng.standard_normal((n_modes, n_modes))
    k = np.arange(n_modes, dtype=np.float64)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    coef = tau ** (alpha - 1.0) * (np.pi ** 2 * k2 + tau ** 2) ** (-alpha / 2.0)
    out = xi * coef
    out[0, 0] = 0.0
    return out


def cosine_basis(n_modes: int, resolution: int, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
    """``cos(pi k x_i)`` for modes ``k < n_modes`` and cell centres ``x_i = (i + 1/2)/resolution``,
    ``start <= i < stop``. Returns ``(n_modes, stop - start)`` float64. Not collective."""
    stop = resolution if stop is None else stop
    x = (np.arange(start, stop, dtype=np.float64) + 0.5) / resolution
    return np.cos(np.pi * np.arange(n_modes, dtype=np.float64)[:, None] * x[None, :])


def darcy_coefficient(seed: int, resolution: int, *, slices=None, n_modes: int = 32, alpha: float = 2.0,
                      tau: float = 3.0, a_high: float = 12.0, a_low: float = 3.0) -> np.ndarray:
    """The thresholded coefficient ``a`` of sample ``seed`` on ``resolution x resolution`` cells.

    Not collective. ``slices``: a pair of slices (e.g. ``decomposition.local_slices``) to
    evaluate only those cells. Returns float64 ``(nx, ny)``: ``a_high`` where the field is
    ``>= 0``, ``a_low`` elsewhere.
    """
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 2:
        raise ValueError(f"resolution: expected an int >= 2, got {resolution!r}")
    if not (a_high > 0 and a_low > 0):
        raise ValueError(f"a_high, a_low: the coefficient must be positive, got {a_high!r}, {a_low!r}")
    sx, sy = slices if slices is not None else (slice(0, resolution), slice(0, resolution))
    coef = grf_coefficients(seed, n_modes, alpha, tau)
    bx = cosine_basis(n_modes, resolution, sx.start, sx.stop)
    by = cosine_basis(n_modes, resolution, sy.start, sy.stop)
    psi = bx.T @ coef @ by
    return np.where(psi >= 0.0, a_high, a_low)


# --------------------------------------------------------------------------- operator

def face_coefficients(a_ghost, lower_boundary, upper_boundary, h: float, face: str = "harmonic"):
    """Face coefficients ``/h^2`` of the 5-point operator for one rank's cells. Not collective.

    ``a_ghost``: ``(nx + 2, ny + 2)`` coefficient with neighbours' cells in the ghost layer
    (ghosts past the physical boundary are ignored). ``lower_boundary``/``upper_boundary``: per
    axis, whether this rank's low/high side is the physical boundary. Returns ``(cw, ce, cs,
    cn)``, each ``(nx, ny)``: west/east along axis 0, south/north along axis 1.
    """
    if face not in FACES:
        raise ValueError(f"face: expected one of {FACES}, got {face!r}")
    xp = array_module(a_ghost)
    a = a_ghost[1:-1, 1:-1]

    def mean(b):
        return 2.0 * a * b / (a + b) if face == "harmonic" else 0.5 * (a + b)

    west = mean(a_ghost[0:-2, 1:-1])
    east = mean(a_ghost[2:, 1:-1])
    south = mean(a_ghost[1:-1, 0:-2])
    north = mean(a_ghost[1:-1, 2:])
    if lower_boundary[0]:
        west[0, :] = 2.0 * a[0, :]
    if upper_boundary[0]:
        east[-1, :] = 2.0 * a[-1, :]
    if lower_boundary[1]:
        south[:, 0] = 2.0 * a[:, 0]
    if upper_boundary[1]:
        north[:, -1] = 2.0 * a[:, -1]
    inv = 1.0 / (h * h)
    out = [xp.ascontiguousarray(c * inv) for c in (west, east, south, north)]
    return tuple(out)


def _apply_host(p, cw, ce, cs, cn, out):
    nx, ny = out.shape
    for i in range(nx):
        for j in range(ny):
            c = p[i + 1, j + 1]
            out[i, j] = (cw[i, j] * (c - p[i, j + 1]) + ce[i, j] * (c - p[i + 2, j + 1])
                         + cs[i, j] * (c - p[i + 1, j]) + cn[i, j] * (c - p[i + 1, j + 2]))


_KERNEL = None


def _host_kernel():
    global _KERNEL
    if _KERNEL is None:
        from numba import njit

        _KERNEL = njit(cache=True)(_apply_host)
    return _KERNEL


def _apply(p, cw, ce, cs, cn, out) -> None:
    """``out = A p`` on the interior; ``p`` has one ghost layer (filled)."""
    if is_device_array(p):
        c = p[1:-1, 1:-1]
        out[...] = (cw * (c - p[:-2, 1:-1]) + ce * (c - p[2:, 1:-1]) + cs * (c - p[1:-1, :-2])
                    + cn * (c - p[1:-1, 2:]))
    else:
        _host_kernel()(p, cw, ce, cs, cn, out)


# --------------------------------------------------------------------------- solver

@dataclass
class SolveInfo:
    """Outcome of one solve: iterations, final relative residual ``||b - A u|| / ||b||``, wall time [s]."""

    iterations: int
    residual: float
    wall_s: float
    method: str


class DarcySolver:
    """Distributed solver of ``-div(a grad u) = f``, ``u = 0`` on the boundary of the unit square.

    Collective on ``comm`` to construct (same arguments on every rank): builds a
    :class:`comms.CartDecomposition` of ``(resolution, resolution)`` cells and a one-cell star
    :class:`comms.HaloExchange`, reused by every :meth:`solve`.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or hpcore.Comm
    resolution : int
        Cells per axis (``h = 1 / resolution``).
    method : {"cg", "petsc"}
        ``"cg"``: Jacobi-preconditioned CG over ``HaloExchange``; ``"petsc"``: petsc4py's KSP
        (CG + Jacobi) on the same partition (ImportError naming petsc4py when missing).
    rtol : float
        Stop when ``||b - A u||_2 <= rtol ||b||_2``.
    max_iterations : int, optional
        Default ``20 * resolution + 100``; reaching it raises RuntimeError on every rank.
    face : {"harmonic", "arithmetic"}
        Face coefficient of the flux between two cells.
    dims : sequence of int, optional
        Process grid (0 = choose), as for CartDecomposition.

    Attributes
    ----------
    decomposition : comms.CartDecomposition
    local_slices : tuple of slice, this rank's cells
    """

    def __init__(self, comm, resolution: int, *, method: Literal["cg", "petsc"] = "cg", rtol: float = 1e-10,
                 max_iterations: Optional[int] = None, face: str = "harmonic", dims=None):
        from comms import CartDecomposition, HaloExchange

        base = as_comm(comm)
        error = None
        try:
            if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 2:
                raise ValueError(f"resolution: expected an int >= 2, got {resolution!r}")
            if method not in ("cg", "petsc"):
                raise ValueError(f"method: expected 'cg' or 'petsc', got {method!r}")
            if not 0 < rtol < 1:
                raise ValueError(f"rtol: expected 0 < rtol < 1, got {rtol!r}")
            if face not in FACES:
                raise ValueError(f"face: expected one of {FACES}, got {face!r}")
            if max_iterations is not None and (int(max_iterations) != max_iterations or max_iterations < 1):
                raise ValueError(f"max_iterations: expected an int >= 1, got {max_iterations!r}")
            if method == "petsc":
                try:
                    import petsc4py  # noqa: F401
                except ImportError:
                    raise ImportError("method='petsc' needs petsc4py (pip install petsc petsc4py)") from None
        except (ValueError, ImportError) as exc:
            error = exc
        agree(base, error, what="DarcySolver", resolution=str(resolution), method=str(method), rtol=repr(rtol),
              face=str(face))
        self.resolution = int(resolution)
        self.method = method
        self.rtol = float(rtol)
        self.face = face
        self.max_iterations = int(max_iterations) if max_iterations is not None else 20 * self.resolution + 100
        self.decomposition = d = CartDecomposition(base, (self.resolution, self.resolution), dims=dims)
        self.halo = HaloExchange(d, ghost=1, stencil="star", method="datatype")
        self.comm = d.comm
        self.local_slices = d.local_slices
        self.local_shape = d.local_shape
        self.lower_boundary = tuple(c == 0 for c in d.coords)
        self.upper_boundary = tuple(c == n - 1 for c, n in zip(d.coords, d.dims))
        self._petsc = None

    # ----------------------------------------------------------------- pieces
    def coefficient(self, seed: int, **grf) -> np.ndarray:
        """This rank's cells of sample ``seed``'s coefficient (see :func:`darcy_coefficient`). Not collective."""
        return darcy_coefficient(seed, self.resolution, slices=self.local_slices, **grf)

    def faces(self, a_local):
        """Face coefficients of this rank's cells (one halo exchange of ``a``). Neighbourwise collective."""
        xp = array_module(a_local)
        nx, ny = self.local_shape
        if tuple(a_local.shape) != (nx, ny):
            raise ValueError(f"rank {self.decomposition.rank}: a_local: expected shape {(nx, ny)}, "
                             f"got {tuple(a_local.shape)}")
        ag = xp.zeros((nx + 2, ny + 2), dtype=np.float64)
        ag[1:-1, 1:-1] = a_local
        self.halo.exchange(ag)
        return face_coefficients(ag, self.lower_boundary, self.upper_boundary, 1.0 / self.resolution, self.face)

    def apply(self, u_local, a_local):
        """``A u`` on this rank's cells (for tests and residuals). Neighbourwise collective."""
        xp = array_module(u_local)
        nx, ny = self.local_shape
        cw, ce, cs, cn = self.faces(a_local)
        p = xp.zeros((nx + 2, ny + 2), dtype=np.float64)
        p[1:-1, 1:-1] = u_local
        self.halo.exchange(p)
        out = xp.empty((nx, ny), dtype=np.float64)
        _apply(p, cw, ce, cs, cn, out)
        return out

    def _dot(self, x, y) -> float:
        xp = array_module(x)
        local = np.array([float(xp.vdot(x, y))])
        return float(self.comm.allreduce(local[0]))

    # ----------------------------------------------------------------- solve
    def solve(self, a_local, f_local=1.0):
        """Solve for ``u`` on this rank's cells. Collective on ``comm``.

        Parameters
        ----------
        a_local : array ``(nx, ny)`` float64 (NumPy or CuPy), this rank's coefficient, > 0.
        f_local : float or array ``(nx, ny)``, the right-hand side (default 1).

        Returns
        -------
        u_local : array ``(nx, ny)`` float64 on ``a_local``'s device
        info : SolveInfo
        """
        error = None
        xp = np
        try:
            xp = array_module(a_local)
            nx, ny = self.local_shape
            if tuple(getattr(a_local, "shape", ())) != (nx, ny):
                raise ValueError(f"a_local: expected shape {(nx, ny)}, got {getattr(a_local, 'shape', None)}")
            if not bool(xp.all(a_local > 0)):
                raise ValueError("a_local: the coefficient must be > 0 everywhere")
            if np.ndim(f_local) and tuple(f_local.shape) != (nx, ny):
                raise ValueError(f"f_local: expected a scalar or shape {(nx, ny)}, got {tuple(f_local.shape)}")
        except (TypeError, ValueError) as exc:
            error = exc
        agree(self.comm, error)
        t0 = time.perf_counter()
        a_local = xp.asarray(a_local, dtype=np.float64)
        b = xp.empty((nx, ny), dtype=np.float64)
        b[...] = f_local
        if self.method == "petsc":
            u, its, res = self._solve_petsc(a_local, b)
        else:
            u, its, res = self._solve_cg(a_local, b)
        info = SolveInfo(its, res, time.perf_counter() - t0, self.method)
        if not res <= self.rtol * 1.0001:
            raise RuntimeError(f"DarcySolver: {self.method} did not converge in {its} iterations "
                               f"(relative residual {res:.3e} > rtol {self.rtol:.1e}); raise max_iterations")
        return u, info

    def _solve_cg(self, a_local, b):
        xp = array_module(a_local)
        nx, ny = self.local_shape
        cw, ce, cs, cn = self.faces(a_local)
        inv_diag = 1.0 / (cw + ce + cs + cn)
        u = xp.zeros((nx, ny), dtype=np.float64)
        r = b.copy()
        p = xp.zeros((nx + 2, ny + 2), dtype=np.float64)  # physical ghosts stay 0 (u = 0 beyond the faces)
        pin = p[1:-1, 1:-1]
        q = xp.empty((nx, ny), dtype=np.float64)
        bnorm = np.sqrt(self._dot(b, b))
        if bnorm == 0.0:
            return u, 0, 0.0
        z = inv_diag * r
        pin[...] = z
        rz = self._dot(r, z)
        res = 1.0
        its = 0
        while its < self.max_iterations:
            self.halo.exchange(p)
            _apply(p, cw, ce, cs, cn, q)
            alpha = rz / self._dot(pin, q)
            u += alpha * pin
            r -= alpha * q
            its += 1
            res = np.sqrt(self._dot(r, r)) / bnorm
            if res <= self.rtol:
                break
            z = inv_diag * r
            rz_new = self._dot(r, z)
            pin *= rz_new / rz
            pin += z
            rz = rz_new
        return u, its, float(res)

    def _global_index(self):
        """PETSc numbering: rank r owns a contiguous range; returns this rank's cells' global
        indices with a ghost layer (-1 past the physical boundary) and its first row."""
        d = self.decomposition
        sizes = [int(np.prod(d.extent_of(r)[1])) for r in range(d.size)]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        owner = np.empty(d.global_shape, dtype=np.int64)
        index = np.empty(d.global_shape, dtype=np.int64)
        for r in range(d.size):
            sl = d.slices_of(r)
            shape = d.extent_of(r)[1]
            owner[sl] = r
            index[sl] = offsets[r] + np.arange(int(np.prod(shape))).reshape(shape)
        padded = np.full((d.global_shape[0] + 2, d.global_shape[1] + 2), -1, dtype=np.int64)
        padded[1:-1, 1:-1] = index
        sx, sy = d.local_slices
        return padded[sx.start:sx.stop + 2, sy.start:sy.stop + 2], int(offsets[d.rank]), int(offsets[-1])

    def _solve_petsc(self, a_local, b):
        from petsc4py import PETSc

        if is_device_array(a_local):
            a_local, b = a_local.get(), b.get()
        nx, ny = self.local_shape
        cw, ce, cs, cn = self.faces(a_local)
        gidx, first, total = self._global_index()
        n = nx * ny
        A = PETSc.Mat().createAIJ(((n, total), (n, total)), nnz=(5, 4), comm=self.comm)
        A.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, False)
        for i in range(nx):
            for j in range(ny):
                row = int(gidx[i + 1, j + 1])
                cols, vals = [row], [cw[i, j] + ce[i, j] + cs[i, j] + cn[i, j]]
                for (ii, jj), c in (((i, j + 1), cw[i, j]), ((i + 2, j + 1), ce[i, j]), ((i + 1, j), cs[i, j]),
                                    ((i + 1, j + 2), cn[i, j])):
                    g = int(gidx[ii, jj])
                    if g >= 0:
                        cols.append(g)
                        vals.append(-c)
                A.setValues([row], cols, vals)
        A.assemble()
        x, rhs = A.createVecs()
        rhs.setArray(np.ascontiguousarray(b).reshape(-1))
        x.set(0.0)
        ksp = PETSc.KSP().create(comm=self.comm)
        ksp.setOperators(A)
        ksp.setType("cg")
        ksp.getPC().setType("jacobi")
        ksp.setTolerances(rtol=self.rtol, atol=0.0, max_it=self.max_iterations)
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
        ksp.solve(rhs, x)
        its = ksp.getIterationNumber()
        u = x.getArray().copy().reshape(nx, ny)
        r = rhs.duplicate()
        A.mult(x, r)
        r.aypx(-1.0, rhs)
        res = r.norm() / rhs.norm()
        for obj in (ksp, A, x, rhs, r):
            obj.destroy()
        return u, int(its), float(res)

    # ----------------------------------------------------------------- lifetime
    def free(self) -> None:
        """Free the halo plan and the decomposition. Collective; safe to call twice."""
        if self.halo is not None:
            self.halo.free()
            self.halo = None
        self.decomposition.free()

    def __enter__(self) -> "DarcySolver":
        return self

    def __exit__(self, *exc_info) -> None:
        self.free()


def solve_darcy(comm, resolution: int, seed: int, *, method="cg", rtol=1e-10, face="harmonic", **grf):
    """Coefficient and solution of sample ``seed``, gathered on rank 0 of ``comm``. Collective.

    Returns ``(a, u, info)`` with ``(resolution, resolution)`` arrays on rank 0 and None
    elsewhere.
    """
    with DarcySolver(comm, resolution, method=method, rtol=rtol, face=face) as s:
        a = s.coefficient(seed, **grf)
        u, info = s.solve(a, 1.0)
        d = s.decomposition
        return d.gather(a), d.gather(u), info


# --------------------------------------------------------------------------- datasets

def generate_darcy(comm, path: str, n_samples: int, resolution: int, *, seed: int = 0, group_size: int = 1,
                   method: Literal["cg", "petsc"] = "cg", rtol: float = 1e-10, face: str = "harmonic",
                   n_modes: int = 32, alpha: float = 2.0, tau: float = 3.0, a_high: float = 12.0,
                   a_low: float = 3.0, dtype="float32") -> dict:
    """Generate ``n_samples`` Darcy samples in parallel and write them to the HDF5 file ``path``.

    Collective on ``comm``. The ranks split into ``size // group_size`` groups of
    ``group_size`` consecutive ranks (``size`` must be a multiple); group ``g`` solves samples
    ``g, g + groups, ...`` on its own decomposition. Sample ``i`` uses seed ``seed + i``, so the
    data do not depend on the number of ranks or groups (up to the solver tolerance). Rank 0
    writes the file:

    ``inputs`` ``(n, R, R)`` coefficient ``a``; ``outputs`` ``(n, R, R)`` solution ``u``;
    ``seeds`` ``(n,)``; ``iterations`` and ``residuals`` ``(n,)``; attributes ``problem``,
    ``resolution``, ``n_samples``, GRF parameters, ``discretization``, ``solver``, ``rtol``,
    ``version``.

    Returns a summary dict (same on every rank): samples, groups, wall_s, mean iterations.
    """
    base = as_comm(comm)
    size, rank = base.Get_size(), base.Get_rank()
    error = None
    try:
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"n_samples: expected an int >= 1, got {n_samples!r}")
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
            raise ValueError(f"group_size: expected an int >= 1, got {group_size!r}")
        if size % group_size:
            raise ValueError(f"group_size: {group_size} does not divide the {size} ranks")
        if np.dtype(dtype).kind != "f":
            raise ValueError(f"dtype: expected a floating dtype, got {dtype!r}")
        if rank == 0:
            import h5py
    except (ValueError, TypeError, ImportError) as exc:
        error = exc
    agree(base, error, what="generate_darcy", path=str(path), n_samples=str(n_samples),
          resolution=str(resolution), seed=str(seed), group_size=str(group_size))
    groups = size // group_size
    color = rank // group_size
    sub = base.Split(color, rank)
    t0 = time.perf_counter()
    grf = dict(n_modes=n_modes, alpha=alpha, tau=tau, a_high=a_high, a_low=a_low)
    f = None
    try:
        solver = DarcySolver(sub, resolution, method=method, rtol=rtol, face=face)
        dt = np.dtype(dtype)
        if rank == 0:
            import h5py

            f = h5py.File(path, "w")
            ins = f.create_dataset("inputs", (n_samples, resolution, resolution), dtype=dt)
            outs = f.create_dataset("outputs", (n_samples, resolution, resolution), dtype=dt)
            f.create_dataset("seeds", data=seed + np.arange(n_samples, dtype=np.int64))
            its_all = np.zeros(n_samples, dtype=np.int64)
            res_all = np.zeros(n_samples)
        n_rounds = -(-n_samples // groups)
        iterations = 0
        for k in range(n_rounds):
            i = k * groups + color
            item, err = None, None
            if i < n_samples:
                try:
                    a = solver.coefficient(seed + i, **grf)
                    u, info = solver.solve(a, 1.0)
                    ga, gu = solver.decomposition.gather(a), solver.decomposition.gather(u)
                    if sub.Get_rank() == 0:
                        item = (i, ga.astype(dt), gu.astype(dt), info.iterations, info.residual)
                except (RuntimeError, ValueError) as exc:
                    err = exc
            agree(base, err)
            items = base.gather(item, root=0)
            if rank == 0:
                for it in items:
                    if it is None:
                        continue
                    j, ga, gu, its, res = it
                    ins[j], outs[j] = ga, gu
                    its_all[j], res_all[j] = its, res
                    iterations += its
                if (k + 1) % max(1, n_rounds // 10) == 0 or k + 1 == n_rounds:
                    logger.info("generate darcy: %d/%d samples (%.1f s)", min((k + 1) * groups, n_samples),
                                n_samples, time.perf_counter() - t0)
        if rank == 0:
            f.create_dataset("iterations", data=its_all)
            f.create_dataset("residuals", data=res_all)
            f.attrs.update({"problem": "darcy", "resolution": resolution, "n_samples": n_samples,
                            "seed": seed, "n_modes": n_modes, "alpha": alpha, "tau": tau, "a_high": a_high,
                            "a_low": a_low, "forcing": 1.0, "domain": "unit square, u = 0 on the boundary",
                            "discretization": f"cell-centred finite volumes, 5-point, {face} face coefficients",
                            "solver": "PETSc KSP cg+jacobi" if method == "petsc" else "PCG (Jacobi) over HaloExchange",
                            "rtol": rtol, "group_size": group_size, "ranks": size, "version": 1})
        solver.free()
    finally:
        if f is not None:
            f.close()
        sub.Free()
    wall = time.perf_counter() - t0
    total = base.bcast(iterations if rank == 0 else None, root=0)
    return {"samples": n_samples, "groups": groups, "group_size": group_size, "wall_s": wall,
            "mean_iterations": total / n_samples}
