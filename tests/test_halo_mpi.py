"""comms.HaloExchange against a global reference: every ghost cell the stencil needs, and no other.

The global array is built on every rank, scattered, ghosts set to a sentinel,
exchanged; each ghost cell must then hold the global value (wrapped on periodic
axes) when the stencil needs it, and still the sentinel otherwise (past a
non-periodic edge, or an edge/corner cell of a star stencil).
"""

import numpy as np
import pytest
from mpi4py import MPI

from comms import CartDecomposition, HaloExchange, HaloMismatchError

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(240, method="thread")]

SENTINEL = 77
DTYPES = [np.float64, np.float32, np.int16, np.uint8, np.complex128, np.int64]
VARIANTS = {  # name -> HaloExchange keyword arguments
    "datatype": dict(method="datatype"),
    "pack": dict(method="pack"),
    "pack-contiguous": dict(method="pack", contiguous_messages=True),
    "auto": dict(method="auto"),
}


def _world():
    return MPI.COMM_WORLD


def _global(shape, comps, dtype, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 60, size=tuple(shape) + tuple(comps))
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.integers(1, 60, size=a.shape)
    return a.astype(dtype)


def _local_with_sentinel(d, glob, ghost):
    full = tuple(n + 2 * g for n, g in zip(d.local_shape, ghost)) + glob.shape[d.ndim:]
    loc = np.full(full, SENTINEL, dtype=glob.dtype)
    loc[tuple(slice(g, g + n) for g, n in zip(ghost, d.local_shape))] = glob[d.local_slices]
    return loc


def _expected(d, glob, ghost, stencil):
    """What the local array must hold after the exchange."""
    idx, valid, ghostaxis = [], [], []
    for i in range(d.ndim):
        n, g, start = d.local_shape[i], ghost[i], d.local_start[i]
        gi = np.arange(n + 2 * g) - g + start
        ok = np.ones(gi.shape, bool) if d.periodic[i] else (gi >= 0) & (gi < d.global_shape[i])
        idx.append(gi % d.global_shape[i])
        valid.append(ok)
        ghostaxis.append((np.arange(n + 2 * g) < g) | (np.arange(n + 2 * g) >= g + n))
    grids = np.ix_(*idx)
    exp = glob[grids]
    valid_all = np.ones(exp.shape[: d.ndim], bool)
    nghost = np.zeros(exp.shape[: d.ndim], int)
    for i in range(d.ndim):
        shape = [1] * d.ndim
        shape[i] = -1
        valid_all &= valid[i].reshape(shape)
        nghost = nghost + ghostaxis[i].reshape(shape)
    need = valid_all & ((nghost <= 1) if stencil == "star" else True)
    out = np.where(need.reshape(need.shape + (1,) * (exp.ndim - d.ndim)), exp, np.array(SENTINEL, glob.dtype))
    return out


def _config(seed, size):
    """A random case every rank draws identically."""
    rng = np.random.default_rng(seed)
    ndim = int(rng.integers(1, 5))
    shape = [int(x) for x in rng.integers(3, 9 if ndim > 2 else 14, ndim)]
    shape[0] = max(shape[0], size)  # room for every rank on at least one axis
    periodic = [bool(x) for x in rng.integers(0, 2, ndim)]
    stencil = ["box", "star"][int(rng.integers(0, 2))]
    nfields = int(rng.integers(1, 4))
    fields = []
    for _ in range(nfields):
        comps = tuple(int(c) for c in rng.integers(1, 4, int(rng.integers(0, 2))))
        fields.append((DTYPES[int(rng.integers(0, len(DTYPES)))], comps))
    return ndim, tuple(shape), periodic, stencil, fields, rng


def _ghost_for(d, rng):
    smallest = d.min_local_extent()
    return tuple(int(rng.integers(1, min(3, smallest[i]) + 1)) if (d.dims[i] > 1 or d.periodic[i]) else
                 int(rng.integers(0, 3)) for i in range(d.ndim))


