"""Trainer (serial): gradient of the batch loss, seeded runs, learning the heat operator, float32, config checks."""

import numpy as np
import pytest

from solvers.surrogates import build_model
from solvers.surrogates.burgers import grf_1d, heat_1d
from solvers.surrogates.data import ArrayDataset
from solvers.surrogates.parallel import plan_buckets
from solvers.surrogates.training import TrainConfig, Trainer

FNO1 = {"model": "fno", "n_modes": [6], "hidden_channels": 8, "lifting_channels": 0, "projection_channels": 16,
        "n_layers": 2, "positional_embedding": False, "dtype": "float64", "seed": 1}


def heat_data(n, res=32, seed=0):
    u0 = grf_1d(n, res, seed=seed, sigma=3.0)
    return ArrayDataset(u0[:, None], heat_1d(u0, nu=0.005, t=1.0)[:, None] + 0.5)


@pytest.mark.parametrize("loss", ["l2", "h1"])
@pytest.mark.parametrize("normalize", [True, False])
def test_step_gradient_is_gradient_of_mean_batch_loss(loss, normalize):
    """The gradient a train step applies is d/dparams of the mean per-sample loss of the batch
    (finite differences through the normalizer), whatever the batch size."""
    train = heat_data(7)
    model = build_model(dict(FNO1))
    t = Trainer(model, train, None, TrainConfig(loss=loss, normalize_output=normalize, batch_size=7), log=False)
    index = np.array([5, 1, 2, 6, 0])
    x, y = train.x[index], train.y[index]

    def batch_loss(p):
        saved = model.params.copy()
        model.params[...] = p
        value, _ = t.loss_fn(t.predict(x), y)
        model.params[...] = saved
        return value / len(index)

    model.zero_grad()
    out = model.forward(x)
    pred = t.normalizer.decode(out) if normalize else out
    _, dpred = t.loss_fn(pred, y)
    dout = t.normalizer.decode_grad(dpred) if normalize else dpred
    t.parallel.backward(dout / len(index))
    g = model.grads.copy()
    rng = np.random.default_rng(0)
    p0 = model.params.copy()
    for _ in range(3):
        v = rng.standard_normal(p0.shape)
        h = 1e-6
        fd = (batch_loss(p0 + h * v) - batch_loss(p0 - h * v)) / (2 * h)
        assert np.isclose(fd, g @ v, rtol=1e-6, atol=1e-9), (fd, g @ v)


def test_seeded_runs_repeat_and_seeds_differ():
    train, test = heat_data(12), heat_data(4, seed=1)
    runs = []
    for seed in (3, 3, 4):
        t = Trainer(build_model(dict(FNO1)), train, test, TrainConfig(epochs=2, batch_size=5, seed=seed), log=False)
        t.fit()
        runs.append(t.model.params.copy())
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_learns_the_heat_operator_and_super_resolves():
    train, test = heat_data(64), heat_data(16, seed=1)
    fine = heat_data(16, res=64, seed=1)
    cfg = TrainConfig(epochs=25, batch_size=16, lr=1e-2, schedule="cosine", weight_decay=0.0)
    t = Trainer(build_model(dict(FNO1)), train, {"32": test, "64": fine}, cfg, log=False)
    before = t.evaluate(test)
    t.fit()
    last = t.history[-1]
    assert last["test"]["32"] < 0.05 < before, (before, last)
    assert last["test"]["64"] < 0.1  # zero-shot at twice the resolution
    assert t.history[0]["train_loss"] > 3 * last["train_loss"]
    assert last["lr"] < cfg.lr and all(r["samples_per_s"] > 0 for r in t.history)


def test_float32_training():
    train = heat_data(32)
    runs = {}
    for dtype in ("float32", "float64"):
        t = Trainer(build_model(dict(FNO1, dtype=dtype)), train.astype(dtype), None,
                    TrainConfig(epochs=6, batch_size=8, lr=1e-2), log=False)
        t.fit()
        assert t.model.params.dtype == np.dtype(dtype)
        runs[dtype] = [r["train_loss"] for r in t.history]
    assert runs["float32"][-1] < 0.9 * runs["float32"][0]
    assert np.allclose(runs["float32"], runs["float64"], rtol=1e-2)  # float32 follows the float64 run


def test_checkpoint_keeps_normalizer(tmp_path):
    pytest.importorskip("h5py")
    from solvers.surrogates import load_model, read_config
    from solvers.surrogates.checkpoint import load_checkpoint

    t = Trainer(build_model(dict(FNO1)), heat_data(8), None, TrainConfig(epochs=1, batch_size=4), log=False)
    t.fit()
    t.save(str(tmp_path / "c.h5"))
    m = load_model(str(tmp_path / "c.h5"))
    assert np.array_equal(m.params, t.model.params) and read_config(str(tmp_path / "c.h5"))["model"] == "fno"
    meta = load_checkpoint(str(tmp_path / "c.h5"), m)
    assert meta["epoch"] == 1 and np.isclose(meta["extra"]["normalizer"]["mean"][0][0][0], t.normalizer.mean[0, 0, 0])


def test_config_refusals():
    for kw, match in [({"epochs": 0}, "epochs"), ({"optimizer": "sgd"}, "optimizer"), ({"lr": -1.0}, "lr"),
                      ({"schedule": "linear"}, "schedule"), ({"gamma": 2.0}, "gamma"), ({"loss": "l1"}, "loss")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kw).validate()
    with pytest.raises(TypeError, match="ArrayDataset"):
        Trainer(build_model(dict(FNO1)), np.zeros(3), log=False)


def test_bucket_plan():
    ranges = [("a", 0, 10), ("b", 10, 10), ("c", 10, 40), ("d", 40, 45), ("e", 45, 100)]
    assert plan_buckets(ranges, 8 * 60, 8) == [(40, 100), (0, 40)]
    assert plan_buckets(ranges, 1, 8) == [(45, 100), (40, 45), (10, 40), (0, 10)]
    assert plan_buckets(ranges, 10**9, 8) == [(0, 100)]
    model = build_model(dict(FNO1))
    plan = plan_buckets(model.layer_ranges(), 512, 8)
    assert plan[0][1] == model.params.size and plan[-1][0] == 0
    assert all(a[0] == b[1] for a, b in zip(plan, plan[1:]))
