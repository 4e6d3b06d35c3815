"""Data-parallel training: per-rank batch shards, gradient buckets allreduced while backward runs, ZeRO-style state.

Each rank runs forward and backward on its shard of every batch, with the loss scaled so that
the per-rank gradients *sum* to the gradient of the full batch (the loss is the mean over the
whole batch, however unevenly it was split). :class:`DataParallel` plans gradient buckets once
from the model's layer ranges (about ``bucket_nbytes`` each, from the end of the flat buffer,
the same on every rank), and during ``model.backward`` its ``on_grads_ready`` hook starts
:func:`comms.ring_allreduce_bucket_start` on each bucket as soon as backward has finished it, and
drives every outstanding ring (``test()``) after each layer, since MPICH makes no progress in
the background -- PyTorch DDP's scheme. The ring gives every rank the same bits, so every rank
applies the same optimizer step to the same parameters: the model stays bitwise identical on
every rank and equals serial full-batch training up to the order of the floating-point sums.

With ``levels`` the buckets go through :meth:`comms.Hierarchy.allreduce` (blocking, one per
bucket, still launched from the hook). With ``sharded=True`` the optimizer state is partitioned
(:class:`comms.ShardedState`, ZeRO-style): gradients are reduce-scattered after backward, each
rank updates its block with the optimizer, and the parameters are allgathered back.
"""

from __future__ import annotations

import json
import time
import zlib

import numpy as np

from hpcore import agree, as_comm
from hpcore.arrays import array_module, is_device_array

__all__ = ["DataParallel", "ShardOptimizer", "plan_buckets"]


def plan_buckets(layer_ranges, bucket_nbytes: int, itemsize: int) -> list:
    """Gradient buckets ``[(start, stop), ...]`` from the end of the buffer toward the start. Not collective.

    ``layer_ranges``: ``(name, start, stop)`` tiling the buffer (``Model.layer_ranges()``). A bucket
    is whole layers, closed once it holds at least ``bucket_nbytes``; the last one takes the rest.
    """
    buckets, hi, lo = [], None, None
    for _, start, stop in sorted(layer_ranges, key=lambda r: -r[1]):
        if stop == start:
            continue
        if hi is None:
            hi = stop
        lo = start
        if (hi - lo) * itemsize >= bucket_nbytes:
            buckets.append((lo, hi))
            hi = None
    if hi is not None:
        buckets.append((lo, hi))
    return buckets


class ShardOptimizer:
    """Adapter that lets one of our optimizers (Adam/AdamW over a flat buffer) update a
    :class:`comms.ShardedState` block. Not collective.

    ``factory(params, grads) -> optimizer`` builds the optimizer over this rank's block on
    ``init``; :attr:`optimizer` is that object (give it to an LR schedule).
    """

    def __init__(self, factory):
        self.factory = factory
        self.optimizer = None
        self._grad = None

    def init(self, shard) -> dict:
        """Build the optimizer over ``shard``; its state arrays (for memory accounting)."""
        xp = array_module(shard)
        self._grad = xp.zeros_like(shard)
        self.optimizer = self.factory(shard, self._grad)
        return {"m": self.optimizer.m, "v": self.optimizer.v}

    def update(self, param, grad, state: dict, step: int) -> None:
        """One optimizer step of the block from its reduced gradient."""
        self._grad[...] = grad
        self.optimizer.step()


