"""Serial tests of hpcore.topology: Slurm parsing, GPU choice, Topology on COMM_SELF."""

import dataclasses
import os
import subprocess
import sys
import types

import pytest
from mpi4py import MPI

from hpcore.errors import HpcoreError
from hpcore.topology import (
    SlurmInfo,
    Topology,
    bind_gpu,
    describe,
    format_tasks_per_node,
    gpu_for_local_rank,
    parse_tasks_per_node,
    slurm_env,
    visible_gpu_count,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What srun sets for task 5 of `srun -N 4 -n 7 --gpus-per-node=4` (tasks 2,2,2,1).
SLURM_TASK5 = {
    "SLURM_JOB_ID": "812345",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "7",
    "SLURM_NODEID": "2",
    "SLURM_LOCALID": "1",
    "SLURM_NNODES": "4",
    "SLURM_TASKS_PER_NODE": "2(x3),1",
    "SLURM_NODELIST": "nid[001-004]",
    "SLURM_TOPOLOGY_ADDR": "s0.s2.nid003",
    "SLURM_TOPOLOGY_ADDR_PATTERN": "switch.switch.node",
    "SLURM_GPUS_ON_NODE": "4",
    "SLURM_STEP_GPUS": "0,1,2,3",
    "SLURM_JOB_GPUS": "0-3",
    "HOME": "/home/me",
}


@pytest.fixture
def no_gpu_env(monkeypatch):
    """os.environ without Slurm or device-visibility variables."""
    for name in list(os.environ):
        if name.startswith("SLURM_") or name.endswith("_VISIBLE_DEVICES"):
            monkeypatch.delenv(name)


@pytest.fixture
def fake_cupy(monkeypatch):
    """A stand-in `cupy` module with 3 devices that records Device(i).use()."""
    used = []

    class Device:
        def __init__(self, index):
            self.index = index

        def use(self):
            used.append(self.index)

    cuda = types.SimpleNamespace(
        Device=Device, runtime=types.SimpleNamespace(getDeviceCount=lambda: 3)
    )
    module = types.SimpleNamespace(cuda=cuda, used=used)
    monkeypatch.setitem(sys.modules, "cupy", module)
    return module


@pytest.fixture
def no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError


# ----------------------------------------------------------------- import


def test_import_does_no_mpi_or_gpu_work():
    code = (
        "import sys, hpcore.topology; "
        "print('mpi4py.MPI' in sys.modules, 'cupy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------- Slurm


@pytest.mark.parametrize(
    "value, expected",
    [
        ("4", (4,)),
        ("2(x3),1", (2, 2, 2, 1)),
        ("1,3(x2)", (1, 3, 3)),
        ("16(x1)", (16,)),
        (" 2 (x 2) , 1", (2, 2, 1)),
    ],
    ids=["single", "repeat-then-one", "one-then-repeat", "x1", "spaces"],
)
def test_parse_tasks_per_node(value, expected):
    assert parse_tasks_per_node(value) == expected


@pytest.mark.parametrize("value", ["", "2(3)", "2(x)", "a", "2,,1", "2(x0)", "-1"])
def test_parse_tasks_per_node_rejects(value):
    with pytest.raises(ValueError, match="tasks per node"):
        parse_tasks_per_node(value)


@pytest.mark.parametrize(
    "counts, text",
    [([4], "4"), ([2, 2, 2, 1], "2(x3),1"), ([1, 3, 3], "1,3(x2)"), ([1, 2, 1], "1,2,1")],
)
def test_format_tasks_per_node_round_trip(counts, text):
    assert format_tasks_per_node(counts) == text
    assert parse_tasks_per_node(text) == tuple(counts)


def test_slurm_env_none_outside_slurm():
    assert slurm_env({}) is None
    assert slurm_env({"HOME": "/x", "SLURM_NODEID": "0"}) is None


def test_slurm_env_full():
    info = slurm_env(SLURM_TASK5)
    assert info == SlurmInfo(
        job_id="812345",
        step_id="0",
        proc_id=5,
        ntasks=7,
        node_id=2,
        local_id=1,
        num_nodes=4,
        tasks_per_node=(2, 2, 2, 1),
        nodelist="nid[001-004]",
        topology_addr=("s0", "s2", "nid003"),
        topology_addr_pattern=("switch", "switch", "node"),
        gpus_on_node=4,
        step_gpus=(0, 1, 2, 3),
        job_gpus=(0, 1, 2, 3),
    )
    assert info.local_ntasks == 2
    assert info.topology_levels == (("switch", "s0"), ("switch", "s2"), ("node", "nid003"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.node_id = 3


def test_slurm_env_fallbacks_and_missing():
    info = slurm_env(
        {
            "SLURM_JOBID": "7",
            "SLURM_NPROCS": "3",
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_TASKS_PER_NODE": "2,1",
            "SLURM_STEP_TASKS_PER_NODE": "1(x3)",
            "SLURM_JOB_NODELIST": "a,b",
        }
    )
    assert info.job_id == "7"
    assert info.ntasks == 3
    assert info.num_nodes == 2
    assert info.tasks_per_node == (1, 1, 1)  # the step's layout wins over the job's
    assert info.nodelist == "a,b"
    assert info.proc_id is None and info.node_id is None and info.local_id is None
    assert info.local_ntasks is None
    assert info.topology_addr == () and info.topology_levels == ()
    assert info.step_gpus is None and info.job_gpus is None and info.gpus_on_node is None


def test_slurm_env_reads_os_environ(no_gpu_env, monkeypatch):
    assert slurm_env() is None
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    monkeypatch.setenv("SLURM_NODEID", "3")
    info = slurm_env()
    assert (info.job_id, info.node_id) == ("99", 3)


@pytest.mark.parametrize(
    "name, value",
    [("SLURM_NODEID", "zero"), ("SLURM_TASKS_PER_NODE", "2(x)"), ("SLURM_STEP_GPUS", "0,x")],
)
def test_slurm_env_malformed_names_variable(name, value):
    with pytest.raises(ValueError, match=name):
        slurm_env({"SLURM_JOB_ID": "1", name: value})


# ----------------------------------------------------------------- GPUs


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 4),
        ({"CUDA_VISIBLE_DEVICES": "2"}, 1),
        ({"CUDA_VISIBLE_DEVICES": ""}, 0),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, 0),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, 0),
        ({"CUDA_VISIBLE_DEVICES": "0,1,-1,3"}, 2),
        ({"CUDA_VISIBLE_DEVICES": "GPU-8f2a,MIG-1c3d"}, 2),
        ({"ROCR_VISIBLE_DEVICES": "0,1"}, 2),
        ({"ROCR_VISIBLE_DEVICES": "0,1,2,3", "HIP_VISIBLE_DEVICES": "1"}, 1),
        ({"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_STEP_GPUS": "0,1,2,3"}, 2),
        ({"SLURM_STEP_GPUS": "0,1,2,3", "SLURM_JOB_GPUS": "0"}, 4),
        ({"SLURM_JOB_GPUS": "4-7"}, 4),
        ({"SLURM_GPUS_ON_NODE": "8"}, 8),
    ],
    ids=[
        "empty", "cuda4", "cuda1", "cuda-empty", "slurm-nodevfiles", "cuda-minus1",
        "stops-at-invalid", "uuids", "rocr", "hip-in-rocr", "visible-beats-slurm",
        "step-beats-job", "job-range", "gpus-on-node",
    ],
)
def test_visible_gpu_count(env, expected):
    assert visible_gpu_count(env) == expected


