"""Layers with their own forward and backward passes on NumPy (host) or CuPy (device).

Every layer works on arrays laid out ``(batch, channels, *spatial)`` (``spatial`` may
be empty). ``forward(x)`` saves what ``backward`` needs; ``backward(dy) -> dx``
*accumulates* the parameter gradients (``+=``) into the gradient views that the
owning model bound to it (see :mod:`solvers.surrogates.models`). A layer never
allocates its own parameters: it declares them with :meth:`Layer.param_specs` and
the model hands it views of one contiguous flat buffer, so one collective can move
all of a model's gradients.

Parameters are real or complex; a complex parameter is a ``.view(complex)`` of
consecutive (real, imaginary) float pairs of the flat buffer, and its gradient holds
``dL/dRe + 1j * dL/dIm`` (PyTorch's convention), so the flat real gradient buffer is
exactly the gradient with respect to the flat real parameter buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit, vectorize

from hpcore.arrays import array_module

__all__ = ["GELU", "Dense", "Layer", "ParamSpec", "gelu_reference"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor of a layer.

    ``shape`` is the tensor's shape; ``is_complex`` makes it a complex view of
    ``2 * prod(shape)`` floats; ``init(rng, shape) -> ndarray`` draws its initial
    value in float64 (complex128 for complex parameters).
    """

    name: str
    shape: tuple[int, ...]
    is_complex: bool = False
    init: Callable | None = None

    @property
    def size(self) -> int:
        """Number of (real or complex) elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_real(self) -> int:
        """Number of floats it takes in the flat buffer."""
        return self.size * (2 if self.is_complex else 1)


class Layer:
    """Base class: declares parameters, receives views, runs forward and backward.

    Not collective. Subclasses set ``self.p`` and ``self.g`` (dicts name -> view)
    through :meth:`bind`.
    """

    name = "layer"

    #: set by the owning model: the forward output / the input gradient may live in a
    #: buffer this layer reuses on its next call (host only; never for arrays the model
    #: hands back to its caller). Saves the page faults of fresh large temporaries.
    reuse_output = False
    reuse_grad = False

    def __init__(self):
        self.p: dict = {}
        self.g: dict = {}
        self._buffers: dict = {}

    def _out(self, xp, role: str, shape, dtype):
        """A reusable host buffer for ``role`` ("y" or "dx") when allowed, else ``None``."""
        if xp is not np or not (self.reuse_output if role == "y" else self.reuse_grad):
            return None
        buf = self._buffers.get(role)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = self._buffers[role] = np.empty(shape, dtype=dtype)
        return buf

    def param_specs(self) -> list:
        """The parameters this layer owns, in buffer order."""
        return []

    def bind(self, params: dict, grads: dict) -> None:
        """Attach views of the model's flat buffers (dicts name -> array)."""
        self.p = params
        self.g = grads

    def forward(self, x):  # pragma: no cover - interface
        """Output for ``x``; saves what backward needs."""
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - interface
        """Accumulate parameter gradients; return the input gradient."""
        raise NotImplementedError

    def clear(self) -> None:
        """Drop what forward saved (frees activations)."""


def _uniform_init(bound):
    def init(rng, shape):
        return rng.uniform(-bound, bound, size=shape)
    return init


def _channels_3d(x, name):
    if x.ndim < 2:
        raise ValueError(f"{name}: expected an array (batch, channels, *spatial), got shape {x.shape}")
    return x.reshape(x.shape[0], x.shape[1], -1)


