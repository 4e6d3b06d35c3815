"""Data-parallel training under MPI: equal to serial full-batch training, bitwise equal on every rank."""

import numpy as np
import pytest
from mpi4py import MPI
from mpi_checks import raises_everywhere, verdict

from hpcore import MismatchError
from solvers.surrogates import build_model
from solvers.surrogates.data import ArrayDataset
from solvers.surrogates.parallel import DataParallel
from solvers.surrogates.training import TrainConfig, Trainer

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(300)]

CFG = {"model": "fno", "n_modes": [3, 2], "hidden_channels": 5, "lifting_channels": 0, "projection_channels": 7,
       "n_layers": 2, "positional_embedding": True, "dtype": "float64", "seed": 4}


def data(n=11, shape=(8, 7), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1) + shape)
    y = np.cumsum(x, axis=-1) * 0.3 + 1.0
    return ArrayDataset(x, y)


def train(comm, batch_size, epochs=2, **options):
    model = build_model(dict(CFG))
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=3e-3, schedule="step", step_size=1, gamma=0.7)
    t = Trainer(model, data(), data(5, seed=1), cfg, comm=comm, log=False, **options)
    t.fit()
    return t


@pytest.mark.parametrize("batch_size", [4, 3, 11], ids=["uneven", "smaller-than-some-ranks", "full"])
@pytest.mark.parametrize("options", [{}, {"overlap": False}, {"bucket_nbytes": 64}, {"sharded": True}],
                         ids=["overlap", "no-overlap", "small-buckets", "sharded"])
def test_equals_serial_and_bitwise_same(batch_size, options):
    comm = MPI.COMM_WORLD
    ref = train(MPI.COMM_SELF, batch_size)
    t = train(comm, batch_size, **options)
    p, q = t.model.params, ref.model.params
    err = float(np.abs(p - q).max() / np.abs(q).max())
    same = t.parallel.same_on_every_rank()
    loss_err = abs(t.history[-1]["train_loss"] - ref.history[-1]["train_loss"])
    test_err = abs(t.history[-1]["test"]["test"] - ref.history[-1]["test"]["test"])
    moved = float(np.abs(q - build_model(dict(CFG)).params).max())
    verdict(comm, same and err < 1e-11 and loss_err < 1e-12 and test_err < 1e-12 and moved > 1e-3,
            f"bitwise same {same}, max rel param diff {err:.2e}, loss diff {loss_err:.1e}, test diff {test_err:.1e}")
    if options.get("bucket_nbytes") == 64:
        assert len(t.parallel.buckets) > 3
    if options.get("sharded"):
        mem = t.parallel.memory_per_rank()
        full = 2 * t.model.params.nbytes
        assert mem["optimizer"] < full * 0.75 * 1.5  # m, v (and the grad block) of one block, not the whole buffer
    t.parallel.free()


@pytest.mark.mpi(min_size=4)
def test_hierarchical_buckets_equal_serial():
    comm = MPI.COMM_WORLD
    ref = train(MPI.COMM_SELF, 4)
    t = train(comm, 4, levels=[2])
    err = float(np.abs(t.model.params - ref.model.params).max() / np.abs(ref.model.params).max())
    verdict(comm, t.parallel.same_on_every_rank() and err < 1e-11, f"rel diff {err:.2e}")
    t.parallel.free()


def test_overlap_statistics_and_rank0_params_broadcast():
    comm = MPI.COMM_WORLD
    model = build_model(dict(CFG, seed=comm.rank))  # different initial parameters on every rank
    dp = DataParallel(comm, model, bucket_nbytes=256)
    assert dp.same_on_every_rank()
    t = Trainer(model, data(), None, TrainConfig(epochs=1, batch_size=4), parallel=dp, log=False)
    t.fit()
    assert dp.stats["steps"] == 3 and dp.stats["backward_s"] > 0 and dp.stats["wait_s"] >= 0
    assert dp.time_allreduce(repeats=1) > 0
    verdict(comm, dp.same_on_every_rank(), "params differ after training")
    dp.free()


def test_mismatched_models_refused_everywhere():
    comm = MPI.COMM_WORLD
    cfg = dict(CFG, hidden_channels=5 if comm.rank else 6)
    raises_everywhere(comm, MismatchError, lambda: DataParallel(comm, build_model(cfg)), match="hidden_channels")
    raises_everywhere(comm, ValueError,
                      lambda: DataParallel(comm, build_model(dict(CFG)), bucket_nbytes=0 if comm.rank == 1 else 8),
                      match="bucket_nbytes")