@pytest.mark.parametrize(
    "local_rank, env, expected",
    [
        (0, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 0),
        (3, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 3),
        (5, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 1),
        (3, {"CUDA_VISIBLE_DEVICES": "3"}, 0),  # --gpu-bind left one device: it is device 0
        (3, {"ROCR_VISIBLE_DEVICES": "0,1"}, 1),
        (3, {"SLURM_STEP_GPUS": "2"}, 0),  # one GPU per task
        (6, {"SLURM_STEP_GPUS": "0,1,2,3"}, 2),
        (6, {"SLURM_GPUS_ON_NODE": "4"}, 2),
        (1, {"CUDA_VISIBLE_DEVICES": ""}, None),
        (1, {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None),
    ],
)
def test_gpu_for_local_rank_from_env(local_rank, env, expected, no_cupy):
    assert gpu_for_local_rank(local_rank, environ=env) == expected


def test_gpu_for_local_rank_explicit_count_wins(no_cupy):
    assert gpu_for_local_rank(5, num_gpus=2, environ={"CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == 1
    assert gpu_for_local_rank(5, num_gpus=0) is None


def test_gpu_for_local_rank_env_does_not_import_cupy(monkeypatch):
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    assert gpu_for_local_rank(1, environ={"CUDA_VISIBLE_DEVICES": "0,1"}) == 1
    assert gpu_for_local_rank(1, num_gpus=4, environ={}) == 1
    assert "cupy" not in sys.modules


def test_gpu_for_local_rank_falls_back_to_cupy(fake_cupy):
    assert gpu_for_local_rank(4, environ={}) == 1  # fake CuPy sees 3 devices


def test_gpu_for_local_rank_no_cupy_no_env_is_none(no_cupy):
    assert gpu_for_local_rank(0, environ={}) is None


def test_gpu_for_local_rank_reads_os_environ(no_gpu_env, no_cupy, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert gpu_for_local_rank(4) == 1


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"local_rank": -1}, ValueError),
        ({"local_rank": True}, TypeError),
        ({"local_rank": 1.0}, TypeError),
        ({"local_rank": 0, "num_gpus": -2}, ValueError),
        ({"local_rank": 0, "num_gpus": "2"}, TypeError),
    ],
)
def test_gpu_for_local_rank_bad_arguments(kwargs, error):
    name = "num_gpus" if "num_gpus" in kwargs else "local_rank"
    with pytest.raises(error, match=name):
        gpu_for_local_rank(environ={}, **kwargs)


