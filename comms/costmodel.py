"""Alpha-beta cost model per hierarchy level: predicts flat and hierarchical ring collectives and picks the faster."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from .levels import COLLECTIVES

__all__ = ["LevelCost", "CostModel", "FRONTIER_SOURCES", "schedules", "schedule_name"]


FRONTIER_SOURCES = (
    "Bandwidths: OLCF Frontier User Guide, 'Frontier Compute Nodes' "
    "(https://docs.olcf.ornl.gov/systems/frontier_user_guide.html): 4 AMD MI250X per node, 2 GCDs each; "
    "the 2 GCDs of one MI250X linked by Infinity Fabric at 200 GB/s peak; GCDs on different MI250X at "
    "50-100 GB/s peak depending on the number of links (50 GB/s taken); 4 HPE Slingshot-11 NICs per node at "
    "200 Gb/s = 25 GB/s each (one flow uses one NIC; the node injects at most 4 x 25 = 100 GB/s). "
    "AMD's MI250 microarchitecture page gives 50 GB/s per 16-wide Infinity Fabric link. These are peak "
    "figures; MPI reaches less. Latencies (5 us on the node, 10 us between nodes for GPU buffers) and the "
    "20 us of Python per collective call are assumptions of the right order, not measurements. The 3-level "
    "layout (GCD pair / node / world) is that of Xu et al., 'Scaling Large Language Model Training on "
    "Frontier with Low-Bandwidth Partitioning', arXiv:2501.04266 (2025)."
)


@dataclass(frozen=True)
class LevelCost:
    """Cost of the links of one level.

    Attributes
    ----------
    name : str
    alpha_s : float
        Latency of one message over this level [s].
    bandwidth_Bps : float
        Bandwidth of one flow over one link of this level [bytes/s].
    group_bandwidth_Bps : float or None
        What all flows leaving one group of the level below share [bytes/s] (a node's NICs
        together); None when every flow has its own link.
    """

    name: str
    alpha_s: float
    bandwidth_Bps: float
    group_bandwidth_Bps: Optional[float] = None

    def __post_init__(self):
        if not (self.alpha_s >= 0 and math.isfinite(self.alpha_s)):
            raise ValueError(f"alpha_s: expected a finite latency >= 0 [s], got {self.alpha_s}")
        if not self.bandwidth_Bps > 0:
            raise ValueError(f"bandwidth_Bps: expected > 0 [bytes/s], got {self.bandwidth_Bps}")
        if self.group_bandwidth_Bps is not None and not self.group_bandwidth_Bps > 0:
            raise ValueError(f"group_bandwidth_Bps: expected None or > 0 [bytes/s], got {self.group_bandwidth_Bps}")


def schedules(num_levels: int) -> list:
    """Every schedule of a hierarchy of ``num_levels`` levels: the kept level boundaries, the top
    always kept. ``(L-1,)`` is flat, ``(0, 1, ..., L-1)`` fully hierarchical. Not collective."""
    inner = list(range(num_levels - 1))
    return [tuple([i for i in inner if mask >> i & 1] + [num_levels - 1]) for mask in range(1 << len(inner))]


def schedule_name(kept: Sequence[int], names: Sequence[str]) -> str:
    """``"flat"``, or the kept levels joined by ``/`` (``"node/world"``)."""
    kept = tuple(kept)
    if len(kept) == 1:
        return "flat"
    return "/".join(names[i] for i in kept)


def _ranges(kept: Sequence[int]) -> list:
    out, a = [], 0
    for b in kept:
        out.append((a, b))
        a = b + 1
    return out


@dataclass(frozen=True)
class CostModel:
    """Alpha-beta model of the ring collectives of :mod:`comms.ring` on a hierarchy of levels.

    Not collective, except :meth:`measure`. One :class:`LevelCost` per level, innermost first,
    the last for links between the largest groups (between nodes).

    A ring over merged levels ``a..b`` (``m`` members) takes ``m - 1`` steps per phase; one
    step moves ``z`` bytes per member and lasts ``max over levels p in a..b of alpha_p + z /
    bw_p``, where ``bw_p = min(bandwidth_p, group_bandwidth_p / flows)`` and ``flows``, the
    rings that leave one group at once, is the number of ranks per group of level ``a - 1``
    (1 for a flat ring, every rank of the node for the inter-node step of a hierarchical
    schedule). Allreduce: reduce-scatter down the kept levels, allreduce at the top,
    allgather back; reduce-scatter and allgather: one pass. Each ring call also pays
    ``call_overhead_s``; the hierarchy agrees once (a small allreduce, ``ceil(log2 size)``
    latencies of the top level) and its ring calls skip their own agreement
    (``agreed=True``), except that each ring allgather still gathers the row counts of its
    ring (``ceil(log2 m)`` latencies), as the hierarchical allgather does over ``comm``.
    Local copies (the permutation of reduce-scatter/allgather) and pipelining are not
    modelled.

    Attributes
    ----------
    levels : tuple of LevelCost
    call_overhead_s : float
        Host time of one collective call outside the transfers [s].
    source : str
        Where the numbers come from.
    reduce_Bps : float or None
        Local reduction throughput [bytes/s of each operand]: every reducing step also
        combines ``z`` received bytes with its own; None: free (GPU memory bandwidth).
    """

    levels: tuple
    call_overhead_s: float = 0.0
    source: str = ""
    reduce_Bps: Optional[float] = None
    names: tuple = field(default=(), compare=False)

    def __post_init__(self):
        levels = tuple(self.levels)
        if not levels or not all(isinstance(l, LevelCost) for l in levels):
            raise TypeError("levels: expected a non-empty sequence of LevelCost")
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "names", tuple(l.name for l in levels))
        if self.reduce_Bps is not None and not self.reduce_Bps > 0:
            raise ValueError(f"reduce_Bps: expected None or > 0 [bytes/s], got {self.reduce_Bps}")

    # ----------------------------------------------------------------- presets

    @classmethod
    def frontier(cls) -> "CostModel":
        """Frontier-like figures for levels (GCD pair, node, world) with 2 GCDs per pair and 8 per
        node: use factors ``(2, 4, nodes)``. Sources in :data:`FRONTIER_SOURCES`."""
        return cls((LevelCost("gcd_pair", 5e-6, 200e9),
                    LevelCost("node", 5e-6, 50e9),
                    LevelCost("world", 10e-6, 25e9, group_bandwidth_Bps=100e9)),
                   call_overhead_s=20e-6, source=FRONTIER_SOURCES)

    @classmethod
    def uniform(cls, num_levels: int, alpha_s: float = 5e-6, bandwidth_Bps: float = 5e9,
                call_overhead_s: float = 20e-6) -> "CostModel":
        """Every level alike (a machine without a hierarchy), e.g. for tests."""
        return cls(tuple(LevelCost(f"level{i}", alpha_s, bandwidth_Bps) for i in range(num_levels)),
                   call_overhead_s=call_overhead_s, source="uniform")

    # ----------------------------------------------------------------- predictions

    def _check(self, factors) -> tuple:
        factors = tuple(int(f) for f in factors)
        if not factors or any(f < 1 for f in factors):
            raise ValueError(f"factors: expected a non-empty sequence of ints >= 1, got {factors}")
        if len(factors) > len(self.levels):
            raise ValueError(f"factors: {len(factors)} levels given, the model has {len(self.levels)} "
                             f"({list(self.names)})")
        return factors

    def _flow_bw(self, p: int, flows: int) -> float:
        lc = self.levels[p]
        bw = lc.bandwidth_Bps
        if lc.group_bandwidth_Bps is not None:
            bw = min(bw, lc.group_bandwidth_Bps / max(1, flows))
        return bw

    def step_time(self, factors, a: int, b: int, nbytes: float) -> float:
        """One ring step over merged levels ``a..b`` moving ``nbytes`` per member [s]."""
        factors = self._check(factors)
        flows = math.prod(factors[:a])
        worst = 0.0
        for p in range(a, b + 1):
            if factors[p] > 1:
                worst = max(worst, self.levels[p].alpha_s + nbytes / self._flow_bw(p, flows))
        return worst

    def _calls(self, factors, nbytes: float, collective: str, kept):
        """``[(a, b, m, phases, bytes per step, reducing phases)]`` of the ring calls of a schedule."""
        rngs = [(a, b) for a, b in _ranges(kept) if math.prod(factors[a:b + 1]) > 1]
        calls = []
        c = float(nbytes)
        for k, (a, b) in enumerate(rngs):
            m = math.prod(factors[a:b + 1])
            if collective == "allreduce":
                calls.append((a, b, m, 2 if k == len(rngs) - 1 else 1, c / m, 1))
            elif collective == "reduce_scatter":
                calls.append((a, b, m, 1, c / m, 1))
            c /= m
        if collective == "allreduce":
            calls += [(a, b, m, 1, z, 0) for a, b, m, _, z, _ in reversed(calls[:-1])]
        elif collective == "allgather":
            c = float(nbytes)  # nbytes: the gathered result on every rank
            for a, b in rngs:
                m = math.prod(factors[a:b + 1])
                calls.append((a, b, m, 1, c / m, 0))
                c /= m
            calls.reverse()
        return calls

    def predict(self, factors, nbytes: float, collective: str = "allreduce", schedule="hierarchical") -> float:
        """Predicted time [s] of one collective over a hierarchy with these ``factors``.

        ``nbytes``: the array per rank for allreduce/reduce-scatter, the gathered result for
        allgather. ``schedule``: ``"hierarchical"``, ``"flat"`` or kept level indices.
        """
        factors = self._check(factors)
        kept = self._kept(schedule, len(factors))
        if collective not in COLLECTIVES:
            raise ValueError(f"collective: expected one of {COLLECTIVES}, got {collective!r}")
        size = math.prod(factors)
        if size == 1:
            return self.call_overhead_s
        top_alpha = max(self.levels[p].alpha_s for p in range(len(factors)) if factors[p] > 1)
        t = self.call_overhead_s + math.ceil(math.log2(size)) * top_alpha  # the one agreement
        if collective == "allgather":
            t += math.ceil(math.log2(size)) * top_alpha  # the row counts over comm
        for a, b, m, phases, z, reducing in self._calls(factors, nbytes, collective, kept):
            alpha = max(self.levels[p].alpha_s for p in range(a, b + 1) if factors[p] > 1)
            t += self.call_overhead_s
            if not reducing:  # a ring allgather gathers its row counts
                t += math.ceil(math.log2(m)) * alpha
            t += phases * (m - 1) * self.step_time(factors, a, b, z)
            if self.reduce_Bps:
                t += reducing * (m - 1) * z / self.reduce_Bps
        return t

    def traffic(self, factors, nbytes: float, collective: str = "allreduce", schedule="hierarchical") -> dict:
        """Bytes over each level's links: ``{level: {"total": all ranks, "max": busiest rank}}``.

        For ranks numbered consecutively within groups and ``nbytes`` divisible by the ring
        blocks (the model's continuous approximation); :attr:`Hierarchy.traffic` counts the
        exact integers of a run.
        """
        factors = self._check(factors)
        kept = self._kept(schedule, len(factors))
        size = math.prod(factors)
        total = [0.0] * len(factors)
        busiest = [0.0] * len(factors)
        for a, b, m, phases, z, _ in self._calls(factors, nbytes, collective, kept):
            sent = phases * (m - 1) * z  # per member
            rings = size // m
            for q in range(a, b + 1):
                if factors[q] == 1:
                    continue
                below = math.prod(factors[a:q])
                members = m / below * ((factors[q] - 1) / factors[q] if q < b else 1.0)
                if q < b and all(factors[j] == 1 for j in range(q + 1, b + 1)):
                    members = m / below
                total[q] += rings * members * sent
                if members > 0:  # level q lies in one range only; its calls use the same ring
                    busiest[q] += sent
        return {self.names[q] if q < len(self.names) else f"level{q}": {"total": total[q], "max": busiest[q]}
                for q in range(len(factors))}

    def _kept(self, schedule, num_levels: int) -> tuple:
        if isinstance(schedule, str):
            if schedule == "hierarchical":
                return tuple(range(num_levels))
            if schedule == "flat":
                return (num_levels - 1,)
            raise ValueError(f"schedule: expected 'hierarchical', 'flat' or kept level indices, got {schedule!r}")
        kept = sorted({int(i) for i in schedule} | {num_levels - 1})
        if kept[0] < 0 or kept[-1] != num_levels - 1:
            raise ValueError(f"schedule: level indices must lie in [0, {num_levels}), got {list(schedule)}")
        return tuple(kept)

    def pick(self, factors, nbytes: float, collective: str = "allreduce") -> tuple:
        """The fastest schedule and every prediction: ``(kept, {kept: seconds})``. Ties go to
        the schedule with fewer levels (fewer calls)."""
        factors = self._check(factors)
        times = {k: self.predict(factors, nbytes, collective, k) for k in schedules(len(factors))}
        best = min(times, key=lambda k: (times[k], len(k), k))
        return best, times

    # ----------------------------------------------------------------- storage

    def to_dict(self) -> dict:
        """The model as plain JSON-able data (:meth:`from_dict` reads it back). Not collective."""
        return {"levels": [asdict(l) for l in self.levels], "call_overhead_s": self.call_overhead_s,
                "source": self.source, "reduce_Bps": self.reduce_Bps}

    @classmethod
    def from_dict(cls, data: dict) -> "CostModel":
        """A model from :meth:`to_dict`'s data. Not collective."""
        reduce_Bps = data.get("reduce_Bps")
        return cls(tuple(LevelCost(**l) for l in data["levels"]), call_overhead_s=float(data.get("call_overhead_s", 0)),
                   source=str(data.get("source", "")), reduce_Bps=None if reduce_Bps is None else float(reduce_Bps))

    def save(self, path) -> None:
        """Write as JSON. Not collective (call it on one rank)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path) -> "CostModel":
        """Read :meth:`save`'s JSON. Not collective."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    # ----------------------------------------------------------------- measurement

    @classmethod
    def measure(cls, hierarchy, small_nbytes: int = 8, large_nbytes: int = 4 << 20, repeat: int = 7) -> "CostModel":
        """Measure latency and bandwidth of every level of ``hierarchy`` on this machine.

        Collective on ``hierarchy.comm``. For each level, every rank exchanges messages with
        its ring neighbours at that level (``Sendrecv`` right/left, all rings of the level at
        once, as a ring step runs), ``small_nbytes`` and ``large_nbytes``; the slowest rank's
        median per step gives ``alpha_s`` (small) and ``bandwidth_Bps`` (the large message's
        extra time). ``call_overhead_s`` is the median time of an empty ring allreduce on
        ``MPI.COMM_SELF`` (the host cost of one call); ``reduce_Bps`` from ``numpy.add`` of two
        ``large_nbytes`` float64 arrays while every rank does the same. The result is equal on
        every rank.
        Levels of one rank per group are given the values of the level above them.
        """
        from mpi4py import MPI

        from .ring import ring_allreduce

        comm = hierarchy.comm
        lay = hierarchy.layout
        L = lay.num_levels
        small = np.zeros(max(1, small_nbytes), dtype=np.uint8)
        large = np.zeros(max(2, large_nbytes), dtype=np.uint8)
        rs, rl = np.empty_like(small), np.empty_like(large)
        measured = [None] * L
        for i in range(L):
            if lay.factors[i] == 1:
                comm.Barrier()
                continue
            sub = hierarchy._comm_of(i, i)
            right, left = (sub.Get_rank() + 1) % sub.Get_size(), (sub.Get_rank() - 1) % sub.Get_size()
            times = {}
            for label, buf, rbuf in (("small", small, rs), ("large", large, rl)):
                samples = []
                for k in range(repeat + 2):
                    comm.Barrier()
                    t0 = time.perf_counter()
                    for _ in range(4):
                        sub.Sendrecv(buf, right, 11, rbuf, left, 11)
                    dt = (time.perf_counter() - t0) / 4
                    if k >= 2:
                        samples.append(dt)
                times[label] = comm.allreduce(float(np.median(samples)), op=MPI.MAX)
            alpha = times["small"]
            extra = max(times["large"] - times["small"], 1e-12)
            measured[i] = (alpha, large.nbytes / extra)
        empty = np.zeros(0)
        samples = []
        for k in range(repeat + 2):
            t0 = time.perf_counter()
            ring_allreduce(MPI.COMM_SELF, empty)
            if k >= 2:
                samples.append(time.perf_counter() - t0)
        overhead = comm.allreduce(float(np.median(samples)), op=MPI.MAX)
        a = np.ones(max(1, large_nbytes // 8))
        b, c = a.copy(), np.empty_like(a)
        samples = []
        for k in range(repeat + 2):
            comm.Barrier()
            t0 = time.perf_counter()
            np.add(a, b, out=c)
            if k >= 2:
                samples.append(time.perf_counter() - t0)
        reduce_Bps = a.nbytes / comm.allreduce(float(np.median(samples)), op=MPI.MAX)
        fill = next((m for m in measured if m is not None), (1e-6, 1e9))
        for i in range(L - 1, -1, -1):
            if measured[i] is None:
                measured[i] = measured[i + 1] if i + 1 < L and measured[i + 1] is not None else fill
        levels = tuple(LevelCost(lay.names[i], measured[i][0], measured[i][1]) for i in range(L))
        host = MPI.Get_processor_name()
        return cls(levels, call_overhead_s=overhead, reduce_Bps=reduce_Bps,
                   source=f"measured on {host} with {comm.Get_size()} ranks, levels "
                          f"{[(l.name, l.size) for l in lay.levels]}")
