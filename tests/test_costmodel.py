"""Alpha-beta cost model: closed forms, the Frontier preset, picks, traffic (also against a run's counts)."""

import math

import numpy as np
import pytest

from comms.costmodel import CostModel, LevelCost, schedule_name, schedules

MiB = 1 << 20


def uniform(alpha=2e-6, bw=1e9, overhead=0.0, levels=2):
    return CostModel(tuple(LevelCost(f"l{i}", alpha, bw) for i in range(levels)), call_overhead_s=overhead)


def test_flat_allreduce_closed_form():
    m = uniform(overhead=3e-6)
    n, a, bw, o = 8 * MiB, 2e-6, 1e9, 3e-6
    agreement = o + math.ceil(math.log2(4)) * a     # the hierarchy's; its ring skips its own
    ring = o + 2 * 3 * (a + n / 4 / bw)
    assert m.predict((2, 2), n, "allreduce", "flat") == pytest.approx(agreement + ring, rel=1e-12)


def test_hierarchical_allreduce_closed_form():
    m = uniform(overhead=3e-6)
    n, a, bw, o = 8 * MiB, 2e-6, 1e9, 3e-6
    t = o + 2 * a                                   # the hierarchy's agreement over 4 ranks (the only one)
    t += o + 1 * (a + n / 2 / bw)                   # reduce-scatter in pairs
    t += o + 2 * 1 * (a + n / 4 / bw)               # allreduce of the half between pairs
    t += o + a + 1 * (a + n / 2 / bw)               # allgather in pairs (gathers its row counts: a)
    assert m.predict((2, 2), n, "allreduce", "hierarchical") == pytest.approx(t, rel=1e-12)
    assert m.predict((2, 2), n, "allreduce", (0, 1)) == pytest.approx(t, rel=1e-12)


def test_uniform_machine_same_bandwidth_term():
    """Both schedules are bandwidth-optimal rings: without latency and overhead they tie."""
    m = uniform(alpha=0.0)
    for factors in [(2, 2), (2, 4), (3, 5), (2, 2, 2)]:
        m3 = uniform(alpha=0.0, levels=len(factors))
        for coll in ("allreduce", "reduce_scatter", "allgather"):
            t = [m3.predict(factors, 64 * MiB, coll, k) for k in schedules(len(factors))]
            assert max(t) == pytest.approx(min(t), rel=1e-9), (factors, coll, t)
    assert m.predict((1, 1), MiB) == 0.0


def test_group_bandwidth_is_shared_by_the_flows_leaving_a_group():
    f = CostModel.frontier()
    z = 1e6
    # the inter-node step of a hierarchical schedule: 8 GCDs of a node share 4 NICs (100 GB/s)
    assert f.step_time((2, 4, 16), 2, 2, z) == pytest.approx(10e-6 + z / 12.5e9)
    # a flat ring leaves each node once: one NIC, 25 GB/s
    assert f.step_time((2, 4, 16), 0, 2, z) == pytest.approx(10e-6 + z / 25e9)
    # inside the node: the pair link (200 GB/s) and the GPU-GPU link (50 GB/s)
    assert f.step_time((2, 4, 16), 0, 0, z) == pytest.approx(5e-6 + z / 200e9)
    assert f.step_time((2, 4, 16), 1, 1, z) == pytest.approx(5e-6 + z / 50e9)
    assert "docs.olcf.ornl.gov" in f.source and "2501.04266" in f.source


@pytest.mark.parametrize("nodes", [2, 16, 128, 1024])
def test_frontier_prefers_three_levels_for_large_messages(nodes):
    f = CostModel.frontier()
    best, times = f.pick((2, 4, nodes), 256 * MiB)
    assert best == (0, 1, 2), {schedule_name(k, f.names): v for k, v in times.items()}
    assert times[(2,)] > times[(1, 2)] > times[(0, 1, 2)]
    assert times[best] == min(times.values())


def test_flat_latency_grows_with_ranks():
    """For a tiny message the flat ring's 2(P - 1) inter-node steps dominate at scale."""
    f = CostModel.frontier()
    flat = [f.predict((2, 4, n), 8, "allreduce", "flat") for n in (2, 64, 1024)]
    hier = [f.predict((2, 4, n), 8, "allreduce", "hierarchical") for n in (2, 64, 1024)]
    assert flat[2] > 5 * hier[2] and flat[0] < 4 * hier[0]
    assert flat[2] == pytest.approx(2 * (8192 - 1) * 10e-6, rel=0.05)