def test_bind_gpu_uses_chosen_device(fake_cupy):
    stand_in = types.SimpleNamespace(local_rank=5, comm=MPI.COMM_SELF)
    assert bind_gpu(stand_in, environ={"CUDA_VISIBLE_DEVICES": "0,1"}) == 1
    with Topology(MPI.COMM_SELF) as topo:
        assert bind_gpu(topo, environ={}) == 0
    assert fake_cupy.used == [1, 0]


def test_bind_gpu_without_cupy_says_how_to_install(no_cupy):
    with Topology(MPI.COMM_SELF) as topo:
        with pytest.raises(ImportError, match=r"pip install hpcore\[gpu\]"):
            bind_gpu(topo, environ={"CUDA_VISIBLE_DEVICES": "0"})


def test_bind_gpu_without_device(fake_cupy):
    with Topology(MPI.COMM_SELF) as topo:
        with pytest.raises(HpcoreError, match="no GPU visible.*CUDA_VISIBLE_DEVICES='NoDevFiles'"):
            bind_gpu(topo, environ={"CUDA_VISIBLE_DEVICES": "NoDevFiles"})
    assert fake_cupy.used == []


# ----------------------------------------------------------------- Topology on COMM_SELF


def check_single(topo, source, is_virtual):
    assert (topo.rank, topo.size) == (0, 1)
    assert topo.source == source and topo.is_virtual is is_virtual
    assert (topo.node, topo.num_nodes) == (0, 1)
    assert (topo.local_rank, topo.local_size) == (0, 1)
    assert topo.nodes == [[0]] and topo.ranks_per_node == [1] and topo.leaders == [0]
    assert topo.node_of(0) == 0
    assert topo.node_comm.Get_size() == 1
    assert topo.leader_comm != MPI.COMM_NULL and topo.leader_comm.Get_size() == 1


@pytest.mark.parametrize(
    "kwargs, source, is_virtual",
    [
        ({}, "shared", False),
        ({"source": "shared"}, "shared", False),
        ({"ranks_per_node": 1}, "virtual", True),
        ({"ranks_per_node": 4}, "virtual", True),  # more than size: one short node
        ({"ranks_per_node": [1]}, "virtual", True),
        ({"ranks_per_node": (1,), "source": "virtual"}, "virtual", True),
    ],
    ids=["auto", "shared", "virtual-1", "virtual-4", "list", "tuple-virtual"],
)
def test_topology_self(kwargs, source, is_virtual):
    with Topology(MPI.COMM_SELF, **kwargs) as topo:
        check_single(topo, source, is_virtual)
        assert topo.comm is MPI.COMM_SELF
    assert topo.node_comm == MPI.COMM_NULL and topo.leader_comm == MPI.COMM_NULL


