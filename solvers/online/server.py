"""Trainer-side receiving: one port, connections accepted between steps, a receiving thread, credits.

Trainer rank 0 opens an MPI port and writes it to the port file that members
read (:func:`solvers.online.protocol.read_ports`). A member's rank 0 first creates
``<port file>.connect-<member>-<attempt>``; the trainer sees that file between two
steps, rank 0 answers with ``<port file>.go-<member>-<attempt>`` and all trainer
ranks call ``MPI_Comm_accept`` together; the member calls ``MPI_Comm_connect`` when
it sees the answer, so the accept waits milliseconds and members connect one at a
time. The result is one intercommunicator per member whose remote group
is the member's ranks: a time step goes to trainer rank ``(member + t) % n``.

Why not accept in a thread: with the MPICH 5.0.2 wheel a thread blocked in
``MPI_Comm_accept`` blocks every other MPI call of the process (measured: an
allreduce in the main thread never returns), so accepting happens in the main
thread, only when a member is known to be connecting.

Why a barrier on each new connection, and matched probes: with the MPICH wheel's
OFI netmod (libfabric 2.5.1, ``sockets`` provider) a message from a peer that the
receiver has not yet entered in its address table arrives with source address
``FI_ADDR_NOTAVAIL``, which equals ``FI_ADDR_UNSPEC`` and so matches *any*
source-specific receive or probe with the same tag and communicator. Accept and
connect insert the remote addresses on each rank only after the root ranks have
exchanged them (MPICH ``ch4_comm.c``), so a message sent right after connecting can
be taken by a receive posted for another rank: measured, a member counted trainer
rank 1's credits as rank 0's, never sent to rank 1, and rank 1 "lost" its data
(MPICH PR 6293; libfabric's fix is in no release yet). A rank leaves the
intercommunicator barrier only after every remote rank entered it, that is, after
its accept or connect inserted every address, so nothing is sent on a connection
before its barrier completes; and receives are matched probes (``MPI_Improbe`` then
``MPI_Mrecv``) attributed by the status, never a directed receive after a probe.

A second thread on each rank probes every open connection (``MPI_Improbe``),
receives messages, assembles the parts of each (member, time step) from all
member ranks and all required fields into a sample and queues it; training never
waits for a member: the main thread takes complete samples between steps
(:meth:`Receiver.take`). This needs ``MPI_THREAD_MULTIPLE`` (mpi4py's default
request; the MPICH wheel provides it).

Credits: on accept every trainer rank sends each member rank ``window`` credits
(tag :data:`~solvers.online.protocol.TAG_CREDIT`, one int64).
A credit goes back as soon as its message is received while fewer than
``stage_limit`` complete samples wait to be taken; otherwise only when the trainer
takes the sample. So memory per trainer rank is bounded (``stage_limit`` samples
plus ``window`` messages per member rank) and members wait in ``send`` when the
trainer falls behind. (Returning credits only on take deadlocks a run that takes
a fixed number of samples per step: a member blocked on one rank's credit cannot
feed the rank that waits for data.) A member rank's goodbye is answered with -1 on the
credit tag, the last message the trainer sends it: the member drains its credits up
to that mark before ``MPI_Comm_disconnect`` (which refuses unmatched messages).
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time

import numpy as np

from hpcore.lazy_mpi import mpi

from . import protocol as P

__all__ = ["Receiver", "Sample", "publish_ports"]

log = logging.getLogger(__name__)


class Sample:
    """A complete sample: every required field of one (member, attempt, time step), in rank order."""

    __slots__ = ("attempt", "credits", "fields", "member", "params", "time_step")

    def __init__(self, member, attempt, time_step, params, fields, credits):
        self.member, self.attempt, self.time_step = member, attempt, time_step
        self.params, self.fields, self.credits = params, fields, credits


class _Conn:
    def __init__(self, inter):
        self.inter = inter
        self.size = inter.Get_remote_size()
        self.member = None
        self.attempt = None
        self.byes = 0
        self.received = 0
        self.bye_ranks: set = set()
        self.dead = False
        self.closed = False


def publish_ports(comm, port, path: str) -> None:
    """Write rank 0's ``port`` to ``path`` atomically. Collective on ``comm`` (a failed write
    raises on every rank)."""
    from hpcore import agree

    error = None
    if comm.Get_rank() == 0:
        try:
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(f"0 {port}\n# end\n")
            os.replace(tmp, path)
        except OSError as exc:
            error = exc
    agree(comm, error, what="online port file")


class Receiver:
    """Accept members and receive their samples on this trainer rank, in two threads.

    Not collective (each trainer rank runs its own); :meth:`open` publishes the
    ports and is collective on the trainer communicator.

    Parameters
    ----------
    fields : sequence of str
        Fields a sample needs (others are acknowledged and ignored).
    window : int
        Credits per member rank (messages in flight to this trainer rank).
    seen : set of (member, time_step), optional
        Samples already taken before (a restart): new copies are dropped.
    """

    def __init__(self, fields, window: int = 4, seen=None, mode: str = "poll", stage_limit: int = 64):
        if int(window) < 1:
            raise ValueError(f"window: expected >= 1 credit, got {window}")
        if mode not in ("poll", "thread"):
            raise ValueError(f"mode: expected 'poll' or 'thread', got {mode!r}")
        self.mode = mode
        self.stage_limit = int(stage_limit)
        self.fields = tuple(fields)
        self.window = int(window)
        self.seen = set(seen or ())
        self.lock = threading.Lock()
        self.mpi_lock = threading.Lock()  # held by the receiving thread while it probes; by accept/disconnect
        self.conns: list[_Conn] = []
        self.parts: dict = {}
        self.ready: collections.deque = collections.deque()
        self.credit_queue: collections.deque = collections.deque()
        self._sends: list = []  # credit Isends in flight (request, buffer, connection)
        self.failed: set = set()          # (member, attempt) whose data is ignored from now on
        self.finished: set = set()        # (member, attempt) whose every rank said BYE here
        self.last_seen: dict = {}         # (member, attempt) -> wall time (time.time()) of its last message here
        self.received = 0
        self.bytes = 0
        self.dropped = 0
        self.staged_high_water = 0  # most complete samples waiting to be taken at once (back-pressure bound)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.port = None
        self._threads = []

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self, comm, path: str) -> None:
        """Open the port (rank 0), publish it in ``path``, start the receiving thread. Collective on ``comm``."""
        MPI = mpi()
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise RuntimeError(f"the online trainer needs MPI_THREAD_MULTIPLE, MPI provides level {MPI.Query_thread()}")
        from hpcore import agree

        self.comm = comm
        self.port_file = path
        error = None
        try:
            if comm.Get_rank() == 0:
                import glob

                # request and answer files of an earlier run in this directory would pair a stale
                # member with the wrong accept: gone before the port is published
                for stale in glob.glob(path + ".connect-*") + glob.glob(path + ".go-*"):
                    os.remove(stale)
                self.port = MPI.Open_port()
            else:
                self.port = ""
        except Exception as exc:  # noqa: BLE001 - agreed below
            error = exc
        agree(comm, error, what="online Receiver.open")
        publish_ports(comm, self.port, path)
        if self.mode == "thread":
            t = threading.Thread(target=self._receive_loop, name="online-receiver", daemon=True)
            t.start()
            self._threads.append(t)

    def poll(self, max_messages: int = 1 << 20) -> int:
        """In ``poll`` mode: receive what has arrived (non-blocking probes), up to ``max_messages``
        rounds. Not collective."""
        MPI = mpi()
        status = MPI.Status()
        rounds = 0
        while rounds < max_messages and self._receive_once(MPI, status):
            rounds += 1
        return rounds

    def connecting(self) -> list:
        """Member tries waiting in ``MPI_Comm_connect`` (their request files, removed here). Rank 0 only."""
        import glob

        found = []
        for name in sorted(glob.glob(self.port_file + ".connect-*")):
            try:
                m, a = (int(v) for v in name.rsplit(".connect-", 1)[1].split("-"))
            except ValueError:
                continue  # not a request file (a member writes connect-<member>-<attempt>)
            try:
                os.remove(name)
            except FileNotFoundError:
                continue
            found.append((m, a))
        return found

    def accept(self, member: int, attempt: int, timeout_s: float = 60.0, watch=None) -> bool:
        """Accept member try (member, attempt), which asked to connect, and grant its credits.

        Collective on ``comm``. Rank 0 first writes ``<port file>.go-<member>-<attempt>``; the
        member connects only when it sees that file, so one connection is made at a time
        (MPICH's OFI netmod crashed in accept when two members connected at once: measured).

        ``MPI_Comm_accept`` has no timeout, so on rank 0 a watchdog thread (no MPI calls)
        looks after the member while the accept waits: when ``watch.alive()`` turns false,
        or after ``timeout_s`` seconds, it calls ``watch.rescue()``, which kills the member
        and starts a stand-in connection (:mod:`solvers.online.stand_in`) that releases
        the accept. Once connected, rank 0 waits (non-blocking, up to ``timeout_s``) for
        the barrier and the hello of the new connection, and tells every trainer rank the
        verdict. Returns True when the member is connected; False (on every rank) when it
        is not: died, silent, or replaced by a stand-in. A connection from a stand-in
        started for an earlier accept is disconnected and the accept repeated.
        """
        from hpcore import agree

        MPI = mpi()
        rank0 = self.comm.Get_rank() == 0
        error = None
        if rank0:
            try:
                go = f"{self.port_file}.go-{member}-{attempt}"
                with open(go + ".tmp", "w"):
                    pass
                os.replace(go + ".tmp", go)
            except OSError as exc:
                error = exc
        agree(self.comm, error, what="online accept (go file)")  # never leave the others in Accept
        def watch_accept():  # a fresh state and watchdog for each MPI_Comm_accept (rank 0)
            st = {"done": False, "rescued": False, "lock": threading.Lock()}
            if rank0 and watch is not None:
                threading.Thread(target=self._watchdog, args=(member, attempt, timeout_s, watch, st),
                                 name="online-accept-watchdog", daemon=True).start()
            return st

        state = watch_accept()
        try:
            with self.mpi_lock:  # UCX-MPICH hangs when a thread probes during an accept (measured)
                while True:
                    inter = self.comm.Accept(self.port if rank0 else None, MPI.INFO_NULL, 0)
                    with state["lock"]:  # from here rank 0 watches the member itself (in _identify)
                        state["done"] = True
                        rescued = state["rescued"]
                    inter.Set_errhandler(MPI.ERRORS_RETURN)
                    # both groups hold the new intercommunicator before the first message
                    barrier = inter.Ibarrier()
                    who = None
                    if rank0:
                        try:
                            who = self._identify(inter, barrier, timeout_s, None if rescued else watch)
                        except Exception as exc:  # noqa: BLE001 - an MPI error from a dying peer
                            who = f"error while identifying the connection: {exc}"
                    who, rescued = self.comm.bcast((who, rescued), root=0)
                    if who == "stand-in":
                        barrier.Wait()
                        inter.Disconnect()
                        if rescued:
                            return False
                        state = watch_accept()  # a stand-in for an earlier accept: the member still waits
                        continue
                    if who != (member, attempt) or rescued:
                        # died after connecting, or a watchdog kill raced the connect: abandon the
                        # connection (its barrier may never complete; nothing more is sent on it)
                        log.warning("member %d attempt %d: connection abandoned (%s)", member, attempt,
                                    "killed while connecting" if rescued else who)
                        return False
                    barrier.Wait()
                    conn = _Conn(inter)
                    conn.member, conn.attempt = member, attempt
                    grant = np.array([self.window], dtype=np.int64)
                    for r in range(conn.size):
                        self._sends.append((inter.Isend(grant, r, P.TAG_CREDIT), grant, conn))
                    break
        finally:
            with state["lock"]:
                state["done"] = True
        with self.lock:
            self.conns.append(conn)
        return True

    def _identify(self, inter, barrier, timeout_s, watch):
        """Rank 0: who connected on ``inter``: ``(member, attempt)``, ``"stand-in"`` or a reason it is
        not usable (no barrier or hello within ``timeout_s``, or the member died: ``watch.alive()``
        false; ``watch`` None once a stand-in was started). Non-blocking waits."""
        MPI = mpi()
        status = MPI.Status()
        deadline = time.monotonic() + timeout_s
        hello = None
        while True:
            msg = inter.Improbe(0, P.TAG_HELLO, status) if hello is None else None
            if msg is not None:
                buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
                msg.Recv(buf)
                try:
                    header, _ = P.unpack_message(buf)
                except ValueError as exc:
                    return f"bad hello: {exc}"
                hello = "stand-in" if header.member == P.STAND_IN_MEMBER else (header.member, header.attempt)
            if hello is not None and barrier.Test():
                return hello
            if hello != "stand-in" and watch is not None and not watch.alive():
                return "member exited while connecting"
            if time.monotonic() > deadline:
                return f"no {'barrier' if hello else 'hello'} within connect_timeout_s={timeout_s}"
            time.sleep(1e-3)

    def _watchdog(self, member, attempt, timeout_s, watch, state):
        """Rank 0, while the main thread waits in ``MPI_Comm_accept``: rescue a dead or silent member;
        end the process if even the stand-in cannot release the accept (MPI offers no other way out)."""
        t0 = time.monotonic()
        while True:
            time.sleep(0.05)
            waited = time.monotonic() - t0
            with state["lock"]:
                if state["done"]:
                    return
                rescue = not state["rescued"] and (waited > timeout_s or not watch.alive())
                if rescue:
                    state["rescued"] = True
                rescued = state["rescued"]
            if rescue:
                why = "exited" if waited <= timeout_s else f"did not connect in {timeout_s} s"
                log.warning("member %d attempt %d %s: starting a stand-in connection", member, attempt, why)
                watch.rescue()
            elif rescued and waited > 2 * timeout_s + 30:
                print(f"solvers.online: trainer rank 0: MPI_Comm_accept for member {member} attempt {attempt} "
                      f"did not return {waited:.0f} s after it began, even after a stand-in connection; "
                      f"the trainer exits (rerun it with --resume to continue from its last checkpoint)",
                      file=sys.stderr, flush=True)
                try:
                    watch.abandon()  # kill members and stand-ins (no MPI calls): nothing outlives us
                finally:
                    os._exit(75)

    def disconnect_finished(self, finished) -> None:
        """Disconnect the connections of ``finished`` (member, attempt) pairs. Collective on ``comm``
        (every trainer rank passes the same pairs, in the same order)."""
        for key in finished:
            with self.lock:
                conns = [c for c in self.conns if (c.member, c.attempt) == tuple(key) and not c.closed]
            for conn in conns:
                with self.mpi_lock:
                    for r, _, c in self._sends:
                        if c is conn:
                            r.Wait()  # the member drained its credits up to our acknowledgement
                    self._sends = [x for x in self._sends if x[2] is not conn]
                    conn.closed = True
                    conn.inter.Disconnect()

    def close(self) -> None:
        """Stop the receiving thread and close the port. Not collective. Safe to call twice."""
        if self.port is None:
            return
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        if self.port:
            mpi().Close_port(self.port)
        self.port = None

    # -- receiving ---------------------------------------------------------------------------------
    def _receive_loop(self):
        MPI = mpi()
        status = MPI.Status()
        try:
            while not self._stop.is_set():
                with self.mpi_lock:
                    busy = self._receive_once(MPI, status)
                if not busy:
                    time.sleep(2e-4)
        except Exception as exc:  # noqa: BLE001 - the trainer sees alive() turn false and stops every rank
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def alive(self) -> bool:
        """Whether the receiving thread (``thread`` mode) still runs. Not collective."""
        return all(t.is_alive() for t in self._threads)

    def _receive_once(self, MPI, status) -> bool:
        busy = False
        while self.credit_queue:
            conn, rank, *ack = self.credit_queue.popleft()
            if rank in conn.bye_ranks and not ack:  # after the goodbye only its acknowledgement goes out
                continue
            if not (conn.dead or conn.closed):
                try:  # non-blocking: a blocking send here deadlocks against a member blocked in its send
                    buf = np.array([-1 if ack else 1], dtype=np.int64)
                    self._sends.append((conn.inter.Isend(buf, rank, P.TAG_CREDIT), buf, conn))
                except Exception as exc:  # noqa: BLE001 - a member died meanwhile
                    self.errors.append(f"credit to member {conn.member}: {exc}")
            busy = True
        if self._sends:
            self._sends = [(r, b, c) for r, b, c in self._sends if not (c.dead or c.closed or r.Test())]
        with self.lock:
            conns = [c for c in self.conns if not (c.dead or c.closed or c.byes == c.size)]
        for conn in conns:
            try:
                msg = conn.inter.Improbe(MPI.ANY_SOURCE, P.TAG_DATA, status)
                if msg is None:
                    continue
                buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
                msg.Recv(buf)  # exactly the probed message (a directed Recv could match another's)
            except Exception as exc:  # noqa: BLE001 - a member died: its connection is abandoned
                conn.dead = True
                self.errors.append(f"member {conn.member}: {exc}")
                log.warning("connection of member %s abandoned: %s", conn.member, exc)
                continue
            busy = True
            conn.received += 1
            self._handle(conn, buf)
        return busy

    def _handle(self, conn, buf):
        header, data = P.unpack_message(buf)
        key_ma = (header.member, header.attempt)
        with self.lock:
            conn.member, conn.attempt = header.member, header.attempt
            if key_ma in self.failed:
                conn.dead = True
                return
            self.last_seen[key_ma] = time.time()
            if header.kind == P.KIND_BYE:
                conn.byes += 1
                conn.bye_ranks.add(header.rank)
                self.credit_queue.append((conn, header.rank, "ack"))  # the last message to that rank
                if conn.byes == conn.size:
                    self.finished.add(key_ma)
                return
            self.received += 1
            self.bytes += buf.size
        credit = (conn, header.rank)
        with self.lock:
            if header.field not in self.fields or (header.member, header.time_step) in self.seen:
                self.dropped += 1
                self.credit_queue.append(credit)
                return
            key = (header.member, header.attempt, header.time_step)
            entry = self.parts.setdefault(key, {"params": header.params, "size": header.size, "parts": {},
                                                "credits": []})
            entry["parts"][(header.field, header.rank)] = data.copy()
            if len(self.ready) < self.stage_limit:  # room to stage: the credit goes back at once
                self.credit_queue.append(credit)
            else:  # staging full: the credit goes back when the trainer takes the sample
                entry["credits"].append(credit)
            if len(entry["parts"]) == len(self.fields) * entry["size"]:
                del self.parts[key]
                fields = {f: np.concatenate([entry["parts"][(f, r)] for r in range(entry["size"])])
                          for f in self.fields}
                self.ready.append(Sample(header.member, header.attempt, header.time_step, entry["params"], fields,
                                         entry["credits"]))
                self.staged_high_water = max(self.staged_high_water, len(self.ready))

    # -- the trainer's side -----------------------------------------------------------------------
    def available(self) -> int:
        """Complete samples waiting to be taken. Not collective."""
        return len(self.ready)

    def take(self, n: int) -> list[Sample]:
        """Take up to ``n`` complete samples in arrival order; their credits go back. Not collective."""
        out = []
        with self.lock:
            while self.ready and len(out) < n:
                s = self.ready.popleft()
                if (s.member, s.time_step) in self.seen:
                    self.credit_queue.extend(s.credits)
                    continue
                self.seen.add((s.member, s.time_step))
                self.credit_queue.extend(s.credits)
                out.append(s)
        return out

    def fail(self, member: int, attempt: int, drop_partial: bool) -> int:
        """Ignore (member, attempt) from now on; drop its incomplete parts (and complete ones if
        ``drop_partial``). Returns the number of complete samples dropped. Not collective."""
        with self.lock:
            self.failed.add((member, attempt))
            for conn in self.conns:
                if conn.member == member and conn.attempt == attempt and not conn.closed:
                    conn.dead = True
            for key in [k for k in self.parts if k[:2] == (member, attempt)]:
                del self.parts[key]
            n = 0
            if drop_partial:
                keep = collections.deque()
                for s in self.ready:
                    if (s.member, s.attempt) == (member, attempt):
                        n += 1
                    else:
                        keep.append(s)
                self.ready = keep
                self.seen = {k for k in self.seen if k[0] != member}
            return n

    def describe(self) -> str:
        """One line per connection (for debugging stalls). Not collective."""
        with self.lock:
            return "; ".join(f"member {c.member}/{c.attempt} recv {c.received} byes {c.byes}/{c.size} "
                             f"dead {c.dead} closed {c.closed}" for c in self.conns) + \
                f" | ready {len(self.ready)} parts {len(self.parts)} credits queued {len(self.credit_queue)} " \
                f"sends {len(self._sends)}"

    def open_connections(self) -> int:
        """Connections still open (members not finished, not failed). Not collective."""
        with self.lock:
            return sum(1 for c in self.conns if not (c.dead or c.closed or c.byes == c.size))
