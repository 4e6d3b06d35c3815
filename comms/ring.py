"""Ring collectives: chunked, pipelined allreduce / reduce-scatter / allgather on host or device arrays.

The public collectives; the engine they run on (context, links, schedule, request
handles) is :mod:`comms.ring_engine`. Every call checks its arguments locally, then
agrees with the other ranks (:func:`hpcore.agree`: one allreduce of three int64) on
the collective being called, the element count, dtype, op and pipeline chunk before
any data moves; ``agreed=True`` skips that step for callers that agreed already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional, Sequence, Union

import numpy as np

from hpcore.arrays import array_module, is_device_array
from hpcore.boundary import agree, as_op

from .ring_engine import (
    DEFAULT_WINDOW,
    MAX_CHUNK_NBYTES,
    MIN_CHUNK_NBYTES,
    UFUNCS,
    RingMismatchError,
    RingRequest,
    RingSchedule,
    check_array,
    check_numeric_dtype,
    check_out,
    check_tuning,
    chunk_elements,
    flat,
    make_link,
    ring_blocks,
    ring_context,
    split_comm,
)

__all__ = [
    "RingMismatchError",
    "RingRequest",
    "ring_blocks",
    "ring_allreduce",
    "ring_allreduce_start",
    "ring_reduce_scatter",
    "ring_reduce_scatter_start",
    "ring_allgather",
    "ring_allgather_start",
    "ring_allreduce_bucket",
    "ring_allreduce_bucket_start",
    "chunk_elements",
    "MIN_CHUNK_NBYTES",
    "MAX_CHUNK_NBYTES",
    "DEFAULT_WINDOW",
]

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py import MPI

OpName = Literal["sum", "prod", "max", "min"]
Op = Union["MPI.Op", OpName, None]
"""MPI.SUM/PROD/MAX/MIN or their names; None means SUM."""

# --------------------------------------------------------------------------- allreduce / reduce-scatter


def _start_reduce(comm, x, op, out, chunk_nbytes, window, what: str, scatter: bool,
                  pre_error=None, finish=None, agreed: bool = False):
    """Validate, agree, and start a ring allreduce (or reduce-scatter). Collective.

    ``pre_error``: an error the caller found (every rank then raises it);
    ``finish(result) -> result``: run once on completion; ``agreed``: skip the agreement
    (local errors are raised on this rank only).
    """
    mpi, hc = split_comm(comm)
    ctx = ring_context(mpi)
    tag = ctx.next_tag()
    rank, size = mpi.Get_rank(), mpi.Get_size()
    error, name, xp, count, chunk, itemsize = None, "sum", np, 0, 0, 0
    try:
        name = as_op(op)
        if pre_error is not None:
            raise pre_error
        check_array(x, "x")
        xp = array_module(x)
        check_numeric_dtype(x.dtype, name, "x")
        if out is not None:
            if scatter:
                raise TypeError("out: not supported by ring_reduce_scatter")
            check_out(out, x, xp, x.shape, x.dtype)
        check_tuning(chunk_nbytes, window)
        count, itemsize = int(x.size), x.dtype.itemsize
        counts, displs = ring_blocks(count, size)
        chunk = chunk_elements(chunk_nbytes, max(counts), itemsize)
    except Exception as exc:  # noqa: BLE001 - agreed on below, raised on every rank
        error = exc
    if agreed:
        if error is not None:
            raise error
    else:
        agree(ctx.comm, error, what=what, mismatch=RingMismatchError, count=count,
              dtype=None if error is not None else x.dtype, op=name, chunk_nbytes=chunk * itemsize)

    src = flat(x)
    ufunc = getattr(xp, UFUNCS[name])
    link = make_link(ctx, hc, is_device_array(x), tag)
    if scatter:
        work = xp.empty(count, dtype=x.dtype)
        lo, hi = displs[rank], displs[rank] + counts[rank]
        if size == 1:
            work[...] = src
        ring = RingSchedule(link, xp, src, work, counts, displs, size - 1, size - 1, 1, ufunc, chunk, window,
                            rank, size)
        return RingRequest(ring, work, lambda w: w[lo:hi].copy())
    result = out if out is not None else xp.empty_like(x, order="C")
    dst = result.reshape(-1)
    if size == 1 and result is not x:
        dst[...] = src
    ring = RingSchedule(link, xp, src, dst, counts, displs, size - 1, 2 * (size - 1), 0, ufunc, chunk, window,
                        rank, size)
    return RingRequest(ring, result, finish)


def ring_allreduce_start(comm, x, op: Op = None, out=None, *, chunk_nbytes: Optional[int] = None,
                         window: int = DEFAULT_WINDOW, agreed: bool = False) -> RingRequest:
    """Start a ring allreduce of ``x``; ``wait()`` on the handle returns the result.

    Collective on ``comm``: every rank calls it, in the same order relative to the other
    ring collectives on ``comm``, with the same element count, dtype and op. Arguments
    are checked and agreed on (one small allreduce) before any data moves; a mismatch
    raises :class:`RingMismatchError` on every rank, a bad argument the same
    ``TypeError``/``ValueError`` on every rank. Parameters as for :func:`ring_allreduce`.
    ``x`` must not be modified (nor ``out`` read) until the handle completes.
    """
    return _start_reduce(comm, x, "sum" if op is None else op, out, chunk_nbytes, window,
                         "ring_allreduce", scatter=False, agreed=agreed)


def ring_allreduce(comm, x, op: Op = None, out=None, *, chunk_nbytes: Optional[int] = None,
                   window: int = DEFAULT_WINDOW, agreed: bool = False):
    """Element-wise reduction of ``x`` over all ranks; every rank gets the whole result.

    Collective on ``comm`` (an mpi4py intracommunicator or an ``hpcore.Comm``): every
    rank calls it with an array of the same element count and dtype and the same op.
    Bandwidth-optimal ring: a reduce-scatter then an allgather, ``size - 1`` steps each,
    every step split into chunks of ``chunk_nbytes`` so that the reduction of one chunk
    overlaps the transfer of the next. Each block of the result is reduced on one rank
    in a fixed order and then copied to the others, so the result is bit-identical on
    every rank.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or hpcore.Comm
    x : numpy.ndarray or cupy.ndarray, any shape ``(*shape)``, any numeric dtype
        (integer, unsigned, float, complex; complex only with SUM/PROD). Not modified
        unless ``out is x``. Non-contiguous ``x`` is copied first.
    op : MPI.SUM (default), MPI.PROD, MPI.MAX, MPI.MIN, or "sum"/"prod"/"max"/"min".
        Integers wrap around on overflow, as in MPI. MAX/MIN propagate NaN (NumPy's
        ``maximum``/``minimum``), where MPI's C comparison may not.
    out : array like ``x`` (same shape, dtype, device), C-contiguous, optional
        Where the result goes; ``out=x`` reduces in place.
    chunk_nbytes : int, optional
        Pipeline chunk [bytes]; default :func:`chunk_elements`' choice (1-4 MiB).
    window : int
        Chunks received ahead of the one being reduced (may differ between ranks).
    agreed : bool
        True when the caller has already agreed on the arguments with the other ranks
        (e.g. :class:`comms.Hierarchy`, or a training loop whose buckets were agreed
        once): skips the agreement allreduce; local errors then raise on this rank only.

    Returns
    -------
    array of shape ``x.shape`` and dtype ``x.dtype`` (``out`` when given), on ``x``'s device.

    Device arrays are reduced with CuPy on the current stream, which is synchronized
    before each send; with CUDA-aware MPI they go to MPI directly, otherwise through
    ``hpcore.Comm``'s pinned staging buffers.

    Ring messages travel on a private duplicate of ``comm`` (made on the first ring call,
    freed with ``comm``), so they never match the caller's own receives. For messages
    below some 100 KiB ``comm.Allreduce`` is faster: a ring takes ``2 (size - 1)``
    message latencies plus some 20-40 us of Python per call.

    Examples
    --------
    ``mpiexec -n 2 python -c "..."``::

        from mpi4py import MPI
        import numpy as np
        from comms import ring_allreduce
        x = np.arange(5.0) + MPI.COMM_WORLD.rank
        print(ring_allreduce(MPI.COMM_WORLD, x))   # [1. 3. 5. 7. 9.] on both ranks
    """
    return ring_allreduce_start(comm, x, op, out, chunk_nbytes=chunk_nbytes, window=window,
                               agreed=agreed).wait()


def ring_reduce_scatter_start(comm, x, op: Op = None, *, chunk_nbytes: Optional[int] = None,
                              window: int = DEFAULT_WINDOW, agreed: bool = False) -> RingRequest:
    """Start :func:`ring_reduce_scatter`; ``wait()`` returns this rank's block.

    Collective on ``comm``, with the same agreement step as :func:`ring_allreduce_start`.
    """
    return _start_reduce(comm, x, "sum" if op is None else op, None, chunk_nbytes, window,
                         "ring_reduce_scatter", scatter=True, agreed=agreed)


def ring_reduce_scatter(comm, x, op: Op = None, *, chunk_nbytes: Optional[int] = None,
                        window: int = DEFAULT_WINDOW, agreed: bool = False):
    """Reduce ``x`` over all ranks and keep this rank's block of the flattened result.

    Collective on ``comm``: every rank passes the same element count ``count``, dtype and
    op (checked, as in :func:`ring_allreduce`). The flattened result is split by
    :func:`ring_blocks`: rank ``r`` gets elements ``[displs[r], displs[r] + counts[r])``
    with ``counts[r] = count // size + (r < count % size)``, so blocks differ by at most
    one element and any ``count`` works (0 and ``count < size`` included: some blocks
    are then empty). This equals ``comm.Reduce_scatter(x, recvbuf, recvcounts=counts)``
    with those counts; MPI's ``Reduce_scatter_block`` only covers ``count % size == 0``.

    Returns
    -------
    1-D array of ``counts[rank]`` elements of ``x.dtype``, on ``x``'s device.
    """
    return ring_reduce_scatter_start(comm, x, op, chunk_nbytes=chunk_nbytes, window=window,
                               agreed=agreed).wait()


# --------------------------------------------------------------------------- allgather


def ring_allgather_start(comm, x, *, chunk_nbytes: Optional[int] = None,
                         window: int = DEFAULT_WINDOW, agreed: bool = False) -> RingRequest:
    """Start :func:`ring_allgather`; ``wait()`` returns the gathered array.

    Collective on ``comm``. One agreement (:func:`hpcore.agree`: dtype, trailing shape,
    ``chunk_nbytes``) and one allgather of the row counts before any data moves; a
    mismatch raises :class:`RingMismatchError` on every rank.
    """
    mpi, hc = split_comm(comm)
    ctx = ring_context(mpi)
    tag = ctx.next_tag()
    rank, size = mpi.Get_rank(), mpi.Get_size()
    error, xp, tail, rows = None, np, None, 0
    try:
        check_array(x, "x")
        xp = array_module(x)
        check_numeric_dtype(x.dtype, "sum", "x")
        check_tuning(chunk_nbytes, window)
        shape = tuple(x.shape) if x.ndim else (1,)
        rows, tail = shape[0], shape[1:]
    except Exception as exc:  # noqa: BLE001 - agreed on below
        error = exc
    # chunk_nbytes must match (message sizes); the automatic chunk depends on the largest block,
    # which every rank learns from the row counts below, so the setting is agreed as given
    if agreed:
        if error is not None:
            raise error
    else:
        agree(ctx.comm, error, what="ring_allgather", mismatch=RingMismatchError,
              dtype=None if error is not None else x.dtype, trailing_shape=tail, chunk_nbytes=chunk_nbytes)
    table = np.empty(size, dtype=np.int64)
    ctx.comm.Allgather(np.array([rows], dtype=np.int64), table)
    rows_per_rank = [int(t) for t in table]
    row = int(np.prod(tail)) if tail else 1
    counts = [m * row for m in rows_per_rank]
    displs = [0] * size
    for b in range(1, size):
        displs[b] = displs[b - 1] + counts[b - 1]
    result = xp.empty((sum(rows_per_rank),) + tail, dtype=x.dtype)
    dst = result.reshape(-1)
    dst[displs[rank]:displs[rank] + counts[rank]] = flat(x)
    chunk = chunk_elements(chunk_nbytes, max(counts), x.dtype.itemsize)
    link = make_link(ctx, hc, is_device_array(x), tag)
    ring = RingSchedule(link, xp, dst, dst, counts, displs, 0, size - 1, 0, None, chunk, window, rank, size)
    return RingRequest(ring, result)


def ring_allgather(comm, x, *, chunk_nbytes: Optional[int] = None, window: int = DEFAULT_WINDOW,
                   agreed: bool = False):
    """Concatenate every rank's ``x`` along axis 0, in rank order, on every rank.

    Collective on ``comm``: every rank passes an array of shape ``(rows_r, *tail)`` with
    the same ``tail`` and dtype; ``rows_r`` may differ between ranks (like
    ``Allgatherv``; a 0-d ``x`` counts as shape ``(1,)``). Ring of ``size - 1`` steps,
    chunked like :func:`ring_allreduce`.

    Returns
    -------
    array of shape ``(sum of rows_r, *tail)``; with equal ``rows`` on every rank this is
    ``comm.Allgather`` of ``x`` reshaped to ``(size * rows, *tail)``.
    """
    return ring_allgather_start(comm, x, chunk_nbytes=chunk_nbytes, window=window,
                               agreed=agreed).wait()


# --------------------------------------------------------------------------- gradient buckets


def ring_allreduce_bucket_start(comm, arrays: Sequence, op: Op = None, out: Optional[Sequence] = None, *,
                                chunk_nbytes: Optional[int] = None,
                                window: int = DEFAULT_WINDOW, agreed: bool = False) -> RingRequest:
    """Start one fused ring allreduce of several arrays; ``wait()`` returns a list.

    Collective on ``comm``: every rank passes the same number of arrays with the same
    total element count and dtype. See :func:`ring_allreduce_bucket`.
    """
    error, fused, xp = None, None, np
    try:
        arrays = list(arrays)
        if not arrays:
            raise ValueError("arrays: expected at least one array")
        for i, a in enumerate(arrays):
            check_array(a, f"arrays[{i}]")
        xp = array_module(arrays[0])
        dtype = arrays[0].dtype
        for i, a in enumerate(arrays):
            if a.dtype != dtype or is_device_array(a) != is_device_array(arrays[0]):
                raise TypeError(f"arrays[{i}]: a bucket holds one dtype on one kind of memory "
                                f"(arrays[0] is {dtype}, arrays[{i}] is {a.dtype}); use one bucket per dtype")
        if out is not None:
            out = list(out)
            if len(out) != len(arrays):
                raise ValueError(f"out: expected {len(arrays)} arrays, got {len(out)}")
            for i, (o, a) in enumerate(zip(out, arrays)):
                check_out(o, a, xp, a.shape, a.dtype, f"out[{i}]")
        total = sum(int(a.size) for a in arrays)
        fused = xp.empty(total, dtype=dtype)
        pos = 0
        for a in arrays:
            fused[pos:pos + a.size] = a.reshape(-1)
            pos += a.size
    except Exception as exc:  # noqa: BLE001 - agreed on below
        error = exc
    outs = None
    if error is None:
        outs = out if out is not None else [xp.empty_like(a, order="C") for a in arrays]
    shapes = [a.shape for a in arrays] if error is None else []

    def scatter_back(reduced):
        pos = 0
        for o, shape in zip(outs, shapes):
            n = int(np.prod(shape)) if shape else 1
            o.reshape(-1)[...] = reduced[pos:pos + n]
            pos += n
        return outs

    return _start_reduce(comm, fused, "sum" if op is None else op, fused, chunk_nbytes, window,
                         "ring_allreduce_bucket", scatter=False, pre_error=error, finish=scatter_back,
                         agreed=agreed)


def ring_allreduce_bucket(comm, arrays: Sequence, op: Op = None, out: Optional[Sequence] = None, *,
                          chunk_nbytes: Optional[int] = None, window: int = DEFAULT_WINDOW,
                          agreed: bool = False) -> list:
    """Allreduce several arrays as one fused transfer (a gradient bucket).

    Collective on ``comm``: every rank passes arrays of one dtype whose total element
    count agrees across ranks (normally the same list of shapes). The arrays are copied
    into one fused buffer, reduced with one :func:`ring_allreduce` (one set of messages
    instead of one per array), and copied out.

    Parameters
    ----------
    arrays : sequence of arrays of one dtype, on one kind of memory; any shapes.
    op : as for :func:`ring_allreduce`.
    out : sequence of arrays, optional
        One per input (same shape and dtype, C-contiguous); ``out=arrays`` reduces in place.

    Returns
    -------
    list of arrays shaped like ``arrays`` (``out`` when given).
    """
    return ring_allreduce_bucket_start(comm, arrays, op, out, chunk_nbytes=chunk_nbytes, window=window,
                               agreed=agreed).wait()

