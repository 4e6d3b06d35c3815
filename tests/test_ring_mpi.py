"""Ring collectives against MPI's own: every dtype and op, odd sizes, non-blocking forms, buckets, errors."""

import time
import zlib

import numpy as np
import pytest
from mpi4py import MPI
from mpi_checks import raises_everywhere as _raises_everywhere
from mpi_checks import verdict as _verdict

import hpcore
from comms.ring import (
    RingMismatchError,
    chunk_elements,
    ring_allgather,
    ring_allgather_start,
    ring_allreduce,
    ring_allreduce_bucket,
    ring_allreduce_bucket_start,
    ring_allreduce_start,
    ring_blocks,
    ring_reduce_scatter,
    ring_reduce_scatter_start,
)

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(180)]

DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float32", "float64", "complex64", "complex128"]
OPS = {"sum": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}
SIZES = [0, 1, 2, 3, 5, 7, 13, 101, 1009]  # 0, 1 and primes: rarely a multiple of the rank count


def _world():
    return MPI.COMM_WORLD






def _same_everywhere(comm, a) -> bool:
    digest = zlib.crc32(np.ascontiguousarray(a).tobytes())
    return len(set(comm.allgather((digest, a.shape)))) == 1


def _data(seed, rank, dtype, op, count):
    """Per-rank data whose reduction over <= 8 ranks neither overflows nor under/overflows."""
    rng = np.random.default_rng([seed, rank])
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        lo = 0 if dt.kind == "u" else (-1 if op == "prod" else -15)
        hi = 3 if op == "prod" else 16
        return rng.integers(lo, hi, count).astype(dt)
    if dt.kind == "f":
        return (rng.uniform(0.5, 2.0, count) if op == "prod" else rng.standard_normal(count)).astype(dt)
    if op == "prod":
        return (rng.uniform(0.7, 1.4, count) * np.exp(1j * rng.uniform(0, 2 * np.pi, count))).astype(dt)
    return (rng.standard_normal(count) + 1j * rng.standard_normal(count)).astype(dt)


def _close(got, ref, dtype, op, size, scale) -> bool:
    """Exact for integers and MAX/MIN; to rounding (a few ulps per rank) for float sums/products."""
    if np.dtype(dtype).kind in "iu" or op in ("max", "min"):
        return got.dtype == ref.dtype and np.array_equal(got, ref)
    eps = np.finfo(np.dtype(dtype)).eps
    return got.dtype == ref.dtype and bool(np.all(np.abs(got - ref) <= 4 * size * eps * scale))


def _scale(comm, x, opname):
    """Sum (or product) of |x| over the ranks: the size that rounding errors scale with."""
    scale = np.empty(x.size)
    comm.Allreduce(np.abs(x).astype(np.float64), scale, op=MPI.PROD if opname == "prod" else MPI.SUM)
    return scale


def _cases():
    for d in DTYPES:
        for o in OPS:
            if d.startswith("complex") and o in ("max", "min"):
                continue
            yield d, o


@pytest.mark.parametrize("dtype,opname", list(_cases()))
def test_allreduce_matches_allreduce_of_mpi(dtype, opname, rng):
    comm = _world()
    rank, size = comm.Get_rank(), comm.Get_size()
    op = OPS[opname]
    seed = int(rng.integers(1 << 30))
    sizes = SIZES + [size - 1, size + 1, int(rng.integers(2000, 5000))]
    bad = []
    for count in sizes:
        x = _data(seed + count, rank, dtype, opname, count)
        keep = x.copy()
        ref = np.empty_like(x)
        comm.Allreduce(x, ref, op=op)
        scale = _scale(comm, x, opname)
        for chunk in (None, 3 * x.itemsize, 64):  # default (one chunk per block here), tiny, odd
            got = ring_allreduce(comm, x, op, chunk_nbytes=chunk)
            if not _close(got, ref, dtype, opname, size, scale):
                bad.append(f"count={count} chunk={chunk}: max |diff| {np.max(np.abs(got - ref)) if count else 0}")
            if not _same_everywhere(comm, got):
                bad.append(f"count={count} chunk={chunk}: result differs between ranks")
        if not np.array_equal(x, keep):
            bad.append(f"count={count}: input modified")
    _verdict(comm, not bad, "; ".join(bad))


