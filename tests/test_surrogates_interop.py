"""Our FNO/TFNO against neuraloperator 0.3.0's with the same weights (skipped without torch/neuraloperator).

neuraloperator 0.3.0 builds its output spectrum as ``torch.cfloat`` whatever the input
dtype, so a float64 model of theirs is only float32-accurate; the 1e-10 checks run
with ``torch.cfloat`` patched to ``torch.cdouble`` for the duration of their forward and
backward (a float64 reference of the same code).
"""

import warnings
from unittest import mock

import numpy as np
import pytest

from solvers.surrogates import FNO, TFNO

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'hpcore[torch]')")
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import neuralop  # noqa: F401
except Exception as exc:  # noqa: BLE001 (ImportError, or an optional dependency such as wandb failing)
    pytest.skip(f"neuraloperator is not importable ({type(exc).__name__}: {exc}); "
                "pip install neuraloperator==0.3.0", allow_module_level=True)

from solvers.surrogates.torch_interop import append_grid, build_neuralop, copy_from_neuralop  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def run_both(model, theirs, x, rng, cdouble=True):
    y = model.forward(x)
    R = rng.standard_normal(y.shape)
    dx = model.backward(R.copy())
    xin = append_grid(x) if model.config["positional_embedding"] else x
    tx = torch.tensor(xin, requires_grad=True)
    patch = mock.patch.object(torch, "cfloat", torch.cdouble) if cdouble else mock.patch.object(torch, "cfloat",
                                                                                                  torch.cfloat)
    with patch:
        ty = theirs(tx)
        (ty * torch.tensor(R)).sum().backward()
    tdx = tx.grad.numpy()[:, :model.config["in_channels"]]
    return y, dx, ty.detach().numpy(), tdx


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


CASES = [
    ("fno", (8, 8), (16, 16), {"positional_embedding": True}),
    ("fno", (8, 8), (15, 17), {"neuralop_odd_shift": True}),
    ("fno", (16, 16), (16, 16), {}),                      # Nyquist bins kept on both axes
    ("fno", (6,), (15,), {"lifting_channels": 0}),
    ("fno", (4, 4, 4), (8, 7, 9), {"neuralop_odd_shift": True}),
    ("tfno-tucker", (8, 8), (16, 16), {"rank": 0.5}),
    ("tfno-cp", (8, 8), (12, 12), {"rank": 0.3, "factorization": "cp"}),
    ("tfno-tucker", (4, 4, 4), (8, 8, 8), {"rank": 0.4}),
]


@pytest.mark.parametrize("kind,n_modes,spatial,kw", CASES, ids=[f"{k}-{m}-{s}" for k, m, s, _ in CASES])
def test_forward_and_input_gradient_match_neuralop(kind, n_modes, spatial, kw):
    rng = np.random.default_rng(len(spatial) + sum(spatial))
    cfg = {"n_modes": n_modes, "hidden_channels": 5, "in_channels": 2, "out_channels": 2, "lifting_channels": 7,
           "projection_channels": 6, "n_layers": 3, "dtype": "float64", "seed": 4, **kw}
    model = TFNO(cfg) if kind.startswith("tfno") else FNO(cfg)
    theirs = build_neuralop(model, dtype=torch.float64)
    x = rng.standard_normal((3, 2) + spatial)
    y, dx, ty, tdx = run_both(model, theirs, x, rng)
    assert rel(y, ty) < 1e-10 and rel(dx, tdx) < 1e-10, (rel(y, ty), rel(dx, tdx))
    # unpatched neuraloperator: float32 spectrum, agreement to float32 round-off
    theirs.zero_grad()
    y, dx, ty, tdx = run_both(model, theirs, x, rng, cdouble=False)
    assert rel(y, ty) < 1e-5 and rel(dx, tdx) < 1e-5


def test_odd_sizes_differ_without_the_compat_shift():
    """neuraloperator 0.3.0 shifts odd-size outputs by one frequency; our default does not."""
    cfg = {"n_modes": (8, 8), "hidden_channels": 4, "in_channels": 1, "lifting_channels": 4,
           "projection_channels": 4, "n_layers": 2, "dtype": "float64"}
    ours, compat = FNO(cfg), FNO(dict(cfg, neuralop_odd_shift=True))
    theirs = build_neuralop(compat, dtype=torch.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 15, 16))
    y, _, ty, _ = run_both(compat, theirs, x, rng)
    assert rel(y, ty) < 1e-10
    assert rel(ours.forward(x), ty) > 1e-3
    x = rng.standard_normal((2, 1, 16, 15))  # odd last axis: nothing to shift
    np.testing.assert_allclose(ours.forward(x), compat.forward(x), rtol=1e-13, atol=1e-13)


def test_copy_from_neuralop_round_trip_and_parameter_counts():
    cfg = {"n_modes": (8, 8), "hidden_channels": 6, "in_channels": 1, "lifting_channels": 8,
           "projection_channels": 8, "n_layers": 2, "dtype": "float64", "seed": 1}
    for model in (FNO(cfg), TFNO(dict(cfg, rank=0.5)), TFNO(dict(cfg, rank=0.2, factorization="cp"))):
        theirs = build_neuralop(model)
        n_theirs = sum(2 * p.numel() if p.is_complex() else p.numel() for p in theirs.parameters())
        assert n_theirs == model.n_params, (model.config["model"], n_theirs, model.n_params)
        other = type(model)(dict(model.config, seed=9))
        assert not np.array_equal(other.params, model.params)
        copy_from_neuralop(theirs, other)
        np.testing.assert_array_equal(other.params, model.params)


def test_losses_match_neuralop():
    from neuralop.losses import H1Loss as NopH1
    from neuralop.losses import LpLoss as NopLp

    from solvers.surrogates import H1Loss, LpLoss

    rng = np.random.default_rng(3)
    for shape, d in (((4, 1, 12), 1), ((3, 1, 10, 9), 2), ((2, 1, 6, 5, 7), 3)):
        y = rng.standard_normal(shape)
        pred = y + 0.2 * rng.standard_normal(shape)
        tp, ty = torch.tensor(pred), torch.tensor(y)
        assert LpLoss("sum")(pred, y)[0] == pytest.approx(float(NopLp(d=d, p=2)(tp, ty)), rel=1e-12)
        ours = H1Loss(d=d, derivative="central", reduction="sum")(pred, y)[0]
        assert ours == pytest.approx(float(NopH1(d=d)(tp, ty)), rel=1e-12)
        # gradients through torch's autograd
        tp.requires_grad_(True)
        NopH1(d=d)(tp, ty).backward()
        np.testing.assert_allclose(H1Loss(d=d, derivative="central", reduction="sum")(pred, y)[1], tp.grad.numpy(),
                                   rtol=1e-10, atol=1e-14)
