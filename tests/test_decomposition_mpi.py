"""comms.CartDecomposition over MPI: tiling, neighbours, placement, scatter/gather, errors on every rank."""

import math

import numpy as np
import pytest
from mpi4py import MPI

from comms import CartDecomposition

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(120, method="thread")]


def _world():
    return MPI.COMM_WORLD


@pytest.mark.parametrize("shape, periodic", [((13,), False), ((7, 9), (True, False)), ((5, 6, 7), True),
                                             ((3, 4, 5, 6), False)])
def test_local_blocks_tile_the_global_grid(shape, periodic):
    comm = _world()
    with CartDecomposition(comm, shape, periodic=periodic) as d:
        assert math.prod(d.dims) == comm.size
        owner = np.full(shape, -1)
        for r in range(comm.size):
            assert np.all(owner[d.slices_of(r)] == -1)
            owner[d.slices_of(r)] = r
        assert owner.min() == 0
        assert d.local_slices == d.slices_of(comm.rank)
        assert d.local_shape == tuple(s.stop - s.start for s in d.local_slices)
        # every rank agrees on the geometry
        assert comm.allgather(d.local_shape)[comm.rank] == d.local_shape
        assert len(set(comm.allgather((d.dims, d.grid.tobytes())))) == 1
        ext = np.array(comm.allgather(d.local_shape))
        assert np.all(ext.max(axis=0) - ext.min(axis=0) <= 1)


def test_neighbors_match_coordinates():
    comm = _world()
    with CartDecomposition(comm, (8, 9, 10), periodic=(True, False, True)) as d:
        for off in [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (1, 1, -1), (0, 0, 2)]:
            nb = d.neighbor(off)
            target = [c + o for c, o in zip(d.coords, off)]
            if not 0 <= target[1] < d.dims[1]:
                assert nb is None
                continue
            target[0] %= d.dims[0]
            target[2] %= d.dims[2]
            assert d.coords_of(nb) == tuple(target)
            # symmetric: my neighbour's neighbour in the opposite direction is me
            assert d.rank_of([c - o for c, o in zip(d.coords_of(nb), off)]) == comm.rank


def test_cart_create_agrees_for_row_major():
    comm = _world()
    with CartDecomposition(comm, (6, 10), periodic=True, placement="row-major") as d:
        cart = comm.Create_cart(d.dims, periods=[True, True], reorder=False)
        try:
            assert tuple(cart.Get_coords(comm.rank)) == d.coords
            src, dst = cart.Shift(1, 1)
            assert d.neighbor((0, 1)) == dst and d.neighbor((0, -1)) == src
        finally:
            cart.Free()


def test_virtual_nodes_get_compact_blocks():
    comm = _world()
    if comm.size != 4:
        pytest.skip("needs 4 ranks")
    # 4 ranks, 2 per node, grid 2x2: row-major puts a node on a row already; make the
    # rows long so the face between nodes is large and blocks must be columns instead.
    with CartDecomposition(comm, (64, 8), dims=(2, 2), ranks_per_node=2) as d:
        assert d.placement == "node-blocks"
        mates = [r for r in range(4) if d.node_of[r] == d.node_of[comm.rank]]
        cs = [d.coords_of(r) for r in mates]
        assert cs[0][0] == cs[1][0] or cs[0][1] == cs[1][1]  # a node is a row or a column of the grid
        report = d.halo_bytes(ghost=1, stencil="star")
        assert report["node-blocks"]["inter"] <= report["row-major"]["inter"]
        assert report["node-blocks"]["total"] == report["row-major"]["total"]
    with CartDecomposition(comm, (64, 64), dims=(4, 1), ranks_per_node=2) as d2:
        rep = d2.halo_bytes()
        assert set(rep) == {"node-blocks", "row-major"}


@pytest.mark.parametrize("ghost", [0, 2])
@pytest.mark.parametrize("comps", [(), (3,)])
def test_scatter_gather_round_trip(ghost, comps):
    comm = _world()
    with CartDecomposition(comm, (11, 7, 5), periodic=False) as d:
        rng = np.random.default_rng(5)
        g = rng.standard_normal((11, 7, 5) + comps) if comm.rank == 0 else None
        loc = d.scatter(g, root=0, ghost=ghost)
        assert loc.shape == tuple(n + 2 * ghost for n in d.local_shape) + comps
        ref = np.random.default_rng(5).standard_normal((11, 7, 5) + comps)
        inner = loc[tuple(slice(ghost, ghost + n) for n in d.local_shape)]
        np.testing.assert_array_equal(inner, ref[d.local_slices])
        root = comm.size - 1
        back = d.gather(loc, root=root, ghost=ghost)
        if comm.rank == root:
            np.testing.assert_array_equal(back, ref)
        else:
            assert back is None


def test_bad_arguments_fail_on_every_rank():
    comm = _world()
    with pytest.raises(ValueError, match="no process grid"):
        CartDecomposition(comm, (1,) * 1)
    with pytest.raises(ValueError, match="global_shape"):
        CartDecomposition(comm, (8, 0))
    with pytest.raises(TypeError, match="periodic"):
        CartDecomposition(comm, (8, 8), periodic="yes")
    bad = (8, 8) if comm.rank else (8, -3)
    with pytest.raises(ValueError, match="rank 0"):
        CartDecomposition(comm, bad)
    differ = (8, 8) if comm.rank else (8, 9)
    with pytest.raises(ValueError, match="differ between ranks"):
        CartDecomposition(comm, differ)
    with pytest.raises(ValueError, match="placement"):
        CartDecomposition(comm, (8, 8), placement="random")


def test_gather_with_wrong_local_shape_fails_everywhere():
    comm = _world()
    with CartDecomposition(comm, (9, 9)) as d:
        loc = np.zeros(d.local_shape)
        if comm.rank == 1:
            loc = np.zeros((1, 1))
        with pytest.raises(ValueError, match="rank 1"):
            d.gather(loc)
        g = np.zeros((9, 8)) if comm.rank == 0 else None
        with pytest.raises(ValueError, match="global_array"):
            d.scatter(g)
        # still usable after the errors
        assert d.gather(np.ones(d.local_shape), root=0) is None or comm.rank == 0