@pytest.mark.parametrize("dtype,opname", [(d, "sum") for d in DTYPES] + [("float64", o) for o in OPS]
                         + [("int32", o) for o in OPS])
def test_reduce_scatter_matches_reduce_scatter_of_mpi(dtype, opname, rng):
    comm = _world()
    rank, size = comm.Get_rank(), comm.Get_size()
    op = OPS[opname]
    seed = int(rng.integers(1 << 30))
    bad = []
    for count in SIZES + [size, 4 * size + 3]:
        x = _data(seed + count, rank, dtype, opname, count)
        counts, displs = ring_blocks(count, size)
        assert sum(counts) == count and max(counts) - min(counts) <= 1
        ref = np.empty(counts[rank], dtype=x.dtype)
        comm.Reduce_scatter(x, ref, recvcounts=counts, op=op)
        scale = _scale(comm, x, opname)[displs[rank]:displs[rank] + counts[rank]]
        for chunk in (None, 2 * x.itemsize):
            got = ring_reduce_scatter(comm, x, op, chunk_nbytes=chunk)
            if got.shape != (counts[rank],) or not _close(got, ref, dtype, opname, size, scale):
                bad.append(f"count={count} chunk={chunk}: got {got[:4]} want {ref[:4]}")
    _verdict(comm, not bad, "; ".join(bad))


@pytest.mark.parametrize("dtype", ["int8", "uint16", "float32", "float64", "complex128"])
def test_allgather_matches_allgather_of_mpi(dtype, rng):
    comm = _world()
    rank, size = comm.Get_rank(), comm.Get_size()
    seed = int(rng.integers(1 << 30))
    bad = []
    for count in SIZES:
        x = _data(seed + count, rank, dtype, "sum", count)
        ref = np.empty(size * count, dtype=x.dtype)
        comm.Allgather(x, ref)
        for chunk in (None, 5):
            got = ring_allgather(comm, x, chunk_nbytes=chunk)
            if got.dtype != x.dtype or not np.array_equal(got, ref):
                bad.append(f"count={count} chunk={chunk}")
    _verdict(comm, not bad, "; ".join(bad))


def test_allgather_of_varying_rows_matches_allgatherv():
    comm = _world()
    rank, size = comm.Get_rank(), comm.Get_size()
    bad = []
    for tail in [(), (3,), (2, 5)]:
        rows = [(3 * r + 1) % 4 for r in range(size)]  # includes 0 rows on some rank for size >= 3
        x = (np.arange(rows[rank] * int(np.prod(tail)), dtype=np.float64) + 100 * rank).reshape((rows[rank],) + tail)
        parts = comm.allgather(x)
        ref = np.concatenate(parts, axis=0)
        counts = [p.size for p in parts]
        flat = np.empty(sum(counts))
        comm.Allgatherv(x.reshape(-1), [flat, counts])
        got = ring_allgather(comm, x, chunk_nbytes=16)
        if got.shape != ref.shape or not np.array_equal(got, ref) or not np.array_equal(got.reshape(-1), flat):
            bad.append(f"tail={tail}: shape {got.shape} vs {ref.shape}")
    scalar = ring_allgather(comm, np.full((), rank, dtype=np.float64))
    ok = np.array_equal(scalar, np.arange(size, dtype=np.float64))
    _verdict(comm, not bad and ok, "; ".join(bad) + ("" if ok else f" 0-d gave {scalar}"))


def test_reduce_scatter_then_allgather_is_allreduce(rng):
    comm = _world()
    rank = comm.Get_rank()
    x = _data(int(rng.integers(1 << 30)), rank, "int64", "sum", 1000003 % 997)
    part = ring_reduce_scatter(comm, x)
    whole = ring_allgather(comm, part)
    _verdict(comm, np.array_equal(whole, ring_allreduce(comm, x)))


def test_integers_wrap_around_as_in_mpi():
    comm = _world()
    rank = comm.Get_rank()
    x = np.full(37, 200 + rank, dtype=np.uint8)
    ref = np.empty_like(x)
    comm.Allreduce(x, ref)
    got = ring_allreduce(comm, x, chunk_nbytes=8)
    _verdict(comm, np.array_equal(got, ref), f"{got[:3]} vs {ref[:3]}")


