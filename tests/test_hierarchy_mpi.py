"""Hierarchical collectives against their flat twins and MPI's own, on virtual hierarchies of 2-8 ranks.

The 6- and 8-rank cases run under ``mpiexec -n 8 python -m pytest --with-mpi tests/test_hierarchy_mpi.py``;
under ``-n 4`` they are skipped and the 2-, 3- and 4-rank cases run on sub-communicators.
"""

import warnings
import zlib

import numpy as np
import pytest
from mpi4py import MPI
from mpi_checks import raises_everywhere as _raises_everywhere
from mpi_checks import verdict as _verdict

import comms.ring as ring_module
from comms.costmodel import CostModel, LevelCost
from comms.hierarchy import Hierarchy, HierarchyMismatchError
from comms.ring import ring_allreduce, ring_blocks
from comms.ring_engine import ring_context

pytestmark = pytest.mark.timeout(240, method="thread")

# (ranks, levels, ranks_per_node): virtual hierarchies; 6 and 8 need mpiexec -n 8
CASES = [
    pytest.param(2, [1], None, id="n2-single", marks=pytest.mark.mpi(min_size=2)),
    pytest.param(3, [3], None, id="n3-one-group", marks=pytest.mark.mpi(min_size=3)),
    pytest.param(4, [2], None, id="n4-pairs", marks=pytest.mark.mpi(min_size=4)),
    pytest.param(4, [1, 2], None, id="n4-ones-pairs", marks=pytest.mark.mpi(min_size=4)),
    pytest.param(4, ["node"], 2, id="n4-vnodes2", marks=pytest.mark.mpi(min_size=4)),
    pytest.param(6, [2], None, id="n6-pairs", marks=pytest.mark.mpi(min_size=6)),
    pytest.param(6, [3], None, id="n6-triples", marks=pytest.mark.mpi(min_size=6)),
    pytest.param(6, [2, 6], None, id="n6-pairs-six", marks=pytest.mark.mpi(min_size=6)),
    pytest.param(8, [2, 4], None, id="n8-pairs-quads", marks=pytest.mark.mpi(min_size=8)),
    pytest.param(8, [4], None, id="n8-quads", marks=pytest.mark.mpi(min_size=8)),
    pytest.param(8, [2, "node"], 4, id="n8-pairs-vnodes4", marks=pytest.mark.mpi(min_size=8)),
]

KINDS = [("int64", "sum"), ("int32", "max"), ("int16", "prod"), ("uint8", "min"), ("float64", "sum"),
         ("complex128", "sum")]
OPS = {"sum": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}


# --------------------------------------------------------------------------- helpers




def _on_sub(n: int, fn) -> None:
    """Run ``fn(sub)`` on a communicator of the first ``n`` world ranks; verdict on every world rank."""
    world = MPI.COMM_WORLD
    sub = world.Split(0 if world.rank < n else MPI.UNDEFINED, world.rank)
    ok, detail = True, ""
    if sub != MPI.COMM_NULL:
        try:
            fn(sub)
        except Exception as exc:  # noqa: BLE001 - reported through the verdict
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        finally:
            sub.Free()
    _verdict(world, ok, detail)




def _data(rank: int, dtype: str, op: str, count: int, seed: int = 0):
    rng = np.random.default_rng([seed, rank, count])
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        lo, hi = (0, 3) if op == "prod" or dt.kind == "u" else (-50, 51)
        if op == "prod":
            lo, hi = (-1, 3) if dt.kind == "i" else (1, 3)
        return rng.integers(lo, hi, count).astype(dt)
    if dt.kind == "f":
        return rng.standard_normal(count).astype(dt)
    return (rng.standard_normal(count) + 1j * rng.standard_normal(count)).astype(dt)


def _abs_sum(comm, x):
    """sum over ranks of |x| (float64), the scale of the rounding error of any summation order."""
    out = np.empty(x.shape, dtype=np.float64)
    comm.Allreduce(np.abs(x).astype(np.float64), out)
    return out


def _close(got, ref, absum, size: int) -> bool:
    """Integers exact; floats within 2 (size - 1) eps sum_r |x_r| per element (any summation order)."""
    if got.dtype.kind in "iu":
        return np.array_equal(got, ref)
    eps = np.finfo(got.real.dtype).eps
    tol = 2 * max(size - 1, 1) * eps * absum.reshape(got.shape)
    return bool(np.all(np.abs(got - ref) <= tol))


def _same_everywhere(comm, a) -> bool:
    return len(set(comm.allgather(zlib.crc32(np.ascontiguousarray(a).tobytes())))) == 1


