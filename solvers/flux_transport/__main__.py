"""Command line: ``mpiexec -n N python -m solvers.flux_transport [config.toml | --hipft-input hipft.in] [--set K=V]``.

Without a config file the built-in default run (``default.toml`` beside this
module) is used: a synthetic map of bipolar active regions, AFT flows and two
diffusivities for 28 days, with HDF5 maps, history files and PNG plots written
to ``flux_output/``. ``--hipft-input hipft.in`` runs a HipFT deck instead (see
``solvers/flux_transport/hipft_deck.py`` for what is read; output goes to the
current directory unless ``--out``, with HipFT's history file names and columns).
Progress lines come from rank 0; set ``FLUX_TRANSPORT_DEBUG=1`` for per-rank
debug output and tracebacks.

Errors never hang the job: each phase (configuration, output directory, restart
check, set-up, pre-flight, run) ends in an agreement among the ranks; an error on
every rank is printed once by rank 0, an error on some ranks only (memory, disk,
a signal) is printed by the failing rank, which then aborts the whole job after
``FLUX_TRANSPORT_ABORT_AFTER_S`` seconds (default 5). Exit status: 0 on success,
2 for a refused configuration or input, 130 after SIGINT/SIGTERM, 1 for other
errors (the whole job).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import sys

__all__ = ["DEFAULT_MAX_STAGES_PER_STEP", "main"]

DEFAULT_MAX_STAGES_PER_STEP = 200_000
"""Pre-flight bound on diffusion stages in one step (HipFT's 1-year dipole deck needs about 36,000)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m solvers.flux_transport", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=None,
                   help="TOML configuration (default: the built-in default run)")
    p.add_argument("--hipft-input", default=None, metavar="HIPFT_IN",
                   help="run a HipFT deck (hipft.in namelist) instead of a TOML configuration")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting (TOML value syntax), e.g. --set time.end_h=48 (repeatable; all "
                        "overrides are applied, then checked together)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (same as --set output.directory=...)")
    p.add_argument("--restart", default=None, metavar="CHECKPOINT", help="continue from a checkpoint file")
    p.add_argument("--allow-change", dest="allow_change", action="append", default=[], metavar="KEY",
                   help="with --restart: allow this setting to differ from the checkpoint's (only time.end_h and "
                        "output cadences/plots/precision; repeatable)")
    p.add_argument("--max-stages-per-step", type=int, default=DEFAULT_MAX_STAGES_PER_STEP, metavar="N",
                   help="refuse runs whose diffusion needs more stages in one step (default %(default)s)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _parse(argv, rank: int):
    """Parse on every rank; only rank 0 prints help or usage errors (argparse exits the same everywhere)."""
    if rank == 0:
        return _parser().parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return _parser().parse_args(argv)


def _logger(rank: int, quiet: bool) -> logging.Logger:
    debug = os.environ.get("FLUX_TRANSPORT_DEBUG", "") not in ("", "0")
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s" if debug else "%(message)s"))
    logger = logging.getLogger("solvers.flux_transport")
    logger.handlers[:] = [handler]
    logger.setLevel(level if (rank == 0 or debug) else logging.WARNING)
    logger.propagate = False
    return logger


def main(argv=None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit status. Collective on the world."""
    from mpi4py import MPI

    from .runner import Guard, PhaseError, install_excepthook

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    args = _parse(argv, rank)
    install_excepthook(comm)
    guard = Guard(comm)
    guard.install_signal_handlers()
    try:
        return _run(args, comm, guard)
    except PhaseError as exc:
        if rank == 0:
            verb = "refused" if exc.status == 2 else "failed"
            print(f"flux_transport: {exc.phase} {verb}: {exc.message}", file=sys.stderr, flush=True)
        return exc.status
    finally:
        guard.free()


def _load(args):
    from .config import DEFAULT_CONFIG_PATH, load_config

    out = {"output": {"directory": args.out}} if args.out is not None else None
    if args.hipft_input:
        from .hipft_deck import load_deck

        if args.config:
            raise ValueError(f"give either a TOML configuration ({args.config!r}) or --hipft-input, not both")
        if out is None:
            out = {"output": {"directory": "."}}  # HipFT writes into the current directory
        return load_deck(args.hipft_input, overrides=args.overrides, data=out)
    return load_config(args.config or DEFAULT_CONFIG_PATH, data=out, overrides=args.overrides), []


def _make_output_dir(directory: str, rank: int) -> None:
    """Rank 0 creates the directory and writes a probe file (refused: not a directory, not writable, disk full)."""
    if rank != 0:
        return
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".flux_transport_probe_{os.getpid()}")
    try:
        with open(probe, "w", encoding="utf-8") as fh:
            fh.write("probe\n")
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)


def _check_output_dir(directory: str) -> None:
    if not os.path.isdir(directory):
        raise OSError(20, "output directory is not visible on this rank", directory)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(13, "output directory is not writable", directory)


def _check_restart(path: str, config, allow, rank: int):
    if rank != 0:
        return None
    from .config import restart_check
    from .io import read_checkpoint_header

    grid, state, saved, shape = read_checkpoint_header(path)
    if shape[0] != config.n_realizations:
        raise ValueError(f"restart: {path!r} holds {shape[0]} realizations, the configuration asks for "
                         f"n_realizations = {config.n_realizations}")
    if config.initial.kind == "file":
        import h5py

        with h5py.File(config.initial.file, "r") as h:
            nt, npp = h["dim2"].shape[0], h["dim1"].shape[0] - 1
        if (nt, npp) != (grid.ntheta, grid.nphi):
            raise ValueError(f"restart: {path!r} is on a {grid.ntheta} x {grid.nphi} grid, initial.file "
                             f"{config.initial.file!r} on {nt} x {npp}")
    return restart_check(saved, config, allow=allow, time_h=float(state["time"]))


def _stages_per_step(model, config) -> tuple:
    """``(stages, dt)``: the fewest diffusion stages the longest step of the run can take (0 without explicit
    diffusion).

    With ``diffusion.subcycles = n > 0`` that is ``n`` super steps of ``dt / n``; with the
    automatic sub-cycling it is one super step over the whole step: cutting a step into
    sub-cycles only adds stages (``n s(r / n) >= s(r)``), so a run refused on this
    number could not have been cheaper. A model that can say more (``diffusion_stages``)
    is asked instead.
    """
    if getattr(model, "diffusion", None) is None or getattr(model, "implicit", None) is not None:
        return 0, 0.0
    t = config.time
    dt = t.dt_h if t.dt_h > 0 else t.dt_max_h
    dt = min(dt, t.end_h - t.start_h)
    if getattr(model, "advection", None) is not None and t.dt_h <= 0:
        dt = min(dt, getattr(model, "dt_adv_limit0", math.inf) * (2.0 if t.strang else 1.0))
    plan = getattr(model, "diffusion_stages", None)
    if callable(plan):
        return int(plan(dt)), dt
    from .timestepping import sts_stages

    dt_exp = getattr(model, "dt_exp", math.inf)
    if not math.isfinite(dt_exp) or dt_exp <= 0:
        return 0, dt
    method = config.diffusion.method
    n = int(getattr(config.diffusion, "subcycles", 0) or 0)
    if n > 0:
        return n * sts_stages(dt / n / dt_exp, method), dt
    return sts_stages(dt / dt_exp, method), dt


def _preflight(model, config, bound: int) -> None:
    stages, dt = _stages_per_step(model, config)
    if stages > bound:
        eta = max(config.per_realization("diffusion", "eta_km2_s"))
        grid = f"{model.grid.ntheta} x {model.grid.nphi}"
        raise ValueError(f"diffusion: one step of {dt:.6g} h needs at least {stages} diffusion stages "
                         f"(diffusion.eta_km2_s up to {eta:g} km^2/s on a {grid} grid), beyond the bound of "
                         f"{bound} stages per step: the run would not finish in reasonable time. Lower "
                         "diffusion.eta_km2_s or time.dt_max_h, or raise --max-stages-per-step")


def _hipft_history_names(config, model) -> None:
    """Give a deck run's history files HipFT's names if the model wrote them under its own."""
    o = config.output
    want = o.history_prefix
    if not want:
        return
    have = getattr(model, "history_stem", None) or f"{getattr(model, 'history_prefix', o.prefix.split('_')[0])}_history"
    if have == want:
        return
    for r in range(config.n_realizations):
        src = os.path.join(o.directory, f"{have}_r{r + 1:06d}.out")
        dst = os.path.join(o.directory, f"{want}_r{r + 1:06d}.out")
        if os.path.exists(src) and not os.path.exists(dst):
            os.replace(src, dst)


def _run(args, comm, guard) -> int:
    rank = comm.Get_rank()
    logger = _logger(rank, args.quiet)
    config, notes = guard.run_phase("configuration", _load, args)
    if args.print_config:
        if rank == 0:
            print(json.dumps(config.to_dict(), indent=1))
        return 0
    for note in notes:
        logger.info("flux_transport: %s: %s", args.hipft_input, note)
    if args.allow_change and not args.restart:
        guard.run_phase("configuration", _raise, ValueError("--allow-change needs --restart"))
    directory = config.output.directory
    guard.run_phase("output directory", _make_output_dir, directory, rank)
    guard.run_phase("output directory", _check_output_dir, directory)
    if args.restart:
        allowed = guard.run_phase("restart check", _check_restart, args.restart, config, args.allow_change, rank)
        for key, old, new in allowed or ():
            logger.info("flux_transport: restart changes %s from %r to %r (allowed)", key, old, new)

    from .model import FluxTransport

    model = guard.run_phase("set-up", FluxTransport, comm, config, restart=args.restart)
    guard.run_phase("pre-flight", _preflight, model, config, args.max_stages_per_step)
    d = model.domain
    logger.info("flux_transport: %d x %d grid (theta x phi), %d realization(s), %d rank(s): %d group(s) of %s "
                "ranks (theta x phi), %s", model.grid.ntheta, model.grid.nphi, config.n_realizations,
                comm.Get_size(), d.groups, "x".join(map(str, d.decomp.dims)),
                f"restart at t = {model.time:.3f} h" if args.restart else f"from t = {model.time:.3f} h")
    callback = guard.faults.step_callback if guard.faults else None
    summary = guard.run_phase("run", model.run, callback)
    if rank == 0:
        guard.run_phase("output", _hipft_history_names, config, model)
    else:
        guard.run_phase("output", _noop)
    if rank == 0:
        last = model.history_rows[-1][2] if model.history_rows else None
        logger.info("flux_transport: %d steps to t = %.3f h in %.2f s (advection %.2f s, diffusion %.2f s, "
                    "output %.2f s on rank 0)", summary["steps"], summary["time"], summary["wall_s"],
                    summary["phases_s"]["advection"], summary["phases_s"]["diffusion"],
                    summary["phases_s"]["output"])
        if last is not None:
            logger.info("realization 1 at the end: positive flux %.4e Mx, negative flux %.4e Mx, axial dipole %.4f G",
                        last["FLUX_POSITIVE"][0], last["FLUX_NEGATIVE"][0], last["AX_DIPOLE"][0])
        logger.info("output in %s/", config.output.directory)
    model.free()
    return 0


def _raise(exc):
    raise exc


def _noop():
    return None


if __name__ == "__main__":
    sys.exit(main())
