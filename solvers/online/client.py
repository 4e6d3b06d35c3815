"""Client API of online training, three calls: ``init(field_name, local_size, comm)``, ``send``, ``finalize``.

An ensemble member (any MPI program on its own communicator) calls :func:`init`
once per field, :func:`send` once per field and time step, and :func:`finalize`
at the end. The first :func:`init` connects ``comm`` to every trainer rank through
``MPI_Comm_connect`` on the port the trainer published in the file named by
``HPCORE_ONLINE_SERVER``; the launcher sets that and the member's identity::

    HPCORE_ONLINE_SERVER     port file written by the trainer (one line per trainer rank)
    HPCORE_ONLINE_MEMBER     member id (int)
    HPCORE_ONLINE_ATTEMPT    attempt number of this member (int, default 0)
    HPCORE_ONLINE_PARAMS     the member's parameters, comma-separated floats
    HPCORE_ONLINE_ROUTING    round_robin (default) or one
    HPCORE_ONLINE_TIMEOUT_S  longest wait for the trainer (connect file, credits) [s], default 300

The C and Fortran clients (``solvers/online/c/``) speak the same protocol
(:mod:`solvers.online.protocol`). Sending blocks while the trainer rank that owns
the time step has no credit left for this rank (back-pressure).
"""

from __future__ import annotations

import os
import time

import numpy as np

from hpcore.lazy_mpi import mpi

from . import protocol as P
from .protocol import read_ports

__all__ = ["Client", "environment", "finalize", "init", "read_ports", "send"]


def environment() -> dict:
    """The member identity and server from the ``HPCORE_ONLINE_*`` variables. Not collective."""
    server = os.environ.get("HPCORE_ONLINE_SERVER")
    if not server:
        raise RuntimeError("HPCORE_ONLINE_SERVER is not set: this process was not started as an online member")
    params = os.environ.get("HPCORE_ONLINE_PARAMS", "")
    return {
        "server": server,
        "member": int(os.environ.get("HPCORE_ONLINE_MEMBER", "0")),
        "attempt": int(os.environ.get("HPCORE_ONLINE_ATTEMPT", "0")),
        "params": tuple(float(p) for p in params.split(",") if p.strip()),
        "routing": os.environ.get("HPCORE_ONLINE_ROUTING", "round_robin"),
        "timeout_s": float(os.environ.get("HPCORE_ONLINE_TIMEOUT_S", "300")),
    }


