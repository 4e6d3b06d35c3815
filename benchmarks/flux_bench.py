"""Flux-transport throughput: cell-updates per second of advection and diffusion steps.

One run times, on the first ``k`` ranks for every ``k`` from 1 to the launch
size, ``solvers.flux_transport.FluxTransport`` steps on HipFT-sized grids
(``nphi x ntheta`` cells), for one realization and for ensembles:

* ``decomposed``: every realization on one theta-phi decomposition of the k ranks
  (this project; works for any k, even with one realization);
* ``HipFT-style``: the peer layout: realizations split over the ranks, each rank
  holding whole maps (HipFT's only parallelism; needs k to divide the ensemble);
* ``mixed``: realizations over 2 groups, each decomposed (k = 4).

Advection: one SSPRK(4,3) + WENO3 step at the CFL limit (4 operator stages).
Diffusion: one RKG2 super step of ``--ratio`` explicit limits (``s`` stages).

``--hipft PATH`` instead runs HipFT side by side (see :func:`run_hipft`): the
same deck through both codes, one after the other, ``--samples`` times
interleaved, and compares the phase times HipFT reports (``hipft_timing.out``)
with ours, as cell-stage updates per second.
A cell-update is one cell of one realization advanced by one step; "stage
updates" count each operator stage. The copy bound is the machine's measured
copy bandwidth over the compulsory traffic of a step (read the stage input,
write its output: 16 bytes per cell per stage); the compiled kernels make one
fused pass per stage (advection also reads the four split-velocity fields, and
the STS stages three more state arrays), so the bound is not reachable either.
Samples of the layouts are interleaved (one step of each per round); times are
medians, slowest rank.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from .common import Column, command_line, format_table, machine_lines, median, ratio, write_json

COMMAND = "flux"
HELP = "flux-transport step throughput, decomposed vs HipFT-style realization split (mpiexec -n 2, or 4)"

__all__ = ["run", "add_arguments", "copy_bandwidth", "DEFAULT_MAP"]

DEFAULT_MAP = "/work/shared/data/hipft/hmi_synoptic_mr_polfil_720s_cr2255_pslt_pt_1024x512.h5"


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default="1024x512,2048x1024", metavar="NPxNT,..",
                        help="grids as phi cells x theta rows (default 1024x512,2048x1024)")
    parser.add_argument("--realizations", default="1,8", metavar="N,..", help="ensemble sizes (default 1,8)")
    parser.add_argument("--kinds", default="advection,diffusion", metavar="K,..",
                        help="advection and/or diffusion (default both)")
    parser.add_argument("--ratio", type=float, default=100.0,
                        help="diffusion step over the explicit limit (default 100: 25 RKG2 stages)")
    parser.add_argument("--samples", type=int, default=3, metavar="N",
                        help="timed steps per case, interleaved across layouts (default 3)")
    parser.add_argument("--device", action="store_true", help="CuPy arrays on the GPU (needs a device)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write settings and raw samples (rank 0)")
    parser.add_argument("--hipft", default=None, metavar="PATH",
                        help="HipFT binary: time both codes on the same decks (HipFT on 1 rank, ours on 1 and on "
                             "the launch's ranks), advection and diffusion phases")
    parser.add_argument("--map", default=DEFAULT_MAP,
                        help="HipFT map of the --hipft decks (default: the 1024 x 512 HMI map of ../shared/data/hipft)")
    parser.add_argument("--steps", type=int, default=20, help="--hipft: steps per deck (default 20)")


def _sizes(text: str) -> list:
    out = []
    for item in text.split(","):
        if item.strip():
            p, t = item.lower().split("x")
            out.append((int(p), int(t)))
    return out


def copy_bandwidth(xp=np, nbytes: int = 256 * 2 ** 20, repeat: int = 5) -> float:
    """Copy bandwidth [B/s] counting read + write, median of ``repeat`` copies. Not collective."""
    n = nbytes // 8
    a = xp.ones(n)
    b = xp.empty(n)
    sync = (lambda: xp.cuda.get_current_stream().synchronize()) if xp is not np else (lambda: None)
    samples = []
    for _ in range(repeat + 1):
        sync()
        t0 = time.perf_counter()
        xp.copyto(b, a)
        sync()
        samples.append(time.perf_counter() - t0)
    return 2.0 * n * 8 / median(samples[1:])


def _config(kind: str, nphi: int, ntheta: int, nr: int, layout: dict, device: bool):
    from solvers.flux_transport import load_config

    data = {"n_realizations": nr, "grid": {"ntheta": ntheta, "nphi": nphi}, "initial": {"kind": "bipolar"},
            "time": {"end_h": 1e9, "dt_max_h": 1e6},
            "flow": {"enabled": kind == "advection"},
            "diffusion": {"enabled": kind == "diffusion", "eta_km2_s": [250.0 + 50.0 * i for i in range(nr)]},
            "parallel": dict(layout, device="gpu" if device else "cpu")}
    return load_config(data=data)


def _case(comm, kind, nphi, ntheta, nr, layout, args, xp):
    """Build one case on ``comm``; returns ``(model, op, stages, dt)`` (op advances one step). Collective."""
    from solvers.flux_transport import FluxTransport
    from solvers.flux_transport.timestepping import sts_stages

    m = FluxTransport(comm, _config(kind, nphi, ntheta, nr, layout, args.device), output=False)
    if kind == "advection":
        m._prepare_flows()
        dt = m.dt_flow

        def op():
            m.advect(dt)

        return m, op, 4, dt
    dt = args.ratio * m.dt_exp

    def op():
        m._sts(dt)

    return m, op, sts_stages(args.ratio, "rkg2"), dt


def _time_cases(comm, kind, nphi, ntheta, nr, layouts, args, xp):
    """Time every layout on ``comm``, samples interleaved (one step of each per round); rank 0 gets the results."""
    from mpi4py import MPI

    sync = (lambda: xp.cuda.get_current_stream().synchronize()) if xp is not np else (lambda: None)
    cases = []
    try:
        for label, layout in layouts:
            m, op, stages, dt = _case(comm, kind, nphi, ntheta, nr, layout, args, xp)
            cases.append((label, m, op, stages, dt))
            op()  # warm-up: halo plans, coefficient caches
        samples = {label: [] for label, *_ in cases}
        for _ in range(args.samples):
            for label, m, op, _, _ in cases:
                sync()
                comm.Barrier()
                t0 = time.perf_counter()
                op()
                sync()
                samples[label].append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
        out = []
        for label, m, _, stages, dt in cases:
            t = median(samples[label])
            cells = nphi * ntheta * nr
            out.append({"kind": kind, "nphi": nphi, "ntheta": ntheta, "nr": nr, "ranks": comm.Get_size(),
                        "groups": m.domain.groups, "dims": m.domain.decomp.dims, "stages": stages, "dt_h": dt,
                        "samples": samples[label], "seconds": t, "updates_per_s": cells / t,
                        "stage_updates_per_s": cells * stages / t, "layout": label})
    finally:
        for _, m, *_ in cases:
            m.free()
    return out if comm.Get_rank() == 0 else []


def _quiet_barrier(comm) -> None:
    """A barrier that sleeps instead of spinning: ranks left out of a case must not steal its cores
    (MPICH polls at full speed inside MPI_Barrier)."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.002)


