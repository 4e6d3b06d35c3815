"""The CLI's guard against hangs: phase agreement with a deadline, MPI_Abort as the last resort.

Every phase of ``python -m solvers.flux_transport`` (configuration, output
directory, restart check, set-up, run) ends in :meth:`Guard.settle`: one
non-blocking allreduce of a failure flag on the guard's own communicator (a
duplicate of the world, so it never pairs with the solver's collectives). When
every rank failed at the same point (an error the solver already agreed on,
or a bad configuration that every rank sees) the failing ranks' messages are
gathered, rank 0 prints them once and every rank exits with the same status.
When only some ranks failed, the others are still inside the solver's
collectives and never reach the allreduce: after ``deadline_s`` seconds the
failing rank prints its message (file or key named by the exception) and calls
``MPI_Abort``, which ends the whole job. SIGINT and SIGTERM raise
``KeyboardInterrupt`` on the rank that receives them and take the same path;
:func:`install_excepthook` aborts on anything that escapes ``main``.

Test-only fault injection: ``HPCORE_TEST_FAULT=KIND@rankR@WHEN`` with KIND one of
``memoryerror``, ``enospc`` (OSError "No space left on device"), ``sigint``
(the rank signals itself), ``valueerror``, and WHEN ``stepN`` (after step N of
the run) or ``phase:NAME`` (at the start of a phase: ``config``, ``output``,
``restart``, ``setup``, ``preflight``, ``run``). Several faults are separated by
commas. It exists for ``tests/test_flux_cli_mpi.py`` and is not for users.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
import traceback

import numpy as np

__all__ = ["FaultHook", "Guard", "PhaseError", "exit_status", "install_excepthook"]

DEADLINE_ENV = "FLUX_TRANSPORT_ABORT_AFTER_S"
ABORT_GRACE_S = 0.5  # seconds between printing a rank's error and MPI_Abort
FAULT_ENV = "HPCORE_TEST_FAULT"


class PhaseError(Exception):
    """Every rank failed the same phase (raised on every rank, the same ``message`` and ``status``)."""

    def __init__(self, phase: str, message: str, status: int):
        super().__init__(message)
        self.phase = phase
        self.message = message
        self.status = status


def exit_status(exc: BaseException) -> int:
    """2 for a refused configuration or input (ValueError, TypeError, KeyError), 130 for an interrupt, else 1."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return 2
    return 1


def describe(exc: BaseException) -> str:
    """One line: the message, with the type where the message alone would not say what happened."""
    text = str(exc).strip()
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT/SIGTERM)"
    if isinstance(exc, MemoryError):
        return f"out of memory (MemoryError{': ' + text if text else ''})"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or text}: {exc.filename!r}"
    if isinstance(exc, KeyError):
        return f"missing {text}"
    if not text or type(exc).__name__ not in ("ConfigError", "MapFileError", "ValueError"):
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


