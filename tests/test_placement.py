"""comms.placement: process grids, node-block placement and halo byte accounting (serial, pure geometry)."""

import itertools
import math

import numpy as np
import pytest

from comms.placement import (
    balanced_dims,
    halo_bytes_by_node,
    halo_directions,
    node_block_grid,
    row_major_grid,
    split_extent,
)


def test_split_extent_balanced_and_complete():
    for n in range(1, 40):
        for p in range(1, n + 1):
            b = split_extent(n, p)
            sizes = np.diff(b)
            assert b[0] == 0 and b[-1] == n and len(sizes) == p
            assert sizes.max() - sizes.min() <= 1 and sizes.min() >= 1
            assert list(sizes) == sorted(sizes, reverse=True)  # larger parts first


def _faces(global_shape, periodic, dims):
    """Face cells between processes by brute force over the cell grid."""
    total = 0
    for i, d in enumerate(dims):
        b = split_extent(global_shape[i], d)
        owner = np.searchsorted(b, np.arange(global_shape[i]), side="right") - 1
        nxt = np.roll(owner, -1)
        cut = owner != nxt
        if not periodic[i]:
            cut[-1] = False
        total += int(cut.sum()) * math.prod(n for j, n in enumerate(global_shape) if j != i)
    return total


@pytest.mark.parametrize("size", [1, 2, 3, 4, 6, 8, 12, 16, 17, 24])
def test_balanced_dims_minimizes_face_cells(size, rng):
    for _ in range(10):
        ndim = int(rng.integers(1, 4))
        shape = tuple(int(x) for x in rng.integers(size, 4 * size + 3, ndim))
        periodic = tuple(bool(x) for x in rng.integers(0, 2, ndim))
        dims = balanced_dims(size, shape, periodic)
        assert math.prod(dims) == size
        best = min(_faces(shape, periodic, d) for d in itertools.product(range(1, size + 1), repeat=ndim)
                   if math.prod(d) == size)
        assert _faces(shape, periodic, dims) == best


def test_balanced_dims_examples_and_fixed_entries():
    assert balanced_dims(4, (100, 10), (False, False)) == (4, 1)
    assert balanced_dims(4, (64, 64), (False, False)) == (2, 2)
    assert balanced_dims(8, (32, 32, 32), (True,) * 3) == (2, 2, 2)
    assert balanced_dims(6, (30, 30, 30), (False,) * 3, dims=(0, 3, 0)) in ((2, 3, 1), (1, 3, 2))
    assert balanced_dims(6, (30, 30), (False,) * 2, dims=(2, 3)) == (2, 3)


@pytest.mark.parametrize("size, shape, dims, match", [
    (4, (3,), None, "no process grid"),
    (7, (3, 2), None, "no process grid"),
    (6, (30, 30), (4, 0), "does not divide"),
    (6, (30, 30), (2, 2), "multiply to 4"),
])
def test_balanced_dims_errors(size, shape, dims, match):
    with pytest.raises(ValueError, match=match):
        balanced_dims(size, shape, (False,) * len(shape), dims)


def _nodes(sizes):
    out, r = [], 0
    for k in sizes:
        out.append(list(range(r, r + k)))
        r += k
    return out


def _check_permutation(grid, size):
    assert sorted(grid.ravel().tolist()) == list(range(size))


@pytest.mark.parametrize("dims, k", [((4, 4), 4), ((4, 4, 4), 8), ((8, 2), 4), ((6, 4), 6), ((3, 5, 2), 5),
                                     ((4, 6), 4)])
