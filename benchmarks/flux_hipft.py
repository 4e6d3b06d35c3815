"""HipFT side by side: the same advection and diffusion decks through HipFT and solvers.flux_transport.

``mpiexec -n 2 python -m benchmarks flux --hipft /path/to/hipft``. Rank 0 writes
two HipFT decks on one map (default: the 1024 x 512 HMI map): advection (AFT
differential rotation and meridional flow, attenuation 500 G, ``dt_max`` below
the CFL limit so both codes take the same ``--steps`` steps) and diffusion
(eta = 500 km^2/s, 24 h steps: one practical-limit sub-cycle per step, the
stages from HipFT's rule). Each sample runs HipFT on one rank (its own
OpenMPI ``mpirun.openmpi``, GLIBC malloc tuning as HipFT advises) and then ours
on one rank and on all the launch's ranks (one realization decomposed over
them), interleaved ``--samples`` times; medians. HipFT's phase times come from
its ``hipft_timing.out`` (Advection, Diffusion, Update = flows + CFL); ours from
the model's phase clocks (the same phases). A cell-stage update is one cell
advanced by one operator stage (4 per SSPRK(4,3) step, ``s`` per RKG2 super
step). Ratios are ours over HipFT's throughput in the same run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from .common import Column, format_table, machine_lines, median

__all__ = ["run_hipft", "hipft_timing", "write_decks"]

_TUNE = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456"
_LEAKY = re.compile(r"^(PMI_|PMIX_|PMI2_|HYDRA_|HYDI_|MPIR_CVAR_|MPI_LOCALRANKID|MPI_LOCALNRANKS|OMPI_|PRTE_)")


def hipft_timing(path: str) -> dict:
    """``{phase: seconds}`` from HipFT's ``hipft_timing.out`` (the first, per-processor block)."""
    out = {}
    names = {"Wall clock time": "wall", "--> Update": "update", "--> Advecton": "advection",
             "--> Diffusion": "diffusion", "--> Flux transport": "transport"}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            for key, name in names.items():
                if line.strip().startswith(key) and name not in out:
                    try:
                        out[name] = float(line.split()[-1])
                    except ValueError:
                        pass
    return out


def _history_num(path: str) -> np.ndarray:
    with open(path, encoding="utf-8") as fh:
        fh.readline()
        rows = [ln.split() for ln in fh if ln.strip()]
    return np.array(rows, dtype=np.float64)


def write_decks(folder: str, map_path: str, steps: int, dt_adv: float, dt_diff: float) -> dict:
    """HipFT decks ``{"advection": dir, "diffusion": dir}`` in ``folder`` (the map linked into each)."""
    decks = {
        "advection": f"""&hipft_input_parameters
  initial_map_filename = 'map.h5'
  output_single_precision = .false.
  time_end = {steps * dt_adv!r}
  dt_max = {dt_adv!r}
  advance_flow = .true.
  flow_attenuate = .true.
  flow_attenuate_value = 500.0
  flow_dr_model = 1
  flow_mf_model = 1
  advance_diffusion = .false.
/
""",
        "diffusion": f"""&hipft_input_parameters
  initial_map_filename = 'map.h5'
  output_single_precision = .false.
  time_end = {steps * dt_diff!r}
  dt_max = {dt_diff!r}
  advance_diffusion = .true.
  diffusion_coef_constant = 500.0
/
"""}
    out = {}
    for name, text in decks.items():
        d = os.path.join(folder, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "hipft.in"), "w", encoding="utf-8") as fh:
            fh.write(text)
        link = os.path.join(d, "map.h5")
        if not os.path.exists(link):
            os.symlink(os.path.abspath(map_path), link)
        out[name] = d
    return out


