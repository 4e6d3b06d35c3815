"""Command line: ``mpiexec -n N python -m solvers.flux_transport [config.toml] [--set section.key=value ...]``.

Without a config file the built-in default run (``default.toml`` beside this
module) is used: a synthetic map of bipolar active regions, AFT flows and two
diffusivities for 28 days, with HDF5 maps, history files and PNG plots written
to ``flux_output/``. Progress lines come from rank 0; set
``FLUX_TRANSPORT_DEBUG=1`` for per-rank debug output. Exit status: 0 on
success, 2 for a refused configuration or input (the same message on every
rank, printed once), 1 for other errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m solvers.flux_transport", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=None,
                   help="TOML configuration (default: the built-in default run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting (TOML value syntax), e.g. --set time.end_h=48 (repeatable)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (same as --set output.directory=...)")
    p.add_argument("--restart", default=None, metavar="CHECKPOINT", help="continue from a checkpoint file")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from mpi4py import MPI

    from .config import DEFAULT_CONFIG_PATH, ConfigError, load_config

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    debug = os.environ.get("FLUX_TRANSPORT_DEBUG", "") not in ("", "0")
    level = logging.DEBUG if debug else (logging.WARNING if args.quiet else logging.INFO)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s" if debug else "%(message)s"))
    logger = logging.getLogger("solvers.flux_transport")
    logger.handlers[:] = [handler]
    logger.setLevel(level if (rank == 0 or debug) else logging.WARNING)
    logger.propagate = False

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output.directory={args.out!r}".replace("'", '"'))
    try:
        config = load_config(args.config or DEFAULT_CONFIG_PATH, overrides=overrides)
    except ConfigError as exc:
        if rank == 0:
            print(f"flux_transport: configuration refused: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.print_config:
        if rank == 0:
            import json

            print(json.dumps(config.to_dict(), indent=1))
        return 0

    from .model import FluxTransport

    try:
        model = FluxTransport(comm, config, restart=args.restart)
    except (ValueError, TypeError, OSError) as exc:
        if rank == 0:
            print(f"flux_transport: refused before the run: {exc}", file=sys.stderr, flush=True)
        return 2
    d = model.domain
    logger.info("flux_transport: %d x %d grid (theta x phi), %d realization(s), %d rank(s): %d group(s) of %s "
                "ranks (theta x phi), %s", model.grid.ntheta, model.grid.nphi, config.n_realizations,
                comm.Get_size(), d.groups, "x".join(map(str, d.decomp.dims)),
                "restart at t = %.3f h" % model.time if args.restart else "from t = %.3f h" % model.time)
    logger.debug("group %d, realizations [%d, %d), rows [%d, %d), cols [%d, %d)", d.group, d.r0, d.r1, d.row0,
                 d.row0 + d.ntl, d.col0, d.col0 + d.npl)
    summary = model.run()
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


if __name__ == "__main__":
    sys.exit(main())
