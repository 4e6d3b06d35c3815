"""A throw-away single-host Slurm for tests: munged, slurmctld and two slurmd daemons emulating two nodes.

Used by ``tests/test_slurm.py`` as a session fixture, and by hand::

    python tests/slurm_cluster.py up /tmp/myslurm     # prints the SLURM_CONF to export, keeps running
    python tests/slurm_cluster.py down /tmp/myslurm   # stops the daemons by their PIDs

Everything lives under one directory (configuration, munge key and socket, state,
spool, logs, one TmpFS per node); nothing under ``/etc`` is read or written, and
the ports are picked free so that several clusters can run on one host at once.
The Debian packages are installed with apt-get when missing and the caller is
root (:func:`ensure_installed`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = [
    "PACKAGES",
    "missing_programs",
    "ensure_installed",
    "clean_environ",
    "SlurmCluster",
    "JobResult",
    "SlurmError",
]

# libpmix-dev first: it provides the unversioned libpmix.so that slurmd's mpi/pmix plugin dlopens.
PACKAGES = (("libpmix-dev",), ("slurmctld", "slurmd", "slurm-client", "munge"))
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "srun")
PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/aarch64-linux-gnu/slurm-wlm", "/usr/lib64/slurm",
               "/usr/lib/slurm")

# Variables that must not leak from the test process into jobs: a PMI/launcher context
# (when pytest itself runs under mpiexec or srun) would make the job's ranks join it.
_LEAKY = re.compile(r"^(SLURM_|SLURMD_|SBATCH_|SRUN_|SALLOC_|PMI_|PMIX_|PMI2_|HYDRA_|HYDI_|MPIR_CVAR_CH4_ROOTS|"
                    r"MPI_LOCALRANKID|MPI_LOCALNRANKS|OMPI_|PRTE_|UCX_)")


class SlurmError(RuntimeError):
    """A Slurm daemon or command failed; the message holds the command, its output and log tails."""


def missing_programs() -> list[str]:
    """Programs of :data:`PROGRAMS` not on ``PATH`` (``/usr/sbin`` included)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [p for p in PROGRAMS if shutil.which(p, path=path) is None]


def _libpmix_present() -> bool:
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        if os.path.exists(os.path.join(d, "libpmix.so")):
            return True
    return False


def ensure_installed(timeout_s: float = 600) -> str | None:
    """Install Slurm, munge and libpmix-dev from the distribution when missing.

    Returns None when everything is there (installed now or before), else the
    reason it cannot be, for ``pytest.skip``: not root, no apt-get, or apt failed.
    apt's lock is waited for (up to `timeout_s`), since other installs may run.
    """
    missing = missing_programs()
    if not missing and _libpmix_present():
        return None
    what = ", ".join(missing + ([] if _libpmix_present() else ["libpmix.so"]))
    if os.geteuid() != 0:
        return f"Slurm is not installed ({what} missing) and installing it needs root"
    apt = shutil.which("apt-get")
    if apt is None:
        return f"Slurm is not installed ({what} missing) and there is no apt-get to install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    deadline = time.monotonic() + timeout_s
    for group in PACKAGES:
        cmd = [apt, "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "--no-install-recommends", *group]
        for attempt in range(2):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=max(deadline - time.monotonic(), 1))
            if proc.returncode == 0:
                break
            if attempt == 0:  # stale or missing package lists (a fresh machine): update once, retry
                subprocess.run([apt, "-o", "DPkg::Lock::Timeout=300", "update", "-q"], env=env,
                               capture_output=True, timeout=max(deadline - time.monotonic(), 1))
                continue
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            return f"apt-get install {' '.join(group)} failed (rc {proc.returncode}): " + " | ".join(tail)
    missing = missing_programs()
    if missing:
        return f"installed {PACKAGES} but still missing {', '.join(missing)}"
    return None


def clean_environ(base: dict | None = None) -> dict:
    """A copy of the environment without Slurm, PMI and launcher variables of the caller."""
    env = dict(os.environ if base is None else base)
    for key in [k for k in env if _LEAKY.match(k)]:
        del env[key]
    return env


def _free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} not readable)"
    return "\n".join(text[-lines:])


@dataclasses.dataclass(frozen=True)
class JobResult:
    """The end of a batch job: its final state (``COMPLETED``, ``FAILED``, ...) and exit code."""

    job_id: str
    state: str
    exit_code: int
    signal: int
    info: str

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == 0


