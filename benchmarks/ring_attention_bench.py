"""Ring attention over the ranks vs single-process full attention on the whole sequence: time and peak memory.

Each rank holds ``L / n`` tokens (zigzag layout when causal) of one sequence, ``heads``
heads of dimension ``d``. The ring is timed forward and forward + backward (the
slowest rank, median of ``--samples``); its peak memory per rank is the tracemalloc
peak (NumPy reports its buffers) during one forward + backward, beside the score tile
the implementation used. The peer is full softmax attention on the whole sequence in
one process (``comms.ring_attention.attention_reference``: the ``L x L`` score matrix),
run on rank 0 while the other ranks sleep; where it would need more than
``--max-full-gib`` it is skipped and the estimate is printed instead. Where it runs,
the gathered ring output is compared with it.
"""

from __future__ import annotations

import os
import sys
import time
import tracemalloc

import numpy as np

from .common import BenchmarkError, Column, command_line, format_table, machine_lines, median, ratio, write_json

COMMAND = "ring-attention"
HELP = "RingAttention time and memory per rank vs single-process full attention (mpiexec -n 4, or -n 2 on 2 cores)"

__all__ = ["add_arguments", "run", "full_attention_nbytes"]

FULL_TEMPORARIES = 4
"""L x L arrays alive at once in the reference forward + backward (tracemalloc measured 4.1 at L=4096)."""


def add_arguments(parser) -> None:
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768,65536", metavar="L,..",
                        help="global sequence lengths (default 1k to 64k by 2); each a multiple of 2 x ranks")
    parser.add_argument("--d", type=int, default=64, help="head dimension (default 64)")
    parser.add_argument("--heads", type=int, default=1, help="heads (a leading batch axis; default 1)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--mask", default="causal", choices=("causal", "full"), help="attention mask (default causal)")
    parser.add_argument("--block-size", type=int, default=1024, metavar="B",
                        help="ring score tile [tokens] (default 1024)")
    parser.add_argument("--samples", type=int, default=2, metavar="N",
                        help="timed repetitions; median shown (default 2)")
    parser.add_argument("--max-full-gib", type=float, default=4.0, metavar="G",
                        help="skip single-process full attention when it would need more [GiB] (default 4)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write settings and raw samples (rank 0)")


def full_attention_nbytes(length: int, d: int, heads: int, itemsize: int) -> int:
    """Estimated peak [bytes] of the reference forward + backward on the whole sequence."""
    return FULL_TEMPORARIES * heads * length * length * itemsize + 12 * heads * length * d * itemsize


def _traced(fn):
    """``(result, peak traced bytes above the start)`` of ``fn()``."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _sleep_barrier(comm) -> None:
    """A barrier that sleeps instead of spinning (so a waiting rank leaves its core free)."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.002)


def _global(length: int, heads: int, d: int, dtype, seed: int):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((heads, length, d)).astype(dtype) for _ in range(4)]


