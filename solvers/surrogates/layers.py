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
from numba import njit

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

    def __init__(self):
        self.p: dict = {}
        self.g: dict = {}

    def param_specs(self) -> list:
        """The parameters this layer owns, in buffer order."""
        return []

    def bind(self, params: dict, grads: dict) -> None:
        """Attach views of the model's flat buffers (dicts name -> array)."""
        self.p = params
        self.g = grads

    def forward(self, x):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - interface
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
        y = xp.matmul(self.p["weight"], x3)
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
        dx = xp.matmul(self.p["weight"].T, dy3)
        return dx.reshape((batch, self.in_channels) + dy.shape[2:])

    def clear(self):
        self._x = None


@njit(cache=True)
def _gelu_forward_kernel(x, y, d):
    for i in range(x.size):
        v = x[i]
        c = 0.5 * (1.0 + math.erf(v * _INV_SQRT2))
        y[i] = v * c
        d[i] = c + v * _INV_SQRT_2PI * math.exp(-0.5 * v * v)


@njit(cache=True)
def _mul_kernel(a, b, out):
    for i in range(a.size):
        out[i] = a[i] * b[i]


_DEVICE_GELU = {}


def _device_gelu_kernel():
    """CuPy kernel with the same structure as the numba one (compiled on first use)."""
    if "fwd" not in _DEVICE_GELU:
        import cupy

        _DEVICE_GELU["fwd"] = cupy.ElementwiseKernel(
            "T v", "T y, T d",
            "T c = 0.5 * (1.0 + erf(v * 0.7071067811865476));"
            "y = v * c; d = c + v * 0.3989422804014327 * exp(-0.5 * v * v);",
            "hpcore_gelu_fwd")
    return _DEVICE_GELU["fwd"]


def gelu_reference(x):
    """Exact GELU ``x * Phi(x)`` by ``math.erf`` element by element (test oracle)."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    out = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in flat])
    return out.reshape(np.shape(x))


class GELU(Layer):
    """Exact (erf) GELU, ``y = x * Phi(x)``, as PyTorch's default ``F.gelu``.

    Not collective. Forward stores ``dy/dx`` (one array), backward multiplies by it.
    Host: one fused numba pass; device: one CuPy elementwise kernel.
    """

    name = "gelu"

    def __init__(self):
        super().__init__()
        self._d = None

    def forward(self, x):
        xp = array_module(x)
        if xp is np:
            xc = np.ascontiguousarray(x)
            y = np.empty_like(xc)
            d = np.empty_like(xc)
            _gelu_forward_kernel(xc.reshape(-1), y.reshape(-1), d.reshape(-1))
        else:
            y, d = _device_gelu_kernel()(x)
        self._d = d
        return y

    def backward(self, dy):
        if self._d is None:
            raise RuntimeError("GELU.backward called before forward")
        if dy.shape != self._d.shape:
            raise ValueError(f"GELU.backward: dy shape {dy.shape} does not match the forward output {self._d.shape}")
        xp = array_module(dy)
        if xp is np:
            dyc = np.ascontiguousarray(dy)
            out = np.empty_like(dyc)
            _mul_kernel(dyc.reshape(-1), self._d.reshape(-1), out.reshape(-1))
            return out
        return dy * self._d

    def clear(self):
        self._d = None
