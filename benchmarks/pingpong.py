"""Ping-pong latency and bandwidth between ranks 0 and 1: plain mpi4py vs hpcore.Comm, contiguous and strided."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .common import BenchmarkError, Column, command_line, format_table, machine_lines, median, ratio, write_json

COMMAND = "pingpong"
HELP = "ping-pong latency and bandwidth vs plain mpi4py (mpiexec -n 2)"

__all__ = ["Variant", "message_sizes", "iterations", "run", "add_arguments"]

TAG = 11


def add_arguments(parser) -> None:
    parser.add_argument("--max-bytes", type=int, default=1 << 22, metavar="B",
                        help="largest message [bytes] (default 4194304); sizes are powers of 4 from 1")
    parser.add_argument("--samples", type=int, default=5, metavar="N",
                        help="timed loops per variant and size, interleaved; the median is shown (default 5)")
    parser.add_argument("--device", action="store_true",
                        help="also ping-pong device buffers (needs CuPy and a GPU)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write settings and raw samples here (rank 0)")


def message_sizes(max_nbytes: int, min_nbytes: int = 1) -> list:
    """Powers of 4 [bytes] from ``min_nbytes`` (rounded up) to ``max_nbytes``."""
    sizes, n = [], 1
    while n <= max_nbytes:
        if n >= min_nbytes:
            sizes.append(n)
        n *= 4
    return sizes


def iterations(nbytes: int) -> tuple:
    """``(warmup, timed)`` round trips per loop: many for small messages, few for large ones."""
    timed = int(min(500, max(10, (1 << 21) // max(nbytes, 1))))
    return max(2, timed // 10), timed


@dataclass
class Variant:
    """One way to move a message: ``send(buf, dest)`` / ``recv(buf, source)`` on ``comm``."""

    name: str
    send: Callable
    recv: Callable
    method: Optional[str] = None  # what hpcore chose, where it chooses


# --------------------------------------------------------------------------- buffers and checks


def _buffers(xp, nbytes: int, strided: bool):
    """``(send, recv, touched)``: send holds 1, 2, 3, ...; recv is zeroed. Strided: doubles,
    every other one part of the message (a vector with blocklength 1 and stride 2)."""
    if strided:
        n = nbytes // 8
        sbuf = xp.arange(1, 2 * n + 1, dtype=xp.float64)
        rbuf = xp.zeros(2 * n, dtype=xp.float64)
        touched = np.zeros(2 * n, dtype=bool)
        touched[0::2] = True
    else:
        sbuf = (xp.arange(nbytes, dtype=xp.int64) % 251 + 1).astype(xp.uint8)
        rbuf = xp.zeros(nbytes, dtype=xp.uint8)
        touched = np.ones(nbytes, dtype=bool)
    return sbuf, rbuf, touched


def _to_host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a


def _check(pair, variant: Variant, sbuf, rbuf, touched, what: str) -> None:
    """One round trip with known data; every rank raises if either receiver saw wrong bytes.

    Collective on ``pair``.
    """
    rank = pair.Get_rank()
    rbuf[...] = 0
    if rank == 0:
        variant.send(sbuf, 1)
        variant.recv(rbuf, 1)
    else:
        variant.recv(rbuf, 0)
    got, want = _to_host(rbuf), _to_host(sbuf)
    ok = bool(np.array_equal(got[touched], want[touched]) and not np.any(got[~touched]))
    if rank == 1:
        # echo what arrived: rank 0 then checks the data made the whole round trip
        variant.send(rbuf if ok else sbuf * 0, 0)
    from mpi4py import MPI

    if not pair.allreduce(ok, op=MPI.LAND):
        raise BenchmarkError(f"pingpong: {variant.name} delivered wrong data for {what} "
                             f"(rank {rank}: {'ok' if ok else 'wrong'})")
    rbuf[...] = 0


def _loop(pair, variant: Variant, sbuf, rbuf, iters: int) -> float:
    """``iters`` round trips; returns rank 0's one-way time [s] (round trip / 2)."""
    rank = pair.Get_rank()
    send, recv = variant.send, variant.recv
    pair.Barrier()
    t0 = time.perf_counter()
    if rank == 0:
        for _ in range(iters):
            send(sbuf, 1)
            recv(rbuf, 1)
    else:
        for _ in range(iters):
            recv(rbuf, 0)
            send(sbuf, 0)
    elapsed = time.perf_counter() - t0
    return elapsed / (2 * iters)


# --------------------------------------------------------------------------- variants


def _variants(pair, hc, strided: bool, device: bool, vec=None) -> list:
    """The ways to send one kind of message; the first is the plain-mpi4py peer (if any)."""
    from mpi4py import MPI

    out = []
    if not strided:
        if not device or hc.cuda_aware:
            out.append(Variant("mpi4py", lambda b, d: pair.Send([b, MPI.BYTE], d, TAG),
                               lambda b, s: pair.Recv([b, MPI.BYTE], s, TAG)))
        out.append(Variant("hpcore", lambda b, d: hc.send(b, d, TAG), lambda b, s: hc.recv(b, s, TAG)))
        return out
    if not device or hc.cuda_aware:
        out.append(Variant("mpi4py", lambda b, d: pair.Send([b, 1, vec], d, TAG),
                           lambda b, s: pair.Recv([b, 1, vec], s, TAG)))
    out.append(Variant("hpcore auto", lambda b, d: hc.send(b, d, TAG, datatype=vec),
                       lambda b, s: hc.recv(b, s, TAG, datatype=vec)))
    forced = ["host_pack"] if not device else (["device_pack", "staged"] if hc.cuda_aware else ["staged"])
    for m in forced:
        out.append(Variant(f"hpcore {m}", lambda b, d, m=m: hc.send(b, d, TAG, datatype=vec, method=m),
                           lambda b, s, m=m: hc.recv(b, s, TAG, datatype=vec, method=m)))
    return out


