"""The ring engine: per-communicator context, transport links, the pipelined ring schedule and its request handles.

:mod:`comms.ring` (the public collectives), :mod:`comms.ring_attention` and
:mod:`comms.hierarchy` build on these names. Nothing here agrees across ranks: the
callers check and agree on their arguments (:func:`hpcore.agree`) before they start
a :class:`RingSchedule`. Importing this module does no MPI work.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

import numpy as np

from hpcore.arrays import array_module, is_device_array
from hpcore.boundary import as_comm
from hpcore.errors import MismatchError
from hpcore.lazy_mpi import mpi as _mpi
from hpcore.staging import BufferPool

__all__ = [
    "MIN_CHUNK_NBYTES",
    "MAX_CHUNK_NBYTES",
    "DEFAULT_WINDOW",
    "UFUNCS",
    "RingMismatchError",
    "RingContext",
    "RingRequest",
    "RingSchedule",
    "HostLink",
    "StagedLink",
    "ring_blocks",
    "chunk_elements",
    "check_array",
    "check_numeric_dtype",
    "check_out",
    "check_tuning",
    "flat",
    "ring_context",
    "split_comm",
    "make_link",
]

MIN_CHUNK_NBYTES = 1 << 20
MAX_CHUNK_NBYTES = 1 << 22
"""Bounds of the automatic pipeline chunk [bytes] (``chunk_nbytes=None``): an eighth of a ring
block, at least 1 MiB and at most 4 MiB. Each chunk is one message; on shared-memory MPICH a
large message costs a rendezvous of some 20-50 us, which smaller chunks do not earn back
(measured with ``python -m benchmarks allreduce``)."""

DEFAULT_WINDOW = 3
"""Receives posted ahead of the one being reduced (each reduce step holds one chunk buffer per receive)."""

UFUNCS = {"sum": "add", "prod": "multiply", "max": "maximum", "min": "minimum"}
"""The array-module ufunc of each op name (:func:`hpcore.as_op`)."""

_POOL = BufferPool()  # chunk receive buffers, reused across calls (no fresh pages to fault in per call)


class RingMismatchError(MismatchError):
    """Ranks called a ring collective with different sizes, dtypes, ops or settings (raised on every rank)."""

    hint = ("every rank must make the same ring call with the same element count (ring_allgather: trailing shape), "
            "dtype, op and settings")


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


def check_tuning(chunk_nbytes, window) -> None:
    """``chunk_nbytes`` None or >= 1 [bytes], ``window`` >= 1; ``ValueError`` otherwise. Not collective."""
    if chunk_nbytes is not None and int(chunk_nbytes) < 1:
        raise ValueError(f"chunk_nbytes: expected None or >= 1 [bytes], got {chunk_nbytes}")
    if int(window) < 1:
        raise ValueError(f"window: expected >= 1, got {window}")


def check_numeric_dtype(dtype, op: str, name: str) -> None:
    """A native-order integer, unsigned, float or complex dtype that ``op`` is defined for. Not collective."""
    if dtype.kind not in "iufc":
        raise TypeError(f"{name}: ring collectives need a numeric dtype (integer, unsigned, float or complex), "
                        f"got {dtype}")
    if not dtype.isnative:
        raise TypeError(f"{name}: dtype {dtype} is not in native byte order; "
                        f"convert with .astype({dtype.newbyteorder('=')})")
    if dtype.kind == "c" and op in ("max", "min"):
        raise ValueError(f"op: {op.upper()} is not defined for complex dtype {dtype} (as in MPI)")


def check_array(x, name: str) -> None:
    """``x`` is a NumPy or CuPy array; ``TypeError`` naming ``name`` otherwise. Not collective."""
    if not (isinstance(x, np.ndarray) or is_device_array(x)):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(x).__name__}")


def check_out(out, x, xp, shape, dtype, name: str = "out") -> None:
    """``out`` must be a writable C-contiguous array of ``shape``/``dtype`` where ``x`` lives."""
    check_array(out, name)
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


def flat(a):
    """A flat view of a C-contiguous array (a contiguous copy otherwise)."""
    xp = array_module(a)
    if not a.flags.c_contiguous:
        a = xp.ascontiguousarray(a)
    return a.reshape(-1)


# --------------------------------------------------------------------------- per-communicator context


class RingContext:
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
        """A tag for the next operation on this communicator (distinct for concurrent operations)."""
        self.seq += 1
        return 1 + self.seq % self.tag_ub

    def transport(self, hc=None):
        """``hc``, or an ``hpcore.Comm`` over the private duplicate (made on first use) for staged device links."""
        if hc is not None:
            return hc
        if self._hc is None:
            import hpcore

            self._hc = hpcore.Comm(self.comm)
        return self._hc

    def free(self) -> None:
        """Free the private duplicate; safe to call twice. Not collective (called when ``comm`` is freed)."""
        comm, self.comm = self.comm, None
        if comm is not None:
            try:
                comm.Free()
            except Exception:  # noqa: BLE001 - MPI may already be finalizing
                pass


_KEYVAL = None


def _delete_context(comm, keyval, ctx):  # MPI attribute delete callback
    ctx.free()


def ring_context(comm) -> RingContext:
    """The ring context cached on ``comm`` (created on first use: collective, as every
    ring call is; freed when ``comm`` is freed)."""
    global _KEYVAL
    if _KEYVAL is None:
        _KEYVAL = _mpi().Comm.Create_keyval(delete_fn=_delete_context)
    ctx = comm.Get_attr(_KEYVAL)
    if ctx is None:
        ctx = RingContext(comm.Dup())
        comm.Set_attr(_KEYVAL, ctx)
    return ctx


def split_comm(comm):
    """``(mpi_comm, hpcore_comm_or_None)`` from an mpi4py intracommunicator or an ``hpcore.Comm``."""
    mpi = as_comm(comm)
    return mpi, (None if mpi is comm else comm)


# --------------------------------------------------------------------------- transport of flat chunks


class HostLink:
    """Byte messages of host (or CUDA-aware device) arrays straight through mpi4py."""

    def __init__(self, comm, tag: int, left: int, right: int):
        self._byte = _mpi().BYTE
        self._comm, self._tag, self.left, self.right = comm, tag, left, right

    def isend(self, buf):
        """Start sending ``buf`` to the right neighbour; returns an mpi4py request."""
        return self._comm.Isend([buf, self._byte], self.right, self._tag)

    def irecv(self, buf):
        """Start receiving into ``buf`` from the left neighbour; returns an mpi4py request."""
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


class StagedLink:
    """Device arrays without CUDA-aware MPI: staged through pinned host memory by ``hpcore.Comm``."""

    def __init__(self, hc, tag: int, left: int, right: int):
        self._hc, self._tag, self.left, self.right = hc, tag, left, right

    def isend(self, buf):
        """Start sending ``buf`` (staged) to the right neighbour; returns a request with ``Test``/``Wait``."""
        return _WrappedRequest(self._hc.isend(buf, self.right, self._tag))

    def irecv(self, buf):
        """Start receiving into ``buf`` (staged) from the left neighbour; returns a request with ``Test``/``Wait``."""
        return _WrappedRequest(self._hc.irecv(buf, self.left, self._tag))


def make_link(ctx: RingContext, hc, device: bool, tag: int):
    """The link to this rank's ring neighbours for buffers on the host or the device. Not collective.

    Device buffers go straight to MPI when it is CUDA-aware (``hc.cuda_aware``, else
    detected), otherwise through ``hpcore.Comm``'s pinned staging (:class:`StagedLink`).
    """
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
            return StagedLink(ctx.transport(hc), tag, left, right)
    return HostLink(comm, tag, left, right)


# --------------------------------------------------------------------------- the pipelined ring


class RingSchedule:
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

    def __init__(self, ring: Optional[RingSchedule], result, finish=None):
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
