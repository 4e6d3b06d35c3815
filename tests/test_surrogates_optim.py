"""Optimizers, schedules and checkpoints of solvers.surrogates (torch as a reference where installed)."""

import h5py
import numpy as np
import pytest

from solvers.surrogates import FNO, TFNO, Adam, AdamW, CosineLR, LpLoss, StepLR
from solvers.surrogates.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
)


def adam_reference(p, grads, lr, b1, b2, eps, wd, decoupled):
    """Adam/AdamW as written in torch's docs, one step at a time in float64."""
    p = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1 ** t)
        vhat = v / (1 - b2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


@pytest.mark.parametrize("cls,wd", [(Adam, 0.0), (Adam, 0.1), (AdamW, 0.05)], ids=["adam", "adam-l2", "adamw"])
def test_adam_matches_reference(cls, wd):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(37)
    grads = [rng.standard_normal(37) for _ in range(5)]
    p, g = p0.copy(), np.zeros(37)
    opt = cls(p, g, lr=0.01, betas=(0.8, 0.95), eps=1e-7, weight_decay=wd)
    for gi in grads:
        g[...] = gi
        opt.step()
    ref = adam_reference(p0, grads, 0.01, 0.8, 0.95, 1e-7, wd, cls is AdamW)
    np.testing.assert_allclose(p, ref, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_matches_torch(cls):
    torch = pytest.importorskip("torch", reason="torch is not installed (optional reference)")
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(20)
    grads = [rng.standard_normal(20) for _ in range(4)]
    tp = torch.nn.Parameter(torch.tensor(p0))
    topt = getattr(torch.optim, cls)([tp], lr=0.02, weight_decay=0.1)
    p, g = p0.copy(), np.zeros(20)
    opt = {"Adam": Adam, "AdamW": AdamW}[cls](p, g, lr=0.02, weight_decay=0.1)
    for gi in grads:
        tp.grad = torch.tensor(gi)
        topt.step()
        g[...] = gi
        opt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_float32_adam_and_bad_arguments():
    p, g = np.ones(5, np.float32), np.full(5, 0.5, np.float32)
    Adam(p, g, lr=0.1).step()
    assert p.dtype == np.float32 and np.allclose(p, 0.9)
    with pytest.raises(ValueError, match="1-D arrays of one shape"):
        Adam(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="betas"):
        Adam(np.zeros(3), np.zeros(3), betas=(1.0, 0.9))


def test_schedules_match_torch_formulas():
    opt = Adam(np.zeros(2), np.zeros(2), lr=1.0)
    s = StepLR(opt, step_size=3, gamma=0.5)
    lrs = []
    for _ in range(7):
        s.step()
        lrs.append(opt.lr)
    assert lrs == [1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]
    opt = Adam(np.zeros(2), np.zeros(2), lr=2.0)
    c = CosineLR(opt, T_max=4, eta_min=0.5)
    got = []
    for _ in range(4):
        c.step()
        got.append(opt.lr)
    np.testing.assert_allclose(got, [0.5 + 1.5 * (1 + np.cos(np.pi * t / 4)) / 2 for t in range(1, 5)])
    torch = pytest.importorskip("torch", reason="torch is not installed (optional reference)")
    tp = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.Adam([tp], lr=2.0)
    ts = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=4, eta_min=0.5)
    ref = []
    for _ in range(4):
        topt.step()
        ts.step()
        ref.append(topt.param_groups[0]["lr"])
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def _train_steps(model, opt, sched, x, y, n):
    loss = LpLoss()
    for _ in range(n):
        model.zero_grad()
        _, d = loss(model.forward(x), y)
        model.backward(d)
        opt.step()
        sched.step()


def test_checkpoint_resumes_to_the_same_bits(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((4, 1, 8, 8)), rng.standard_normal((4, 1, 8, 8))
    cfg = {"n_modes": (4, 4), "hidden_channels": 4, "lifting_channels": 8, "projection_channels": 8, "n_layers": 2}
    a = FNO(cfg)
    opt_a = AdamW(a, lr=1e-2)
    sched_a = StepLR(opt_a, 2, 0.7)
    _train_steps(a, opt_a, sched_a, x, y, 3)
    path = tmp_path / "ck.h5"
    save_checkpoint(path, a, opt_a, sched_a, epoch=3, extra={"note": "x"})
    b = FNO(dict(cfg, seed=99))
    opt_b = AdamW(b, lr=1.0)
    sched_b = StepLR(opt_b, 5, 0.1)
    meta = load_checkpoint(path, b, opt_b, sched_b)
    assert meta["epoch"] == 3 and meta["extra"] == {"note": "x"} and meta["version"] == 1
    _train_steps(a, opt_a, sched_a, x, y, 3)
    _train_steps(b, opt_b, sched_b, x, y, 3)
    np.testing.assert_array_equal(a.params, b.params)
    c = load_model(path)
    assert c.config == FNO(cfg).config
    with h5py.File(path) as f:
        assert f.attrs["format"] == "hpcore.surrogates" and "hidden_channels" in f.attrs["config"]


def test_checkpoint_refuses_other_architectures(tmp_path):
    path = tmp_path / "ck.h5"
    save_checkpoint(path, FNO(n_modes=(4, 4), hidden_channels=4, lifting_channels=8, projection_channels=8))
    other = FNO(n_modes=(4, 4), hidden_channels=6, lifting_channels=8, projection_channels=8)
    with pytest.raises(CheckpointError, match="'hidden_channels' is 4 in the file and 6 in the model"):
        load_checkpoint(path, other)
    tf = TFNO(n_modes=(4, 4), hidden_channels=4, lifting_channels=8, projection_channels=8)
    with pytest.raises(CheckpointError, match="'factorization' is '<absent>' in the file and 'tucker'"):
        load_checkpoint(path, tf)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        m = FNO(n_modes=(4, 4), hidden_channels=4, lifting_channels=8, projection_channels=8)
        load_checkpoint(path, m, Adam(m))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something"
    with pytest.raises(CheckpointError, match="not a hpcore.surrogates file"):
        load_model(tmp_path / "other.h5")
