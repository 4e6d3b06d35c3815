"""MPI tests of hpcore.topology: detected, virtual and Slurm topologies on several communicators."""

import os
import sys
import types

import pytest
from mpi4py import MPI

from hpcore.topology import Topology, bind_gpu, describe, format_tasks_per_node

# method="thread": a rank stuck inside a blocking MPI call never returns to Python, so the
# default SIGALRM method cannot fire; the thread method exits the process and mpiexec ends the job.
pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(60, method="thread")]


@pytest.fixture(params=["world-dup", "split-reversed"])
def comm(request):
    """A communicator of our own: a dup of COMM_WORLD, or halves of it ranked backwards."""
    world = MPI.COMM_WORLD
    if request.param == "world-dup":
        sub = world.Dup()
    else:
        sub = world.Split(color=world.Get_rank() % 2, key=-world.Get_rank())
    yield sub
    sub.Free()


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SLURM_") or name.endswith("_VISIBLE_DEVICES"):
            monkeypatch.delenv(name)


def nodes_from_sizes(sizes):
    nodes, start = [], 0
    for k in sizes:
        nodes.append(list(range(start, start + k)))
        start += k
    return nodes


def check_topology(topo, nodes):
    """Check every attribute of `topo` against the expected `nodes`; collectives first, asserts after."""
    comm = topo.comm
    node_members = topo.node_comm.allgather(comm.Get_rank())
    leader_members = None
    if topo.leader_comm != MPI.COMM_NULL:
        leader_members = topo.leader_comm.allgather(comm.Get_rank())

    rank = comm.Get_rank()
    node = next(i for i, ranks in enumerate(nodes) if rank in ranks)
    assert (topo.rank, topo.size) == (rank, comm.Get_size())
    assert topo.nodes == nodes
    assert topo.num_nodes == len(nodes)
    assert topo.ranks_per_node == [len(ranks) for ranks in nodes]
    assert topo.leaders == [ranks[0] for ranks in nodes]
    assert topo.node == node and topo.node_of(rank) == node
    assert topo.local_rank == nodes[node].index(rank)
    assert topo.local_size == len(nodes[node])
    assert (topo.node_comm.Get_rank(), topo.node_comm.Get_size()) == (topo.local_rank, topo.local_size)
    assert node_members == nodes[node]
    if topo.local_rank == 0:
        assert (topo.leader_comm.Get_rank(), topo.leader_comm.Get_size()) == (node, len(nodes))
        assert leader_members == topo.leaders
    else:
        assert topo.leader_comm == MPI.COMM_NULL


def test_detected_world_is_one_node():
    world = MPI.COMM_WORLD
    with Topology(world) as topo:
        assert topo.source == "shared" and not topo.is_virtual
        check_topology(topo, [list(range(world.Get_size()))])
    assert topo.node_comm == MPI.COMM_NULL


