"""Slurm's environment: the facts of one task (:func:`slurm_env`) and the network levels of ``SLURM_TOPOLOGY_ADDR``.

Pure functions of an environment mapping, except :func:`gather_topology_addrs`,
which is collective on the communicator it is given. :mod:`hpcore.topology` (nodes,
GPU binding) and :class:`comms.Hierarchy` (switch levels) read Slurm through here.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import re
from collections.abc import Mapping

__all__ = [
    "SlurmInfo",
    "slurm_env",
    "parse_tasks_per_node",
    "format_tasks_per_node",
    "gather_topology_addrs",
    "switch_depths",
    "env_int",
    "env_index_list",
]


@dataclasses.dataclass(frozen=True)
class SlurmInfo:
    """The Slurm facts of one task, read from its environment by :func:`slurm_env`.

    Not collective. Every field is ``None`` (or ``()``) when Slurm did not set the
    variable, e.g. inside ``salloc`` before ``srun`` starts a step.

    Attributes
    ----------
    job_id : str
        ``SLURM_JOB_ID`` (or the older ``SLURM_JOBID``).
    step_id : str or None
        ``SLURM_STEP_ID``.
    proc_id : int or None
        ``SLURM_PROCID``: the task's global rank in the step.
    ntasks : int or None
        ``SLURM_NTASKS`` (or ``SLURM_NPROCS``).
    node_id : int or None
        ``SLURM_NODEID``: the index of this task's node in the step, 0-based.
    local_id : int or None
        ``SLURM_LOCALID``: the task's rank among the step's tasks on its node.
    num_nodes : int or None
        ``SLURM_NNODES``, else ``SLURM_JOB_NUM_NODES``.
    tasks_per_node : tuple of int or None
        ``SLURM_STEP_TASKS_PER_NODE``, else ``SLURM_TASKS_PER_NODE``, expanded:
        ``"2(x3),1"`` becomes ``(2, 2, 2, 1)``.
    nodelist : str or None
        ``SLURM_STEP_NODELIST``, else ``SLURM_NODELIST``/``SLURM_JOB_NODELIST``, as
        written (compressed hostlist such as ``"nid[001-004]"``).
    topology_addr : tuple of str
        ``SLURM_TOPOLOGY_ADDR`` split at dots, outermost level first
        (``"s0.s3.nid001"`` -> ``("s0", "s3", "nid001")``).
    topology_addr_pattern : tuple of str
        ``SLURM_TOPOLOGY_ADDR_PATTERN`` split at dots (``("switch", "switch", "node")``).
    gpus_on_node : int or None
        ``SLURM_GPUS_ON_NODE``: GPUs of the job on this node.
    step_gpus : tuple of int or None
        ``SLURM_STEP_GPUS``: indices of the GPUs of the step (or of this task when
        Slurm bound GPUs per task) on this node.
    job_gpus : tuple of int or None
        ``SLURM_JOB_GPUS``: indices of the GPUs of the job on this node.
    """

    job_id: str
    step_id: str | None = None
    proc_id: int | None = None
    ntasks: int | None = None
    node_id: int | None = None
    local_id: int | None = None
    num_nodes: int | None = None
    tasks_per_node: tuple[int, ...] | None = None
    nodelist: str | None = None
    topology_addr: tuple[str, ...] = ()
    topology_addr_pattern: tuple[str, ...] = ()
    gpus_on_node: int | None = None
    step_gpus: tuple[int, ...] | None = None
    job_gpus: tuple[int, ...] | None = None

    @property
    def local_ntasks(self) -> int | None:
        """Tasks of the step on this task's node (from ``tasks_per_node`` and ``node_id``)."""
        if self.tasks_per_node is None or self.node_id is None:
            return None
        if not 0 <= self.node_id < len(self.tasks_per_node):
            return None
        return self.tasks_per_node[self.node_id]

    @property
    def topology_levels(self) -> tuple[tuple[str, str], ...]:
        """``(kind, name)`` per network level, outermost first, e.g. ``(("switch", "s0"), ...)``."""
        return tuple(zip(self.topology_addr_pattern, self.topology_addr))


_TASKS_ITEM = re.compile(r"^\s*(\d+)\s*(?:\(\s*x\s*(\d+)\s*\))?\s*$")


def parse_tasks_per_node(value: str) -> tuple[int, ...]:
    """Expand Slurm's compressed per-node counts.

    Not collective.

    Parameters
    ----------
    value : str
        A value such as ``SLURM_TASKS_PER_NODE``: items ``N`` or ``N(xM)`` (``N``
        repeated ``M`` times) separated by commas.

    Returns
    -------
    tuple of int
        One count per node, e.g. ``"2(x3),1"`` -> ``(2, 2, 2, 1)``.

    Raises
    ------
    ValueError
        If ``value`` does not follow that syntax.
    """
    if not isinstance(value, str):
        raise TypeError(f"tasks per node must be a str such as '2(x3),1', got {type(value).__name__}")
    counts: list[int] = []
    for item in value.split(","):
        match = _TASKS_ITEM.match(item)
        if match is None:
            raise ValueError(
                f"tasks per node {value!r}: cannot parse {item!r}; expected items like '4' or "
                "'2(x3)' separated by commas"
            )
        repeat = int(match.group(2)) if match.group(2) is not None else 1
        if repeat < 1:
            raise ValueError(f"tasks per node {value!r}: repeat count in {item.strip()!r} must be >= 1")
        counts.extend([int(match.group(1))] * repeat)
    return tuple(counts)