class Dense(Layer):
    """Affine map on the channel axis: ``y[b, o, ...] = sum_i W[o, i] x[b, i, ...] + bias[o]``.

    Not collective. The same as a 1x1 convolution (PyTorch ``ConvNd(in, out, 1)``;
    ``W`` is its weight without the trailing unit axes). Used for lifting,
    projection, the pointwise skip of a Fourier block (``bias=False``) and the MLP.

    Parameters
    ----------
    in_channels, out_channels : int
    bias : bool
        Whether to add a learned bias (default True).
    """

    name = "dense"

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        for arg, val in (("in_channels", in_channels), ("out_channels", out_channels)):
            if int(val) != val or val < 1:
                raise ValueError(f"Dense: {arg} must be a positive integer, got {val!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.bias = bool(bias)
        self._x = None

    def param_specs(self):
        """``weight (out, in)`` and ``bias (out,)``, PyTorch's uniform initialisation."""
        bound = 1.0 / math.sqrt(self.in_channels)  # torch's kaiming_uniform(a=sqrt(5)) bound
        specs = [ParamSpec("weight", (self.out_channels, self.in_channels), False, _uniform_init(bound))]
        if self.bias:
            specs.append(ParamSpec("bias", (self.out_channels,), False, _uniform_init(bound)))
        return specs

    def forward(self, x):
        """``x``: ``(batch, in_channels, *spatial)`` -> ``(batch, out_channels, *spatial)``."""
        if x.ndim < 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"Dense: input must be (batch, {self.in_channels}, *spatial), got shape {x.shape}")
        xp = array_module(x)
        x3 = _channels_3d(x, "Dense")
        self._x = x3
        W = self.p["weight"]
        out = self._out(xp, "y", (x3.shape[0], self.out_channels, x3.shape[2]), np.result_type(W.dtype, x3.dtype))
        y = xp.matmul(W, x3, out=out)
        if self.bias:
            y += self.p["bias"][:, None]
        return y.reshape((x.shape[0], self.out_channels) + x.shape[2:])

    def backward(self, dy):
        """Accumulate ``dW``, ``dbias``; return ``dx`` of the input's shape."""
        xp = array_module(dy)
        x3 = self._x
        if x3 is None:
            raise RuntimeError("Dense.backward called before forward")
        dy3 = _channels_3d(dy, "Dense")
        if dy3.shape != (x3.shape[0], self.out_channels, x3.shape[2]):
            raise ValueError(f"Dense.backward: dy shape {dy.shape} does not match the forward output")
        batch, _, npts = x3.shape
        # dW = sum_b dy_b x_b^T: one GEMM over (batch * points) when it is cheap to lay out
        if npts == 1:
            self.g["weight"] += dy3[:, :, 0].T @ x3[:, :, 0]
        else:
            self.g["weight"] += xp.matmul(dy3, x3.transpose(0, 2, 1)).sum(axis=0)
        if self.bias:
            self.g["bias"] += dy3.sum(axis=(0, 2))
        W = self.p["weight"]
        out = self._out(xp, "dx", (batch, self.in_channels, npts), np.result_type(W.dtype, dy3.dtype))
        dx = xp.matmul(W.T, dy3, out=out)
        return dx.reshape((batch, self.in_channels) + dy.shape[2:])

    def clear(self):
        """Drop the saved input."""
        self._x = None


@njit(cache=True, fastmath=True, inline="always")
def _erf32(x):
    """Erf in float32 by a rational approximation on [-4, 4] (|error| < 5e-7; Eigen's fast erf)."""
    x = min(max(x, np.float32(-4.0)), np.float32(4.0))  # min/max (not branches) keep the loop vectorizable
    x2 = x * x
    p = x2 * np.float32(-2.72614225801306e-10) + np.float32(2.77068142495902e-08)
    p = x2 * p + np.float32(-2.10102402082508e-06)
    p = x2 * p + np.float32(-5.69250639462346e-05)
    p = x2 * p + np.float32(-7.34990630326855e-04)
    p = x2 * p + np.float32(-2.95459980854025e-03)
    p = x2 * p + np.float32(-1.60960333262415e-02)
    p = x * p
    q = x2 * np.float32(-1.45660718464996e-05) + np.float32(-2.13374055278905e-04)
    q = x2 * q + np.float32(-1.68282697438203e-03)
    q = x2 * q + np.float32(-7.37332916720468e-03)
    q = x2 * q + np.float32(-1.42647390514189e-02)
    return p / q


@njit(cache=True, fastmath=True, inline="always")
def _pdf32(x):
    """``exp(-x^2 / 2)`` in float32 without a libm call (vectorizable): ``exp(-t) = exp(-t / 32)^32``.

    ``|x|`` is clamped to 6 (the true value there is 1.5e-8); degree-8 Taylor on
    ``[0, 0.5625]`` then five squarings: relative error about 1e-6.
    """
    x = min(max(x, np.float32(-6.0)), np.float32(6.0))
    s = x * x * np.float32(-1.0 / 64.0)
    p = np.float32(1.0 / 40320.0) * s + np.float32(1.0 / 5040.0)
    p = p * s + np.float32(1.0 / 720.0)
    p = p * s + np.float32(1.0 / 120.0)
    p = p * s + np.float32(1.0 / 24.0)
    p = p * s + np.float32(1.0 / 6.0)
    p = p * s + np.float32(0.5)
    p = p * s + np.float32(1.0)
    p = p * s + np.float32(1.0)
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p * p


