"""Where ranks live: node-local split, Slurm facts (via hpcore.slurm), GPU binding by local rank, virtual nodes."""

from __future__ import annotations

import operator
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from .boundary import agree, as_comm
from .errors import HpcoreError, MismatchError, rank_prefix
from .slurm.env import SlurmInfo, env_index_list, env_int, format_tasks_per_node, parse_tasks_per_node, slurm_env

if TYPE_CHECKING:  # pragma: no cover - annotations only; importing mpi4py.MPI initializes MPI
    from mpi4py import MPI

__all__ = [
    "SlurmInfo",
    "slurm_env",
    "parse_tasks_per_node",
    "format_tasks_per_node",
    "Topology",
    "visible_gpu_count",
    "gpu_for_local_rank",
    "bind_gpu",
    "describe",
]

Source = Literal["auto", "shared", "slurm", "virtual"]
_SOURCES = ("auto", "shared", "slurm", "virtual")

# Variables that restrict which GPUs a process sees; the runtime numbers what is left 0..n-1.
_VISIBLE_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


# --------------------------------------------------------------------------- Topology


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _node_sizes(ranks_per_node, size: int) -> tuple[int, ...]:
    """Normalize ``ranks_per_node`` (an int or a list of node sizes) to node sizes summing to ``size``."""
    wrong_type = TypeError(
        f"ranks_per_node must be an int or a list of node sizes, got {type(ranks_per_node).__name__} "
        f"{ranks_per_node!r}"
    )
    if not hasattr(ranks_per_node, "__iter__"):
        if isinstance(ranks_per_node, bool) or not hasattr(ranks_per_node, "__index__"):
            raise wrong_type
        k = _positive_int("ranks_per_node", ranks_per_node)
        full, rest = divmod(size, k)
        return (k,) * full + ((rest,) if rest else ())
    if isinstance(ranks_per_node, (str, bytes, Mapping)):
        raise wrong_type
    try:
        items = list(ranks_per_node)
    except TypeError:
        raise wrong_type from None
    sizes = tuple(_positive_int(f"ranks_per_node[{i}]", v) for i, v in enumerate(items))
    if sum(sizes) != size:
        raise ValueError(
            f"ranks_per_node={list(sizes)} sums to {sum(sizes)}, but comm has {size} ranks; "
            "the node sizes must add up to comm's size"
        )
    return sizes


def _resolve(source, ranks_per_node, size: int) -> tuple[str, tuple[int, ...] | None]:
    """Check the arguments locally; return the resolved source and the virtual node sizes."""
    if not isinstance(source, str) or source not in _SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, _SOURCES))}, got {source!r}")
    if source in ("shared", "slurm"):
        if ranks_per_node is not None:
            raise ValueError(
                f"ranks_per_node={ranks_per_node!r} makes a virtual topology and cannot be combined "
                f"with source={source!r}; pass one or the other"
            )
        return source, None
    if ranks_per_node is None:
        if source == "virtual":
            raise ValueError("source='virtual' needs ranks_per_node (an int or a list of node sizes)")
        return "shared", None
    return "virtual", _node_sizes(ranks_per_node, size)


def _number_by_first_rank(keys) -> list[int]:
    """Map per-rank node keys to node indices 0.., numbered by the lowest rank on each node."""
    index: dict = {}
    return [index.setdefault(key, len(index)) for key in keys]


