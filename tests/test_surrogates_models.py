"""Models and losses of solvers.surrogates: finite-difference gradients, the backward hook, configs, training."""

import itertools
import json

import numpy as np
import pytest
from test_surrogates_layers import fd_check

from solvers.surrogates import FNO, MLP, TFNO, Adam, H1Loss, LpLoss, build_model
from solvers.surrogates.factorized import cp_rank, tucker_rank


def small_fno(n_modes, **kw):
    cfg = {"n_modes": n_modes, "hidden_channels": 3, "in_channels": 2, "out_channels": 1, "lifting_channels": 4,
           "projection_channels": 4, "n_layers": 2, "dtype": "float64", "seed": 3}
    cfg.update(kw)
    return FNO(cfg)


FNO_CASES = [
    ((8,), (8,), {}),
    ((7,), (4,), {"positional_embedding": True}),
    ((6, 6), (6, 6), {}),                       # Nyquist on both axes
    ((5, 8), (4, 4), {"positional_embedding": True, "lifting_channels": 0}),
    ((4, 5, 4), (4, 2, 4), {"n_layers": 1}),
    ((3, 4, 5), (2, 4, 4), {"positional_embedding": True}),
]


@pytest.mark.parametrize("spatial,n_modes,kw", FNO_CASES, ids=[f"{s}-{m}" for s, m, _ in FNO_CASES])
def test_fno_gradients(spatial, n_modes, kw):
    rng = np.random.default_rng(len(spatial) * 10 + spatial[0])
    model = small_fno(n_modes, **kw)
    fd_check(model, rng.standard_normal((2, 2) + spatial), rng)


@pytest.mark.parametrize("spatial", [(), (5,), (4, 3)], ids=["0d", "1d", "2d"])
def test_mlp_gradients(spatial):
    rng = np.random.default_rng(11)
    model = MLP(in_channels=3, out_channels=2, hidden_channels=5, n_layers=3)
    fd_check(model, rng.standard_normal((4, 3) + spatial), rng)


def test_hook_covers_buffer_from_the_end():
    model = small_fno((4, 4), n_layers=3)
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8))
    y = model.forward(x)
    calls = []
    snapshots = []

    def ready(start, stop):
        calls.append((start, stop))
        snapshots.append(model.grads[start:stop].copy())

    model.zero_grad()
    model.backward(np.ones_like(y), on_grads_ready=ready)
    assert calls[0][1] == model.params.size and calls[-1][0] == 0
    for (a, _b), (_c, d) in itertools.pairwise(calls):
        assert d == a  # contiguous, decreasing
    # slices were final when reported
    for (a, b), snap in zip(calls, snapshots):
        np.testing.assert_array_equal(snap, model.grads[a:b])


def test_config_round_trip_and_astype():
    model = small_fno((4, 4), positional_embedding=True)
    cfg = json.loads(json.dumps(model.config))
    other = build_model(cfg)
    np.testing.assert_array_equal(other.params, model.params)  # same seed, same init
    x0 = np.random.default_rng(2).standard_normal((2, 2, 8, 8))
    np.testing.assert_array_equal(model.predict(x0), model.forward(x0))
    model.predict(x0)
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(np.ones((2, 1, 8, 8)))
    m32 = model.astype("float32")
    assert m32.params.dtype == np.float32 and m32.config["dtype"] == "float32"
    x = np.random.default_rng(1).standard_normal((2, 2, 8, 8))
    np.testing.assert_allclose(m32.forward(x.astype(np.float32)), model.forward(x), rtol=1e-4, atol=1e-4)
    assert model.n_params == sum(g["stop"] - g["start"] for g in model.param_groups())