# numba ufuncs: the loops numba's @vectorize generates are SIMD-vectorized by LLVM,
# a libm erf/exp call in the loop body is not; so float32 uses the rational erf and
# the polynomial exp above (one pass forward, one backward, as PyTorch's kernels),
# float64 the exact math.erf / math.exp.
@vectorize(["float32(float32)"], cache=True, fastmath=True)
def _gelu32(v):
    return v * (np.float32(0.5) + np.float32(0.5) * _erf32(v * np.float32(_INV_SQRT2)))


@vectorize(["float32(float32, float32)"], cache=True, fastmath=True)
def _gelu_grad32(v, g):
    return g * (np.float32(0.5) + np.float32(0.5) * _erf32(v * np.float32(_INV_SQRT2))
                + v * np.float32(_INV_SQRT_2PI) * _pdf32(v))


@vectorize(["float64(float64)"], cache=True)
def _gelu64(v):
    return v * 0.5 * (1.0 + math.erf(v * _INV_SQRT2))


@vectorize(["float64(float64, float64)"], cache=True)
def _gelu_grad64(v, g):
    return g * (0.5 * (1.0 + math.erf(v * _INV_SQRT2)) + v * _INV_SQRT_2PI * math.exp(-0.5 * v * v))


_HOST_GELU = {np.dtype(np.float32): (_gelu32, _gelu_grad32), np.dtype(np.float64): (_gelu64, _gelu_grad64)}


def _host_gelu(dtype):
    try:
        return _HOST_GELU[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"GELU: dtype must be float32 or float64, got {dtype}") from None


_DEVICE_GELU = {}


def _device_gelu_kernel():
    """CuPy kernel with the same structure as the numba one (compiled on first use)."""
    if "fwd" not in _DEVICE_GELU:
        import cupy

        _DEVICE_GELU["fwd"] = cupy.ElementwiseKernel(
            "T v", "T y", "y = v * 0.5 * (1.0 + erf(v * 0.7071067811865476));", "hpcore_gelu_fwd")
        _DEVICE_GELU["bwd"] = cupy.ElementwiseKernel(
            "T v, T g", "T dx",
            "dx = g * (0.5 * (1.0 + erf(v * 0.7071067811865476)) + v * 0.3989422804014327 * exp(-0.5 * v * v));",
            "hpcore_gelu_bwd")
    return _DEVICE_GELU["fwd"], _DEVICE_GELU["bwd"]


def gelu_reference(x):
    """Exact GELU ``x * Phi(x)`` by ``math.erf`` element by element (test oracle)."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    out = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in flat])
    return out.reshape(np.shape(x))


class GELU(Layer):
    """Exact (erf) GELU, ``y = x * Phi(x)``, as PyTorch's default ``F.gelu``.

    Not collective. Forward keeps a reference to ``x`` (layers never modify their
    inputs), backward computes ``dy * gelu'(x)`` in one pass. Host: numba ufuncs
    (float64: exact ``math.erf``/``math.exp``; float32: a rational erf with error
    below 5e-7 and a polynomial exp, both SIMD-vectorized); device: CuPy
    elementwise kernels of the same structure.
    """

    name = "gelu"

    def __init__(self):
        super().__init__()
        self._x = None

    def forward(self, x):
        """``x * Phi(x)``, elementwise."""
        xp = array_module(x)
        self._x = x
        if xp is not np:
            return _device_gelu_kernel()[0](x)
        out = self._out(xp, "y", x.shape, x.dtype)
        fwd = _host_gelu(x.dtype)[0]
        return fwd(x) if out is None else fwd(x, out=out)

    def backward(self, dy):
        """``dy * gelu'(x)``."""
        if self._x is None:
            raise RuntimeError("GELU.backward called before forward")
        if dy.shape != self._x.shape:
            raise ValueError(f"GELU.backward: dy shape {dy.shape} does not match the forward output {self._x.shape}")
        xp = array_module(dy)
        dy = dy.astype(self._x.dtype, copy=False)
        if xp is not np:
            return _device_gelu_kernel()[1](self._x, dy)
        out = self._out(xp, "dx", dy.shape, dy.dtype)
        bwd = _host_gelu(dy.dtype)[1]
        return bwd(self._x, dy) if out is None else bwd(self._x, dy, out=out)

    def clear(self):
        """Drop the saved input."""
        self._x = None