def _run_hipft(binary: str, deck: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not _LEAKY.match(k)}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               GLIBC_TUNABLES=_TUNE)
    cmd = ["mpirun.openmpi", "-x", "GLIBC_TUNABLES", "-x", "OMP_NUM_THREADS", "--bind-to", "none", "-np", "1",
           binary, "hipft.in"]
    t0 = time.perf_counter()
    with open(os.path.join(deck, "hipft.log"), "w") as log, open(os.path.join(deck, "hipft.err"), "w") as err:
        rc = subprocess.call(cmd, cwd=deck, env=env, stdout=log, stderr=err)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"HipFT failed (rc {rc}) in {deck}; see hipft.err there")
    t = hipft_timing(os.path.join(deck, "hipft_timing.out"))
    num = _history_num(os.path.join(deck, "hipft_history_num_r000001.out"))
    steps = int(num[-1, 0])
    # per step: (N_DIFF_CYCLES, N_DIFF_PER_STEP = the last sub-cycle's stages); HipFT does not print the total
    cycles = [(int(c), int(s)) for s, c in num[1:, 6:8]]
    return {"phases": t, "steps": steps, "cycles": cycles, "process_s": wall}


def _config(kind: str, map_path: str, steps: int, dt: float):
    from solvers.flux_transport import load_config

    data = {"n_realizations": 1, "initial": {"kind": "file", "file": map_path},
            "time": {"end_h": steps * dt, "dt_max_h": dt},
            "flow": {"enabled": kind == "advection", "attenuate": True, "attenuate_gauss": 500.0},
            "diffusion": {"enabled": kind == "diffusion", "eta_km2_s": 500.0}, "output": {"plots": False}}
    return load_config(data=data)


def _run_ours(comm, kind: str, map_path: str, steps: int, dt: float) -> dict:
    """Run the deck through FluxTransport on ``comm``; phase times (max over ranks). Collective."""
    from mpi4py import MPI

    from solvers.flux_transport import FluxTransport

    m = FluxTransport(comm, _config(kind, map_path, steps, dt), output=False)
    try:
        comm.Barrier()
        t0 = time.perf_counter()
        cycles = []
        while not m.done:
            m.step()
            if m.diffusion is not None:
                cycles.append((m.last_subcycles, m.last_cycle_stages))
        wall = time.perf_counter() - t0
        # the per-step flow update (attenuation, alphas, CFL) is HipFT's "Update"
        vals = np.array([wall, m.wall_s["flows"], m.wall_s["advection"], m.wall_s["diffusion"]])
        comm.Allreduce(MPI.IN_PLACE, vals, op=MPI.MAX)
        return {"phases": {"wall": vals[0], "update": vals[1], "advection": vals[2], "diffusion": vals[3]},
                "steps": m.steps, "stages": int(getattr(m, "stages_total", 0)), "cycles": cycles}
    finally:
        m.free()


COLUMNS = [Column("phase", left=True), Column("code", left=True), Column("ranks", "d"), Column("steps", "d"),
           Column("stages", "d"), Column("s (median)", ".2f"), Column("M cell-stage-upd/s", ".2f"),
           Column("per core vs HipFT", ".2f"), Column("vs HipFT", ".2f"), Column("flow update s", ".2f")]