def _run_case(comm, seed, variant):
    ndim, shape, periodic, stencil, fields, rng = _config(seed, comm.size)
    with CartDecomposition(comm, shape, periodic=periodic) as d:
        ghost = _ghost_for(d, rng)
        with HaloExchange(d, ghost=ghost, stencil=stencil, **VARIANTS[variant]) as h:
            globs = [_global(shape, comps, dt, seed * 10 + k) for k, (dt, comps) in enumerate(fields)]
            locs = [_local_with_sentinel(d, g, ghost) for g in globs]
            for _ in range(2):  # twice: the second call reuses the plan
                h.exchange(*locs)
                for k, (g, loc) in enumerate(zip(globs, locs)):
                    exp = _expected(d, g, ghost, stencil)
                    if not np.array_equal(loc, exp):
                        bad = np.argwhere(loc != exp)
                        raise AssertionError(
                            f"seed {seed} {variant}: field {k} {g.dtype} shape={shape} periodic={periodic} "
                            f"dims={d.dims} ghost={ghost} {stencil}: {len(bad)} wrong cells, first {bad[:3].tolist()}")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("seed", range(24))
def test_random_cases_match_global_reference(seed, variant):
    _run_case(_world(), seed, variant)


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("stencil", ["box", "star"])
@pytest.mark.parametrize("ghost", [1, 2, 3])
def test_every_dimension_ghost_and_periodicity(ndim, periodic, stencil, ghost):
    comm = _world()
    shape = {1: (4 * comm.size + 3,), 2: (13, 11), 3: (9, 10, 7), 4: (7, 6, 6, 5)}[ndim]
    with CartDecomposition(comm, shape, periodic=periodic) as d:
        if any(ghost > m for m, n in zip(d.min_local_extent(), d.dims) if n > 1 or periodic):
            pytest.skip(f"ghost {ghost} wider than an interior of {d.min_local_extent()}")
        g = (ghost,) * ndim
        with HaloExchange(d, ghost=ghost, stencil=stencil) as h:
            glob = _global(shape, (2,), np.float64, ndim * 100 + ghost)
            glob2 = _global(shape, (), np.int32, ndim * 100 + ghost + 1)
            a, b = _local_with_sentinel(d, glob, g), _local_with_sentinel(d, glob2, g)
            h.exchange(a, b)
            np.testing.assert_array_equal(a, _expected(d, glob, g, stencil))
            np.testing.assert_array_equal(b, _expected(d, glob2, g, stencil))


@pytest.mark.parametrize("variant", ["datatype", "pack", "pack-contiguous"])
def test_start_overlaps_and_test_completes(variant):
    comm = _world()
    with CartDecomposition(comm, (20, 18, 16), periodic=True) as d:
        with HaloExchange(d, ghost=1, **VARIANTS[variant]) as h:
            glob = _global((20, 18, 16), (), np.float64, 3)
            loc = _local_with_sentinel(d, glob, (1, 1, 1))
            handle = h.start(loc)
            interior = loc[2:-2, 2:-2, 2:-2].sum()  # work on cells the exchange does not touch
            spins = 0
            while not handle.test():
                spins += 1
            handle.wait()  # idempotent once done
            assert interior == glob[d.local_slices][1:-1, 1:-1, 1:-1].sum()
            np.testing.assert_array_equal(loc, _expected(d, glob, (1, 1, 1), "box"))
            with pytest.raises(ValueError, match="already in flight"):
                h2 = h.start(loc)
                h.start(loc)
            h2.wait()


def _neighbours(d, h):
    return {src for _, src, _ in h.recvs}


@pytest.mark.parametrize("variant", ["datatype", "pack", "pack-contiguous"])
def test_bad_field_on_one_rank_is_named_by_its_neighbours(variant):
    comm = _world()
    with CartDecomposition(comm, (12, 10), periodic=(True, False)) as d:
        with HaloExchange(d, ghost=1, **VARIANTS[variant]) as h:
            good = np.zeros(h.full_shape)
            bad_rank = 1
            field = np.zeros((3, 3)) if comm.rank == bad_rank else good
            mine = _neighbours(d, h)
            if comm.rank == bad_rank:
                with pytest.raises(ValueError, match=f"rank {bad_rank}/.*expected shape"):
                    h.exchange(field)
            elif bad_rank in mine:
                with pytest.raises(HaloMismatchError, match=f"neighbour rank {bad_rank}.*invalid fields"):
                    h.exchange(field)
            else:
                h.exchange(field)
            # Everyone recovers: the next exchange is correct.
            glob = _global((12, 10), (), np.float64, 9)
            loc = _local_with_sentinel(d, glob, (1, 1))
            h.exchange(loc)
            np.testing.assert_array_equal(loc, _expected(d, glob, (1, 1), "box"))


