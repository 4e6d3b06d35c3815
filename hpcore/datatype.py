"""Canonical form of MPI derived datatypes: strided blocks in bytes, in typemap order (after TEMPI)."""

from __future__ import annotations

import math
import sys
import threading
import weakref
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence, Union

import numpy as np

__all__ = [
    "StridedBlock",
    "BlockSet",
    "CanonicalType",
    "TypeCache",
    "canonicalize",
    "from_view",
    "to_mpi",
]

# A BlockSet is only worth its arrays when it replaces at least this many blocks.
_BLOCKSET_MIN = 4


@dataclass(frozen=True)
class StridedBlock:
    """A strided block of bytes and where its bytes go in the packed stream.

    Dimension 0 is the contiguous run: ``counts[0]`` bytes with unit stride in the
    buffer and in the packed stream. Byte ``(i0, i1, ...)`` of the block lies at
    ``start + sum(i_k * strides[k])`` from the datatype's origin and is packed at
    ``packed_start + sum(i_k * packed_strides[k])``. Strides may be negative (buffer
    side) and all offsets are Python ints (64-bit safe). Because packed positions are
    explicit, a list of blocks keeps MPI's typemap order without ever reordering.
    """

    start: int
    counts: tuple
    strides: tuple
    packed_start: int
    packed_strides: tuple

    @property
    def ndim(self) -> int:
        """Number of dimensions (dimension 0 is the contiguous run)."""
        return len(self.counts)

    @property
    def run(self) -> int:
        """Length of the contiguous run [bytes]."""
        return self.counts[0]

    @property
    def nbytes(self) -> int:
        """Bytes this piece packs."""
        return math.prod(self.counts)

    @property
    def packed_dense(self) -> bool:
        """True when the block's bytes occupy one contiguous range of the packed stream in order."""
        acc = 1
        for c, ps in zip(self.counts, self.packed_strides):
            if c > 1 and ps != acc:
                return False
            acc *= c
        return True

    def span(self) -> tuple[int, int]:
        """``(lo, hi)``: the half-open byte range the block touches in the buffer."""
        lo = hi = self.start
        for c, s in zip(self.counts, self.strides):
            if s >= 0:
                hi += (c - 1) * s
            else:
                lo += (c - 1) * s
        return lo, hi + 1

    def packed_span(self) -> tuple[int, int]:
        """``(lo, hi)`` byte range this piece fills in the packed stream."""
        hi = self.packed_start + sum((c - 1) * s for c, s in zip(self.counts, self.packed_strides))
        return self.packed_start, hi + 1

    def shifted(self, dsrc: int, dpacked: int) -> "StridedBlock":
        """The same piece moved by ``dsrc`` bytes in the buffer and ``dpacked`` in the packed stream."""
        return replace(self, start=self.start + dsrc, packed_start=self.packed_start + dpacked)

    def repeated(self, count: int, stride: int, packed_stride: int) -> "StridedBlock":
        """The block repeated ``count`` times as a new outermost dimension."""
        return StridedBlock(
            self.start,
            self.counts + (count,),
            self.strides + (stride,),
            self.packed_start,
            self.packed_strides + (packed_stride,),
        )


