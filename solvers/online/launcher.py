"""Starting, watching and retrying ensemble members (on trainer rank 0).

Two ways to start members (``study.launcher``):

- ``subprocess`` (default, survives a killed member): each member is its own
  ``mpiexec -n ranks_per_member COMMAND`` job in its own process group; it connects
  to the trainer's port (``MPI_Comm_connect``). A member whose job exits non-zero,
  runs longer than ``member_timeout_s`` or, after its first message, sends nothing
  for ``silence_timeout_s`` is killed (the whole process group) and counted failed.
- ``mpmd``: members are started with the trainer in one ``mpiexec ... : ...``
  line and pick their members themselves (:func:`mpmd_members`); no retries.

A failed member is retried with the same parameters up to ``max_retries`` times,
then its parameters are redrawn (:meth:`ParameterSampler.redraw`) and it starts
again; ``(member, attempt)`` names each try.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np

__all__ = ["Launcher", "MemberWatch", "member_environment", "mpmd_members"]

log = logging.getLogger(__name__)

EXIT_GRACE_S = 10.0  # a member that exited 0 has this long for its goodbyes to show on every trainer rank


def member_environment(port_file, member, attempt, params, study) -> dict:
    """The ``HPCORE_ONLINE_*`` variables of one member try. Not collective."""
    return {
        "HPCORE_ONLINE_SERVER": port_file,
        "HPCORE_ONLINE_MEMBER": str(member),
        "HPCORE_ONLINE_ATTEMPT": str(attempt),
        "HPCORE_ONLINE_PARAMS": ",".join(repr(float(p)) for p in params),
        "HPCORE_ONLINE_ROUTING": study.study.routing,
        "HPCORE_ONLINE_TIMEOUT_S": str(study.study.client_timeout_s),
    }


def mpmd_members(n_members: int, n_groups: int, group: int) -> list[int]:
    """Members a client group runs in an MPMD launch (group g takes g, g + G, ...). Not collective."""
    return list(range(group, n_members, n_groups))


class Launcher:
    """Member bookkeeping and (for ``subprocess``) starting and watching members.

    Not collective: lives on trainer rank 0; the trainer shares its events with
    the other ranks.
    """

    def __init__(self, study, port_file: str, sampler):
        self.study = study
        self.port_file = port_file
        self.sampler = sampler
        n = study.study.members
        design = sampler.design(n)
        n_val = study.study.validation_members
        self.validation = set(range(n - n_val, n))
        order = sorted(range(n), key=lambda m: (m not in self.validation, m))
        self.records = {m: {"params": design[m].tolist(), "attempt": 0, "tries": 0, "state": "pending",
                            "redraws": 0} for m in range(n)}
        self.queue = order
        self.running: dict = {}
        self.finished_elsewhere: set = set()  # (member, attempt) that every trainer rank saw finish
        self.failures = 0
        self.stand_ins: list = []  # stand-in connection jobs (solvers.online.stand_in), killed at shutdown
        self.mode = study.study.launcher
        self.started = time.time()
        if self.mode == "mpmd":  # members start with the trainer: all running from the start, never retried
            for rec in self.records.values():
                rec["state"], rec["tries"] = "running", 1
            self.queue = []
        os.makedirs(study.study.run_dir, exist_ok=True)

    # -- bookkeeping -----------------------------------------------------------------------------
    def state(self) -> str:
        """Member bookkeeping as JSON (for checkpoints)."""
        return json.dumps({"records": {str(k): v for k, v in self.records.items()}, "queue": self.queue,
                           "failures": self.failures, "sampler": self.sampler.state()})

    def load_state(self, text: str) -> None:
        """Restore bookkeeping; members that were running are queued again (first in line)."""
        d = json.loads(text)
        self.records = {int(k): v for k, v in d["records"].items()}
        running = [m for m, r in self.records.items() if r["state"] == "running"]
        for m in running:
            self.records[m]["state"] = "pending"
            self.records[m]["attempt"] += 1
        self.queue = running + [m for m in d["queue"] if m not in running]
        self.failures = d["failures"]
        self.sampler.load_state(d["sampler"])

    def counts(self) -> dict:
        """Members per state (pending, running, done) and the failure count."""
        c = {"pending": 0, "running": 0, "done": 0}
        for r in self.records.values():
            c[r["state"]] = c.get(r["state"], 0) + 1
        c["failed"] = self.failures
        return c

    def all_done(self) -> bool:
        """Whether every member finished."""
        return all(r["state"] == "done" for r in self.records.values())

    # -- starting and watching -------------------------------------------------------------------
    def _start(self, m: int) -> None:
        rec = self.records[m]
        rec["state"] = "running"
        rec["tries"] += 1
        s = self.study.study
        env = member_environment(self.port_file, m, rec["attempt"], rec["params"], self.study)
        if self.mode == "subprocess":
            log_path = os.path.join(s.run_dir, f"member-{m}-{rec['attempt']}.log")
            subst = {"{member}": str(m), "{attempt}": str(rec["attempt"]),
                     **{f"{{p{i}}}": repr(float(p)) for i, p in enumerate(rec["params"])}}
            cmd = [*self._mpiexec(), "-n", str(s.ranks_per_member)]
            for word in self.study.member_command():
                for k, v in subst.items():
                    word = word.replace(k, v)
                cmd.append(word)
            with open(log_path, "w") as out:
                proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            with open(os.path.join(s.run_dir, f"member-{m}-{rec['attempt']}.pid"), "w") as f:
                f.write(f"{proc.pid}\n")
            self.running[m] = {"proc": proc, "start": time.time(), "attempt": rec["attempt"]}
        log.info("member %d attempt %d started: params %s", m, rec["attempt"], np.round(rec["params"], 4).tolist())

    def _kill(self, info) -> None:
        proc = info.get("proc")
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def _fail(self, m: int, why: str) -> tuple:
        info = self.running.pop(m)
        self._kill(info)
        rec = self.records[m]
        failed = (m, info["attempt"])
        self.failures += 1
        rec["attempt"] += 1
        if rec["tries"] > self.study.study.max_retries:
            rec["params"] = self.sampler.redraw().tolist()
            rec["redraws"] += 1
            rec["tries"] = 0
            why += f"; {self.study.study.max_retries} retries spent, parameters redrawn"
        rec["state"] = "pending"
        self.queue.insert(0, m)
        log.warning("member %d attempt %d failed (%s)", m, failed[1], why)
        return failed

    def poll(self, last_seen: dict, finished: set) -> list:
        """Check running members, start new ones; returns the ``(member, attempt)`` that failed.

        ``last_seen``: ``(member, attempt)`` -> latest wall time any trainer rank heard from it;
        ``finished``: ``(member, attempt)`` every trainer rank saw say goodbye. Raises
        RuntimeError when more than ``study.max_failures`` tries have failed (0: no limit).
        """
        failed = []
        now = time.time()
        s = self.study.study
        if self.mode == "mpmd":
            for m, rec in self.records.items():
                if rec["state"] == "running" and (m, 0) in finished:
                    rec["state"] = "done"
            late = [m for m, r in self.records.items() if r["state"] == "running"]
            if late and now - self.started > s.member_timeout_s:
                raise TimeoutError(f"members {late} of an MPMD launch did not finish within "
                                   f"member_timeout_s={s.member_timeout_s} (no retries in MPMD)")
            return failed
        for m, info in list(self.running.items()):
            if self.mode == "subprocess":
                rc = info["proc"].poll()
                if rc is not None:
                    if rc == 0 and (m, info["attempt"]) in finished:
                        self.running.pop(m)
                        self.records[m]["state"] = "done"
                    elif rc == 0:  # the goodbyes may reach the trainer ranks a moment after the exit
                        info.setdefault("exited", now)
                        if now - info["exited"] > EXIT_GRACE_S:
                            failed.append(self._fail(m, "exit code 0 without finalize: not every trainer rank "
                                                        "got its goodbye"))
                    else:
                        failed.append(self._fail(m, f"exit code {rc}"))
                    continue
            # silence counts from the first message of this try: start-up may be slow
            seen = last_seen.get((m, info["attempt"]), 0.0)
            if now - info["start"] > s.member_timeout_s:
                failed.append(self._fail(m, f"ran longer than member_timeout_s={s.member_timeout_s}"))
            elif seen > info["start"] and now - seen > s.silence_timeout_s:
                failed.append(self._fail(m, f"silent for silence_timeout_s={s.silence_timeout_s}"))
        if s.max_failures and self.failures > s.max_failures:
            raise RuntimeError(f"{self.failures} member tries failed, more than study.max_failures="
                               f"{s.max_failures}: the member command is likely broken (see the member-*.log "
                               f"files in {s.run_dir})")
        while self.queue and len(self.running) < s.concurrency:
            self._start(self.queue.pop(0))
        for proc in self.stand_ins:
            proc.poll()  # reap stand-ins that have ended
        return failed

    def _mpiexec(self) -> list[str]:
        here = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # the MPI beside this Python
        return shlex.split(self.study.study.mpiexec.replace("{mpiexec}", here if os.path.exists(here) else "mpiexec"))

    def start_stand_in(self) -> None:
        """Start a one-rank stand-in connection job (releases an accept whose member died)."""
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stand_in.py")
        path = os.path.join(self.study.study.run_dir, f"stand-in-{len(self.stand_ins)}.log")
        with open(path, "w") as out:
            proc = subprocess.Popen([*self._mpiexec(), "-n", "1", sys.executable, script, self.port_file],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.stand_ins.append(proc)

    def kill_member(self, member: int, attempt: int) -> None:
        """Kill the running job of try (member, attempt), if that try is the one running (its
        bookkeeping is left to :meth:`connect_failed`)."""
        info = self.running.get(member)
        if info is not None and info["attempt"] == attempt:
            self._kill(info)

    def connect_failed(self, member: int, attempt: int) -> list:
        """(member, attempt) did not connect: fail it (retried as any failure). Returns the failed
        ``(member, attempt)`` pairs (empty when that try had already ended). MPMD: raises TimeoutError."""
        if self.mode == "mpmd":
            raise TimeoutError(f"member {member} of an MPMD launch did not connect within "
                               f"connect_timeout_s={self.study.study.connect_timeout_s} (no retries in MPMD)")
        info = self.running.get(member)
        if info is None or info["attempt"] != attempt:
            return []
        return [self._fail(member, f"did not connect within connect_timeout_s={self.study.study.connect_timeout_s}"
                                   " or died while connecting")]

    def is_running(self, member: int, attempt: int) -> bool:
        """Whether (member, attempt) is the live try of a running member (MPMD: always)."""
        if self.mode == "mpmd":
            return True
        info = self.running.get(member)
        return info is not None and info["attempt"] == attempt and info["proc"].poll() is None

    def shutdown(self) -> None:
        """Kill every running member and stand-in job (end of training)."""
        for m in list(self.running):
            self._kill(self.running.pop(m))
        for proc in self.stand_ins:
            self._kill({"proc": proc})


class MemberWatch:
    """What :meth:`Receiver.accept <solvers.online.server.Receiver.accept>`'s watchdog needs on trainer
    rank 0: whether the member try is alive, and how to rescue the accept (kill it, start a stand-in).
    Called from the watchdog thread; makes no MPI calls."""

    def __init__(self, launcher: Launcher, member: int, attempt: int):
        self.launcher, self.member, self.attempt = launcher, member, attempt

    def alive(self) -> bool:
        """Whether the member try still runs (MPMD: assumed)."""
        return self.launcher.is_running(self.member, self.attempt)

    def rescue(self) -> None:
        """Kill the member's job and start a stand-in connection in its place."""
        self.launcher.kill_member(self.member, self.attempt)
        self.launcher.start_stand_in()

    def abandon(self) -> None:
        """Kill every member and stand-in (the trainer is about to exit without its cleanup)."""
        self.launcher.shutdown()