def _hierarchy(sub, levels, rpn):
    return Hierarchy(sub, levels=levels, ranks_per_node=rpn)


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize("n, levels, rpn", CASES)
def test_collectives_match_flat_and_mpi(n, levels, rpn):
    def check(sub):
        rank, size = sub.rank, sub.size
        with _hierarchy(sub, levels, rpn) as h:
            # every schedule as kept levels; the names "hierarchical" and "flat" stand for two of them
            schedules = [list(k) for k in h.layout.all_schedules()]
            schedules[0], schedules[-1] = "flat", "hierarchical"
            assert h.layout.schedule("flat") == h.layout.all_schedules()[0]
            assert h.layout.schedule("hierarchical") == h.layout.all_schedules()[-1]
            for dtype, op in KINDS:
                for count in (0, size + 1, 37):
                    x = _data(rank, dtype, op, count)
                    ref = np.empty_like(x)
                    sub.Allreduce(x, ref, op=OPS[op])
                    counts, displs = ring_blocks(count, size)
                    mine = slice(displs[rank], displs[rank] + counts[rank])
                    absum = _abs_sum(sub, x)
                    flat_rs = None
                    for sched in schedules:
                        x_before = x.copy()
                        y = h.allreduce(x, op, schedule=sched)
                        assert _close(y, ref, absum, size), (dtype, op, count, sched, "allreduce")
                        assert _same_everywhere(sub, y), (dtype, op, count, sched)
                        rs = h.reduce_scatter(x, op, schedule=sched)
                        assert rs.shape == (counts[rank],), (rs.shape, counts[rank])
                        assert _close(rs, ref[mine], absum[mine], size), (dtype, op, count, sched, "reduce_scatter")
                        if flat_rs is None:
                            flat_rs = h.reduce_scatter(x, op, schedule="flat")
                        if x.dtype.kind in "iu":
                            assert np.array_equal(rs, flat_rs)
                        ag = h.allgather(rs, schedule=sched)
                        if x.dtype.kind in "iu":
                            assert np.array_equal(ag, y), (dtype, op, count, sched, "allgather(reduce_scatter)")
                        else:
                            assert _close(ag, ref, absum, size)
                        assert np.array_equal(x, x_before), "input modified"

    _on_sub(n, check)


@pytest.mark.parametrize("n, levels, rpn", CASES)
def test_allgather_uneven_rows_and_shapes(n, levels, rpn):
    def check(sub):
        rank, size = sub.rank, sub.size
        with _hierarchy(sub, levels, rpn) as h:
            for sched in ["hierarchical", "flat"] + [list(k) for k in h.layout.all_schedules()]:
                rows = (rank * 3) % 4  # some ranks give nothing
                x = np.arange(rows * 6, dtype=np.float32).reshape(rows, 2, 3) + 100 * rank
                got = h.allgather(x, schedule=sched)
                ref = np.concatenate(sub.allgather(x))
                assert got.shape == ref.shape and np.array_equal(got, ref), sched
                scalar = h.allgather(np.array(rank, dtype=np.int64), schedule=sched)
                assert np.array_equal(scalar, np.arange(size)), sched
            y = np.arange(12.0).reshape(3, 4) * (rank + 1)
            out = np.empty_like(y)
            assert h.allreduce(y, out=out) is out
            assert np.array_equal(out, np.arange(12.0).reshape(3, 4) * size * (size + 1) / 2)
            z = np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4))
            assert np.array_equal(h.allreduce(z), z * size)
            h.allreduce(y, out=y)  # in place
            assert np.array_equal(y, out)

    _on_sub(n, check)


@pytest.mark.parametrize("n, levels, rpn", CASES)
def test_collectives_inside_each_level(n, levels, rpn):
    """level=i reduces inside each level-i group: equal to MPI over that group."""
    def check(sub):
        rank = sub.rank
        with _hierarchy(sub, levels, rpn) as h:
            for i, lv in enumerate(h.levels):
                group = sub.Split(h.layout.group[i][rank], h.block_index(i))
                try:
                    x = _data(rank, "int64", "sum", 29)
                    ref = np.empty_like(x)
                    group.Allreduce(x, ref)
                    assert np.array_equal(h.allreduce(x, level=i), ref), lv
                    assert np.array_equal(h.allreduce(x, level=lv.name, schedule="flat"), ref), lv
                    counts, displs = ring_blocks(29, lv.size)
                    b = h.block_index(i)
                    assert np.array_equal(h.reduce_scatter(x, level=i), ref[displs[b]:displs[b] + counts[b]])
                    rows = np.full(b % 3, rank)
                    assert np.array_equal(h.allgather(rows, level=i), np.concatenate(group.allgather(rows)))
                finally:
                    group.Free()

    _on_sub(n, check)