@dataclass(frozen=True, eq=False)
class BlockSet:
    """One block shape placed at many irregular offsets (an indexed type's entries).

    ``template`` has ``start == packed_start == 0``; copy ``j`` lies at
    ``starts[j]`` in the buffer and ``packed_starts[j]`` in the packed stream.
    ``starts`` and ``packed_starts`` are read-only int64 arrays of equal length.
    """

    template: StridedBlock
    starts: np.ndarray
    packed_starts: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes this piece packs."""
        return self.template.nbytes * len(self.starts)

    @property
    def ndim(self) -> int:
        """Number of dimensions (dimension 0 is the contiguous run)."""
        return self.template.ndim

    def span(self) -> tuple[int, int]:
        """``(lo, hi)`` byte range this piece reads in the buffer."""
        lo, hi = self.template.span()
        return int(self.starts.min()) + lo, int(self.starts.max()) + hi

    def packed_span(self) -> tuple[int, int]:
        """``(lo, hi)`` byte range this piece fills in the packed stream."""
        lo, hi = self.template.packed_span()
        return int(self.packed_starts.min()) + lo, int(self.packed_starts.max()) + hi

    def shifted(self, dsrc: int, dpacked: int) -> "BlockSet":
        """The same piece moved by ``dsrc`` bytes in the buffer and ``dpacked`` in the packed stream."""
        return _blockset(self.template, self.starts + dsrc, self.packed_starts + dpacked)

    def repeated(self, count: int, stride: int, packed_stride: int) -> "BlockSet":
        """``count`` copies, ``stride`` bytes apart in the buffer and ``packed_stride`` in the stream."""
        return BlockSet(self.template.repeated(count, stride, packed_stride), self.starts, self.packed_starts)

    def blocks(self):
        """Yield the set as individual :class:`StridedBlock` (for slow paths and tests)."""
        for s, p in zip(self.starts.tolist(), self.packed_starts.tolist()):
            yield self.template.shifted(s, p)


Piece = Union[StridedBlock, BlockSet]


def _blockset(template: StridedBlock, starts, packed_starts) -> BlockSet:
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    packed_starts = np.ascontiguousarray(packed_starts, dtype=np.int64)
    starts.flags.writeable = False
    packed_starts.flags.writeable = False
    return BlockSet(template, starts, packed_starts)


class TypeCache:
    """Values derived from canonical types, keyed by the type's identity. Not collective.

    Each module that derives something from a :class:`CanonicalType` (its repeated
    pieces, pack plans, the performance model's mean run) owns one of these, so the
    value type stays a plain frozen value. An entry is dropped when its type is
    collected. Values that hold their type (a pack plan holds its ``ctype``) would keep
    it alive: such caches give ``max_types``, and the oldest type's entries are dropped
    beyond it; and every cache forgets a type built from an MPI datatype when MPI
    deletes that datatype's attributes (:meth:`forget_everywhere`; MPICH does so only
    once no derived type, such as the canonical form's own duplicate, refers to it).
    Lookups cost one dict access.
    """

    _all: weakref.WeakSet = weakref.WeakSet()

    def __init__(self, max_types: int | None = None):
        self._by_type: dict = {}
        self.max_types = max_types
        TypeCache._all.add(self)

    @classmethod
    def forget_everywhere(cls, ctype) -> None:
        """Drop ``ctype``'s entries from every cache (its MPI datatype was freed)."""
        for cache in list(cls._all):
            cache._by_type.pop(id(ctype), None)

    def get(self, ctype, key):
        """The value stored for ``(ctype, key)``, or None."""
        got = self._by_type.get(id(ctype))
        return None if got is None else got.get(key)

    def put(self, ctype, key, value) -> None:
        """Store ``value`` for ``(ctype, key)``."""
        got = self._by_type.get(id(ctype))
        if got is None:
            if self.max_types is not None and len(self._by_type) >= self.max_types:
                del self._by_type[next(iter(self._by_type))]  # the oldest type's entries
            got = self._by_type[id(ctype)] = {}
            weakref.finalize(ctype, self._drop, id(ctype), got)
        got[key] = value

    def _drop(self, key: int, entries: dict) -> None:
        if self._by_type.get(key) is entries:  # not an entry of a later type with the same id
            del self._by_type[key]

    def clear(self) -> None:
        """Drop every entry."""
        self._by_type.clear()

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_type.values())


_INSTANCES = TypeCache()  # (type, count) -> the pieces of count consecutive instances


