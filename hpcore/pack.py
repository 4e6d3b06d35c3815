"""Pack and unpack (buffer, datatype, count) to the bytes MPI_Pack produces, on host or device."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .arrays import array_module, as_bytes, is_device_array
from .datatype import BlockSet, CanonicalType, OwnedDatatype, StridedBlock, TypeCache, canonicalize, to_mpi
from .lazy_mpi import mpi

__all__ = ["PackPlan", "plan", "pack", "unpack", "packed_nbytes"]


def _pow2_dividing(*values: int, cap: int = 16) -> int:
    """The largest power of two <= ``cap`` dividing every value (0 divides nothing away)."""
    g = 0
    for v in values:
        g = math.gcd(g, int(v))
    if g == 0:
        return cap
    w = g & -g
    return min(w, cap)


@dataclass(frozen=True)
class SetLayout:
    """Where a BlockSet's copies lie on one side: row ``idx[j]`` of a window that starts
    at byte ``base`` and advances ``step`` bytes per row (``rows`` rows)."""

    base: int
    step: int
    idx: np.ndarray
    rows: int


def _set_layout(starts: np.ndarray) -> SetLayout:
    base = int(starts.min())
    rel = starts - base
    step = int(np.gcd.reduce(rel)) if len(rel) > 1 else 1
    step = max(step, 1)
    idx = rel // step
    idx.flags.writeable = False
    return SetLayout(base, step, idx, int(idx.max()) + 1)


@dataclass(frozen=True, eq=False)
class Step:
    """One piece of a pack plan, with the widest word size that divides its layout.

    ``word`` [bytes] divides the run, every stride and every start offset (but not
    the base addresses, which the device path folds in at launch). For a BlockSet,
    ``buf_layout``/``packed_layout`` place its copies as rows of strided windows.
    """

    piece: Any  # StridedBlock or BlockSet
    word: int
    nbytes: int
    buf_layout: SetLayout | None = None
    packed_layout: SetLayout | None = None


@dataclass(frozen=True, eq=False)
class PackPlan:
    """What packing ``count`` instances of a canonical type does, independent of the buffer.

    ``lo``/``hi``: the byte range touched, relative to the origin; ``nbytes``: packed
    size. Both the host and the device executors run the same steps.
    """

    ctype: CanonicalType
    count: int
    steps: tuple
    nbytes: int
    lo: int
    hi: int
    device_state: dict
    host_state: dict = field(default_factory=dict)

    @property
    def host_engine(self) -> dict:
        """The host engine chosen so far per direction: ``{"pack"|"unpack": "numpy"|"mpi"}``."""
        return {k: v for k, v in self.host_state.items() if k in ("pack", "unpack")}


_PLANS = TypeCache(max_types=512)
"""(canonical type, count) -> :class:`PackPlan`: the plans own their cache (a plan holds its
type, so the cache is bounded: the oldest type's plans go first)."""


def plan(datatype, count: int = 1) -> PackPlan:
    """Return the (cached) :class:`PackPlan` for ``count`` instances of ``datatype``.

    Not collective. ``datatype`` is a committed mpi4py datatype or a
    :class:`~hpcore.datatype.CanonicalType`.
    """
    ctype = datatype if isinstance(datatype, CanonicalType) else canonicalize(datatype)
    if type(count) is not int:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise TypeError(f"count: expected an int, got {type(count).__name__}")
        count = int(count)
    if count < 0:
        raise ValueError(f"count: must be >= 0, got {count}")
    got = _PLANS.get(ctype, count)
    if got is None:
        steps = []
        for p in ctype.instances(count):
            if isinstance(p, BlockSet):
                t = p.template
                bl, pl_ = _set_layout(p.starts), _set_layout(p.packed_starts)
                w = _pow2_dividing(t.run, *t.strides[1:], *t.packed_strides[1:], bl.base, bl.step, pl_.base, pl_.step)
                steps.append(Step(p, w, p.nbytes, bl, pl_))
            else:
                w = _pow2_dividing(p.run, *p.strides[1:], *p.packed_strides[1:], p.start, p.packed_start)
                steps.append(Step(p, w, p.nbytes))
        lo, hi = ctype.span(count)
        got = PackPlan(ctype, count, tuple(steps), ctype.size * count, lo, hi, {})
        _PLANS.put(ctype, count, got)
    return got


def packed_nbytes(datatype, count: int = 1) -> int:
    """Bytes that ``count`` instances of ``datatype`` pack to. Not collective."""
    return plan(datatype, count).nbytes


# --------------------------------------------------------------------------- host


def _item(run: int) -> np.dtype:
    return np.dtype(f"u{run}") if run in (1, 2, 4, 8) else np.dtype(f"V{run}")


def _host_view(u8: np.ndarray, start: int, counts: tuple, strides: tuple) -> np.ndarray:
    """A view of ``u8`` with one item per run; outer dimensions slowest-first."""
    return np.ndarray(
        shape=counts[:0:-1], dtype=_item(counts[0]), buffer=u8, offset=start, strides=strides[:0:-1]
    )


def _host_window(mem: np.ndarray, lay: SetLayout, t: StridedBlock, strides: tuple) -> np.ndarray:
    return np.ndarray(
        shape=(lay.rows,) + t.counts[:0:-1],
        dtype=_item(t.run),
        buffer=mem,
        offset=lay.base,
        strides=(lay.step,) + strides[:0:-1],
    )


def _host_copy(pl: PackPlan, u8: np.ndarray, packed: np.ndarray, to_packed: bool) -> None:
    """The NumPy engine: one strided copy per strided block, one gather per BlockSet."""
    for st in pl.steps:
        p = st.piece
        if isinstance(p, BlockSet):
            t = p.template
            b = _host_window(u8, st.buf_layout, t, t.strides)
            q = _host_window(packed, st.packed_layout, t, t.packed_strides)
            if to_packed:
                q[st.packed_layout.idx] = b[st.buf_layout.idx]
            else:
                b[st.buf_layout.idx] = q[st.packed_layout.idx]
        elif p.ndim == 1:
            a, n = p.start, p.run
            if to_packed:
                packed[p.packed_start : p.packed_start + n] = u8[a : a + n]
            else:
                u8[a : a + n] = packed[p.packed_start : p.packed_start + n]
        else:
            b = _host_view(u8, p.start, p.counts, p.strides)
            q = _host_view(packed, p.packed_start, p.counts, p.packed_strides)
            if to_packed:
                np.copyto(q, b)
            else:
                np.copyto(b, q)


def _mpi_whole(pl: PackPlan, key: str, base_fn):
    """A committed type for ``count`` instances with extent 1 (so a 1-byte buffer is count 1)."""
    holder = pl.host_state.get(key)
    if holder is None:
        base, owned = base_fn()
        try:
            whole = base.Create_contiguous(pl.count)
        finally:
            if owned:
                base.Free()
        try:
            one = whole.Create_resized(0, 1).Commit()
        finally:
            whole.Free()
        holder = pl.host_state[key] = OwnedDatatype(one)
    return holder.datatype


def _mpi_run(datatype, u8: np.ndarray, packed: np.ndarray, to_packed: bool) -> None:
    # ``datatype`` has extent 1, so the 1-byte view at the origin is exactly count 1;
    # MPI reads/writes the typemap beyond it (the span was checked against u8). A
    # slice costs ~5 us less per call than MPI.buffer.fromaddress(u8.ctypes.data, 1).
    comm = mpi().COMM_SELF
    if to_packed:
        datatype.Pack(u8[:1], packed, 0, comm)
    else:
        datatype.Unpack(packed, 0, u8[:1], comm)


def _mpi_engine(pl: PackPlan, u8: np.ndarray, packed: np.ndarray, to_packed: bool) -> None:
    """MPI's own engine on the canonical type (flattened, widest words): one Pack/Unpack."""
    t = _mpi_whole(pl, "mpi_type", lambda: (to_mpi(pl.ctype), True))
    _mpi_run(t, u8, packed, to_packed)


def _mpi_source_engine(pl: PackPlan, u8: np.ndarray, packed: np.ndarray, to_packed: bool) -> None:
    """MPI's own engine on the caller's original datatype."""
    src = pl.ctype.source
    if src is None:  # a canonical form built from a view has no MPI original
        return _mpi_engine(pl, u8, packed, to_packed)
    t = _mpi_whole(pl, "mpi_source_type", lambda: (src.datatype, False))
    _mpi_run(t, u8, packed, to_packed)


_ENGINES = {"numpy": _host_copy, "mpi": _mpi_engine, "mpi_source": _mpi_source_engine}


HOST_ENGINE_ENV = "HPCORE_HOST_ENGINE"
"""``numpy``, ``mpi`` (MPI on the canonical type), ``mpi_source`` (MPI on the caller's
type) or ``auto`` (default: the fastest of those, timed on first use): the host engine."""


def _mpi_usable() -> bool:
    mpi = sys.modules.get("mpi4py.MPI")  # never initialize MPI behind the caller's back
    return mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized()


def _time_engines(pl: PackPlan, u8: np.ndarray, packed: np.ndarray, to_packed: bool) -> dict:
    """Median seconds per call of every host engine on this plan and these buffers.

    One untimed call each first (first touch, MPI's own type setup), then interleaved
    samples, so a burst of noise hits every engine: 5 samples, more (up to 25) while the
    slowest engine's samples stay under ~2 ms in all, since a 10 us copy is easily
    mistimed. Above 64 MiB the single untimed calls decide."""
    names = [n for n in _ENGINES if n != "mpi_source" or pl.ctype.source is not None]
    first = {}
    for n in names:
        t0 = time.perf_counter()
        _ENGINES[n](pl, u8, packed, to_packed)
        first[n] = time.perf_counter() - t0
    if pl.nbytes > (64 << 20):
        return first
    reps = int(min(25, max(5, 2e-3 / max(max(first.values()), 1e-7))))
    samples = {n: [] for n in names}
    for _ in range(reps):
        for n in names:
            t0 = time.perf_counter()
            _ENGINES[n](pl, u8, packed, to_packed)
            samples[n].append(time.perf_counter() - t0)
    return {n: float(np.median(v)) for n, v in samples.items()}


def _host_execute(pl: PackPlan, u8: np.ndarray, packed: np.ndarray, to_packed: bool) -> None:
    """Run the host engine chosen for this plan and direction, choosing it on first use.

    Both engines write the same bytes. ``auto`` times each on the first call (the
    faster wins for the plan's lifetime), like an FFT planner: measured, not assumed.
    """
    key = "pack" if to_packed else "unpack"
    engine = pl.host_state.get(key)
    if engine is None:
        choice = os.environ.get(HOST_ENGINE_ENV, "auto").strip().lower()
        if choice not in ("auto",) + tuple(_ENGINES):
            raise ValueError(f"{HOST_ENGINE_ENV}={choice!r}: expected auto, numpy, mpi or mpi_source")
        if choice != "numpy" and choice != "auto" and not _mpi_usable():
            raise ValueError(f"{HOST_ENGINE_ENV}={choice} but MPI is not initialized")
        if choice == "auto":
            if not _mpi_usable():
                choice = "numpy"
            else:
                times = _time_engines(pl, u8, packed, to_packed)
                choice = min(times, key=times.get)
                pl.host_state[key + "_times_s"] = times
        engine = pl.host_state[key] = choice
    _ENGINES[engine](pl, u8, packed, to_packed)


# --------------------------------------------------------------------------- API


def _check_span(pl: PackPlan, nbytes: int, what: str) -> None:
    if pl.nbytes == 0:
        return
    if pl.lo < 0 or pl.hi > nbytes:
        raise ValueError(
            f"{what}: buffer of {nbytes} bytes is too small for count={pl.count} of this datatype, "
            f"which touches bytes [{pl.lo}, {pl.hi}) from the buffer's first byte"
        )


def pack(buf, datatype, count: int = 1, out=None):
    """Pack ``count`` instances of ``datatype`` from ``buf`` into a 1-D uint8 array.

    Not collective. ``buf`` is a contiguous NumPy/CuPy array (or a bytes-like object)
    whose first byte is the datatype's origin. Returns ``out[:nbytes]`` when ``out``
    (a contiguous uint8 array on the same device, at least ``nbytes`` long) is given,
    else a new array on ``buf``'s device. The bytes equal ``MPI.Datatype.Pack`` of the
    same arguments. Device work is queued on the current CuPy stream; the caller
    synchronizes before handing the result to a non-stream-aware consumer.
    """
    pl = plan(datatype, count)
    src = as_bytes(buf, "buf", writable=False)
    _check_span(pl, src.nbytes, "pack")
    device = type(src) is not np.ndarray and is_device_array(src)
    dst = _out_bytes(out, pl.nbytes, src, device)
    if pl.nbytes == 0:
        return dst
    if device:
        from . import device_pack

        device_pack.execute(pl, src, dst, to_packed=True)
    else:
        _host_execute(pl, src, dst, True)
    return dst


def unpack(packed, buf, datatype, count: int = 1) -> None:
    """Scatter packed bytes into ``buf`` as ``count`` instances of ``datatype``.

    Not collective. The inverse of :func:`pack`: ``packed`` is a uint8 array (or
    bytes-like) of at least ``nbytes`` bytes on ``buf``'s device; ``buf`` a writable
    contiguous array whose first byte is the datatype's origin. Bytes of ``buf`` that
    the datatype does not touch are left unchanged.
    """
    pl = plan(datatype, count)
    dst = as_bytes(buf, "buf", writable=True)
    _check_span(pl, dst.nbytes, "unpack")
    src = as_bytes(packed, "packed", writable=False)
    if is_device_array(src) != is_device_array(dst):
        raise ValueError("unpack: packed and buf must both be host arrays or both be device arrays")
    if src.nbytes < pl.nbytes:
        raise ValueError(f"unpack: packed has {src.nbytes} bytes, count={pl.count} of this datatype needs {pl.nbytes}")
    if pl.nbytes == 0:
        return
    src = src[: pl.nbytes]
    if is_device_array(dst):
        from . import device_pack

        device_pack.execute(pl, dst, src, to_packed=False)
    else:
        _host_execute(pl, dst, src, False)


def _out_bytes(out, nbytes: int, like, device: bool):
    if out is None:
        if device:
            xp = array_module(like)
            with like.device:
                return xp.empty(nbytes, dtype=xp.uint8)
        return np.empty(nbytes, dtype=np.uint8)
    o = as_bytes(out, "out", writable=True)
    if not device and type(o) is np.ndarray:
        if o.nbytes < nbytes:
            raise ValueError(f"out: has {o.nbytes} bytes, the packed data needs {nbytes}")
        return o if o.nbytes == nbytes else o[:nbytes]
    if (type(o) is not np.ndarray and is_device_array(o)) != device:
        raise ValueError("out: must be on the same device as buf (host vs device mismatch)")
    if device and o.device != like.device:
        raise ValueError(f"out: is on device {o.device.id}, buf on device {like.device.id}")
    if o.nbytes < nbytes:
        raise ValueError(f"out: has {o.nbytes} bytes, the packed data needs {nbytes}")
    return o[:nbytes]
