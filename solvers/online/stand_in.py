"""A stand-in connection: releases a trainer blocked in ``MPI_Comm_accept`` whose member died.

``MPI_Comm_accept`` has no timeout. When the member it waits for exits (or stays
silent past ``study.connect_timeout_s``) before ``MPI_Comm_connect``, trainer rank 0
kills the member and runs this script as a one-rank job::

    mpiexec -n 1 python solvers/online/stand_in.py PORT_FILE

It connects to the port named in ``PORT_FILE``, joins the barrier every connection
makes, says hello as member :data:`~solvers.online.protocol.STAND_IN_MEMBER`,
and disconnects when the trainer does. The trainer recognizes the hello, disconnects
and counts the member as failed (it is retried). Run as a script so that it imports
only mpi4py and numpy (about a second to start, not the solvers' numba kernels).
Exit status: 0 after the disconnect, 1 on a bad port file.
"""

from __future__ import annotations

import os
import sys


def main(argv=None) -> int:
    """Connect to the port in ``argv[0]``, say hello as the stand-in, disconnect."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: stand_in.py PORT_FILE", file=sys.stderr)
        return 1
    os.environ.setdefault("MPIR_CVAR_CH4_NETMOD", "ofi")  # as the trainer's CLI (MPICH's UCX fails in connect)
    if __package__:
        from . import protocol as P
    else:  # run as a script: this directory is sys.path[0]
        import protocol as P
    from mpi4py import MPI

    try:
        port = P.read_ports(argv[0], 30.0)[0]
    except (TimeoutError, IndexError) as exc:
        print(f"stand_in: {exc}", file=sys.stderr)
        return 1
    inter = MPI.COMM_SELF.Connect(port, MPI.INFO_NULL, 0)
    inter.Ibarrier().Wait()  # as every connection (a nonblocking collective matches only its kind)
    hello = P.pack_message(P.Header(P.KIND_HELLO, P.STAND_IN_MEMBER, 0, -1, 0, 1, 0, (), "hello"))
    inter.Send(hello, 0, P.TAG_HELLO)
    inter.Disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