@dataclass(frozen=True, eq=False)
class CanonicalType:
    """The canonical form of one instance of a datatype.

    ``pieces`` (StridedBlock or BlockSet) in typemap order; ``size`` packed bytes per
    instance; ``lb``/``extent`` and ``true_lb``/``true_extent`` as MPI defines them
    [bytes]. Instance ``i`` of a count lies ``i * extent`` bytes from the origin and
    is packed ``i * size`` bytes into the stream.
    """

    pieces: tuple
    size: int
    lb: int
    extent: int
    true_lb: int
    true_extent: int
    source: object = field(default=None, repr=False, compare=False)
    """The :class:`OwnedDatatype` this form was built from (MPI's own engine packs with it);
    None for forms built from a view."""

    @property
    def nblocks(self) -> int:
        """Number of contiguous runs per instance (what a per-element list would hold)."""
        total = 0
        for p in self.pieces:
            t = p.template if isinstance(p, BlockSet) else p
            total += math.prod(t.counts[1:]) * (len(p.starts) if isinstance(p, BlockSet) else 1)
        return total

    @property
    def is_contiguous(self) -> bool:
        """True when one instance is ``size`` bytes packed in place (one run from ``true_lb``)."""
        if self.size == 0:
            return True
        if len(self.pieces) != 1 or not isinstance(self.pieces[0], StridedBlock):
            return False
        b = self.pieces[0]
        return b.ndim == 1 and b.packed_start == 0

    def instances(self, count: int) -> tuple:
        """The pieces of ``count`` consecutive instances, simplified (cached per count)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        got = _INSTANCES.get(self, count)
        if got is None:
            if count == 0 or self.size == 0:
                got = ()
            elif count == 1:
                got = self.pieces
            else:
                got = simplify(p.repeated(count, self.extent, self.size) for p in self.pieces)
            _INSTANCES.put(self, count, got)
        return got

    def span(self, count: int = 1) -> tuple[int, int]:
        """``(lo, hi)`` bytes from the origin that ``count`` instances touch (``(0, 0)`` if none)."""
        if count <= 0 or self.size == 0:
            return 0, 0
        lo = self.true_lb + min(0, (count - 1) * self.extent)
        hi = self.true_lb + self.true_extent + max(0, (count - 1) * self.extent)
        return lo, hi

    def describe(self) -> str:
        """A short human-readable summary of the pieces."""
        parts = []
        for p in self.pieces:
            if isinstance(p, BlockSet):
                t = p.template
                parts.append(f"set[{len(p.starts)}] x counts={t.counts} strides={t.strides}")
            else:
                parts.append(f"@{p.start} counts={p.counts} strides={p.strides} -> {p.packed_start}")
        return f"size={self.size} extent={self.extent} lb={self.lb}: " + "; ".join(parts)


# --------------------------------------------------------------------------- simplify


def _normalize(b: StridedBlock) -> StridedBlock | None:
    """Drop count-1 dimensions and merge dimensions whose strides nest exactly."""
    if any(c == 0 for c in b.counts):
        return None
    counts = [b.counts[0]]
    strides = [1]
    pstrides = [1]
    for c, s, ps in zip(b.counts[1:], b.strides[1:], b.packed_strides[1:]):
        if c == 1:
            continue
        if s == counts[-1] * strides[-1] and ps == counts[-1] * pstrides[-1]:
            counts[-1] *= c
            continue
        counts.append(c)
        strides.append(s)
        pstrides.append(ps)
    return StridedBlock(b.start, tuple(counts), tuple(strides), b.packed_start, tuple(pstrides))


def _same_shape(a: StridedBlock, b: StridedBlock) -> bool:
    return a.counts == b.counts and a.strides == b.strides and a.packed_strides == b.packed_strides


def _extend(a: StridedBlock, b: StridedBlock) -> StridedBlock | None:
    """Merge ``b`` into ``a`` when ``b`` continues ``a`` along ``a``'s outermost dimension."""
    n = a.ndim
    last_s, last_ps, last_c = a.strides[-1], a.packed_strides[-1], a.counts[-1]
    if (
        b.ndim == n
        and b.counts[:-1] == a.counts[:-1]
        and b.strides == a.strides
        and b.packed_strides == a.packed_strides
        and b.start == a.start + last_c * last_s
        and b.packed_start == a.packed_start + last_c * last_ps
    ):
        return replace(a, counts=a.counts[:-1] + (last_c + b.counts[-1],))
    if (
        n >= 2
        and b.ndim == n - 1
        and b.counts == a.counts[:-1]
        and b.strides == a.strides[:-1]
        and b.packed_strides == a.packed_strides[:-1]
        and b.start == a.start + last_c * last_s
        and b.packed_start == a.packed_start + last_c * last_ps
    ):
        return replace(a, counts=a.counts[:-1] + (last_c + 1,))
    return None