def format_tasks_per_node(counts) -> str:
    """Compress per-node counts the way Slurm writes them, ``[2, 2, 2, 1]`` -> ``"2(x3),1"``.

    Not collective. The inverse of :func:`parse_tasks_per_node`.
    """
    items: list[str] = []
    counts = [operator.index(c) for c in counts]
    i = 0
    while i < len(counts):
        j = i
        while j < len(counts) and counts[j] == counts[i]:
            j += 1
        items.append(str(counts[i]) if j - i == 1 else f"{counts[i]}(x{j - i})")
        i = j
    return ",".join(items)


def env_int(env: Mapping[str, str], *names: str) -> int | None:
    """The first of ``names`` set in ``env`` as an int, or None; ``ValueError`` naming it if not one. Not collective."""
    for name in names:
        value = env.get(name)
        if value is None or value.strip() == "":
            continue
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError(f"{name}={value!r} is not an integer") from None
    return None


def _env_str(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value is not None and value != "":
            return value
    return None


def _parse_index_list(name: str, value: str) -> tuple[int, ...]:
    """Parse ``"0,1,4-5"`` into ``(0, 1, 4, 5)``; ``name`` is only for the error message."""
    indices: list[int] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        first, sep, last = item.partition("-")
        try:
            if sep:
                indices.extend(range(int(first), int(last) + 1))
            else:
                indices.append(int(item))
        except ValueError:
            raise ValueError(
                f"{name}={value!r}: cannot parse {item!r}; expected GPU indices such as '0,1' or '0-3'"
            ) from None
    return tuple(indices)


def env_index_list(env: Mapping[str, str], name: str) -> tuple[int, ...] | None:
    """``env[name]`` as a tuple of indices (``"0,2-3"`` -> ``(0, 2, 3)``), or None when unset. Not collective."""
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return _parse_index_list(name, value)


def _env_levels(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    value = env.get(name)
    if not value:
        return ()
    return tuple(value.split("."))


def slurm_env(environ: Mapping[str, str] | None = None) -> SlurmInfo | None:
    """Read the Slurm facts of this task from an environment.

    Not collective: a pure function of the mapping, with no MPI calls.

    Parameters
    ----------
    environ : mapping, optional
        The environment to read; ``os.environ`` when omitted.

    Returns
    -------
    SlurmInfo or None
        ``None`` when neither ``SLURM_JOB_ID`` nor ``SLURM_JOBID`` is set (not under
        Slurm).

    Raises
    ------
    ValueError
        If a variable that must be a number or a list is malformed; the message
        names the variable and its value.

    Examples
    --------
    >>> info = slurm_env({"SLURM_JOB_ID": "42", "SLURM_TASKS_PER_NODE": "2(x3),1"})
    >>> info.tasks_per_node
    (2, 2, 2, 1)
    """
    env = os.environ if environ is None else environ
    job_id = _env_str(env, "SLURM_JOB_ID", "SLURM_JOBID")
    if job_id is None:
        return None
    tasks_name = next(
        (n for n in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE") if env.get(n)), None
    )
    tasks_per_node = None
    if tasks_name is not None:
        try:
            tasks_per_node = parse_tasks_per_node(env[tasks_name])
        except ValueError as exc:
            raise ValueError(f"{tasks_name}: {exc}") from None
    return SlurmInfo(
        job_id=job_id,
        step_id=_env_str(env, "SLURM_STEP_ID", "SLURM_STEPID"),
        proc_id=env_int(env, "SLURM_PROCID"),
        ntasks=env_int(env, "SLURM_NTASKS", "SLURM_NPROCS"),
        node_id=env_int(env, "SLURM_NODEID"),
        local_id=env_int(env, "SLURM_LOCALID"),
        num_nodes=env_int(env, "SLURM_NNODES", "SLURM_JOB_NUM_NODES"),
        tasks_per_node=tasks_per_node,
        nodelist=_env_str(env, "SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST"),
        topology_addr=_env_levels(env, "SLURM_TOPOLOGY_ADDR"),
        topology_addr_pattern=_env_levels(env, "SLURM_TOPOLOGY_ADDR_PATTERN"),
        gpus_on_node=env_int(env, "SLURM_GPUS_ON_NODE"),
        step_gpus=env_index_list(env, "SLURM_STEP_GPUS"),
        job_gpus=env_index_list(env, "SLURM_JOB_GPUS"),
    )


# --------------------------------------------------------------------------- network levels


def gather_topology_addrs(comm, environ: Mapping[str, str] | None = None, *, required: bool = False) -> list:
    """Every rank's ``SLURM_TOPOLOGY_ADDR`` as a tuple of names, outermost level first.

    Collective on ``comm`` (one agreement, one allgather). A malformed Slurm variable on
    any rank raises the same ``ValueError`` on every rank. With ``required``, every rank
    must see a switch above its node (at least two levels), else ``ValueError`` on every
    rank.
    """
    from ..boundary import agree, as_comm

    comm = as_comm(comm)
    error, addr = None, ()
    try:
        info = slurm_env(environ)
        addr = info.topology_addr if info is not None else ()
    except ValueError as exc:
        error = exc
    agree(comm, error)
    addrs = comm.allgather(tuple(addr))
    if required and any(len(a) < 2 for a in addrs):
        raise ValueError("levels: 'switch' needs SLURM_TOPOLOGY_ADDR with a switch above the node on every "
                         f"rank (got {sorted(set(addrs))[:4]}); run under srun on a cluster with a "
                         "topology plugin, or give the levels explicitly")
    return addrs


def switch_depths(addrs) -> list:
    """The switch levels in ``addrs`` (from :func:`gather_topology_addrs`), leaf switch first. Not collective.

    Each level is the length of the address prefix that names a switch: for addresses
    ``("s0", "s3", "nid001")`` the leaf switch groups ranks by the first two names
    (depth 2), the one above it by the first name (depth 1).
    """
    depth = max((len(a) for a in addrs), default=0)
    return list(range(depth - 1, 0, -1))
