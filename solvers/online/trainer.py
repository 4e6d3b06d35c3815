"""The online trainer: receive while training, data-parallel over trainer ranks, agree on when to stop.

Each trainer rank runs a :class:`~solvers.online.server.Receiver` (threads that
accept members and assemble samples) and a bounded, seeded buffer
(:mod:`solvers.online.buffers`). Between training steps the main thread moves
complete samples from the receiver into the buffer (as many as fit, or exactly
``buffer.ingest_per_step`` per step for a run that replays exactly), then all
ranks exchange a small state record (``allgather``: buffer ready, data exhausted,
member events), so every rank takes the same decision: step, wait, or stop.

A step: each rank draws its batch (empty when its buffer is below its
watermark or drained while others can draw: ranks never wait for each other's
data) and computes its gradient. For a :mod:`solvers.surrogates` model, one small
allreduce gives the global sample count, each rank scales its loss gradient by
``n_local / n_total``, and :class:`solvers.surrogates.DataParallel` ring-reduces the
gradient buckets while backward runs; for any other model one ring allreduce
(:func:`comms.ring_allreduce`) after backward sums ``n_local * grad``, ``n_local``
and the loss. Either way every rank gets the gradient of the global batch with
the same bits, so the models stay bitwise equal. Stop: at ``train.max_steps``, after
``train.max_wall_s`` seconds (rank 0's clock, announced with the events), or when no rank
will get more data and no rank can draw a batch.

Checkpoints (HDF5, one file per rank and step, a ``latest`` pointer written after
all ranks finished theirs): model, optimizer, buffer with its generator state,
samples received but not yet in the buffer, the (member, time step) keys already
taken, validation samples, counters, history and (rank 0) the member
bookkeeping. A resumed run reruns the members that were running and drops the
time steps it already has, so with the same data order it ends with the same
model as an uninterrupted run.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time

import numpy as np

from hpcore.lazy_mpi import mpi

from .buffers import make_buffer
from .launcher import Launcher, MemberWatch
from .sampling import ParameterSampler
from .server import Receiver, Sample

__all__ = ["MSELoss", "OnlineTrainer", "sample_arrays"]

log = logging.getLogger(__name__)


class MSELoss:
    """Mean squared error over all entries, returns ``(value, dpred)``. Not collective."""

    def __call__(self, pred, y):
        """Loss value and its gradient with respect to ``pred``."""
        d = pred - y
        return float((d * d).mean()), (2.0 / d.size) * d


def sample_arrays(study, params, time_step, fields) -> tuple:
    """Model input and target of one sample as the study's ``data`` section lays them out. Not collective."""
    def part(name):
        if name == "params":
            return np.asarray(params, dtype=np.float64)
        if name == "time":
            return np.array([time_step * study.data.time_scale])
        return np.asarray(fields[name], dtype=np.float64).ravel()

    x = np.concatenate([part(n) for n in study.data.inputs])
    y = np.concatenate([part(n) for n in study.data.outputs])
    if study.data.input_shape:
        x = x.reshape(study.data.input_shape)
    if study.data.output_shape:
        y = y.reshape(study.data.output_shape)
    return x, y


def _relative_errors(pred, y):
    axes = tuple(range(1, pred.ndim))
    return np.sqrt(((pred - y) ** 2).sum(axis=axes)) / np.sqrt((y ** 2).sum(axis=axes))