class Guard:
    """Phase agreement for the CLI. Collective on ``comm`` to build (duplicates it).

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The job's communicator (the world).
    deadline_s : float, optional
        How long a failing rank waits for the others before ``MPI_Abort``
        (default: ``$FLUX_TRANSPORT_ABORT_AFTER_S`` or 5 s).
    """

    def __init__(self, comm, deadline_s=None):
        self.world = comm
        self.comm = comm.Dup()
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        if deadline_s is None:
            deadline_s = float(os.environ.get(DEADLINE_ENV, "5"))
        self.deadline_s = float(deadline_s)
        self.faults = FaultHook.from_env(self.rank)
        self._old_handlers: dict = {}

    # ------------------------------------------------------------------ signals
    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM raise ``KeyboardInterrupt`` on this rank. Not collective."""

        def handler(signum, frame):
            raise KeyboardInterrupt(signal.Signals(signum).name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # not the main thread
                pass

    def restore_signal_handlers(self) -> None:
        """Put back the handlers :meth:`install_signal_handlers` replaced. Not collective."""
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

    # ------------------------------------------------------------------ agreement
    def settle(self, phase: str, error) -> None:
        """End of ``phase``: return if no rank failed, else raise :class:`PhaseError` on every rank.

        Collective on the guard's communicator. A rank passing ``error`` waits at
        most ``deadline_s`` for the others; if they do not come (they are inside
        the solver's collectives), it prints its message and aborts the job.
        """
        flag = np.array([0 if error is None else 1], dtype=np.int64)
        total = np.zeros(1, dtype=np.int64)
        if self.size == 1:
            total[:] = flag
        else:
            from mpi4py import MPI

            req = self.comm.Iallreduce(flag, total, op=MPI.SUM)
            start = time.monotonic()
            pause = 1e-4
            try:
                while not req.Test():
                    if error is not None and time.monotonic() - start > self.deadline_s:
                        self.abort(phase, error, note=f"the other ranks did not reach the end of the {phase} "
                                                      f"phase within {self.deadline_s:g} s")
                    time.sleep(pause)
                    pause = min(2 * pause, 0.02)
            except KeyboardInterrupt as exc:
                self.abort(phase, error if error is not None else exc)
        if int(total[0]) == 0:
            return
        mine = None if error is None else (self.rank, exit_status(error), describe(error))
        failures = [f for f in self.comm.allgather(mine) if f is not None] if self.size > 1 else [mine]
        status = failures[0][1]
        same = len({f[2] for f in failures}) == 1
        if same and len(failures) == self.size:
            message = failures[0][2]
        else:
            message = "; ".join(f"rank {r}: {m}" for r, _, m in failures)
        raise PhaseError(phase, message, status)

    def run_phase(self, phase: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` then :meth:`settle`; returns its result. Collective (see settle)."""
        error = None
        result = None
        try:
            self.faults.fire(f"phase:{phase}")
            result = fn(*args, **kwargs)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every local error is agreed on
            error = exc
            if os.environ.get("FLUX_TRANSPORT_DEBUG", "") not in ("", "0"):
                traceback.print_exc()
        self.settle(phase, error)
        return result

    def abort(self, phase: str, error: BaseException, note: str = ""):
        """Print this rank's message and ``MPI_Abort`` the job (never returns)."""
        status = exit_status(error)
        tail = f" ({note})" if note else ""
        try:
            print(f"flux_transport: rank {self.rank} of {self.size}: {phase} failed: {describe(error)}{tail}; "
                  "aborting the job", file=sys.stderr, flush=True)
            # let the launcher forward the line before MPI_Abort tears the job down (under load hydra
            # was seen to drop it)
            time.sleep(ABORT_GRACE_S)
        finally:
            self.world.Abort(status)
        os._exit(status)  # pragma: no cover - Abort does not return

    def free(self) -> None:
        """Restore the signal handlers and free the guard's communicator. Collective on ``comm``."""
        self.restore_signal_handlers()
        if self.comm is not None:
            self.comm.Free()
            self.comm = None


def install_excepthook(comm) -> None:
    """Anything that escapes the CLI on a rank of a multi-rank job aborts the job after printing. Not collective."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        if comm.Get_size() > 1:
            sys.stderr.flush()
            time.sleep(ABORT_GRACE_S)
            comm.Abort(exit_status(value) if isinstance(value, BaseException) else 1)

    sys.excepthook = hook


class FaultHook:
    """Faults injected by ``$HPCORE_TEST_FAULT`` on this rank (test-only; see the module docstring)."""

    KINDS = ("memoryerror", "enospc", "sigint", "valueerror")

    def __init__(self, faults: list):
        self.faults = faults  # [(kind, when)]

    @classmethod
    def from_env(cls, rank: int) -> FaultHook:
        """The faults ``$HPCORE_TEST_FAULT`` sets for ``rank`` (ValueError on a malformed value)."""
        text = os.environ.get(FAULT_ENV, "").strip()
        faults = []
        for item in filter(None, (t.strip() for t in text.split(","))):
            parts = item.split("@")
            if len(parts) != 3 or parts[0] not in cls.KINDS or not parts[1].startswith("rank"):
                raise ValueError(f"{FAULT_ENV}: expected KIND@rankR@stepN or KIND@rankR@phase:NAME with KIND in "
                                 f"{cls.KINDS}, got {item!r}")
            if int(parts[1][4:]) == rank:
                faults.append((parts[0], parts[2]))
        return cls(faults)

    def fire(self, when: str) -> None:
        """Raise (or signal) the fault set for ``when`` (``"stepN"`` or ``"phase:NAME"``), if any."""
        for kind, at in self.faults:
            if at == when:
                if kind == "memoryerror":
                    raise MemoryError(f"test fault ({FAULT_ENV}) at {when}")
                if kind == "enospc":
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<test fault at {when}>")
                if kind == "valueerror":
                    raise ValueError(f"test fault ({FAULT_ENV}) at {when}")
                if kind == "sigint":
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(1.0)  # the handler raises KeyboardInterrupt here

    def step_callback(self, model) -> None:
        """``FluxTransport.run`` callback: fire the fault of the step just taken."""
        self.fire(f"step{model.steps}")

    def __bool__(self) -> bool:
        return bool(self.faults)