def test_bad_configs():
    with pytest.raises(ValueError, match="unknown config keys.*widht"):
        FNO(n_modes=(4,), widht=3)
    with pytest.raises(ValueError, match="n_modes"):
        FNO(n_modes=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="dtype"):
        FNO(n_modes=(4,), dtype="float16")
    with pytest.raises(ValueError, match="model must be one of"):
        build_model({"model": "unet"})
    with pytest.raises(ValueError, match="hidden_channels"):
        MLP(hidden_channels=0)


def loss_fd(loss, pred, y, rng, eps=1e-6):
    value, dpred = loss(pred, y)
    flat = pred.reshape(-1)
    for i in rng.choice(flat.size, 25, replace=False):
        old = flat[i]
        flat[i] = old + eps
        lp = loss(pred, y)[0]
        flat[i] = old - eps
        lm = loss(pred, y)[0]
        flat[i] = old
        assert abs((lp - lm) / (2 * eps) - dpred.reshape(-1)[i]) < 1e-7 * max(1, abs(dpred).max())
    return value


@pytest.mark.parametrize("shape", [(3, 1, 9), (2, 2, 6, 7), (2, 1, 4, 5, 6)], ids=["1d", "2d", "3d"])
def test_loss_gradients(shape):
    rng = np.random.default_rng(4)
    y = rng.standard_normal(shape)
    pred = y + 0.3 * rng.standard_normal(shape)
    value = loss_fd(LpLoss(), pred, y, rng)
    per = [np.linalg.norm(pred[b] - y[b]) / np.linalg.norm(y[b]) for b in range(shape[0])]
    assert value == pytest.approx(np.mean(per), rel=1e-12)
    assert LpLoss("sum")(pred, y)[0] == pytest.approx(np.sum(per), rel=1e-12)
    d = len(shape) - 2
    for deriv in ("spectral", "central"):
        loss_fd(H1Loss(d=d, derivative=deriv), pred, y, rng)


def test_h1_spectral_derivative_is_exact_on_a_sine():
    n = 16
    x = 2 * np.pi * np.arange(n) / n
    y = np.sin(3 * x)[None, None]
    pred = y + 0.1 * np.cos(2 * x)[None, None]
    # ||e||^2 (1 + 4) over ||y||^2 (1 + 9) for sin(3x), 0.1 cos(2x)
    expect = np.sqrt(0.01 * 5 / 10)
    assert H1Loss(d=1)(pred, y)[0] == pytest.approx(expect, rel=1e-12)


def test_lploss_bad_inputs():
    with pytest.raises(ValueError, match="differ"):
        LpLoss()(np.zeros((2, 1, 4)), np.zeros((2, 1, 5)))
    with pytest.raises(ValueError, match="reduction"):
        LpLoss("max")


def _train(model, x, y, steps, lr=1e-2):
    opt = Adam(model, lr=lr)
    loss = LpLoss()
    for _ in range(steps):
        model.zero_grad()
        value, d = loss(model.forward(x), y)
        model.backward(d)
        opt.step()
    return value


def smooth_operator_data(n, samples, seed):
    """u -> antiderivative-like smoothing: y = (1 - d^2/dx^2)^-1 u for band-limited u on [0, 1)."""
    rng = np.random.default_rng(seed)
    k = np.arange(1, 5)
    coef = rng.standard_normal((samples, 2, k.size)) / k
    x = np.arange(n) / n
    u = (coef[:, 0, :, None] * np.sin(2 * np.pi * k[:, None] * x)
         + coef[:, 1, :, None] * np.cos(2 * np.pi * k[:, None] * x)).sum(1)
    damp = 1 / (1 + (2 * np.pi * k / 8) ** 2)
    y = (damp[None, :, None] * (coef[:, 0, :, None] * np.sin(2 * np.pi * k[:, None] * x)
                                + coef[:, 1, :, None] * np.cos(2 * np.pi * k[:, None] * x))).sum(1)
    return u[:, None], y[:, None]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_training_reduces_loss_and_super_resolves(dtype):
    model = FNO(n_modes=(8,), hidden_channels=8, in_channels=1, lifting_channels=16, projection_channels=16,
                n_layers=2, dtype=dtype, seed=0)
    x, y = smooth_operator_data(32, 64, seed=0)
    first = LpLoss()(model.forward(x.astype(dtype)), y.astype(dtype))[0]
    last = _train(model, x.astype(dtype), y.astype(dtype), 300)
    assert last < 0.1 * first and last < 0.05, (first, last)
    # zero-shot at twice the resolution: same functions sampled on 64 points
    x64, y64 = smooth_operator_data(64, 16, seed=1)
    err64 = LpLoss()(model.forward(x64.astype(dtype)), y64.astype(dtype))[0]
    x32, y32 = smooth_operator_data(32, 16, seed=1)
    err32 = LpLoss()(model.forward(x32.astype(dtype)), y32.astype(dtype))[0]
    assert err64 < 0.08 and err64 < 2 * err32 + 0.01, (err32, err64)