def measure(pair, hc, xp, strided: bool, sizes, samples: int, device: bool) -> dict:
    """Verify, then time every variant at every size, loops interleaved across variants.

    Collective on ``pair`` (2 ranks). Returns ``{nbytes: {"iters", "samples": {name:
    [s]}, "auto": method}}`` with one-way times [s] as rank 0 measured them.
    """
    from mpi4py import MPI

    results = {}
    for nbytes in sizes:
        vec = MPI.DOUBLE.Create_vector(nbytes // 8, 1, 2).Commit() if strided else None
        try:
            variants = _variants(pair, hc, strided, device, vec)
            sbuf, rbuf, touched = _buffers(xp, nbytes, strided)
            what = f"{nbytes} B {'strided' if strided else 'contiguous'} {'device' if device else 'host'} messages"
            for v in variants:
                _check(pair, v, sbuf, rbuf, touched, what)
            auto = hc.choose(sbuf, vec, 1) if strided else hc.choose(sbuf)
            warm, iters = iterations(nbytes)
            for v in variants:
                _loop(pair, v, sbuf, rbuf, warm)
            raw = {v.name: [] for v in variants}
            for _ in range(samples):
                for v in variants:
                    raw[v.name].append(_loop(pair, v, sbuf, rbuf, iters))
            results[nbytes] = {"iters": iters, "warmup": warm, "samples": raw, "auto": auto}
        finally:
            if vec is not None:
                vec.Free()
    return results


def _table(results: dict, markdown: bool) -> str:
    names = list(next(iter(results.values()))["samples"])
    base = names[0]
    cols = [Column("size [B]", "d"), Column("iters", "d")]
    cols += [Column(f"{n} [us]", ".2f") for n in names]
    cols += [Column(f"{n} [MB/s]", ".1f") for n in names]
    cols += [Column(f"{n}/{base} [x]", ".2f") for n in names[1:]]
    cols += [Column("auto chose", left=True)]
    rows = []
    for nbytes, r in results.items():
        t = {n: median(v) for n, v in r["samples"].items()}
        rows.append([nbytes, r["iters"]] + [t[n] * 1e6 for n in names] + [nbytes / t[n] / 1e6 for n in names]
                    + [ratio(t[base], t[n]) for n in names[1:]] + [r["auto"]])
    return format_table(cols, rows, markdown=markdown)


# --------------------------------------------------------------------------- entry


def run(args, markdown: bool = False) -> int:
    """``mpiexec -n 2 python -m benchmarks pingpong``. Collective on ``MPI.COMM_WORLD``."""
    from mpi4py import MPI

    import hpcore

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    if size < 2:
        if rank == 0:
            print("pingpong: needs 2 ranks: mpiexec -n 2 python -m benchmarks pingpong", file=sys.stderr)
        return 2
    if args.max_bytes < 1 or args.samples < 1:
        raise SystemExit("pingpong: --max-bytes and --samples must be >= 1")
    pair = world.Split(0 if rank < 2 else MPI.UNDEFINED, rank)
    if pair == MPI.COMM_NULL:
        return 0  # ranks >= 2 idle
    t_start = time.perf_counter()
    cmd = command_line("pingpong", [("--max-bytes", args.max_bytes), ("--samples", args.samples),
                                    ("--device", args.device)], nprocs=size, markdown=markdown)
    cp = None
    if args.device:
        from hpcore.arrays import cupy_or_none

        cp = cupy_or_none()
        if cp is not None:
            cp.cuda.Device(rank % cp.cuda.runtime.getDeviceCount()).use()
    hc = hpcore.Comm(pair)
    sizes = message_sizes(args.max_bytes)
    kinds = [("host", np, False), ("host", np, True)]
    if cp is not None:
        kinds += [("device", cp, False), ("device", cp, True)]
    out = {}
    for where, xp, strided in kinds:
        s = [n for n in sizes if n >= 8] if strided else sizes
        out[(where, strided)] = measure(pair, hc, xp, strided, s, args.samples, where == "device")
    if rank == 0:
        print("# ping-pong between ranks 0 and 1: plain mpi4py vs hpcore.Comm")
        for line in machine_lines(MPI):
            print("# " + line)
        print(f"# {size} ranks; hpcore perf model: {hc.model.source}; CUDA-aware: {hc.cuda_aware}")
        print(f"# one-way time = round trip / 2, median of {args.samples} interleaved loops of 'iters' round "
              "trips after warm-up; MB/s = 1e6 bytes of message per one-way time; ratios are speedups vs the "
              "first column (>1: faster)")
        for (where, strided), res in out.items():
            print()
            if strided:
                print(f"## {where}, non-contiguous: size/8 doubles, vector(count, blocklength 1, stride 2), "
                      "buffer spans 2x the message")
            else:
                print(f"## {where}, contiguous uint8 (hpcore: datatype=None)")
            print(_table(res, markdown) if res else "(no message sizes)")
        if args.device and cp is None:
            print("\n# device: skipped: CuPy is not installed or sees no CUDA device")
        print(f"\n# {time.perf_counter() - t_start:.0f} s. Reproduce: {cmd}")
        if args.json:
            write_json(args.json, {"command": cmd, "machine": machine_lines(MPI), "samples": args.samples,
                                   "results": {f"{w}-{'strided' if s else 'contiguous'}": r
                                               for (w, s), r in out.items()}})
    pair.Free()
    return 0