class OnlineTrainer:
    """Online training of one study over ``comm`` (the trainer ranks).

    Collective on ``comm``: every trainer rank constructs it with an equal study and
    calls :meth:`run`. Members are started by trainer rank 0 (``study.launcher``
    ``subprocess``) or were started beside the trainer (``mpmd``).

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or hpcore.Comm
    study : StudyConfig
    model, loss, optimizer : optional
        Any model with flat ``params``/``grads``, ``forward(x)`` and ``backward(dy)``;
        a loss returning ``(value, dpred)``; an optimizer with ``step()``,
        ``state_dict()``, ``load_state_dict()``. Default: ``solvers.surrogates``'s
        ``build_model(study.model)``, ``LpLoss`` (or :class:`MSELoss`) and ``Adam``.
    resume : bool
        Continue from the latest checkpoint in ``train.checkpoint_dir`` when one exists.
    """

    def __init__(self, comm, study, model=None, loss=None, optimizer=None, resume: bool = False):
        import hpcore
        from hpcore.errors import agree

        comm = hpcore.as_comm(comm) if hasattr(hpcore, "as_comm") else comm
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.study = study
        error = None
        try:
            study.validate()
            if model is None:
                from solvers.surrogates import Adam, LpLoss, build_model

                model = build_model(dict(study.model))
                loss = loss or (LpLoss() if study.train.loss == "l2rel" else MSELoss())
                optimizer = optimizer or Adam(model, lr=study.train.lr)
            if loss is None or optimizer is None:
                raise TypeError("loss and optimizer must be given with a model")
            os.makedirs(study.study.run_dir, exist_ok=True)
            if study.train.checkpoint_every and not study.train.checkpoint_dir:
                raise ValueError("train.checkpoint_every > 0 needs train.checkpoint_dir")
        except Exception as exc:  # noqa: BLE001 - agreed below
            error = exc
        agree(comm, error)
        cfg_json = comm.bcast(study.to_json(), root=0)
        agree(comm, None if cfg_json == study.to_json() else
              ValueError(f"rank {self.rank}/{self.size}: study differs from rank 0's"))
        self.model, self.loss, self.optimizer = model, loss, optimizer
        # a solvers.surrogates model on several ranks: gradient buckets reduced during backward;
        # any other model: one allreduce of the whole gradient after backward
        self.data_parallel = None
        overlap = self.size > 1 and hasattr(model, "layer_ranges") and study.train.overlap
        agree(comm, what="OnlineTrainer", overlapped_gradients=overlap)  # the same step path on every rank
        if overlap:
            from solvers.surrogates import DataParallel

            self.data_parallel = DataParallel(comm, model, bucket_nbytes=study.train.bucket_nbytes)
        b = study.buffer
        seed = [study.train.seed, self.rank]
        self.buffer = make_buffer(b.policy, b.capacity, seed=seed, watermark=b.watermark, reuse=b.reuse)
        self.receiver = Receiver(study.fields, window=study.study.window, mode=study.study.receive,
                                 stage_limit=study.buffer.capacity)
        self.port_file = os.path.join(study.study.run_dir, "ports.txt")
        sampler = ParameterSampler(study.parameters.bounds, study.parameters.method, study.study.seed)
        self.launcher = Launcher(study, self.port_file, sampler) if self.rank == 0 else None
        n, n_val = study.study.members, study.study.validation_members
        self.validation_members = set(range(n - n_val, n))
        self.val_x: list = []
        self.val_y: list = []
        self.step = 0
        self.samples_seen = 0
        self.samples_in = 0
        self.partial_dropped = [0, 0]  # partial="drop": samples of failed tries dropped (staged, unused in buffer)
        self.history: list = []
        self.busy_s = 0.0
        self.wall_s = 0.0
        self.last_loss = float("nan")
        self.test = self._load_test(study.train.test_file)
        self._work = np.zeros(self.model.params.size + 2, dtype=self.model.params.dtype)
        self.resumed_from = None
        self._shapes = None  # (input, target) shapes of the samples, from the first one
        if resume and study.train.checkpoint_dir:
            self.resumed_from = self.load_checkpoint()

    # -- data --------------------------------------------------------------------------------------
    def _load_test(self, path):
        if not path:
            return None
        import h5py

        with h5py.File(path, "r") as f:
            x, y = f["x"][...], f["y"][...]
        return x[self.rank::self.size], y[self.rank::self.size]

    def _ingest(self, limit: int) -> int:
        """Move up to ``limit`` samples from the receiver into the buffer (validation members aside)."""
        moved = 0
        while moved < limit and self.buffer.has_room() and self.receiver.available():
            for s in self.receiver.take(1):
                try:
                    x, y = sample_arrays(self.study, s.params, s.time_step, s.fields)
                    self._check_shapes(x, y)
                except ValueError as exc:
                    raise ValueError(f"member {s.member} (attempt {s.attempt}) time step {s.time_step}: {exc} "
                                     f"(fields {({k: v.size for k, v in s.fields.items()})}, "
                                     f"{len(s.params)} parameters)") from None
                if s.member in self.validation_members:
                    self.val_x.append(x)
                    self.val_y.append(y)
                else:
                    self.buffer.add(x, y, (s.member, s.time_step))
                    moved += 1
                    self.samples_in += 1
        return moved

    def _check_shapes(self, x, y) -> None:
        """Refuse a sample that does not fit the model: the first one is run through it once, the
        others must have its shapes (a member sending a wrong size stops every rank, named)."""
        if self._shapes is None:
            pred = self.model.forward(np.asarray(x)[None])
            if pred.shape[1:] != np.shape(y):
                raise ValueError(f"the model maps input {np.shape(x)} to {pred.shape[1:]}, the sample's target "
                                 f"is {np.shape(y)}")
            self._shapes = (np.shape(x), np.shape(y))
        elif (np.shape(x), np.shape(y)) != self._shapes:
            raise ValueError(f"input {np.shape(x)} and target {np.shape(y)}, earlier samples "
                             f"{self._shapes[0]} and {self._shapes[1]}")

    # -- evaluation --------------------------------------------------------------------------------
    def _errors(self, xs, ys) -> tuple:
        if len(xs) == 0:
            return 0.0, 0
        total = 0.0
        for i in range(0, len(xs), 64):
            pred = self.model.forward(np.asarray(xs[i:i + 64]))
            total += float(_relative_errors(pred, np.asarray(ys[i:i + 64])).sum())
        return total, len(xs)

    def evaluate(self) -> dict:
        """Mean relative L2 error on the validation members and the test file. Collective on ``comm``."""
        v = self._errors(self.val_x, self.val_y)
        t = self._errors(*self.test) if self.test is not None else (0.0, 0)
        sums = self.comm.allreduce(np.array([v[0], v[1], t[0], t[1]]))
        return {"val_error": sums[0] / sums[1] if sums[1] else float("nan"),
                "test_error": sums[2] / sums[3] if sums[3] else float("nan"),
                "n_val": int(sums[1]), "n_test": int(sums[3])}

    # -- one step ----------------------------------------------------------------------------------
    def _train_step(self, draw: bool) -> None:
        if self.data_parallel is not None:
            return self._train_step_overlapped(draw)
        from comms import ring_allreduce

        t0 = time.perf_counter()
        work = self._work
        work[:] = 0
        if draw:
            xb, yb = self.buffer.batch(self.study.train.batch_size)
            n_local = len(xb)
            self.model.grads[...] = 0
            pred = self.model.forward(xb)
            value, dpred = self.loss(pred, yb)
            self.model.backward(dpred)
            np.multiply(self.model.grads, n_local, out=work[:-2])
            work[-2] = n_local
            work[-1] = value * n_local
        if self.size > 1:
            work[:] = ring_allreduce(self.comm, work, "sum")
        n_total = work[-2]
        self.model.grads[...] = work[:-2] / n_total
        self.optimizer.step()
        self.step += 1
        self.samples_seen += int(n_total)
        self.last_loss = float(work[-1] / n_total)
        self.busy_s += time.perf_counter() - t0

    def _train_step_overlapped(self, draw: bool) -> None:
        """One step with the gradient buckets allreduced while backward runs
        (:class:`solvers.surrogates.DataParallel`): the global sample count first (one small
        allreduce), so each rank scales its loss gradient by ``n_local / n_total`` and the summed
        gradients are the global batch mean; then the loss sum (one float)."""
        t0 = time.perf_counter()
        xb, yb = self.buffer.batch(self.study.train.batch_size) if draw else ((), ())
        n_local = len(xb)
        n_total = int(self.comm.allreduce(n_local))
        self.model.grads[...] = 0
        value = 0.0
        dpred = None
        if n_local:
            pred = self.model.forward(xb)
            value, dpred = self.loss(pred, yb)
            dpred = dpred * (n_local / n_total)
        self.data_parallel.backward(dpred)
        self.optimizer.step()
        self.step += 1
        self.samples_seen += n_total
        self.last_loss = float(self.comm.allreduce(value * n_local)) / n_total
        self.busy_s += time.perf_counter() - t0

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, progress=None) -> dict:
        """Train until ``max_steps`` or until the data are used up. Collective on ``comm``.

        Returns a summary dict (steps, samples seen, errors, wall and busy time, member counts).
        ``progress``: optional callable taking the line that rank 0 logs every ``log_every`` steps.
        """
        tr = self.study.train
        self.receiver.open(self.comm, self.port_file)
        t_start = time.perf_counter() - self.wall_s
        self.t0_unix = time.time() - self.wall_s  # wall clock of this run's start (for comparisons)
        events: dict = {"failed": [], "all_done": False, "accept": [], "disconnect": []}
        pending = dict(events)  # rank 0: what the next agreement will announce
        disconnected: set = set()
        prev_all_done = False
        per_step = self.study.buffer.ingest_per_step
        taken_now = 0
        exhausted_steps = 0
        connect_failed: list = []  # rank 0: tries that did not connect, announced with the next events
        connect_abort = ""
        try:
            while True:
                for m, a in events["failed"]:
                    staged = self.receiver.fail(m, a, self.study.study.partial == "drop")
                    if self.study.study.partial == "drop":
                        self.partial_dropped[0] += staged
                        self.partial_dropped[1] += self.buffer.remove_member(m)
                t_mpi = time.perf_counter()
                for m, a in events["accept"]:
                    watch = MemberWatch(self.launcher, m, a) if self.launcher is not None else None
                    if not self.receiver.accept(m, a, self.study.study.connect_timeout_s, watch) and self.rank == 0:
                        try:
                            connect_failed += self.launcher.connect_failed(m, a)
                        except TimeoutError as exc:
                            connect_abort = str(exc)
                self.receiver.disconnect_finished(events["disconnect"])
                if events["accept"] or events["disconnect"]:
                    log.debug("rank %d: accept %s disconnect %s took %.3f s", self.rank, events["accept"],
                              events["disconnect"], time.perf_counter() - t_mpi)
                local_error = ""
                try:  # this rank's own work: an error here stops every rank at the allgather below
                    if self.receiver.mode == "poll":
                        self.receiver.poll()
                    if self.receiver.errors and self.receiver.mode == "thread" and not self.receiver.alive():
                        raise RuntimeError(f"the receiving thread ended: {self.receiver.errors[-1]}")
                    if per_step:
                        taken_now += self._ingest(per_step - taken_now)
                    else:
                        self._ingest(1 << 30)
                except Exception as exc:  # noqa: BLE001 - shared with every rank below
                    local_error = f"trainer rank {self.rank}: {type(exc).__name__}: {exc}"
                exhausted = (prev_all_done and self.receiver.available() == 0
                             and self.receiver.open_connections() == 0)
                mine = {"can": self.buffer.can_batch(final=exhausted), "exhausted": exhausted,
                        "satisfied": (not per_step or taken_now >= per_step or exhausted
                                      or not self.buffer.has_room()),
                        "last_seen": self.receiver.last_seen.copy(), "finished": sorted(self.receiver.finished),
                        "error": local_error}
                if self.rank == 0:
                    mine["events"] = pending
                states = self.comm.allgather(mine)
                events = states[0]["events"]
                errors = [st["error"] for st in states if st["error"]]
                if errors:
                    raise RuntimeError("online training stopped: " + "; ".join(errors))
                if events.get("abort"):
                    raise RuntimeError(f"online training stopped: {events['abort']}")
                prev_all_done = events["all_done"]
                all_exhausted = all(s["exhausted"] for s in states)
                if self.rank == 0:
                    last_seen: dict = {}
                    for s in states:
                        for key, t in s["last_seen"].items():
                            last_seen[key] = max(last_seen.get(key, 0.0), t)
                    finished = set.intersection(*[set(map(tuple, s["finished"])) for s in states])
                    try:
                        failed = self.launcher.poll(last_seen, finished)
                    except Exception as exc:  # noqa: BLE001 - announced to every rank as an abort
                        failed, abort = [], f"trainer rank 0: {type(exc).__name__}: {exc}"
                    else:
                        abort = connect_abort
                    failed, connect_failed = connect_failed + failed, []
                    gone = sorted(finished - disconnected)
                    disconnected.update(gone)
                    out_of_time = bool(tr.max_wall_s) and time.perf_counter() - t_start >= tr.max_wall_s
                    pending = {"failed": failed, "all_done": self.launcher.all_done() and not gone,
                               "out_of_time": out_of_time,
                               "accept": [x for x in self.receiver.connecting() if self.launcher.is_running(*x)],
                               "disconnect": gone, "abort": abort}
                if self.step >= tr.max_steps or events.get("out_of_time"):
                    # members started beside the trainer (MPMD) cannot be killed: serve them to the end,
                    # dropping their data; subprocess members are killed by the launcher's shutdown
                    if self.study.study.launcher != "mpmd" or all_exhausted:
                        break
                    self.receiver.take(1 << 30)
                    time.sleep(1e-3)
                    continue
                if all_exhausted and (not any(s["can"] for s in states)
                                      or exhausted_steps >= max(tr.min_steps_after_data, 0)
                                      and self.step >= tr.min_steps
                                      and self.study.buffer.policy == "reservoir"):
                    break
                # a rank below its watermark (or empty) contributes no samples to this step: waiting for it
                # could deadlock (its members block on credits of a rank whose buffer is full)
                if all(s["satisfied"] for s in states) and any(s["can"] for s in states):
                    self._train_step(draw=mine["can"])
                    taken_now = 0
                    exhausted_steps += 1 if all_exhausted else 0
                    self._after_step(t_start, progress)
                elif all(s["satisfied"] for s in states) and per_step and not any(s["can"] for s in states):
                    taken_now = 0  # below the watermark: the next round takes the next samples
                else:
                    if log.isEnabledFor(logging.DEBUG) and time.perf_counter() - getattr(self, "_said", 0) > 5:
                        self._said = time.perf_counter()
                        log.debug("rank %d waiting: %s", self.rank, self.receiver.describe())
                    time.sleep(1e-3)
        finally:
            self.wall_s = time.perf_counter() - t_start
            if self.launcher is not None:
                self.launcher.shutdown()
            self.receiver.close()
        return self._finish(progress)

    def _after_step(self, t_start, progress):
        tr = self.study.train
        wall = time.perf_counter() - t_start
        record = None
        if tr.validate_every and self.step % tr.validate_every == 0:
            record = {"step": self.step, "wall_s": wall, "samples_seen": self.samples_seen,
                      "samples_in": self.comm.allreduce(self.samples_in), "loss": self.last_loss, **self.evaluate()}
            self.history.append(record)
        if tr.checkpoint_every and self.step % tr.checkpoint_every == 0:
            self.wall_s = wall
            self.save_checkpoint()
        if tr.log_every and self.step % tr.log_every == 0 and self.rank == 0:
            c = self.launcher.counts()
            line = (f"step {self.step:6d} | members running {c['running']} done {c['done']} failed {c['failed']} "
                    f"pending {c['pending']} | buffer {len(self.buffer)}/{self.buffer.capacity} | seen "
                    f"{self.samples_seen} | loss {self.last_loss:.4e}")
            if record is not None:
                line += f" | val {record['val_error']:.4e} | test {record['test_error']:.4e}"
            line += f" | {self.samples_seen / max(wall, 1e-9):.1f} samples/s"
            log.info(line)
            if progress is not None:
                progress(line)

    def _finish(self, progress) -> dict:
        final = {"step": self.step, "wall_s": self.wall_s, "samples_seen": self.samples_seen,
                 "samples_in": self.comm.allreduce(self.samples_in), "loss": self.last_loss, **self.evaluate()}
        if not self.history or self.history[-1]["step"] != self.step:
            self.history.append(final)
        counts = self.comm.bcast(self.launcher.counts() if self.rank == 0 else None, root=0)
        busy = self.comm.allreduce(self.busy_s) / self.size
        summary = {**final, "busy_fraction": busy / max(self.wall_s, 1e-9), "members": counts,
                   "t0_unix": self.t0_unix,
                   "received_bytes": self.comm.allreduce(self.receiver.bytes),
                   "staged_high_water": self.comm.allreduce(self.receiver.staged_high_water, op=mpi().MAX),
                   "messages_ignored": self.comm.allreduce(self.receiver.dropped),  # unused fields, repeated steps
                   "partial_dropped": dict(zip(("staged", "buffer"),
                                               self.comm.allreduce(np.array(self.partial_dropped)).tolist())),
                   "distinct_samples": final["samples_in"], "history": self.history}
        if self.rank == 0:
            import h5py

            with h5py.File(os.path.join(self.study.study.run_dir, "model_final.h5"), "w") as f:
                f["params"] = np.asarray(self.model.params)
                f.attrs["step"] = self.step
            with open(os.path.join(self.study.study.run_dir, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1, default=float)
        return summary

    # -- checkpoints -------------------------------------------------------------------------------
    def _path(self, step: int, rank: int) -> str:
        return os.path.join(self.study.train.checkpoint_dir, f"step{step:08d}-rank{rank}.h5")

    def save_checkpoint(self) -> str:
        """Write this step's checkpoint on every rank, then the ``latest`` pointer. Collective on ``comm``."""
        import h5py

        from hpcore import agree

        d = self.study.train.checkpoint_dir
        path = self._path(self.step, self.rank)
        error = None
        try:  # a failed write on one rank (disk full, HDF5) raises on every rank, never a hang
            os.makedirs(d, exist_ok=True)
            with self.receiver.lock:
                pending = list(self.receiver.ready)
            with h5py.File(path + ".tmp", "w") as f:
                f.attrs["version"] = 1
                f.attrs["study"] = self.study.to_json()
                f.attrs["counters"] = json.dumps({"step": self.step, "samples_seen": self.samples_seen,
                                                  "samples_in": self.samples_in, "busy_s": self.busy_s,
                                                  "partial_dropped": self.partial_dropped,
                                                  "wall_s": self.wall_s, "history": self.history})
                f["model/params"] = np.asarray(self.model.params)
                opt = self.optimizer.state_dict()
                g = f.create_group("optimizer")
                for k, v in opt.items():
                    if isinstance(v, np.ndarray):
                        g[k] = v
                    else:
                        g.attrs[k] = json.dumps(v)
                g = f.create_group("buffer")
                for k, v in self.buffer.state_dict().items():
                    if k == "meta":
                        g.attrs[k] = v
                    else:
                        g[k] = v
                f["receiver/seen"] = np.asarray(sorted(self.receiver.seen), dtype=np.int64).reshape(-1, 2)
                g = f.create_group("receiver/pending")
                for i, s in enumerate(pending):
                    h = g.create_group(str(i))
                    h.attrs["key"] = (s.member, s.attempt, s.time_step)
                    h["params"] = np.asarray(s.params)
                    for name, arr in s.fields.items():
                        h[f"fields/{name}"] = arr
                if self.val_x:
                    f["validation/x"] = np.stack(self.val_x)
                    f["validation/y"] = np.stack(self.val_y)
                if self.launcher is not None:
                    f.attrs["launcher"] = self.launcher.state()
            os.replace(path + ".tmp", path)
        except Exception as exc:  # noqa: BLE001 - agreed below
            error = exc
        agree(self.comm, error, what="online checkpoint")
        if self.rank == 0:
            try:
                with open(os.path.join(d, "latest.tmp"), "w") as f:
                    f.write(f"{self.step}\n")
                os.replace(os.path.join(d, "latest.tmp"), os.path.join(d, "latest"))
                for name in os.listdir(d):
                    if name.startswith("step") and not name.startswith(f"step{self.step:08d}-"):
                        os.remove(os.path.join(d, name))
            except Exception as exc:  # noqa: BLE001 - agreed below
                error = exc
        agree(self.comm, error, what="online checkpoint (latest pointer)")
        return path

    def load_checkpoint(self):
        """Restore the latest checkpoint, if any; returns its step or None. Collective on ``comm``."""
        import h5py

        from hpcore.errors import agree

        latest = os.path.join(self.study.train.checkpoint_dir, "latest")
        step, error = None, None
        try:
            if os.path.exists(latest):
                with open(latest) as f:
                    step = int(f.read())
        except Exception as exc:  # noqa: BLE001
            error = exc
        agree(self.comm, error)
        step = self.comm.bcast(step, root=0)
        if step is None:
            return None
        try:
            with h5py.File(self._path(step, self.rank), "r") as f:
                mine, theirs = json.loads(self.study.to_json()), json.loads(f.attrs["study"])
                for key in ("model", "buffer", "data"):
                    if mine[key] != theirs[key]:
                        raise ValueError(f"checkpoint {self._path(step, self.rank)}: [{key}] differs from the "
                                         f"study's: {theirs[key]} vs {mine[key]}")
                c = json.loads(f.attrs["counters"])
                self.model.params[...] = f["model/params"][...]
                opt = {k: json.loads(v) for k, v in f["optimizer"].attrs.items()}
                opt.update({k: f["optimizer"][k][...] for k in f["optimizer"]})
                self.optimizer.load_state_dict(opt)
                b = {k: f["buffer"][k][...] for k in f["buffer"]}
                b["meta"] = f["buffer"].attrs["meta"]
                self.buffer.load_state_dict(b)
                self.receiver.seen = {tuple(int(v) for v in k) for k in f["receiver/seen"][...]}
                pending = []
                for i in sorted(f["receiver/pending"], key=int):
                    h = f["receiver/pending"][i]
                    m, a, t = (int(v) for v in h.attrs["key"])
                    fields = {n: h["fields"][n][...] for n in h["fields"]}
                    pending.append(Sample(m, a, t, tuple(h["params"][...]), fields, []))
                self.receiver.ready = collections.deque(pending)
                if "validation" in f:
                    self.val_x = list(f["validation/x"][...])
                    self.val_y = list(f["validation/y"][...])
                if self.launcher is not None:
                    self.launcher.load_state(f.attrs["launcher"])
                self.step, self.samples_seen = c["step"], c["samples_seen"]
                self.samples_in, self.busy_s, self.wall_s = c["samples_in"], c["busy_s"], c["wall_s"]
                self.history = c["history"]
                self.partial_dropped = list(c["partial_dropped"])
        except Exception as exc:  # noqa: BLE001
            error = exc
        agree(self.comm, error)
        log.info("resumed from step %d", step)
        return step
