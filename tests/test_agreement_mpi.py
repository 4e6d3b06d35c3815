"""Per-rank-different input through every public collective of hpcore and comms (issue 14).

Each case gives rank 0 (or the last rank) an argument that differs from the others'
and checks that every rank raises the same exception type with the expected words,
that none hangs (pytest-timeout) and that the communicator works afterwards.
Run with ``mpiexec -n 2`` and ``-n 4``.
"""

import dataclasses

import numpy as np
import pytest
from mpi4py import MPI
from mpi_checks import raises_everywhere, verdict

import hpcore
from comms import (
    CartDecomposition,
    HaloExchange,
    Hierarchy,
    HierarchyMismatchError,
    RingAttention,
    RingMismatchError,
    ShardedState,
    identity_placement,
    reorder,
    ring_allgather,
    ring_allgather_start,
    ring_allreduce,
    ring_allreduce_bucket,
    ring_allreduce_bucket_start,
    ring_allreduce_start,
    ring_reduce_scatter,
    ring_reduce_scatter_start,
)
from hpcore.topology import Topology

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(60)]


def _comm():
    return MPI.COMM_WORLD


def _first(comm) -> bool:
    return comm.Get_rank() == 0


def _wait(req):
    return req.wait()


# each case: (callable taking comm, expected type, words in every rank's message)
CASES = {
    # ring collectives: sizes, dtypes, ops, chunking and the collective itself
    "ring_allreduce-count": (lambda c: ring_allreduce(c, np.ones(5 + _first(c))), RingMismatchError, "count=6"),
    "ring_allreduce-dtype": (lambda c: ring_allreduce(c, np.ones(4, np.float32 if _first(c) else np.float64)),
                             RingMismatchError, "dtype=float32"),
    "ring_allreduce-op": (lambda c: ring_allreduce(c, np.ones(4), MPI.MAX if _first(c) else MPI.SUM),
                          RingMismatchError, "op=max"),
    "ring_allreduce-chunk": (lambda c: ring_allreduce(c, np.ones(256), chunk_nbytes=64 if _first(c) else 800),
                             RingMismatchError, "chunk_nbytes=64"),
    "ring_allreduce-bad-op-one-rank": (lambda c: ring_allreduce(c, np.ones(4), MPI.BAND if _first(c) else None),
                                       ValueError, "MPI.BAND"),
    "ring_allreduce-out-one-rank": (lambda c: ring_allreduce(c, np.ones(4), out=np.ones(3) if _first(c) else None),
                                    ValueError, "out: expected shape"),
    "ring_allreduce_start-count": (lambda c: _wait(ring_allreduce_start(c, np.ones(3 + _first(c)))),
                                   RingMismatchError, "count"),
    "ring_reduce_scatter-count": (lambda c: ring_reduce_scatter(c, np.ones(7 + _first(c))), RingMismatchError,
                                  "count"),
    "ring_reduce_scatter_start-op": (lambda c: _wait(ring_reduce_scatter_start(c, np.ones(4), "min" if _first(c)
                                                                               else "max")),
                                     RingMismatchError, "op=min"),
    "ring_allgather-trailing": (lambda c: ring_allgather(c, np.ones((2, 3 + _first(c)))), RingMismatchError,
                                "trailing_shape"),
    "ring_allgather-chunk": (lambda c: ring_allgather(c, np.ones((64, 2)), chunk_nbytes=64 if _first(c) else None),
                             RingMismatchError, "chunk_nbytes"),
    "ring_allgather_start-dtype": (lambda c: _wait(ring_allgather_start(c, np.ones(3, np.int32 if _first(c)
                                                                                    else np.int64))),
                                   RingMismatchError, "dtype"),
    "ring_allreduce_bucket-count": (lambda c: ring_allreduce_bucket(c, [np.ones(3), np.ones(2 + _first(c))]),
                                    RingMismatchError, "count"),
    "ring_allreduce_bucket_start-dtype": (lambda c: _wait(ring_allreduce_bucket_start(
        c, [np.ones(3, np.float32 if _first(c) else np.float64)])), RingMismatchError, "dtype"),
    "allreduce-vs-reduce_scatter": (lambda c: (ring_allreduce if _first(c) else ring_reduce_scatter)(c, np.ones(8)),
                                    RingMismatchError, "call=ring_allreduce"),
    "allreduce-vs-allgather": (lambda c: ring_allgather(c, np.ones(8)) if _first(c) else ring_allreduce(c, np.ones(8)),
                               RingMismatchError, "disagree on call"),
    # ring attention: flags and shapes
    "RingAttention-causal": (lambda c: RingAttention(c, causal=_first(c)), RingMismatchError, "causal=True"),
    "RingAttention-scale": (lambda c: RingAttention(c, scale=0.5 if _first(c) else None), RingMismatchError,
                            "scale=0.5"),
    "RingAttention-layout": (lambda c: RingAttention(c, causal=True, layout="contiguous" if _first(c) else "zigzag"),
                             RingMismatchError, "layout"),
    "RingAttention.forward-L": (lambda c: RingAttention(c).forward(*[np.ones((4 + 2 * _first(c), 3))] * 3),
                                RingMismatchError, "L_local"),
    # decomposition and halo
    "CartDecomposition-shape": (lambda c: CartDecomposition(c, (8, 8 + _first(c))), ValueError,
                                "differ between ranks"),
    "scatter-root": (lambda c: _with_decomposition(c, lambda d: d.scatter(np.zeros((8, 8)), root=int(_first(c)))),
                     hpcore.MismatchError, "root=1 on rank 0"),
    "gather-root": (lambda c: _with_decomposition(c, lambda d: d.gather(np.zeros(d.local_shape), root=int(_first(c)))),
                    hpcore.MismatchError, "root"),
    "gather-root-out-of-range-one-rank": (
        lambda c: _with_decomposition(c, lambda d: d.gather(np.zeros(d.local_shape), root=99 if _first(c) else 0)),
        ValueError, "root must be in"),
    "gather-dtype": (lambda c: _with_decomposition(c, lambda d: d.gather(
        np.zeros(d.local_shape, np.float32 if _first(c) else np.float64))), ValueError, "differ between ranks"),
    "HaloExchange-ghost": (lambda c: _with_decomposition(c, lambda d: HaloExchange(d, ghost=1 + _first(c))),
                           ValueError, "differ between ranks"),
    "HaloExchange-after-free": (lambda c: HaloExchange(_freed_decomposition(c)), ValueError, "was freed"),
    "halo-exchange-after-free": (lambda c: _exchange_after_free(c), ValueError, "was freed"),
    "scatter-after-free": (lambda c: _freed_decomposition(c).scatter(np.zeros((8, 8))), ValueError, "was freed"),
    # topology, hierarchy, sharded state, placement
    "Topology-ranks_per_node": (lambda c: Topology(c, ranks_per_node=1 if _first(c) else c.Get_size()),
                                ValueError, "same on every rank"),
    "Hierarchy-levels": (lambda c: Hierarchy(c, levels=[1] if _first(c) else [c.Get_size()]), ValueError,
                         "same on every rank"),
    "Hierarchy.allreduce-op": (lambda c: _with_hierarchy(c, lambda h: h.allreduce(np.ones(4), "max" if _first(c)
                                                                                  else "sum")),
                               HierarchyMismatchError, "op=max"),
    "Hierarchy.reduce_scatter-count": (lambda c: _with_hierarchy(c, lambda h: h.reduce_scatter(np.ones(4 + _first(c)))),
                                       HierarchyMismatchError, "count=5"),
    "Hierarchy.allgather-dtype": (lambda c: _with_hierarchy(c, lambda h: h.allgather(
        np.ones(2, np.float32 if _first(c) else np.float64))), HierarchyMismatchError, "dtype"),
    "Hierarchy.allreduce-vs-allgather": (lambda c: _with_hierarchy(c, lambda h: (h.allreduce if _first(c)
                                                                                 else h.allgather)(np.ones(4))),
                                         HierarchyMismatchError, "disagree on call"),
    "Hierarchy-after-free": (lambda c: _freed_hierarchy(c).allreduce(np.ones(3)), ValueError, "was freed"),
    "ShardedState-params": (lambda c: _with_hierarchy(c, lambda h: ShardedState(h, np.full(6, float(_first(c))))),
                            ValueError, "different params"),
    "ShardedState.gather_params-phase": (lambda c: _with_hierarchy(c, lambda h: ShardedState(h, np.ones(6))
                                                                   .gather_params("bad" if _first(c) else "forward")),
                                         ValueError, "phase"),
    "reorder-placement": (lambda c: reorder(c, _placement(c, reverse=_first(c))), ValueError,
                          "different placements"),
    # the agreement itself
    "agree-fields": (lambda c: hpcore.agree(c, what="x", n=int(_first(c))), hpcore.MismatchError, "n=1 on rank 0"),
}


