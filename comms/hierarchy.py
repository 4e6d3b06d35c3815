"""Hierarchical collectives: ranks in nested levels (pair, node, world), ring collectives per level, bytes per level."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import numpy as np

from hpcore.arrays import array_module
from hpcore.boundary import agree, as_comm, as_op
from hpcore.errors import MismatchError
from hpcore.slurm.env import gather_topology_addrs, switch_depths

from .levels import Layout, ring_bytes_sent, ring_messages
from .ring import ring_allgather, ring_allreduce, ring_reduce_scatter
from .ring_engine import RingMismatchError, check_array, check_numeric_dtype, check_out, flat, ring_blocks

__all__ = ["Hierarchy", "HierarchyMismatchError", "Traffic"]

Collective = Literal["allreduce", "reduce_scatter", "allgather"]
Schedule = Union[Literal["hierarchical", "flat", "auto"], Sequence[Union[int, str]]]

class HierarchyMismatchError(RingMismatchError):
    """Ranks called a hierarchical collective with different sizes, dtypes, ops, schedules or
    levels (raised on every rank)."""

    hint = ("every rank must make the same Hierarchy call with the same element count (allgather: trailing shape), "
            "dtype, op, schedule and level")


# --------------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    """Bytes and messages this rank sent, per level (innermost first), since the last reset.

    A message's level is that of the link it crossed: the innermost level whose group holds
    sender and receiver. Counted from the ring schedule, never from the data.
    """

    names: tuple
    bytes_sent: list
    messages: list

    def __getitem__(self, name: str) -> int:
        """Bytes sent over the links of level ``name``."""
        return self.bytes_sent[self.names.index(name)]

    def as_dict(self) -> dict:
        """``{level name: {"bytes": n, "messages": m}}``."""
        return {n: {"bytes": b, "messages": m} for n, b, m in zip(self.names, self.bytes_sent, self.messages)}

    def __sub__(self, other: "Traffic") -> "Traffic":
        return Traffic(self.names, [a - b for a, b in zip(self.bytes_sent, other.bytes_sent)],
                       [a - b for a, b in zip(self.messages, other.messages)])

    def __add__(self, other: "Traffic") -> "Traffic":
        return Traffic(self.names, [a + b for a, b in zip(self.bytes_sent, other.bytes_sent)],
                       [a + b for a, b in zip(self.messages, other.messages)])


# --------------------------------------------------------------------------- argument checks


def _normalize_levels(levels, ranks_per_node) -> Optional[tuple]:
    """Local check of the ``levels`` argument; None means detect."""
    if levels is None:
        return None
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise TypeError(f"levels: expected None or a list such as [2, 4] or [2, 'node'], got {levels!r}")
    out = []
    for i, item in enumerate(levels):
        if isinstance(item, str):
            if item not in ("node", "switch"):
                raise ValueError(f"levels[{i}]: expected an int group size, 'node' or 'switch', got {item!r}")
            out.append(item)
        elif isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise TypeError(f"levels[{i}]: expected an int group size or 'node'/'switch', got "
                            f"{type(item).__name__} {item!r}")
        elif int(item) < 1:
            raise ValueError(f"levels[{i}]: group size must be >= 1, got {int(item)}")
        else:
            out.append(int(item))
    ints = [v for v in out if isinstance(v, int)]
    if ints != sorted(ints):
        raise ValueError(f"levels: group sizes must grow outwards (innermost first), got {list(levels)}")
    if len(set(s for s in out if isinstance(s, str))) != len([s for s in out if isinstance(s, str)]):
        raise ValueError(f"levels: 'node' and 'switch' may each appear once, got {list(levels)}")
    if ranks_per_node is not None and "node" not in out:
        raise ValueError(f"ranks_per_node={ranks_per_node!r} defines virtual nodes, but levels={list(levels)} "
                         "has no 'node' level; add 'node' to levels or leave ranks_per_node out")
    return tuple(out)


# --------------------------------------------------------------------------- the hierarchy


class Hierarchy:
    """Levels of ranks of one communicator (GPU pair, node, switch, world) and collectives over them.

    Collective on ``comm``: every rank constructs it with the same arguments (checked; a
    difference raises the same ``ValueError`` on every rank). Creates one sub-communicator
    per range of merged levels; :meth:`free` releases them.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or hpcore.Comm
    levels : list of int or str, optional
        Group sizes innermost first, inside the implicit top level (all of ``comm``): an int
        ``k`` splits each group of the level above, in rank order, into consecutive groups of
        ``k`` ranks; ``"node"`` is the node of :class:`hpcore.topology.Topology` (shared
        memory, or virtual with ``ranks_per_node``); ``"switch"`` the leaf switch from
        Slurm's ``SLURM_TOPOLOGY_ADDR``. ``levels=[2, 4]``: pairs inside groups of four
        inside the world; ``levels=[2, "node"]``: GCD pairs (consecutive local ranks) inside
        nodes. ``None`` detects: the node, then every Slurm switch level that splits the
        nodes; a detected level whose groups are unequal is left out with a warning.
    ranks_per_node : int or list of int, optional
        Virtual nodes for the ``"node"`` level (as ``Topology(ranks_per_node=...)``).
    source : {"auto", "shared", "slurm", "virtual"}
        How ``"node"`` is detected (as ``Topology``).
    names : list of str, optional
        Names of the levels given (the top is ``"world"``); default ``"group<k>"`` for an int
        ``k``, ``"node"``, ``"switch"``.
    model : CostModel, "measure" or None
        Cost model for ``schedule="auto"``; ``"measure"`` measures one now
        (:meth:`comms.costmodel.CostModel.measure`, collective, ~0.2 s).
    environ : mapping, optional
        Environment read for Slurm variables (``os.environ`` by default).

    Attributes
    ----------
    layout : Layout
        The groups, coordinates and rings (pure; equal on every rank).
    levels : tuple of Level
        ``(name, size, factor)`` per level, innermost first; the last is the world.

    Notes
    -----
    Results: integers (and MAX/MIN of anything) are exactly those of the flat ring and of
    ``MPI_Allreduce``. Floating-point sums and products are reduced in a different order
    than the flat ring, so they agree to rounding: within ``(size - 1) * eps * sum(|x_r|)``
    per element, as for any summation order. Every rank gets bit-identical results (each
    element is reduced once, then copied). ``allgather(reduce_scatter(x))`` equals
    ``allreduce(x)`` exactly for integers and to rounding for floats.

    Examples
    --------
    Run with ``mpiexec -n 4``:

    >>> from mpi4py import MPI
    >>> import numpy as np
    >>> with Hierarchy(MPI.COMM_WORLD, levels=[2]) as h:
    ...     y = h.allreduce(np.arange(10.0))
    ...     print(h.traffic.as_dict())
    """

    def __init__(self, comm, levels=None, ranks_per_node=None, *, source="auto", names=None, model=None,
                 environ=None):
        self._owned: list = []
        self._freed = False
        self._comms: dict = {}
        self._plans: dict = {}
        comm = as_comm(comm)
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        error, spec = None, None
        try:
            spec = _normalize_levels(levels, ranks_per_node)
            if names is not None:
                names = [str(n) for n in names]
                if spec is None or len(names) != len(spec):
                    raise ValueError(f"names: expected one name per given level ({0 if spec is None else len(spec)}), "
                                     f"got {names}")
            if model is not None and model != "measure" and not hasattr(model, "predict"):
                raise TypeError(f"model: expected a comms.costmodel.CostModel, 'measure' or None, got "
                                f"{type(model).__name__}")
        except Exception as exc:  # noqa: BLE001 - agreed on below
            error = exc
        try:
            agree(comm, error, what="Hierarchy", levels=spec, names=names, ranks_per_node=ranks_per_node,
                  source=source, model=isinstance(model, str) and model)
        except MismatchError as exc:
            raise ValueError(f"Hierarchy: levels, names, ranks_per_node, source and model must be the same on "
                             f"every rank ({exc})") from None
        self.layout = self._build_layout(spec, names, ranks_per_node, source, environ)
        if model is not None and model != "measure":
            self._check_model(model)  # equal on every rank: the layout is
        L = self.layout.num_levels
        for a in range(L):
            for b in range(a, L):
                if (a, b) == (0, L - 1) or self.layout.factor(a, b) == 1:
                    continue
                sub = comm.Split(self.layout.color(self.rank, a, b), self.layout.position(self.rank, a, b))
                self._owned.append(sub)
                self._comms[(a, b)] = sub
        self._link = {}
        for a in range(L):
            for b in range(a, L):
                if self.layout.factor(a, b) > 1:
                    self._link[(a, b)] = self.layout.ring_link_level(self.rank, a, b)
        self._bytes = [0] * L
        self._msgs = [0] * L
        self.model = None
        if model == "measure":
            from .costmodel import CostModel

            self.model = CostModel.measure(self)
        elif model is not None:
            self.model = model

    # ----------------------------------------------------------------- construction

    def _build_layout(self, spec, names, ranks_per_node, source, environ) -> Layout:
        """Gather the facts every level needs and nest the groups. Collective on ``comm``."""
        comm, size = self.comm, self.size
        auto = spec is None
        if auto:
            spec = ("node", "switch")
        facts: dict = {}
        if "node" in spec:
            from hpcore.topology import Topology

            with Topology(comm, ranks_per_node=ranks_per_node, source=source, environ=environ) as topo:
                node_of = [0] * size
                for n, ranks in enumerate(topo.nodes):
                    for r in ranks:
                        node_of[r] = n
            facts["node"] = node_of
        if "switch" in spec:
            facts["switch"] = gather_topology_addrs(comm, environ, required=not auto)
        # expand the spec into (name, kind, arg) levels, innermost first
        items = []
        for i, item in enumerate(spec):
            if isinstance(item, int):
                items.append((names[i] if names else f"group{item}", "int", item))
            elif item == "node":
                items.append((names[i] if names else "node", "node", None))
            else:
                depths = switch_depths(facts["switch"])  # leaf switch (longest prefix) first
                for d in depths:
                    nm = (names[i] if names else "switch") + ("" if d == depths[0] else str(depths[0] - d))
                    items.append((nm, "switch", d))
        if auto:
            kept = []
            for it in items:
                trial = kept + [it]
                try:
                    lay = self._nest(trial, facts)
                except ValueError as exc:
                    warnings.warn(f"Hierarchy: leaving out the detected level {it[0]!r}: {exc} "
                                  "(pass levels=... to choose the levels)", stacklevel=3)
                    continue
                if lay.factors[len(trial) - 1] == 1 or len(set(lay.group[len(trial) - 1])) == 1:
                    continue  # adds nothing: same groups as the level below, or everyone
                kept = trial
            items = kept
        return self._nest(items, facts)

    def _nest(self, items, facts) -> Layout:
        """Labels per level from the outermost level in: ints split the enclosing group."""
        size = self.size
        labels_out = []
        enclosing = [0] * size
        for name, kind, arg in reversed(items):
            groups: dict = {}
            for r in range(size):
                groups.setdefault(enclosing[r], []).append(r)
            lab = [None] * size
            if kind == "int":
                for g, mem in groups.items():
                    if len(mem) % arg:
                        raise ValueError(f"levels: group size {arg} ({name!r}) does not divide the group of "
                                         f"{len(mem)} ranks {mem[:8]}{'...' if len(mem) > 8 else ''} around it")
                    for j, r in enumerate(mem):
                        lab[r] = (g, j // arg)
            else:
                key = facts["node"] if kind == "node" else [a[:arg] if len(a) > arg else None
                                                             for a in facts["switch"]]
                if kind == "switch" and any(k is None for k in key):
                    raise ValueError("levels: SLURM_TOPOLOGY_ADDR is missing a switch level on some rank")
                where: dict = {}
                for r in range(size):
                    where.setdefault(key[r], set()).add(enclosing[r])
                split = [k for k, outer in where.items() if len(outer) > 1]
                if split:
                    raise ValueError(f"levels: {name!r} {split[0]!r} is split across groups of the level around it")
                for r in range(size):
                    lab[r] = (enclosing[r], key[r])
            labels_out.append(lab)
            index: dict = {}
            enclosing = [index.setdefault(v, len(index)) for v in lab]
        labels_out.reverse()
        names = [it[0] for it in items]
        if "world" in names:
            raise ValueError("names: 'world' is the name of the top level")
        return Layout(labels_out + [[0] * size], names + ["world"])

    def _check_model(self, model) -> None:
        n = len(getattr(model, "levels", ()))
        if n != self.layout.num_levels:
            raise ValueError(f"model: has {n} levels, this hierarchy {self.layout.num_levels} "
                             f"({list(self.layout.names)})")

    # ----------------------------------------------------------------- properties

    @property
    def levels(self) -> tuple:
        """``Level(name, size, factor)`` per level, innermost first (the last is the world)."""
        return self.layout.levels

    @property
    def names(self) -> tuple:
        """Level names, innermost first. Not collective."""
        return self.layout.names

    @property
    def coords(self) -> tuple:
        """This rank's coordinates, innermost level first (see :class:`Layout`)."""
        return self.layout.coords[self.rank]

    @property
    def traffic(self) -> Traffic:
        """Bytes and messages this rank sent per level since construction or :meth:`reset_traffic`
        (a snapshot). Not collective."""
        return Traffic(self.layout.names, list(self._bytes), list(self._msgs))

    def reset_traffic(self) -> None:
        """Zero the traffic counters of this rank. Not collective."""
        self._bytes[:] = [0] * len(self._bytes)
        self._msgs[:] = [0] * len(self._msgs)

    def traffic_summary(self) -> dict:
        """Every rank's traffic: ``{level: {"total": bytes over all ranks, "max": the busiest rank's
        bytes, "messages": total messages}}``. Collective on ``comm`` (one allgather)."""
        table = self.comm.allgather((self._bytes, self._msgs))
        out = {}
        for i, name in enumerate(self.layout.names):
            col = [t[0][i] for t in table]
            out[name] = {"total": int(sum(col)), "max": int(max(col)), "messages": int(sum(t[1][i] for t in table))}
        return out

    def group(self, level: Union[int, str]) -> list:
        """The ``comm`` ranks of this rank's group at ``level``, ascending. Not collective."""
        i = self.layout.level_index(level)
        return list(self.layout.members[i][self.layout.group[i][self.rank]])

    def block_index(self, level: Union[int, str, None] = None) -> int:
        """Which block of a collective restricted to ``level`` this rank owns: its position in
        its level group (its ``comm`` rank for the world). Not collective."""
        top = self.layout.num_levels - 1 if level is None else self.layout.level_index(level)
        return self.layout.position(self.rank, 0, top)

    def __repr__(self) -> str:
        lv = ", ".join(f"{l.name}={l.size}" for l in self.levels)
        return f"Hierarchy(rank={self.rank}, size={self.size}, levels=[{lv}], coords={self.coords})"

    # ----------------------------------------------------------------- schedule choice

    def choose(self, collective: Collective, count: int, dtype, level=None) -> tuple:
        """The schedule ``schedule="auto"`` takes: the cost model's fastest. Not collective.

        Returns the normalized schedule (kept level indices). Raises ``ValueError`` without a model.
        """
        if self.model is None:
            raise ValueError("schedule='auto' needs a cost model: pass model=CostModel(...) or model='measure' "
                             "to Hierarchy, or set hierarchy.model")
        top = self.layout.num_levels - 1 if level is None else self.layout.level_index(level)
        nbytes = int(count) * np.dtype(dtype).itemsize
        best, _ = self.model.pick(self.layout.factors[:top + 1], nbytes, collective)
        return self.layout.schedule(best, top)

    def _comm_of(self, a: int, b: int):
        if (a, b) == (0, self.layout.num_levels - 1):
            return self.comm
        return self._comms[(a, b)]

    def _record(self, a: int, b: int, collective: str, counts, position: int, itemsize: int) -> None:
        lvl = self._link[(a, b)]
        self._bytes[lvl] += ring_bytes_sent(collective, counts, position, itemsize)
        self._msgs[lvl] += ring_messages(collective, counts, itemsize)

    # ----------------------------------------------------------------- agreement

    def _prepare(self, what: str, x, op, schedule, level, rows_mode: bool, out=None):
        """Local checks, then one agreement over ``comm`` (:func:`hpcore.agree`); the ring
        collectives underneath then skip theirs (``agreed=True``). Returns ``(op name, kept,
        top, rows per rank or None)``; raises the same error on every rank."""
        error, name, kept, top, fields = None, "sum", (), self.layout.num_levels - 1, {}
        try:
            if self._freed:
                raise ValueError(f"Hierarchy.{what}: this Hierarchy was freed (free() or the end of its with block)")
            if what != "allgather":
                name = as_op(op)
            check_array(x, "x")
            check_numeric_dtype(x.dtype, name, "x")
            if out is not None:
                check_out(out, x, array_module(x), x.shape, x.dtype)
            top = self.layout.num_levels - 1 if level is None else self.layout.level_index(level)
            if isinstance(schedule, str) and schedule == "auto":
                kept = self.choose(what, x.size, x.dtype, top)
            else:
                kept = self.layout.schedule(schedule, top)
            shape = tuple(x.shape) if x.ndim else (1,)
            fields = {"trailing_shape": shape[1:]} if rows_mode else {"count": int(x.size), "op": name}
            fields.update(dtype=x.dtype, schedule=self._describe(kept, top))
        except Exception as exc:  # noqa: BLE001 - agreed on below
            error = exc
        agree(self.comm, error, what=f"Hierarchy.{what}", mismatch=HierarchyMismatchError, **fields)
        if not rows_mode:
            return name, kept, top, None
        rows = np.empty(self.size, dtype=np.int64)
        self.comm.Allgather(np.array([shape[0]], dtype=np.int64), rows)
        return name, kept, top, rows

    def _describe(self, kept, top) -> str:
        return "[" + ", ".join(self.layout.names[i] for i in kept) + f"] up to {self.layout.names[top]}"

    # ----------------------------------------------------------------- collectives

    def allreduce(self, x, op=None, out=None, *, schedule: Schedule = "hierarchical", level=None):
        """Element-wise reduction of ``x`` over all ranks of ``comm`` (or of each ``level`` group).

        Collective on ``comm``: every rank calls it with the same element count, dtype, op,
        schedule and level (agreed first by one small allreduce; a mismatch raises
        :class:`HierarchyMismatchError` on every rank). Reduce-scatter inside the innermost
        level, then inside each next level on the block left (``1/k`` of the data), an
        allreduce at the top, and allgathers back down, each a :mod:`comms.ring` collective.

        Parameters
        ----------
        x : array, any shape, numeric dtype (NumPy or CuPy). Not modified.
        op : MPI.SUM (default), MPI.PROD, MPI.MAX, MPI.MIN or "sum"/"prod"/"max"/"min".
        out : array like ``x``, optional
            Where the result goes (may be ``x``).
        schedule : "hierarchical" (default), "flat", "auto", or a list of levels
            Which level boundaries the collective stops at: ``"flat"`` is one ring over
            ``comm`` (the flat twin), ``"auto"`` the cost model's pick, ``[1]`` merges levels
            0 and 1 into one ring.
        level : int or name, optional
            Reduce only inside each group of this level (default: everyone).

        Returns
        -------
        array shaped like ``x`` (``out`` when given).
        """
        op_name, kept, top, _ = self._prepare("allreduce", x, op, schedule, level, False, out)
        src = flat(x)
        itemsize = x.dtype.itemsize
        rngs = [(a, b) for a, b in self.layout.ranges(kept) if self.layout.factor(a, b) > 1]
        if not rngs:
            result = src.copy()
        else:
            pieces = []
            cur = src
            for a, b in rngs[:-1]:
                m, p = self.layout.factor(a, b), self.layout.position(self.rank, a, b)
                counts, _ = ring_blocks(cur.size, m)
                nxt = ring_reduce_scatter(self._comm_of(a, b), cur, op_name, agreed=True)
                self._record(a, b, "reduce_scatter", counts, p, itemsize)
                pieces.append(counts)
                cur = nxt
            a, b = rngs[-1]
            counts, _ = ring_blocks(cur.size, self.layout.factor(a, b))
            cur = ring_allreduce(self._comm_of(a, b), cur, op_name, agreed=True)
            self._record(a, b, "allreduce", counts, self.layout.position(self.rank, a, b), itemsize)
            for (a, b), counts in zip(reversed(rngs[:-1]), reversed(pieces)):
                cur = ring_allgather(self._comm_of(a, b), cur, agreed=True)
                self._record(a, b, "allgather", counts, self.layout.position(self.rank, a, b), itemsize)
            result = cur
        result = result.reshape(x.shape)
        if out is not None:
            out[...] = result
            return out
        return result

    def _scatter_plan(self, kept, top, count: int):
        """(group members, flat index fn, order, counts, padded block or 0, order is the flat order)
        for a reduce-scatter; cached per (schedule, level, count)."""
        key = (kept, top, count)
        plan = self._plans.get(key)
        if plan is None:
            lay = self.layout
            members = self.group(top)

            def flat_index(r, _t=top):
                return lay.position(r, 0, _t)

            counts, _ = ring_blocks(count, len(members))
            order = lay.order(kept, members)
            pad = 0 if lay.scatter_exact(kept, members, counts, flat_index) else max(counts)
            identity = order == sorted(order, key=flat_index)
            plan = (members, flat_index, order, counts, pad, identity)
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def reduce_scatter(self, x, op=None, *, schedule: Schedule = "hierarchical", level=None):
        """Reduce ``x`` over all ranks and keep this rank's block of the flattened result.

        Collective on ``comm``, agreed as :meth:`allreduce`. The blocks are those of the flat
        :func:`comms.ring.ring_reduce_scatter`: rank ``r`` gets elements
        ``[displs[r], displs[r] + counts[r])`` of ``ring_blocks(x.size, size)`` (with
        ``level``: the member at :meth:`block_index` of each group gets that block of the
        group's reduction). The blocks are first permuted so that nested reduce-scatters,
        innermost level first, leave each rank exactly its block (one local copy of ``x``);
        where the nested balanced splits cannot match the flat blocks (ranks of a group not
        numbered consecutively), every block is padded to the largest.

        Returns
        -------
        1-D array of ``counts[rank]`` elements.
        """
        op_name, kept, top, _ = self._prepare("reduce_scatter", x, op, schedule, level, False)
        xp = array_module(x)
        src = flat(x)
        itemsize = x.dtype.itemsize
        members, flat_index, order, counts, pad, identity = self._scatter_plan(kept, top, int(src.size))
        _, displs = ring_blocks(int(src.size), len(members))
        rngs = [(a, b) for a, b in self.layout.ranges(kept) if self.layout.factor(a, b) > 1]
        if not rngs:
            return src.copy()
        if identity and not pad:
            buf = src
        else:
            buf = xp.zeros(pad * len(members), dtype=src.dtype) if pad else xp.empty(src.size, dtype=src.dtype)
            pos = 0
            for r in order:
                f = flat_index(r)
                buf[pos:pos + counts[f]] = src[displs[f]:displs[f] + counts[f]]
                pos += pad if pad else counts[f]
        cur = buf
        for a, b in rngs:
            m, p = self.layout.factor(a, b), self.layout.position(self.rank, a, b)
            cs, _ = ring_blocks(cur.size, m)
            cur = ring_reduce_scatter(self._comm_of(a, b), cur, op_name, agreed=True)
            self._record(a, b, "reduce_scatter", cs, p, itemsize)
        mine = counts[flat_index(self.rank)]
        return cur[:mine].copy() if pad else cur

    def allgather(self, x, *, schedule: Schedule = "hierarchical", level=None):
        """Concatenate every rank's ``x`` along axis 0, in rank order, on every rank.

        Collective on ``comm``: every rank passes shape ``(rows_r, *tail)`` with the same
        ``tail`` and dtype (``rows_r`` may differ, as ``Allgatherv``); one small allgather checks
        that before data moves. Allgathers from the outermost level in, so the slow level
        carries only each rank's own rows; then one local copy puts the blocks in rank order.
        With ``level``: concatenation inside each group of that level, in :meth:`block_index`
        order.

        Returns
        -------
        array of shape ``(sum of rows_r, *tail)``.
        """
        _, kept, top, table = self._prepare("allgather", x, None, schedule, level, True)
        xp = array_module(x)
        src = flat(x)
        tail = tuple(x.shape[1:]) if x.ndim else ()
        row = int(np.prod(tail)) if tail else 1
        itemsize = x.dtype.itemsize
        lay = self.layout
        members = self.group(top)
        rows = {r: int(table[r]) for r in members}
        all_rngs = lay.ranges(kept)
        live = [k for k, (a, b) in enumerate(all_rngs) if lay.factor(a, b) > 1]
        cur = src
        for k in reversed(live):
            a, b = all_rngs[k]
            ring = lay.ring(self.rank, a, b)
            # before this step every rank holds the rows of the ranks that share its positions in ranges 0..k
            keys = lay.keys(kept, k)
            held: dict = {}
            for q in members:
                held[keys[q]] = held.get(keys[q], 0) + rows[q] * row
            cur = ring_allgather(self._comm_of(a, b), cur, agreed=True)
            self._record(a, b, "allgather", [held[keys[r]] for r in ring], ring.index(self.rank), itemsize)
        order = lay.order(kept, members) if live else members
        by_flat = sorted(members, key=lambda r: lay.position(r, 0, top))
        total_rows = sum(rows.values())
        if order == by_flat:
            out = cur
        else:
            out = xp.empty(total_rows * row, dtype=src.dtype)
            start, pos = {}, 0
            for r in by_flat:
                start[r] = pos
                pos += rows[r] * row
            pos = 0
            for r in order:
                n = rows[r] * row
                out[start[r]:start[r] + n] = cur[pos:pos + n]
                pos += n
        return out.reshape((total_rows,) + tail)

    # ----------------------------------------------------------------- lifecycle

    def free(self) -> None:
        """Free the sub-communicators; safe to call twice. Collective on ``comm``."""
        owned, self._owned = self._owned, []
        self._comms = {}
        self._freed = True
        for sub in owned:
            sub.Free()

    def __enter__(self) -> "Hierarchy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.free()