def _layouts(k: int, nr: int) -> list:
    out = [("decomposed", {"realization_groups": 1})]
    if k > 1 and nr % k == 0:
        out.append(("HipFT-style", {"realization_groups": k, "dims": [1, 1]}))
    if k == 4 and nr % 2 == 0 and nr >= 2:
        out.append(("mixed", {"realization_groups": 2}))
    return out


COLUMNS = [Column("grid", left=True), Column("real.", "d"), Column("kind", left=True), Column("ranks", "d"),
           Column("layout", left=True), Column("procs", left=True), Column("stages", "d"), Column("ms/step", ".1f"),
           Column("M cell-upd/s", ".2f"), Column("M stage-upd/s", ".1f"), Column("vs 1 rank", ".2f"),
           Column("vs HipFT-style", ".2f"), Column("% copy bound", ".1f")]


def run(args, markdown: bool = False) -> int:
    """``mpiexec -n 2 python -m benchmarks flux``. Collective on ``MPI.COMM_WORLD``."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    if getattr(args, "hipft", None):
        from .flux_hipft import run_hipft

        return run_hipft(args, markdown)
    xp = np
    if args.device:
        from hpcore.arrays import cupy_or_none

        xp = cupy_or_none()
        if xp is None:
            if rank == 0:
                print("flux benchmark: --device needs CuPy and a CUDA device", file=sys.stderr)
            return 2
        xp.cuda.Device(rank % xp.cuda.runtime.getDeviceCount()).use()
    t_start = time.perf_counter()
    bw = copy_bandwidth(xp) if rank == 0 else None
    bw = world.bcast(bw, root=0)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    results = []
    for nphi, ntheta in _sizes(args.sizes):
        for nr in [int(x) for x in args.realizations.split(",") if x.strip()]:
            for kind in kinds:
                for k in range(1, world.Get_size() + 1):
                    sub = world.Split(0 if rank < k else MPI.UNDEFINED, rank)
                    if sub != MPI.COMM_NULL:
                        for r in _time_cases(sub, kind, nphi, ntheta, nr, _layouts(k, nr), args, xp):
                            results.append(r)
                            print(f"# {nphi}x{ntheta} r={nr} {kind} {k} ranks {r['layout']}: "
                                  f"{r['seconds'] * 1e3:.1f} ms/step", file=sys.stderr, flush=True)
                        sub.Free()
                    _quiet_barrier(world)
    if rank == 0:
        cmd = command_line(COMMAND, [("--sizes", args.sizes), ("--realizations", args.realizations),
                                     ("--kinds", args.kinds), ("--ratio", args.ratio), ("--samples", args.samples),
                                     ("--device", args.device)], nprocs=world.Get_size(), markdown=markdown)
        print("# flux transport step throughput: solvers.flux_transport, decomposed vs HipFT-style realization "
              "split")
        for line in machine_lines(MPI):
            print("# " + line)
        print(f"# {world.Get_size()} ranks launched; copy bandwidth {bw / 1e9:.1f} GB/s "
              f"({'device' if args.device else 'host'}, read + write); grid = phi cells x theta rows; "
              "cell-update = one cell of one realization advanced one step")
        print(f"# advection: SSPRK(4,3) + WENO3 at the CFL limit; diffusion: RKG2 at {args.ratio:g} x the explicit "
              "limit; vs X = time(X) / time(this row); % copy bound = compulsory 16 B per cell per stage at the "
              "copy bandwidth")
        print()
        rows = []
        for r in results:
            base = [q for q in results if q["kind"] == r["kind"] and q["nphi"] == r["nphi"] and q["nr"] == r["nr"]
                    and q["ranks"] == 1]
            peer = [q for q in results if q["kind"] == r["kind"] and q["nphi"] == r["nphi"] and q["nr"] == r["nr"]
                    and q["ranks"] == r["ranks"] and q["layout"] == "HipFT-style"]
            bound = bw / (16.0 * r["stages"])  # cell-updates per second at the copy bound
            rows.append([f"{r['nphi']}x{r['ntheta']}", r["nr"], r["kind"], r["ranks"], r["layout"],
                         f"{r['groups']}x({r['dims'][0]}x{r['dims'][1]})", r["stages"], r["seconds"] * 1e3,
                         r["updates_per_s"] / 1e6, r["stage_updates_per_s"] / 1e6,
                         ratio(base[0]["seconds"], r["seconds"]) if base else float("nan"),
                         ratio(peer[0]["seconds"], r["seconds"]) if peer and r["layout"] != "HipFT-style"
                         else float("nan"),
                         100.0 * r["updates_per_s"] / (bound * r["ranks"])])
        print(format_table(COLUMNS, rows, markdown=markdown))
        print()
        print(f"# reproduce: {cmd}")
        print(f"# total {time.perf_counter() - t_start:.0f} s")
        if args.json:
            write_json(args.json, {"results": results, "copy_bandwidth_Bps": bw, "command": cmd})
    return 0