class Topology:
    """Which ranks of a communicator share a node, detected or virtual.

    Collective on `comm`: every rank of `comm` must construct it with the same
    `ranks_per_node` and `source`. Arguments that are wrong on some ranks, or that
    differ between ranks, raise the same ``TypeError``/``ValueError`` on every rank
    before any communicator is created.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The communicator to describe; ranks below are ranks of `comm`.
    ranks_per_node : int or sequence of int, optional
        Makes a virtual topology, so multi-node logic runs on one machine. An int
        ``k`` puts rank ``r`` on node ``r // k`` (the last node may be short); a
        sequence gives the node sizes in rank order and must sum to ``comm.size``.
    source : {"auto", "shared", "slurm", "virtual"}
        ``"shared"``: the ranks that share memory (``Split_type(COMM_TYPE_SHARED)``)
        form a node. ``"slurm"``: trust ``SLURM_NODEID``; every rank raises
        ``ValueError`` when some rank is not under Slurm. ``"virtual"``: from
        `ranks_per_node`, which is then required. ``"auto"``: ``"virtual"`` when
        `ranks_per_node` is given, else ``"shared"``.
    environ : mapping, optional
        Environment read by ``source="slurm"``; ``os.environ`` when omitted.

    Attributes
    ----------
    comm : mpi4py.MPI.Intracomm
        The communicator given (not duplicated, never freed here).
    rank, size : int
        This rank and the size of `comm`.
    source : str
        ``"shared"``, ``"slurm"`` or ``"virtual"``.
    is_virtual : bool
        True when the nodes come from `ranks_per_node`.
    node, num_nodes : int
        This rank's node index and the number of nodes. Nodes are numbered by
        the lowest `comm` rank on each, so numbering is the same on every run.
    local_rank, local_size : int
        This rank's index among the ranks of its node (in `comm` rank order) and
        their number.
    nodes : list of list of int
        The `comm` ranks of each node, ascending.
    ranks_per_node : list of int
        The number of ranks on each node.
    leaders : list of int
        The `comm` rank of local rank 0 on each node.
    node_comm : mpi4py.MPI.Intracomm
        The ranks of this node, ranked by `local_rank`. From
        ``Split_type(COMM_TYPE_SHARED)`` when detected, ``Split(color=node)`` when
        virtual or from Slurm.
    leader_comm : mpi4py.MPI.Intracomm
        One rank per node (``local_rank == 0``), ranked by node; ``MPI.COMM_NULL``
        on the other ranks.

    Notes
    -----
    `node_comm` and `leader_comm` belong to the topology: :meth:`free` (or leaving
    a ``with`` block) frees them, collectively. Nothing is freed in ``__del__``.

    Examples
    --------
    Run with ``mpiexec -n 2``:

    >>> from mpi4py import MPI
    >>> with Topology(MPI.COMM_WORLD, ranks_per_node=1) as topo:
    ...     assert topo.num_nodes == topo.size and topo.local_size == 1
    """

    def __init__(
        self,
        comm: MPI.Intracomm,
        ranks_per_node: int | list[int] | None = None,
        source: Source = "auto",
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        from mpi4py import MPI

        comm = as_comm(comm)
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.node_comm = MPI.COMM_NULL
        self.leader_comm = MPI.COMM_NULL

        # 1. Local checks, agreed so a bad argument on one rank fails everywhere.
        error = None
        resolved, sizes = None, None
        try:
            resolved, sizes = _resolve(source, ranks_per_node, self.size)
        except (TypeError, ValueError) as exc:
            error = exc

        # 2. Same arguments on every rank (compared after normalization: 2 == [2, 2] on 4 ranks).
        try:
            agree(comm, error, what="Topology", source=resolved, ranks_per_node=sizes)
        except MismatchError:
            # show the arguments as each rank wrote them (the agreement compared them normalized)
            groups: dict = {}
            for r, given in enumerate(comm.allgather((source, repr(ranks_per_node)))):
                groups.setdefault(given, []).append(r)
            detail = "; ".join(
                f"rank{'s' if len(rs) > 1 else ''} {','.join(map(str, rs))}: source={src!r}, ranks_per_node={rpn}"
                for (src, rpn), rs in groups.items()
            )
            raise ValueError(
                "Topology: source and ranks_per_node must be the same on every rank of comm, got " + detail
            ) from None

        # 3. Node index of every rank.
        node_comm = None
        if resolved == "virtual":
            node_of = [n for n, k in enumerate(sizes) for _ in range(k)]
        elif resolved == "slurm":
            node_of = _number_by_first_rank(self._gather_slurm_node_ids(comm, environ))
        else:
            node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            first = node_comm.allreduce(self.rank, op=MPI.MIN)
            node_of = _number_by_first_rank(comm.allgather(first))

        self.source = resolved
        self.is_virtual = resolved == "virtual"
        self.num_nodes = max(node_of) + 1
        self.nodes = [[] for _ in range(self.num_nodes)]
        for r, n in enumerate(node_of):
            self.nodes[n].append(r)
        self.ranks_per_node = [len(ranks) for ranks in self.nodes]
        self.leaders = [ranks[0] for ranks in self.nodes]
        self._node_of = tuple(node_of)
        self.node = node_of[self.rank]
        self.local_rank = self.nodes[self.node].index(self.rank)
        self.local_size = self.ranks_per_node[self.node]

        # 4. Communicators, created in the same order on every rank.
        if node_comm is None:
            node_comm = comm.Split(color=self.node, key=self.rank)
        self.node_comm = node_comm
        self.leader_comm = comm.Split(
            color=0 if self.local_rank == 0 else MPI.UNDEFINED, key=self.rank
        )

    @staticmethod
    def _gather_slurm_node_ids(comm, environ) -> list[int]:
        """Every rank's SLURM_NODEID, or the same ValueError on every rank. Collective on `comm`."""
        error = None
        node_id = None
        try:
            info = slurm_env(environ)
            if info is None:
                raise ValueError(
                    "source='slurm' but SLURM_JOB_ID is not set: this rank is not running under "
                    "Slurm; use source='shared' or pass ranks_per_node"
                )
            if info.node_id is None:
                raise ValueError(
                    "source='slurm' but SLURM_NODEID is not set (start the ranks with srun, or use "
                    "source='shared')"
                )
            node_id = info.node_id
        except ValueError as exc:
            error = exc
        agree(comm, error)
        return comm.allgather(node_id)

    def node_of(self, rank: int) -> int:
        """Return the node index of `comm` rank `rank`. Not collective."""
        if isinstance(rank, bool):
            raise TypeError(f"rank must be an int, got bool {rank!r}")
        rank = operator.index(rank)
        if not 0 <= rank < self.size:
            raise ValueError(f"rank must be in [0, {self.size}), got {rank}")
        return self._node_of[rank]

    def free(self) -> None:
        """Free `node_comm` and `leader_comm`; safe to call twice.

        Collective on `comm`: every rank must call it (each frees its own node's
        communicator and, on leaders, `leader_comm`). `comm` itself is not freed.
        """
        from mpi4py import MPI

        for name in ("leader_comm", "node_comm"):
            sub = getattr(self, name, MPI.COMM_NULL)
            if sub != MPI.COMM_NULL:
                sub.Free()
            setattr(self, name, MPI.COMM_NULL)

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc_info) -> None:
        self.free()

    def __repr__(self) -> str:
        return (
            f"Topology(rank={self.rank}, size={self.size}, source={self.source!r}, node={self.node}, "
            f"num_nodes={self.num_nodes}, local_rank={self.local_rank}, local_size={self.local_size})"
        )