def test_topology_slurm_self(no_gpu_env):
    env = dict(SLURM_TASK5)
    with Topology(MPI.COMM_SELF, source="slurm", environ=env) as topo:
        check_single(topo, "slurm", False)


def test_topology_slurm_self_os_environ(no_gpu_env, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_NODEID", "5")
    with Topology(MPI.COMM_SELF, source="slurm") as topo:
        check_single(topo, "slurm", False)


@pytest.mark.parametrize(
    "environ, match",
    [({}, "SLURM_JOB_ID is not set"), ({"SLURM_JOB_ID": "1"}, "SLURM_NODEID is not set")],
    ids=["no-slurm", "no-nodeid"],
)
def test_topology_slurm_outside_slurm(environ, match):
    with pytest.raises(ValueError, match=f"rank 0/1: source='slurm'.*{match}"):
        Topology(MPI.COMM_SELF, source="slurm", environ=environ)


def test_free_twice_and_describe():
    topo = Topology(MPI.COMM_SELF, ranks_per_node=1)
    line = describe(topo)
    assert "\n" not in line
    assert line.startswith("1 rank on 1 node (virtual, 1 rank per node); rank 0 is local rank 0/1 on node 0")
    assert "local_rank=0" in repr(topo)
    topo.free()
    topo.free()
    assert topo.node_comm == MPI.COMM_NULL and topo.leader_comm == MPI.COMM_NULL


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"ranks_per_node": 0}, ValueError, "ranks_per_node must be >= 1, got 0"),
        ({"ranks_per_node": -3}, ValueError, "ranks_per_node must be >= 1"),
        ({"ranks_per_node": True}, TypeError, "ranks_per_node must be an int or a list"),
        ({"ranks_per_node": 1.5}, TypeError, "ranks_per_node must be an int or a list"),
        ({"ranks_per_node": "1"}, TypeError, "ranks_per_node must be an int or a list"),
        ({"ranks_per_node": [2]}, ValueError, r"ranks_per_node=\[2\] sums to 2, but comm has 1 ranks"),
        ({"ranks_per_node": []}, ValueError, "sums to 0"),
        ({"ranks_per_node": [1, 0]}, ValueError, r"ranks_per_node\[1\] must be >= 1"),
        ({"source": "nodes"}, ValueError, "source must be one of 'auto', 'shared', 'slurm', 'virtual', got 'nodes'"),
        ({"source": "virtual"}, ValueError, "source='virtual' needs ranks_per_node"),
        ({"source": "shared", "ranks_per_node": 1}, ValueError, "cannot be combined with source='shared'"),
        ({"source": "slurm", "ranks_per_node": 1}, ValueError, "cannot be combined with source='slurm'"),
    ],
)
def test_topology_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        Topology(MPI.COMM_SELF, **kwargs)
    assert str(info.value).startswith("rank 0/1: ")


@pytest.mark.parametrize(
    "comm, error",
    [(None, TypeError), ("world", TypeError), (MPI.COMM_NULL, ValueError)],
    ids=["none", "str", "comm-null"],
)
def test_topology_bad_comm(comm, error):
    with pytest.raises(error, match="comm"):
        Topology(comm)


def test_topology_takes_the_communicators_every_entry_point_takes():
    """One rule (hpcore.as_comm): an mpi4py intracommunicator or an hpcore.Comm, nothing else."""
    import hpcore

    with Topology(hpcore.Comm(MPI.COMM_SELF)) as topo:
        assert topo.comm is MPI.COMM_SELF
    with pytest.raises(TypeError, match="comm: expected an mpi4py intracommunicator or an hpcore.Comm"):
        Topology(types.SimpleNamespace(comm=MPI.COMM_SELF))


def test_node_of_bad_rank():
    with Topology(MPI.COMM_SELF) as topo:
        with pytest.raises(ValueError, match=r"rank must be in \[0, 1\), got 1"):
            topo.node_of(1)
