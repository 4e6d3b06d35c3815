"""Training loop: seeded batches, Adam/AdamW with a schedule, evaluation, progress lines; serial or data-parallel.

:class:`Trainer` runs the same code on one rank and on many: the batch of each step (a seeded
permutation, identical on every rank) is split into per-rank shards by :class:`DataParallel`,
the loss of a shard is the sum of its per-sample losses divided by the *global* batch size, so
the gradients summed over ranks are those of the full batch. Outputs may be trained in
normalized units (``normalize_output``: neuraloperator's ``UnitGaussianNormalizer`` on ``y``,
with the loss taken on the decoded prediction against the raw ``y``, as neuraloperator's
trainer does). Test errors are the relative L2 error per sample, averaged.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from hpcore.arrays import array_module

from .data import ArrayDataset, GaussianNormalizer
from .parallel import DataParallel

__all__ = ["TrainConfig", "Trainer", "OPTIMIZERS", "SCHEDULES", "LOSSES"]

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("none", "step", "cosine")
LOSSES = ("l2", "h1")


@dataclass
class TrainConfig:
    """Training settings (the ``[train]`` table of a run configuration).

    ``lr`` and ``weight_decay`` as in ``torch.optim.Adam``/``AdamW``; ``schedule``: ``"cosine"``
    (period ``t_max`` epochs, 0 = ``epochs``), ``"step"`` (``lr *= gamma`` every ``step_size``
    epochs) or ``"none"``, stepped once per epoch; ``loss``: relative ``"l2"`` or ``"h1"``;
    ``seed`` drives the batch order.
    """

    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 8e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    t_max: int = 0
    step_size: int = 10
    gamma: float = 0.5
    loss: str = "l2"
    seed: int = 0
    normalize_output: bool = True
    eval_batch_size: int = 50
    eval_every: int = 1

    def validate(self) -> None:
        """Raise ValueError naming the first bad value. Not collective."""
        for key in ("epochs", "batch_size", "eval_batch_size", "step_size", "eval_every"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"train.{key}: expected an int >= 1, got {v!r}")
        if isinstance(self.t_max, bool) or not isinstance(self.t_max, int) or self.t_max < 0:
            raise ValueError(f"train.t_max: expected an int >= 0, got {self.t_max!r}")
        for key, options in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("loss", LOSSES)):
            if getattr(self, key) not in options:
                raise ValueError(f"train.{key}: expected one of {options}, got {getattr(self, key)!r}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise ValueError(f"train.lr: expected a finite number > 0, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"train.weight_decay: expected >= 0, got {self.weight_decay!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"train.gamma: expected 0 < gamma <= 1, got {self.gamma!r}")


class Trainer:
    """Train ``model`` on ``train`` and evaluate on ``tests``.

    Collective on ``comm`` when one is given (every rank passes the same data, config and a
    model of the same configuration; rank 0's initial parameters are used everywhere).

    Parameters
    ----------
    model : solvers.surrogates.Model
    train : ArrayDataset
    tests : ArrayDataset or dict of name -> ArrayDataset, optional
    config : TrainConfig
    comm : mpi4py communicator, optional
        Data-parallel over its ranks (a :class:`DataParallel` is built with ``parallel_options``).
    parallel : DataParallel, optional
        Use this one instead (its model must be ``model``).
    log : bool
        Progress lines (rank 0, ``logging`` at INFO on ``solvers.surrogates.training``).

    Attributes
    ----------
    history : list of dict, one per epoch: ``epoch``, ``train_loss``, ``test`` (name -> error),
        ``samples_per_s``, ``wall_s``, ``lr``
    normalizer : GaussianNormalizer or None
    """

    loss_is_global = False
    """True when :meth:`train_step` returns losses already summed over the ranks."""

    def __init__(self, model, train: ArrayDataset, tests=None, config: Optional[TrainConfig] = None, *,
                 comm=None, parallel: Optional[DataParallel] = None, log: bool = True, **parallel_options):
        from .losses import H1Loss, LpLoss
        from .optim import Adam, AdamW, CosineLR, StepLR

        self.config = cfg = config if config is not None else TrainConfig()
        cfg.validate()
        if not isinstance(train, ArrayDataset):
            raise TypeError(f"train: expected an ArrayDataset, got {type(train).__name__}")
        if tests is None:
            tests = {}
        elif isinstance(tests, ArrayDataset):
            tests = {"test": tests}
        self.model = model
        self.train = train
        self.tests = dict(tests)
        if parallel is None:
            from mpi4py import MPI

            parallel = DataParallel(comm if comm is not None else MPI.COMM_SELF, model, **parallel_options)
        elif parallel.model is not model:
            raise ValueError("parallel: its model is not `model`")
        self.parallel = parallel
        self.comm = parallel.comm
        self.rank = parallel.rank
        self.log = bool(log)
        ndim = train.x.ndim - 2
        self.loss_fn = (LpLoss(reduction="sum") if cfg.loss == "l2"
                        else H1Loss(d=ndim, L=1.0, reduction="sum"))
        self.normalizer = GaussianNormalizer.fit(train.y) if cfg.normalize_output else None
        cls = Adam if cfg.optimizer == "adam" else AdamW
        self.optimizer = parallel.make_optimizer(
            lambda p, g: cls(p, g, lr=cfg.lr, weight_decay=cfg.weight_decay))
        if cfg.schedule == "cosine":
            self.scheduler = CosineLR(self.optimizer, cfg.t_max or cfg.epochs)
        elif cfg.schedule == "step":
            self.scheduler = StepLR(self.optimizer, cfg.step_size, cfg.gamma)
        else:
            self.scheduler = None
        self.history: list = []
        self.epoch = 0

    # ----------------------------------------------------------------- pieces
    def _xp_batch(self, ds: ArrayDataset, index):
        xp = self.model.xp
        x = xp.asarray(ds.x[index], dtype=self.model.dtype)
        y = xp.asarray(ds.y[index], dtype=self.model.dtype)
        return x, y

    def predict(self, x):
        """Model output in the units of ``y`` (decoded when normalized). Not collective."""
        run = getattr(self.model, "predict", self.model.forward)  # predict keeps no activations
        out = run(x)
        return self.normalizer.decode(out) if self.normalizer is not None else out

    def train_step(self, index) -> tuple:
        """One optimizer step on the batch ``index`` (global sample indices). Collective.

        Returns ``(sum of this rank's per-sample losses, number of its samples)``.
        """
        model, par = self.model, self.parallel
        local = par.shard(index)
        model.zero_grad()
        loss_sum = 0.0
        if len(local):
            x, y = self._xp_batch(self.train, local)
            out = model.forward(x)
            pred = self.normalizer.decode(out) if self.normalizer is not None else out
            loss_sum, dpred = self.loss_fn(pred, y)
            dout = self.normalizer.decode_grad(dpred) if self.normalizer is not None else dpred
            dout = dout * dout.dtype.type(1.0 / len(index))
            par.backward(dout)
        else:
            par.backward(None)
        par.step(self.optimizer)
        return loss_sum, len(local)

    def evaluate(self, ds: ArrayDataset, batch_size: Optional[int] = None) -> float:
        """Mean relative L2 error over ``ds`` (samples split over the ranks). Collective."""
        from .losses import relative_l2

        bs = batch_size or self.config.eval_batch_size
        local = self.parallel.shard(np.arange(len(ds)))
        total = 0.0
        for i in range(0, len(local), bs):
            x, y = self._xp_batch(ds, local[i:i + bs])
            err = relative_l2(self.predict(x), y)
            total += float(err.sum())
        if self.parallel.size > 1:
            total = self.comm.allreduce(total)
        return total / len(ds)

    def train_epoch(self) -> dict:
        """One epoch over ``train``; returns its history row. Collective."""
        cfg = self.config
        t0 = time.perf_counter()
        lr = self.optimizer.lr
        loss_sum = 0.0
        for index in self.train.batches(cfg.batch_size, epoch=self.epoch, seed=cfg.seed):
            s, _ = self.train_step(index)
            loss_sum += s
        if self.parallel.size > 1 and not self.loss_is_global:
            loss_sum = self.comm.allreduce(loss_sum)
        wall = time.perf_counter() - t0
        if self.scheduler is not None:
            self.scheduler.step()
        self.epoch += 1
        row = {"epoch": self.epoch, "train_loss": loss_sum / len(self.train), "samples_per_s": len(self.train) / wall,
               "wall_s": wall, "lr": lr, "test": {}}
        if self.tests and (self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs):
            row["test"] = {name: self.evaluate(ds) for name, ds in self.tests.items()}
        self.history.append(row)
        if self.log and self.rank == 0:
            tests = "  ".join(f"test[{k}] {v:.4f}" for k, v in row["test"].items())
            logger.info("epoch %3d/%d  train %.4f  %s  %.0f samples/s  lr %.2e", self.epoch, cfg.epochs,
                        row["train_loss"], tests, row["samples_per_s"], lr)
        return row

    def fit(self, epochs: Optional[int] = None) -> list:
        """Train for ``epochs`` (default: the config's, minus those already run). Collective."""
        n = self.config.epochs - self.epoch if epochs is None else int(epochs)
        for _ in range(max(n, 0)):
            self.train_epoch()
        return self.history

    # ----------------------------------------------------------------- files
    def save(self, path: str) -> None:
        """Checkpoint model, optimizer (unless sharded), schedule, normalizer and history (rank 0
        writes; collective only in that every rank may call it)."""
        from .checkpoint import save_checkpoint

        if self.rank != 0:
            return
        norm = None
        if self.normalizer is not None:
            norm = {"mean": self.normalizer.mean.tolist(), "std": self.normalizer.std.tolist(),
                    "eps": self.normalizer.eps}
        save_checkpoint(path, self.model, None if self.parallel.sharded else self.optimizer, self.scheduler,
                        epoch=self.epoch, extra={"normalizer": norm, "train": dataclasses.asdict(self.config),
                                                 "history": self.history})

    def summary(self) -> dict:
        """Last epoch's numbers and the communication statistics (same on every rank)."""
        last = self.history[-1] if self.history else {}
        st = self.parallel.stats
        return {"epochs": self.epoch, "train_loss": last.get("train_loss"), "test": last.get("test", {}),
                "ranks": self.parallel.size, "backward_s": st["backward_s"], "wait_s": st["wait_s"],
                "steps": st["steps"], "xp": array_module(self.model.params).__name__}
