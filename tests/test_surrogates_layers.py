"""Layers of solvers.surrogates: gradients against central finite differences (float64), oracles, errors."""

import math
from typing import ClassVar

import numpy as np
import pytest

from solvers.surrogates import GELU, Dense, SpectralConv
from solvers.surrogates.layers import gelu_reference
from solvers.surrogates.models import Model
from solvers.surrogates.spectral import spectral_modes


class Stack(Model):
    """A test model: the given layers applied in sequence."""

    kind = "stack"
    defaults: ClassVar[dict] = {}

    def __init__(self, layers, dtype="float64", seed=0):
        self._given = layers
        super().__init__(dtype=dtype, seed=seed)

    def _build(self, cfg):
        layers = [(f"l{i}", layer) for i, layer in enumerate(self._given)]
        self._names = [n for n, _ in layers]
        return layers

    def _forward(self, x):
        return self._seq_forward(self._names, x)

    def _backward(self, dy, ready):
        return self._seq_backward(self._names, dy, ready)


def fd_check(model, x, rng, n_param_samples=150, n_input_samples=40, eps=1e-6, rtol=2e-6):
    """Compare backward's parameter and input gradients of sum(R * model(x)) with central differences."""
    y = model.forward(x)
    R = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = model.backward(R.copy())
    grads = model.grads.copy()

    def loss():
        return float((model.forward(x) * R).sum())

    n = model.params.size
    idx = np.arange(n) if n <= n_param_samples else rng.choice(n, n_param_samples, replace=False)
    fd = np.empty(idx.size)
    for j, i in enumerate(idx):
        old = model.params[i]
        model.params[i] = old + eps
        lp = loss()
        model.params[i] = old - eps
        lm = loss()
        model.params[i] = old
        fd[j] = (lp - lm) / (2 * eps)
    scale = max(np.abs(fd).max(), 1e-12)
    np.testing.assert_allclose(grads[idx], fd, rtol=0, atol=rtol * scale * 50 + 1e-9)
    flat = x.reshape(-1)
    jdx = rng.choice(flat.size, min(n_input_samples, flat.size), replace=False)
    fdx = np.empty(jdx.size)
    for j, i in enumerate(jdx):
        old = flat[i]
        flat[i] = old + eps
        lp = loss()
        flat[i] = old - eps
        lm = loss()
        flat[i] = old
        fdx[j] = (lp - lm) / (2 * eps)
    scale = max(np.abs(fdx).max(), 1e-12)
    np.testing.assert_allclose(dx.reshape(-1)[jdx], fdx, rtol=0, atol=rtol * scale * 50 + 1e-9)


@pytest.mark.parametrize("spatial", [(), (5,), (4, 3), (2, 3, 4)], ids=["0d", "1d", "2d", "3d"])
def test_dense_gradients(spatial):
    rng = np.random.default_rng(1)
    model = Stack([Dense(3, 4), Dense(4, 2, bias=False)])
    fd_check(model, rng.standard_normal((3, 3) + spatial), rng)


def test_dense_matches_einsum():
    rng = np.random.default_rng(2)
    model = Stack([Dense(3, 5)])
    x = rng.standard_normal((2, 3, 4, 6))
    W, b = model.named_parameters()["l0.weight"], model.named_parameters()["l0.bias"]
    ref = np.einsum("oi,bixy->boxy", W, x) + b[:, None, None]
    np.testing.assert_allclose(model.forward(x), ref, rtol=1e-13, atol=1e-13)


def test_gelu_exact_erf_and_gradient():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 7)) * 3
    np.testing.assert_allclose(GELU().forward(x), gelu_reference(x), rtol=1e-14, atol=1e-15)
    # float32 path agrees with the float64 oracle to float32 round-off
    y32 = GELU().forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, gelu_reference(x), rtol=2e-6, atol=2e-6)
    model = Stack([Dense(3, 3), GELU(), Dense(3, 2)])
    fd_check(model, x, rng)


