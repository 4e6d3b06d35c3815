"""MPI derived datatypes for tests and benchmarks: random nested types (MPICH's DTPools), named patterns (DDTBench)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import HpcoreError

if TYPE_CHECKING:  # pragma: no cover - typing only; importing does no MPI work
    from mpi4py import MPI

__all__ = [
    "CONSTRUCTORS",
    "MAX_SIZE",
    "MAX_TRUE_EXTENT",
    "random_datatype",
    "buffer_nbytes",
    "touched_mask",
    "mpi_pack",
    "mpi_unpack",
    "Pattern",
    "ddtbench_patterns",
    "tempi_sweep",
]

#: Constructor names as they appear, followed by ``(``, in the descriptions
#: returned by :func:`random_datatype`.
CONSTRUCTORS = (
    "contiguous",
    "vector",
    "hvector",
    "subarray",
    "indexed_block",
    "hindexed_block",
    "indexed",
    "hindexed",
    "struct",
    "resized",
    "dup",
    "darray",
)

#: Largest ``Get_size()`` [bytes] of a type from :func:`random_datatype`.
MAX_SIZE = 64 * 1024
#: Largest true extent [bytes] of a type from :func:`random_datatype`.
MAX_TRUE_EXTENT = 1 << 20
# Rough bound on the number of contiguous runs in one random type, so that
# MPI.Pack and typemap walks stay fast.
_MAX_RUNS = 4096
_ATTEMPTS = 40


def _mpi():
    from mpi4py import MPI

    return MPI


# --------------------------------------------------------------------------
# buffers and MPI's own pack/unpack (the reference)
# --------------------------------------------------------------------------


def _check_datatype(datatype, name="datatype"):
    MPI = _mpi()
    if not isinstance(datatype, MPI.Datatype):
        raise TypeError(f"{name} must be an mpi4py MPI.Datatype, got {type(datatype).__name__}")
    if datatype == MPI.DATATYPE_NULL:
        raise ValueError(f"{name} is MPI.DATATYPE_NULL (freed?)")


def _check_count(count):
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise TypeError(f"count must be an int, got {type(count).__name__}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return int(count)


def _extent_bounds(datatype, count):
    """Return ``(lowest, highest)`` byte offsets touched by ``count`` instances."""
    if count == 0 or datatype.Get_size() == 0:
        return 0, 0
    _, extent = datatype.Get_extent()
    true_lb, true_extent = datatype.Get_true_extent()
    ends = (true_lb + true_extent, (count - 1) * extent + true_lb + true_extent)
    starts = (true_lb, (count - 1) * extent + true_lb)
    return min(starts), max(ends)


def buffer_nbytes(datatype: MPI.Datatype, count: int = 1) -> int:
    """Return the smallest buffer size [bytes] from the origin that holds ``count`` instances.

    Not collective. Instance ``i`` lies at ``i * extent`` from the origin and touches
    ``[i*extent + true_lb, i*extent + true_lb + true_extent)``; the result is the largest
    end over ``i = 0 .. count-1`` (negative and zero extents included), at least 0.
    A type of size 0 or ``count == 0`` needs 0 bytes.

    Parameters
    ----------
    datatype : MPI.Datatype
        Any datatype (committed or not).
    count : int
        Number of instances, >= 0.

    Returns
    -------
    int
        Bytes from the origin.

    Examples
    --------
    >>> from mpi4py import MPI
    >>> t = MPI.DOUBLE.Create_vector(3, 1, 2)
    >>> buffer_nbytes(t, 1), buffer_nbytes(t, 3)
    (40, 120)
    >>> t.Free()
    """
    _check_datatype(datatype)
    count = _check_count(count)
    return max(0, _extent_bounds(datatype, count)[1])


def _host_bytes(buf, name, writable):
    """View a contiguous host buffer as 1-D uint8 without copying."""
    if isinstance(buf, np.ndarray):
        if not (buf.flags.c_contiguous or buf.flags.f_contiguous):
            raise ValueError(f"{name} must be a contiguous array, got strides {buf.strides}")
        arr = buf.reshape(-1, order="A").view(np.uint8) if buf.size else np.empty(0, np.uint8)
    else:
        try:
            mv = memoryview(buf)
        except TypeError:
            raise TypeError(
                f"{name} must be a contiguous host buffer (numpy array or bytes-like), "
                f"got {type(buf).__name__}"
            ) from None
        if not mv.contiguous:
            raise ValueError(f"{name} must be a contiguous buffer")
        arr = np.frombuffer(mv.cast("B") if mv.nbytes else b"", dtype=np.uint8)
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name} must be writable")
    return arr


def _check_span(datatype, count, nbytes, name):
    lo, hi = _extent_bounds(datatype, count)
    if lo < 0:
        raise ValueError(
            f"{count} instance(s) of {name} touch byte {lo} before the start of the buffer "
            f"(true_lb={datatype.Get_true_extent()[0]}, extent={datatype.Get_extent()[1]})"
        )
    if hi > nbytes:
        raise ValueError(f"buffer of {nbytes} bytes too small: {count} instance(s) need {hi} bytes")


def _exact_instances(datatype, count):
    """A type whose single instance is ``count`` instances of ``datatype``, with extent 1.

    mpi4py infers the count of ``Pack``/``Unpack`` from the buffer length divided by
    the extent; an extent of 1 and a 1-byte buffer view make that count exactly 1.
    """
    contig = datatype.Create_contiguous(count)
    try:
        exact = contig.Create_resized(0, 1)
    finally:
        contig.Free()
    return exact.Commit()


def mpi_pack(buf, datatype: MPI.Datatype, count: int = 1) -> np.ndarray:
    """Pack ``count`` instances of ``datatype`` from ``buf`` with MPI's own ``MPI_Pack``.

    Not collective (uses ``MPI.COMM_SELF``). This is the reference that hpcore's own
    packing must match byte for byte.

    Parameters
    ----------
    buf : numpy.ndarray or bytes-like
        Contiguous host buffer; byte 0 is the datatype's origin. Must hold
        :func:`buffer_nbytes` ``(datatype, count)`` bytes, and no instance may touch
        bytes before the origin.
    datatype : MPI.Datatype
        Committed datatype.
    count : int
        Number of instances, >= 0.

    Returns
    -------
    numpy.ndarray
        1-D uint8 array of ``datatype.Get_size() * count`` bytes.

    Raises
    ------
    ValueError
        If the buffer is too small or an instance starts before it.
    HpcoreError
        If MPI packed a different number of bytes than ``Pack_size`` promised.

    Examples
    --------
    >>> import numpy as np
    >>> from mpi4py import MPI
    >>> t = MPI.DOUBLE.Create_vector(2, 1, 2).Commit()
    >>> mpi_pack(np.arange(4.0), t).view(np.float64)
    array([0., 2.])
    >>> t.Free()
    """
    MPI = _mpi()
    _check_datatype(datatype)
    count = _check_count(count)
    src = _host_bytes(buf, "buf", writable=False)
    size = datatype.Get_size()
    if count == 0 or size == 0:
        return np.empty(0, dtype=np.uint8)
    _check_span(datatype, count, src.nbytes, "datatype")
    out = np.empty(datatype.Pack_size(count, MPI.COMM_SELF), dtype=np.uint8)
    exact = _exact_instances(datatype, count)
    try:
        inbuf = MPI.buffer.fromaddress(src.ctypes.data, 1, readonly=True)
        position = exact.Pack(inbuf, out, 0, MPI.COMM_SELF)
    finally:
        exact.Free()
    if position != size * count or position != out.nbytes:
        raise HpcoreError(
            f"MPI_Pack packed {position} bytes, expected {size * count} "
            f"(Pack_size={out.nbytes}) for count={count}"
        )
    return out


def mpi_unpack(packed, buf, datatype: MPI.Datatype, count: int = 1) -> None:
    """Unpack ``count`` instances of ``datatype`` into ``buf`` in place with ``MPI_Unpack``.

    Not collective (uses ``MPI.COMM_SELF``). Inverse of :func:`mpi_pack`: bytes of
    ``buf`` that the type does not touch are left as they are.

    Parameters
    ----------
    packed : numpy.ndarray or bytes-like
        At least ``datatype.Get_size() * count`` packed bytes.
    buf : numpy.ndarray or bytes-like
        Writable contiguous host buffer; byte 0 is the datatype's origin.
    datatype : MPI.Datatype
        Committed datatype.
    count : int
        Number of instances, >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> from mpi4py import MPI
    >>> t = MPI.DOUBLE.Create_vector(2, 1, 2).Commit()
    >>> y = np.zeros(4)
    >>> mpi_unpack(mpi_pack(np.arange(4.0), t), y, t)
    >>> y
    array([0., 0., 2., 0.])
    >>> t.Free()
    """
    MPI = _mpi()
    _check_datatype(datatype)
    count = _check_count(count)
    src = _host_bytes(packed, "packed", writable=False)
    dst = _host_bytes(buf, "buf", writable=True)
    size = datatype.Get_size()
    if count == 0 or size == 0:
        return
    if src.nbytes < size * count:
        raise ValueError(f"packed has {src.nbytes} bytes, need {size * count} for count={count}")
    _check_span(datatype, count, dst.nbytes, "datatype")
    exact = _exact_instances(datatype, count)
    try:
        outbuf = MPI.buffer.fromaddress(dst.ctypes.data, 1)
        position = exact.Unpack(src[: size * count], 0, outbuf, MPI.COMM_SELF)
    finally:
        exact.Free()
    if position != size * count:
        raise HpcoreError(f"MPI_Unpack consumed {position} bytes, expected {size * count}")


def touched_mask(datatype: MPI.Datatype, count: int = 1, nbytes: int | None = None) -> np.ndarray:
    """Return a boolean mask of the buffer bytes that ``count`` instances touch.

    Not collective. Found by unpacking all-ones bytes into a zeroed buffer with
    ``MPI_Unpack``, so it is exact, gaps of pair types (``MPI.DOUBLE_INT``) included.

    Parameters
    ----------
    datatype : MPI.Datatype
        Committed datatype whose instances touch no byte before the origin.
    count : int
        Number of instances.
    nbytes : int, optional
        Mask length [bytes]; default :func:`buffer_nbytes` ``(datatype, count)``.

    Returns
    -------
    numpy.ndarray
        1-D bool array of length ``nbytes``.
    """
    count = _check_count(count)
    need = buffer_nbytes(datatype, count)
    nbytes = need if nbytes is None else int(nbytes)
    scratch = np.zeros(max(nbytes, need), dtype=np.uint8)
    ones = np.full(datatype.Get_size() * count, 0xFF, dtype=np.uint8)
    mpi_unpack(ones, scratch, datatype, count)
    return scratch[:nbytes] != 0


# --------------------------------------------------------------------------
# random nested datatypes (after MPICH's DTPools)
# --------------------------------------------------------------------------


def _base_types(MPI):
    common = [
        (MPI.CHAR, "CHAR"),
        (MPI.SHORT, "SHORT"),
        (MPI.INT, "INT"),
        (MPI.FLOAT, "FLOAT"),
        (MPI.DOUBLE, "DOUBLE"),
        (MPI.LONG_LONG, "LONG_LONG"),
        (MPI.C_DOUBLE_COMPLEX, "C_DOUBLE_COMPLEX"),
    ]
    pairs = [(MPI.DOUBLE_INT, "DOUBLE_INT"), (MPI.SHORT_INT, "SHORT_INT")]
    return common, pairs


def _struct_members(MPI):
    return [(MPI.INT, "INT"), (MPI.DOUBLE, "DOUBLE"), (MPI.CHAR, "CHAR"),
            (MPI.SHORT, "SHORT"), (MPI.FLOAT, "FLOAT")]


def _ints(rng, lo, hi, n=None):
    """Random ints in ``[lo, hi]`` (inclusive)."""
    if n is None:
        return int(rng.integers(lo, hi + 1))
    return [int(v) for v in rng.integers(lo, hi + 1, size=n)]


def _displacements(rng, count, unit, span, allow_negative):
    """``count`` distinct displacements ``0..span-1`` times ``unit``, often out of order."""
    span = max(span, count)
    disp = rng.choice(span, size=count, replace=False)
    if rng.random() < 0.5:
        disp = np.sort(disp)
    disp = [int(d) * unit for d in disp]
    if allow_negative and rng.random() < 0.25:
        shift = _ints(rng, 1, span // 2 + 1) * unit
        disp = [d - shift for d in disp]
    return disp


def _blocklengths(rng, count, lo, hi, zeros):
    bls = _ints(rng, lo, hi, count)
    if zeros:
        for i in range(count):
            if rng.random() < 0.25:
                bls[i] = 0
        if not any(bls):
            bls[_ints(rng, 0, count - 1)] = _ints(rng, 1, hi)
    return bls


def _factor_grid(rng, nprocs, free_dims, ndims):
    """Random process grid: ``nprocs`` spread over ``free_dims``, 1 elsewhere."""
    psizes = [1] * ndims
    n, p = nprocs, 2
    primes = []
    while n > 1:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    for prime in primes:
        d = free_dims[_ints(rng, 0, len(free_dims) - 1)]
        psizes[d] *= prime
    return psizes


def _make_level(MPI, rng, kind, child, cdesc):
    """Create one constructor level over ``child``; return ``(newtype, description)``."""
    _, ext = child.Get_extent()
    _, text = child.Get_true_extent()
    unit = max(ext, 1)
    if kind == "contiguous":
        n = _ints(rng, 1, 8)
        return child.Create_contiguous(n), f"contiguous({n}, {cdesc})"
    if kind == "vector":
        count, bl = _ints(rng, 1, 6), _ints(rng, 1, 4)
        stride = bl + _ints(rng, 0, 3)
        if rng.random() < 0.3:
            stride = -stride
        t = child.Create_vector(count, bl, stride)
        return t, f"vector(count={count}, blocklength={bl}, stride={stride}, {cdesc})"
    if kind == "hvector":
        count, bl = _ints(rng, 1, 6), _ints(rng, 1, 4)
        stride = bl * max(ext, text) + _ints(rng, 0, 16)
        if rng.random() < 0.4:
            stride = -stride
        t = child.Create_hvector(count, bl, stride)
        return t, f"hvector(count={count}, blocklength={bl}, stride={stride}B, {cdesc})"
    if kind == "subarray":
        ndims = _ints(rng, 1, 3)
        sizes = _ints(rng, 1, 6, ndims)
        subsizes = [_ints(rng, 1, s) for s in sizes]
        starts = [_ints(rng, 0, s - ss) for s, ss in zip(sizes, subsizes)]
        fortran = rng.random() < 0.5
        order = MPI.ORDER_FORTRAN if fortran else MPI.ORDER_C
        t = child.Create_subarray(sizes, subsizes, starts, order)
        return t, (
            f"subarray(sizes={sizes}, subsizes={subsizes}, starts={starts}, "
            f"order={'F' if fortran else 'C'}, {cdesc})"
        )
    if kind in ("indexed_block", "hindexed_block"):
        count, bl = _ints(rng, 1, 6), _ints(rng, 1, 3)
        if kind == "indexed_block":
            disp = _displacements(rng, count, 1, 2 * count * bl + 4, True)
            t = child.Create_indexed_block(bl, disp)
            return t, f"indexed_block(blocklength={bl}, displacements={disp}, {cdesc})"
        disp = _displacements(rng, count, unit, 2 * count * bl + 4, True)
        disp = [d + _ints(rng, 0, 7) for d in disp]
        t = child.Create_hindexed_block(bl, disp)
        return t, f"hindexed_block(blocklength={bl}, displacements={disp}B, {cdesc})"
    if kind in ("indexed", "hindexed"):
        count = _ints(rng, 1, 6)
        bls = _blocklengths(rng, count, 1, 4, zeros=True)
        if kind == "indexed":
            disp = _displacements(rng, count, 1, 2 * sum(bls) + 4, True)
            t = child.Create_indexed(bls, disp)
            return t, f"indexed(blocklengths={bls}, displacements={disp}, {cdesc})"
        disp = _displacements(rng, count, unit, 2 * sum(bls) + 4, True)
        disp = [d + _ints(rng, 0, 7) for d in disp]
        t = child.Create_hindexed(bls, disp)
        return t, f"hindexed(blocklengths={bls}, displacements={disp}B, {cdesc})"
    if kind == "struct":
        named = _struct_members(MPI)
        members = [(child, cdesc, _ints(rng, 1, 3))]
        for _ in range(_ints(rng, 1, 3)):
            dt, name = named[_ints(rng, 0, len(named) - 1)]
            members.append((dt, name, _ints(rng, 1, 3)))
        order = rng.permutation(len(members))
        members = [members[i] for i in order]
        # lay the members out in a (different) random memory order with gaps
        disps = [0] * len(members)
        offset = 0
        for i in rng.permutation(len(members)):
            dt, _, bl = members[i]
            offset += _ints(rng, 0, 8)
            disps[i] = offset
            offset += bl * max(dt.Get_extent()[1], dt.Get_true_extent()[1], 1)
        if rng.random() < 0.25:
            shift = _ints(rng, 1, max(offset // 2, 1))
            disps = [d - shift for d in disps]
        t = MPI.Datatype.Create_struct([m[2] for m in members], disps, [m[0] for m in members])
        body = ", ".join(f"{bl} x {name} @{d}B" for (_, name, bl), d in zip(members, disps))
        return t, f"struct([{body}])"
    if kind == "resized":
        lb, _ = child.Get_extent()
        new_lb = lb + _ints(rng, -16, 16)
        if rng.random() < 0.2:
            new_extent = _ints(rng, 1, max(text, 1))  # smaller: instances overlap
        else:
            new_extent = max(ext, text, 1) + _ints(rng, 0, 24)
        t = child.Create_resized(new_lb, new_extent)
        return t, f"resized(lb={new_lb}, extent={new_extent}, {cdesc})"
    if kind == "dup":
        return child.Dup(), f"dup({cdesc})"
    if kind == "darray":
        ndims = _ints(rng, 1, 3)
        codes = {"BLOCK": MPI.DISTRIBUTE_BLOCK, "CYCLIC": MPI.DISTRIBUTE_CYCLIC,
                 "NONE": MPI.DISTRIBUTE_NONE}
        names = [("BLOCK", "CYCLIC", "NONE")[_ints(rng, 0, 2)] for _ in range(ndims)]
        free_dims = [d for d in range(ndims) if names[d] != "NONE"]
        nprocs = _ints(rng, 1, 6) if free_dims else 1
        psizes = _factor_grid(rng, nprocs, free_dims, ndims) if free_dims else [1] * ndims
        gsizes = _ints(rng, 1, 8, ndims)
        dargs, dnames = [], []
        for d in range(ndims):
            if names[d] == "BLOCK" and rng.random() < 0.5:
                darg = -(-gsizes[d] // psizes[d]) + _ints(rng, 0, 2)
            elif names[d] == "CYCLIC" and rng.random() < 0.7:
                darg = _ints(rng, 1, 3)
            else:
                darg = MPI.DISTRIBUTE_DFLT_DARG
            dargs.append(darg)
            dnames.append("DFLT" if darg == MPI.DISTRIBUTE_DFLT_DARG else darg)
        rank = _ints(rng, 0, nprocs - 1)
        fortran = rng.random() < 0.5
        order = MPI.ORDER_FORTRAN if fortran else MPI.ORDER_C
        t = child.Create_darray(nprocs, rank, gsizes, [codes[n] for n in names], dargs, psizes, order)
        return t, (
            f"darray(size={nprocs}, rank={rank}, gsizes={gsizes}, distribs={names}, "
            f"dargs={dnames}, psizes={psizes}, order={'F' if fortran else 'C'}, {cdesc})"
        )
    raise ValueError(f"kind must be one of {CONSTRUCTORS}, got {kind!r}")


def _acceptable(t, runs):
    size = t.Get_size()
    lb, ext = t.Get_extent()
    true_lb, text = t.Get_true_extent()
    return (
        1 <= size <= MAX_SIZE
        and 0 < ext <= 2 * MAX_TRUE_EXTENT
        and text <= MAX_TRUE_EXTENT
        and abs(true_lb) <= MAX_TRUE_EXTENT
        and abs(lb) <= 2 * MAX_TRUE_EXTENT
        and runs <= _MAX_RUNS
    )


def _runs_estimate(t, child, child_runs, kind):
    """Rough number of contiguous runs of ``t`` (no merging assumed)."""
    runs = child_runs * max(1, t.Get_size() // max(child.Get_size(), 1))
    return runs + 8 if kind == "struct" else runs


def _shift_nonnegative(MPI, rng, t, desc):
    """Wrap ``t`` so that every byte it touches is at offset >= 0."""
    true_lb, _ = t.Get_true_extent()
    shift = -true_lb + _ints(rng, 0, 8)
    how = ("hindexed", "hindexed_block", "struct")[_ints(rng, 0, 2)]
    if how == "hindexed":
        w = t.Create_hindexed([1], [shift])
        return w, f"hindexed(blocklengths=[1], displacements=[{shift}]B, {desc})"
    if how == "hindexed_block":
        w = t.Create_hindexed_block(1, [shift])
        return w, f"hindexed_block(blocklength=1, displacements=[{shift}]B, {desc})"
    w = MPI.Datatype.Create_struct([1], [shift], [t])
    return w, f"struct([1 x {desc} @{shift}B])"


def random_datatype(
    rng: np.random.Generator, depth: int | None = None, base=None
) -> tuple[MPI.Datatype, str]:
    """Build a committed random nested MPI datatype, after MPICH's DTPools.

    Not collective. Every level picks one of :data:`CONSTRUCTORS` at random:
    contiguous, vector and hvector (negative strides included), subarray (C and
    Fortran order), indexed_block, hindexed_block, indexed and hindexed (non-monotone
    and negative displacements, zero blocklengths), struct (the inner type mixed with
    ``MPI.INT/DOUBLE/CHAR/SHORT/FLOAT`` members), resized (lb moved, extent larger or
    smaller than the true extent, so that repeated instances may overlap), dup and
    darray (BLOCK, CYCLIC with or without darg, NONE; C and Fortran order; random
    process grid and rank). Base types: CHAR, SHORT, INT, FLOAT, DOUBLE, LONG_LONG,
    C_DOUBLE_COMPLEX and, now and then, the pair types DOUBLE_INT and SHORT_INT
    (which have internal gaps).

    The result has ``1 <= Get_size() <=`` :data:`MAX_SIZE`, true extent at most
    :data:`MAX_TRUE_EXTENT` and ``true_lb >= 0`` (a type that reached below its origin
    is wrapped in a one-block hindexed, hindexed_block or struct that shifts it up).
    Every intermediate datatype is freed; the caller frees the result.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness, e.g. ``numpy.random.default_rng(seed)``; the same seed
        gives the same type.
    depth : int, optional
        Number of constructor levels, 1 to 8; random in 1..3 when None.
    base : MPI.Datatype, optional
        Innermost type (not freed); random base type when None.

    Returns
    -------
    datatype : MPI.Datatype
        Committed datatype.
    description : str
        The construction, readable, e.g.
        ``"hvector(count=2, blocklength=1, stride=-48B, contiguous(3, INT))"``.

    Examples
    --------
    >>> import numpy as np
    >>> t, desc = random_datatype(np.random.default_rng(0))
    >>> t.Get_true_extent()[0] >= 0
    True
    >>> t.Free()
    """
    MPI = _mpi()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if depth is None:
        depth = _ints(rng, 1, 3)
    elif isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or not 1 <= depth <= 8:
        raise ValueError(f"depth must be an int in 1..8 or None, got {depth!r}")
    if base is None:
        common, pairs = _base_types(MPI)
        pool = pairs if rng.random() < 0.1 else common
        base, bdesc = pool[_ints(rng, 0, len(pool) - 1)]
    else:
        _check_datatype(base, "base")
        if base.Get_size() < 1 or base.Get_size() > MAX_SIZE:
            raise ValueError(f"base must have a size in 1..{MAX_SIZE} bytes, got {base.Get_size()}")
        bdesc = (base.Get_name() or "base").removeprefix("MPI_")
    current, desc, owned = base, bdesc, False
    runs = 2 if bdesc in ("DOUBLE_INT", "SHORT_INT") else 1
    try:
        for _ in range(int(depth)):
            new = None
            for _attempt in range(_ATTEMPTS):
                kind = CONSTRUCTORS[_ints(rng, 0, len(CONSTRUCTORS) - 1)]
                t, tdesc = _make_level(MPI, rng, kind, current, desc)
                truns = _runs_estimate(t, current, runs, kind)
                if _acceptable(t, truns):
                    new = (t, tdesc, truns)
                    break
                t.Free()
            if new is None:  # only growth was rejected: a dup never grows
                new = (current.Dup(), f"dup({desc})", runs)
            if owned:
                current.Free()
            current, desc, runs = new
            owned = True
        if current.Get_true_extent()[0] < 0:
            wrapped, desc = _shift_nonnegative(MPI, rng, current, desc)
            current.Free()
            current = wrapped
        current.Commit()
    except BaseException:
        if owned and current != MPI.DATATYPE_NULL:
            current.Free()
        raise
    return current, desc


# --------------------------------------------------------------------------
# named patterns (after DDTBench and TEMPI)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A named datatype pattern: ``count`` instances of ``datatype`` in a buffer.

    Attributes
    ----------
    name : str
        E.g. ``"NAS_MG_x"`` or ``"vec_b8_s512"``.
    datatype : MPI.Datatype
        Committed datatype, origin at byte 0 of the buffer, ``true_lb >= 0``.
    count : int
        Number of instances to pack.
    buffer_nbytes : int
        Size [bytes] of the buffer the pattern lives in (the application's arrays);
        at least :func:`buffer_nbytes` ``(datatype, count)``.
    description : str
        The layout and the construction, readable.
    """

    name: str
    datatype: MPI.Datatype
    count: int
    buffer_nbytes: int
    description: str

    @property
    def packed_nbytes(self) -> int:
        """Bytes in the packed form: ``datatype.Get_size() * count``."""
        return self.datatype.Get_size() * self.count

    def free(self) -> None:
        """Free the datatype. Not collective; safe to call twice."""
        MPI = _mpi()
        if self.datatype != MPI.DATATYPE_NULL and not MPI.Is_finalized():
            self.datatype.Free()

    def __enter__(self) -> Pattern:
        return self

    def __exit__(self, *exc) -> None:
        self.free()


