"""Pack/unpack throughput: hpcore vs MPI_Pack/MPI_Unpack vs memcpy on the DDTBench and TEMPI patterns."""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .common import (
    BenchmarkError,
    Column,
    command_line,
    format_table,
    interleaved_samples,
    machine_lines,
    median,
    ratio,
    write_json,
)

COMMAND = "pack"
HELP = "pack/unpack throughput vs MPI_Pack and memcpy (serial)"

__all__ = ["Case", "build_cases", "host_pack_bench", "device_pack_bench", "strided_peer", "run", "add_arguments"]

RUN_TARGET_NBYTES = 256
"""Patterns with mean runs of at least this many bytes are held to the memcpy target."""
MEMCPY_TARGET = 0.60
MEDIAN_TARGET = 2.0
EVERY_TARGET = 1.0


@dataclass
class Case:
    """One pattern to time: ``group`` is "DDTBench" or "TEMPI"."""

    group: str
    pattern: object  # hpcore.testing.typezoo.Pattern
    mean_run_nbytes: float = 0.0
    result: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.pattern.name


def add_arguments(parser) -> None:
    parser.add_argument("--target-kib", type=int, default=512, metavar="KIB",
                        help="packed size of the DDTBench patterns [KiB] (default 512); TEMPI's are 1 MiB")
    parser.add_argument("--repeat", type=int, default=30, metavar="N", help="timed samples per op (default 30)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed rounds first (default 3)")
    parser.add_argument("--only", default=None, metavar="REGEX", help="only patterns whose name matches")
    parser.add_argument("--device", action="store_true",
                        help="also time device packing (needs CuPy and a GPU) against CuPy's own copy")
    parser.add_argument("--json", default=None, metavar="PATH", help="write settings and raw samples here")


# --------------------------------------------------------------------------- cases


def build_cases(target_nbytes: int, only: str | None = None) -> list:
    """DDTBench patterns at ``target_nbytes`` plus TEMPI's byte-vector sweep. Caller frees."""
    import hpcore
    from hpcore.testing import typezoo

    found = [("DDTBench", p) for p in typezoo.ddtbench_patterns(target_nbytes).values()]
    found += [("TEMPI", p) for p in typezoo.tempi_sweep().values()]
    cases = []
    for group, p in found:
        if only and not re.search(only, p.name):
            p.free()
            continue
        ctype = hpcore.canonicalize(p.datatype)
        run = ctype.size / ctype.nblocks if ctype.nblocks else float(ctype.size)
        cases.append(Case(group, p, run))
    return cases


def _filled(nbytes: int, seed: int) -> np.ndarray:
    """A buffer of pseudo-random bytes (a random block of an odd length, repeated)."""
    block = np.random.default_rng(seed).integers(0, 256, (1 << 20) + 7, dtype=np.uint8)
    buf = np.empty(nbytes, dtype=np.uint8)
    for off in range(0, nbytes, block.size):
        n = min(block.size, nbytes - off)
        buf[off:off + n] = block[:n]
    return buf


def _exact_instances(MPI, datatype, count: int):
    """``count`` instances as one instance of extent 1 (mpi4py infers Pack's count from
    the buffer length over the extent; a 1-byte buffer view then means exactly one)."""
    contig = datatype.Create_contiguous(count)
    try:
        return contig.Create_resized(0, 1).Commit()
    finally:
        contig.Free()


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    bad = np.flatnonzero(a != b)
    return f"{bad.size} of {a.size} bytes differ, first at byte {bad[0]} ({a[bad[0]]} != {b[bad[0]]})"


# --------------------------------------------------------------------------- host