def _simplify_set(bs: BlockSet) -> list:
    """A BlockSet becomes strided blocks where its offsets form long progressions."""
    t = _normalize(bs.template)
    n = len(bs.starts)
    if t is None or n == 0:
        return []
    if n == 1:
        return [t.shifted(int(bs.starts[0]), int(bs.packed_starts[0]))]
    ds = np.diff(bs.starts)
    dp = np.diff(bs.packed_starts)
    # Diff index k links copies k and k+1; equal consecutive diffs form one progression.
    breaks = np.flatnonzero((ds[1:] != ds[:-1]) | (dp[1:] != dp[:-1])) + 1
    if len(breaks) + 1 > max(1, n // (2 * _BLOCKSET_MIN)) and n >= _BLOCKSET_MIN:
        return [BlockSet(t, bs.starts, bs.packed_starts)]
    ends = np.append(breaks, n - 1).tolist()
    s, p = bs.starts, bs.packed_starts
    out: list = []
    i = r = 0
    while i < n:
        b = t.shifted(int(s[i]), int(p[i]))
        if i == n - 1:
            out.append(b)
            break
        while ends[r] <= i:
            r += 1
        j = ends[r]
        out.append(_normalize(b.repeated(j - i + 1, int(ds[i]), int(dp[i]))))
        i = j + 1
    return _extend_pass(out)


def _extend_pass(blocks: list) -> list:
    """Merge each strided block into its predecessor where it continues it."""
    out: list = []
    for b in blocks:
        if out and isinstance(out[-1], StridedBlock) and isinstance(b, StridedBlock):
            m = _extend(out[-1], b)
            if m is not None:
                out[-1] = _normalize(m)
                continue
        out.append(b)
    return out


def simplify(pieces: Iterable[Piece]) -> tuple:
    """Simplify a piece list without changing any byte's buffer or packed position.

    Normalizes each block, merges blocks that continue one another, turns runs of
    same-shape blocks into one block with an outer dimension where their offsets
    form progressions, and into a :class:`BlockSet` where they do not.
    """
    flat: list = []
    for p in pieces:
        if isinstance(p, BlockSet):
            flat.extend(_simplify_set(p))
        else:
            nb = _normalize(p)
            if nb is not None:
                flat.append(nb)
    flat = _extend_pass(flat)
    out: list = []
    i = 0
    while i < len(flat):
        b = flat[i]
        j = i + 1
        if isinstance(b, StridedBlock):
            while j < len(flat) and isinstance(flat[j], StridedBlock) and _same_shape(b, flat[j]):
                j += 1
        if j - i >= 2:
            grp = flat[i:j]
            tmpl = replace(b, start=0, packed_start=0)
            out.extend(_simplify_set(_blockset(tmpl, [g.start for g in grp], [g.packed_start for g in grp])))
        else:
            out.append(b)
        i = j
    return tuple(_extend_pass(out))


# --------------------------------------------------------------------------- building


def _shift_all(pieces: Sequence[Piece], dsrc: int, dpacked: int) -> list:
    return [p.shifted(dsrc, dpacked) for p in pieces]


def _repeat_all(pieces: Sequence[Piece], count: int, stride: int, packed_stride: int) -> list:
    if count == 1:
        return list(pieces)
    return [p.repeated(count, stride, packed_stride) for p in pieces]


def _replicate(pieces: Sequence[Piece], offsets: np.ndarray, packed_offsets: np.ndarray) -> list:
    """Copies of ``pieces`` at many (buffer, packed) offsets, as BlockSets."""
    out: list = []
    for p in pieces:
        if isinstance(p, BlockSet):
            s = (offsets[:, None] + p.starts[None, :]).ravel()
            q = (packed_offsets[:, None] + p.packed_starts[None, :]).ravel()
            out.append(_blockset(p.template, s, q))
        else:
            t = replace(p, start=0, packed_start=0)
            out.append(_blockset(t, offsets + p.start, packed_offsets + p.packed_start))
    return out


def _indexed(child: tuple, csize: int, cext: int, blocklengths, displacements) -> list:
    """Pieces for an (h)indexed layout; ``displacements`` in bytes."""
    bl = np.asarray(blocklengths, dtype=np.int64)
    disp = np.asarray(displacements, dtype=np.int64)
    keep = bl > 0
    bl, disp = bl[keep], disp[keep]
    if len(bl) == 0 or csize == 0:
        return []
    packed = np.concatenate(([0], np.cumsum(bl * csize)[:-1]))
    if (bl == bl[0]).all():
        rep = _repeat_all(child, int(bl[0]), cext, csize)
        return _replicate(rep, disp, packed)
    out: list = []
    for n, d, p in zip(bl.tolist(), disp.tolist(), packed.tolist()):
        out.extend(_shift_all(_repeat_all(child, n, cext, csize), d, p))
    return out


def _axis_segments(n: int, distrib, darg: int, nprocs: int, coord: int, mpi) -> list:
    """Index ranges ``(first, length)`` that process ``coord`` owns along one darray axis."""
    if distrib == mpi.DISTRIBUTE_NONE or nprocs == 1 and distrib != mpi.DISTRIBUTE_CYCLIC:
        return [(0, n)]
    if distrib == mpi.DISTRIBUTE_BLOCK:
        b = -(-n // nprocs) if darg == mpi.DISTRIBUTE_DFLT_DARG else darg
        first = coord * b
        length = max(0, min(b, n - first))
        return [(first, length)] if length > 0 else []
    if distrib == mpi.DISTRIBUTE_CYCLIC:
        b = 1 if darg == mpi.DISTRIBUTE_DFLT_DARG else darg
        segs = []
        first = coord * b
        while first < n:
            segs.append((first, min(b, n - first)))
            first += b * nprocs
        return segs
    raise ValueError(f"unknown darray distribution {distrib}")


def _darray(child: tuple, csize: int, cext: int, p: dict, mpi) -> list:
    gsizes, distribs, dargs, psizes = p["gsizes"], p["distribs"], p["dargs"], p["psizes"]
    ndims = len(gsizes)
    # Process coordinates: row-major over psizes (MPI standard, independent of order).
    coords = []
    r = p["rank"]
    for d in reversed(range(ndims)):
        coords.append(r % psizes[d])
        r //= psizes[d]
    coords.reverse()
    axes = list(range(ndims))
    if p["order"] == mpi.ORDER_C:
        axes.reverse()  # fastest axis first
    pieces = list(child)
    inner_size = csize
    stride = cext
    for ax in axes:
        segs = _axis_segments(gsizes[ax], distribs[ax], dargs[ax], psizes[ax], coords[ax], mpi)
        total = sum(length for _, length in segs)
        new: list = []
        packed = 0
        lens = {length for _, length in segs}
        if len(lens) == 1 and len(segs) >= _BLOCKSET_MIN:
            length = lens.pop()
            rep = _repeat_all(pieces, length, stride, inner_size)
            offs = np.array([f for f, _ in segs], dtype=np.int64) * stride
            poffs = np.arange(len(segs), dtype=np.int64) * (length * inner_size)
            new = _replicate(rep, offs, poffs)
        else:
            for first, length in segs:
                new.extend(_shift_all(_repeat_all(pieces, length, stride, inner_size), first * stride, packed))
                packed += length * inner_size
        pieces = list(simplify(new))
        inner_size *= total
        stride *= gsizes[ax]
    return pieces


def _named(dt, mpi) -> list:
    size = dt.Get_size()
    true_lb, true_extent = dt.Get_true_extent()
    if size == 0:
        return []
    if size == true_extent:
        return [StridedBlock(true_lb, (size,), (1,), 0, (1,))]
    # MPI's pair types for MINLOC/MAXLOC: {T value; int index;} with padding in between.
    pairs = (
        (mpi.SHORT_INT, mpi.SHORT),
        (mpi.FLOAT_INT, mpi.FLOAT),
        (mpi.DOUBLE_INT, mpi.DOUBLE),
        (mpi.LONG_INT, mpi.LONG),
        (mpi.LONG_DOUBLE_INT, mpi.LONG_DOUBLE),
        (mpi.TWOINT, mpi.INT),
    )
    for pair, first in pairs:
        if dt == pair:
            a = first.Get_size()
            b = size - a
            return [
                StridedBlock(true_lb, (a,), (1,), 0, (1,)),
                StridedBlock(true_lb + true_extent - b, (b,), (1,), a, (1,)),
            ]
    raise ValueError(f"datatype: named type {dt.Get_name()!r} has gaps (size {size}, true extent {true_extent})")


def _build(dt, mpi) -> list:
    """Pieces of one instance of ``dt`` (relative to its origin), in typemap order."""
    base, combiner, p = dt.decode()
    children = []
    try:
        if combiner == "NAMED" or combiner.startswith("F90_"):
            return _named(dt, mpi)
        if combiner == "STRUCT":
            olds = list(p["datatypes"])
        else:
            olds = [base]
        children = [o for o in olds if not o.is_predefined]
        if combiner == "STRUCT":
            out: list = []
            packed = 0
            for bl, disp, old in zip(p["blocklengths"], p["displacements"], olds):
                c = _canonical(old, mpi)
                if bl > 0 and c.size > 0:
                    out.extend(_shift_all(_repeat_all(c.pieces, bl, c.extent, c.size), disp, packed))
                packed += bl * c.size
            return out
        c = _canonical(base, mpi)
        child, csize, cext = c.pieces, c.size, c.extent
        if combiner in ("DUP", "RESIZED"):
            return list(child)
        if combiner == "CONTIGUOUS":
            return _repeat_all(child, p["count"], cext, csize)
        if combiner in ("VECTOR", "HVECTOR"):
            stride = p["stride"] * (cext if combiner == "VECTOR" else 1)
            inner = _repeat_all(child, p["blocklength"], cext, csize)
            return _repeat_all(inner, p["count"], stride, p["blocklength"] * csize)
        if combiner in ("INDEXED", "HINDEXED"):
            unit = cext if combiner == "INDEXED" else 1
            disp = np.asarray(p["displacements"], dtype=np.int64) * unit
            return _indexed(child, csize, cext, p["blocklengths"], disp)
        if combiner in ("INDEXED_BLOCK", "HINDEXED_BLOCK"):
            unit = cext if combiner == "INDEXED_BLOCK" else 1
            disp = np.asarray(p["displacements"], dtype=np.int64) * unit
            return _indexed(child, csize, cext, [p["blocklength"]] * len(disp), disp)
        if combiner == "SUBARRAY":
            sizes, subsizes, starts = p["sizes"], p["subsizes"], p["starts"]
            axes = list(range(len(sizes)))
            if p["order"] == mpi.ORDER_C:
                axes.reverse()
            pieces = list(child)
            stride, inner, offset = cext, csize, 0
            for ax in axes:
                pieces = _repeat_all(pieces, subsizes[ax], stride, inner)
                offset += starts[ax] * stride
                inner *= subsizes[ax]
                stride *= sizes[ax]
            return _shift_all(pieces, offset, 0)
        if combiner == "DARRAY":
            return _darray(child, csize, cext, p, mpi)
        raise ValueError(f"datatype: unsupported combiner {combiner}")
    finally:
        for o in children:
            o.Free()


_lock = threading.Lock()
_named_cache: dict = {}
_keyval = None


def _forget(datatype, keyval, ctype) -> None:  # MPI attribute delete callback: the caller freed the datatype
    TypeCache.forget_everywhere(ctype)


def _canonical(dt, mpi) -> CanonicalType:
    global _keyval
    with _lock:
        if _keyval is None:
            _keyval = mpi.Datatype.Create_keyval(delete_fn=_forget)
    got = dt.Get_attr(_keyval)
    if got is None:
        if dt.is_predefined:  # predefined handles are never freed: share one form per handle
            got = _named_cache.get(dt.handle)
            if got is None:
                got = _named_cache[dt.handle] = replace(_make(dt, mpi), source=OwnedDatatype(dt, owned=False))
        else:
            # Our own duplicate of the caller's type, for the MPI engine: it stays valid
            # after the caller frees theirs, and is freed with the canonical form.
            got = replace(_make(dt, mpi), source=OwnedDatatype(dt.Dup().Commit()))
        dt.Set_attr(_keyval, got)
    return got


class OwnedDatatype:
    """An MPI datatype that hpcore created and frees when this object is collected
    (unless MPI is finalized by then). Not collective."""

    def __init__(self, datatype, owned: bool = True):
        self.datatype = datatype
        self._owned = owned

    def __del__(self):
        if not self._owned:
            return
        try:  # at interpreter shutdown modules may already be gone: then MPI frees it
            mpi = sys.modules.get("mpi4py.MPI")
            if mpi is not None and not mpi.Is_finalized():
                self.datatype.Free()
        except Exception:  # noqa: BLE001 - a destructor must not raise
            pass


def _make(dt, mpi) -> CanonicalType:
    pieces = simplify(_build(dt, mpi))
    lb, extent = dt.Get_extent()
    true_lb, true_extent = dt.Get_true_extent()
    size = dt.Get_size()
    got = sum(p.nbytes for p in pieces)
    if got != size:  # a bug here must never pack wrong bytes silently
        raise AssertionError(f"canonicalize: {got} bytes in pieces but MPI size {size}")
    return CanonicalType(pieces, size, lb, extent, true_lb, true_extent)


def canonicalize(datatype) -> CanonicalType:
    """Canonical form of a committed mpi4py datatype (cached on the datatype).

    Not collective. The result is cached as an MPI attribute of ``datatype``, so it
    is dropped when the datatype is freed. Raises ``TypeError`` for a non-datatype,
    ``ValueError`` for a null or uncommitted datatype.
    """
    kv = _keyval
    if kv is not None:  # hot path: one attribute lookup
        try:
            got = datatype.Get_attr(kv)
        except Exception:  # noqa: BLE001 - not a datatype, or a null one: the slow path says which
            got = None
        if got is not None:
            return got
    from mpi4py import MPI

    if not isinstance(datatype, MPI.Datatype):
        raise TypeError(f"datatype: expected an mpi4py.MPI.Datatype, got {type(datatype).__name__}")
    if datatype == MPI.DATATYPE_NULL:
        raise ValueError("datatype: MPI.DATATYPE_NULL cannot be packed")
    if not datatype.is_predefined and not _is_committed(datatype, MPI):
        raise ValueError("datatype: the datatype is not committed (call .Commit() first)")
    return _canonical(datatype, MPI)


def _is_committed(dt, mpi) -> bool:
    # MPI has no query for commitment; Pack_size on an uncommitted type is an error in
    # MPICH, so probe it with errors returned instead of aborting.
    try:
        dt.Pack_size(1, mpi.COMM_SELF)
    except mpi.Exception:
        return False
    return True


# --------------------------------------------------------------------------- views


def from_view(view, base=None) -> CanonicalType:
    """Canonical form of the bytes of a NumPy/CuPy array view, in C (row-major) order.

    Not collective. Offsets are relative to ``base``'s first byte when given (``view``
    must then lie inside ``base``'s memory), else to the view's first element.
    Packing ``base`` with the result gives ``view.tobytes()``.
    """
    shape = tuple(int(n) for n in view.shape)
    strides = tuple(int(s) for s in view.strides)
    item = int(view.dtype.itemsize)
    offset = 0
    if base is not None:
        offset = _data_ptr(view) - _data_ptr(base)
    size = math.prod(shape) * item
    if size == 0:
        return CanonicalType((), 0, 0, 0, 0, 0)
    blk = StridedBlock(offset, (item,) + shape[::-1], (1,) + strides[::-1], 0, _dense_strides((item,) + shape[::-1]))
    pieces = simplify([blk])
    lo, hi = blk.span()
    if base is not None and (lo < 0 or hi > _nbytes(base)):
        raise ValueError(f"from_view: view spans bytes [{lo}, {hi}) outside base of {_nbytes(base)} bytes")
    return CanonicalType(pieces, size, lo, hi - lo, lo, hi - lo)


def _dense_strides(counts) -> tuple:
    out, acc = [], 1
    for c in counts:
        out.append(acc)
        acc *= c
    return tuple(out)


def _data_ptr(a) -> int:
    if hasattr(a, "__cuda_array_interface__"):
        return int(a.__cuda_array_interface__["data"][0])
    return int(a.__array_interface__["data"][0])


def _nbytes(a) -> int:
    return int(a.nbytes)


# --------------------------------------------------------------------------- to MPI


def to_mpi(ctype: CanonicalType):
    """A committed mpi4py datatype with the same typemap bytes, ``lb`` and ``extent``.

    Not collective. The caller frees the result. Built from (h)vectors of the widest
    unsigned word dividing each run, so MPI packs it to the same bytes as the
    canonical type (native representation).
    """
    from mpi4py import MPI

    temps: list = []
    try:
        inner = _mpi_of(list(ctype.pieces), ctype.size, MPI, temps)
        out = inner.Create_resized(ctype.lb, ctype.extent)
        out.Commit()
        return out
    finally:
        for t in temps:
            t.Free()


def _word_unit(run: int, mpi):
    """The widest unsigned MPI word dividing ``run`` [bytes], and its size."""
    for w, unit in ((8, mpi.UINT64_T), (4, mpi.UINT32_T), (2, mpi.UINT16_T), (1, mpi.BYTE)):
        if run % w == 0:
            return unit, w


def _mpi_block(b: StridedBlock, mpi, temps, starts=None) -> object:
    """MPI type of one strided block (at offset 0), or of a BlockSet when ``starts`` is given.

    The run goes into the blocklength of the innermost constructor (no nested
    contiguous level), which MPI engines pack fastest.
    """
    unit, w = _word_unit(b.counts[0], mpi)
    n = b.counts[0] // w
    if b.ndim == 1:
        if starts is not None:
            t = unit.Create_hindexed_block(n, starts)
        else:
            t = unit.Create_contiguous(n)
        temps.append(t)
        return t
    t = unit.Create_hvector(b.counts[1], n, b.strides[1])
    temps.append(t)
    for c, s in zip(b.counts[2:], b.strides[2:]):
        t = t.Create_hvector(c, 1, s)
        temps.append(t)
    if starts is not None:
        t = t.Create_hindexed_block(1, starts)
        temps.append(t)
    return t


def _mpi_of(pieces: list, size: int, mpi, temps) -> object:
    """An MPI type (not committed) whose typemap is ``pieces`` at packed offsets 0..size."""
    if not pieces:
        t = mpi.BYTE.Create_contiguous(0)
        temps.append(t)
        return t
    # Case 1: pieces follow each other densely in the packed stream.
    if _dense_sequence(pieces):
        types, disps = [], []
        for p in pieces:
            if isinstance(p, BlockSet):
                types.append(_mpi_block(p.template, mpi, temps, p.starts.tolist()))
                disps.append(0)
            else:
                types.append(_mpi_block(replace(p, start=0), mpi, temps))
                disps.append(p.start)
        t = mpi.Datatype.Create_struct([1] * len(types), disps, types)
        temps.append(t)
        return t
    # Case 2: every piece shares an outermost loop that is outermost in the packed stream.
    peeled = _peel(pieces, size)
    if peeled is not None:
        inner, count, stride, inner_size = peeled
        t = _mpi_of(inner, inner_size, mpi, temps)
        t = t.Create_hvector(count, 1, stride)
        temps.append(t)
        return t
    # Case 3: list every run in packed order.
    src, dst, run = _all_runs(pieces)
    order = np.argsort(dst, kind="stable")
    t = mpi.BYTE.Create_hindexed(run[order].tolist(), src[order].tolist())
    temps.append(t)
    return t


def _dense_sequence(pieces: list) -> bool:
    pos = 0
    for p in pieces:
        if isinstance(p, BlockSet):
            if not p.template.packed_dense:
                return False
            n = p.template.nbytes
            expect = pos + n * np.arange(len(p.packed_starts), dtype=np.int64)
            if not np.array_equal(p.packed_starts, expect):
                return False
            pos += n * len(p.packed_starts)
        else:
            if not p.packed_dense or p.packed_start != pos:
                return False
            pos += p.nbytes
    return True


def _peel(pieces: list, size: int):
    outer = None
    inner: list = []
    for p in pieces:
        t = p.template if isinstance(p, BlockSet) else p
        if t.ndim < 2:
            return None
        key = (t.counts[-1], t.strides[-1], t.packed_strides[-1])
        if outer is None:
            outer = key
        elif key != outer:
            return None
        t2 = StridedBlock(t.start, t.counts[:-1], t.strides[:-1], t.packed_start, t.packed_strides[:-1])
        inner.append(BlockSet(t2, p.starts, p.packed_starts) if isinstance(p, BlockSet) else t2)
    count, stride, pstride = outer
    inner_size = size // count
    if pstride != inner_size or inner_size * count != size:
        return None
    for p in inner:
        lo, hi = p.packed_span()
        if lo < 0 or hi > inner_size:
            return None
    return inner, count, stride, inner_size


def _all_runs(pieces: list):
    """Every contiguous run as arrays ``(src_offset, packed_offset, length)``."""
    src, dst, run = [], [], []
    for p in pieces:
        t = p.template if isinstance(p, BlockSet) else p
        outer = t.counts[1:]
        idx = np.indices(outer).reshape(len(outer), -1) if outer else np.zeros((0, 1), np.int64)
        so = np.asarray(t.strides[1:], np.int64) @ idx if outer else np.zeros(1, np.int64)
        po = np.asarray(t.packed_strides[1:], np.int64) @ idx if outer else np.zeros(1, np.int64)
        if isinstance(p, BlockSet):
            so = (p.starts[:, None] + so[None, :]).ravel()
            po = (p.packed_starts[:, None] + po[None, :]).ravel()
        else:
            so = so + t.start
            po = po + t.packed_start
        src.append(so)
        dst.append(po)
        run.append(np.full(len(so), t.counts[0], np.int64))
    return np.concatenate(src), np.concatenate(dst), np.concatenate(run)
