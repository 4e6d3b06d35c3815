"""Allreduce in the nccl-tests format: comms ring beside MPI_Allreduce and reduce + broadcast; OSU-style overlap.

``ring`` is ``ring_allreduce`` as every caller gets it (arguments agreed across ranks by
one small allreduce per call); ``ring agreed`` passes ``agreed=True``, as a caller that
agreed once (a training loop's buckets) may.

Every size is checked first: each implementation's result is compared element by
element with ``MPI_Allreduce`` (integer-valued data, so sums are exact: ``#wrong`` must
be 0) and across ranks (bit-identical). Then each implementation runs ``iters``
back-to-back calls per sample after one untimed call and a barrier, samples interleaved
in a rotating order (ring, ring agreed, MPI, naive; ring agreed, MPI, naive, ring; ...: the one that runs after
Reduce + Bcast is measurably slower); a sample's time is the slowest rank's time per call.
algbw = size / time, busbw = algbw * 2(n-1)/n (nccl-tests' allreduce bus bandwidth).

Overlap, as OSU's non-blocking collective benchmarks define it: ``t_pure`` is start +
wait alone, ``t_compute`` is the compute alone (calibrated to ``t_pure``, in slices of
about ``--slice-us``), ``t_total`` is start, compute slices each followed by one
``test()``, wait; overlap = max(0, 1 - (t_total - t_compute) / t_pure) * 100. The peer
is ``MPI_Iallreduce`` progressed the same way (``Request.Test`` between slices).
"""

from __future__ import annotations

import os
import sys
import time
import zlib

import numpy as np

from .common import BenchmarkError, Column, command_line, format_table, machine_lines, median, ratio, write_json

COMMAND = "allreduce"
HELP = "ring allreduce vs MPI_Allreduce vs reduce+bcast, nccl-tests columns, overlap (mpiexec -n 2 or more)"

__all__ = ["add_arguments", "run", "sizes_bytes", "iterations", "measure_sizes", "measure_overlap"]

OPS = ("sum", "prod", "max", "min")


def add_arguments(parser) -> None:
    parser.add_argument("--min-bytes", type=int, default=8, metavar="B", help="smallest message [bytes] (default 8)")
    parser.add_argument("--max-bytes", type=int, default=64 << 20, metavar="B",
                        help="largest message [bytes] (default 67108864 = 64 MiB)")
    parser.add_argument("--factor", type=int, default=4, metavar="F",
                        help="size step factor, as nccl-tests -f (default 4; the largest size is always included)")
    parser.add_argument("--dtype", default="float32", help="element type (default float32)")
    parser.add_argument("--op", default="sum", choices=OPS, help="reduction (default sum)")
    parser.add_argument("--samples", type=int, default=7, metavar="N",
                        help="interleaved samples per implementation and size; the median is shown (default 7)")
    parser.add_argument("--chunk-nbytes", type=int, default=None, metavar="B",
                        help="ring pipeline chunk [bytes] (default: the library's automatic choice)")
    parser.add_argument("--window", type=int, default=None, metavar="W", help="ring receives posted ahead")
    parser.add_argument("--overlap-bytes", default="1048576,4194304,16777216", metavar="B,..",
                        help="sizes for the overlap measurement ('' to skip; default 1 MiB, 4 MiB, 16 MiB)")
    parser.add_argument("--slice-us", type=float, default=50.0, metavar="US",
                        help="compute between two test() calls in the overlap measurement [us] (default 50)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write settings and raw samples here (rank 0)")


def sizes_bytes(min_nbytes: int, max_nbytes: int, factor: int, itemsize: int) -> list:
    """Message sizes [bytes] from ``min_nbytes`` by ``factor`` up to ``max_nbytes`` (always
    included), each a whole number of elements."""
    out, n = [], max(itemsize, min_nbytes)
    while n < max_nbytes:
        out.append(n - n % itemsize)
        n *= factor
    out.append(max_nbytes - max_nbytes % itemsize)
    return sorted(set(out))


