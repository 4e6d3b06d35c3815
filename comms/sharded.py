"""Training state over a Hierarchy: ZeRO-3 shards, a secondary copy in a fast level (ZeRO++ hpZ), 3 levels."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union

import numpy as np

from hpcore.arrays import array_module, is_device_array
from hpcore.boundary import agree
from hpcore.errors import HpcoreError, MismatchError

from .hierarchy import Hierarchy, Traffic
from .ring import ring_blocks

__all__ = ["ShardedState", "SGD", "Adam", "Variant"]

Variant = Literal["zero3", "hpz", "hpz3"]
Phase = Literal["forward", "backward"]


@dataclass
class SGD:
    """Plain SGD, optionally with momentum: ``v = momentum * v + g; p -= lr * v``."""

    lr: float = 1e-2
    momentum: float = 0.0

    def init(self, shard) -> dict:
        """The optimizer state of one shard (momentum buffer or none). Not collective."""
        xp = array_module(shard)
        return {"velocity": xp.zeros_like(shard)} if self.momentum else {}

    def update(self, param, grad, state: dict, step: int) -> None:
        """One step on ``param`` in place from ``grad`` (``step`` counts from 1). Not collective."""
        if self.momentum:
            v = state["velocity"]
            v *= self.momentum
            v += grad
            grad = v
        param -= self.lr * grad


@dataclass
class Adam:
    """Adam (Kingma & Ba) with bias correction; state ``m``, ``v`` like the shard."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def init(self, shard) -> dict:
        """The optimizer state of one shard (first and second moments). Not collective."""
        xp = array_module(shard)
        return {"m": xp.zeros_like(shard), "v": xp.zeros_like(shard)}

    def update(self, param, grad, state: dict, step: int) -> None:
        """One Adam step on ``param`` in place from ``grad`` (``step`` from 1, for bias correction). Not collective."""
        xp = array_module(param)
        m, v = state["m"], state["v"]
        m *= self.beta1
        m += (1 - self.beta1) * grad
        v *= self.beta2
        v += (1 - self.beta2) * grad * grad
        mhat = m / (1 - self.beta1 ** step)
        vhat = v / (1 - self.beta2 ** step)
        param -= self.lr * mhat / (xp.sqrt(vhat) + self.eps)