def test_traffic_of_flat_and_hierarchical_allreduce():
    f = CostModel.frontier()
    n, P = float(1 << 30), 32
    flat = f.traffic((2, 4, 4), n, "allreduce", "flat")
    hier = f.traffic((2, 4, 4), n, "allreduce", "hierarchical")
    assert sum(v["total"] for v in flat.values()) == pytest.approx(P * 2 * (P - 1) / P * n)
    assert flat["world"]["total"] == pytest.approx(4 * 2 * (P - 1) / P * n)  # 4 ring edges leave a node
    assert flat["world"]["max"] == pytest.approx(2 * (P - 1) / P * n)
    assert hier["world"]["max"] == pytest.approx(2 * 3 / 4 * n / 8)  # 1/8 of the data, 4 nodes
    assert hier["world"]["total"] == pytest.approx(P * 2 * 3 / 4 * n / 8)
    assert hier["world"]["total"] < flat["world"]["total"]
    rs = f.traffic((2, 4, 4), n, "reduce_scatter", "hierarchical")
    ag = f.traffic((2, 4, 4), n, "allgather", "hierarchical")
    assert rs["world"]["total"] == pytest.approx(ag["world"]["total"]) == pytest.approx(hier["world"]["total"] / 2)


def test_schedules_and_names():
    assert schedules(1) == [(0,)]
    assert sorted(schedules(3)) == sorted([(2,), (0, 2), (1, 2), (0, 1, 2)])
    assert schedule_name((2,), ("a", "b", "c")) == "flat"
    assert schedule_name((1, 2), ("a", "b", "c")) == "b/c"


def test_save_load_roundtrip(tmp_path):
    f = CostModel.frontier()
    path = tmp_path / "model.json"
    f.save(path)
    g = CostModel.load(path)
    assert g == f and g.names == f.names
    assert g.predict((2, 4, 8), MiB) == f.predict((2, 4, 8), MiB)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="x", alpha_s=-1.0, bandwidth_Bps=1.0), "alpha_s"),
    (dict(name="x", alpha_s=0.0, bandwidth_Bps=0.0), "bandwidth_Bps"),
    (dict(name="x", alpha_s=0.0, bandwidth_Bps=1.0, group_bandwidth_Bps=-2.0), "group_bandwidth_Bps"),
])
def test_level_cost_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LevelCost(**kwargs)


def test_bad_arguments():
    f = CostModel.frontier()
    with pytest.raises(ValueError, match="factors"):
        f.predict((2, 4, 8, 2), MiB)
    with pytest.raises(ValueError, match="collective"):
        f.predict((2, 4, 8), MiB, "alltoall")
    with pytest.raises(ValueError, match="schedule"):
        f.predict((2, 4, 8), MiB, "allreduce", "tree")
    with pytest.raises(TypeError):
        CostModel(())


# --------------------------------------------------------------------------- against a run


def _check_counts_match_model(levels, count):
    from mpi4py import MPI

    from comms.hierarchy import Hierarchy

    world = MPI.COMM_WORLD
    with Hierarchy(world, levels=levels) as h:
        model = CostModel.uniform(len(h.levels))
        factors = h.layout.factors
        names = model.names
        for coll in ("allreduce", "reduce_scatter", "allgather"):
            for kept in h.layout.all_schedules():
                h.reset_traffic()
                x = np.ones(count if coll != "allgather" else count // world.size)
                getattr(h, coll)(x, schedule=list(kept))
                got = h.traffic_summary()
                want = model.traffic(factors, count * 8, coll, kept)
                for hn, mn in zip(h.names, names):
                    assert got[hn]["total"] == pytest.approx(want[mn]["total"]), (coll, kept, hn, got, want)
                    assert got[hn]["max"] == pytest.approx(want[mn]["max"]), (coll, kept, hn, got, want)


@pytest.mark.mpi(min_size=4)
@pytest.mark.timeout(120, method="thread")
def test_model_traffic_equals_counted_traffic_4():
    from mpi4py import MPI

    if MPI.COMM_WORLD.size != 4:
        pytest.skip("exactly 4 ranks (the 8-rank case covers -n 8)")
    _check_counts_match_model([2], 4 * 4 * 16)


@pytest.mark.mpi(min_size=8)
@pytest.mark.timeout(120, method="thread")
def test_model_traffic_equals_counted_traffic_8():
    from mpi4py import MPI

    if MPI.COMM_WORLD.size != 8:
        pytest.skip("exactly 8 ranks")
    _check_counts_match_model([2, 4], 8 * 8 * 16)


def test_local_reduction_term():
    """Each reducing step also combines z bytes locally; gathers do not."""
    n = 8 * MiB
    base = uniform()
    slow = CostModel(base.levels, reduce_Bps=2e9)
    assert slow.predict((2, 2), n, "allreduce", "flat") - base.predict((2, 2), n, "allreduce", "flat") == \
        pytest.approx(3 * (n / 4) / 2e9)
    assert slow.predict((2, 2), n, "reduce_scatter", (0, 1)) - base.predict((2, 2), n, "reduce_scatter", (0, 1)) == \
        pytest.approx((n / 2 + n / 4) / 2e9)  # blocks of n/2 in pairs, then n/4 between pairs
    assert slow.predict((2, 2), n, "allgather") == base.predict((2, 2), n, "allgather")
    with pytest.raises(ValueError, match="reduce_Bps"):
        CostModel(base.levels, reduce_Bps=0.0)