def test_node_blocks_are_boxes_when_they_tile(dims, k):
    size = math.prod(dims)
    nodes = _nodes([k] * (size // k))
    shape = tuple(16 * d for d in dims)
    grid = node_block_grid(dims, nodes, shape, (False,) * len(dims))
    _check_permutation(grid, size)
    for ranks in nodes:
        pos = np.array([np.argwhere(grid == r)[0] for r in ranks])
        span = pos.max(axis=0) - pos.min(axis=0) + 1
        assert math.prod(span) == k, f"node {ranks} covers a {span} box"


@pytest.mark.parametrize("dims, sizes", [((4, 4), [5, 5, 6]), ((3, 3), [4, 5]), ((2, 3, 4), [7, 7, 7, 3]),
                                         ((5, 5), [3] * 8 + [1])])
def test_node_blocks_uneven_nodes_by_bisection(dims, sizes):
    size = math.prod(dims)
    nodes = _nodes(sizes)
    grid = node_block_grid(dims, nodes, tuple(10 * d for d in dims), (False,) * len(dims))
    _check_permutation(grid, size)


def _node_of(nodes):
    out = {}
    for n, ranks in enumerate(nodes):
        for r in ranks:
            out[r] = n
    return [out[r] for r in range(len(out))]


@pytest.mark.parametrize("dims, k, periodic, strict", [
    ((4, 4), 4, False, True), ((4, 4, 4), 8, False, True), ((8, 8), 16, False, True), ((6, 6), 4, True, True),
    ((4, 4, 4), 4, False, True),
    ((4, 4, 4), 8, True, False),  # row-major nodes are already 1x2x4 boxes, as good as 2x2x2 here
])
@pytest.mark.parametrize("stencil", ["star", "box"])
def test_node_blocks_cut_inter_node_bytes(dims, k, periodic, strict, stencil):
    size = math.prod(dims)
    nodes = _nodes([k] * (size // k) + ([size % k] if size % k else []))
    shape = tuple(12 * d for d in dims)
    per = (periodic,) * len(dims)
    node_of = _node_of(nodes)
    blocks = halo_bytes_by_node(node_block_grid(dims, nodes, shape, per), shape, per, (1,) * len(dims), stencil, 8,
                                node_of)
    rows = halo_bytes_by_node(row_major_grid(dims), shape, per, (1,) * len(dims), stencil, 8, node_of)
    assert blocks["total"] == rows["total"]
    assert blocks["inter"] < rows["inter"] if strict else blocks["inter"] <= rows["inter"]


def test_halo_bytes_by_brute_force(rng):
    dims, shape, ghost = (2, 3), (7, 10), (2, 1)
    grid = row_major_grid(dims)
    node_of = [0, 0, 0, 1, 1, 1]
    got = halo_bytes_by_node(grid, shape, (True, False), ghost, "box", 4, node_of)
    # Brute force: each rank's ghost cells that a neighbour fills, counted per source rank.
    b = [split_extent(n, d) for n, d in zip(shape, dims)]
    owner = np.empty(shape, dtype=int)
    for c in itertools.product(range(2), range(3)):
        owner[b[0][c[0]]:b[0][c[0] + 1], b[1][c[1]]:b[1][c[1] + 1]] = grid[c]
    intra = inter = 0
    for c in itertools.product(range(2), range(3)):
        me = grid[c]
        lo = [b[0][c[0]] - ghost[0], b[1][c[1]] - ghost[1]]
        hi = [b[0][c[0] + 1] + ghost[0], b[1][c[1] + 1] + ghost[1]]
        for x in range(lo[0], hi[0]):
            for y in range(lo[1], hi[1]):
                inside = b[0][c[0]] <= x < b[0][c[0] + 1] and b[1][c[1]] <= y < b[1][c[1] + 1]
                if inside or not 0 <= y < shape[1]:
                    continue
                src = owner[x % shape[0], y]
                if node_of[src] == node_of[me]:
                    intra += 4
                else:
                    inter += 4
    assert got == {"intra": intra, "inter": inter, "total": intra + inter}


def test_halo_directions_counts():
    assert len(halo_directions((1, 1, 1), "box")) == 26
    assert len(halo_directions((1, 1, 1), "star")) == 6
    assert len(halo_directions((2, 0, 1), "box")) == 8
    assert len(halo_directions((1,) * 4, "box")) == 80