class ShardedState:
    """A flat parameter vector, its gradients and optimizer state, partitioned over a hierarchy.

    Collective on ``hierarchy.comm`` to construct; the hooks are collective as stated. Every
    rank passes the same ``params`` (checked: size, dtype and a checksum).

    * **Primary shard** (ZeRO-3): rank ``r`` owns block ``r`` of ``ring_blocks(count, size)``
      of the parameters, of the reduced gradients and of the optimizer state; only it updates
      that block.
    * **Secondary copy** (ZeRO++ hpZ): with ``secondary`` a level below the top, each group of
      that level also holds the whole parameter vector, partitioned over its members. It is
      refreshed from the forward gather (a slice, no messages) and serves the backward gather,
      which then never leaves the group: no parameter bytes cross the slower levels twice per step.
    * **3-level variant** (``variant="hpz3"``, after Xu et al. 2025 on Frontier): the secondary copy
      inside the innermost level (the GCD pair, 200 GB/s), and every primary gather and gradient
      reduce-scatter hierarchical over pair / node / world. Xu et al. tune which state lives at
      which level; this class keeps the optimizer state and the primary shard over all ranks.

    Parameters
    ----------
    hierarchy : Hierarchy
    params : array, any shape
        The initial parameters, equal on every rank; copied (the shards own their memory).
    variant : {"zero3", "hpz", "hpz3"}, optional
        ``"zero3"``: no secondary copy; ``"hpz"``: secondary inside the level below the top
        (the node); ``"hpz3"``: secondary inside level 0 (the pair). Ignored when
        ``secondary`` is given.
    secondary : int or level name or None
        The level that holds the secondary copy (None: none).
    optimizer : SGD, Adam or an object with ``init(shard) -> state`` and
        ``update(param, grad, state, step)`` (in place)
    schedule : schedule of the primary gathers and gradient reduce-scatters (see
        :meth:`Hierarchy.allreduce`); default hierarchical over every level.
    average : bool
        Divide reduced gradients by the number of ranks (floating dtypes only).

    Attributes
    ----------
    param_shard, grad_shard : arrays (this rank's primary blocks; ``grad_shard`` None until reduced)
    secondary_shard : array or None
    traffic : dict ``{"gather_forward", "gather_backward", "reduce_gradients": Traffic}``
        Bytes this rank sent per level in each hook, summed over calls.

    Examples
    --------
    Run with ``mpiexec -n 4``:

    >>> h = Hierarchy(MPI.COMM_WORLD, levels=[2])
    >>> state = ShardedState(h, np.zeros(1000), variant="hpz", optimizer=SGD(lr=0.1))
    >>> p = state.gather_params("forward")      # loss forward with p ...
    >>> p = state.gather_params("backward")     # ... gradients g with p
    >>> state.reduce_gradients(g); state.step()
    """

    def __init__(self, hierarchy: Hierarchy, params, *, variant: Optional[Variant] = None,
                 secondary: Union[int, str, None] = None, optimizer=None, schedule="hierarchical",
                 average: bool = True):
        if not isinstance(hierarchy, Hierarchy):
            raise TypeError(f"hierarchy: expected a comms.Hierarchy, got {type(hierarchy).__name__}")
        self.hierarchy = h = hierarchy
        comm = h.comm
        lay = h.layout
        error = None
        sec = None
        try:
            if not (isinstance(params, np.ndarray) or is_device_array(params)):
                raise TypeError(f"params: expected a NumPy or CuPy array, got {type(params).__name__}")
            if params.dtype.kind not in "iufc":
                raise TypeError(f"params: expected a numeric dtype, got {params.dtype}")
            if secondary is not None:
                sec = lay.level_index(secondary)
            elif variant is not None:
                if variant not in ("zero3", "hpz", "hpz3"):
                    raise ValueError(f"variant: expected 'zero3', 'hpz' or 'hpz3', got {variant!r}")
                sec = {"zero3": None, "hpz": lay.num_levels - 2, "hpz3": 0}[variant]
                if sec is not None and sec < 0:
                    sec = None
            if sec is not None and sec >= lay.num_levels - 1:
                raise ValueError(f"secondary: level {lay.names[sec]!r} is the top; the secondary copy lives "
                                 f"inside a lower level ({list(lay.names[:-1])})")
            if optimizer is not None and not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
                raise TypeError(f"optimizer: expected SGD, Adam or an object with init() and update(), got "
                                f"{type(optimizer).__name__}")
            if average and params.dtype.kind not in "fc":
                raise TypeError(f"average=True needs a floating dtype, params are {params.dtype}; pass average=False")
            flat = params.reshape(-1)
            host = flat.get() if is_device_array(flat) else flat
            fields = {"size": int(flat.size), "dtype": flat.dtype, "secondary": sec,
                      "checksum": f"{zlib.crc32(np.ascontiguousarray(host).view(np.uint8)):08x}"}
        except Exception as exc:  # noqa: BLE001 - agreed on below
            error, fields = exc, {}
        try:
            agree(comm, error, what="ShardedState", **fields)
        except MismatchError as exc:
            raise ValueError(f"ShardedState: ranks passed different params (size, dtype, contents) or secondary "
                             f"levels ({exc})") from None
        self.shape = tuple(params.shape)
        self.dtype = params.dtype
        self.count = int(flat.size)
        self.secondary = sec
        self.schedule = schedule
        self.average = bool(average)
        self.optimizer = optimizer if optimizer is not None else SGD()
        counts, displs = ring_blocks(self.count, h.size)
        self._primary = (displs[h.rank], counts[h.rank])
        lo, n = self._primary
        self.param_shard = flat[lo:lo + n].copy()
        self.grad_shard = None
        self.opt_state = self.optimizer.init(self.param_shard)
        self.step_count = 0
        self.secondary_shard = None
        self._secondary_fresh = False
        if sec is not None:
            members = h.group(sec)
            counts, displs = ring_blocks(self.count, len(members))
            b = h.block_index(sec)
            self._slice = (displs[b], counts[b])
            lo, n = self._slice
            self.secondary_shard = flat[lo:lo + n].copy()
            self._secondary_fresh = True
        zero = Traffic(h.layout.names, [0] * lay.num_levels, [0] * lay.num_levels)
        self.traffic = {"gather_forward": zero, "gather_backward": zero, "reduce_gradients": zero}

    # ----------------------------------------------------------------- hooks

    def _count(self, key: str, before: Traffic) -> None:
        self.traffic[key] = self.traffic[key] + (self.hierarchy.traffic - before)

    def gather_params(self, phase: Phase = "forward"):
        """The whole parameter vector, shaped like the initial ``params`` (a new array).

        Collective on ``hierarchy.comm``. ``"forward"``: gathered from the primary shards over
        every level (and the secondary copy refreshed from it, without messages);
        ``"backward"``: from the secondary copy inside its level when there is one (no bytes
        above that level), else like forward. Every rank must call with the same phase.
        """
        h = self.hierarchy
        error = None
        if phase not in ("forward", "backward"):
            error = ValueError(f"phase: expected 'forward' or 'backward', got {phase!r}")
        agree(h.comm, error, what="ShardedState.gather_params", phase=phase)
        before = h.traffic
        if phase == "backward" and self.secondary is not None:
            if not self._secondary_fresh:
                raise HpcoreError("gather_params('backward'): the secondary copy is stale (step() ran since the "
                                  "last forward gather); call gather_params('forward') first")
            sched = self.schedule
            if not isinstance(sched, str):
                sched = tuple(i for i in h.layout.schedule(sched) if i <= self.secondary)
            full = h.allgather(self.secondary_shard, level=self.secondary, schedule=sched)
            self._count("gather_backward", before)
        else:
            full = h.allgather(self.param_shard, schedule=self.schedule)
            if self.secondary is not None:
                lo, n = self._slice
                self.secondary_shard[...] = full[lo:lo + n]
                self._secondary_fresh = True
            self._count("gather_forward" if phase == "forward" else "gather_backward", before)
        return full.reshape(self.shape)

    def reduce_gradients(self, grads):
        """Reduce every rank's full gradient and keep this rank's primary block (``grad_shard``).

        Collective on ``hierarchy.comm``: ``grads`` shaped like the parameters on every rank.
        Hierarchical reduce-scatter; divided by the number of ranks when ``average``. Returns
        ``grad_shard``.
        """
        h = self.hierarchy
        before = h.traffic
        g = h.reduce_scatter(grads, schedule=self.schedule)
        if g.size != self._primary[1] or g.dtype != self.dtype:
            raise HpcoreError(f"{h.rank}: reduced gradient block of {g.size} {g.dtype}, expected "
                              f"{self._primary[1]} {self.dtype}")  # pragma: no cover - reduce_scatter agreed on sizes
        if self.average:
            g /= h.size
        self._count("reduce_gradients", before)
        self.grad_shard = g
        return g

    def step(self, update: Optional[Callable] = None) -> None:
        """Apply the optimizer to this rank's primary shard. Not collective.

        ``update(param_shard, grad_shard, opt_state)`` replaces the optimizer for this step.
        The secondary copy is stale until the next forward gather.
        """
        if self.grad_shard is None:
            raise HpcoreError(f"rank {self.hierarchy.rank}: step() before reduce_gradients()")
        self.step_count += 1
        if update is not None:
            update(self.param_shard, self.grad_shard, self.opt_state)
        else:
            self.optimizer.update(self.param_shard, self.grad_shard, self.opt_state, self.step_count)
        self.grad_shard = None
        self._secondary_fresh = False

    # ----------------------------------------------------------------- reports

    def memory_per_rank(self) -> dict:
        """Bytes this rank holds: ``{"primary_params", "secondary_params", "gradients",
        "optimizer", "persistent", "gathered"}`` (gathered: the transient full vector a gather
        returns; gradients: the reduced block). Not collective."""
        item = self.dtype.itemsize
        opt = sum(int(a.nbytes) for a in self.opt_state.values() if hasattr(a, "nbytes"))
        prim = int(self.param_shard.nbytes)
        sec = int(self.secondary_shard.nbytes) if self.secondary_shard is not None else 0
        grads = self._primary[1] * item
        return {"primary_params": prim, "secondary_params": sec, "gradients": grads, "optimizer": opt,
                "persistent": prim + sec + grads + opt, "gathered": self.count * item}

    def bytes_per_level(self) -> dict:
        """``{hook: {level: bytes}}`` this rank sent (from :attr:`traffic`). Not collective."""
        return {k: dict(zip(t.names, t.bytes_sent)) for k, t in self.traffic.items()}

    def __repr__(self) -> str:
        sec = "none" if self.secondary is None else self.hierarchy.layout.names[self.secondary]
        return (f"ShardedState(count={self.count}, dtype={self.dtype}, secondary={sec}, "
                f"shard={self._primary[1]}, step={self.step_count})")