def run_hipft(args, markdown: bool = False) -> int:
    """The ``--hipft`` mode of ``python -m benchmarks flux``. Collective on ``MPI.COMM_WORLD``."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    binary = os.path.abspath(args.hipft)
    error = None
    if rank == 0 and not os.access(binary, os.X_OK):
        error = f"--hipft: {binary!r} is not an executable"
    error = world.bcast(error, root=0)
    if error:
        if rank == 0:
            print(error, file=sys.stderr)
        return 2
    self_comm = MPI.COMM_SELF
    # the advection step: 0.9 of our CFL limit of the unattenuated flows (HipFT's is the same formula)
    from solvers.flux_transport import FluxTransport

    probe = FluxTransport(self_comm, _config("advection", args.map, 1, 1.0), output=False)
    dt_adv = 0.9 * probe.dt_adv_limit0
    cells = probe.grid.ntheta * probe.grid.nphi
    probe.free()
    dt_diff = 24.0
    for kind, dt in (("advection", dt_adv), ("diffusion", dt_diff)):  # warm-up: load the compiled kernels
        _run_ours(self_comm, kind, args.map, 1, dt)
        if size > 1:
            _run_ours(world, kind, args.map, 1, dt)
    loads = [os.getloadavg()]
    folder = tempfile.mkdtemp(prefix="flux_hipft_") if rank == 0 else None
    decks = write_decks(folder, args.map, args.steps, dt_adv, dt_diff) if rank == 0 else None
    samples = {}
    for _ in range(args.samples):
        for kind, dt in (("advection", dt_adv), ("diffusion", dt_diff)):
            if rank == 0:
                samples.setdefault((kind, "HipFT", 1), []).append(_run_hipft(binary, decks[kind]))
                samples.setdefault((kind, "ours", 1), []).append(_run_ours(self_comm, kind, args.map, args.steps, dt))
                print(f"# {kind}: HipFT {samples[(kind, 'HipFT', 1)][-1]['phases'].get(kind, float('nan')):.2f} s, "
                      f"ours 1 rank {samples[(kind, 'ours', 1)][-1]['phases'][kind]:.2f} s", file=sys.stderr,
                      flush=True)
            req = world.Ibarrier()
            while not req.Test():
                time.sleep(0.005)
            if size > 1:
                r = _run_ours(world, kind, args.map, args.steps, dt)
                if rank == 0:
                    samples.setdefault((kind, "ours", size), []).append(r)
    loads.append(os.getloadavg())
    if rank == 0:
        print("# flux transport phases, HipFT and solvers.flux_transport side by side (same decks, same run)")
        for line in machine_lines(MPI):
            if not line.startswith("load average"):
                print("# " + line)
        for when, load in (("start of the timed samples", loads[0]), ("end", loads[-1])):
            print(f"# load average at {when} (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load)}")
        print(f"# map {args.map} ({cells} cells); advection: AFT flows, attenuation 500 G, dt {dt_adv:.4g} h "
              f"x {args.steps}; diffusion: eta 500 km^2/s, dt {dt_diff:g} h x {args.steps} (HipFT's PTL "
              "sub-cycling and RKG2 stage rule in both codes); HipFT on 1 rank (OpenMPI), ours on 1 and "
              f"{size} ranks (one realization decomposed); medians of {args.samples} interleaved samples")
        rows = []
        same = samples[("diffusion", "HipFT", 1)][0]["cycles"] == samples[("diffusion", "ours", 1)][0]["cycles"]
        print(f"# diffusion sub-cycles and last-cycle stages per step, HipFT vs ours: "
              f"{'identical' if same else 'DIFFERENT'} ({samples[('diffusion', 'HipFT', 1)][0]['cycles']} vs "
              f"{samples[('diffusion', 'ours', 1)][0]['cycles']}); HipFT's total stages are taken as ours when "
              "identical")
        for kind in ("advection", "diffusion"):
            ref = samples[(kind, "HipFT", 1)]
            t_ref = median([s["phases"][kind] for s in ref])
            st_ref = ref[0]["steps"] * 4 if kind == "advection" else (
                samples[(kind, "ours", 1)][0]["stages"] if same else float("nan"))
            for code, ranks in (("HipFT", 1), ("ours", 1), ("ours", size)):
                if (kind, code, ranks) not in samples or (code == "ours" and ranks == size and size == 1 and
                                                          rows and rows[-1][1] == "ours"):
                    continue
                ss = samples[(kind, code, ranks)]
                t = median([s["phases"][kind] for s in ss])
                steps = ss[0]["steps"]
                stages = steps * 4 if kind == "advection" else ss[0].get("stages", st_ref)
                upd = cells * stages / t
                upd_ref = cells * st_ref / t_ref
                upd_col = median([s["phases"].get("update", 0.0) for s in ss]) if kind == "advection" else float("nan")
                rows.append([kind, code, ranks, steps, stages, t, upd / 1e6, upd / ranks / upd_ref, upd / upd_ref,
                             upd_col])
        print(format_table(COLUMNS, rows, markdown=markdown))
        print(f"# reproduce: mpiexec -n {size} python -m benchmarks{' --markdown' if markdown else ''} flux --hipft "
              f"{args.hipft} --steps {args.steps} --samples {args.samples}")
        print(f"# decks and HipFT's outputs: {folder}")
    return 0
