"""Hierarchy geometry without MPI: nesting, coordinates, rings, schedules, flat-block permutation, ring traffic."""

import itertools

import numpy as np
import pytest

from comms.levels import Layout, ring_bytes_sent, ring_messages
from comms.ring import chunk_elements, ring_blocks


def blocked(size, *group_sizes):
    """Labels of consecutive groups of the given sizes (innermost first)."""
    return [[r // g for r in range(size)] for g in group_sizes]


def test_levels_of_pairs_in_fours():
    lay = Layout(blocked(8, 2, 4), ["pair", "quad"])
    assert lay.names == ("pair", "quad", "world")
    assert lay.sizes == (2, 4, 8) and lay.factors == (2, 2, 2)
    assert lay.coords[5] == (1, 0, 1)  # rank 5 = 1 + 2 * (0 + 2 * 1)
    assert [lay.link_level(0, q) for q in range(8)] == [-1, 0, 1, 1, 2, 2, 2, 2]
    assert lay.ring(5, 0, 0) == [4, 5]
    assert lay.ring(5, 1, 1) == [5, 7]
    assert lay.ring(5, 2, 2) == [1, 5]
    assert lay.ring(5, 0, 1) == [4, 5, 6, 7]
    assert lay.ring(5, 1, 2) == [1, 3, 5, 7]
    assert lay.ring(5, 0, 2) == list(range(8))  # the flat ring, in rank order
    assert [lay.ring_link_level(r, 1, 2) for r in (1, 3, 5, 7)] == [1, 2, 1, 2]


def test_every_ring_partitions_the_ranks():
    lay = Layout(blocked(12, 2, 6), ["pair", "node"])
    for a in range(3):
        for b in range(a, 3):
            rings = {tuple(lay.ring(r, a, b)) for r in range(12)}
            members = sorted(r for ring in rings for r in ring)
            assert members == list(range(12)), (a, b)
            assert all(len(ring) == lay.factor(a, b) for ring in rings)
            for ring in rings:
                assert [lay.position(r, a, b) for r in ring] == list(range(len(ring)))


def test_world_added_and_degenerate_levels_kept():
    lay = Layout(blocked(4, 1, 4), ["one", "four"])
    assert lay.names == ("one", "four")  # the last level already holds everyone
    assert lay.factors == (1, 4)
    assert Layout([[0, 0, 1, 1]]).names == ("level0", "world")


@pytest.mark.parametrize("labels, match", [
    ([[0, 0, 0, 1]], "different sizes"),
    ([[0, 1, 1, 2], [0, 0, 1, 1]], "straddles"),
    ([[0, 0], [0]], "expected 2 labels"),
])
def test_bad_nesting(labels, match):
    with pytest.raises(ValueError, match=match):
        Layout(labels)


def test_schedules():
    lay = Layout(blocked(8, 2, 4), ["pair", "quad"])
    assert lay.schedule("hierarchical") == (0, 1, 2)
    assert lay.schedule("flat") == (2,)
    assert lay.schedule(["quad"]) == (1, 2)
    assert lay.schedule([0], top=1) == (0, 1)
    assert lay.ranges((1, 2)) == [(0, 1), (2, 2)]
    assert sorted(lay.all_schedules()) == sorted([(2,), (0, 2), (1, 2), (0, 1, 2)])
    with pytest.raises(ValueError, match="above"):
        lay.schedule([2], top=1)
    with pytest.raises(ValueError, match="unknown name"):
        lay.schedule(["node"])
    with pytest.raises(ValueError, match="expected 'hierarchical'"):
        lay.schedule("tree")


def nested_pieces(lay, kept, count, order, counts):
    """Simulate nested balanced splits of the permuted buffer: rank -> (start, length)."""
    out = {}
    for r in range(lay.size):
        lo, n = 0, sum(counts)
        for a, b in lay.ranges(kept):
            m = lay.factor(a, b)
            if m > 1:
                cs, ds = ring_blocks(n, m)
                p = lay.position(r, a, b)
                lo, n = lo + ds[p], cs[p]
        out[r] = (lo, n)
    return out


@pytest.mark.parametrize("size, groups", [(4, (2,)), (6, (2,)), (6, (3,)), (8, (2, 4)), (12, (2, 6)), (8, (4,))])
def test_blocked_layouts_need_no_padding(size, groups):
    """With ranks numbered consecutively inside groups, nested balanced splits of the permuted
    buffer hand each rank exactly its flat block, for every count and schedule."""
    lay = Layout(blocked(size, *groups))
    for kept in lay.all_schedules():
        for count in [0, 1, size - 1, size, size + 1, 3 * size + 5, 101]:
            counts, _ = ring_blocks(count, size)
            assert lay.scatter_exact(kept, list(range(size)), counts, lambda r: r), (kept, count)
            order = lay.order(kept, list(range(size)))
            start, pos = {}, 0
            for r in order:
                start[r] = pos
                pos += counts[r]
            pieces = nested_pieces(lay, kept, count, order, counts)
            assert all(pieces[r] == (start[r], counts[r]) for r in range(size))


def test_round_robin_nodes_need_padding_only_for_some_counts():
    lay = Layout([[r % 2 for r in range(4)]], ["node"])  # nodes {0, 2} and {1, 3}
    members = list(range(4))
    assert lay.coords[2] == (1, 0) and lay.coords[1] == (0, 1)
    exact = {c: lay.scatter_exact((0, 1), members, ring_blocks(c, 4)[0], lambda r: r) for c in range(12)}
    assert exact[6] is False  # flat blocks [2, 2, 1, 1]: node {0, 2} would need 3 + 3 split as 4 + 2
    assert exact[8] is True and exact[5] is True


def test_ring_traffic_formulas_follow_the_schedule():
    """Replay the ring schedule (member p sends block (p - g - shift) % m at step g) and compare."""
    for m in range(1, 7):
        for count in (0, 1, m + 1, 3 * m + 2, 50):
            counts, _ = ring_blocks(count, m)
            for p in range(m):
                rs = sum(counts[(p - g - 1) % m] for g in range(m - 1))
                ag = sum(counts[(p - g) % m] for g in range(m - 1))
                ar = sum(counts[(p - g) % m] for g in range(2 * (m - 1)))
                assert ring_bytes_sent("reduce_scatter", counts, p, 4) == 4 * rs
                assert ring_bytes_sent("allgather", counts, p, 4) == 4 * ag
                assert ring_bytes_sent("allreduce", counts, p, 4) == 4 * ar
    counts, _ = ring_blocks(10 << 20, 4)
    k = -(-max(counts) // chunk_elements(None, max(counts), 1))
    assert ring_messages("allreduce", counts, 1) == 6 * k
    assert ring_messages("allgather", [0, 0, 0], 8) == 0
    with pytest.raises(ValueError, match="collective"):
        ring_bytes_sent("alltoall", [1, 1], 0, 1)


def test_hierarchical_slow_level_bytes_below_flat():
    """Bytes over the top level's links, summed over ranks: hierarchical < flat ring (allreduce)."""
    for size, groups in [(4, (2,)), (8, (2, 4)), (8, (4,)), (6, (3,))]:
        lay = Layout(blocked(size, *groups))
        top = lay.num_levels - 1
        count = 120 * size
        totals = {}
        for kept in ((top,), tuple(range(top + 1))):
            total = 0
            rngs = [(a, b) for a, b in lay.ranges(kept) if lay.factor(a, b) > 1]
            for r in range(size):
                c = count
                for k, (a, b) in enumerate(rngs):
                    m = lay.factor(a, b)
                    counts, _ = ring_blocks(c, m)
                    kind = "allreduce" if k == len(rngs) - 1 else "reduce_scatter"
                    sent = ring_bytes_sent(kind, counts, lay.position(r, a, b), 8)
                    if kind == "reduce_scatter":
                        sent += ring_bytes_sent("allgather", counts, lay.position(r, a, b), 8)
                    if lay.ring_link_level(r, a, b) == top:
                        total += sent
                    c = counts[lay.position(r, a, b)]
            totals[len(kept)] = total
        assert totals[top + 1] < totals[1], (size, groups, totals)
        # the formula: every rank sends 2 (f - 1) / f of its n / (size / f) bytes over the top level
        f = lay.factors[top]
        assert totals[top + 1] == size * 2 * (f - 1) * (count // size) * 8


def test_level_index():
    lay = Layout(blocked(4, 2), ["pair"])
    assert lay.level_index("world") == 1 and lay.level_index(-1) == 1 and lay.level_index(0) == 0
    with pytest.raises(ValueError):
        lay.level_index(2)
    with pytest.raises(TypeError):
        lay.level_index(1.0)
    assert [lv.name for lv in lay.levels] == ["pair", "world"]


def test_all_permutation_orders_are_permutations():
    for size, groups in [(8, (2, 4)), (12, (3,)), (12, (2, 6))]:
        lay = Layout(blocked(size, *groups))
        for kept in lay.all_schedules():
            assert sorted(lay.order(kept, list(range(size)))) == list(range(size))
    lay = Layout(blocked(8, 2, 4))
    assert lay.order((0, 1, 2), list(range(8))) == [0, 4, 2, 6, 1, 5, 3, 7]  # digit reversal
    assert list(itertools.chain(lay.order((2,), list(range(8))))) == list(range(8))
    assert np.array_equal(sorted(lay.order((1, 2), list(range(8)))), np.arange(8))