def measure(comm, length: int, args, dtype) -> dict:
    """Ring (every rank) and full attention (rank 0) at one sequence length. Collective."""
    from mpi4py import MPI

    from comms.ring_attention import RingAttention, attention_reference, zigzag_merge, zigzag_split

    rank, size = comm.Get_rank(), comm.Get_size()
    causal = args.mask == "causal"
    itemsize = np.dtype(dtype).itemsize
    full_need = full_attention_nbytes(length, args.d, args.heads, itemsize)
    run_full = full_need <= args.max_full_gib * (1 << 30)
    if run_full:
        q, k, v, dout = _global(length, args.heads, args.d, dtype, 7)  # every rank: the same sequence
        parts = [zigzag_split(a, size, rank) for a in (q, k, v, dout)]
    else:  # never build the global arrays: each rank makes its own part
        rng = np.random.default_rng([7, rank])
        parts = [rng.standard_normal((args.heads, length // size, args.d)).astype(dtype) for _ in range(4)]
    ra = RingAttention(comm, causal, block_size=args.block_size)

    def fwd_bwd():
        out = ra.forward(*parts[:3])
        return out, ra.backward(parts[3])

    (out, _), peak = _traced(fwd_bwd)  # the first run measures memory (and warms up)
    tile = ra.stats["score_tile_shape"]
    fwd, both = [], []
    for _ in range(args.samples):
        comm.Barrier()
        t0 = time.perf_counter()
        ra.forward(*parts[:3])
        t1 = time.perf_counter()
        ra.backward(parts[3])
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        both.append(t2 - t0)
    local = np.array([fwd, both], dtype=np.float64)
    slow = np.empty_like(local)
    comm.Allreduce(local, slow, op=MPI.MAX)
    peaks = comm.gather(peak, root=0)
    outs = comm.gather(out, root=0) if run_full else None

    res = {"length": length, "local": length // size, "ring_fwd": slow[0].tolist(), "ring_both": slow[1].tolist(),
           "ring_peak_max": max(peaks) if rank == 0 else None, "tile": tile, "full_need": full_need,
           "full_fwd": None, "full_both": None, "full_peak": None, "err": None}
    if run_full:
        if rank == 0:
            merged = zigzag_merge(outs)
            (_, full_peak) = _traced(lambda: attention_reference(q, k, v, causal, dout=dout))  # + warm-up
            t0 = time.perf_counter()
            ref = attention_reference(q, k, v, causal)
            res["full_fwd"] = [time.perf_counter() - t0]
            t0 = time.perf_counter()
            attention_reference(q, k, v, causal, dout=dout)
            res["full_both"] = [time.perf_counter() - t0]
            res["full_peak"] = full_peak
            res["err"] = float(np.max(np.abs(merged.astype(np.float64) - ref)) / np.max(np.abs(ref)))
        _sleep_barrier(comm)
        tol = 1e-10 if dtype == np.float64 else 1e-5
        err = comm.bcast(res["err"], root=0)
        if not err < tol:
            raise BenchmarkError(f"ring-attention: ring output differs from full attention by {err:.2e} at L={length}")
    return res


def _table(results: list, markdown: bool) -> str:
    mib = 1 << 20
    cols = [Column("L", "d"), Column("L_local", "d"), Column("ring fwd [s]", ".3f"), Column("ring fwd+bwd [s]", ".3f"),
            Column("ring peak/rank [MiB]", ".1f"), Column("score tile", left=True), Column("full fwd [s]", ".3f"),
            Column("full fwd+bwd [s]", ".3f"), Column("full peak [MiB]", left=False),
            Column("full/ring fwd+bwd [x]", ".2f"), Column("max rel err", ".1e")]
    rows = []
    for r in results:
        rb = median(r["ring_both"])
        if r["full_both"] is None:
            full_peak = f"skipped: would need {r['full_need'] / (1 << 30):.2f} GiB"
        else:
            full_peak = f"{r['full_peak'] / mib:.1f}"
        fb = median(r["full_both"]) if r["full_both"] else None
        rows.append([r["length"], r["local"], median(r["ring_fwd"]), rb, r["ring_peak_max"] / mib,
                     f"{r['tile'][0]}x{r['tile'][1]}", median(r["full_fwd"]) if r["full_fwd"] else None, fb,
                     full_peak, ratio(fb, rb) if fb else None, r["err"]])
    return format_table(cols, rows, markdown=markdown)


def run(args, markdown: bool = False) -> int:
    """``mpiexec -n N python -m benchmarks ring-attention``. Collective on ``MPI.COMM_WORLD``."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    dtype = np.dtype(args.dtype).type
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    bad = [n for n in lengths if n % (2 * size)]
    if bad or args.samples < 1 or args.d < 1 or args.heads < 1:
        if rank == 0:
            print(f"ring-attention: lengths must be multiples of 2 x ranks = {2 * size} (got {bad}); "
                  "--samples, --d, --heads >= 1", file=sys.stderr)
        return 2
    cmd = command_line(COMMAND, [("--lengths", args.lengths), ("--d", args.d), ("--heads", args.heads),
                                 ("--dtype", args.dtype), ("--mask", args.mask), ("--block-size", args.block_size),
                                 ("--samples", args.samples), ("--max-full-gib", args.max_full_gib)],
                       nprocs=size, markdown=markdown)
    t_start = time.perf_counter()
    machine = machine_lines(MPI)  # the load average as the run starts
    results = []
    for length in lengths:
        results.append(measure(comm, length, args, dtype))
        if rank == 0:
            print(f"# L={length} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
    if rank == 0:
        print(f"# ring attention ({args.mask}, zigzag layout) over {size} ranks vs full attention in one process")
        for line in machine:
            print("# " + line)
        threads = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        shown = ", ".join(f"{k}={v}" for k, v in threads.items() if v)
        advice = ("library default (with several ranks per node set OPENBLAS_NUM_THREADS=1 or OMP_NUM_THREADS=1: "
                  "oversubscribed BLAS threads made the ring 30-100x slower here)")
        print(f"# BLAS threads: {shown or advice}")
        print(f"# heads={args.heads}, d={args.d}, {args.dtype}, ring block_size={args.block_size}; time: slowest rank, "
              f"median of {args.samples} after one warm-up run; ring peak/rank: largest tracemalloc peak over the "
              "ranks "
              "during one forward + backward (inputs not counted); full: attention_reference on rank 0 (others "
              f"sleep), skipped above --max-full-gib {args.max_full_gib:g} (estimate: {FULL_TEMPORARIES} L x L arrays, "
              "as measured)")
        print()
        print(_table(results, markdown))
        end = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\n# {time.perf_counter() - t_start:.0f} s, load average at the end {end}. Reproduce: {cmd}")
        if args.json:
            write_json(args.json, {"command": cmd, "machine": machine, "ranks": size, "results": results})
    return 0