def host_pack_bench(case: Case, repeat: int, warmup: int) -> dict:
    """Verify, then time hpcore pack/unpack, MPI Pack/Unpack and memcpy on one case.

    Not collective (``MPI.COMM_SELF``). Raises :class:`BenchmarkError` when hpcore's
    bytes differ from MPI's. Returns the raw samples [s] by op and the packed size.
    """
    from mpi4py import MPI

    import hpcore
    from hpcore.testing import typezoo

    p = case.pattern
    dt, count, nbytes = p.datatype, p.count, p.packed_nbytes
    buf = _filled(p.buffer_nbytes, seed=len(p.name))

    # ---- correctness first: pack bytes, and unpack into a zeroed buffer, against MPI
    ref = typezoo.mpi_pack(buf, dt, count)
    got = hpcore.pack(buf, dt, count)
    if got.nbytes != ref.nbytes or not np.array_equal(got, ref):
        raise BenchmarkError(
            f"pack: hpcore.pack differs from MPI_Pack on pattern {p.name} "
            f"({got.nbytes} vs {ref.nbytes} bytes; "
            f"{_first_difference(got, ref) if got.nbytes == ref.nbytes else 'sizes differ'})")
    mine, theirs = np.zeros_like(buf), np.zeros_like(buf)
    hpcore.unpack(ref, mine, dt, count)
    typezoo.mpi_unpack(ref, theirs, dt, count)
    if not np.array_equal(mine, theirs):
        raise BenchmarkError(f"unpack: hpcore.unpack differs from MPI_Unpack on pattern {p.name}: "
                             f"{_first_difference(mine, theirs)}")
    del mine, theirs, got

    # ---- timing: everything allocated and created outside the timed calls
    out = np.empty(nbytes, dtype=np.uint8)
    mpi_out = bytearray(nbytes)
    copy_src = ref.copy()
    copy_dst = np.empty(nbytes, dtype=np.uint8)
    packed = ref.copy()
    mpi_packed = bytearray(ref.tobytes())
    exact = _exact_instances(MPI, dt, count)
    try:
        inbuf = MPI.buffer.fromaddress(buf.ctypes.data, 1, readonly=True)
        outbuf = MPI.buffer.fromaddress(buf.ctypes.data, 1)
        self_comm = MPI.COMM_SELF
        ops = {
            "hpcore_pack": lambda: hpcore.pack(buf, dt, count, out=out),
            "mpi_pack": lambda: exact.Pack(inbuf, mpi_out, 0, self_comm),
            "memcpy": lambda: np.copyto(copy_dst, copy_src),
            # unpacking writes the bytes that are already there: the buffer stays as verified
            "hpcore_unpack": lambda: hpcore.unpack(packed, buf, dt, count),
            "mpi_unpack": lambda: exact.Unpack(mpi_packed, 0, outbuf, self_comm),
        }
        samples = interleaved_samples(ops, repeat, warmup)
        if exact.Pack(inbuf, mpi_out, 0, self_comm) != nbytes or bytes(mpi_out) != ref.tobytes():
            raise BenchmarkError(f"MPI_Pack through the count-{count} wrapper type differs on {p.name}")
    finally:
        exact.Free()
    if not np.array_equal(out, ref):
        raise BenchmarkError(f"pack: hpcore.pack into out= differs from MPI_Pack on pattern {p.name}")
    return {"nbytes": nbytes, "samples": samples, "engine": _engines(hpcore.plan(dt, count))}


def _engines(pl) -> str:
    """The host engines hpcore's plan settled on, "pack/unpack" (where the plan records them)."""
    state = getattr(pl, "host_state", None)
    if not isinstance(state, dict):
        return "numpy"
    return f"{state.get('pack', '?')}/{state.get('unpack', '?')}"


def _host_rows(cases):
    rows = []
    for c in cases:
        r = c.result
        n = r["nbytes"]
        t = {k: median(v) for k, v in r["samples"].items()}
        r["median_s"] = t
        rows.append([
            c.name, n / 1024, c.mean_run_nbytes,
            n / t["hpcore_pack"] / 1e9, n / t["mpi_pack"] / 1e9, n / t["memcpy"] / 1e9,
            ratio(t["mpi_pack"], t["hpcore_pack"]), 100 * ratio(t["memcpy"], t["hpcore_pack"]),
            ratio(t["mpi_unpack"], t["hpcore_unpack"]), r.get("engine", "numpy"),
        ])
        r["ratio"] = rows[-1][6]
        r["memcpy_fraction"] = rows[-1][7] / 100
        r["unpack_ratio"] = rows[-1][8]
    return rows