class SlurmCluster:
    """A Slurm cluster of `num_nodes` emulated nodes on this host, all under `root`.

    Parameters
    ----------
    root : path
        An empty directory for configuration, state, spool and logs (the munge
        socket goes to a directory of its own in /tmp, removed by :meth:`stop`).
    num_nodes : int
        slurmd daemons, one per emulated node ``n1``, ``n2``, ... on distinct ports.
    cpus_per_node : int
        CPUs each node advertises (``SlurmdParameters=config_overrides`` lets this
        exceed the real cores).
    gpus_per_node : int
        Emulated GPUs per node (``Gres=gpu:G`` over character devices made with
        mknod, so that ``--gpus-per-task`` and ``--gpu-bind`` allocate and set
        ``CUDA_VISIBLE_DEVICES``; there is no GPU behind them). Set to 0, with the
        reason in ``gpu_note``, where mknod is not permitted.
    """

    def __init__(self, root, num_nodes: int = 2, cpus_per_node: int = 4, gpus_per_node: int = 2):
        self.root = Path(root).resolve()
        self.num_nodes = num_nodes
        self.cpus_per_node = cpus_per_node
        self.gpus_per_node = gpus_per_node
        self.node_names = [f"n{i + 1}" for i in range(num_nodes)]
        self.conf = self.root / "etc" / "slurm.conf"
        self._socket_dir: Path | None = None  # made in start(): see there
        self.munge_socket = self.root / "munge.socket"  # replaced in start()
        self.logs = self.root / "log"
        self._procs: dict[str, subprocess.Popen] = {}
        self.bin_dir = os.path.dirname(sys.executable)
        self.started_s: float | None = None
        self.gpu_note = ""

    # ------------------------------------------------------------------ environment

    def environ(self, extra: dict | None = None) -> dict:
        """Environment for Slurm commands and jobs: this cluster's SLURM_CONF, this Python first on PATH.

        Jobs inherit it (``sbatch`` exports the submitting environment), so ``python``
        and ``mpiexec`` in a job are the ones of the interpreter running the tests.
        """
        env = clean_environ()
        path = env.get("PATH", "")
        env["PATH"] = os.pathsep.join([self.bin_dir, path, "/usr/sbin", "/sbin"])
        env["SLURM_CONF"] = str(self.conf)
        env.pop("PYTHONUNBUFFERED", None)  # see README: unbuffered writes from ranks can splice lines
        if extra:
            env.update(extra)
        return env

    # ------------------------------------------------------------------ configuration

    def _write_config(self) -> None:
        for sub in ("etc", "munge-key", "state", "log", "run", "dev"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge-key", 0o700)  # munged wants its key private
        ctld_port, *node_ports = _free_ports(1 + self.num_nodes)
        host = socket.gethostname().split(".")[0]
        # Emulated GPUs: device nodes without a GPU behind; Slurm allocates them and sets CUDA_VISIBLE_DEVICES.
        gres_lines = []
        for name in self.node_names:
            (self.root / "spool" / name).mkdir(parents=True, exist_ok=True)
            (self.root / "tmpfs" / name).mkdir(parents=True, exist_ok=True)
            if self.gpus_per_node:
                files = []
                for g in range(self.gpus_per_node):
                    f = self.root / "dev" / f"{name}-gpu{g}"
                    if not f.exists():  # a character device like /dev/null: gres/gpu accepts nothing else
                        try:
                            os.mknod(f, stat.S_IFCHR | 0o666, os.makedev(1, 3))
                        except OSError as exc:
                            self.gpu_note = f"no emulated GPUs: mknod {f} failed ({exc})"
                            self.gpus_per_node = 0
                            gres_lines = []
                            break
                    files.append(str(f))
                if self.gpus_per_node:
                    gres_lines.append(f"NodeName={name} Name=gpu Type=emulated File={','.join(files)}")
        (self.root / "etc" / "gres.conf").write_text("AutoDetect=off\n" + "\n".join(gres_lines) + "\n")
        (self.root / "etc" / "plugstack.conf").write_text("")
        plugin_dir = next((d for d in PLUGIN_DIRS if os.path.isdir(d)), None)
        lines = [
            f"ClusterName=hpcore{os.getpid()}",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={node_ports[0]}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool' / '%n'}",
            f"SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'run' / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.logs / 'slurmctld.log'}",
            f"SlurmdLogFile={self.logs / 'slurmd-%n.log'}",
            f"TmpFS={self.root / 'tmpfs' / '%n'}",
            f"PlugStackConfig={self.root / 'etc' / 'plugstack.conf'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",
            "EnforcePartLimits=ALL",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/builtin",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=600",
            "MessageTimeout=20",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
        ]
        if plugin_dir:
            lines.append(f"PluginDir={plugin_dir}")
        if self.gpus_per_node:
            lines.append("GresTypes=gpu")
        gres = f" Gres=gpu:emulated:{self.gpus_per_node}" if self.gpus_per_node else ""
        for name, port in zip(self.node_names, node_ports):
            lines.append(
                f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
                f"CPUs={self.cpus_per_node} RealMemory=1000 TmpDisk=100{gres} State=UNKNOWN"
            )
        nodes = f"n[1-{self.num_nodes}]" if self.num_nodes > 1 else "n1"
        lines.append(f"PartitionName=debug Nodes={nodes} Default=YES MaxTime=30 State=UP OverSubscribe=NO")
        self.conf.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ daemons

    def _spawn(self, name: str, cmd: list[str], ready, timeout_s: float) -> None:
        """Start a daemon in the foreground (our child, in its own session); wait until ``ready()``."""
        log = self.logs / f"{name}.out"
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.environ(), cwd=self.root, start_new_session=True)
        self._procs[name] = proc
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if ready():
                return
            time.sleep(0.02)
        raise SlurmError(
            f"{name} did not start ({' '.join(cmd)} -> "
            f"{'rc ' + str(proc.returncode) if proc.returncode is not None else 'not ready in time'}):\n"
            f"{_tail(log)}\n{_tail(self.logs / (name + '.log'))}"
        )

    def start(self, timeout_s: float = 60, attempts: int = 2) -> None:
        """Write the configuration and start munged, slurmctld and the slurmd daemons; wait until idle.

        The ports are picked free just before; should another process take one first,
        the daemons are stopped and started again on new ports (`attempts` in all).
        """
        t0 = time.monotonic()
        for attempt in range(attempts):
            try:
                self._start_once(timeout_s)
                break
            except SlurmError:
                self.stop()
                if attempt == attempts - 1:
                    raise
        self.started_s = time.monotonic() - t0

    def _start_once(self, timeout_s: float) -> None:
        t0 = time.monotonic()
        # munged wants every directory above its socket searchable by all (pytest's are 0700) and
        # the path short (sockets: 108 bytes), so the socket lives in its own directory in /tmp.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="hpcore-munge-", dir="/tmp"))
        os.chmod(self._socket_dir, 0o755)
        self.munge_socket = self._socket_dir / "munge.socket"
        self._write_config()
        key = self.root / "munge-key" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o400)
        try:
            self._spawn("munged", [
                "munged", "--foreground", f"--socket={self.munge_socket}", f"--key-file={key}",
                f"--pid-file={self.root / 'run' / 'munged.pid'}", f"--log-file={self.logs / 'munged.log'}",
                f"--seed-file={self.root / 'munge-key' / 'munged.seed'}", "--num-threads=4",
            ], self.munge_socket.exists, timeout_s)
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)], self._controller_up, timeout_s)
            for name in self.node_names:
                pidfile = self.root / "run" / f"slurmd-{name}.pid"
                pidfile.unlink(missing_ok=True)  # a stale one from an earlier attempt would read as ready
                self._spawn(f"slurmd-{name}", ["slurmd", "-D", "-f", str(self.conf), "-N", name],
                            pidfile.exists, timeout_s)
            self.wait_idle(timeout_s=max(timeout_s - (time.monotonic() - t0), 5))
        except BaseException:
            self.stop()
            raise

    def _controller_up(self) -> bool:
        return self.command(["scontrol", "ping"], check=False, timeout_s=10).returncode == 0

    def wait_idle(self, timeout_s: float = 60) -> None:
        """Wait until every node is up (idle, or allocated/mixed by a job)."""
        deadline = time.monotonic() + timeout_s
        states = ""
        while time.monotonic() < deadline:
            proc = self.command(["sinfo", "-h", "-N", "-o", "%N %T"], check=False)
            states = proc.stdout.strip()
            good = [line for line in states.splitlines()
                    if line.split()[-1].rstrip("*~#$@+") in ("idle", "mixed", "allocated")]
            if len(good) == self.num_nodes:
                return
            time.sleep(0.2)
        raise SlurmError(f"nodes not up after {timeout_s:.0f} s: {states!r}\n{self.log_tails()}")

    @property
    def pids(self) -> dict[str, int]:
        """PIDs of the daemons this object started and that still run, by name."""
        return {name: p.pid for name, p in self._procs.items() if p.poll() is None}

    def stop(self, timeout_s: float = 20) -> None:
        """Stop the daemons this object started (slurmd, slurmctld, munged), by PID; safe to call twice."""
        order = [n for n in self._procs if n.startswith("slurmd-")] + ["slurmctld", "munged"]
        for name in order:
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            _terminate(proc.pid, timeout_s)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        if self._socket_dir is not None and not self._procs:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def log_tails(self) -> str:
        parts = []
        for path in sorted(self.logs.glob("*")):
            parts.append(f"--- {path.name}\n{_tail(path)}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ commands and jobs

    def command(self, args: list[str], check: bool = True, timeout_s: float = 60,
                env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        proc = subprocess.run(args, capture_output=True, text=True, env=env or self.environ(),
                              timeout=timeout_s, cwd=cwd)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(args)} failed (rc {proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def sbatch(self, script, *options: str, cwd=None, env: dict | None = None) -> str:
        """Submit `script` with ``sbatch --parsable``; return the job id (without a cluster suffix)."""
        proc = self.command(["sbatch", "--parsable", *options, str(script)], cwd=cwd, env=env)
        return proc.stdout.strip().split(";")[0]

    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (for an array, the first element's record)."""
        proc = self.command(["scontrol", "-o", "show", "job", job_id], check=False)
        if proc.returncode != 0:
            return {}
        fields = {}
        for item in proc.stdout.splitlines()[0].split():
            key, sep, value = item.partition("=")
            if sep:
                fields[key] = value
        return fields

    def wait(self, job_id: str, timeout_s: float = 120) -> list[JobResult]:
        """Poll ``squeue`` until job `job_id` (every element of an array) has left the queue.

        Returns one :class:`JobResult` per job record (one, or one per array task),
        read from ``scontrol show job``. Raises ``SlurmError`` (after cancelling the
        job) when it is still queued or running after `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            proc = self.command(["squeue", "-h", "-j", job_id, "-o", "%i %T"], check=False)
            active = [line for line in proc.stdout.splitlines() if line.strip()]
            if proc.returncode == 0 and not active:
                break
            if proc.returncode != 0 and "Invalid job id" in proc.stderr:
                break
            if time.monotonic() > deadline:
                self.command(["scancel", job_id], check=False)
                info = self.job_info(job_id)
                raise SlurmError(
                    f"job {job_id} still {active or proc.stderr.strip()} after {timeout_s:.0f} s "
                    f"(reason {info.get('Reason')!r}); cancelled\n{self.log_tails()}"
                )
            time.sleep(0.25)
        proc = self.command(["scontrol", "-o", "show", "job", job_id], check=False)
        results = []
        for line in proc.stdout.splitlines():
            fields = dict(item.partition("=")[::2] for item in line.split() if "=" in item)
            if not fields:
                continue
            code, _, sig = fields.get("ExitCode", "0:0").partition(":")
            jid = fields.get("JobId", job_id)
            if fields.get("ArrayTaskId"):
                jid = f"{fields.get('ArrayJobId', job_id)}_{fields['ArrayTaskId']}"
            results.append(JobResult(jid, fields.get("JobState", "?"), int(code or 0), int(sig or 0),
                                     fields.get("Reason", "")))
        if not results:
            raise SlurmError(f"job {job_id} left the queue but scontrol has no record of it")
        return sorted(results, key=lambda r: r.job_id)

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _terminate(pid: int, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("root", help="directory for the cluster (created)")
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args(argv)
    root = Path(args.root)
    if args.action == "up":
        reason = ensure_installed()
        if reason:
            print(f"cannot bring Slurm up: {reason}", file=sys.stderr)
            return 1
        root.mkdir(parents=True, exist_ok=True)
        cluster = SlurmCluster(root, num_nodes=args.nodes)
        cluster.start()
        (root / "run" / "pids").write_text("\n".join(f"{k} {v}" for k, v in cluster.pids.items()) + "\n")
        print(f"Slurm up in {cluster.started_s:.1f} s; export SLURM_CONF={cluster.conf}")
        return 0
    pids = dict(line.split() for line in (root / "run" / "pids").read_text().splitlines())
    for name in sorted(pids, key=lambda n: (not n.startswith("slurmd"), n != "slurmctld")):
        _terminate(int(pids[name]), 20)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