def test_float16_sum_and_any_shape_keeps_shape(rng):
    comm = _world()
    rank, size = comm.Get_rank(), comm.Get_size()
    x = np.random.default_rng([7, rank]).integers(-50, 50, (3, 4, 5)).astype(np.float16)  # exact in float16
    ref = sum(np.random.default_rng([7, r]).integers(-50, 50, (3, 4, 5)).astype(np.float64) for r in range(size))
    got = ring_allreduce(comm, x, chunk_nbytes=10)
    _verdict(comm, got.shape == x.shape and got.dtype == np.float16 and np.array_equal(got, ref.astype(np.float16)))


def test_out_and_in_place(rng):
    comm = _world()
    rank = comm.Get_rank()
    x = np.random.default_rng([3, rank]).standard_normal((17, 3))
    ref = np.empty_like(x)
    comm.Allreduce(x, ref)
    out = np.empty_like(x)
    r1 = ring_allreduce(comm, x, out=out, chunk_nbytes=40)
    y = x.copy()
    r2 = ring_allreduce(comm, y, out=y, chunk_nbytes=40)
    z = np.asfortranarray(x)  # non-contiguous input: copied, still fine
    r3 = ring_allreduce(comm, z[:, ::1], chunk_nbytes=40)
    ok = (r1 is out and r2 is y and np.allclose(out, ref, rtol=1e-13, atol=1e-13) and np.array_equal(y, out)
          and np.array_equal(r3, out) and r3.flags.c_contiguous)
    _verdict(comm, ok)


def _busy(seconds: float) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pass


@pytest.mark.parametrize("count,chunk", [(50_001, 4096), (1 << 17, 1 << 22), (3 << 16, None)],
                         ids=["many-chunks", "one-chunk-per-block", "default-chunks"])
def test_non_blocking_interleaved_with_compute(count, chunk):
    """Large messages go by rendezvous: a test() often finds the send that frees the next
    receive buffer still in flight and must return (and retry later) instead of failing."""
    comm = _world()
    rank = comm.Get_rank()
    x = np.random.default_rng([5, rank]).standard_normal(count)
    ref = ring_allreduce(comm, x, chunk_nbytes=chunk)
    bad = []
    for rep in range(10):
        in_place = rep % 2 == 1
        y = x.copy()
        req = ring_allreduce_start(comm, y, chunk_nbytes=chunk, out=y if in_place else None)
        tests = 0
        while not req.test():
            _busy(20e-6 * (1 + rep % 5))  # a compute slice, of a different length each repetition
            tests += 1
        assert req.test() and req.done
        got = req.wait()
        if not (np.array_equal(got, ref) and req.wait() is got and (got is y) == in_place):
            bad.append(f"rep {rep} (in_place={in_place}) after {tests} tests")
    _verdict(comm, not bad, "; ".join(bad))


def test_concurrent_operations_completed_in_any_order(rng):
    comm = _world()
    rank = comm.Get_rank()
    a = np.random.default_rng([1, rank]).standard_normal(10_007)
    b = np.random.default_rng([2, rank]).integers(0, 100, 5003)
    c = np.random.default_rng([3, rank]).integers(0, 100, 11)
    ra, rb = ring_allreduce(comm, a), ring_reduce_scatter(comm, b, MPI.MAX)
    rc = ring_allgather(comm, c)
    reqs = [ring_allreduce_start(comm, a, chunk_nbytes=1024),
            ring_reduce_scatter_start(comm, b, MPI.MAX, chunk_nbytes=512),
            ring_allgather_start(comm, c, chunk_nbytes=8)]
    order = [(i + rank) % 3 for i in range(3)]  # every rank waits in a different order
    if rank % 2:
        order.reverse()
    results = [None] * 3
    for i in order:
        results[i] = reqs[i].wait()
    ok = np.array_equal(results[0], ra) and np.array_equal(results[1], rb) and np.array_equal(results[2], rc)
    _verdict(comm, ok)


