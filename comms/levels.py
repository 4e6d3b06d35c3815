"""Nested groups of ranks (pure geometry) and the bytes a ring collective sends.

What :class:`comms.Hierarchy`, the cost model and :class:`comms.ShardedState` share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from .ring import chunk_elements, ring_blocks

__all__ = ["Layout", "Level", "ring_bytes_sent", "ring_messages", "COLLECTIVES"]

COLLECTIVES = ("allreduce", "reduce_scatter", "allgather")


# --------------------------------------------------------------------------- traffic of one ring


def ring_bytes_sent(collective: str, counts: Sequence[int], position: int, itemsize: int) -> int:
    """Bytes the member at ``position`` sends in one ring collective of :mod:`comms.ring`. Not collective.

    ``counts``: the ring's blocks [elements] in ring order (``ring_blocks(count, m)[0]`` for
    allreduce and reduce-scatter, every member's contribution for allgather). From the ring
    schedule: at step ``g`` member ``p`` sends block ``(p - g - shift) % m``. A reduce-scatter
    (``m - 1`` steps, shift 1) sends every block but its own; an allgather (``m - 1`` steps)
    every block but ``p + 1``'s; an allreduce (``2(m - 1)`` steps) all but ``p + 1`` in its
    reduce phase and all but ``p + 2`` in its gather phase.
    """
    m = len(counts)
    if m <= 1:
        return 0
    total = int(sum(counts))
    if collective == "reduce_scatter":
        sent = total - counts[position]
    elif collective == "allgather":
        sent = total - counts[(position + 1) % m]
    elif collective == "allreduce":
        sent = 2 * total - counts[(position + 1) % m] - counts[(position + 2) % m]
    else:
        raise ValueError(f"collective: expected one of {COLLECTIVES}, got {collective!r}")
    return int(sent) * int(itemsize)


def ring_messages(collective: str, counts: Sequence[int], itemsize: int) -> int:
    """Messages each member sends in one ring collective (default chunking). Not collective.

    Every step is split into ``K = ceil(max(counts) / chunk)`` chunks, one message each,
    ``chunk`` from :func:`comms.ring.chunk_elements`.
    """
    m = len(counts)
    biggest = max(counts) if counts else 0
    if m <= 1 or biggest == 0:
        return 0
    k = -(-biggest // chunk_elements(None, biggest, itemsize))
    steps = 2 * (m - 1) if collective == "allreduce" else m - 1
    return steps * k


# --------------------------------------------------------------------------- pure geometry


@dataclass(frozen=True)
class Level:
    """One level of a hierarchy: ``size`` ranks per group, ``factor`` groups of the level
    below per group (ranks, for level 0). The last level is the whole communicator."""

    name: str
    size: int
    factor: int


class Layout:
    """Nested groups of ranks ``0 .. size-1``: the geometry behind a :class:`Hierarchy`.

    Not collective: pure and deterministic, so every rank computes the same answer.

    Parameters
    ----------
    labels : sequence over levels (innermost first) of sequences of ``size`` hashable labels
        Ranks with equal labels at level ``i`` form one level-``i`` group. Every group must
        lie inside one group of the next level, and all groups of one level must have the
        same size. A last level of one group (everyone) is added when missing.
    names : sequence of str, optional
        One name per level (the added top level is called ``"world"``).

    Notes
    -----
    Coordinates: ``c[0]`` is a rank's index among the members of its level-0 group (in rank
    order); ``c[i]`` the index of its level-``(i-1)`` group among those of its level-``i``
    group (ordered by lowest rank). A *range* ``(a, b)`` merges levels ``a..b`` into one ring:
    the ranks that share their level-``b`` group and ``c[0..a-1]``, ordered by the merged
    coordinate ``c[a] + f[a] * (c[a+1] + ...)``. The full range ``(0, L-1)`` is the flat ring,
    in rank order.
    """

    def __init__(self, labels: Sequence[Sequence], names: Optional[Sequence[str]] = None):
        labels = [list(lv) for lv in labels]
        if not labels:
            raise ValueError("labels: expected at least one level")
        size = len(labels[0])
        if size < 1:
            raise ValueError("labels: expected at least one rank")
        for i, lv in enumerate(labels):
            if len(lv) != size:
                raise ValueError(f"labels[{i}]: expected {size} labels (one per rank), got {len(lv)}")
        names = list(names) if names is not None else [f"level{i}" for i in range(len(labels))]
        if len(names) != len(labels):
            raise ValueError(f"names: expected {len(labels)} names, got {len(names)}")
        if len(set(labels[-1])) > 1:
            labels.append([0] * size)
            names.append("world")
        self.size = size
        self.num_levels = len(labels)
        self.names = tuple(str(n) for n in names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"names: level names must differ, got {list(self.names)}")
        # group index per level and rank, groups numbered by their lowest rank
        self.group = []
        self.members = []
        for lv in labels:
            index: dict = {}
            g = [index.setdefault(lab, len(index)) for lab in lv]
            mem = [[] for _ in index]
            for r, gi in enumerate(g):
                mem[gi].append(r)
            self.group.append(g)
            self.members.append(mem)
        for i in range(self.num_levels - 1):
            for gi, mem in enumerate(self.members[i]):
                outer = {self.group[i + 1][r] for r in mem}
                if len(outer) > 1:
                    raise ValueError(f"level {self.names[i]!r}: group of ranks {mem} straddles "
                                     f"{len(outer)} groups of level {self.names[i + 1]!r}; levels must nest")
        sizes = []
        for i, mem in enumerate(self.members):
            lens = sorted({len(m) for m in mem})
            if len(lens) > 1:
                shown = [len(m) for m in mem]
                raise ValueError(f"level {self.names[i]!r}: groups have different sizes {shown}; "
                                 "hierarchical collectives need equal groups at every level")
            sizes.append(lens[0])
        self.sizes = tuple(sizes)
        self.factors = tuple([sizes[0]] + [sizes[i] // sizes[i - 1] for i in range(1, len(sizes))])
        self.coords = []
        sub_index = []  # per level i >= 1: {level-(i-1) group index: its index inside its level-i group}
        for i in range(1, self.num_levels):
            idx = {}
            for mem in self.members[i]:
                inner = sorted({self.group[i - 1][r] for r in mem}, key=lambda gi: self.members[i - 1][gi][0])
                for j, gi in enumerate(inner):
                    idx[gi] = j
            sub_index.append(idx)
        for r in range(size):
            c = [self.members[0][self.group[0][r]].index(r)]
            for i in range(1, self.num_levels):
                c.append(sub_index[i - 1][self.group[i - 1][r]])
            self.coords.append(tuple(c))
        self._pos: dict = {}

    # ----------------------------------------------------------------- queries

    @property
    def levels(self) -> tuple:
        """``Level(name, size, factor)`` per level, innermost first."""
        return tuple(Level(n, s, f) for n, s, f in zip(self.names, self.sizes, self.factors))

    def level_index(self, level: Union[int, str]) -> int:
        """The index of ``level`` (an index, negative from the top, or a name)."""
        if isinstance(level, str):
            if level not in self.names:
                raise ValueError(f"level: unknown name {level!r}; levels are {list(self.names)}")
            return self.names.index(level)
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
            raise TypeError(f"level: expected an int or a level name, got {type(level).__name__} {level!r}")
        i = int(level)
        if not -self.num_levels <= i < self.num_levels:
            raise ValueError(f"level: expected -{self.num_levels} <= level < {self.num_levels}, got {i}")
        return i % self.num_levels

    def factor(self, a: int, b: int) -> int:
        """Members of one ring of range ``(a, b)``."""
        return int(math.prod(self.factors[a:b + 1]))

    def position(self, rank: int, a: int, b: int) -> int:
        """Position of ``rank`` in its ring of range ``(a, b)`` (its rank for the full range)."""
        table = self._pos.get((a, b))
        if table is None:
            table = self._pos[(a, b)] = [self._position(r, a, b) for r in range(self.size)]
        return table[rank]

    def _position(self, rank: int, a: int, b: int) -> int:
        if (a, b) == (0, self.num_levels - 1):
            return rank
        c = self.coords[rank]
        pos, mult = 0, 1
        for j in range(a, b + 1):
            pos += c[j] * mult
            mult *= self.factors[j]
        return pos

    def color(self, rank: int, a: int, b: int) -> int:
        """Which ring of range ``(a, b)`` ``rank`` belongs to (an int, equal for its members)."""
        g = self.group[b][rank]
        if a == 0:
            return g
        return g * self.factor(0, a - 1) + self.position(rank, 0, a - 1)

    def ring(self, rank: int, a: int, b: int) -> list:
        """The members of ``rank``'s ring of range ``(a, b)``, in ring order."""
        col = self.color(rank, a, b)
        mem = [r for r in self.members[b][self.group[b][rank]] if self.color(r, a, b) == col]
        return sorted(mem, key=lambda r: self.position(r, a, b))

    def link_level(self, u: int, v: int) -> int:
        """The innermost level whose group holds both ranks (-1 when ``u == v``)."""
        if u == v:
            return -1
        for i in range(self.num_levels):
            if self.group[i][u] == self.group[i][v]:
                return i
        return self.num_levels - 1  # pragma: no cover - the top level holds everyone

    def ring_link_level(self, rank: int, a: int, b: int) -> int:
        """The level of the link from ``rank`` to the next member of its ring of range ``(a, b)``."""
        members = self.ring(rank, a, b)
        p = members.index(rank)
        return self.link_level(rank, members[(p + 1) % len(members)])

    # ----------------------------------------------------------------- schedules

    def schedule(self, schedule, top: Optional[int] = None) -> tuple:
        """Normalize ``schedule`` to the tuple of kept level boundaries (``top`` always last).

        ``"hierarchical"``: every level; ``"flat"``: only ``top``; a sequence of level
        indices or names: those (``top`` added).
        """
        top = self.num_levels - 1 if top is None else top
        if isinstance(schedule, str):
            if schedule == "hierarchical":
                return tuple(range(top + 1))
            if schedule == "flat":
                return (top,)
            raise ValueError(f"schedule: expected 'hierarchical', 'flat', 'auto' or a sequence of levels, "
                             f"got {schedule!r}")
        try:
            items = list(schedule)
        except TypeError:
            raise TypeError(f"schedule: expected a string or a sequence of levels, got "
                            f"{type(schedule).__name__}") from None
        kept = sorted({self.level_index(i) for i in items} | {top})
        if kept[-1] != top:
            raise ValueError(f"schedule: levels {[self.names[i] for i in kept if i > top]} lie above "
                             f"{self.names[top]!r}, the top of this collective")
        return tuple(kept)

    def ranges(self, kept: Sequence[int]) -> list:
        """``[(a, b), ...]`` merged ranges of a normalized schedule, innermost first."""
        out, a = [], 0
        for b in kept:
            out.append((a, b))
            a = b + 1
        return out

    def all_schedules(self, top: Optional[int] = None) -> list:
        """Every normalized schedule up to ``top``: each subset of boundaries below it, plus ``top``."""
        top = self.num_levels - 1 if top is None else top
        inner = list(range(top))
        out = []
        for mask in range(1 << len(inner)):
            out.append(tuple([i for i in inner if mask >> i & 1] + [top]))
        return out

    def order(self, kept: Sequence[int], group_members: Sequence[int]) -> list:
        """``group_members`` in the order a hierarchical reduce-scatter leaves their blocks:
        sorted by (position in the innermost range, ..., position in the outermost)."""
        rngs = self.ranges(kept)
        return sorted(group_members, key=lambda r: tuple(self.position(r, a, b) for a, b in rngs))

    def keys(self, kept: Sequence[int], k: int) -> list:
        """Per rank: its positions in the ranges ``0..k`` of schedule ``kept`` (a tuple)."""
        key = ("keys", tuple(kept), k)
        out = self._pos.get(key)
        if out is None:
            rngs = self.ranges(kept)[:k + 1]
            out = self._pos[key] = [tuple(self.position(r, a, b) for a, b in rngs) for r in range(self.size)]
        return out

    def scatter_exact(self, kept: Sequence[int], group_members: Sequence[int], counts: Sequence[int],
                      flat_index) -> bool:
        """True when nested balanced splits of the permuted buffer hand every member exactly its
        flat block (``counts[flat_index(r)]`` elements), so no padding is needed."""
        order = self.order(kept, group_members)
        start, pos = {}, 0
        for r in order:
            start[r] = pos
            pos += counts[flat_index(r)]
        total = pos
        blocks: dict = {}  # few distinct (length, m): memoized
        for r in group_members:
            lo, length = 0, total
            for a, b in self.ranges(kept):
                m = self.factor(a, b)
                if m == 1:
                    continue
                cs, ds = blocks.get((length, m)) or blocks.setdefault((length, m), ring_blocks(length, m))
                p = self.position(r, a, b)
                lo, length = lo + ds[p], cs[p]
            if lo != start[r] or length != counts[flat_index(r)]:
                return False
        return True
