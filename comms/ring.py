"""Ring collectives: chunked, pipelined allreduce / reduce-scatter / allgather on host or device arrays."""

from __future__ import annotations

import zlib
from collections import deque
from typing import TYPE_CHECKING, Literal, Optional, Sequence, Union

import numpy as np

from hpcore.arrays import array_module, is_device_array
from hpcore.boundary import agree, as_comm
from hpcore.errors import HpcoreError
from hpcore.staging import BufferPool

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
]

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py import MPI

OpName = Literal["sum", "prod", "max", "min"]
Op = Union["MPI.Op", OpName, None]
"""MPI.SUM/PROD/MAX/MIN or their names; None means SUM."""

MIN_CHUNK_NBYTES = 1 << 20
MAX_CHUNK_NBYTES = 1 << 22
"""Bounds of the automatic pipeline chunk [bytes] (``chunk_nbytes=None``): an eighth of a ring
block, at least 1 MiB and at most 4 MiB. Each chunk is one message; on shared-memory MPICH a
large message costs a rendezvous of some 20-50 us, which smaller chunks do not earn back
(measured with ``python -m benchmarks allreduce``)."""

DEFAULT_WINDOW = 3
"""Receives posted ahead of the one being reduced (each reduce step holds one chunk buffer per receive)."""

_OP_CODES = {"sum": 1, "prod": 2, "max": 3, "min": 4}
_MPI = None
_POOL = BufferPool()  # chunk receive buffers, reused across calls (no fresh pages to fault in per call)


def _mpi():
    """``mpi4py.MPI``, imported on first use (importing this module does no MPI work)."""
    global _MPI
    if _MPI is None:
        from mpi4py import MPI

        _MPI = MPI
    return _MPI

_UFUNCS = {"sum": "add", "prod": "multiply", "max": "maximum", "min": "minimum"}


class RingMismatchError(HpcoreError):
    """Ranks called a ring collective with different sizes, dtypes or ops (raised on every rank)."""


# --------------------------------------------------------------------------- small helpers


def ring_blocks(count: int, size: int) -> tuple:
    """Balanced split of ``count`` elements into ``size`` blocks. Not collective.

    Returns ``(counts, displs)``, lists of ``size`` ints [elements]: block ``b`` is
    ``[displs[b], displs[b] + counts[b])``; the first ``count % size`` blocks hold one
    element more than the others (``counts[b] = count // size + (b < count % size)``).
    This is the layout :func:`ring_reduce_scatter` returns and the ``recvcounts`` to give
    ``MPI.Comm.Reduce_scatter`` for the same result.
    """
    count, size = int(count), int(size)
    if count < 0 or size < 1:
        raise ValueError(f"ring_blocks: expected count >= 0 and size >= 1, got count={count}, size={size}")
    q, extra = divmod(count, size)
    counts = [q + (1 if b < extra else 0) for b in range(size)]
    displs = [0] * size
    for b in range(1, size):
        displs[b] = displs[b - 1] + counts[b - 1]
    return counts, displs


