"""Spectral convolution (the Fourier layer of an FNO) in 1-D, 2-D and 3-D, forward and backward.

``y = irfftn(P(W * T(rfftn(x)))) + bias``: the real FFT over the spatial axes, a
truncation ``T`` to the retained modes (both signs of every non-last axis, the
first modes of the last, halved, axis), a complex matrix ``W[:, :, mode]`` per
retained mode acting on the channels, zero padding ``P`` back to the full
spectrum and the inverse real FFT.

The retained modes and the weight layout follow neuraloperator 0.3.0's
``SpectralConv`` exactly, so weights transfer both ways: ``n_modes[-1]`` counts
modes of the full last axis and keeps ``n_modes[-1] // 2 + 1`` of the half
spectrum; along a non-last axis of size ``N`` with ``m`` weight modes the kept
frequencies are ``p - N // 2`` for ``p`` in ``[(N - k) // 2, (N - k) // 2 + k)``,
``k = min(N, m)`` (a centred window of the ``fftshift``-ed spectrum), and weight
index ``(m - k) // 2 + i`` goes with the ``i``-th of them. With even ``m`` the
window is ``-m/2 .. m/2 - 1`` at every resolution, so a trained layer evaluates at
other grid sizes (zero-shot super-resolution).

Backward uses the exact adjoints of the real FFTs as real-linear maps: the adjoint
of ``irfftn`` is ``c * rfftn`` with the inverse normalisation (``c = 2`` on last-axis
bins that stand for two conjugate bins, 1 on the zero and Nyquist bins), the
adjoint of ``rfftn`` is ``irfftn(w * .)`` with ``w = 1 / c``. Nyquist bins, odd
and even sizes need no other special case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hpcore.arrays import array_module

from .layers import Layer, ParamSpec

__all__ = ["SpectralConv", "spectral_modes", "weight_modes"]

_FFT_NORMS = ("backward", "forward", "ortho")
_INVERSE_NORM = {"backward": "forward", "forward": "backward", "ortho": "ortho"}


def weight_modes(n_modes: Sequence[int]) -> tuple:
    """Shape of the mode axes of the weight for user-facing ``n_modes``.

    The last entry becomes ``n_modes[-1] // 2 + 1`` (the half spectrum of the real FFT),
    as in neuraloperator.
    """
    modes = [int(m) for m in n_modes]
    modes[-1] = modes[-1] // 2 + 1
    return tuple(modes)


def spectral_modes(spatial_shape: Sequence[int], wmodes: Sequence[int]):
    """Which spectrum entries and which weight entries a grid of ``spatial_shape`` uses.

    Returns ``(axes_index, weight_slices, kept)``: for each non-last spatial axis an
    int array of (unshifted) FFT indices, for the last axis the count of leading
    half-spectrum bins; the slices of the weight's mode axes; and the kept shape.
    """
    idx, wsl, kept = [], [], []
    order = len(wmodes)
    for a, (size, m) in enumerate(zip(spatial_shape, wmodes)):
        if a == order - 1:
            k = min(size // 2 + 1, m)
            idx.append(k)
            wsl.append(slice(0, k))
        else:
            k = min(size, m)
            xo, wo = (size - k) // 2, (m - k) // 2
            freq = np.arange(xo, xo + k) - size // 2
            idx.append(freq % size)
            wsl.append(slice(wo, wo + k))
        kept.append(k)
    return idx, tuple(wsl), tuple(kept)


def _index_tuple(xp, nonlast, klast):
    ix = np.ix_(*[np.asarray(i) for i in nonlast]) if nonlast else ()
    return (slice(None), slice(None)) + tuple(xp.asarray(i) for i in ix) + (slice(0, klast),)


def _axis_apply(xp, A, F, axis):
    """Contract axis ``axis`` of ``A`` with matrix ``F (k, N)`` (one GEMM); the axis keeps its place."""
    A0 = xp.moveaxis(A, axis, 0)
    rest = A0.shape[1:]
    R = xp.matmul(F, A0.reshape(A0.shape[0], -1))
    return xp.moveaxis(R.reshape((F.shape[0],) + rest), 0, axis)


class _Plan:
    """Index arrays and scale vectors for one spatial shape (cached per shape and module).

    ``index`` picks the retained input modes, ``out_index`` where their results go
    (the same entries unless ``odd_shift``: neuraloperator 0.3.0's odd-size shift).
    """

    def __init__(self, xp, spatial, wmodes, odd_shift=False):
        idx, self.wsl, self.kept = spectral_modes(spatial, wmodes)
        klast = idx[-1]
        self.index = _index_tuple(xp, idx[:-1], klast)
        out = None
        if odd_shift and any(n % 2 for n in spatial[:-1]):
            out = [(i - 1) % n if n % 2 else i for i, n in zip(idx[:-1], spatial[:-1])]
            self.out_index = _index_tuple(xp, out, klast)
        else:
            self.out_index = self.index
        nlast = spatial[-1]
        j = np.arange(klast)
        c = np.where((j == 0) | (2 * j == nlast), 1.0, 2.0)
        self.c = c  # host float64; cast per dtype below
        self._cast = {}
        self.xp = xp
        self.spectrum_last = nlast // 2 + 1
        self.M = int(np.prod(self.kept))
        self.spatial = tuple(spatial)
        self._in_freq = [np.asarray(i) for i in idx[:-1]]
        self._out_freq = ([np.asarray(i) for i in out] if odd_shift and any(n % 2 for n in spatial[:-1])
                          else self._in_freq)
        self._dft = {}

    def dft(self, dtype, fft_norm):
        """Truncated DFT matrices for ``dtype`` (cached).

        ``FL (NL, 2 kL)`` real: last-axis forward transform to interleaved (re, im)
        pairs, normalisation included; ``GL (2 kL, NL)`` real: the inverse with the
        ``c`` weights (what ``irfft`` does: imaginary parts of the zero and Nyquist
        bins drop out by themselves); ``F[a] (k_a, N_a)`` and ``G[a] (N_a, k_a)``
        complex: forward and inverse DFTs of the non-last axes restricted to the kept
        frequencies; plus the transposes / conjugate transposes the adjoints use.
        """
        key = (np.dtype(dtype).str, fft_norm)
        if key not in self._dft:
            xp = self.xp
            ntot = float(np.prod(self.spatial))
            s_fwd = {"backward": 1.0, "forward": 1.0 / ntot, "ortho": ntot ** -0.5}[fft_norm]
            s_inv = {"backward": 1.0 / ntot, "forward": 1.0, "ortho": ntot ** -0.5}[fft_norm]
            nl = self.spatial[-1]
            kl = self.kept[-1]
            theta = 2 * np.pi * np.outer(np.arange(nl), np.arange(kl)) / nl  # (NL, kL)
            FL = np.empty((nl, 2 * kl))
            FL[:, 0::2], FL[:, 1::2] = s_fwd * np.cos(theta), -s_fwd * np.sin(theta)
            GL = np.empty((2 * kl, nl))
            sc = s_inv * self.c[:, None]
            GL[0::2], GL[1::2] = sc * np.cos(theta.T), -sc * np.sin(theta.T)
            cdt = np.result_type(dtype, np.complex64)
            F, G = [], []
            for n, fin, fout in zip(self.spatial[:-1], self._in_freq, self._out_freq):
                grid = np.arange(n)
                F.append(np.exp(-2j * np.pi * np.outer(fin, grid) / n))
                G.append(np.exp(2j * np.pi * np.outer(grid, fout) / n))

            def dev(a, dt):
                return xp.asarray(np.ascontiguousarray(a).astype(dt))

            self._dft[key] = {
                "FL": dev(FL, dtype), "GL": dev(GL, dtype), "FLt": dev(FL.T, dtype), "GLt": dev(GL.T, dtype),
                "F": [dev(f, cdt) for f in F], "G": [dev(g, cdt) for g in G],
                "Fh": [dev(f.conj().T, cdt) for f in F], "Gh": [dev(g.conj().T, cdt) for g in G]}
        return self._dft[key]

    def scales(self, dtype):
        """``(c, 1/c)`` as arrays of ``dtype`` on the plan's module."""
        key = np.dtype(dtype).str
        if key not in self._cast:
            self._cast[key] = (self.xp.asarray(self.c.astype(dtype)), self.xp.asarray((1.0 / self.c).astype(dtype)))
        return self._cast[key]


class SpectralConv(Layer):
    """Fourier layer: truncated-mode complex channel mixing between real FFTs.

    Not collective.

    Parameters
    ----------
    in_channels, out_channels : int
    n_modes : sequence of int
        Retained modes per spatial axis (1 to 3 axes), neuraloperator's meaning:
        along the last axis ``n_modes[-1] // 2 + 1`` half-spectrum bins are kept.
    bias : bool
        Add a learned per-channel bias after the inverse FFT (default True, as
        neuraloperator's ``SpectralConv``).
    fft_norm : {"backward", "forward", "ortho"}
        Normalisation of the forward FFT (neuraloperator's FNO uses its default,
        "backward").
    neuralop_odd_shift : bool
        Reproduce neuraloperator 0.3.0 on odd-sized non-last axes: it undoes its
        ``fftshift`` with ``fftshift`` (not ``ifftshift``), so the result computed
        for frequency ``f`` lands on ``f - 1``. Off by default (the mathematically
        consistent convolution); on for weight-exact interoperability at odd sizes.
        Even sizes are unaffected.
    transform : {"dft", "fft"}
        How the truncated spectrum is computed: "dft" (default) multiplies by the
        DFT matrices restricted to the kept modes (real GEMMs for the last axis,
        complex GEMMs for the others: only the retained modes are ever computed,
        several times faster than full FFTs for FNO-sized grids on a CPU core);
        "fft" takes full ``rfftn``/``irfftn`` and slices. Same linear map.

    Notes
    -----
    Weight ``(in_channels, out_channels, *weight_modes(n_modes))`` complex; bias
    ``(out_channels,)`` real. Inputs with fewer points than modes use the central
    part of the weight, as neuraloperator does.
    """

    name = "spectral"

    def __init__(self, in_channels: int, out_channels: int, n_modes: Sequence[int], bias: bool = True,
                 fft_norm: str = "backward", neuralop_odd_shift: bool = False, transform: str = "dft"):
        super().__init__()
        if transform not in ("dft", "fft"):
            raise ValueError(f"SpectralConv: transform must be 'dft' or 'fft', got {transform!r}")
        self.transform = transform
        n_modes = [n_modes] if isinstance(n_modes, (int, np.integer)) else list(n_modes)
        if not 1 <= len(n_modes) <= 3:
            raise ValueError(f"SpectralConv: n_modes must have 1 to 3 entries, got {n_modes!r}")
        if any(int(m) != m or m < 1 for m in n_modes):
            raise ValueError(f"SpectralConv: n_modes must be positive integers, got {n_modes!r}")
        if fft_norm not in _FFT_NORMS:
            raise ValueError(f"SpectralConv: fft_norm must be one of {_FFT_NORMS}, got {fft_norm!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.n_modes = tuple(int(m) for m in n_modes)
        self.order = len(self.n_modes)
        self.wmodes = weight_modes(self.n_modes)
        self.bias = bool(bias)
        self.fft_norm = fft_norm
        self.neuralop_odd_shift = bool(neuralop_odd_shift)
        self._plans = {}
        self._saved = None

    # -- parameters -------------------------------------------------------------------
    @property
    def init_std(self) -> float:
        """Neuraloperator's ``init_std='auto'``: ``sqrt(2 / (in + out))``."""
        return math.sqrt(2.0 / (self.in_channels + self.out_channels))

    def weight_shape(self) -> tuple:
        """``(in_channels, out_channels, *weight_modes(n_modes))``."""
        return (self.in_channels, self.out_channels) + self.wmodes

    def param_specs(self):
        """The weight parameters (see :meth:`weight_specs`) and the bias."""
        std = self.init_std

        def init_w(rng, shape):
            s = std / math.sqrt(2.0)
            return rng.normal(0.0, s, size=shape) + 1j * rng.normal(0.0, s, size=shape)

        specs = self.weight_specs(init_w)
        if self.bias:
            specs.append(ParamSpec("bias", (self.out_channels,), False,
                                   lambda rng, shape: std * rng.normal(size=shape)))
        return specs

    def weight_specs(self, init_w):
        """The parameters that represent the complex weight (dense here; factorized in TFNO)."""
        return [ParamSpec("weight", self.weight_shape(), True, init_w)]

    def dense_weight(self):
        """The complex weight ``(in, out, *modes)`` used by the contraction."""
        return self.p["weight"]

    def accumulate_weight_grad(self, dweight, wsl) -> None:
        """Add ``dL/dW`` for the weight entries ``W[:, :, *wsl]`` into the parameter gradients."""
        self.g["weight"][(slice(None), slice(None)) + wsl] += dweight

    # -- forward / backward -----------------------------------------------------------
    def _plan(self, xp, spatial):
        key = (xp.__name__, spatial)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(xp, spatial, self.wmodes, self.neuralop_odd_shift)
        return plan

    def forward(self, x):
        """``x``: ``(batch, in_channels, *spatial)`` real -> ``(batch, out_channels, *spatial)``."""
        if x.ndim != 2 + self.order or x.shape[1] != self.in_channels:
            raise ValueError(f"SpectralConv: input must be (batch, {self.in_channels}, {self.order} spatial axes), "
                             f"got shape {x.shape}")
        xp = array_module(x)
        batch = x.shape[0]
        spatial = tuple(x.shape[2:])
        plan = self._plan(xp, spatial)
        M = plan.M
        Xm = self._to_modes(xp, plan, x)  # (M, batch, in)
        W = self.dense_weight()[(slice(None), slice(None)) + plan.wsl]
        Wm = xp.ascontiguousarray(W.reshape(self.in_channels, self.out_channels, M).transpose(2, 0, 1))
        Ym = xp.matmul(Xm, Wm)  # (M, batch, out)
        y = self._from_modes(xp, plan, Ym, batch, x.dtype)
        if self.bias:
            y += self.p["bias"].reshape((-1,) + (1,) * self.order)
        self._saved = (Xm, Wm, plan, spatial, batch)
        return y

    def backward(self, dy):
        """Accumulate weight (or factor) and bias gradients; return ``dx``."""
        if self._saved is None:
            raise RuntimeError("SpectralConv.backward called before forward")
        Xm, Wm, plan, spatial, batch = self._saved
        if dy.shape != (batch, self.out_channels) + spatial:
            raise ValueError(f"SpectralConv.backward: dy shape {dy.shape} does not match the forward output")
        xp = array_module(dy)
        if self.bias:
            self.g["bias"] += dy.sum(axis=(0, *range(2, 2 + self.order)))
        dYm = self._from_modes_adjoint(xp, plan, dy)  # (M, batch, out)
        dWm = xp.matmul(Xm.conj().transpose(0, 2, 1), dYm)  # (M, in, out)
        self.accumulate_weight_grad(
            dWm.transpose(1, 2, 0).reshape((self.in_channels, self.out_channels) + plan.kept), plan.wsl)
        dXm = xp.matmul(dYm, Wm.conj().transpose(0, 2, 1))  # (M, batch, in)
        return self._to_modes_adjoint(xp, plan, dXm, batch, dy.dtype)

    # -- the four linear maps: x -> kept modes, modes -> y, and their adjoints ----------
    def _modes_first(self, xp, A, M):
        """``(batch, ch, *kept)`` -> contiguous ``(M, batch, ch)``."""
        return xp.ascontiguousarray(A.reshape(A.shape[0], A.shape[1], M).transpose(2, 0, 1))

    def _modes_last(self, plan, Am, batch):
        """``(M, batch, ch)`` -> ``(batch, ch, *kept)`` (a view)."""
        ch = Am.shape[2]
        A = Am.reshape(plan.kept + (batch, ch))
        return A.transpose((self.order, self.order + 1) + tuple(range(self.order)))

    def _to_modes(self, xp, plan, x):
        if self.transform == "fft":
            axes = tuple(range(2, 2 + self.order))
            X = xp.fft.rfftn(x, axes=axes, norm=self.fft_norm)
            return self._modes_first(xp, X[plan.index], plan.M)
        m = plan.dft(x.dtype, self.fft_norm)
        batch, ch = x.shape[:2]
        R = xp.matmul(xp.ascontiguousarray(x).reshape(-1, plan.spatial[-1]), m["FL"])
        R = R.view(m["F"][0].dtype if m["F"] else np.result_type(x.dtype, np.complex64))
        R = R.reshape((batch, ch) + plan.spatial[:-1] + (plan.kept[-1],))
        for a, F in enumerate(m["F"]):
            R = _axis_apply(xp, R, F, 2 + a)
        return self._modes_first(xp, R, plan.M)

    def _from_modes(self, xp, plan, Ym, batch, dtype):
        Z = self._modes_last(plan, Ym, batch)
        ch = Ym.shape[2]
        if self.transform == "fft":
            axes = tuple(range(2, 2 + self.order))
            out = xp.zeros((batch, ch) + plan.spatial[:-1] + (plan.spectrum_last,), dtype=Ym.dtype)
            out[plan.out_index] = Z
            return xp.fft.irfftn(out, s=plan.spatial, axes=axes, norm=self.fft_norm).astype(dtype, copy=False)
        m = plan.dft(dtype, self.fft_norm)
        for a, G in enumerate(m["G"]):
            Z = _axis_apply(xp, Z, G, 2 + a)
        Z = xp.ascontiguousarray(Z)
        y = xp.matmul(Z.view(dtype).reshape(-1, 2 * plan.kept[-1]), m["GL"])
        return y.reshape((batch, ch) + plan.spatial)

    def _from_modes_adjoint(self, xp, plan, dy):
        batch, ch = dy.shape[:2]
        if self.transform == "fft":
            axes = tuple(range(2, 2 + self.order))
            c, _ = plan.scales(dy.dtype)
            G = xp.fft.rfftn(dy, axes=axes, norm=_INVERSE_NORM[self.fft_norm])
            return self._modes_first(xp, G[plan.out_index] * c, plan.M)
        m = plan.dft(dy.dtype, self.fft_norm)
        dZ = xp.matmul(xp.ascontiguousarray(dy).reshape(-1, plan.spatial[-1]), m["GLt"])
        dZ = dZ.view(np.result_type(dy.dtype, np.complex64)).reshape((batch, ch) + plan.spatial[:-1]
                                                                     + (plan.kept[-1],))
        for a, Gh in enumerate(m["Gh"]):
            dZ = _axis_apply(xp, dZ, Gh, 2 + a)
        return self._modes_first(xp, dZ, plan.M)

    def _to_modes_adjoint(self, xp, plan, dXm, batch, dtype):
        dR = self._modes_last(plan, dXm, batch)
        ch = dXm.shape[2]
        if self.transform == "fft":
            axes = tuple(range(2, 2 + self.order))
            _, w = plan.scales(dtype)
            dX = xp.zeros((batch, ch) + plan.spatial[:-1] + (plan.spectrum_last,), dtype=dXm.dtype)
            dX[plan.index] = dR * w
            dx = xp.fft.irfftn(dX, s=plan.spatial, axes=axes, norm=_INVERSE_NORM[self.fft_norm])
            return dx.astype(dtype, copy=False)
        m = plan.dft(dtype, self.fft_norm)
        for a, Fh in enumerate(m["Fh"]):
            dR = _axis_apply(xp, dR, Fh, 2 + a)
        dR = xp.ascontiguousarray(dR)
        dx = xp.matmul(dR.view(dtype).reshape(-1, 2 * plan.kept[-1]), m["FLt"])
        return dx.reshape((batch, ch) + plan.spatial)

    def clear(self):
        """Drop the saved spectra."""
        self._saved = None