def naive_spectral(x, W, bias, n_modes, fft_norm="backward", unshift=np.fft.ifftshift):
    """Oracle: full complex FFT, the mode window of neuraloperator (fftshift + centre slice), irfft.

    ``unshift=np.fft.fftshift`` is what neuraloperator 0.3.0 does (differs for odd sizes).
    """
    order = len(n_modes)
    axes = tuple(range(2, 2 + order))
    spatial = x.shape[2:]
    X = np.fft.rfftn(x, axes=axes, norm=fft_norm)
    if order > 1:
        X = np.fft.fftshift(X, axes=axes[:-1])
    out = np.zeros((x.shape[0], W.shape[1]) + X.shape[2:], dtype=complex)
    xs, ws = [slice(None)] * 2, [slice(None)] * 2
    for a, (size, m) in enumerate(zip(X.shape[2:], W.shape[2:])):
        k = min(size, m)
        if a < order - 1:
            st = size - k
            xs.append(slice(st // 2, size - (st - st // 2)))
            sw = m - k
            ws.append(slice(sw // 2, m - (sw - sw // 2)))
        else:
            xs.append(slice(0, k))
            ws.append(slice(0, k))
    out[tuple(xs)] = np.einsum("bi...,io...->bo...", X[tuple(xs)], W[tuple(ws)])
    if order > 1:
        out = unshift(out, axes=axes[:-1])
    y = np.fft.irfftn(out, s=spatial, axes=axes, norm=fft_norm)
    return y + bias.reshape((-1,) + (1,) * order)


CASES = [
    ((8,), (8,)),        # last-axis Nyquist bin kept (8 // 2 + 1 = 5 of 5 bins)
    ((7,), (8,)),        # odd size, more modes than bins: weight sliced
    ((9,), (4,)),
    ((8, 8), (8, 8)),    # Nyquist on both axes
    ((6, 7), (4, 6)),
    ((5, 8), (6, 4)),    # modes > size on the first axis
    ((7, 6), (3, 5)),    # odd modes
    ((4, 5, 6), (4, 4, 6)),
    ((3, 4, 5), (2, 3, 4)),
]


@pytest.mark.parametrize("transform", ["dft", "fft"])
@pytest.mark.parametrize("spatial,n_modes", CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_spectral_matches_oracle_and_fd(spatial, n_modes, transform):
    rng = np.random.default_rng(sum(spatial) + 7 * sum(n_modes))
    conv = SpectralConv(3, 2, n_modes, transform=transform)
    model = Stack([conv])
    x = rng.standard_normal((2, 3) + spatial)
    ref = naive_spectral(x, conv.p["weight"], conv.p["bias"], n_modes)
    np.testing.assert_allclose(model.forward(x), ref, rtol=1e-12, atol=1e-12)
    fd_check(model, x, rng)


@pytest.mark.parametrize("transform", ["dft", "fft"])
@pytest.mark.parametrize("norm", ["forward", "ortho"])
def test_spectral_norms(norm, transform):
    rng = np.random.default_rng(5)
    conv = SpectralConv(2, 2, (4, 4), fft_norm=norm, transform=transform)
    model = Stack([conv])
    x = rng.standard_normal((2, 2, 6, 5))
    np.testing.assert_allclose(model.forward(x), naive_spectral(x, conv.p["weight"], conv.p["bias"], (4, 4), norm),
                               rtol=1e-12, atol=1e-12)
    fd_check(model, x, rng)


@pytest.mark.parametrize("transform", ["dft", "fft"])
def test_spectral_float32_stays_float32(transform):
    rng = np.random.default_rng(6)
    m64 = Stack([SpectralConv(2, 3, (4, 4), transform=transform), GELU(), Dense(3, 1)])
    m32 = Stack([SpectralConv(2, 3, (4, 4), transform=transform), GELU(), Dense(3, 1)], dtype="float32")
    m32.params[...] = m64.params
    x = rng.standard_normal((2, 2, 8, 8))
    y32 = m32.forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    y64 = m64.forward(x)
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    dx32 = m32.backward(np.ones_like(y32))
    dx64 = m64.backward(np.ones_like(y64))
    assert dx32.dtype == np.float32 and m32.grads.dtype == np.float32
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-4 * np.abs(dx64).max())
    np.testing.assert_allclose(m32.grads, m64.grads, rtol=1e-3, atol=1e-4 * np.abs(m64.grads).max())


def test_spectral_modes_are_resolution_independent_for_even_modes():
    for size in (8, 9, 16, 33):
        idx, _, kept = spectral_modes((size, size), (6, 4))
        freqs = np.where(idx[0] > size // 2, idx[0] - size, idx[0])
        assert list(freqs) == [-3, -2, -1, 0, 1, 2]
        assert idx[1] == 4 and kept == (6, 4)


def test_complex_views_share_the_flat_buffer():
    model = Stack([Dense(1, 3), SpectralConv(3, 3, (4,))])
    w = model.named_parameters()["l1.weight"]
    assert np.iscomplexobj(w) and np.shares_memory(w, model.params)
    start = next(g for g in model.param_groups() if g["name"] == "l1.weight")["start"]
    assert start % 2 == 0
    w[0, 0, 0] = 2 + 3j
    assert model.params[start] == 2 and model.params[start + 1] == 3


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_modes"):
        SpectralConv(2, 2, (4, 4, 4, 4))
    with pytest.raises(ValueError, match="fft_norm"):
        SpectralConv(2, 2, (4,), fft_norm="none")
    with pytest.raises(ValueError, match="transform"):
        SpectralConv(2, 2, (4,), transform="fast")
    with pytest.raises(ValueError, match="in_channels"):
        Dense(0, 2)
    model = Stack([SpectralConv(2, 2, (4, 4))])
    with pytest.raises(ValueError, match=r"input must be \(batch, 2"):
        model.forward(np.zeros((1, 3, 8, 8)))
    with pytest.raises(RuntimeError, match="before forward"):
        Dense(2, 2).backward(np.zeros((1, 2)))
    assert math.isfinite(float(model.forward(np.ones((1, 2, 8, 8))).sum()))


@pytest.mark.parametrize("transform", ["dft", "fft"])
@pytest.mark.parametrize("spatial", [(7, 6), (5, 7, 4)], ids=["2d", "3d"])
def test_spectral_neuralop_odd_shift_gradients(spatial, transform):
    rng = np.random.default_rng(8)
    conv = SpectralConv(2, 3, (4,) * len(spatial), neuralop_odd_shift=True, transform=transform)
    model = Stack([conv])
    x = rng.standard_normal((2, 2) + spatial)
    ref = naive_spectral(x, conv.p["weight"], conv.p["bias"], (4,) * len(spatial), unshift=np.fft.fftshift)
    np.testing.assert_allclose(model.forward(x), ref, rtol=1e-12, atol=1e-12)
    plain = Stack([SpectralConv(2, 3, (4,) * len(spatial))])
    plain.params[...] = model.params
    assert np.abs(plain.forward(x) - ref).max() > 1e-3  # the default differs at odd sizes
    fd_check(model, x, rng)


def test_gelu_float32_derivative_against_float64():
    x = np.linspace(-9, 9, 20001)
    g = np.random.default_rng(0).standard_normal(x.size)
    layer64, layer32 = GELU(), GELU()
    layer64.forward(x)
    layer32.forward(x.astype(np.float32))
    d64 = layer64.backward(g)
    d32 = layer32.backward(g.astype(np.float32))
    assert d32.dtype == np.float32
    np.testing.assert_allclose(d32, d64, rtol=0, atol=3e-6 * np.abs(g).max())
    with pytest.raises(TypeError, match="float32 or float64"):
        GELU().forward(np.zeros(3, dtype=np.float16))