def describe(topology: Topology) -> str:
    """Return a one-line summary of `topology` as seen from this rank.

    Not collective.

    Examples
    --------
    ``"4 ranks on 2 nodes (virtual, 2 ranks per node); rank 1 is local rank 1/2 on node 0,
    host n001"`` (one line).
    """
    t = topology
    counts = t.ranks_per_node
    if len(set(counts)) == 1:
        per_node = f"{counts[0]} rank{'s' if counts[0] != 1 else ''} per node"
    else:
        per_node = f"ranks per node {format_tasks_per_node(counts)}"
    try:
        from mpi4py import MPI

        host = MPI.Get_processor_name()
    except Exception:  # noqa: BLE001 - the host name is decoration
        host = "?"
    return (
        f"{t.size} rank{'s' if t.size != 1 else ''} on {t.num_nodes} node{'s' if t.num_nodes != 1 else ''} "
        f"({t.source}, {per_node}); rank {t.rank} is local rank {t.local_rank}/{t.local_size} "
        f"on node {t.node}, host {host}"
    )


# --------------------------------------------------------------------------- GPUs


def _count_visible(value: str) -> int:
    """Devices a ``*_VISIBLE_DEVICES`` value leaves: entries up to the first invalid one."""
    count = 0
    for item in value.split(","):
        item = item.strip()
        if item.isdigit() or item.upper().startswith(("GPU-", "MIG-")):
            count += 1
        else:  # "", "-1", "NoDevFiles" (Slurm's value when no GPU is allocated): the runtime stops here
            break
    return count


