"""Realization groups x theta-phi domain decomposition, and the pole-cap reductions across phi ranks."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from comms import CartDecomposition, HaloExchange
from hpcore.errors import agree

__all__ = ["Domain", "PoleReducer", "split_realizations", "GHOST"]

GHOST = 2
"""Ghost cells per side on both axes (WENO3 reads two cells past a face)."""


def split_realizations(n_realizations: int, groups: int) -> list:
    """``[(start, stop), ...]``: contiguous, balanced blocks of realizations per group."""
    return [((g * n_realizations) // groups, ((g + 1) * n_realizations) // groups) for g in range(groups)]


class PoleReducer:
    """Sums over all phi columns of the rows next to the poles, in one fixed order.

    Collective on ``decomposition.comm`` to construct. The ranks of the first
    process row hold the north cap, those of the last process row the south cap
    (the same ranks when the grid has one process row). A cap's update is the net
    flux through its edge: a sum over every phi column of the first (last) ring of
    cells. Each pole rank contributes its columns; the pieces are gathered over the
    ranks of its process row (``Allgatherv`` on a sub-communicator ordered by phi
    coordinate) and summed over the whole ring in global phi order with one
    ``sum`` per realization, so the result has the same bits for any number of
    phi ranks and any split of the realizations.
    """

    def __init__(self, decomposition: CartDecomposition):
        d = decomposition
        self.decomposition = d
        self.north = d.coords[0] == 0
        self.south = d.coords[0] == d.dims[0] - 1
        self.row_comm = d.comm.Split(color=d.coords[0], key=d.coords[1])
        # phi extent of every rank in this process row, in phi order
        self.widths = [d.extent_of(d.rank_of((d.coords[0], c)))[1][1] for c in range(d.dims[1])]
        self.npl = d.local_shape[1]

    @property
    def holds_pole(self) -> bool:
        """Whether this rank's process row holds a pole cap."""
        return self.north or self.south

    def sums(self, north, south):
        """Global sums over phi of the north and south contributions.

        Neighbourwise collective on the ranks of a pole process row: every rank of
        that row calls with its own ``(npl, nr)`` host arrays (``None`` for a pole it
        does not hold); other ranks need not call. Returns ``(north_sum,
        south_sum)``, each of shape ``(nr,)`` or None.
        """
        if not self.holds_pole:
            return None, None
        parts = [p for p, held in ((north, self.north), (south, self.south)) if held]
        k = len(parts)
        nr = parts[0].shape[1]
        local = np.empty((k, nr, self.npl), dtype=np.float64)
        for i, p in enumerate(parts):
            local[i] = np.asarray(p, dtype=np.float64).T
        if len(self.widths) == 1:
            full = local
        else:
            from mpi4py import MPI

            counts = [k * nr * w for w in self.widths]
            displs = np.concatenate(([0], np.cumsum(counts)[:-1])).tolist()
            recv = np.empty(sum(counts), dtype=np.float64)
            self.row_comm.Allgatherv(local, [recv, counts, displs, MPI.DOUBLE])
            pieces = [recv[o:o + c].reshape(k, nr, c // (k * nr)) for o, c in zip(displs, counts)]
            full = np.concatenate(pieces, axis=-1)
        total = full.sum(axis=-1)  # (k, nr): one pairwise sum of nphi values per realization
        out = [None, None]
        i = 0
        if self.north:
            out[0] = total[i]
            i += 1
        if self.south:
            out[1] = total[i]
        return out[0], out[1]

    def free(self) -> None:
        """Free the row communicator. Collective on the process row; safe to call twice."""
        from mpi4py import MPI

        if self.row_comm != MPI.COMM_NULL and not MPI.Is_finalized():
            self.row_comm.Free()


class Domain:
    """Where this rank works: a group of realizations and a block of the sphere.

    Collective on ``comm``. The ranks are split into ``groups`` equal groups of
    consecutive ranks (``comm.Split``); group ``g`` evolves a contiguous block of the
    realizations, and inside the group the ``(ntheta, nphi)`` grid is decomposed
    with :class:`comms.CartDecomposition` (periodic in phi, not in theta) and halos
    move with :class:`comms.HaloExchange` (``ghost=2``, star stencil). Every
    realization of the group lives in one array with a trailing realization axis,
    so one exchange moves all of them in one round of messages.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
    grid : SphereGrid
    n_realizations : int
    groups : int
        Realization groups (1 .. min(size, n_realizations), dividing the rank count).
    dims : (int, int), optional
        Process grid (theta, phi) inside a group; zeros are chosen.
    halo_method : {"auto", "datatype", "pack"}
    ranks_per_node : optional virtual node layout (see :class:`hpcore.topology.Topology`).
    """

    def __init__(self, comm, grid, n_realizations: int, groups: int = 1, dims: Optional[Sequence[int]] = None,
                 halo_method: str = "auto", ranks_per_node=None):
        size = comm.Get_size()
        rank = comm.Get_rank()
        error = None
        try:
            if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
                raise TypeError(f"parallel.realization_groups: expected an int, got {groups!r}")
            if groups < 1 or groups > size or size % groups:
                raise ValueError(f"parallel.realization_groups: {groups} groups cannot split {size} ranks evenly "
                                 "(need a divisor of the rank count)")
            if groups > n_realizations:
                raise ValueError(f"parallel.realization_groups: {groups} groups for only {n_realizations} "
                                 "realizations (each group needs at least one)")
            per = size // groups
            if dims is not None:
                dims = tuple(int(x) for x in dims)
                if len(dims) != 2 or any(x < 0 for x in dims):
                    raise ValueError(f"parallel.dims: expected two entries >= 0, got {dims}")
                if all(dims) and dims[0] * dims[1] != per:
                    raise ValueError(f"parallel.dims: {dims} needs {dims[0] * dims[1]} ranks per group, "
                                     f"have {per}")
        except (TypeError, ValueError) as exc:
            error = exc
        agree(comm, error)
        self.comm = comm.Dup()
        self.grid = grid
        self.groups = int(groups)
        self.ranks_per_group = size // self.groups
        self.group = rank // self.ranks_per_group
        self.blocks = split_realizations(n_realizations, self.groups)
        self.r0, self.r1 = self.blocks[self.group]
        self.nr = self.r1 - self.r0
        self.n_realizations = n_realizations
        self.group_comm = self.comm.Split(color=self.group, key=rank)
        self.decomp = None
        self.halo = None
        self.poles = None
        error = None
        try:
            self.decomp = CartDecomposition(self.group_comm, grid.shape, periodic=(False, True),
                                            dims=list(dims) if dims is not None else None,
                                            ranks_per_node=ranks_per_node)
            self.halo = HaloExchange(self.decomp, ghost=GHOST, stencil="star", method=halo_method)
        except (TypeError, ValueError) as exc:
            error = exc
        # The group's own collectives agreed already; agree across groups too.
        agree(self.comm, error)
        self.poles = PoleReducer(self.decomp)
        d = self.decomp
        self.ntl, self.npl = d.local_shape
        self.row0, self.col0 = d.local_start
        self.R = self.ntl + 2 * GHOST
        self.C = self.npl + 2 * GHOST
        self.ghost = GHOST
        self.owns_north = self.row0 == 0
        self.owns_south = self.row0 + self.ntl == grid.ntheta
        self.group_root = rank == self.group * self.ranks_per_group
        self.rank = rank
        self.size = size

    @property
    def padded_shape(self) -> tuple:
        """``(R, C, nr)``: local rows and columns with ghosts, realizations trailing."""
        return (self.R, self.C, self.nr)

    def global_rows(self) -> np.ndarray:
        """Global row index of every padded local row (may be < 0 or >= ntheta in ghosts)."""
        return self.row0 - GHOST + np.arange(self.R)

    def interior(self, a):
        """The owned cells of a padded local array ``(R, C, ...)``."""
        g = GHOST
        return a[g:g + self.ntl, g:g + self.npl]

    def free(self) -> None:
        """Release communicators and halo plans. Collective on ``comm``; safe to call twice."""
        from mpi4py import MPI

        if self.halo is not None:
            self.halo.free()
            self.halo = None
        if self.poles is not None:
            self.poles.free()
            self.poles = None
        if self.decomp is not None:
            self.decomp.free()
            self.decomp = None
        for name in ("group_comm", "comm"):
            c = getattr(self, name, None)
            if c is not None and c != MPI.COMM_NULL and not MPI.Is_finalized():
                c.Free()
            setattr(self, name, None)

    def __repr__(self) -> str:
        return (f"Domain(group {self.group}/{self.groups}, realizations [{self.r0}, {self.r1}), "
                f"{self.decomp!r})")