def test_bucket_equals_separate_allreduces(rng):
    comm = _world()
    rank = comm.Get_rank()
    g = np.random.default_rng([9, rank])
    arrays = [g.standard_normal((5, 7)), g.standard_normal(3), g.standard_normal(()), g.standard_normal((2, 2, 2))]
    keep = [a.copy() for a in arrays]
    refs = [ring_allreduce(comm, a) for a in arrays]
    got = ring_allreduce_bucket(comm, arrays, chunk_nbytes=48)
    ok = all(r.shape == a.shape and np.allclose(r, f, rtol=1e-13, atol=1e-13) for r, a, f in zip(got, arrays, refs))
    ok &= all(np.array_equal(a, k) for a, k in zip(arrays, keep))
    req = ring_allreduce_bucket_start(comm, arrays, MPI.MAX, out=arrays)
    while not req.test():
        pass
    maxed = req.wait()
    ok &= all(m is a for m, a in zip(maxed, arrays))
    ok &= all(np.array_equal(a, ring_allreduce(comm, k, MPI.MAX)) for a, k in zip(arrays, keep))
    ok &= _same_everywhere(comm, np.concatenate([a.ravel() for a in arrays]))
    _verdict(comm, ok)


@pytest.mark.parametrize("which", ["world", "split", "self", "hpcore"])
def test_communicators(which):
    world = _world()
    rank = world.Get_rank()
    if which == "split":
        comm = world.Split(rank % 2, -rank)  # reversed rank order inside each half
    elif which == "self":
        comm = MPI.COMM_SELF
    else:
        comm = world
    x = np.arange(11, dtype=np.int64) * (comm.Get_rank() + 1)
    ref = np.empty_like(x)
    comm.Allreduce(x, ref)
    target = hpcore.Comm(comm) if which == "hpcore" else comm
    got = ring_allreduce(target, x, chunk_nbytes=16)
    rs = ring_reduce_scatter(target, x)
    counts, displs = ring_blocks(11, comm.Get_size())
    r = comm.Get_rank()
    ok = np.array_equal(got, ref) and np.array_equal(rs, ref[displs[r]:displs[r] + counts[r]])
    ok &= np.array_equal(ring_allgather(target, x[:2]), np.concatenate(comm.allgather(x[:2])))
    if which == "split":
        comm.Free()  # frees the ring's private duplicate too (attribute delete callback)
    _verdict(world, ok)


def test_ring_traffic_does_not_match_callers_wildcard_receive():
    comm = _world()
    rank, size = comm.Get_rank(), comm.Get_size()
    box = np.zeros(3, dtype=np.int64)
    req = comm.Irecv(box, MPI.ANY_SOURCE, MPI.ANY_TAG)
    got = ring_allreduce(comm, np.ones(3, dtype=np.int64), chunk_nbytes=8)
    comm.Send(np.full(3, 42, dtype=np.int64), (rank + 1) % size, 1)
    req.Wait()
    _verdict(comm, np.array_equal(got, [size] * 3) and np.array_equal(box, [42] * 3), f"box={box}")


# --------------------------------------------------------------------------- errors: every rank, no hang


def test_mismatched_count_on_one_rank():
    comm = _world()
    rank = comm.Get_rank()
    n = 10 + (rank == comm.Get_size() - 1)
    msg = _raises_everywhere(comm, RingMismatchError, lambda: ring_allreduce(comm, np.ones(n)), "count")
    assert "count=11" in msg and "count=10" in msg
    _raises_everywhere(comm, RingMismatchError, lambda: ring_reduce_scatter(comm, np.ones(n)), "count")
    assert isinstance(RingMismatchError("x"), hpcore.HpcoreError)
    # the communicator is still usable afterwards
    _verdict(comm, np.array_equal(ring_allreduce(comm, np.ones(4)), np.full(4, comm.Get_size())))


def test_mismatched_dtype_and_op_on_one_rank():
    comm = _world()
    rank = comm.Get_rank()
    dt = np.float32 if rank == 1 else np.float64
    _raises_everywhere(comm, RingMismatchError, lambda: ring_allreduce(comm, np.ones(6, dt)), "float32")
    op = MPI.MAX if rank == 0 else MPI.SUM
    _raises_everywhere(comm, RingMismatchError, lambda: ring_allreduce(comm, np.ones(6), op), "op=max")
    _raises_everywhere(comm, RingMismatchError, lambda: ring_allgather(comm, np.ones((2, 3 + (rank == 0)))),
                       "trailing")
    _raises_everywhere(comm, RingMismatchError, lambda: ring_allgather(comm, np.ones(3, dt)), "dtype")
    _raises_everywhere(comm, RingMismatchError,
                       lambda: ring_allreduce_bucket(comm, [np.ones(3), np.ones(2 + (rank == 0))]), "count")