HOST_COLUMNS = [
    Column("pattern", left=True),
    Column("packed [KiB]", ".1f"),
    Column("mean run [B]", ".1f"),
    Column("hpcore [GB/s]", ".2f"),
    Column("MPI_Pack [GB/s]", ".2f"),
    Column("memcpy [GB/s]", ".2f"),
    Column("hpcore/MPI [x]", ".2f"),
    Column("of memcpy [%]", ".0f"),
    Column("unpack hpcore/MPI [x]", ".2f"),
    Column("engine pack/unpack", left=True),
]


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def host_summary(cases) -> list:
    """Footer lines: the median and minimum ratios and the memcpy fraction, against the targets."""
    lines = []
    ddt = [c for c in cases if c.group == "DDTBench"]
    if ddt:
        med = median([c.result["ratio"] for c in ddt])
        umed = median([c.result["unpack_ratio"] for c in ddt])
        lines.append(f"median hpcore/MPI pack over {len(ddt)} DDTBench patterns: {med:.2f}x "
                     f"(target >= {MEDIAN_TARGET:g}x: {_verdict(med >= MEDIAN_TARGET)}); unpack: {umed:.2f}x")
    if cases:
        worst = min(cases, key=lambda c: c.result["ratio"])
        below = [f"{c.name} {c.result['ratio']:.2f}x" for c in cases if c.result["ratio"] < EVERY_TARGET]
        lines.append(f"minimum hpcore/MPI pack: {worst.result['ratio']:.2f}x on {worst.name} "
                     f"(target >= {EVERY_TARGET:g}x on every pattern: {_verdict(not below)})")
        if below:
            lines.append(f"  slower than MPI_Pack ({len(below)}): " + ", ".join(below))
        uworst = min(cases, key=lambda c: c.result["unpack_ratio"])
        ubelow = [c.name for c in cases if c.result["unpack_ratio"] < EVERY_TARGET]
        lines.append(f"minimum hpcore/MPI unpack: {uworst.result['unpack_ratio']:.2f}x on {uworst.name}; "
                     f"slower than MPI_Unpack: {', '.join(ubelow) if ubelow else 'none'}")
    long_runs = [c for c in cases if c.mean_run_nbytes >= RUN_TARGET_NBYTES]
    if long_runs:
        fr = [c.result["memcpy_fraction"] for c in long_runs]
        worst = min(long_runs, key=lambda c: c.result["memcpy_fraction"])
        below = [f"{c.name} {100 * c.result['memcpy_fraction']:.0f}%" for c in long_runs
                 if c.result["memcpy_fraction"] < MEMCPY_TARGET]
        lines.append(f"hpcore % of memcpy, mean runs >= {RUN_TARGET_NBYTES} B ({len(long_runs)} patterns): "
                     f"median {100 * median(fr):.0f}%, minimum {100 * min(fr):.0f}% on {worst.name} "
                     f"(target >= {100 * MEMCPY_TARGET:.0f}%: {_verdict(not below)})")
        if below:
            lines.append("  below target: " + ", ".join(below))
    return lines


# --------------------------------------------------------------------------- device


def _view(xp, u8, start: int, shape: tuple, strides: tuple, itemsize: int):
    """A strided view of the flat byte array ``u8`` from byte ``start`` (as_strided)."""
    dtype = np.dtype(f"u{itemsize}")
    if xp is np:
        return np.ndarray(shape, dtype=dtype, buffer=u8, offset=start, strides=strides)
    return xp.ndarray(shape, dtype=dtype, memptr=u8.data + start, strides=strides)


def _mpi_offsets(datatype, count: int, buffer_nbytes: int) -> np.ndarray:
    """Byte offset of every packed byte in the buffer, in typemap order (found with MPI_Pack)."""
    from hpcore.testing import typezoo

    offsets = np.zeros(datatype.Get_size() * count, dtype=np.int64)
    positions = np.arange(buffer_nbytes, dtype=np.int64)
    for k in range(math.ceil(max(buffer_nbytes - 1, 1).bit_length() / 8)):
        plane = ((positions >> (8 * k)) & 0xFF).astype(np.uint8)
        offsets |= typezoo.mpi_pack(plane, datatype, count).astype(np.int64) << (8 * k)
    return offsets