def _check_nbytes(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class _Builder:
    """Creates datatypes and frees the intermediates in one place."""

    def __init__(self, MPI):
        self.MPI = MPI
        self.temps = []

    def tmp(self, t):
        self.temps.append(t)
        return t

    def at(self, inner, offset):
        """``inner`` moved ``offset`` bytes up (a one-member struct, as with MPI_BOTTOM)."""
        if offset == 0:
            return inner
        return self.tmp(self.MPI.Datatype.Create_struct([1], [offset], [inner]))

    def close(self):
        for t in self.temps:
            if t != self.MPI.DATATYPE_NULL:
                t.Free()
        self.temps.clear()


def _pattern(name, datatype, count, array_nbytes, description):
    datatype.Commit()
    need = buffer_nbytes(datatype, count)
    if datatype.Get_true_extent()[0] < 0 or _extent_bounds(datatype, count)[0] < 0:
        datatype.Free()
        raise HpcoreError(f"pattern {name} reaches below its buffer")  # a bug here, not user input
    return Pattern(name, datatype, int(count), max(int(array_nbytes), need), description)


def _nas_lu(MPI, b, target):
    patterns = []
    # LU: u(5, DIM2+2, DIM3+2) doubles, x fastest. x face = one contiguous plane.
    n = max(1, round(target / 40))
    dim2, dim3 = n, 2

    def idx(x, y, z, dim2):  # element offset of u(x, y, z) in u(5, DIM2+2, DIM3+2)
        return x + 5 * (y + z * (dim2 + 2))

    t = b.at(b.tmp(MPI.DOUBLE.Create_contiguous(5 * dim2)), 8 * idx(0, 1, dim3, dim2))
    patterns.append(
        _pattern(
            "NAS_LU_x", t, 1, 8 * 5 * (dim2 + 2) * (dim3 + 2),
            f"NAS LU x face: contiguous(5*{dim2}, DOUBLE) at u(0,1,{dim3}) of u(5,{dim2 + 2},{dim3 + 2})",
        )
    )
    # y face: DIM3 blocks of 5 doubles, stride 5*(DIM2+2) doubles.
    dim2, dim3 = 33, max(1, round(target / 40))
    five = b.tmp(MPI.DOUBLE.Create_contiguous(5))
    t = b.at(b.tmp(five.Create_vector(dim3, 1, dim2 + 2)), 8 * idx(0, dim2, 1, dim2))
    patterns.append(
        _pattern(
            "NAS_LU_y", t, 1, 8 * 5 * (dim2 + 2) * (dim3 + 2),
            f"NAS LU y face: vector({dim3}, 1, {dim2 + 2}, contiguous(5, DOUBLE)) at u(0,{dim2},1) "
            f"of u(5,{dim2 + 2},{dim3 + 2})",
        )
    )
    return patterns


def _nas_mg(MPI, b, target):
    patterns = []
    m = max(1, round(math.sqrt(target / 8)))
    # u(DIM1, DIM2, DIM3) doubles, x fastest; the face's normal dimension is kept short
    # (DDTBench's smallest grid) so the buffer stays small.
    d1, d2, d3 = 34, m + 2, m + 2
    inner = b.tmp(MPI.DOUBLE.Create_vector(d2 - 2, 1, d1))
    t = b.at(b.tmp(inner.Create_hvector(d3 - 2, 1, 8 * d1 * d2)), 8 * (d1 - 2 + d1 * (1 + d2)))
    patterns.append(
        _pattern(
            "NAS_MG_x", t, 1, 8 * d1 * d2 * d3,
            f"NAS MG x face: hvector({d3 - 2}, 1, {8 * d1 * d2}B, vector({d2 - 2}, 1, {d1}, DOUBLE)) "
            f"at u({d1 - 2},1,1) of u({d1},{d2},{d3})",
        )
    )
    d1, d2, d3 = m + 2, 18, m + 2
    t = b.at(b.tmp(MPI.DOUBLE.Create_vector(d3 - 2, d1 - 2, d1 * d2)), 8 * (1 + d1 * (d2 - 2 + d2)))
    patterns.append(
        _pattern(
            "NAS_MG_y", t, 1, 8 * d1 * d2 * d3,
            f"NAS MG y face: vector({d3 - 2}, {d1 - 2}, {d1 * d2}, DOUBLE) at u(1,{d2 - 2},1) "
            f"of u({d1},{d2},{d3})",
        )
    )
    d1, d2, d3 = m + 2, m + 2, 18
    t = b.at(b.tmp(MPI.DOUBLE.Create_vector(d2 - 2, d1 - 2, d1)), 8 * (1 + d1 * (1 + d2)))
    patterns.append(
        _pattern(
            "NAS_MG_z", t, 1, 8 * d1 * d2 * d3,
            f"NAS MG z face: vector({d2 - 2}, {d1 - 2}, {d1}, DOUBLE) at u(1,1,1) of u({d1},{d2},{d3})",
        )
    )
    return patterns


def _milc(MPI, b, target):
    # su3 vectors (3 complex floats = 24 B) on an L^4 lattice; the z-down halo.
    L = max(2, 2 * round((target / 24) ** (1 / 3) / 2))
    su3 = b.tmp(MPI.FLOAT.Create_contiguous(6))
    temp = b.tmp(su3.Create_vector(L, L * L // 2, L * L * L // 2))
    t = b.tmp(temp.Create_hvector(2, 1, 24 * L**4 // 2))
    return [
        _pattern(
            "MILC_su3_zd", t, 1, 24 * L**4,
            f"MILC su3 z-down: hvector(2, 1, {24 * L**4 // 2}B, vector({L}, {L * L // 2}, {L**3 // 2}, "
            f"contiguous(6, FLOAT))) on a {L}^4 lattice of su3 vectors",
        )
    ]


def _specfem(MPI, b, rng, target):
    patterns = []
    # outer core: random (shuffled) list of scalar points, one float each.
    icount = max(1, round(target / 4))
    dim1 = max(icount, round(icount * 3697 / 493))
    disp = rng.choice(dim1, size=icount, replace=False)
    t = b.tmp(MPI.FLOAT.Create_indexed_block(1, disp.tolist()))
    patterns.append(
        _pattern(
            "SPECFEM3D_oc", t, 1, 4 * dim1,
            f"SPECFEM3D outer core: indexed_block(1, {icount} shuffled displacements, FLOAT) "
            f"over {dim1} floats",
        )
    )
    # crust-mantle + inner core: 3-float points from two arrays, one struct.
    total = max(2, round(target / 12))
    n_cm = max(1, round(total * 1957 / (1957 + 245)))
    n_ic = max(1, total - n_cm)
    dim_cm = max(n_cm, round(n_cm * 39929 / 1957))
    dim_ic = max(n_ic, round(n_ic * 1225 / 245))
    list_cm = rng.choice(dim_cm, size=n_cm, replace=False)
    list_ic = rng.choice(dim_ic, size=n_ic, replace=False)
    cm = b.tmp(MPI.FLOAT.Create_indexed_block(3, (3 * list_cm).tolist()))
    ic = b.tmp(MPI.FLOAT.Create_indexed_block(3, (3 * list_ic).tolist()))
    t = b.tmp(MPI.Datatype.Create_struct([1, 1], [0, 12 * dim_cm], [cm, ic]))
    patterns.append(
        _pattern(
            "SPECFEM3D_cm", t, 1, 12 * (dim_cm + dim_ic),
            f"SPECFEM3D crust-mantle: struct of indexed_block(3, {n_cm} shuffled, FLOAT) over "
            f"{dim_cm}x3 floats and indexed_block(3, {n_ic} shuffled, FLOAT) over {dim_ic}x3 floats "
            f"at {12 * dim_cm}B",
        )
    )
    return patterns


def _lammps(MPI, b, rng, target):
    patterns = []
    for name, per_atom, ratio, arrays in (
        ("LAMMPS_full", 64, 3534 / 3062, ("x", "tag", "type", "mask", "q", "molecule")),
        ("LAMMPS_atomic", 48, 4084 / 243, ("x", "tag", "type", "mask")),
    ):
        icount = max(1, round(target / per_atom))
        dim1 = max(icount, round(icount * ratio))
        n = dim1 + icount  # owned atoms plus room for the received ghosts
        atoms = rng.choice(dim1, size=icount, replace=False)
        one = b.tmp(MPI.DOUBLE.Create_indexed_block(1, atoms.tolist()))
        three = b.tmp(MPI.DOUBLE.Create_indexed_block(3, (3 * atoms).tolist()))
        offsets = [0] + [8 * (3 * n + k * n) for k in range(len(arrays) - 1)]
        types = [three] + [one] * (len(arrays) - 1)
        t = b.tmp(MPI.Datatype.Create_struct([1] * len(arrays), offsets, types))
        patterns.append(
            _pattern(
                name, t, 1, 8 * n * (len(arrays) + 2),
                f"{name}: struct over arrays {list(arrays)} of {n} atoms (x has 3 doubles): "
                f"indexed_block(3 or 1, {icount} shuffled atoms, DOUBLE) each",
            )
        )
    return patterns


def _wrf(MPI, b, target):
    # em_b_wave: 4 2-D, 3 3-D and 2 4-D float arrays (4-D: 2 scalars, the first skipped),
    # WRF order i fastest, then k, then j; halo of 3 rows in j (y) or 3 columns in i (x).
    n2d, n3d, n4d, nscalar, first = 4, 3, 2, 2, 1
    n = max(1, round(target / (4 * 3 * (n2d + 65 * n3d + 65 * n4d * (nscalar - first)))))
    cases = {  # (d1, d2, d3) = (i, k, j) memory sizes, (s1, s2, s3) halo sizes, (i0, k0, j0) start
        "y": ((n + 9, 65, 52), (n, 65, 3), (5, 0, 7)),
        "x": ((32, 65, n + 8), (3, 65, n), (22, 0, 4)),
    }
    patterns = []
    for axis, ((d1, d2, d3), (s1, s2, s3), (i0, k0, j0)) in cases.items():
        ranks = (2,) * n2d + (3,) * n3d + (4,) * n4d
        nbytes = {2: 4 * d1 * d3, 3: 4 * d1 * d2 * d3, 4: 4 * d1 * d2 * d3 * nscalar}
        bases = np.concatenate([[0], np.cumsum([nbytes[r] for r in ranks])]).tolist()
        layout = (
            f"{n2d} 2-D ({d3}x{d1}), {n3d} 3-D ({d3}x{d2}x{d1}), {n4d} 4-D "
            f"({nscalar}x{d3}x{d2}x{d1}) float arrays in a row, halo {s3}x{s2}x{s1} (j x k x i)"
        )
        # vector flavour: displacements point at the halo's first element
        t2 = b.tmp(MPI.FLOAT.Create_vector(s3, s1, d1))
        plane = b.tmp(MPI.FLOAT.Create_vector(s2, s1, d1))
        t3 = b.tmp(plane.Create_hvector(s3, 1, 4 * d1 * d2))
        t4 = b.tmp(t3.Create_hvector(nscalar - first, 1, 4 * d1 * d2 * d3))
        vec = {2: t2, 3: t3, 4: t4}
        first_elem = {
            2: i0 + d1 * j0,
            3: i0 + d1 * (k0 + d2 * j0),
            4: i0 + d1 * (k0 + d2 * (j0 + d3 * first)),
        }
        disps = [base + 4 * first_elem[r] for base, r in zip(bases, ranks)]
        t = b.tmp(MPI.Datatype.Create_struct([1] * len(ranks), disps, [vec[r] for r in ranks]))
        patterns.append(_pattern(f"WRF_{axis}_vec", t, 1, bases[-1],
                                 f"WRF {axis} halo, struct of vector/hvector types: {layout}"))
        # subarray flavour: displacements point at the arrays
        sub = {
            2: b.tmp(MPI.FLOAT.Create_subarray([d3, d1], [s3, s1], [j0, i0])),
            3: b.tmp(MPI.FLOAT.Create_subarray([d3, d2, d1], [s3, s2, s1], [j0, k0, i0])),
            4: b.tmp(MPI.FLOAT.Create_subarray([nscalar, d3, d2, d1], [nscalar - first, s3, s2, s1],
                                               [first, j0, k0, i0])),
        }
        t = b.tmp(MPI.Datatype.Create_struct([1] * len(ranks), bases[:-1], [sub[r] for r in ranks]))
        patterns.append(_pattern(f"WRF_{axis}_sa", t, 1, bases[-1],
                                 f"WRF {axis} halo, struct of subarray types (C order): {layout}"))
    return patterns


def _fft(MPI, b, target, procs=4):
    # 2-D FFT transpose: a (N/P) x N slab of complex doubles; the receive type of the
    # all-to-all takes N/P columns of N/P complex numbers, transposed.
    nloc = max(1, round(math.sqrt(target / (16 * procs))))
    n = nloc * procs
    cplx = b.tmp(MPI.DOUBLE.Create_contiguous(2))
    col = b.tmp(cplx.Create_vector(nloc, 1, n))
    col16 = b.tmp(col.Create_resized(0, 16))
    t = b.tmp(col16.Create_contiguous(nloc))
    return [
        _pattern(
            "FFT", t, procs, 16 * nloc * n,
            f"2-D FFT transpose on {procs} ranks: contiguous({nloc}, resized(vector({nloc}, 1, {n}, "
            f"contiguous(2, DOUBLE)), lb=0, extent=16)) x {procs} over a {nloc}x{n} complex slab",
        )
    ]


def _face3d(MPI, b, target):
    # A cube of n^3 interior doubles with one ghost layer; the last interior plane in
    # each direction, as an MPI subarray (C order: z, y, x).
    n = max(1, round(math.sqrt(target / 8)))
    g = n + 2
    faces = {
        "x": ([n, n, 1], [1, 1, n]),
        "y": ([n, 1, n], [1, n, 1]),
        "z": ([1, n, n], [n, 1, 1]),
    }
    patterns = []
    for axis, (subsizes, starts) in faces.items():
        t = b.tmp(MPI.DOUBLE.Create_subarray([g, g, g], subsizes, starts))
        patterns.append(
            _pattern(
                f"FACE3D_{axis}", t, 1, 8 * g**3,
                f"3-D face exchange, {axis} face: subarray(sizes={[g, g, g]}, subsizes={subsizes}, "
                f"starts={starts}, order=C, DOUBLE)",
            )
        )
    return patterns


def ddtbench_patterns(target_nbytes: int = 512 * 1024, seed: int = 0) -> dict[str, Pattern]:
    """Build the DDTBench application patterns, scaled to about ``target_nbytes`` packed.

    Not collective. After Schneider, Gerstenberger and Hoefler, "Micro-applications for
    communication data access patterns and MPI datatypes" (EuroMPI 2012), with the
    datatype constructions of DDTBench's C sources: NAS_LU_x, NAS_LU_y, NAS_MG_x,
    NAS_MG_y, NAS_MG_z, MILC_su3_zd, SPECFEM3D_oc, SPECFEM3D_cm, LAMMPS_full,
    LAMMPS_atomic, WRF_x_vec, WRF_y_vec, WRF_x_sa, WRF_y_sa, FFT, plus a 3-D face
    exchange as subarrays (FACE3D_x, FACE3D_y, FACE3D_z). One dimension of each is
    scaled so the packed size is within a factor 1.5 of the target; the others keep
    DDTBench's values (or its smallest grid where a cubic scaling would need buffers of
    hundreds of MB). Offsets that DDTBench gives as addresses (MPI_BOTTOM) are
    displacements from the start of one buffer holding all of the pattern's arrays.

    Parameters
    ----------
    target_nbytes : int
        Packed size to aim for [bytes].
    seed : int
        Seed of the shuffled index lists (SPECFEM3D, LAMMPS), as DDTBench shuffles.

    Returns
    -------
    dict[str, Pattern]
        By name. The caller frees them (``Pattern.free``).
    """
    MPI = _mpi()
    target = _check_nbytes(target_nbytes, "target_nbytes")
    rng = np.random.default_rng(seed)
    b = _Builder(MPI)
    patterns: list[Pattern] = []
    try:
        patterns += _nas_lu(MPI, b, target)
        patterns += _nas_mg(MPI, b, target)
        patterns += _milc(MPI, b, target)
        patterns += _specfem(MPI, b, rng, target)
        patterns += _lammps(MPI, b, rng, target)
        patterns += _wrf(MPI, b, target)
        patterns += _fft(MPI, b, target)
        patterns += _face3d(MPI, b, target)
    except BaseException:
        for p in patterns:
            p.free()
        raise
    finally:
        # the patterns' own datatypes were handed over; drop them from the temporaries
        kept = {id(p.datatype) for p in patterns}
        b.temps = [t for t in b.temps if id(t) not in kept]
        b.close()
    return {p.name: p for p in patterns}


def tempi_sweep(
    block_nbytes_list=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    stride_nbytes: int = 512,
    total_nbytes: int = 1 << 20,
) -> dict[str, Pattern]:
    """Build TEMPI's 2-D byte-vector sweep: blocks of ``b`` bytes every ``stride_nbytes``.

    Not collective. For each ``b`` in ``block_nbytes_list``:
    ``MPI.BYTE.Create_vector(total_nbytes // b, b, stride_nbytes)``, one instance, so the
    packed size is ``total_nbytes`` and the buffer spans about
    ``total_nbytes * stride_nbytes / b`` bytes (512 MiB for 1-byte blocks by default).

    Parameters
    ----------
    block_nbytes_list : sequence of int
        Block sizes [bytes], each in ``1..stride_nbytes`` and dividing ``total_nbytes``.
    stride_nbytes : int
        Distance between block starts [bytes].
    total_nbytes : int
        Packed size of each pattern [bytes].

    Returns
    -------
    dict[str, Pattern]
        By name ``vec_b{b}_s{stride_nbytes}``. The caller frees them.
    """
    MPI = _mpi()
    stride = _check_nbytes(stride_nbytes, "stride_nbytes")
    total = _check_nbytes(total_nbytes, "total_nbytes")
    blocks = [_check_nbytes(v, "block_nbytes_list entry") for v in block_nbytes_list]
    for blk in blocks:
        if blk > stride or total % blk:
            raise ValueError(
                f"block_nbytes_list entry {blk} must be <= stride_nbytes={stride} "
                f"and divide total_nbytes={total}"
            )
    out: dict[str, Pattern] = {}
    try:
        for blk in blocks:
            nblocks = total // blk
            t = MPI.BYTE.Create_vector(nblocks, blk, stride)
            name = f"vec_b{blk}_s{stride}"
            out[name] = _pattern(
                name, t, 1, (nblocks - 1) * stride + blk,
                f"TEMPI 2-D byte vector: vector({nblocks}, {blk}, {stride}, BYTE)",
            )
    except BaseException:
        for p in out.values():
            p.free()
        raise
    return out
