"""Cartesian domain decomposition: process grid, local extents, neighbours, I/O gather/scatter."""

from __future__ import annotations

import operator
from typing import Optional, Sequence

import numpy as np

from hpcore.arrays import array_module, is_device_array
from hpcore.boundary import agree, as_comm
from hpcore.errors import MismatchError
from hpcore.topology import Topology

from .placement import balanced_dims, halo_bytes_by_node, node_block_grid, row_major_grid, split_extent

__all__ = ["CartDecomposition", "PLACEMENTS"]

PLACEMENTS = ("auto", "node-blocks", "row-major")
_IO_TAG = 71


def _index(name: str, value) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    return operator.index(value)


def _per_axis(name: str, value, ndim: int, kind) -> tuple:
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != ndim:
            raise ValueError(f"{name}: expected one value per axis ({ndim}), got {len(value)}: {tuple(value)!r}")
        return tuple(kind(f"{name}[{i}]", v) for i, v in enumerate(value))
    return (kind(name, value),) * ndim


def _bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


class CartDecomposition:
    """A Cartesian split of a global grid of cells over the ranks of a communicator.

    Collective on ``comm`` (every rank passes the same arguments; a bad or
    mismatched argument raises the same error on every rank). The decomposition
    communicates on a duplicate of ``comm`` (``self.comm``), so its messages never
    match the caller's; :meth:`free` releases it (collective).

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or hpcore.Comm
    global_shape : sequence of int
        Cells per axis of the global grid (any number of axes).
    periodic : bool or sequence of bool
        Periodicity, for all axes or per axis.
    dims : sequence of int, optional
        Processes per axis; zeros (or None) are chosen to minimize the cells on
        process faces, every process owning at least one cell per axis.
    ranks_per_node : int or sequence of int, optional
        A virtual node layout (as :class:`hpcore.topology.Topology`); default: the
        ranks that share memory form a node.
    placement : {"auto", "node-blocks", "row-major"}
        Where ranks sit on the process grid. ``"node-blocks"`` gives each node a
        compact block, so fewer halo bytes cross nodes; ``"row-major"`` is MPI's
        Cartesian numbering. ``"auto"``: node blocks when there is more than one
        node (with one node both are the same).

    Attributes
    ----------
    ndim, global_shape, periodic, dims : the grid
    rank, size : this rank in ``comm`` and the number of ranks
    coords : tuple of int, this rank's position in the process grid
    local_shape : tuple of int, cells owned by this rank per axis
    local_start : tuple of int, global index of the first owned cell per axis
    local_slices : tuple of slice, this rank's cells in global indices
    grid : ndarray of int, shape ``dims``, the rank at each grid position
    node_of : tuple of int, the node index of every rank
    placement : str, the placement used ("node-blocks" or "row-major")
    """

    def __init__(self, comm, global_shape: Sequence[int], periodic=False, dims: Optional[Sequence[int]] = None,
                 ranks_per_node=None, *, placement: str = "auto"):
        base = as_comm(comm)
        size = base.Get_size()
        error = None
        args = None
        try:
            if isinstance(global_shape, (str, bytes)) or not hasattr(global_shape, "__len__"):
                raise TypeError(f"global_shape: expected a sequence of ints, got {type(global_shape).__name__}")
            shape = tuple(_index(f"global_shape[{i}]", n) for i, n in enumerate(global_shape))
            if not shape:
                raise ValueError("global_shape: needs at least one axis")
            if any(n < 1 for n in shape):
                raise ValueError(f"global_shape: every extent must be >= 1, got {shape}")
            per = _per_axis("periodic", periodic, len(shape), _bool)
            given = None
            if dims is not None:
                given = _per_axis("dims", dims, len(shape), _index) if isinstance(dims, (list, tuple, np.ndarray)) \
                    else None
                if given is None:
                    raise TypeError(f"dims: expected a sequence of ints, got {type(dims).__name__}")
                if any(d < 0 for d in given):
                    raise ValueError(f"dims: entries must be >= 0 (0 = choose), got {given}")
            if placement not in PLACEMENTS:
                raise ValueError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")
            grid_dims = balanced_dims(size, shape, per, given)
            args = (shape, per, given, grid_dims, placement)
        except (TypeError, ValueError) as exc:
            error = exc
        fields = {} if error is not None else dict(zip(("global_shape", "periodic", "dims", "placement"),
                                                      (shape, per, given, placement)))
        try:
            agree(base, error, what="CartDecomposition", **fields)
        except MismatchError as exc:
            raise ValueError(f"CartDecomposition: arguments differ between ranks ({exc})") from None
        shape, per, _, grid_dims, placement = args

        with Topology(base, ranks_per_node=ranks_per_node) as topo:
            self.nodes = [list(n) for n in topo.nodes]
            self.node_of = tuple(topo.node_of(r) for r in range(size))
        if placement == "auto":
            placement = "node-blocks" if len(self.nodes) > 1 else "row-major"
        if placement == "node-blocks":
            grid = node_block_grid(grid_dims, self.nodes, shape, per)
        else:
            grid = row_major_grid(grid_dims)
        grid.flags.writeable = False

        self.comm = base.Dup()
        self._freed = False
        from mpi4py import MPI

        self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        self.rank = base.Get_rank()
        self.size = size
        self.ndim = len(shape)
        self.global_shape = shape
        self.periodic = per
        self.dims = tuple(int(d) for d in grid_dims)
        self.placement = placement
        self.grid = grid
        self._coords_of = {int(grid[c]): tuple(int(x) for x in c) for c in np.ndindex(*self.dims)}
        self._bounds = [split_extent(n, d) for n, d in zip(shape, self.dims)]
        self.coords = self._coords_of[self.rank]
        self.local_start, self.local_shape = self.extent_of(self.rank)
        self.local_slices = tuple(slice(s, s + n) for s, n in zip(self.local_start, self.local_shape))

    # ----------------------------------------------------------------- geometry (local)
    def coords_of(self, rank: int) -> tuple:
        """Process-grid coordinates of ``rank``. Not collective."""
        rank = _index("rank", rank)
        if not 0 <= rank < self.size:
            raise ValueError(f"rank must be in [0, {self.size}), got {rank}")
        return self._coords_of[rank]

    def rank_of(self, coords: Sequence[int]) -> Optional[int]:
        """The rank at process coordinates ``coords`` (wrapped on periodic axes), or None
        outside a non-periodic edge. Not collective."""
        if len(coords) != self.ndim:
            raise ValueError(f"coords: expected {self.ndim} values, got {tuple(coords)!r}")
        wrapped = []
        for i, c in enumerate(coords):
            c = _index(f"coords[{i}]", c)
            if self.periodic[i]:
                c %= self.dims[i]
            elif not 0 <= c < self.dims[i]:
                return None
            wrapped.append(c)
        return int(self.grid[tuple(wrapped)])

    def neighbor(self, offset: Sequence[int]) -> Optional[int]:
        """The rank at ``coords + offset`` (any integer offset), or None past a non-periodic
        edge. Not collective."""
        if len(offset) != self.ndim:
            raise ValueError(f"offset: expected {self.ndim} values, got {tuple(offset)!r}")
        return self.rank_of([c + _index(f"offset[{i}]", o) for i, (c, o) in enumerate(zip(self.coords, offset))])

    def extent_of(self, rank: int) -> tuple:
        """``(start, shape)``: the global index of ``rank``'s first cell and its cells per axis."""
        coords = self.coords_of(rank)
        start = tuple(self._bounds[i][c] for i, c in enumerate(coords))
        shape = tuple(self._bounds[i][c + 1] - self._bounds[i][c] for i, c in enumerate(coords))
        return start, shape

    def slices_of(self, rank: int) -> tuple:
        """``rank``'s cells as slices of the global index space. Not collective."""
        start, shape = self.extent_of(rank)
        return tuple(slice(s, s + n) for s, n in zip(start, shape))

    def min_local_extent(self) -> tuple:
        """The smallest interior extent over all ranks, per axis [cells]."""
        return tuple(n // d for n, d in zip(self.global_shape, self.dims))

    def halo_bytes(self, ghost=1, stencil: str = "box", itemsize: int = 8) -> dict:
        """Halo bytes of one exchange of one field, intra- and inter-node, for this
        decomposition's placement and for row-major placement. Not collective.

        Returns ``{"node-blocks"|"row-major": {"intra", "inter", "total"}}`` [bytes]
        (the key of this placement, and always "row-major" for comparison).
        """
        g = _per_axis("ghost", ghost, self.ndim, _index)
        out = {self.placement: halo_bytes_by_node(self.grid, self.global_shape, self.periodic, g, stencil,
                                                  itemsize, self.node_of)}
        if self.placement != "row-major":
            out["row-major"] = halo_bytes_by_node(row_major_grid(self.dims), self.global_shape, self.periodic,
                                                  g, stencil, itemsize, self.node_of)
        return out

    # ----------------------------------------------------------------- I/O (collective)
    @property
    def freed(self) -> bool:
        """True after :meth:`free` (the decomposition can no longer communicate). Not collective."""
        return self._freed

    def require_live(self, what: str) -> None:
        """Raise ``ValueError`` naming ``what`` if this decomposition was freed. Not collective.

        :meth:`free` is collective, so every rank raises alike, before any communication.
        """
        if self.freed:
            raise ValueError(f"{what}: the CartDecomposition was freed (free() or the end of its with block); "
                             "build a new one")

    def _io_arguments(self, what: str, root, ghost) -> tuple:
        """Check ``root`` and ``ghost`` locally and agree on them. Collective; returns ``(root, ghost per axis)``."""
        self.require_live(f"CartDecomposition.{what}")
        error, g = None, None
        try:
            root = _index("root", root)
            if not 0 <= root < self.size:
                raise ValueError(f"root must be in [0, {self.size}), got {root}")
            g = _per_axis("ghost", ghost, self.ndim, _index)
        except (TypeError, ValueError) as exc:
            error = exc
        agree(self.comm, error, what=f"CartDecomposition.{what}", root=root, ghost=g)
        return root, g

    def _local_view(self, local, ghost: tuple, name: str):
        lead = tuple(n + 2 * g for n, g in zip(self.local_shape, ghost))
        if not hasattr(local, "shape") or tuple(local.shape[: self.ndim]) != lead:
            got = getattr(local, "shape", type(local).__name__)
            raise ValueError(f"{name}: expected shape {lead} + component axes on rank {self.rank}, got {got}")
        return local[tuple(slice(g, g + n) for g, n in zip(ghost, self.local_shape))]

    def scatter(self, global_array=None, root: int = 0, ghost=0):
        """Split ``global_array`` (given on ``root``) into every rank's local array.

        Collective on ``comm``. ``global_array`` has shape ``global_shape +
        components`` on ``root`` (ignored elsewhere). Returns a new array of shape
        ``local_shape + 2*ghost + components`` on every rank, on ``root``'s array
        module (NumPy, or CuPy on the current device), ghost cells zero.
        """
        root, g = self._io_arguments("scatter", root, ghost)
        meta, error = None, None
        if self.rank == root:
            try:
                a = global_array
                if not hasattr(a, "shape") or not hasattr(a, "dtype"):
                    raise TypeError(f"global_array: expected a NumPy/CuPy array on root {root}, "
                                    f"got {type(a).__name__}")
                if tuple(a.shape[: self.ndim]) != self.global_shape:
                    raise ValueError(f"global_array: expected shape {self.global_shape} + component axes, "
                                     f"got {tuple(a.shape)}")
                if a.dtype.hasobject:
                    raise TypeError("global_array: object arrays cannot be sent")
                meta = (tuple(a.shape[self.ndim:]), a.dtype.str, is_device_array(a))
            except (TypeError, ValueError) as exc:
                error = exc
        agree(self.comm, error)  # only root can fail here
        comps, dtype, device = self.comm.bcast(meta, root=root)
        xp = None
        try:
            xp = array_module(global_array) if self.rank == root else _module(device)
        except RuntimeError as exc:
            error = exc
        agree(self.comm, error)
        full = tuple(n + 2 * k for n, k in zip(self.local_shape, g)) + comps
        local = xp.zeros(full, dtype=np.dtype(dtype))
        interior = local[tuple(slice(k, k + n) for k, n in zip(g, self.local_shape))]
        from hpcore.transport import Comm

        hc = Comm(self.comm)
        if self.rank == root:
            for r in range(self.size):
                block = xp.ascontiguousarray(global_array[self.slices_of(r)])
                if r == root:
                    interior[...] = block
                else:
                    hc.send(block, r, _IO_TAG)
        else:
            block = xp.empty(self.local_shape + comps, dtype=np.dtype(dtype))
            hc.recv(block, root, _IO_TAG)
            interior[...] = block
        return local

    def gather(self, local, root: int = 0, ghost=0):
        """Assemble every rank's interior into one global array on ``root``.

        Collective on ``comm``. ``local`` has shape ``local_shape + 2*ghost +
        components`` on every rank, the same dtype and components everywhere.
        Returns the array of shape ``global_shape + components`` on ``root`` (on
        ``root``'s array module) and None elsewhere.
        """
        root, g = self._io_arguments("gather", root, ghost)
        error, meta = None, None
        try:
            interior = self._local_view(local, g, "local")
            if local.dtype.hasobject:
                raise TypeError("local: object arrays cannot be sent")
            meta = (tuple(local.shape[self.ndim:]), local.dtype.str)
        except (TypeError, ValueError) as exc:
            error = exc
        fields = {} if error is not None else {"components": meta[0], "dtype": meta[1]}
        try:
            agree(self.comm, error, what="CartDecomposition.gather", **fields)
        except MismatchError as exc:
            raise ValueError(f"gather: dtype or component axes differ between ranks ({exc})") from None
        comps, dtype = meta
        xp = array_module(local)
        from hpcore.transport import Comm

        hc = Comm(self.comm)
        if self.rank != root:
            hc.send(xp.ascontiguousarray(interior), root, _IO_TAG)
            return None
        out = xp.empty(self.global_shape + comps, dtype=np.dtype(dtype))
        for r in range(self.size):
            if r == root:
                out[self.local_slices] = interior
            else:
                _, shape = self.extent_of(r)
                block = xp.empty(shape + comps, dtype=np.dtype(dtype))
                hc.recv(block, r, _IO_TAG)
                out[self.slices_of(r)] = block
        return out

    # ----------------------------------------------------------------- lifetime
    def free(self) -> None:
        """Free the duplicated communicator. Collective; safe to call twice."""
        from mpi4py import MPI

        self._freed = True
        if self.comm != MPI.COMM_NULL and not MPI.Is_finalized():
            self.comm.Free()

    def __enter__(self) -> "CartDecomposition":
        return self

    def __exit__(self, *exc_info) -> None:
        self.free()

    def __repr__(self) -> str:
        return (f"CartDecomposition(global_shape={self.global_shape}, dims={self.dims}, periodic={self.periodic}, "
                f"placement={self.placement!r}, rank={self.rank}, coords={self.coords}, "
                f"local_shape={self.local_shape})")


def _module(device: bool):
    if not device:
        return np
    from hpcore.arrays import cupy_or_none

    cp = cupy_or_none()
    if cp is None:
        raise RuntimeError("scatter: root's array is on a GPU but CuPy is not usable on this rank")
    return cp
