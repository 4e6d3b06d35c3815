"""Device pack/unpack: CuPy kernels specialised by dimension count and word size, memcpy for large runs.

The launch list is plain data computed by :func:`launches`; :func:`execute` runs it
with CuPy and :func:`emulate` runs the same list with the kernels' index arithmetic
in NumPy, so the planning and indexing are tested on machines without a GPU.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from .datatype import BlockSet

__all__ = ["Launch", "launches", "execute", "emulate", "MAX_KERNEL_DIMS", "MEMCPY_MIN_RUN"]

MAX_KERNEL_DIMS = 6
"""Kernels are instantiated for 1..MAX_KERNEL_DIMS dimensions; deeper blocks loop outside."""

MEMCPY_MIN_RUN = 8192
"""Runs of at least this many bytes [bytes] are copied with cudaMemcpy2DAsync, not a kernel."""

MEMCPY_MAX_CALLS = 64
"""At most this many memcpy calls per piece; beyond, a kernel is launched instead."""

_WORD_TYPES = {1: "unsigned char", 2: "unsigned short", 4: "unsigned int", 8: "unsigned long long", 16: "uint4"}


@dataclass(frozen=True)
class Launch:
    """One device operation, in bytes relative to the source and destination bases.

    ``kind`` "kernel": copy ``total`` words of ``word`` bytes; word ``t`` has digits
    ``i_k`` of ``t`` in base ``counts`` (``counts[0]`` words per run) and moves from
    ``src_start + sum i_k src_strides[k]`` to ``dst_start + sum i_k dst_strides[k]``
    (``src_strides[0] == dst_strides[0] == word``). With ``src_set``/``dst_set``,
    copy ``j`` of the block adds ``src_set[j]``/``dst_set[j]`` and ``total`` counts all.
    ``kind`` "memcpy2d": ``height`` rows of ``width`` bytes at pitches.
    """

    kind: str
    word: int
    counts: tuple
    src_strides: tuple
    dst_strides: tuple
    src_start: int
    dst_start: int
    total: int
    src_set: np.ndarray | None = None
    dst_set: np.ndarray | None = None
    width: int = 0
    height: int = 0


def _align(ptr: int) -> int:
    return ptr & -ptr if ptr else 16


def _outer_indices(counts: tuple, limit: int):
    """Outer index tuples of ``counts`` (all of them), or None if more than ``limit``."""
    n = math.prod(counts)
    if n > limit:
        return None
    return list(np.ndindex(*counts[::-1]))


def launches(pl, src_ptr: int, dst_ptr: int, to_packed: bool) -> list:
    """The device operations that pack (``to_packed``) or unpack plan ``pl``.

    ``src_ptr``/``dst_ptr`` are the base addresses (only their alignment matters):
    the word size of each kernel is the plan's word for the step, reduced to what
    both base addresses are aligned to.
    """
    base_align = min(_align(src_ptr), _align(dst_ptr), 16)
    out: list = []
    for st in pl.steps:
        p = st.piece
        word = min(st.word, base_align)
        t = p.template if isinstance(p, BlockSet) else p
        if to_packed:
            s_str, d_str = t.strides, t.packed_strides
            s0, d0 = (0, 0) if isinstance(p, BlockSet) else (p.start, p.packed_start)
            s_set, d_set = (p.starts, p.packed_starts) if isinstance(p, BlockSet) else (None, None)
        else:
            s_str, d_str = t.packed_strides, t.strides
            s0, d0 = (0, 0) if isinstance(p, BlockSet) else (p.packed_start, p.start)
            s_set, d_set = (p.packed_starts, p.starts) if isinstance(p, BlockSet) else (None, None)
        run = t.counts[0]
        if run >= MEMCPY_MIN_RUN:
            got = _memcpy_launches(t.counts, s_str, d_str, s0, d0, s_set, d_set)
            if got is not None:
                out.extend(got)
                continue
        counts = (run // word,) + t.counts[1:]
        s_str = (word,) + tuple(s_str[1:])
        d_str = (word,) + tuple(d_str[1:])
        # Dimensions beyond MAX_KERNEL_DIMS are looped over here, one launch each.
        inner_nd = min(len(counts), MAX_KERNEL_DIMS)
        outer = counts[inner_nd:]
        inner_total = math.prod(counts[:inner_nd])
        nset = 1 if s_set is None else len(s_set)
        for idx in np.ndindex(*outer[::-1]) if outer else [()]:
            idx = idx[::-1]
            ds = sum(i * s for i, s in zip(idx, s_str[inner_nd:]))
            dd = sum(i * s for i, s in zip(idx, d_str[inner_nd:]))
            out.append(
                Launch(
                    "kernel", word, counts[:inner_nd], s_str[:inner_nd], d_str[:inner_nd],
                    s0 + ds, d0 + dd, inner_total * nset, s_set, d_set,
                )
            )
    return out


def _memcpy_launches(counts, s_str, d_str, s0, d0, s_set, d_set):
    run = counts[0]
    if len(counts) == 1:
        rows, s_pitch, d_pitch, outer_c, outer_s, outer_d = 1, run, run, (), (), ()
    else:
        rows, s_pitch, d_pitch = counts[1], s_str[1], d_str[1]
        outer_c, outer_s, outer_d = counts[2:], s_str[2:], d_str[2:]
        if s_pitch < run or d_pitch < run:  # cudaMemcpy2D needs pitch >= width
            return None
    offsets = [(0, 0)] if s_set is None else list(zip(s_set.tolist(), d_set.tolist()))
    outer = _outer_indices(outer_c, MEMCPY_MAX_CALLS)
    if outer is None or len(outer) * len(offsets) > MEMCPY_MAX_CALLS:
        return None
    out = []
    for so, do in offsets:
        for idx in outer:
            idx = idx[::-1]
            ds = sum(i * s for i, s in zip(idx, outer_s))
            dd = sum(i * s for i, s in zip(idx, outer_d))
            out.append(
                Launch("memcpy2d", 1, (), (s_pitch,), (d_pitch,), s0 + so + ds, d0 + do + dd, run * rows,
                       width=run, height=rows)
            )
    return out


# --------------------------------------------------------------------------- emulation


def emulate(pl, src: np.ndarray, dst: np.ndarray, to_packed: bool, src_ptr: int | None = None,
            dst_ptr: int | None = None) -> None:
    """Run the device launch list on host uint8 arrays with the kernels' index arithmetic.

    Not collective. ``src_ptr``/``dst_ptr`` pretend other base addresses (to exercise
    the word-size choice); they default to the arrays' own addresses.
    """
    sp = src.ctypes.data if src_ptr is None else src_ptr
    dp = dst.ctypes.data if dst_ptr is None else dst_ptr
    for ln in launches(pl, sp, dp, to_packed):
        if ln.kind == "memcpy2d":
            for r in range(ln.height):
                a = ln.src_start + r * ln.src_strides[0]
                b = ln.dst_start + r * ln.dst_strides[0]
                dst[b : b + ln.width] = src[a : a + ln.width]
            continue
        t = np.arange(ln.total, dtype=np.int64)
        per = math.prod(ln.counts)
        j, rest = np.divmod(t, per)
        so = np.full_like(t, ln.src_start)
        do = np.full_like(t, ln.dst_start)
        for k, c in enumerate(ln.counts):
            rest, i = np.divmod(rest, c)
            if k == 0:
                so += i * ln.word
                do += i * ln.word
            else:
                so += i * ln.src_strides[k]
                do += i * ln.dst_strides[k]
        if ln.src_set is not None:
            so += ln.src_set[j]
            do += ln.dst_set[j]
        if ((so % ln.word) != 0).any() or ((do % ln.word) != 0).any():
            raise AssertionError("emulate: misaligned word access")
        byte = np.arange(ln.word, dtype=np.int64)
        dst[(do[:, None] + byte).ravel()] = src[(so[:, None] + byte).ravel()]


# --------------------------------------------------------------------------- CuPy

_KERNEL_SOURCE = r"""
template <typename T, int ND>
__global__ void hp_copy(const unsigned char* __restrict__ src, unsigned char* __restrict__ dst,
                        long long src_start, long long dst_start, const long long* __restrict__ dims,
                        long long per_copy, long long total,
                        const long long* __restrict__ src_set, const long long* __restrict__ dst_set)
{
    // dims = [counts[0..ND), src_strides[0..ND), dst_strides[0..ND)], strides in bytes.
    long long counts[ND], ss[ND], ds[ND];
#pragma unroll
    for (int k = 0; k < ND; ++k) { counts[k] = dims[k]; ss[k] = dims[ND + k]; ds[k] = dims[2 * ND + k]; }
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += step) {
        long long j = t / per_copy;
        long long rest = t - j * per_copy;
        long long so = src_start, dof = dst_start;
        if (src_set != nullptr) { so += src_set[j]; dof += dst_set[j]; }
#pragma unroll
        for (int k = 0; k < ND; ++k) {
            long long i = rest % counts[k];
            rest /= counts[k];
            so += i * ss[k];
            dof += i * ds[k];
        }
        *reinterpret_cast<T*>(dst + dof) = *reinterpret_cast<const T*>(src + so);
    }
}
"""

_module_lock = threading.Lock()
_modules: dict = {}


def _kernel(cupy, word: int, nd: int):
    dev = cupy.cuda.Device().id
    with _module_lock:
        mod = _modules.get(dev)
        if mod is None:
            names = [f"hp_copy<{_WORD_TYPES[w]}, {d}>" for w in _WORD_TYPES for d in range(1, MAX_KERNEL_DIMS + 1)]
            mod = cupy.RawModule(code=_KERNEL_SOURCE, options=("-std=c++14",), name_expressions=names)
            _modules[dev] = mod
    return mod.get_function(f"hp_copy<{_WORD_TYPES[word]}, {nd}>")


def execute(pl, buf, packed, to_packed: bool) -> None:
    """Pack (``to_packed``) from device ``buf`` into device ``packed``, or unpack.

    Not collective. Both are flat CuPy uint8 arrays on the current device; work is
    queued on the current stream.
    """
    import cupy

    src, dst = (buf, packed) if to_packed else (packed, buf)
    sp, dp = int(src.data.ptr), int(dst.data.ptr)
    stream = cupy.cuda.get_current_stream()
    cache = pl.device_state
    key = (cupy.cuda.Device().id, sp & 15, dp & 15, to_packed)
    prepared = cache.get(key)
    if prepared is None:
        prepared = []
        for ln in launches(pl, sp, dp, to_packed):
            if ln.kind == "memcpy2d":
                prepared.append((ln, None, None, None))
                continue
            dims = cupy.asarray(np.array(ln.counts + ln.src_strides + ln.dst_strides, dtype=np.int64))
            sset = None if ln.src_set is None else cupy.asarray(ln.src_set)
            dset = None if ln.dst_set is None else cupy.asarray(ln.dst_set)
            prepared.append((ln, dims, sset, dset))
        cache[key] = prepared
    kind = cupy.cuda.runtime.memcpyDeviceToDevice
    for ln, dims, sset, dset in prepared:
        if ln.kind == "memcpy2d":
            cupy.cuda.runtime.memcpy2DAsync(
                dp + ln.dst_start, ln.dst_strides[0], sp + ln.src_start, ln.src_strides[0],
                ln.width, ln.height, kind, stream.ptr,
            )
            continue
        fn = _kernel(cupy, ln.word, len(ln.counts))
        threads = 256
        blocks = max(1, min((ln.total + threads - 1) // threads, 65535))
        per = math.prod(ln.counts)
        null = 0
        fn(
            (blocks,), (threads,),
            (src, dst, np.int64(ln.src_start), np.int64(ln.dst_start), dims, np.int64(per), np.int64(ln.total),
             sset if sset is not None else np.uintp(null), dset if dset is not None else np.uintp(null)),
            stream=stream,
        )