def visible_gpu_count(environ: Mapping[str, str] | None = None) -> int | None:
    """Return how many GPUs the environment says this process sees, or None if it does not say.

    Not collective. Never imports a GPU library.

    The first of these that is set decides:

    1. ``CUDA_VISIBLE_DEVICES``, ``HIP_VISIBLE_DEVICES``, ``ROCR_VISIBLE_DEVICES``:
       the entries up to the first invalid one (``""``, ``"-1"`` and Slurm's
       ``"NoDevFiles"`` mean none). When several are set, the smallest count wins
       (on AMD, HIP's list indexes into ROCR's).
    2. ``SLURM_STEP_GPUS``, then ``SLURM_JOB_GPUS``: the number of listed GPUs.
    3. ``SLURM_GPUS_ON_NODE``.

    Parameters
    ----------
    environ : mapping, optional
        The environment to read; ``os.environ`` when omitted.
    """
    env = os.environ if environ is None else environ
    counts = [_count_visible(env[name]) for name in _VISIBLE_VARS if name in env]
    if counts:
        return min(counts)
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        gpus = env_index_list(env, name)
        if gpus is not None:
            return len(gpus)
    return env_int(env, "SLURM_GPUS_ON_NODE")


def _cupy_device_count() -> int:
    try:
        import cupy
    except ImportError:
        return 0
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no driver, no device: CuPy raises several kinds
        return 0


def _nonnegative_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def gpu_for_local_rank(
    local_rank: int,
    num_gpus: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int | None:
    """Return the device index a rank with this node-local rank should use.

    Not collective.

    The index is ``local_rank % n`` over the ``n`` devices this process sees, so
    it is 0 whenever Slurm bound one GPU to each task (``--gpus-per-task=1`` with
    ``--gpu-bind``, or ``SLURM_STEP_GPUS`` listing a single GPU).

    Parameters
    ----------
    local_rank : int
        The rank's index on its node, e.g. ``Topology.local_rank``.
    num_gpus : int, optional
        Devices visible to this process. When omitted it comes from
        :func:`visible_gpu_count`, and only when the environment does not say,
        from CuPy (imported here, lazily).
    environ : mapping, optional
        The environment to read; ``os.environ`` when omitted.

    Returns
    -------
    int or None
        The device index in the process's own numbering, or None when no GPU is
        visible (no devices, or no CuPy to count them).

    Examples
    --------
    >>> gpu_for_local_rank(5, environ={"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    1
    """
    local_rank = _nonnegative_int("local_rank", local_rank)
    if num_gpus is not None:
        count = _nonnegative_int("num_gpus", num_gpus)
    else:
        count = visible_gpu_count(environ)
        if count is None:
            count = _cupy_device_count()
    if count == 0:
        return None
    return local_rank % count


def bind_gpu(
    topology: Topology,
    num_gpus: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Make the GPU chosen by :func:`gpu_for_local_rank` CuPy's current device.

    Not collective: each rank binds itself. Calls ``cupy.cuda.Device(i).use()``
    on the calling thread.

    Parameters
    ----------
    topology : Topology
        Supplies ``local_rank`` (and ``comm`` for error messages).
    num_gpus, environ
        As for :func:`gpu_for_local_rank`.

    Returns
    -------
    int
        The device index now in use.

    Raises
    ------
    ImportError
        If CuPy is not installed (``pip install hpcore[gpu]``).
    HpcoreError
        If no GPU is visible to this rank.
    """
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(
            "bind_gpu needs CuPy, which is not installed; install it with `pip install hpcore[gpu]` "
            "(or the cupy-cudaNNx / cupy-rocm wheel matching your toolkit)"
        ) from exc
    index = gpu_for_local_rank(topology.local_rank, num_gpus, environ)
    if index is None:
        env = os.environ if environ is None else environ
        seen = ", ".join(f"{n}={env[n]!r}" for n in _VISIBLE_VARS if n in env) or "no *_VISIBLE_DEVICES set"
        raise HpcoreError(
            f"{rank_prefix(getattr(topology, 'comm', None))}bind_gpu: no GPU visible to local rank "
            f"{topology.local_rank} ({seen})"
        )
    cupy.cuda.Device(index).use()
    return index