@pytest.mark.mpi(min_size=4)
def test_round_robin_nodes_from_slurm_variables():
    """Nodes {0, 2} and {1, 3} (SLURM_NODEID = rank % 2): blocks are padded where the nested
    splits cannot match the flat ones, results stay those of the flat ring."""
    def check(sub):
        rank = sub.rank
        env = {"SLURM_JOB_ID": "7", "SLURM_NODEID": str(rank % 2)}
        with Hierarchy(sub, levels=["node"], source="slurm", environ=env) as h:
            assert h.group("node") == [r for r in range(4) if r % 2 == rank % 2]
            for count in (5, 6, 7, 33, 34):
                x = _data(rank, "int64", "sum", count)
                ref = np.empty_like(x)
                sub.Allreduce(x, ref)
                counts, displs = ring_blocks(count, 4)
                rs = h.reduce_scatter(x)
                assert np.array_equal(rs, ref[displs[rank]:displs[rank] + counts[rank]]), count
                assert np.array_equal(h.allgather(rs), ref)
                assert np.array_equal(h.allreduce(x), ref)
            assert h._plans[((0, 1), 1, 6)][4] > 0  # 6 elements needed padding

    _on_sub(4, check)


@pytest.mark.mpi(min_size=4)
def test_detected_levels_with_slurm_switches():
    """levels=None: the node (here virtual, from SLURM_NODEID) and each switch level that
    groups nodes; a switch equal to the node or to everyone is left out."""
    def check(sub):
        rank = sub.rank
        env = {"SLURM_JOB_ID": "7", "SLURM_NODEID": str(rank),
               "SLURM_TOPOLOGY_ADDR": f"top.s{rank // 2}.n{rank}",
               "SLURM_TOPOLOGY_ADDR_PATTERN": "switch.switch.node"}
        with Hierarchy(sub, source="slurm", environ=env) as h:
            assert h.names == ("switch", "world"), h.names  # nodes of 1 rank add nothing
            assert h.group("switch") == [rank // 2 * 2, rank // 2 * 2 + 1]
            x = np.full(9, rank + 1)
            assert np.array_equal(h.allreduce(x), np.full(9, 10))
        with Hierarchy(sub) as h:  # detected on one machine: one node holds everyone
            assert h.names == ("world",) and h.levels[0].size == 4

    _on_sub(4, check)


@pytest.mark.mpi(min_size=4)
def test_uneven_detected_nodes_are_left_out_with_a_warning():
    def check(sub):
        env = {"SLURM_JOB_ID": "7", "SLURM_NODEID": "0" if sub.rank < 3 else "1"}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Hierarchy(sub, source="slurm", environ=env) as h:
                assert h.names == ("world",)
        assert any("leaving out the detected level 'node'" in str(w.message) for w in caught)
        _raises_everywhere(sub, ValueError, lambda: Hierarchy(sub, levels=["node"], source="slurm", environ=env),
                           "different sizes")

    _on_sub(4, check)


# --------------------------------------------------------------------------- traffic


@pytest.mark.parametrize("n, levels, rpn", CASES)
def test_traffic_counts_the_bytes_the_rings_send(n, levels, rpn, monkeypatch):
    """Hierarchy.traffic (from the ring schedule) equals the bytes the ring links actually send."""
    sent: dict = {}
    real = ring_module.make_link

    def counting_link(ctx, hc, device, tag):
        link = real(ctx, hc, device, tag)
        isend = link.isend

        def wrapped(buf):
            rec = sent.setdefault(id(ctx.comm), [0, 0])
            rec[0] += int(buf.nbytes)
            rec[1] += 1
            return isend(buf)

        link.isend = wrapped
        return link

    monkeypatch.setattr(ring_module, "make_link", counting_link)

    def check(sub):
        rank = sub.rank
        with _hierarchy(sub, levels, rpn) as h:
            for sched in ["hierarchical", "flat"] + [list(k) for k in h.layout.all_schedules()]:
                for count in (1, 5, 1001):
                    x = _data(rank, "float64", "sum", count)
                    h.allreduce(x, schedule=sched)
                    h.allgather(h.reduce_scatter(x, schedule=sched), schedule=sched)
                    h.allgather(np.zeros((rank % 3, 2), np.int32), schedule=sched)
            by_level = [0] * len(h.levels)
            msgs = [0] * len(h.levels)
            dups = {id(ring_context(h._comm_of(a, b)).comm): lvl for (a, b), lvl in h._link.items()}
            for comm, (nbytes, nmsg) in sent.items():
                lvl = dups[comm]
                by_level[lvl] += nbytes
                msgs[lvl] += nmsg
            assert h.traffic.bytes_sent == by_level, (h.traffic.bytes_sent, by_level)
            assert h.traffic.messages == msgs, (h.traffic.messages, msgs)

    _on_sub(n, check)


@pytest.mark.parametrize("n, levels, rpn", CASES)
def test_slow_level_bytes_match_formula_and_beat_flat(n, levels, rpn):
    """Allreduce of count = k * size elements: every rank sends 2 (f - 1) / f * count / (size / f)
    elements over the top level's links (f: groups at the top), and the sum over ranks is below
    the flat ring's."""
    def check(sub):
        size = sub.size
        with _hierarchy(sub, levels, rpn) as h:
            live = [i for i, lv in enumerate(h.levels) if lv.factor > 1]
            slow = live[-1]  # the outermost level whose links carry anything
            name = h.names[slow]
            count = 24 * size
            x = np.ones(count)
            f = h.levels[slow].factor
            h.reset_traffic()
            h.allreduce(x)
            hier = h.traffic_summary()
            # the top ring reduces count * f / size elements over f members: 2 (f - 1) blocks of 24 leave each rank
            assert h.traffic[name] == 2 * (f - 1) * (count * f // size // f) * 8, h.traffic.as_dict()
            h.reset_traffic()
            h.allreduce(x, schedule="flat")
            flat = h.traffic_summary()
            if len(live) > 1:
                assert hier[name]["total"] < flat[name]["total"], (hier, flat)
                assert hier[name]["max"] < flat[name]["max"], (hier, flat)
            else:
                assert hier[name] == flat[name]
            for what in ("reduce_scatter", "allgather"):
                h.reset_traffic()
                getattr(h, what)(x if what == "reduce_scatter" else np.ones(24))
                hs = h.traffic_summary()
                h.reset_traffic()
                getattr(h, what)(x if what == "reduce_scatter" else np.ones(24), schedule="flat")
                fs = h.traffic_summary()
                assert hs[name]["total"] <= fs[name]["total"], (what, hs, fs)
                if len(live) > 1:
                    assert hs[name]["max"] < fs[name]["max"], (what, hs, fs)

    _on_sub(n, check)


# --------------------------------------------------------------------------- errors


@pytest.mark.mpi(min_size=2)
def test_mismatched_arguments_fail_on_every_rank():
    def check(sub):
        rank = sub.rank
        with Hierarchy(sub, levels=[1]) as h:
            x = np.ones(10)
            _raises_everywhere(sub, HierarchyMismatchError, lambda: h.allreduce(np.ones(10 + (rank == 1))),
                               "element count")
            _raises_everywhere(sub, HierarchyMismatchError,
                               lambda: h.reduce_scatter(x.astype(np.float32) if rank == 0 else x), "dtype")
            _raises_everywhere(sub, HierarchyMismatchError,
                               lambda: h.allreduce(x, MPI.MAX if rank == 0 else MPI.SUM), "op")
            _raises_everywhere(sub, HierarchyMismatchError,
                               lambda: h.allreduce(x, schedule="flat" if rank == 0 else "hierarchical"), "schedule")
            _raises_everywhere(sub, HierarchyMismatchError,
                               lambda: h.allgather(np.ones((2, 3 if rank == 0 else 4))), "trailing shape")
            _raises_everywhere(sub, ValueError, lambda: h.allreduce(x, MPI.LAND if rank == 1 else MPI.SUM), "op")
            _raises_everywhere(sub, TypeError, lambda: h.allreduce([1.0] if rank == 0 else x), "x")
            _raises_everywhere(sub, TypeError, lambda: h.allgather(np.array(["a"]) if rank == 1 else x), "numeric")
            _raises_everywhere(sub, ValueError, lambda: h.allreduce(x, out=np.ones(9) if rank == 0 else None), "out")
            _raises_everywhere(sub, ValueError, lambda: h.allreduce(x, schedule="auto"), "cost model")
            _raises_everywhere(sub, ValueError, lambda: h.allreduce(x, level=5), "level")
            assert np.array_equal(h.allreduce(x), x * sub.size)  # still usable afterwards

    _on_sub(2, check)


@pytest.mark.mpi(min_size=4)
def test_bad_levels_fail_on_every_rank():
    def check(sub):
        rank = sub.rank
        _raises_everywhere(sub, ValueError, lambda: Hierarchy(sub, levels=[3]), "does not divide")
        _raises_everywhere(sub, ValueError, lambda: Hierarchy(sub, levels=[2] if rank else [1]), "same on every rank")
        _raises_everywhere(sub, ValueError, lambda: Hierarchy(sub, levels=[4, 2]), "grow outwards")
        _raises_everywhere(sub, TypeError, lambda: Hierarchy(sub, levels=[2.0] if rank == 2 else [2]), "levels[0]")
        _raises_everywhere(sub, ValueError, lambda: Hierarchy(sub, levels=[2], ranks_per_node=2), "no 'node'")
        _raises_everywhere(sub, ValueError, lambda: Hierarchy(sub, levels=["node"], ranks_per_node=[3, 1]),
                           "different sizes")
        _raises_everywhere(sub, ValueError, lambda: Hierarchy(sub, levels=["rack"]), "'node' or 'switch'")
        _raises_everywhere(sub, ValueError, lambda: Hierarchy(sub, levels=["switch"]), "SLURM_TOPOLOGY_ADDR")
        with Hierarchy(sub, levels=[2], names=["pair"]) as h:
            assert h.names == ("pair", "world") and h.levels[0].factor == 2

    _on_sub(4, check)


# --------------------------------------------------------------------------- auto schedule


@pytest.mark.mpi(min_size=4)
def test_auto_schedule_follows_the_model():
    def check(sub):
        rank = sub.rank
        slow_top = CostModel.uniform(2, bandwidth_Bps=1e9)
        slow_top = CostModel((slow_top.levels[0], LevelCost("world", 1e-3, 1e6)))
        with Hierarchy(sub, levels=[2], model=slow_top) as h:
            assert h.choose("allreduce", 1 << 20, np.float64) == (0, 1)  # a slow top: stay hierarchical
            x = _data(rank, "int64", "sum", 1000)
            ref = np.empty_like(x)
            sub.Allreduce(x, ref)
            h.reset_traffic()
            assert np.array_equal(h.allreduce(x, schedule="auto"), ref)
            assert h.traffic["world"] == 2 * (2 - 1) * (1000 // 2 // 2) * 8
        with Hierarchy(sub, levels=[2], model="measure") as h:
            assert h.model.levels[0].alpha_s > 0 and len(h.model.levels) == 2
            assert len(set(sub.allgather(repr(h.model.to_dict())))) == 1
            assert np.array_equal(h.allreduce(x, schedule="auto"), ref)
        _raises_everywhere(sub, ValueError, lambda: Hierarchy(sub, levels=[2], model=CostModel.uniform(3)),
                           "3 levels")

    _on_sub(4, check)


@pytest.mark.mpi(min_size=2)
def test_floats_agree_with_flat_ring_to_rounding_and_bitwise_across_ranks():
    def check(sub):
        with Hierarchy(sub, levels=[1]) as h:
            x = _data(sub.rank, "float32", "sum", 4099, seed=5) * 1e3
            ring = ring_allreduce(sub, x)
            hier = h.allreduce(x)
            assert _close(hier, ring, _abs_sum(sub, x), sub.size) and _same_everywhere(sub, hier)

    _on_sub(2, check)


@pytest.mark.gpu
@pytest.mark.mpi(min_size=4)
def test_device_arrays(cupy):
    """CuPy arrays through every collective (the rings stage or go CUDA-aware as comms.ring decides)."""
    def check(sub):
        rank = sub.rank
        cupy.cuda.Device(rank % cupy.cuda.runtime.getDeviceCount()).use()
        with Hierarchy(sub, levels=[2]) as h:
            x = _data(rank, "int64", "sum", 1001)
            ref = np.empty_like(x)
            sub.Allreduce(x, ref)
            counts, displs = ring_blocks(1001, 4)
            for sched in ("hierarchical", "flat"):
                y = h.allreduce(cupy.asarray(x), schedule=sched)
                assert isinstance(y, cupy.ndarray) and np.array_equal(y.get(), ref)
                rs = h.reduce_scatter(cupy.asarray(x), schedule=sched)
                assert np.array_equal(rs.get(), ref[displs[rank]:displs[rank] + counts[rank]])
                assert np.array_equal(h.allgather(rs, schedule=sched).get(), ref)

    _on_sub(4, check)