@pytest.mark.parametrize("variant", ["datatype", "pack"])
@pytest.mark.parametrize("kind", ["dtype", "components", "count"])
def test_fields_that_differ_between_ranks_raise_on_both_sides(variant, kind):
    comm = _world()
    with CartDecomposition(comm, (12, 10), periodic=True) as d:
        with HaloExchange(d, ghost=1, **VARIANTS[variant]) as h:
            odd = comm.rank == 0
            if kind == "dtype":
                fields = [np.zeros(h.full_shape, np.int64 if odd else np.float64)]
            elif kind == "components":
                fields = [np.zeros(h.full_shape + ((3,) if odd else (2,)))]
            else:
                fields = [np.zeros(h.full_shape) for _ in range(2 if odd else 1)]
            involved = comm.rank == 0 or 0 in _neighbours(d, h)
            if involved:
                with pytest.raises(HaloMismatchError, match="differ|more bytes"):
                    h.exchange(*fields)
            else:
                h.exchange(*fields)
            glob = _global((12, 10), (), np.float64, 4)
            loc = _local_with_sentinel(d, glob, (1, 1))
            h.exchange(loc)
            np.testing.assert_array_equal(loc, _expected(d, glob, (1, 1), "box"))


def test_construction_errors_on_every_rank():
    comm = _world()
    with CartDecomposition(comm, (4 * comm.size, 3), periodic=True) as d:
        with pytest.raises(ValueError, match="wider than the smallest interior"):
            HaloExchange(d, ghost=5)
        with pytest.raises(ValueError, match="differ between ranks"):
            HaloExchange(d, ghost=1 if comm.rank else 2)
        with pytest.raises(ValueError, match="stencil"):
            HaloExchange(d, stencil="cross")
        with pytest.raises(ValueError, match="ghost"):
            HaloExchange(d, ghost=-1)
        with pytest.raises(TypeError, match="decomposition"):
            HaloExchange("grid")


def test_local_field_errors_every_rank_alike():
    """Errors every rank makes alike (all ranks see their own ValueError/TypeError, no hang)."""
    comm = _world()
    with CartDecomposition(comm, (10, 9), periodic=True) as d:
        with HaloExchange(d, ghost=1) as h:
            a = np.zeros(h.full_shape)
            with pytest.raises(ValueError, match="at least one field"):
                h.exchange()
            with pytest.raises(ValueError, match="C-contiguous"):
                h.exchange(np.zeros(h.full_shape[::-1]).T)
            with pytest.raises(ValueError, match="same array"):
                h.exchange(a, a)
            with pytest.raises(TypeError, match="NumPy or CuPy"):
                h.exchange([[0.0]])
            with pytest.raises(TypeError, match="cannot be exchanged"):
                h.exchange(np.empty(h.full_shape, dtype=object))
            ro = np.zeros(h.full_shape)
            ro.flags.writeable = False
            with pytest.raises(ValueError, match="read-only"):
                h.exchange(ro)
            h.exchange(a)  # still fine


def test_uneven_grid_on_odd_rank_counts():
    comm = _world()
    sub = comm.Split(0 if comm.rank < 3 else MPI.UNDEFINED, comm.rank)
    if sub == MPI.COMM_NULL:
        return
    try:
        for shape, periodic in [((11, 7, 5), (True, False, True)), ((17,), True), ((5, 13), False)]:
            with CartDecomposition(sub, shape, periodic=periodic) as d:
                with HaloExchange(d, ghost=1) as h:
                    glob = _global(shape, (), np.float64, 2)
                    loc = _local_with_sentinel(d, glob, h.ghost)
                    h.exchange(loc)
                    np.testing.assert_array_equal(loc, _expected(d, glob, h.ghost, "box"))
    finally:
        sub.Free()