class DataParallel:
    """Data-parallel training of one model over the ranks of ``comm``.

    Collective on ``comm`` to construct: every rank passes a model of the same configuration;
    rank 0's parameters are broadcast to the others (as DDP does at wrap time).

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or hpcore.Comm
    model : solvers.surrogates.Model
    bucket_nbytes : int
        Target bucket size [bytes] (default 1 MiB).
    levels : sequence, optional
        Hierarchy levels (as :class:`comms.Hierarchy`); buckets then use the hierarchical
        allreduce (blocking per bucket).
    sharded : bool
        Optimizer state partitioned over the ranks (:class:`comms.ShardedState`); build the
        optimizer with :meth:`make_optimizer`.
    overlap : bool
        Start bucket allreduces from the backward hook (True) or all after backward (False:
        the baseline for the overlap fraction).

    Attributes
    ----------
    buckets : list of (start, stop), the bucket plan (same on every rank)
    stats : dict of accumulated seconds: ``backward_s`` (backward including the hook's work),
        ``wait_s`` (exposed communication: waiting after backward), ``steps``
    """

    def __init__(self, comm, model, *, bucket_nbytes: int = 1 << 20, levels=None, sharded: bool = False,
                 overlap: bool = True):
        self.comm = as_comm(comm)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        error = None
        try:
            if not (hasattr(model, "params") and hasattr(model, "grads") and hasattr(model, "backward")):
                raise TypeError(f"model: expected a solvers.surrogates Model, got {type(model).__name__}")
            if isinstance(bucket_nbytes, bool) or int(bucket_nbytes) != bucket_nbytes or bucket_nbytes < 1:
                raise ValueError(f"bucket_nbytes: expected an int >= 1, got {bucket_nbytes!r}")
        except (TypeError, ValueError) as exc:
            error = exc
        cfg = "" if error is not None else json.dumps(
            {k: v for k, v in getattr(model, "config", {}).items() if k != "seed"}, sort_keys=True, default=str)
        agree(self.comm, error, what="DataParallel", model_config=cfg,
              n=int(model.params.size) if error is None else 0, dtype=str(getattr(model, "dtype", "")),
              sharded=bool(sharded), levels=repr(levels), bucket_nbytes=int(bucket_nbytes) if error is None else 0)
        self.model = model
        self.overlap = bool(overlap)
        self.sharded = bool(sharded)
        self.buckets = plan_buckets(model.layer_ranges(), int(bucket_nbytes), model.params.dtype.itemsize)
        self._broadcast_params()
        self.hierarchy = None
        if levels is not None or sharded:
            from comms import Hierarchy

            self.hierarchy = Hierarchy(self.comm, levels if levels is not None else [])
        self.state = None
        self._pending: list = []
        self._launched = 0
        self._ready_lo = None
        self.stats = {"backward_s": 0.0, "wait_s": 0.0, "steps": 0}

    # ----------------------------------------------------------------- setup
    def _broadcast_params(self) -> None:
        if self.size == 1:
            return
        p = self.model.params
        if is_device_array(p):
            host = p.get()
            self.comm.Bcast(host, root=0)
            p[...] = array_module(p).asarray(host)
        else:
            self.comm.Bcast(p, root=0)

    def make_optimizer(self, factory):
        """The optimizer to step and schedule: ``factory(params, grads)`` over the whole buffer, or
        over this rank's block when ``sharded`` (then collective: builds the ShardedState)."""
        if not self.sharded:
            return factory(self.model.params, self.model.grads)
        from comms import ShardedState

        adapter = ShardOptimizer(factory)
        self.state = ShardedState(self.hierarchy, self.model.params, optimizer=adapter, average=False)
        return adapter.optimizer

    # ----------------------------------------------------------------- batches
    def shard(self, index):
        """This rank's contiguous part of a batch's sample indices (balanced split). Not collective."""
        n = len(index)
        lo = (n * self.rank) // self.size
        hi = (n * (self.rank + 1)) // self.size
        return index[lo:hi]

    # ----------------------------------------------------------------- gradients
    def _start(self, b: int) -> None:
        lo, hi = self.buckets[b]
        view = self.model.grads[lo:hi]
        if self.hierarchy is not None and not self.sharded:
            self.hierarchy.allreduce(view, out=view)
            return
        from comms import ring_allreduce_bucket_start

        # the bucket plan was agreed at construction (model, size, dtype, bucket size) and every rank
        # starts the same buckets in the same order: no per-bucket agreement round trip
        self._pending.append(ring_allreduce_bucket_start(self.comm, [view], out=[view], agreed=True))

    def _hook(self, start: int, stop: int) -> None:
        self._ready_lo = start
        while self._launched < len(self.buckets) and self.buckets[self._launched][0] >= start:
            self._start(self._launched)
            self._launched += 1
        for r in self._pending:
            r.test()

    def backward(self, dy):
        """``model.backward(dy)`` with this rank's gradients reduced over all ranks (summed). Collective.

        ``dy`` None: this rank has no samples in the batch; its gradient is zero but it takes
        part in the reductions. Returns ``dx`` (None for ``dy`` None).
        """
        model = self.model
        t0 = time.perf_counter()
        self._launched, self._pending = 0, []
        hook = self._hook if (self.size > 1 and self.overlap and not self.sharded) else None
        dx = None
        if dy is not None:
            dx = model.backward(dy, on_grads_ready=hook)
        t1 = time.perf_counter()
        if self.size > 1 and not self.sharded:
            while self._launched < len(self.buckets):
                self._start(self._launched)
                self._launched += 1
            for r in self._pending:
                r.wait()
            self._pending = []
        elif self.sharded:
            self.state.reduce_gradients(model.grads)
        t2 = time.perf_counter()
        self.stats["backward_s"] += t1 - t0
        self.stats["wait_s"] += t2 - t1
        return dx

    def step(self, optimizer) -> None:
        """Apply the optimizer; with ``sharded``, update this rank's block and allgather the
        parameters (collective). Not collective otherwise."""
        if self.sharded:
            self.state.step()
            self.model.params[...] = self.state.gather_params("forward").reshape(-1)
        else:
            optimizer.step()
        self.stats["steps"] += 1

    def time_allreduce(self, repeats: int = 3) -> float:
        """Median seconds of a blocking allreduce of the whole gradient in this plan's buckets
        (the communication that overlap hides). Collective."""
        times = []
        scratch = self.model.grads.copy()
        for _ in range(repeats):
            self.comm.Barrier()
            t0 = time.perf_counter()
            if self.size > 1:
                from comms import ring_allreduce_bucket_start

                views = [scratch[lo:hi] for lo, hi in self.buckets]
                reqs = [ring_allreduce_bucket_start(self.comm, [v], out=[v], agreed=True) for v in views]
                for r in reqs:
                    r.wait()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    # ----------------------------------------------------------------- checks and reports
    def params_digest(self) -> int:
        """CRC32 of this rank's parameter bytes. Not collective."""
        p = self.model.params
        host = p.get() if is_device_array(p) else p
        return zlib.crc32(np.ascontiguousarray(host).view(np.uint8))

    def same_on_every_rank(self) -> bool:
        """True when every rank's parameters are bitwise equal. Collective."""
        return len(set(self.comm.allgather(self.params_digest()))) == 1

    def memory_per_rank(self, optimizer=None) -> dict:
        """Bytes this rank holds for parameters, gradients and optimizer state. Not collective."""
        p = self.model.params
        out = {"params": int(p.nbytes), "grads": int(self.model.grads.nbytes)}
        if self.sharded and self.state is not None:
            m = self.state.memory_per_rank()
            out["optimizer"] = m["optimizer"]
            out["param_shard"] = m["primary_params"]
        elif optimizer is not None:
            out["optimizer"] = int(sum(getattr(optimizer, k).nbytes for k in ("m", "v") if hasattr(optimizer, k)))
        out["total"] = sum(v for k, v in out.items() if k != "param_shard") + out.get("param_shard", 0)
        return out

    def free(self) -> None:
        """Free the hierarchy's communicators. Collective; safe to call twice."""
        if self.hierarchy is not None:
            self.hierarchy.free()
            self.hierarchy = None
