"""Training losses with their gradients: relative L2 (neuraloperator's LpLoss) and relative H1.

Each loss is called as ``loss(pred, y) -> (value, dpred)``: ``value`` a Python float,
``dpred`` the gradient of ``value`` with respect to ``pred`` (same shape and dtype),
ready for ``model.backward(dpred)``. Arrays are ``(batch, channels, *spatial)``;
norms run over every axis but the batch axis; ``reduction`` "mean" (default)
averages the per-sample relative errors, "sum" adds them (neuraloperator's default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from hpcore.arrays import array_module

__all__ = ["H1Loss", "LpLoss", "relative_l2"]


def _check_pair(pred, y, name):
    if pred.shape != y.shape:
        raise ValueError(f"{name}: pred shape {pred.shape} and y shape {y.shape} differ")
    if pred.ndim < 2:
        raise ValueError(f"{name}: expected (batch, channels, *spatial) arrays, got shape {pred.shape}")


def _reduce_factor(reduction, batch, name):
    if reduction == "mean":
        return 1.0 / batch
    if reduction == "sum":
        return 1.0
    raise ValueError(f"{name}: reduction must be 'mean' or 'sum', got {reduction!r}")


def relative_l2(pred, y):
    """Per-sample ``||pred - y|| / ||y||`` (array of shape ``(batch,)``; no gradient)."""
    xp = array_module(pred)
    axes = tuple(range(1, pred.ndim))
    return xp.sqrt(((pred - y) ** 2).sum(axis=axes)) / xp.sqrt((y ** 2).sum(axis=axes))


class LpLoss:
    """Relative L2 error, ``mean_b ||pred_b - y_b||_2 / ||y_b||_2`` (neuraloperator's ``LpLoss.rel``, p=2).

    Not collective. A sample whose error is exactly zero contributes a zero gradient.
    """

    def __init__(self, reduction: Literal["mean", "sum"] = "mean"):
        _reduce_factor(reduction, 1, "LpLoss")
        self.reduction = reduction

    def __call__(self, pred, y):
        """``(value, dvalue/dpred)``."""
        _check_pair(pred, y, "LpLoss")
        xp = array_module(pred)
        batch = pred.shape[0]
        axes = tuple(range(1, pred.ndim))
        shape = (batch,) + (1,) * (pred.ndim - 1)
        err = pred - y
        enorm = xp.sqrt((err * err).sum(axis=axes))
        ynorm = xp.sqrt((y * y).sum(axis=axes))
        per = enorm / ynorm
        f = _reduce_factor(self.reduction, batch, "LpLoss")
        value = float(per.sum()) * f
        scale = xp.where(enorm > 0, f / (xp.where(enorm > 0, enorm, 1) * ynorm), 0).astype(pred.dtype)
        return value, err * scale.reshape(shape)


class H1Loss:
    """Relative H1 error: ``sqrt(sum_j ||D_j e||^2) / sqrt(sum_j ||D_j y||^2)``, ``D_0 = 1``, ``e = pred - y``.

    Not collective. ``D_j`` (``j = 1..d``) is the derivative along spatial axis ``j`` of a
    periodic field on a domain of length ``L`` (default ``2 pi``, neuraloperator's):
    "spectral" (real FFT, Nyquist bin dropped) or "central" (periodic central
    differences ``(u[i+1] - u[i-1]) / 2h``, ``h = L / N``, neuraloperator's
    ``H1Loss`` without boundary fixes). Both operators are antisymmetric, so the
    gradient is ``(e - sum_j D_j D_j e) / (||.||_e ||.||_y)``.

    Parameters
    ----------
    d : int
        Number of trailing spatial axes (1-3).
    L : float or sequence of float
        Domain length per axis.
    derivative : {"spectral", "central"}
    reduction : {"mean", "sum"}
    """

    def __init__(self, d: int = 1, L: Sequence[float] | None = None,
                 derivative: Literal["spectral", "central"] = "spectral",
                 reduction: Literal["mean", "sum"] = "mean"):
        if d not in (1, 2, 3):
            raise ValueError(f"H1Loss: d must be 1, 2 or 3, got {d!r}")
        if derivative not in ("spectral", "central"):
            raise ValueError(f"H1Loss: derivative must be 'spectral' or 'central', got {derivative!r}")
        _reduce_factor(reduction, 1, "H1Loss")
        L = 2 * math.pi if L is None else L
        self.L = [float(L)] * d if isinstance(L, (int, float)) else [float(v) for v in L]
        if len(self.L) != d:
            raise ValueError(f"H1Loss: L must have d={d} entries, got {L!r}")
        self.d, self.derivative, self.reduction = d, derivative, reduction

    def _deriv(self, u, axis, length):
        xp = array_module(u)
        n = u.shape[axis]
        if self.derivative == "central":
            h = length / n
            return (xp.roll(u, -1, axis=axis) - xp.roll(u, 1, axis=axis)) / u.dtype.type(2 * h)
        k = xp.arange(n // 2 + 1, dtype=u.dtype) * u.dtype.type(2 * math.pi / length)
        if n % 2 == 0:
            k[-1] = 0
        shape = [1] * u.ndim
        shape[axis] = k.size
        U = xp.fft.rfft(u, axis=axis)
        return xp.fft.irfft(U * (1j * k.reshape(shape)), n=n, axis=axis).astype(u.dtype, copy=False)

    def __call__(self, pred, y):
        """``(value, dvalue/dpred)``."""
        _check_pair(pred, y, "H1Loss")
        if pred.ndim < 1 + self.d:
            raise ValueError(f"H1Loss: arrays need {self.d} spatial axes, got shape {pred.shape}")
        xp = array_module(pred)
        batch = pred.shape[0]
        axes = tuple(range(1, pred.ndim))
        shape = (batch,) + (1,) * (pred.ndim - 1)
        err = pred - y
        spatial = list(range(pred.ndim - self.d, pred.ndim))
        derr = [self._deriv(err, a, length) for a, length in zip(spatial, self.L)]
        dyy = [self._deriv(y, a, length) for a, length in zip(spatial, self.L)]
        enorm2 = (err * err).sum(axis=axes) + sum((t * t).sum(axis=axes) for t in derr)
        ynorm2 = (y * y).sum(axis=axes) + sum((t * t).sum(axis=axes) for t in dyy)
        enorm, ynorm = xp.sqrt(enorm2), xp.sqrt(ynorm2)
        f = _reduce_factor(self.reduction, batch, "H1Loss")
        value = float((enorm / ynorm).sum()) * f
        lap = err.copy()
        for t, a, length in zip(derr, spatial, self.L):
            lap -= self._deriv(t, a, length)
        scale = xp.where(enorm > 0, f / (xp.where(enorm > 0, enorm, 1) * ynorm), 0).astype(pred.dtype)
        return value, lap * scale.reshape(shape)