TFNO_CASES = [
    ("tucker", (6,), (6,)),
    ("cp", (7,), (4,)),
    ("tucker", (5, 6), (4, 4)),
    ("cp", (6, 6), (6, 6)),
    ("tucker", (3, 4, 4), (2, 2, 4)),
    ("cp", (4, 3, 5), (4, 2, 4)),
]


@pytest.mark.parametrize("fact,spatial,n_modes", TFNO_CASES, ids=[f"{f}-{s}-{m}" for f, s, m in TFNO_CASES])
def test_tfno_gradients_in_factorized_form(fact, spatial, n_modes):
    rng = np.random.default_rng(sum(spatial))
    model = TFNO(n_modes=n_modes, hidden_channels=3, in_channels=2, lifting_channels=4, projection_channels=4,
                 n_layers=2, factorization=fact, rank=0.5, dtype="float64", seed=1)
    names = [g["name"] for g in model.param_groups()]
    assert not any(n.endswith("spectral.weight") for n in names)
    assert any("factor0" in n for n in names)
    fd_check(model, rng.standard_normal((2, 2) + spatial), rng)


def test_tfno_ranks_and_compression_match_tensorly_rules():
    # tensorly: Tucker fraction c solves c^N prod + c sum(I^2) = rank prod; CP rank = round(rank prod / sum)
    shape = (32, 32, 8, 5)
    r = tucker_rank(shape, 0.1)
    c = r[0] / 32
    total = np.prod(shape)
    assert abs(c ** 4 * total + c * sum(s * s for s in shape) - 0.1 * total) < 0.02 * total
    assert cp_rank(shape, 0.1) == round(0.1 * np.prod(shape) / sum(shape))
    model = TFNO(n_modes=(8, 8), hidden_channels=32, n_layers=4, rank=0.05, lifting_channels=8,
                 projection_channels=8)
    dense, fact = model.spectral_param_counts()
    assert dense == 4 * 2 * 32 * 32 * 8 * 5
    assert model.compression_ratio == pytest.approx(dense / fact) and model.compression_ratio > 10


def test_tfno_reconstruction_equals_dense_fno():
    """A TFNO whose reconstructed weights are copied into an FNO gives the FNO's output."""
    tf = TFNO(n_modes=(4, 4), hidden_channels=3, in_channels=1, lifting_channels=4, projection_channels=4,
              n_layers=2, factorization="cp", rank=0.7, seed=2)
    fno = FNO({k: v for k, v in tf.config.items() if k not in ("model", "factorization", "rank")})
    fp = fno.named_parameters()
    for name, view in tf.named_parameters().items():
        if name in fp:
            fp[name][...] = view
    for lname, layer in tf.layers:
        if hasattr(layer, "dense_weight") and lname.endswith("spectral"):
            fp[lname + ".weight"][...] = layer.dense_weight()
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 7))
    np.testing.assert_allclose(tf.forward(x), fno.forward(x), rtol=1e-12, atol=1e-12)
