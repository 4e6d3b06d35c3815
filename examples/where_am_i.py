"""Where am I: one line per rank (rank, host, Slurm ids, topology, GPU), then a checked result line.

Run under any launcher, e.g. ``mpiexec -n 4 python examples/where_am_i.py`` or, inside a
Slurm job, ``srun --mpi=pmi2 python examples/where_am_i.py --expect-size 8``. The
templates in ``slurm/`` run it. Every rank's facts are gathered to rank 0, which writes
them in rank order as whole lines (lines written by several ranks at once can splice).

The run fails (exit status 3, on every rank) when the launch is wrong:

- ``MPI_COMM_WORLD`` has one rank while Slurm started several tasks: the ranks were
  started without a PMI their MPI understands (plain ``srun``, or ``--mpi=pmi2`` with
  Open MPI), so each one is a separate one-rank job;
- the size differs from ``--expect-size``, or the node count seen by
  :class:`hpcore.topology.Topology` differs from ``--expect-nodes``;
- ``--gpu`` is given and this rank sees no GPU.

Output, for a test or a person to read::

    where_am_i: rank 0/4 host=n001 slurm_procid=0 slurm_nodeid=0 slurm_localid=0 node=0/2 local=0/2 ...
    where_am_i: topology: 4 ranks on 2 nodes (slurm, 2 ranks per node); shared-memory view: 2 nodes
    where_am_i: result size=4 nodes=2 sum_ranks=6 expected=6 member=- ok
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

from mpi4py import MPI

from hpcore.arrays import cupy_or_none
from hpcore.cuda_aware import detect_cuda_aware
from hpcore.topology import Topology, bind_gpu, describe, gpu_for_local_rank, slurm_env, visible_gpu_count

PREFIX = "where_am_i:"
GPU_ENV = ("HPCORE_CUDA_AWARE", "MPIR_CVAR_ENABLE_GPU", "MPICH_GPU_SUPPORT_ENABLED", "OMPI_MCA_pml", "UCX_TLS",
           "MV2_USE_CUDA")


def _say(lines: list[str]) -> None:
    """Write whole lines in one call (never one print per fragment)."""
    sys.stdout.write("".join(f"{PREFIX} {line}\n" for line in lines))
    sys.stdout.flush()


def _slurm_task_count() -> int | None:
    """Tasks Slurm started in this step (or allocated to the job, in a batch script)."""
    for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"):
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return None


def _launch_error(size: int, expect_size: int | None) -> str | None:
    """A local, deterministic check of how this process was launched (same verdict on every rank)."""
    tasks = _slurm_task_count()
    if expect_size is not None and size != expect_size:
        hint = ""
        if size == 1 and expect_size > 1:
            hint = (" Each rank runs alone: the ranks were launched without a PMI this MPI understands "
                    "(plain srun, or --mpi=pmi2 with Open MPI); use srun --mpi=pmi2 for MPICH/MVAPICH2, "
                    "srun --mpi=pmix for Open MPI, or mpiexec inside the allocation.")
        return f"MPI_COMM_WORLD has {size} rank(s) but --expect-size is {expect_size}.{hint}"
    if expect_size is None and size == 1 and tasks is not None and tasks > 1:
        return (f"MPI_COMM_WORLD has 1 rank but Slurm started {tasks} tasks: each rank runs alone, launched "
                "without a PMI this MPI understands (plain srun, or --mpi=pmi2 with Open MPI); use "
                "srun --mpi=pmi2 for MPICH/MVAPICH2, srun --mpi=pmix for Open MPI, or mpiexec.")
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-size", type=int, help="fail unless MPI_COMM_WORLD has this many ranks")
    parser.add_argument("--expect-nodes", type=int, help="fail unless the topology has this many nodes")
    parser.add_argument("--member", type=int, help="ensemble member (e.g. $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--gpu", action="store_true", help="report GPU binding; fail if a rank sees no GPU")
    parser.add_argument("--json", metavar="PATH", help="rank 0 writes the result as JSON here")
    args = parser.parse_args(argv)

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()

    error = _launch_error(size, args.expect_size)
    if error is not None:  # same verdict everywhere: every process reports and exits
        _say([f"rank {rank}/{size} host={socket.gethostname()} slurm_procid={os.environ.get('SLURM_PROCID', '-')} "
              f"error: {error}"])
        return 3

    # Trust Slurm when every rank runs under it; else the shared-memory view.
    info = slurm_env()
    under_slurm = comm.allreduce(int(info is not None and info.node_id is not None), op=MPI.MIN)
    topo = Topology(comm, source="slurm" if under_slurm else "shared")
    shared = Topology(comm, source="shared")

    gpus = visible_gpu_count()
    gpu = gpu_for_local_rank(topo.local_rank, num_gpus=gpus) if gpus is not None else None
    fields = [
        f"rank {rank}/{size}",
        f"host={MPI.Get_processor_name()}",
        f"slurm_procid={os.environ.get('SLURM_PROCID', '-')}",
        f"slurm_nodeid={os.environ.get('SLURM_NODEID', '-')}",
        f"slurm_localid={os.environ.get('SLURM_LOCALID', '-')}",
        f"node={topo.node}/{topo.num_nodes}",
        f"local={topo.local_rank}/{topo.local_size}",
        f"shared_node={shared.node}/{shared.num_nodes}",
    ]
    if args.gpu:
        fields += [f"cuda_visible={os.environ.get('CUDA_VISIBLE_DEVICES', '-')}",
                   f"gpus={gpus if gpus is not None else '-'}",
                   f"gpu={gpu if gpu is not None else '-'}"]
        cupy = cupy_or_none() if gpu is not None else None
        if cupy is not None:  # a real device: make it current and say which one it is
            device = bind_gpu(topo, num_gpus=gpus)
            fields.append(f"cupy_device={device} pci={cupy.cuda.Device(device).pci_bus_id}")
    fields.append(f"prefix={sys.prefix}")
    rows = comm.gather(" ".join(fields), root=0)

    problems = []
    if args.expect_nodes is not None and topo.num_nodes != args.expect_nodes:
        problems.append(f"topology ({topo.source}) has {topo.num_nodes} node(s) but --expect-nodes is "
                        f"{args.expect_nodes}")
    if args.gpu and gpu is None:
        problems.append(f"rank {rank}/{size}: no GPU visible (CUDA_VISIBLE_DEVICES="
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    problems = [p for ps in comm.allgather(problems) for p in ps]
    problems = list(dict.fromkeys(problems))

    total = comm.allreduce(rank, op=MPI.SUM)
    member = args.member if args.member is not None else "-"
    # An ensemble member's value: every rank contributes (rank + 1) * (member + 1).
    weight = (args.member + 1) if args.member is not None else 1
    member_sum = comm.allreduce((rank + 1) * weight, op=MPI.SUM)
    expected = size * (size - 1) // 2
    ok = total == expected and member_sum == weight * size * (size + 1) // 2 and not problems

    if rank == 0:
        printable = "".join(c for c in MPI.Get_library_version() if c.isprintable() or c == "\n")
        library = " ".join(printable.splitlines()[0].split())
        lines = [f"MPI {library}; python {sys.executable}"]
        lines += rows
        lines.append(f"topology: {describe(topo)}; shared-memory view: {shared.num_nodes} node(s)")
        if args.gpu:
            aware = detect_cuda_aware()
            env = " ".join(f"{k}={os.environ[k]}" for k in GPU_ENV if k in os.environ) or "none"
            lines.append(f"cuda_aware={int(aware.available)} ({aware.reason}); env {env}")
        lines += [f"error: {p}" for p in problems]
        lines.append(f"result size={size} nodes={topo.num_nodes} sum_ranks={total} expected={expected} "
                     f"member={member} member_sum={member_sum} {'ok' if ok else 'FAILED'}")
        _say(lines)
        if args.json:
            result = {
                "size": size, "nodes": topo.num_nodes, "ranks_per_node": topo.ranks_per_node,
                "source": topo.source, "sum_ranks": total, "member": args.member, "member_sum": member_sum,
                "ok": ok, "job_id": os.environ.get("SLURM_JOB_ID"), "problems": problems,
            }
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(result, fh, indent=1)
                fh.write("\n")
    shared.free()
    topo.free()
    return 0 if ok else 3


if __name__ == "__main__":
    raise SystemExit(main())