def chunk_elements(chunk_nbytes: Optional[int], block_count: int, itemsize: int) -> int:
    """Elements per pipeline chunk for blocks of ``block_count`` elements. Not collective.

    ``chunk_nbytes`` [bytes] as given, or for None an eighth of the block clamped to
    ``[MIN_CHUNK_NBYTES, MAX_CHUNK_NBYTES]``. At least one element.
    """
    if chunk_nbytes is None:
        chunk_nbytes = min(MAX_CHUNK_NBYTES, max(MIN_CHUNK_NBYTES, block_count * itemsize // 8))
    return max(1, int(chunk_nbytes) // itemsize)


def _check_tuning(chunk_nbytes, window) -> None:
    if chunk_nbytes is not None and int(chunk_nbytes) < 1:
        raise ValueError(f"chunk_nbytes: expected None or >= 1 [bytes], got {chunk_nbytes}")
    if int(window) < 1:
        raise ValueError(f"window: expected >= 1, got {window}")


def _op_name(op) -> str:
    """'sum' | 'prod' | 'max' | 'min' for an MPI op or one of those strings; ValueError otherwise."""
    if isinstance(op, str):
        if op.lower() in _OP_CODES:
            return op.lower()
        raise ValueError(f"op: expected MPI.SUM, MPI.PROD, MPI.MAX, MPI.MIN or one of {sorted(_OP_CODES)}, got {op!r}")
    MPI = _mpi()
    if isinstance(op, MPI.Op):
        for name, mop in (("sum", MPI.SUM), ("prod", MPI.PROD), ("max", MPI.MAX), ("min", MPI.MIN)):
            if op == mop:
                return name
        known = [n for n in ("LAND", "BAND", "LOR", "BOR", "LXOR", "BXOR", "MAXLOC", "MINLOC", "REPLACE", "NO_OP")
                 if op == getattr(MPI, n, None)]
        shown = f"MPI.{known[0]}" if known else "a user-defined MPI.Op"
    else:
        shown = repr(op)
    raise ValueError(f"op: ring collectives support MPI.SUM, MPI.PROD, MPI.MAX and MPI.MIN, got {shown}")


def _dtype_code(dtype) -> int:
    """A code equal on every rank for equal dtypes: kind letter and item size."""
    return ord(dtype.kind) * 256 + dtype.itemsize


def _dtype_name(code: int) -> str:
    """The NumPy name of a :func:`_dtype_code` (e.g. 'float64')."""
    try:
        return np.dtype(f"{chr(code // 256)}{code % 256}").name
    except TypeError:
        return f"code {code}"


def _check_dtype(dtype, op: str, name: str) -> None:
    if dtype.kind not in "iufc":
        raise TypeError(f"{name}: ring collectives need a numeric dtype (integer, unsigned, float or complex), "
                        f"got {dtype}")
    if not dtype.isnative:
        raise TypeError(f"{name}: dtype {dtype} is not in native byte order; "
                        f"convert with .astype({dtype.newbyteorder('=')})")
    if dtype.kind == "c" and op in ("max", "min"):
        raise ValueError(f"op: {op.upper()} is not defined for complex dtype {dtype} (as in MPI)")


def _check_array(x, name: str) -> None:
    if not (isinstance(x, np.ndarray) or is_device_array(x)):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(x).__name__}")


def _check_out(out, x, xp, shape, dtype, name: str = "out") -> None:
    """``out`` must be a writable C-contiguous array of ``shape``/``dtype`` where ``x`` lives."""
    _check_array(out, name)
    if is_device_array(out) != is_device_array(x):
        raise TypeError(f"{name}: must live where x does ({'device' if is_device_array(x) else 'host'}), "
                        f"got a {'device' if is_device_array(out) else 'host'} array")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous (got strides {out.strides})")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError(f"{name}: is read-only")
    if out is not x and xp.may_share_memory(out, x):
        raise ValueError(f"{name}: overlaps x without being x (pass out=x for an in-place operation)")


def _flat(a):
    """A flat view of a C-contiguous array (a contiguous copy otherwise)."""
    xp = array_module(a)
    if not a.flags.c_contiguous:
        a = xp.ascontiguousarray(a)
    return a.reshape(-1)


# --------------------------------------------------------------------------- per-communicator context


class _Context:
    """What the ring collectives keep per communicator: a private duplicate (so ring
    messages never match the caller's own receives), an operation counter that
    gives concurrent operations distinct tags, and a staging transport for device
    buffers when MPI is not CUDA-aware."""

    def __init__(self, dup):
        self.comm = dup
        self.seq = 0
        self.tag_ub = 32767
        self._hc = None

    def next_tag(self) -> int:
        self.seq += 1
        return 1 + self.seq % self.tag_ub

    def transport(self, hc=None):
        if hc is not None:
            return hc
        if self._hc is None:
            import hpcore

            self._hc = hpcore.Comm(self.comm)
        return self._hc

    def free(self) -> None:
        comm, self.comm = self.comm, None
        if comm is not None:
            try:
                comm.Free()
            except Exception:  # noqa: BLE001 - MPI may already be finalizing
                pass


_KEYVAL = None


def _delete_context(comm, keyval, ctx):  # MPI attribute delete callback
    ctx.free()


def _context(comm) -> _Context:
    """The ring context cached on ``comm`` (created on first use: collective, as every
    ring call is; freed when ``comm`` is freed)."""
    global _KEYVAL
    if _KEYVAL is None:
        _KEYVAL = _mpi().Comm.Create_keyval(delete_fn=_delete_context)
    ctx = comm.Get_attr(_KEYVAL)
    if ctx is None:
        ctx = _Context(comm.Dup())
        comm.Set_attr(_KEYVAL, ctx)
    return ctx


def _split_comm(comm):
    """``(mpi_comm, hpcore_comm_or_None)`` from an mpi4py intracommunicator or an ``hpcore.Comm``."""
    mpi = as_comm(comm)
    return mpi, (None if mpi is comm else comm)


# --------------------------------------------------------------------------- transport of flat chunks


class _HostLink:
    """Byte messages of host (or CUDA-aware device) arrays straight through mpi4py."""

    def __init__(self, comm, tag: int, left: int, right: int):
        self._byte = _mpi().BYTE
        self._comm, self._tag, self.left, self.right = comm, tag, left, right

    def isend(self, buf):
        return self._comm.Isend([buf, self._byte], self.right, self._tag)

    def irecv(self, buf):
        return self._comm.Irecv([buf, self._byte], self.left, self._tag)


class _WrappedRequest:
    """An ``hpcore.Request`` seen through mpi4py's ``Test``/``Wait`` names."""

    __slots__ = ("_r",)

    def __init__(self, r):
        self._r = r

    def Test(self):  # noqa: N802 - mpi4py's spelling, so the engine treats both alike
        return self._r.test()

    def Wait(self):  # noqa: N802
        self._r.wait()


class _StagedLink:
    """Device arrays without CUDA-aware MPI: staged through pinned host memory by ``hpcore.Comm``."""

    def __init__(self, hc, tag: int, left: int, right: int):
        self._hc, self._tag, self.left, self.right = hc, tag, left, right

    def isend(self, buf):
        return _WrappedRequest(self._hc.isend(buf, self.right, self._tag))

    def irecv(self, buf):
        return _WrappedRequest(self._hc.irecv(buf, self.left, self._tag))


def _make_link(ctx: _Context, hc, device: bool, tag: int):
    comm = ctx.comm
    rank, size = comm.Get_rank(), comm.Get_size()
    left, right = (rank - 1) % size, (rank + 1) % size
    if device:
        if hc is not None:
            cuda_aware = bool(hc.cuda_aware)
        else:
            from hpcore.cuda_aware import detect_cuda_aware

            cuda_aware = bool(detect_cuda_aware())
        if not cuda_aware:
            return _StagedLink(ctx.transport(hc), tag, left, right)
    return _HostLink(comm, tag, left, right)


# --------------------------------------------------------------------------- the pipelined ring


class _Ring:
    """The ring schedule over flat 1-D arrays, driven by ``progress()``.

    ``n_steps`` steps of ``K`` chunks each. At step ``g`` this rank sends chunk ``k`` of
    block ``(rank - g - shift) % n`` to its right neighbour and receives chunk ``k`` of
    block ``(rank - g - 1 - shift) % n`` from its left one. Steps ``g < n_reduce`` reduce
    what arrives with this rank's own ``src`` into ``dst``; later steps receive straight
    into ``dst`` (the allgather phase). Step 0 sends from ``src``, later steps from
    ``dst``. Chunk ``(g+1, k)`` leaves as soon as ``(g, k)`` is reduced, and up to
    ``window`` receives are posted ahead, so the reduction of one chunk overlaps the
    transfer of the next wherever something other than this rank's core moves the data
    (a NIC, a GPU copy engine, a progress thread); with shared-memory MPICH the copy
    happens inside this rank's next MPI call. Messages go out and are matched in one
    fixed order, so one tag per operation suffices.
    """

    def __init__(self, link, xp, src, dst, counts, displs, n_reduce: int, n_steps: int, shift: int,
                 ufunc, chunk: int, window: int, rank: int, size: int):
        self.link, self.xp, self.src, self.dst = link, xp, src, dst
        self.counts, self.displs = counts, displs
        self.n_reduce, self.n_steps, self.shift = n_reduce, n_steps, shift
        self.ufunc, self.rank, self.size = ufunc, rank, size
        biggest = max(counts) if counts else 0
        self.chunk = max(1, int(chunk))
        self.K = max(1, -(-biggest // self.chunk))
        self.M = n_steps * self.K if biggest > 0 else 0
        self.window = max(1, int(window))
        self.device = xp is not np
        self._stream_dirty = self.device  # the caller's kernels may still be writing src
        n_slots = min(self.window, n_reduce * self.K) if self.M else 0
        kind = "device" if self.device else "host"
        nbytes = min(self.chunk, biggest) * src.dtype.itemsize
        self._raw = [(_POOL.get(nbytes, kind), kind) for _ in range(n_slots)]
        self._free_slots = [raw.view(src.dtype) for raw, _ in self._raw]
        self._recvs: deque = deque()  # (index, request, slot or None, segment)
        self._sends: dict = {}  # index -> request (not yet known complete)
        self.next_send = self.next_post = self.next_done = 0
        self.done = self.M == 0

    # one chunk: (block, start, stop) in elements of the flat arrays
    def _segment(self, i: int, receiving: bool):
        g, k = divmod(i, self.K)
        b = (self.rank - g - self.shift - (1 if receiving else 0)) % self.size
        lo = self.displs[b] + k * self.chunk
        hi = self.displs[b] + min((k + 1) * self.chunk, self.counts[b])
        return lo, max(lo, hi)

    def _sync(self):
        if self._stream_dirty:
            self.xp.cuda.get_current_stream().synchronize()
            self._stream_dirty = False

    def _issue_sends(self):
        K, M = self.K, self.M
        while self.next_send < M and (self.next_send < K or self.next_send - K < self.next_done):
            i = self.next_send
            lo, hi = self._segment(i, False)
            buf = (self.src if i < K else self.dst)[lo:hi]
            if self.device:
                self._sync()
            self._sends[i] = self.link.isend(buf)
            self.next_send += 1

    def _post_recvs(self, blocking: bool) -> None:
        K, M = self.K, self.M
        while self.next_post < M and self.next_post - self.next_done < self.window:
            i = self.next_post
            lo, hi = self._segment(i, True)
            if i // K < self.n_reduce:
                slot = self._free_slots.pop()
                buf = slot[: hi - lo]
            else:
                # the same block left this rank n-1 steps earlier: that send must be done
                j = i - (self.size - 1) * K
                if j >= self.next_send:
                    return  # not even issued yet (a large window); it will be once more chunks arrive
                req = self._sends.get(j)
                if req is not None:
                    if not req.Test():
                        if not (blocking and not self._recvs):
                            return  # reduce what has arrived first; retry on the next pass
                        req.Wait()
                    del self._sends[j]
                slot = None
                buf = self.dst[lo:hi]
            self._recvs.append((i, self.link.irecv(buf), slot, lo, hi))
            self.next_post += 1

    def _finish_sends(self, blocking: bool) -> bool:
        for i in list(self._sends):
            req = self._sends[i]
            if blocking:
                req.Wait()
            elif not req.Test():
                return False
            del self._sends[i]
        return True

    def progress(self, blocking: bool) -> bool:
        """Do all work that is ready (all of it when ``blocking``); True once complete."""
        if self.done:
            return True
        while True:
            self._issue_sends()
            self._post_recvs(blocking)
            if self.next_done == self.M:
                if self._finish_sends(blocking):
                    self.done = True
                    self._free_slots = []
                    for raw, kind in self._raw:
                        _POOL.put(raw, kind)
                    self._raw = []
                return self.done
            if not self._recvs:
                return False  # only when not blocking: the send that frees the next buffer is in flight
            i, req, slot, lo, hi = self._recvs[0]
            if blocking:
                req.Wait()
            elif not req.Test():
                return False
            self._recvs.popleft()
            if slot is not None:
                self.ufunc(self.src[lo:hi], slot[: hi - lo], out=self.dst[lo:hi])
                self._free_slots.append(slot)
                self._stream_dirty = self.device
            self.next_done += 1


# --------------------------------------------------------------------------- handles


_ACTIVE: list = []  # started, unfinished requests of this process (progressed together)


class RingRequest:
    """Handle of a started ring collective. Not collective to use.

    ``test()`` does whatever work is ready (receives, reductions, sends) and returns
    True once the operation completed; call it between slices of computation, since
    MPICH makes no progress in the background. ``wait()`` completes it and returns the
    result. Every call also progresses this process's other unfinished ring
    operations, so ranks may complete concurrent operations in any order.
    """

    def __init__(self, ring: Optional[_Ring], result, finish=None):
        self._ring = ring
        self._result = result
        self._finish = finish
        self._done = ring is None or ring.done
        if self._done:
            self._complete()
        else:
            _ACTIVE.append(self)

    @property
    def done(self) -> bool:
        """True once the operation completed (as seen by the last ``test``/``wait``)."""
        return self._done

    def _complete(self) -> None:
        self._done = True
        self._ring = None
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        fin, self._finish = self._finish, None
        if fin is not None:
            self._result = fin(self._result)

    def _step(self, blocking: bool) -> bool:
        if not self._done and self._ring.progress(blocking):
            self._complete()
        return self._done

    def test(self) -> bool:
        """Progress (never blocks); True once complete. Not collective."""
        done = self._step(False)
        for other in list(_ACTIVE):
            if other is not self:
                other._step(False)
        return done

    def wait(self):
        """Block until complete; returns the result (the same object on repeated calls)."""
        while not self._done:
            if len(_ACTIVE) == 1 and _ACTIVE[0] is self:
                self._step(True)
            else:
                for other in list(_ACTIVE):
                    other._step(False)
        return self._result


# --------------------------------------------------------------------------- agreement


def _agree_reduce(comm, error, count: int, dtype_code: int, op_code: int, what: str) -> None:
    """One small allreduce: every rank learns whether any rank failed locally and whether
    (count, dtype, op) differ; then every rank raises the same error. Collective."""
    ok = error is None
    mine = np.array([0 if ok else 1, count, -count, dtype_code, -dtype_code, op_code, -op_code], dtype=np.int64)
    if not ok:
        mine[1:] = np.iinfo(np.int64).min  # neutral under MAX
    agreed = np.empty_like(mine)
    comm.Allreduce(mine, agreed, op=_mpi().MAX)
    if agreed[0]:
        agree(comm, error)  # raises on every rank
    if agreed[1] == -agreed[2] and agreed[3] == -agreed[4] and agreed[5] == -agreed[6]:
        return
    table = comm.allgather((count, dtype_code, op_code))
    names = {v: k for k, v in _OP_CODES.items()}
    parts = [f"rank {r}: count={c}, dtype={_dtype_name(d)}, op={names.get(o, o)}"
             for r, (c, d, o) in enumerate(table)]
    raise RingMismatchError(f"{what}: ranks disagree on the element count, dtype or op ({'; '.join(parts)})")


# --------------------------------------------------------------------------- allreduce / reduce-scatter


def _start_reduce(comm, x, op, out, chunk_nbytes, window, what: str, scatter: bool,
                  pre_error=None, finish=None):
    """Validate, agree, and start a ring allreduce (or reduce-scatter). Collective.

    ``pre_error``: an error the caller found (every rank then raises it);
    ``finish(result) -> result``: run once on completion.
    """
    mpi, hc = _split_comm(comm)
    ctx = _context(mpi)
    tag = ctx.next_tag()
    rank, size = mpi.Get_rank(), mpi.Get_size()
    error, name, xp = None, "sum", np
    try:
        name = _op_name(op)
        if pre_error is not None:
            raise pre_error
        _check_array(x, "x")
        xp = array_module(x)
        _check_dtype(x.dtype, name, "x")
        if out is not None:
            if scatter:
                raise TypeError("out: not supported by ring_reduce_scatter")
            _check_out(out, x, xp, x.shape, x.dtype)
        _check_tuning(chunk_nbytes, window)
    except Exception as exc:  # noqa: BLE001 - agreed on below, raised on every rank
        error = exc
    count = int(x.size) if error is None else 0
    _agree_reduce(ctx.comm, error, count, _dtype_code(x.dtype) if error is None else 0, _OP_CODES[name], what)

    src = _flat(x)
    counts, displs = ring_blocks(count, size)
    ufunc = getattr(xp, _UFUNCS[name])
    chunk = chunk_elements(chunk_nbytes, max(counts), x.dtype.itemsize)
    link = _make_link(ctx, hc, is_device_array(x), tag)
    if scatter:
        work = xp.empty(count, dtype=x.dtype)
        lo, hi = displs[rank], displs[rank] + counts[rank]
        if size == 1:
            work[...] = src
        ring = _Ring(link, xp, src, work, counts, displs, size - 1, size - 1, 1, ufunc, chunk, window, rank, size)
        return RingRequest(ring, work, lambda w: w[lo:hi].copy())
    result = out if out is not None else xp.empty_like(x, order="C")
    dst = result.reshape(-1)
    if size == 1 and result is not x:
        dst[...] = src
    ring = _Ring(link, xp, src, dst, counts, displs, size - 1, 2 * (size - 1), 0, ufunc, chunk, window, rank, size)
    return RingRequest(ring, result, finish)


def ring_allreduce_start(comm, x, op: Op = None, out=None, *, chunk_nbytes: Optional[int] = None,
                         window: int = DEFAULT_WINDOW) -> RingRequest:
    """Start a ring allreduce of ``x``; ``wait()`` on the handle returns the result.

    Collective on ``comm``: every rank calls it, in the same order relative to the other
    ring collectives on ``comm``, with the same element count, dtype and op. Arguments
    are checked and agreed on (one small allreduce) before any data moves; a mismatch
    raises :class:`RingMismatchError` on every rank, a bad argument the same
    ``TypeError``/``ValueError`` on every rank. Parameters as for :func:`ring_allreduce`.
    ``x`` must not be modified (nor ``out`` read) until the handle completes.
    """
    return _start_reduce(comm, x, "sum" if op is None else op, out, chunk_nbytes, window,
                         "ring_allreduce", scatter=False)


def ring_allreduce(comm, x, op: Op = None, out=None, *, chunk_nbytes: Optional[int] = None,
                   window: int = DEFAULT_WINDOW):
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
        Chunks received ahead of the one being reduced.

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
    return ring_allreduce_start(comm, x, op, out, chunk_nbytes=chunk_nbytes, window=window).wait()


def ring_reduce_scatter_start(comm, x, op: Op = None, *, chunk_nbytes: Optional[int] = None,
                              window: int = DEFAULT_WINDOW) -> RingRequest:
    """Start :func:`ring_reduce_scatter`; ``wait()`` returns this rank's block.

    Collective on ``comm``, with the same agreement step as :func:`ring_allreduce_start`.
    """
    return _start_reduce(comm, x, "sum" if op is None else op, None, chunk_nbytes, window,
                         "ring_reduce_scatter", scatter=True)


def ring_reduce_scatter(comm, x, op: Op = None, *, chunk_nbytes: Optional[int] = None,
                        window: int = DEFAULT_WINDOW):
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
    return ring_reduce_scatter_start(comm, x, op, chunk_nbytes=chunk_nbytes, window=window).wait()


# --------------------------------------------------------------------------- allgather


def ring_allgather_start(comm, x, *, chunk_nbytes: Optional[int] = None,
                         window: int = DEFAULT_WINDOW) -> RingRequest:
    """Start :func:`ring_allgather`; ``wait()`` returns the gathered array.

    Collective on ``comm``. One small allgather of (rows, dtype, trailing shape) checks
    that the ranks agree before any data moves; a mismatch raises
    :class:`RingMismatchError` on every rank.
    """
    mpi, hc = _split_comm(comm)
    ctx = _context(mpi)
    tag = ctx.next_tag()
    rank, size = mpi.Get_rank(), mpi.Get_size()
    error, xp = None, np
    try:
        _check_array(x, "x")
        xp = array_module(x)
        _check_dtype(x.dtype, "sum", "x")
        _check_tuning(chunk_nbytes, window)
    except Exception as exc:  # noqa: BLE001 - agreed on below
        error = exc
    if error is None:
        shape = tuple(x.shape) if x.ndim else (1,)
        tail = shape[1:]
        mine = np.array([0, shape[0], _dtype_code(x.dtype), len(tail), zlib.crc32(repr(tail).encode())],
                        dtype=np.int64)
    else:
        mine = np.array([1, 0, 0, 0, 0], dtype=np.int64)
    table = np.empty((size, mine.size), dtype=np.int64)
    ctx.comm.Allgather(mine, table)
    if table[:, 0].any():
        agree(ctx.comm, error)
    if (table[:, 2:] != table[0, 2:]).any():
        rows = [f"rank {r}: dtype={_dtype_name(int(t[2]))}, trailing ndim={int(t[3])}"
                for r, t in enumerate(table)]
        detail = "" if error is not None else f" (this rank: shape {tuple(x.shape)}, dtype {x.dtype})"
        raise RingMismatchError("ring_allgather: ranks disagree on dtype or trailing shape "
                                f"(all but the first axis must match){detail}; " + "; ".join(rows))
    rows_per_rank = [int(t) for t in table[:, 1]]
    row = int(np.prod(tail)) if tail else 1
    counts = [m * row for m in rows_per_rank]
    displs = [0] * size
    for b in range(1, size):
        displs[b] = displs[b - 1] + counts[b - 1]
    result = xp.empty((sum(rows_per_rank),) + tail, dtype=x.dtype)
    dst = result.reshape(-1)
    dst[displs[rank]:displs[rank] + counts[rank]] = _flat(x)
    chunk = chunk_elements(chunk_nbytes, max(counts), x.dtype.itemsize)
    link = _make_link(ctx, hc, is_device_array(x), tag)
    ring = _Ring(link, xp, dst, dst, counts, displs, 0, size - 1, 0, None, chunk, window, rank, size)
    return RingRequest(ring, result)


def ring_allgather(comm, x, *, chunk_nbytes: Optional[int] = None, window: int = DEFAULT_WINDOW):
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
    return ring_allgather_start(comm, x, chunk_nbytes=chunk_nbytes, window=window).wait()


# --------------------------------------------------------------------------- gradient buckets


def ring_allreduce_bucket_start(comm, arrays: Sequence, op: Op = None, out: Optional[Sequence] = None, *,
                                chunk_nbytes: Optional[int] = None,
                                window: int = DEFAULT_WINDOW) -> RingRequest:
    """Start one fused ring allreduce of several arrays; ``wait()`` returns a list.

    Collective on ``comm``: every rank passes the same number of arrays with the same
    total element count and dtype. See :func:`ring_allreduce_bucket`.
    """
    error, flat, xp = None, None, np
    try:
        arrays = list(arrays)
        if not arrays:
            raise ValueError("arrays: expected at least one array")
        for i, a in enumerate(arrays):
            _check_array(a, f"arrays[{i}]")
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
                _check_out(o, a, xp, a.shape, a.dtype, f"out[{i}]")
        total = sum(int(a.size) for a in arrays)
        flat = xp.empty(total, dtype=dtype)
        pos = 0
        for a in arrays:
            flat[pos:pos + a.size] = a.reshape(-1)
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

    return _start_reduce(comm, flat, "sum" if op is None else op, flat, chunk_nbytes, window,
                         "ring_allreduce_bucket", scatter=False, pre_error=error, finish=scatter_back)


def ring_allreduce_bucket(comm, arrays: Sequence, op: Op = None, out: Optional[Sequence] = None, *,
                          chunk_nbytes: Optional[int] = None, window: int = DEFAULT_WINDOW) -> list:
    """Allreduce several arrays as one fused transfer (a gradient bucket).

    Collective on ``comm``: every rank passes arrays of one dtype whose total element
    count agrees across ranks (normally the same list of shapes). The arrays are copied
    into one flat buffer, reduced with one :func:`ring_allreduce` (one set of messages
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
    return ring_allreduce_bucket_start(comm, arrays, op, out, chunk_nbytes=chunk_nbytes, window=window).wait()