def test_unsupported_op_and_dtype_raise_everywhere():
    comm = _world()
    rank = comm.Get_rank()
    _raises_everywhere(comm, ValueError, lambda: ring_allreduce(comm, np.ones(4), MPI.LAND), "MPI.LAND")
    bad_on_one = MPI.BOR if rank == 1 else MPI.SUM
    _raises_everywhere(comm, ValueError, lambda: ring_allreduce(comm, np.ones(4), bad_on_one), "rank 1/")
    _raises_everywhere(comm, ValueError, lambda: ring_allreduce(comm, np.ones(4, complex), MPI.MAX), "complex")
    _raises_everywhere(comm, TypeError, lambda: ring_allreduce(comm, np.ones(4, bool)), "numeric dtype")
    _raises_everywhere(comm, TypeError, lambda: ring_allreduce(comm, [1.0, 2.0] if rank == 0 else np.ones(2)),
                       "expected a NumPy or CuPy array")
    _raises_everywhere(comm, ValueError, lambda: ring_allreduce(comm, np.ones(4), chunk_nbytes=0), "chunk_nbytes")
    _raises_everywhere(comm, TypeError, lambda: ring_allgather(comm, np.ones(2, ">f8")), "byte order")
    _raises_everywhere(comm, TypeError,
                       lambda: ring_allreduce_bucket(comm, [np.ones(2), np.ones(2, np.float32)]), "one dtype")


def test_bad_out_raises_everywhere():
    comm = _world()
    rank = comm.Get_rank()
    x = np.ones((4, 6))
    noncontig = np.empty((6, 4)).T if rank == 0 else np.empty((4, 6))
    _raises_everywhere(comm, ValueError, lambda: ring_allreduce(comm, x, out=noncontig), "C-contiguous")
    wrong_shape = np.empty((4, 5)) if rank == 1 else np.empty((4, 6))
    _raises_everywhere(comm, ValueError, lambda: ring_allreduce(comm, x, out=wrong_shape), "shape")
    wrong_dtype = np.empty((4, 6), np.float32) if rank == 0 else np.empty((4, 6))
    _raises_everywhere(comm, TypeError, lambda: ring_allreduce(comm, x, out=wrong_dtype), "dtype")
    ro = np.empty((4, 6))
    ro.flags.writeable = rank != 1
    _raises_everywhere(comm, ValueError, lambda: ring_allreduce(comm, x, out=ro), "read-only")
    big = np.ones(48)
    _raises_everywhere(comm, ValueError, lambda: ring_allreduce(comm, big[:24], out=big[12:36]), "overlaps")


def test_chunk_policy():
    assert chunk_elements(None, 10, 8) == (1 << 20) // 8
    assert chunk_elements(None, 1 << 30, 4) == (1 << 22) // 4
    assert chunk_elements(None, 16 << 20, 1) == 2 << 20
    assert chunk_elements(3, 100, 8) == 1
    assert ring_blocks(10, 4) == ([3, 3, 2, 2], [0, 3, 6, 8])
    assert ring_blocks(2, 4) == ([1, 1, 0, 0], [0, 1, 2, 2])
    with pytest.raises(ValueError):
        ring_blocks(-1, 2)


@pytest.mark.gpu
def test_device_arrays_match_host(cupy):
    comm = _world()
    rank = comm.Get_rank()
    cupy.cuda.Device(rank % cupy.cuda.runtime.getDeviceCount()).use()
    x = np.random.default_rng([11, rank]).standard_normal(10_007)
    host = ring_allreduce(comm, x, chunk_nbytes=4096)
    dev = ring_allreduce(comm, cupy.asarray(x), chunk_nbytes=4096)
    rs = ring_reduce_scatter(comm, cupy.asarray(x), chunk_nbytes=4096)
    ag = ring_allgather(comm, cupy.asarray(x[:5]))
    counts, displs = ring_blocks(x.size, comm.Get_size())
    ok = isinstance(dev, cupy.ndarray) and np.array_equal(cupy.asnumpy(dev), host)
    ok &= np.array_equal(cupy.asnumpy(rs), host[displs[rank]:displs[rank] + counts[rank]])
    ok &= np.array_equal(cupy.asnumpy(ag), np.concatenate(comm.allgather(x[:5])))
    _verdict(comm, ok)