def iterations(nbytes: int) -> int:
    """Back-to-back calls per sample: ~16 MiB moved, at least 1, at most 100."""
    return int(min(100, max(1, (16 << 20) // max(nbytes, 1))))


def _slowest(comm, seconds: dict) -> dict:
    """Per-sample maximum over ranks of ``name -> [s]`` (one collective)."""
    from mpi4py import MPI

    names = list(seconds)
    local = np.array([seconds[n] for n in names], dtype=np.float64)
    out = np.empty_like(local)
    comm.Allreduce(local, out, op=MPI.MAX)
    return {n: out[i].tolist() for i, n in enumerate(names)}


def _implementations(comm, x, out, mop, ring_kw: dict) -> dict:
    """Name -> fn() writing the allreduce of x into out (the peer is 'MPI')."""
    from comms.ring import ring_allreduce

    tmp = np.empty_like(x)

    def naive():
        comm.Reduce(x, tmp, op=mop, root=0)
        if comm.Get_rank() == 0:
            out[...] = tmp
        comm.Bcast(out, root=0)

    return {
        "ring": lambda: ring_allreduce(comm, x, mop, out=out, **ring_kw),
        # a caller that agreed on the arguments once (e.g. a training loop's buckets) skips the agreement
        "ring agreed": lambda: ring_allreduce(comm, x, mop, out=out, agreed=True, **ring_kw),
        "MPI": lambda: comm.Allreduce(x, out, op=mop),
        "naive": naive,
    }


def _data(comm, count: int, dtype, op: str):
    """Integer-valued data, so that every summation order gives the same exact result."""
    rng = np.random.default_rng([17, comm.Get_rank()])
    if op == "prod":
        vals = rng.choice(np.array([-1, 1, 1, 2]), count)
    else:
        vals = rng.integers(-8, 9, count)
    return vals.astype(dtype)


def _check(comm, impls: dict, x, out, ref, what: str) -> dict:
    """Run each implementation once; count elements differing from MPI_Allreduce; check that
    the result is the same on every rank. Raises on any difference (every rank)."""
    wrong = {}
    for name, fn in impls.items():
        out[...] = 0
        fn()
        bad = int(np.count_nonzero(out != ref))
        digest = zlib.crc32(out.tobytes())
        digests = comm.allgather(digest)
        total = comm.allreduce(bad)
        wrong[name] = total
        if total or len(set(digests)) != 1:
            raise BenchmarkError(f"allreduce: {name} gave {total} wrong elements for {what}"
                                 f"{'' if len(set(digests)) == 1 else ' and results differ between ranks'}")
    return wrong


def measure_sizes(comm, sizes, dtype, op: str, samples: int, ring_kw: dict) -> dict:
    """Check, then time ring / MPI / naive at every size. Collective on ``comm``.

    Returns ``{nbytes: {"count", "iters", "wrong": {name: n}, "samples": {name: [s per call]}}}``
    with the slowest rank's time per sample.
    """
    from mpi4py import MPI

    mop = {"sum": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}[op]
    results = {}
    for nbytes in sizes:
        count = nbytes // dtype.itemsize
        x = _data(comm, count, dtype, op)
        out = np.empty_like(x)
        ref = np.empty_like(x)
        comm.Allreduce(x, ref, op=mop)
        impls = _implementations(comm, x, out, mop, ring_kw)
        wrong = _check(comm, impls, x, out, ref, f"{nbytes} B")
        iters = iterations(nbytes)
        for fn in impls.values():  # warm-up
            fn()
        raw = {name: [] for name in impls}
        names = list(impls)
        for i in range(samples):
            # rotate the order, so each implementation follows each other one equally often,
            # and give each one untimed call first (its own buffers in cache, ranks in step)
            for name in names[i % len(names):] + names[:i % len(names)]:
                fn = impls[name]
                fn()
                comm.Barrier()
                t0 = time.perf_counter()
                for _ in range(iters):
                    fn()
                raw[name].append((time.perf_counter() - t0) / iters)
        results[nbytes] = {"count": count, "iters": iters, "wrong": wrong, "samples": _slowest(comm, raw)}
    return results


# --------------------------------------------------------------------------- overlap


def _compute_slice(work):
    """A fixed, cache-resident slice of compute (a 64 x 64 matrix product)."""
    np.matmul(work[0], work[1], out=work[2])


def measure_overlap(comm, nbytes: int, dtype, samples: int, slice_us: float, ring_kw: dict) -> dict:
    """OSU-style overlap of ring_allreduce_start/test and MPI_Iallreduce/Test. Collective.

    Returns ``{name: {"pure", "compute", "total", "in_comm": [s], "slices": n, "slice_s": s}}``
    (slowest rank per sample); ``in_comm`` is the time spent inside start, the test calls
    and the final wait during ``total``: communication work the compute could not hide.
    """
    from mpi4py import MPI

    from comms.ring import ring_allreduce_start

    count = nbytes // dtype.itemsize
    x = _data(comm, count, dtype, "sum")
    out = np.empty_like(x)
    ref = np.empty_like(x)
    comm.Allreduce(x, ref)
    rng = np.random.default_rng(3)
    work = [rng.standard_normal((64, 64)), rng.standard_normal((64, 64)) / 64, np.empty((64, 64))]
    reps = 1
    while True:  # calibrate one slice (the same on every rank: the slowest rank's choice)
        t0 = time.perf_counter()
        for _ in range(reps * 20):
            _compute_slice(work)
        per = (time.perf_counter() - t0) / (reps * 20)
        if per * reps >= slice_us * 1e-6 or reps > 1 << 16:
            break
        reps = max(reps + 1, int(slice_us * 1e-6 / per))
    reps = comm.allreduce(reps, op=MPI.MAX)

    in_test = [0.0, 0.0]  # wall and CPU (thread) time inside test()

    def compute(n_slices, between=None):
        for _ in range(n_slices):
            for _ in range(reps):
                _compute_slice(work)
            if between is not None:
                t, c = time.perf_counter(), time.thread_time()
                between()
                in_test[0] += time.perf_counter() - t
                in_test[1] += time.thread_time() - c

    def ring_start():
        return ring_allreduce_start(comm, x, MPI.SUM, out=out, **ring_kw)

    def mpi_start():
        return comm.Iallreduce(x, out)

    starts = {"ring": (ring_start, lambda r: r.test(), lambda r: r.wait()),
              "MPI": (mpi_start, lambda r: r.Test(), lambda r: r.Wait())}
    result = {}
    for name, (start, test, wait) in starts.items():
        for _ in range(3):  # warm-up, and check the result once
            wait(start())
        if comm.allreduce(int(np.count_nonzero(out != ref))):
            raise BenchmarkError(f"allreduce overlap: {name} gave wrong results at {nbytes} B")
        pure = []
        for _ in range(samples):
            comm.Barrier()
            t0 = time.perf_counter()
            wait(start())
            pure.append(time.perf_counter() - t0)
        t_pure = median(_slowest(comm, {"p": pure})["p"])
        one = []
        for _ in range(7):
            t0 = time.perf_counter()
            compute(1)
            one.append(time.perf_counter() - t0)
        slice_s = comm.allreduce(median(one), op=MPI.MAX)
        n_slices = comm.allreduce(max(1, int(np.ceil(t_pure / max(slice_s, 1e-9)))), op=MPI.MAX)
        comp, total, tests, cpu = [], [], [], []
        pure = []
        for _ in range(samples):  # pure, compute, total back to back: one overlap per round
            comm.Barrier()
            t0 = time.perf_counter()
            wait(start())
            pure.append(time.perf_counter() - t0)
            comm.Barrier()
            t0 = time.perf_counter()
            compute(n_slices)
            comp.append(time.perf_counter() - t0)
            comm.Barrier()
            in_test[0] = in_test[1] = 0.0
            t0, c0 = time.perf_counter(), time.thread_time()
            req = start()
            t1, c1 = time.perf_counter(), time.thread_time()
            compute(n_slices, lambda: test(req))
            t2 = time.perf_counter()
            wait(req)
            t3 = time.perf_counter()
            total.append(t3 - t0)
            tests.append(in_test[0] + (t1 - t0) + (t3 - t2))
            cpu.append(in_test[1] + (c1 - c0))
        slow = _slowest(comm, {"pure": pure, "compute": comp, "total": total, "in_comm": tests, "cpu": cpu})
        result[name] = dict(slow, slices=n_slices, slice_s=slice_s)
    return result


def overlap_percent(r: dict) -> float:
    """Median over rounds of max(0, 1 - (t_total - t_compute) / t_pure) * 100 (each round's
    three times taken back to back, so that load drifting between rounds cancels)."""
    per_round = [max(0.0, 1.0 - (t - c) / p) * 100.0 for p, c, t in zip(r["pure"], r["compute"], r["total"])]
    return median(per_round)


# --------------------------------------------------------------------------- tables


def _size_table(results: dict, dtype, op: str, nranks: int, markdown: bool) -> str:
    names = ["ring", "ring agreed", "MPI", "naive"]
    cols = [Column("size [B]", "d"), Column("count", "d"), Column("type", left=True), Column("redop", left=True)]
    for n in names:
        cols += [Column(f"{n} time [us]", ".1f"), Column(f"{n} algbw [GB/s]", ".3f"),
                 Column(f"{n} busbw [GB/s]", ".3f")]
    cols += [Column("ring/MPI time [x]", ".2f"), Column("ring agreed/MPI time [x]", ".2f"),
             Column("naive/MPI time [x]", ".2f"), Column("#wrong", "d")]
    factor = 2 * (nranks - 1) / nranks
    rows = []
    for nbytes, r in results.items():
        t = {n: median(r["samples"][n]) for n in names}
        row = [nbytes, r["count"], str(dtype), op]
        for n in names:
            alg = nbytes / t[n] / 1e9
            row += [t[n] * 1e6, alg, alg * factor]
        row += [ratio(t["ring"], t["MPI"]), ratio(t["ring agreed"], t["MPI"]), ratio(t["naive"], t["MPI"]),
                sum(r["wrong"].values())]
        rows.append(row)
    return format_table(cols, rows, markdown=markdown)


def _overlap_table(overlap: dict, markdown: bool) -> str:
    cols = [Column("size [B]", "d"), Column("impl", left=True), Column("pure comm [us]", ".1f"),
            Column("compute [us]", ".1f"), Column("total [us]", ".1f"), Column("test() calls", "d"),
            Column("in start/test/wait [us]", ".1f"), Column("CPU in start+test [us]", ".1f"),
            Column("overlap [%]", ".1f")]
    rows = []
    for nbytes, per in overlap.items():
        for name in ("ring", "MPI"):
            r = per[name]
            rows.append([nbytes, "ring test()" if name == "ring" else "MPI_Iallreduce + Test", median(r["pure"]) * 1e6,
                         median(r["compute"]) * 1e6, median(r["total"]) * 1e6, r["slices"],
                         median(r["in_comm"]) * 1e6, median(r["cpu"]) * 1e6, overlap_percent(r)])
    return format_table(cols, rows, markdown=markdown)


# --------------------------------------------------------------------------- entry


def run(args, markdown: bool = False) -> int:
    """``mpiexec -n N python -m benchmarks allreduce``. Collective on ``MPI.COMM_WORLD``."""
    from mpi4py import MPI

    from comms.ring import chunk_elements

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size < 2:
        if rank == 0:
            print("allreduce: needs 2 or more ranks: mpiexec -n 2 python -m benchmarks allreduce", file=sys.stderr)
        return 2
    dtype = np.dtype(args.dtype)
    if args.samples < 1 or args.factor < 2 or args.min_bytes < 1 or args.max_bytes < args.min_bytes:
        raise SystemExit("allreduce: need --samples >= 1, --factor >= 2, 1 <= --min-bytes <= --max-bytes")
    ring_kw = {}
    if args.chunk_nbytes is not None:
        ring_kw["chunk_nbytes"] = args.chunk_nbytes
    if args.window is not None:
        ring_kw["window"] = args.window
    overlap_sizes = [int(s) for s in args.overlap_bytes.split(",") if s.strip()]
    cmd = command_line(COMMAND, [("--min-bytes", args.min_bytes), ("--max-bytes", args.max_bytes),
                                 ("--factor", args.factor), ("--dtype", args.dtype), ("--op", args.op),
                                 ("--samples", args.samples), ("--chunk-nbytes", args.chunk_nbytes),
                                 ("--window", args.window), ("--overlap-bytes", args.overlap_bytes),
                                 ("--slice-us", args.slice_us)], nprocs=size, markdown=markdown)
    t_start = time.perf_counter()
    machine = machine_lines(MPI)  # the load average as the run starts
    sizes = sizes_bytes(args.min_bytes, args.max_bytes, args.factor, dtype.itemsize)
    results = measure_sizes(comm, sizes, dtype, args.op, args.samples, ring_kw)
    overlap = {n: measure_overlap(comm, n, dtype, args.samples, args.slice_us, ring_kw) for n in overlap_sizes}
    if rank == 0:
        print(f"# allreduce: comms ring vs MPI_Allreduce vs Reduce+Bcast, {size} ranks")
        for line in machine:
            print("# " + line)
        chunk = args.chunk_nbytes
        print(f"# ring chunk: {'automatic (1/8 of a block, 1-4 MiB)' if chunk is None else f'{chunk} B'}; "
              f"e.g. {chunk_elements(chunk, (16 << 20) // size // dtype.itemsize, dtype.itemsize) * dtype.itemsize} "
              "B at 16 MiB")
        print(f"# time: median over {args.samples} interleaved samples (order rotated each round) of the slowest "
              "rank's time per call (iters back-to-back calls per sample after one untimed call and a barrier); "
              "ratios > 1: slower than MPI")
        print(f"# busbw = algbw * 2(n-1)/n = algbw * {2 * (size - 1) / size:.3f}; "
              "#wrong: elements differing from MPI_Allreduce (integer-valued data: exact)")
        print()
        print(_size_table(results, dtype, args.op, size, markdown))
        if overlap:
            print()
            print(f"# overlap (OSU definition), {dtype}, sum; compute = 64x64 matmuls in slices of "
                  f"~{args.slice_us:g} us "
                  "(enough slices to last the pure comm time), one test() per slice; "
                  "overlap = median over rounds of max(0, 1 - (total - compute) / pure) * 100 (the three times of a "
                  "round back to back); 'in start/test/wait' = time the rank "
                  "spent inside the communication calls during 'total' (copies and reductions it does itself); 'CPU in "
                  "start+test': this thread's CPU time in start() and the test() calls (not the final wait): work "
                  "no compute can hide on the same core")
            print(_overlap_table(overlap, markdown))
        end = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\n# {time.perf_counter() - t_start:.0f} s, load average at the end {end}. Reproduce: {cmd}")
        if args.json:
            write_json(args.json, {"command": cmd, "machine": machine, "ranks": size,
                                   "sizes": {str(k): v for k, v in results.items()},
                                   "overlap": {str(k): v for k, v in overlap.items()}})
    return 0