class Client:
    """One member's connection to the trainer ranks.

    Collective on ``comm`` (construction connects; :meth:`finalize` disconnects);
    :meth:`send` is not collective (each rank sends its own part).

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The member's communicator (its ranks hold consecutive parts of each field).
    server, member, attempt, params, routing, timeout_s
        As in :func:`environment`.
    """

    def __init__(self, comm, server: str, member: int, attempt: int = 0, params=(), routing: str = "round_robin",
                 timeout_s: float = 300.0):
        MPI = mpi()
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.member = int(member)
        self.attempt = int(attempt)
        self.params = tuple(params)
        self.routing = routing
        self.timeout_s = float(timeout_s)
        self.fields: dict[str, int] = {}
        error = None
        try:
            if len(self.params) > P.MAX_PARAMS:
                raise ValueError(f"params: at most {P.MAX_PARAMS} parameters, got {len(self.params)}")
            if routing not in ("round_robin", "one"):
                raise ValueError(f"routing: expected 'round_robin' or 'one', got {routing!r}")
            ports = read_ports(server, self.timeout_s) if self.rank == 0 else None
        except Exception as exc:  # noqa: BLE001 - agreed below
            error, ports = exc, None
        from hpcore.errors import agree

        agree(comm, error)
        ports = comm.bcast(ports, root=0)
        if self.rank == 0:  # ask the trainer to accept (between two of its steps); connect on its answer
            try:
                open(f"{server}.connect-{self.member}-{self.attempt}", "w").close()
                go = f"{server}.go-{self.member}-{self.attempt}"
                deadline = time.monotonic() + self.timeout_s
                while not os.path.exists(go):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"member {self.member}: the trainer did not answer the connect "
                                           f"request in {self.timeout_s} s (HPCORE_ONLINE_TIMEOUT_S)")
                    time.sleep(1e-3)
                os.remove(go)
            except Exception as exc:  # noqa: BLE001 - agreed below
                error = exc
        agree(comm, error)  # every member rank raises, none is left in MPI_Comm_connect
        self.inter = comm.Connect(ports[0], MPI.INFO_NULL, 0)
        self.inter.Set_errhandler(MPI.ERRORS_RETURN)
        self.n_trainers = self.inter.Get_remote_size()
        self.credits = [0] * self.n_trainers
        self.acked = [False] * self.n_trainers
        self._credit_buf = np.zeros(1, dtype=np.int64)
        self._status = MPI.Status()
        self.closed = False
        # both groups hold the new intercommunicator before the first message; non-blocking on both
        # sides (MPI: a nonblocking collective does not match a blocking one) so a dead trainer times out
        self._wait(self.inter.Ibarrier().Test, "no barrier with the trainer after connecting")
        if self.rank == 0:  # who we are, so the trainer can tell us from a stand-in (protocol docstring)
            hello = P.pack_message(P.Header(P.KIND_HELLO, self.member, self.attempt, -1, 0, self.size, 0,
                                            self.params, "hello"))
            req = self.inter.Isend(hello, 0, P.TAG_HELLO)
            self._wait(req.Test, "hello to trainer rank 0 not delivered")

    def add_field(self, field_name: str, local_size: int) -> None:
        """Declare a field of ``local_size`` float64 values on this rank. Not collective."""
        if not isinstance(field_name, str) or not field_name or len(field_name.encode()) >= P.FIELD_CHARS:
            raise ValueError(f"rank {self.rank}/{self.size}: field_name: 1 to 31 bytes expected, got {field_name!r}")
        if int(local_size) < 0:
            raise ValueError(f"rank {self.rank}/{self.size}: local_size: expected >= 0, got {local_size}")
        self.fields[field_name] = int(local_size)

    def _drain(self) -> None:
        """Receive every credit message that has arrived (from any trainer rank).

        Matched probes (``MPI_Improbe`` + ``MPI_Mrecv``) on any source, attributed by the status:
        the message received is the one probed. (A source-specific probe can match another rank's
        message on the libfabric sockets provider of the MPICH wheel: see the server's docstring.)"""
        MPI = mpi()
        status = self._status
        while True:
            msg = self.inter.Improbe(MPI.ANY_SOURCE, P.TAG_CREDIT, status)
            if msg is None:
                return
            src = status.Get_source()
            msg.Recv(self._credit_buf)
            if self._credit_buf[0] < 0:
                self.acked[src] = True
            else:
                self.credits[src] += int(self._credit_buf[0])

    def _wait(self, done, what: str) -> None:
        """Drain credits until ``done()``; a member never blocks in MPI while the trainer sends to it."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            self._drain()
            if done():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {self.rank}/{self.size} of member {self.member}: {what} in "
                                   f"{self.timeout_s} s (HPCORE_ONLINE_TIMEOUT_S)")
            time.sleep(2e-4)

    def _take_credit(self, dest: int) -> None:
        self._wait(lambda: self.credits[dest] > 0, f"no credit from trainer rank {dest}")
        self.credits[dest] -= 1

    def send(self, field_name: str, array, time_step: int) -> None:
        """Send this rank's part of ``field_name`` at ``time_step``; waits for a credit. Not collective."""
        if self.closed:
            raise RuntimeError("send after finalize")
        if field_name not in self.fields:
            raise ValueError(f"rank {self.rank}/{self.size}: field_name {field_name!r} was not declared by init "
                             f"(declared: {sorted(self.fields)})")
        data = np.ascontiguousarray(array, dtype=np.float64).ravel()
        if data.size != self.fields[field_name]:
            raise ValueError(f"rank {self.rank}/{self.size}: {field_name!r} has {data.size} values, init declared "
                             f"local_size={self.fields[field_name]}")
        dest = P.trainer_of(self.member, int(time_step), self.n_trainers, self.routing)
        header = P.Header(P.KIND_DATA, self.member, self.attempt, time_step, self.rank, self.size, data.size,
                          self.params, field_name)
        msg = P.pack_message(header, data)
        self._take_credit(dest)
        req = self.inter.Isend(msg, dest, P.TAG_DATA)
        self._wait(req.Test, f"send to trainer rank {dest} not complete")

    def finalize(self) -> None:
        """Say goodbye to every trainer rank and disconnect. Collective on ``comm``."""
        if self.closed:
            return
        self.closed = True
        header = P.Header(P.KIND_BYE, self.member, self.attempt, -1, self.rank, self.size, 0, self.params, "bye")
        msg = P.pack_message(header)
        reqs = [self.inter.Isend(msg, dest, P.TAG_DATA) for dest in range(self.n_trainers)]
        # drain credits up to every trainer rank's acknowledgement (-1), its last message to us
        self._wait(lambda: all(self.acked) and all(r.Test() for r in reqs), "no goodbye from the trainer")
        self.inter.Disconnect()
        self.inter = None


_client: Client | None = None


def init(field_name: str, local_size: int, comm) -> None:
    """Declare ``field_name`` (``local_size`` float64 values on this rank); the first call connects.

    Collective on ``comm`` (the member's communicator): every rank calls it, with the
    same ``field_name`` and its own ``local_size``. The member identity comes from
    the ``HPCORE_ONLINE_*`` environment (see the module docstring).
    """
    global _client
    from hpcore import as_comm

    comm = as_comm(comm)
    if _client is None:
        env = environment()
        _client = Client(comm, env["server"], env["member"], env["attempt"], env["params"], env["routing"],
                         env["timeout_s"])
    _client.add_field(field_name, local_size)


def send(field_name: str, array, time_step: int) -> None:
    """Send this rank's part of ``field_name`` at ``time_step`` to its trainer rank. Not collective."""
    if _client is None:
        raise RuntimeError("send before init")
    _client.send(field_name, array, time_step)


def finalize() -> None:
    """End the member's connection (after the last send). Collective on the member's communicator."""
    global _client
    if _client is not None:
        _client.finalize()
        _client = None