def strided_peer(xp, case: Case, buf_u8):
    """The array library's own way to pack ``case``: ``(kind, fn)``, ``fn()`` returns the packed bytes.

    Not collective. One strided block with a dense packed side (vectors, subarrays,
    TEMPI's sweep): ``xp.ascontiguousarray`` of an ``as_strided`` view, in words as wide
    as the layout allows (<= 8 B). Anything else (index lists, several blocks): a
    gather ``take`` with the word indices, which MPI_Pack of position planes gives.
    ``xp`` is ``cupy`` (the benchmark) or ``numpy`` (to test the peer without a GPU).
    """
    import hpcore
    from hpcore.datatype import StridedBlock

    p = case.pattern
    pl = hpcore.plan(p.datatype, p.count)
    word = min(8, min((st.word for st in pl.steps), default=1))
    steps = pl.steps
    if len(steps) == 1 and isinstance(steps[0].piece, StridedBlock) and steps[0].piece.packed_start == 0:
        b = steps[0].piece
        dense = all(ps == math.prod(b.counts[:i]) for i, ps in enumerate(b.packed_strides) if i > 0) and \
            (b.ndim == 1 or b.packed_strides[0] == 1)
        if dense:
            shape = tuple(reversed(b.counts[1:])) + (b.run // word,)
            strides = tuple(reversed(b.strides[1:])) + (word,)
            view = _view(xp, buf_u8, b.start, shape, strides, word)
            return f"as_strided u{word}", lambda: xp.ascontiguousarray(view).reshape(-1).view(xp.uint8)
    offsets = _mpi_offsets(p.datatype, p.count, p.buffer_nbytes)
    words = offsets.reshape(-1, word)
    if not (np.all(words[:, 0] % word == 0) and np.all(words - words[:, :1] == np.arange(word))):
        word, words = 1, offsets.reshape(-1, 1)
    index = xp.asarray(words[:, 0] // word)
    flat = _view(xp, buf_u8, 0, (buf_u8.nbytes // word,), (word,), word)
    return f"take u{word}", lambda: xp.take(flat, index).view(xp.uint8)


def _event_timer(cp):
    start, end = cp.cuda.Event(), cp.cuda.Event()

    def timer(fn):
        start.record()
        fn()
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end) * 1e-3

    return timer


def device_pack_bench(cp, case: Case, repeat: int, warmup: int) -> dict:
    """Verify, then time hpcore device pack vs the array library's own copy vs a D2D copy.

    Not collective. Work runs on the current CuPy stream; each sample is bracketed by
    CUDA events and the stream is synchronized before timing starts.
    """
    import hpcore
    from hpcore.testing import typezoo

    p = case.pattern
    dt, count, nbytes = p.datatype, p.count, p.packed_nbytes
    host = _filled(p.buffer_nbytes, seed=len(p.name))
    ref = typezoo.mpi_pack(host, dt, count)
    dbuf = cp.asarray(host)
    del host
    dout = cp.empty(nbytes, dtype=cp.uint8)
    got = cp.asnumpy(hpcore.pack(dbuf, dt, count, out=dout))
    if not np.array_equal(got, ref):
        raise BenchmarkError(f"device pack: hpcore.pack differs from MPI_Pack on pattern {p.name}: "
                             f"{_first_difference(got, ref)}")
    kind, peer = strided_peer(cp, case, dbuf)
    if not np.array_equal(cp.asnumpy(peer()), ref):
        raise BenchmarkError(f"device peer ({kind}) differs from MPI_Pack on pattern {p.name}")
    dsrc, ddst = cp.asarray(ref), cp.empty(nbytes, dtype=cp.uint8)
    stream = cp.cuda.get_current_stream()
    ops = {
        "hpcore_pack": lambda: hpcore.pack(dbuf, dt, count, out=dout),
        "cupy_peer": peer,
        "d2d_copy": lambda: ddst.data.copy_from_device_async(dsrc.data, nbytes, stream),
    }
    stream.synchronize()
    samples = interleaved_samples(ops, repeat, warmup, sync=stream.synchronize, timer=_event_timer(cp))
    return {"nbytes": nbytes, "samples": samples, "peer": kind}


DEVICE_COLUMNS = [
    Column("pattern", left=True),
    Column("packed [KiB]", ".1f"),
    Column("mean run [B]", ".1f"),
    Column("hpcore [GB/s]", ".1f"),
    Column("CuPy peer [GB/s]", ".1f"),
    Column("D2D copy [GB/s]", ".1f"),
    Column("hpcore/CuPy [x]", ".2f"),
    Column("of D2D [%]", ".0f"),
    Column("peer", left=True),
]


def _device_rows(cases):
    rows = []
    for c in cases:
        r = c.result["device"]
        n = r["nbytes"]
        t = {k: median(v) for k, v in r["samples"].items()}
        r["median_s"] = t
        rows.append([c.name, n / 1024, c.mean_run_nbytes, n / t["hpcore_pack"] / 1e9, n / t["cupy_peer"] / 1e9,
                     n / t["d2d_copy"] / 1e9, ratio(t["cupy_peer"], t["hpcore_pack"]),
                     100 * ratio(t["d2d_copy"], t["hpcore_pack"]), r["peer"]])
    return rows


# --------------------------------------------------------------------------- entry


def run(args, markdown: bool = False) -> int:
    """``python -m benchmarks pack``: the host table, then the device table with ``--device``."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if world.Get_rank() != 0:
        return 0  # serial benchmark: extra ranks do nothing (and take no CPU from rank 0)
    if args.repeat < 1 or args.warmup < 0 or args.target_kib < 1:
        raise SystemExit("pack: --repeat and --target-kib must be >= 1, --warmup >= 0")
    options = [("--target-kib", args.target_kib), ("--repeat", args.repeat), ("--warmup", args.warmup),
               ("--only", args.only), ("--device", args.device)]
    cmd = command_line("pack", options, markdown=markdown)
    if world.Get_size() > 1:
        print(f"pack: serial benchmark, running on rank 0 of {world.Get_size()} only", file=sys.stderr)
    cp = None
    if args.device:
        from hpcore.arrays import cupy_or_none

        cp = cupy_or_none()

    t_start = time.perf_counter()
    cases = build_cases(args.target_kib * 1024, args.only)
    if not cases:
        raise SystemExit(f"pack: no pattern matches --only {args.only!r}")
    try:
        print("# hpcore pack/unpack vs MPI_Pack/MPI_Unpack vs memcpy (host)")
        for line in machine_lines(MPI):
            print("# " + line)
        print(f"# DDTBench patterns at ~{args.target_kib} KiB packed; TEMPI 2-D byte vectors, 1 MiB packed, "
              f"stride 512 B. Medians of {args.repeat} samples per op after {args.warmup} warm-up rounds, "
              "ops interleaved; buffers preallocated; caches warm wherever the touched lines fit.")
        print("# GB/s = 1e9 bytes of packed data per second; ratios are speedups (>1: hpcore faster); "
              "memcpy = np.copyto of the packed size (contiguous).")
        for c in cases:
            c.result = host_pack_bench(c, args.repeat, args.warmup)
        print(format_table(HOST_COLUMNS, _host_rows(cases), markdown=markdown))
        for line in host_summary(cases):
            print(line)
        if args.device:
            print()
            if cp is None:
                print("# device: skipped: CuPy is not installed or sees no CUDA device "
                      "(pip install cupy-cuda12x on a machine with a GPU)")
            else:
                dev = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
                name = dev["name"].decode() if isinstance(dev["name"], bytes) else dev["name"]
                print(f"# hpcore device pack vs CuPy's own copy vs device-to-device copy on {name} "
                      f"(CuPy {cp.__version__}); CUDA-event times, medians of {args.repeat}")
                for c in cases:
                    c.result["device"] = device_pack_bench(cp, c, args.repeat, args.warmup)
                    cp.get_default_memory_pool().free_all_blocks()
                rows = _device_rows(cases)
                print(format_table(DEVICE_COLUMNS, rows, markdown=markdown))
                print(f"median hpcore/CuPy over all patterns: {median([r[6] for r in rows]):.2f}x, "
                      f"minimum {min(r[6] for r in rows):.2f}x")
        print(f"# {time.perf_counter() - t_start:.0f} s. Reproduce: {cmd}")
        if args.json:
            write_json(args.json, {
                "command": cmd, "machine": machine_lines(MPI), "repeat": args.repeat, "warmup": args.warmup,
                "cases": {c.name: {"group": c.group, "mean_run_nbytes": c.mean_run_nbytes, **c.result}
                          for c in cases},
            })
    finally:
        for c in cases:
            c.pattern.free()
    return 0
