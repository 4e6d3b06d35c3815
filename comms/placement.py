"""Process grids and their placement on nodes: balanced grids, node blocks, halo traffic.

Pure geometry, no communication: every function here is local and deterministic,
so all ranks compute the same answer from the same arguments.

A *grid* is an integer array of shape ``dims`` whose entry at process coordinates
``c`` is the rank placed there. Row-major placement is ``arange(size).reshape(dims)``
(what ``MPI_Cart_create`` gives, since MPICH does not reorder). Node-block placement
gives the ranks of each node one compact block of the grid, so fewer halo bytes
cross nodes.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

__all__ = [
    "split_extent",
    "balanced_dims",
    "row_major_grid",
    "node_block_grid",
    "halo_directions",
    "halo_region_shape",
    "halo_bytes_by_node",
]


def split_extent(n: int, parts: int) -> list:
    """Balanced split of ``n`` cells into ``parts``: the first ``n % parts`` get one more.

    Returns the ``parts + 1`` boundaries, so part ``i`` is ``[b[i], b[i+1])``.
    """
    q, r = divmod(n, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + q + (1 if i < r else 0))
    return bounds


def _factorizations(n: int, k: int):
    """Every ordered tuple of ``k`` positive ints whose product is ``n``."""
    if k == 1:
        yield (n,)
        return
    for d in range(1, n + 1):
        if n % d == 0:
            for rest in _factorizations(n // d, k - 1):
                yield (d,) + rest


def _cut_volume(global_shape, periodic, dims) -> int:
    """Cells on the faces between processes, over the whole grid (edges/corners ignored)."""
    total = 0
    for i, d in enumerate(dims):
        cuts = d if (periodic[i] and d > 1) else d - 1
        total += cuts * math.prod(n for j, n in enumerate(global_shape) if j != i)
    return total


def balanced_dims(size: int, global_shape: Sequence[int], periodic: Sequence[bool], dims=None) -> tuple:
    """A process grid for ``size`` ranks over ``global_shape`` cells.

    Not collective. Entries of ``dims`` that are positive are kept; zero entries
    (or all, when ``dims`` is None) are chosen to minimize the cells on process
    faces, i.e. the halo traffic of a face stencil, with every process owning at
    least one cell per axis. Ties go to the most even grid, larger counts first
    (as ``MPI_Dims_create``). Raises ``ValueError`` when no such grid exists.
    """
    ndim = len(global_shape)
    fixed = [0] * ndim if dims is None else [int(d) for d in dims]
    free = [i for i, d in enumerate(fixed) if d == 0]
    fixed_prod = math.prod(d for d in fixed if d > 0)
    if size % fixed_prod:
        raise ValueError(f"dims={tuple(fixed)}: the fixed entries multiply to {fixed_prod}, "
                         f"which does not divide the {size} ranks")
    rest = size // fixed_prod
    if not free:
        if rest != 1:
            raise ValueError(f"dims={tuple(fixed)} multiply to {fixed_prod}, but comm has {size} ranks")
        candidates = [tuple(fixed)]
    else:
        candidates = []
        for f in _factorizations(rest, len(free)):
            d = list(fixed)
            for i, v in zip(free, f):
                d[i] = v
            candidates.append(tuple(d))
    fitting = [d for d in candidates if all(d[i] <= global_shape[i] for i in range(ndim))]
    if not fitting:
        raise ValueError(
            f"no process grid of {size} ranks fits global_shape={tuple(global_shape)} with at least one "
            f"cell per rank and axis (dims={None if dims is None else tuple(fixed)}); use fewer ranks"
        )
    return min(fitting, key=lambda d: (_cut_volume(global_shape, periodic, d), max(d) - min(d),
                                       tuple(-x for x in d)))


def row_major_grid(dims: Sequence[int]) -> np.ndarray:
    """Rank ``r`` at the ``r``-th grid position in C order (MPI's Cartesian numbering)."""
    return np.arange(math.prod(dims), dtype=np.int64).reshape(tuple(dims))


def _block_shapes(k: int, dims: Sequence[int]):
    """Block shapes ``b`` with ``prod(b) == k`` and ``b[i]`` dividing ``dims[i]``."""
    for b in _factorizations(k, len(dims)):
        if all(d % x == 0 for d, x in zip(dims, b)):
            yield b


def _node_cut(global_shape, periodic, dims, block) -> int:
    """Face cells between node blocks of shape ``block`` (in processes) on the grid ``dims``."""
    total = 0
    for i in range(len(dims)):
        nb = dims[i] // block[i]
        cuts = nb if (periodic[i] and nb > 1) else nb - 1
        total += cuts * math.prod(n for j, n in enumerate(global_shape) if j != i)
    return total


def _bisect(cells: np.ndarray, sizes: list, weights: np.ndarray, out: list) -> None:
    """Split grid ``cells`` (m x ndim coordinates) into compact groups of ``sizes``, in order."""
    if len(sizes) == 1:
        out.append(cells)
        return
    half = len(sizes) // 2
    first = sum(sizes[:half])
    spread = (cells.max(axis=0) - cells.min(axis=0) + 1) * weights
    order_axes = sorted(range(cells.shape[1]), key=lambda a: (-spread[a], a))
    # np.lexsort sorts by the last key first: the widest axis is the primary key.
    order = np.lexsort(tuple(cells[:, a] for a in reversed(order_axes)))
    ordered = cells[order]
    _bisect(ordered[:first], sizes[:half], weights, out)
    _bisect(ordered[first:], sizes[half:], weights, out)


def node_block_grid(dims: Sequence[int], nodes: Sequence[Sequence[int]], global_shape: Sequence[int],
                    periodic: Sequence[bool]) -> np.ndarray:
    """Place the ranks of each node on one compact block of the process grid.

    Not collective. ``nodes`` lists the ranks of each node (as
    ``hpcore.topology.Topology.nodes``). When every node has ``k`` ranks and a block
    shape with ``k`` processes tiles ``dims``, the tiling that cuts the fewest face
    cells between nodes is used (nodes in row-major order over the blocks, ranks
    row-major inside a block). Otherwise recursive bisection of the grid along its
    widest axis (in cells) gives each node a near-box region.
    """
    dims = tuple(int(d) for d in dims)
    size = math.prod(dims)
    sizes = [len(n) for n in nodes]
    if sum(sizes) != size:
        raise ValueError(f"nodes hold {sum(sizes)} ranks but the grid {dims} has {size} positions")
    grid = np.empty(dims, dtype=np.int64)
    if len(set(sizes)) == 1:
        k = sizes[0]
        blocks = list(_block_shapes(k, dims))
        if blocks:
            block = min(blocks, key=lambda b: (_node_cut(global_shape, periodic, dims, b), tuple(-x for x in b)))
            node_grid = tuple(d // b for d, b in zip(dims, block))
            for n, ranks in enumerate(nodes):
                origin = np.array(np.unravel_index(n, node_grid)) * np.array(block)
                for local, r in enumerate(ranks):
                    pos = origin + np.array(np.unravel_index(local, block))
                    grid[tuple(pos)] = r
            return grid
    cells = np.array(list(itertools.product(*(range(d) for d in dims))), dtype=np.int64).reshape(size, len(dims))
    weights = np.array([g / d for g, d in zip(global_shape, dims)], dtype=np.float64)
    groups: list = []
    _bisect(cells, sizes, weights, groups)
    for ranks, group in zip(nodes, groups):
        for r, pos in zip(ranks, group):
            grid[tuple(pos)] = r
    return grid


def halo_directions(ghost: Sequence[int], stencil: str) -> list:
    """Neighbour offsets (tuples of -1/0/1, not all 0) a stencil exchanges with.

    ``"box"``: faces, edges and corners; ``"star"``: faces only. Axes with ghost
    width 0 exchange nothing.
    """
    out = []
    for off in itertools.product((-1, 0, 1), repeat=len(ghost)):
        nz = [i for i, o in enumerate(off) if o]
        if not nz or any(ghost[i] == 0 for i in nz):
            continue
        if stencil == "star" and len(nz) != 1:
            continue
        out.append(off)
    return out


def halo_region_shape(offset: Sequence[int], extents: Sequence[int], ghost: Sequence[int]) -> tuple:
    """Cells of the halo region a process with interior ``extents`` sends towards ``offset``."""
    return tuple(g if o else n for o, n, g in zip(offset, extents, ghost))


def halo_bytes_by_node(grid: np.ndarray, global_shape, periodic, ghost, stencil: str, itemsize: int,
                       node_of: Sequence[int]) -> dict:
    """Halo bytes per exchange, split into those that stay on a node and those that cross.

    Not collective. ``grid`` places ranks on the process grid, ``node_of[r]`` is rank
    ``r``'s node. Returns ``{"intra": bytes, "inter": bytes, "total": bytes}`` summed
    over every message of one exchange of one field of ``itemsize`` bytes per cell.
    """
    dims = grid.shape
    bounds = [split_extent(n, d) for n, d in zip(global_shape, dims)]
    directions = halo_directions(ghost, stencil)
    intra = inter = 0
    for coords in itertools.product(*(range(d) for d in dims)):
        src = int(grid[coords])
        extents = [bounds[i][c + 1] - bounds[i][c] for i, c in enumerate(coords)]
        for off in directions:
            nc = []
            for i, (c, o) in enumerate(zip(coords, off)):
                x = c + o
                if periodic[i]:
                    x %= dims[i]
                elif not 0 <= x < dims[i]:
                    break
                nc.append(x)
            else:
                dst = int(grid[tuple(nc)])
                nbytes = math.prod(halo_region_shape(off, extents, ghost)) * itemsize
                if node_of[src] == node_of[dst]:
                    intra += nbytes
                else:
                    inter += nbytes
    return {"intra": intra, "inter": inter, "total": intra + inter}