def test_detected_on_own_comm(comm):
    with Topology(comm, source="shared") as topo:
        assert topo.comm is comm
        check_topology(topo, [list(range(comm.Get_size()))])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_virtual_ranks_per_node(comm, k):
    size = comm.Get_size()
    sizes = [k] * (size // k) + ([size % k] if size % k else [])
    with Topology(comm, ranks_per_node=k) as topo:
        assert topo.source == "virtual" and topo.is_virtual
        check_topology(topo, nodes_from_sizes(sizes))


def test_virtual_two_per_node_on_world():
    world = MPI.COMM_WORLD
    size = world.Get_size()
    with Topology(world, ranks_per_node=2) as topo:
        assert topo.num_nodes == (size + 1) // 2
        assert topo.node == world.Get_rank() // 2
        assert topo.local_rank == world.Get_rank() % 2
        check_topology(topo, nodes_from_sizes([2] * (size // 2) + [1] * (size % 2)))


@pytest.mark.parametrize("layout", ["one-then-rest", "rest-then-one", "all-ones"])
def test_virtual_list(comm, layout):
    size = comm.Get_size()
    sizes = {
        "one-then-rest": [1, size - 1],
        "rest-then-one": [size - 1, 1],
        "all-ones": [1] * size,
    }[layout]
    sizes = [s for s in sizes if s > 0]
    with Topology(comm, ranks_per_node=sizes, source="virtual") as topo:
        check_topology(topo, nodes_from_sizes(sizes))


def test_equivalent_arguments_are_accepted():
    world = MPI.COMM_WORLD
    size = world.Get_size()
    sizes = [2] * (size // 2) + [1] * (size % 2)
    arg = 2 if world.Get_rank() == 0 else sizes  # same layout, written two ways
    with Topology(world, ranks_per_node=arg) as topo:
        check_topology(topo, nodes_from_sizes(sizes))


def test_different_ranks_per_node_raise_everywhere():
    world = MPI.COMM_WORLD
    size = world.Get_size()
    arg = 1 if world.Get_rank() == 0 else size
    with pytest.raises(ValueError, match="must be the same on every rank") as info:
        Topology(world, ranks_per_node=arg)
    assert "rank 0: source='auto', ranks_per_node=1" in str(info.value)
    assert world.allreduce(1) == size  # nobody is left inside a collective


def test_different_sources_raise_everywhere():
    world = MPI.COMM_WORLD
    with pytest.raises(ValueError, match="must be the same on every rank"):
        if world.Get_rank() == 0:
            Topology(world)
        else:
            Topology(world, ranks_per_node=1)
    assert world.allreduce(1) == world.Get_size()


def test_bad_argument_on_one_rank_raises_everywhere(comm):
    size = comm.Get_size()
    last = size - 1
    arg = 0 if comm.Get_rank() == last else 1
    with pytest.raises(ValueError, match=f"rank {last}/{size}: ranks_per_node must be >= 1, got 0"):
        Topology(comm, ranks_per_node=arg)
    assert comm.allreduce(1) == size


def set_fake_slurm(monkeypatch, rank, size, node_ids):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_PROCID", str(rank))
    monkeypatch.setenv("SLURM_NTASKS", str(size))
    monkeypatch.setenv("SLURM_NNODES", str(len(set(node_ids))))
    monkeypatch.setenv("SLURM_NODEID", str(node_ids[rank]))
    monkeypatch.setenv("SLURM_LOCALID", str(node_ids[:rank].count(node_ids[rank])))
    counts = [node_ids.count(n) for n in sorted(set(node_ids))]
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", format_tasks_per_node(counts))


def test_fake_slurm_two_nodes(clean_env, monkeypatch):
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    # Two nodes, ranks dealt round-robin; Slurm's own node ids are 7 (even ranks) and 3 (odd).
    node_ids = [7 if r % 2 == 0 else 3 for r in range(size)]
    set_fake_slurm(monkeypatch, rank, size, node_ids)
    with Topology(world, source="slurm") as topo:
        assert topo.source == "slurm" and not topo.is_virtual
        # numbered by the lowest rank on each node, not by SLURM_NODEID
        check_topology(topo, [list(range(0, size, 2)), list(range(1, size, 2))])
        assert "\n" not in describe(topo)


def test_fake_slurm_on_split_comm(clean_env, monkeypatch, comm):
    world = MPI.COMM_WORLD
    node_ids = [r // 2 for r in range(world.Get_size())]
    set_fake_slurm(monkeypatch, world.Get_rank(), world.Get_size(), node_ids)
    # expected layout in comm's ranks, from every member's world rank
    members = comm.allgather(world.Get_rank())
    keys = [node_ids[w] for w in members]
    expected = {}
    for r, key in enumerate(keys):
        expected.setdefault(key, []).append(r)
    with Topology(comm, source="slurm") as topo:
        check_topology(topo, list(expected.values()))


def test_slurm_missing_on_one_rank_raises_everywhere(clean_env, monkeypatch):
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    set_fake_slurm(monkeypatch, rank, size, [0] * size)
    if rank == 1:
        monkeypatch.delenv("SLURM_NODEID")
    with pytest.raises(ValueError, match=f"rank 1/{size}: source='slurm' but SLURM_NODEID is not set"):
        Topology(world, source="slurm")
    assert world.allreduce(1) == size


def test_slurm_outside_slurm_raises_everywhere(clean_env):
    world = MPI.COMM_WORLD
    with pytest.raises(ValueError, match="SLURM_JOB_ID is not set"):
        Topology(world, source="slurm")
    assert world.allreduce(1) == world.Get_size()


def test_bind_gpu_by_local_rank(comm, monkeypatch):
    used = []
    device = types.SimpleNamespace
    fake = types.SimpleNamespace(
        cuda=types.SimpleNamespace(Device=lambda i: device(use=lambda: used.append(i)))
    )
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with Topology(comm, ranks_per_node=3) as topo:
        index = bind_gpu(topo, environ={"CUDA_VISIBLE_DEVICES": "0,1"})
        assert index == topo.local_rank % 2
        assert used == [index]
        assert bind_gpu(topo, environ={"CUDA_VISIBLE_DEVICES": "1"}) == 0


def test_free_twice_is_safe(comm):
    topo = Topology(comm, ranks_per_node=2)
    topo.free()
    topo.free()
    assert topo.node_comm == MPI.COMM_NULL and topo.leader_comm == MPI.COMM_NULL