def _with_decomposition(comm, fn):
    with CartDecomposition(comm, (8, 8)) as d:
        return fn(d)


def _freed_decomposition(comm):
    d = CartDecomposition(comm, (8, 8))
    d.free()
    return d


def _exchange_after_free(comm):
    d = CartDecomposition(comm, (8, 8), periodic=True)
    h = HaloExchange(d, ghost=1)
    field = np.zeros(tuple(n + 2 for n in d.local_shape))
    h.exchange(field)
    d.free()
    h.exchange(field)


def _with_hierarchy(comm, fn):
    with Hierarchy(comm, levels=[1]) as h:
        return fn(h)


def _freed_hierarchy(comm):
    h = Hierarchy(comm, levels=[1])
    h.free()
    return h


def _placement(comm, reverse: bool):
    size = comm.Get_size()
    p = identity_placement([0] * size, ["x"], size)
    return dataclasses.replace(p, order=tuple(reversed(p.order))) if reverse else p


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rank_raises_the_same_error(case):
    comm = _comm()
    fn, exc_type, words = CASES[case]
    raises_everywhere(comm, exc_type, lambda: fn(comm), words)
    # nothing is left half-done: the same communicator still reduces correctly
    verdict(comm, np.array_equal(ring_allreduce(comm, np.ones(3)), np.full(3, comm.Get_size())))


def test_agreed_skips_the_agreement_but_not_the_result():
    comm = _comm()
    x = np.arange(10.0) + comm.Get_rank()
    ref = ring_allreduce(comm, x)
    got = ring_allreduce(comm, x, agreed=True)
    verdict(comm, np.array_equal(ref, got))
    verdict(comm, np.array_equal(ring_reduce_scatter(comm, x, agreed=True), ring_reduce_scatter(comm, x)))
    verdict(comm, np.array_equal(ring_allgather(comm, x, agreed=True), ring_allgather(comm, x)))
