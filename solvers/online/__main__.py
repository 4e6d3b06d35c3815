r"""Command line of online training.

::

    # trainer that starts its members itself (each an mpiexec job that connects to the trainer's port):
    mpiexec -n 2 python -m solvers.online train study.toml [--set section.key=value ...] [--resume]
    # one MPMD launch: trainer ranks, then member ranks (groups of study.ranks_per_member):
    mpiexec -n 2 python -m solvers.online train study.toml --set study.launcher=\\"mpmd\\" \\
        : -n 4 python -m solvers.online client study.toml
    # one member (what the trainer starts; reads HPCORE_ONLINE_* from the environment):
    mpiexec -n 2 python -m solvers.online member heat1d|darcy|flux [--option key=value ...]
    # the C client's build line:
    python -m solvers.online cflags

Exit status: 0 done, 2 refused study, 1 other errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["main"]


def _world_split():
    """In an MPMD launch (``MPI_APPNUM`` set and several apps), split the world: trainer = app 0."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    appnum = world.Get_attr(MPI.APPNUM)
    apps = world.allreduce(0 if appnum is None else appnum, op=MPI.MAX)
    if appnum is None or apps == 0:
        return world, None, appnum
    return world.Split(0 if appnum == 0 else 1, world.Get_rank()), world, appnum


def _options(items):
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = float(value)
    return out


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m solvers.online", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="run the trainer (and start the members)")
    t.add_argument("study")
    t.add_argument("--set", dest="overrides", action="append", default=[])
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    t.add_argument("--quiet", action="store_true")
    c = sub.add_parser("client", help="MPMD member ranks: run this group's members")
    c.add_argument("study")
    c.add_argument("--set", dest="overrides", action="append", default=[])
    m = sub.add_parser("member", help="run one member (identity from HPCORE_ONLINE_*)")
    m.add_argument("solver", choices=["heat1d", "darcy", "flux"])
    m.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    sub.add_parser("cflags", help="print the mpicc line that builds a C member with the client")
    args = p.parse_args(argv)

    if args.cmd == "cflags":
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c")
        print(f"mpicc -O2 -I{here} your_code.c {here}/hpcore_online.c -o your_code")
        return 0

    # MPICH: its UCX netmod crashes or hangs in connect/accept between separate jobs (measured with
    # the 5.0.2 wheel); OFI works. Members inherit the setting. Other MPIs ignore the variable.
    os.environ.setdefault("MPIR_CVAR_CH4_NETMOD", "ofi")
    from mpi4py import MPI

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("solvers.online")
    logger.handlers[:] = [handler]
    logger.propagate = False

    if args.cmd == "member":
        from . import client as cl
        from .members import MEMBERS

        env = cl.environment()
        MEMBERS[args.solver](MPI.COMM_WORLD, env["params"], **_options(args.option))
        return 0

    from .study import StudyError, load_study

    comm, world, _ = _world_split()
    rank = comm.Get_rank()
    debug = os.environ.get("HPCORE_ONLINE_DEBUG", "") not in ("", "0")
    if debug:
        handler.setFormatter(logging.Formatter(f"%(relativeCreated)9.0f ms [trainer {rank}] %(message)s"))
    logger.setLevel(logging.DEBUG if debug else
                    logging.INFO if rank == 0 and not getattr(args, "quiet", False) else logging.WARNING)
    try:
        study = load_study(args.study, args.overrides)
    except (StudyError, OSError, ValueError) as exc:
        if rank == 0:
            print(f"solvers.online: study refused: {exc}", file=sys.stderr, flush=True)
        return 2
    port_file = os.path.join(study.study.run_dir, "ports.txt")
    if args.cmd == "train":
        if world is not None and study.study.launcher != "mpmd":
            print("solvers.online: an MPMD launch needs study.launcher = 'mpmd'", file=sys.stderr, flush=True)
            return 2
        if rank == 0:
            os.makedirs(study.study.run_dir, exist_ok=True)
            if os.path.exists(port_file):
                os.remove(port_file)
        if world is not None:
            world.Barrier()  # clients read the port file only after the stale one is gone
        from .trainer import OnlineTrainer

        trainer = OnlineTrainer(comm, study, resume=args.resume)
        summary = trainer.run()
        if rank == 0:
            print(f"done: {summary['step']} steps, {summary['samples_in']} distinct samples, "
                  f"test error {summary['test_error']:.4e}, val error {summary['val_error']:.4e}, "
                  f"busy {summary['busy_fraction']:.2f}, members {summary['members']}", flush=True)
        return 0
    # MPMD client ranks
    if world is None:
        print("solvers.online client: only for MPMD launches (mpiexec ... : -n K python -m solvers.online client)",
              file=sys.stderr)
        return 2
    world.Barrier()
    from .launcher import member_environment, mpmd_members
    from .members import MEMBERS
    from .sampling import ParameterSampler

    k = study.study.ranks_per_member
    if comm.Get_size() % k:
        print(f"solvers.online client: {comm.Get_size()} client ranks are not a multiple of "
              f"study.ranks_per_member={k}", file=sys.stderr)
        return 2
    group = comm.Get_rank() // k
    member_comm = comm.Split(group, comm.Get_rank())
    design = ParameterSampler(study.parameters.bounds, study.parameters.method, study.study.seed).design(
        study.study.members)
    words = study.study.command
    solver = words[words.index("member") + 1] if "member" in words else words[-1]
    try:
        if solver not in MEMBERS:
            raise ValueError(f"study.command: MPMD clients run a built-in member ({sorted(MEMBERS)}), got {solver!r}")
        for mid in mpmd_members(study.study.members, comm.Get_size() // k, group):
            os.environ.update(member_environment(port_file, mid, 0, design[mid], study))
            MEMBERS[solver](member_comm, tuple(design[mid]), **study.data.solver)
    except Exception as exc:  # noqa: BLE001 - one launch: a failed client ends it, nothing waits forever
        print(f"solvers.online client (world rank {world.Get_rank()}): {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        world.Abort(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
