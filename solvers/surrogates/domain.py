"""Domain-parallel training (MG-TFNO's multi-grid patching): each rank's patch, a halo, and coarse global context.

After Kossaifi et al., "Multi-Grid Tensorized Fourier Neural Operator for High-Resolution PDEs"
(2023) and neuraloperator's ``MultigridPatching2D``: the input field is split into patches, each
patch is padded with its neighbours' cells, and for every level ``l = 1..levels`` a window of the
whole field sub-sampled by ``2^l`` (same pixel count as the padded patch, centred on the patch,
so it covers ``2^l`` times the area) is stacked as extra channels. The model sees
``channels * (1 + levels)`` input channels on the padded patch and predicts the padded patch;
the padding is cropped from the output. Here the patches are the blocks of a
:class:`comms.CartDecomposition` (one per rank, so the domain -- and the activations -- per
rank shrink with the number of ranks), the padding comes from the neighbours through
:class:`comms.HaloExchange` (zeros past the physical boundary; neuraloperator pads circularly),
and the coarse context is built from every rank's block means (``2^l x 2^l`` cells), gathered
so that every rank holds the coarse field (``1/4^l`` of the data).

The loss is the relative L2 error of each *whole* sample: per-sample squared norms of the error
and of the target are summed over the ranks (one small allreduce), so the loss and its gradient
are exactly those of the stitched prediction; the parameter gradients, one contribution per
patch, are summed over the ranks with :class:`DataParallel`'s bucketed ring allreduce (so the
model stays identical on every rank). The patch assembly and the loss run on host (NumPy) arrays.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Optional

import numpy as np

from hpcore import agree, as_comm

from .data import ArrayDataset
from .training import TrainConfig, Trainer

__all__ = ["MultigridPatches", "DomainTrainer", "activation_bytes"]


def _coarsen(a, f: int):
    """Block means of ``(batch, channels, nx, ny)`` over ``f x f`` cells."""
    if f == 1:
        return a
    b, c, nx, ny = a.shape
    return a.reshape(b, c, nx // f, f, ny // f, f).mean(axis=(3, 5))


class MultigridPatches:
    """Builds each rank's model input (padded patch + coarse context) from its block of a 2-D field.

    Collective on ``comm`` to construct (same arguments on every rank).

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or hpcore.Comm
    global_shape : (int, int)
        Cells of the whole field.
    padding : int
        Halo width [cells] taken from the neighbours (>= 0, at most a patch's extent).
    levels : int
        Number of coarse context levels (sub-sampling ``2, 4, ... 2^levels``).
    dims : (int, int), optional
        Process grid (0 = choose). Every patch extent must be divisible by ``2^levels``.

    Attributes
    ----------
    decomposition : comms.CartDecomposition
    local_slices : this rank's cells
    patch_shape : (nx + 2 padding, ny + 2 padding), the model's grid on this rank
    """

    def __init__(self, comm, global_shape, *, padding: int = 2, levels: int = 1, dims=None):
        from comms import CartDecomposition, HaloExchange

        base = as_comm(comm)
        error = None
        try:
            shape = tuple(int(n) for n in global_shape)
            if len(shape) != 2 or min(shape) < 2:
                raise ValueError(f"global_shape: expected two extents >= 2, got {global_shape!r}")
            if isinstance(padding, bool) or int(padding) != padding or padding < 0:
                raise ValueError(f"padding: expected an int >= 0, got {padding!r}")
            if isinstance(levels, bool) or int(levels) != levels or levels < 0:
                raise ValueError(f"levels: expected an int >= 0, got {levels!r}")
        except (TypeError, ValueError) as exc:
            error = exc
        agree(base, error, what="MultigridPatches", global_shape=str(global_shape), padding=str(padding),
              levels=str(levels), dims=str(dims))
        self.decomposition = d = CartDecomposition(base, shape, dims=dims)
        self.comm = d.comm
        self.padding, self.levels = int(padding), int(levels)
        error = None
        f = 2 ** self.levels
        for r in range(d.size):
            start, ext = d.extent_of(r)
            if any(s % f or n % f for s, n in zip(start, ext)):
                error = ValueError(f"levels={levels}: patch of rank {r} starts at {start} with {ext} cells, not "
                                   f"multiples of 2^levels = {f}; use fewer levels, other dims or a grid divisible "
                                   f"by {f} x the process grid {d.dims}")
                break
        if error is None and padding > min(d.min_local_extent()):
            error = ValueError(f"padding={padding} is wider than the smallest patch {d.min_local_extent()}")
        agree(base, error)
        self.halo = HaloExchange(d, ghost=self.padding, stencil="box", method="datatype") if self.padding else None
        self.local_slices = d.local_slices
        self.local_shape = d.local_shape
        self.patch_shape = tuple(n + 2 * self.padding for n in d.local_shape)
        self.global_shape = shape

    @property
    def channels_factor(self) -> int:
        """Input channels per data channel: the patch plus one per level."""
        return 1 + self.levels

    def local(self, a):
        """This rank's block ``(batch, channels, nx, ny)`` of a global ``(batch, channels, H, W)`` array.

        Not collective.
        """
        sx, sy = self.local_slices
        return np.ascontiguousarray(a[:, :, sx, sy])

    def inputs(self, block):
        """Model input ``(batch, channels * (1 + levels), nx + 2p, ny + 2p)`` from this rank's block
        ``(batch, channels, nx, ny)``. Collective on ``comm`` (halo exchange, coarse allgather)."""
        b, c, nx, ny = block.shape
        if (nx, ny) != self.local_shape:
            raise ValueError(f"rank {self.decomposition.rank}: block: expected (batch, channels, {nx}, {ny}) = "
                             f"local shape {self.local_shape}, got {block.shape}")
        p = self.padding
        px, py = self.patch_shape
        field = np.zeros((px, py, b, c), dtype=block.dtype)
        field[p:p + nx, p:p + ny] = block.transpose(2, 3, 0, 1)
        if self.halo is not None:
            self.halo.exchange(field)
        parts = [np.ascontiguousarray(field.transpose(2, 3, 0, 1))]
        d = self.decomposition
        for level in range(1, self.levels + 1):
            f = 2 ** level
            mine = _coarsen(block, f)
            blocks = self.comm.allgather(mine)
            coarse = np.zeros((b, c) + tuple(n // f for n in self.global_shape), dtype=block.dtype)
            for r, blk in enumerate(blocks):
                start, _ = d.extent_of(r)
                coarse[:, :, start[0] // f:start[0] // f + blk.shape[2], start[1] // f:start[1] // f + blk.shape[3]] \
                    = blk
            # window of px x py coarse cells centred on this patch's centre (zeros outside the domain)
            pad = max(px, py)
            padded = np.zeros((b, c) + tuple(n + 2 * pad for n in coarse.shape[2:]), dtype=block.dtype)
            padded[:, :, pad:pad + coarse.shape[2], pad:pad + coarse.shape[3]] = coarse
            cx = (self.local_slices[0].start + nx / 2) / f
            cy = (self.local_slices[1].start + ny / 2) / f
            x0 = int(round(cx - px / 2)) + pad
            y0 = int(round(cy - py / 2)) + pad
            parts.append(padded[:, :, x0:x0 + px, y0:y0 + py])
        return np.concatenate(parts, axis=1)

    def crop(self, out):
        """The patch interior of a model output ``(batch, channels, nx + 2p, ny + 2p)``. Not collective."""
        p = self.padding
        return out[:, :, p:p + self.local_shape[0], p:p + self.local_shape[1]] if p else out

    def uncrop_grad(self, g):
        """Gradient through :meth:`crop` (zeros on the padding). Not collective."""
        if not self.padding:
            return g
        out = np.zeros(g.shape[:2] + self.patch_shape, dtype=g.dtype)
        out[:, :, self.padding:self.padding + g.shape[2], self.padding:self.padding + g.shape[3]] = g
        return out

    def gather(self, block, root: int = 0):
        """Stitch ``(batch, channels, nx, ny)`` blocks into ``(batch, channels, H, W)`` on ``root``. Collective."""
        a = np.ascontiguousarray(np.moveaxis(block, (0, 1), (2, 3)))
        full = self.decomposition.gather(a, root=root)
        return None if full is None else np.moveaxis(full, (2, 3), (0, 1))

    def free(self) -> None:
        """Free the halo plan and the decomposition. Collective; safe to call twice."""
        if self.halo is not None:
            self.halo.free()
            self.halo = None
        self.decomposition.free()


class DomainTrainer(Trainer):
    """:class:`Trainer` over a :class:`MultigridPatches` split: every rank sees every sample of a
    batch, through its own patch. Collective on ``patches.comm``.

    The model's ``in_channels`` must be ``data channels * patches.channels_factor``. Losses are
    whole-sample relative L2 (``train.loss = "l2"``); test errors likewise.
    """

    loss_is_global = True

    def __init__(self, model, patches: MultigridPatches, train: ArrayDataset, tests=None,
                 config: Optional[TrainConfig] = None, *, log: bool = True, **parallel_options):
        cfg = config if config is not None else TrainConfig()
        error = None
        try:
            need = train.x.shape[1] * patches.channels_factor
            if model.config.get("in_channels") != need:
                raise ValueError(f"model: in_channels must be {need} (data channels {train.x.shape[1]} x "
                                 f"{patches.channels_factor}), got {model.config.get('in_channels')}")
            if cfg.loss != "l2":
                raise ValueError(f"train.loss: domain-parallel training uses 'l2', got {cfg.loss!r}")
            if tuple(train.x.shape[2:]) != patches.global_shape:
                raise ValueError(f"train: grid {train.x.shape[2:]} differs from the patches' {patches.global_shape}")
        except ValueError as exc:
            error = exc
        agree(patches.comm, error)
        super().__init__(model, train, tests, cfg, comm=patches.comm, log=log, **parallel_options)
        self.patches = patches

    def _global_l2(self, pred, y):
        """Whole-sample relative L2 errors ``(batch,)`` from local blocks and ``d(sum)/dpred``."""
        axes = (1, 2, 3)
        err = pred - y
        sums = np.stack([(err * err).sum(axis=axes), (y * y).sum(axis=axes)]).astype(np.float64)
        total = np.empty_like(sums)
        self.comm.Allreduce(sums, total)
        enorm, ynorm = np.sqrt(total[0]), np.sqrt(total[1])
        per = enorm / ynorm
        scale = np.where(enorm > 0, 1.0 / (np.where(enorm > 0, enorm, 1.0) * ynorm), 0.0)
        return per, err * scale.reshape(-1, 1, 1, 1).astype(pred.dtype)

    def _patch_batch(self, ds: ArrayDataset, index):
        p = self.patches
        x = p.inputs(p.local(ds.x[index]).astype(self.model.dtype))
        y = p.local(ds.y[index]).astype(self.model.dtype)
        return x, y

    def predict_patch(self, x):
        """Decoded prediction on this rank's patch interior. Not collective."""
        out = self.patches.crop(getattr(self.model, "predict", self.model.forward)(x))
        return self.normalizer.decode(out) if self.normalizer is not None else out

    def train_step(self, index) -> tuple:
        """One step on batch ``index`` (every rank, its patch of every sample). Collective.

        Returns ``(sum of the whole-sample losses, batch size)`` (the same on every rank).
        """
        model, par = self.model, self.parallel
        model.zero_grad()
        x, y = self._patch_batch(self.train, index)
        out = model.forward(x)
        inner = self.patches.crop(out)
        pred = self.normalizer.decode(inner) if self.normalizer is not None else inner
        per, dpred = self._global_l2(pred, y)
        dout = self.normalizer.decode_grad(dpred) if self.normalizer is not None else dpred
        dout = self.patches.uncrop_grad(dout * dout.dtype.type(1.0 / len(index)))
        par.backward(dout)
        par.step(self.optimizer)
        return float(per.sum()), len(index)

    def evaluate(self, ds: ArrayDataset, batch_size: Optional[int] = None) -> float:
        """Mean whole-sample relative L2 error over ``ds``. Collective."""
        bs = batch_size or self.config.eval_batch_size
        total = 0.0
        for i in range(0, len(ds), bs):
            x, y = self._patch_batch(ds, np.arange(i, min(i + bs, len(ds))))
            per, _ = self._global_l2(self.predict_patch(x), y)
            total += float(per.sum())
        return total / len(ds)


def activation_bytes(model, x, dy_scale: float = 1.0) -> dict:
    """Peak bytes NumPy allocates during one forward and backward of a fresh copy of ``model`` on
    ``x`` (traced with ``tracemalloc``, which NumPy reports to), beyond the input. Not collective.

    A fresh copy, because layers keep work buffers between steps: a model that already ran would
    allocate less during the measured call than it holds. Returns ``{"peak_bytes", "forward_s",
    "backward_s"}``.
    """
    model = model.copy() if hasattr(model, "copy") else model
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.clear_traces()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    out = model.forward(x)
    t1 = time.perf_counter()
    model.zero_grad()
    model.backward(np.full_like(out, dy_scale))
    t2 = time.perf_counter()
    _, peak = tracemalloc.get_traced_memory()
    if not was:
        tracemalloc.stop()
    return {"peak_bytes": int(peak - base), "forward_s": t1 - t0, "backward_s": t2 - t1}
