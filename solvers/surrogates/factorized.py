"""TFNO: spectral weights stored and trained in Tucker or CP factorized form.

The complex weight ``W`` of shape ``(in, out, *modes)`` of each Fourier layer is
never a parameter: the parameters are its factors (Tucker: a core and one factor
matrix per axis; CP: rank weights and one factor matrix per axis, all complex).
Forward reconstructs ``W`` from the factors and runs the same truncated-mode
contraction as :class:`~solvers.surrogates.spectral.SpectralConv`; backward turns
``dL/dW`` into ``dL/dfactor`` (multilinear chain rule with conjugated partners,
PyTorch's complex-gradient convention), so the optimizer updates the factors.

Ranks follow tensorly (the library neuraloperator's TFNO uses): a float ``rank``
is the fraction of the dense weight's parameter count to keep. Tucker solves
``c^N prod(I) + c sum(I_k^2) = rank prod(I)`` for ``c`` and takes
``round(c I_k)`` (at least 1) per axis; CP takes ``round(rank prod(I) / sum(I))``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from hpcore.arrays import array_module

from .layers import ParamSpec
from .models import FNO, MODEL_KINDS
from .spectral import SpectralConv

__all__ = ["TFNO", "CPSpectralConv", "TuckerSpectralConv", "cp_rank", "tucker_rank"]

_LETTERS = "abcdefgh"
_UPPER = "ABCDEFGH"


def tucker_rank(shape, rank: float) -> tuple:
    """Tensorly's ``validate_tucker_rank(shape, rank=<float>)`` (rounding "round")."""
    shape = [int(s) for s in shape]
    n = len(shape)
    total = float(np.prod(shape))
    squares = float(sum(s * s for s in shape))

    def fun(c):
        return total * c ** n + squares * c - rank * total

    lo, hi = 0.0, max(rank, 1.0)
    for _ in range(200):  # bisection to machine precision (tensorly uses brentq)
        mid = 0.5 * (lo + hi)
        if fun(mid) > 0:
            hi = mid
        else:
            lo = mid
    c = 0.5 * (lo + hi)
    return tuple(max(int(np.round(s * c)), 1) for s in shape)


def cp_rank(shape, rank: float) -> int:
    """Tensorly's ``validate_cp_rank(shape, rank=<float>)`` (rounding "round"), at least 1."""
    return max(int(np.round(np.prod(shape) * rank / np.sum(shape))), 1)


_PATHS: dict = {}


def _einsum(xp, spec, *ops):
    """``einsum`` with NumPy's contraction path found once per (spec, shapes) and reused."""
    if xp is np:
        key = (spec,) + tuple(op.shape for op in ops)
        path = _PATHS.get(key)
        if path is None:
            path = _PATHS[key] = np.einsum_path(spec, *ops, optimize="greedy")[0]
        return np.einsum(spec, *ops, optimize=path)
    return xp.einsum(spec, *ops)


def _embed(xp, dweight, wsl, shape):
    """``dweight`` placed at ``wsl`` of a zero array of the full weight shape."""
    if all(s.start == 0 and s.stop == n for s, n in zip(wsl, shape[2:])):
        return dweight
    full = xp.zeros(shape, dtype=dweight.dtype)
    full[(slice(None), slice(None)) + wsl] = dweight
    return full


class TuckerSpectralConv(SpectralConv):
    """Spectral convolution whose weight is ``core x_0 U_0 x_1 U_1 ... x_N U_N`` (Tucker).

    Not collective. ``rank``: float fraction of the dense parameter count (tensorly),
    or a tuple of per-axis ranks.
    """

    name = "spectral_tucker"

    def __init__(self, in_channels, out_channels, n_modes, rank=0.5, bias=True, fft_norm="backward",
                 neuralop_odd_shift=False):
        super().__init__(in_channels, out_channels, n_modes, bias=bias, fft_norm=fft_norm,
                         neuralop_odd_shift=neuralop_odd_shift)
        shape = self.weight_shape()
        if isinstance(rank, (tuple, list)):
            if len(rank) != len(shape) or any(int(r) < 1 for r in rank):
                raise ValueError(f"TuckerSpectralConv: rank must be a float or {len(shape)} positive ints, "
                                 f"got {rank!r}")
            self.ranks = tuple(int(r) for r in rank)
        else:
            if not 0 < float(rank):
                raise ValueError(f"TuckerSpectralConv: rank must be > 0, got {rank!r}")
            self.ranks = tucker_rank(shape, float(rank))
        n = len(shape)
        core = _LETTERS[:n]
        full = _UPPER[:n]
        self._core, self._full = core, full
        self._factor_subs = [full[k] + core[k] for k in range(n)]
        self._saved_w = None

    def weight_specs(self, init_w):
        """Core and factor matrices (complex), tltorch's Tucker initialisation scale."""
        std = self.init_std
        n = len(self.ranks)
        r = math.prod(math.sqrt(x) for x in self.ranks)
        s = (std / r) ** (1.0 / (n + 1))  # tltorch's TuckerTensor.normal_ scale

        def init(rng, shape):
            return (rng.normal(0, s / math.sqrt(2), size=shape) + 1j * rng.normal(0, s / math.sqrt(2), size=shape))

        specs = [ParamSpec("core", self.ranks, True, init)]
        specs += [ParamSpec(f"factor{k}", (dim, rk), True, init)
                  for k, (dim, rk) in enumerate(zip(self.weight_shape(), self.ranks))]
        return specs

    def _factors(self):
        return [self.p[f"factor{k}"] for k in range(len(self.ranks))]

    def dense_weight(self):
        """Reconstruct ``W = core x_k U_k`` (complex, ``(in, out, *modes)``)."""
        xp = array_module(self.p["core"])
        spec = ",".join([self._core] + self._factor_subs) + "->" + self._full
        return _einsum(xp, spec, self.p["core"], *self._factors())

    def accumulate_weight_grad(self, dweight, wsl):
        """Chain ``dL/dW`` into the core and factor gradients."""
        xp = array_module(dweight)
        G = _embed(xp, dweight, wsl, self.weight_shape())
        core, factors = self.p["core"], self._factors()
        cf = [f.conj() for f in factors]
        n = len(factors)
        spec = ",".join([self._full] + self._factor_subs) + "->" + self._core
        self.g["core"] += _einsum(xp, spec, G, *cf)
        for k in range(n):
            others = [j for j in range(n) if j != k]
            subs = [self._full, self._core] + [self._factor_subs[j] for j in others]
            spec = ",".join(subs) + "->" + self._factor_subs[k]
            self.g[f"factor{k}"] += _einsum(xp, spec, G, core.conj(), *[cf[j] for j in others])


class CPSpectralConv(SpectralConv):
    """Spectral convolution whose weight is ``sum_r w_r U_0[:, r] o U_1[:, r] o ...`` (CP).

    Not collective. ``rank``: float fraction of the dense parameter count (tensorly)
    or an int.
    """

    name = "spectral_cp"

    def __init__(self, in_channels, out_channels, n_modes, rank=0.5, bias=True, fft_norm="backward",
                 neuralop_odd_shift=False):
        super().__init__(in_channels, out_channels, n_modes, bias=bias, fft_norm=fft_norm,
                         neuralop_odd_shift=neuralop_odd_shift)
        shape = self.weight_shape()
        if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
            if rank < 1:
                raise ValueError(f"CPSpectralConv: rank must be >= 1, got {rank!r}")
            self.rank = int(rank)
        else:
            if not 0 < float(rank):
                raise ValueError(f"CPSpectralConv: rank must be > 0, got {rank!r}")
            self.rank = cp_rank(shape, float(rank))
        n = len(shape)
        self._full = _UPPER[:n]
        self._factor_subs = [self._full[k] + "r" for k in range(n)]

    def weight_specs(self, init_w):
        """Rank weights (ones) and factor matrices (complex), tltorch's CP initialisation scale."""
        n = len(self.weight_shape())
        s = (self.init_std / math.sqrt(self.rank)) ** (1.0 / n)  # tltorch's CPTensor.normal_ scale

        def init(rng, shape):
            return rng.normal(0, s / math.sqrt(2), size=shape) + 1j * rng.normal(0, s / math.sqrt(2), size=shape)

        specs = [ParamSpec("weights", (self.rank,), True, lambda rng, shape: np.ones(shape, dtype=complex))]
        specs += [ParamSpec(f"factor{k}", (dim, self.rank), True, init) for k, dim in enumerate(self.weight_shape())]
        return specs

    def _factors(self):
        return [self.p[f"factor{k}"] for k in range(len(self.weight_shape()))]

    def dense_weight(self):
        """Reconstruct ``W = sum_r w_r U_0[:, r] o U_1[:, r] o ...``."""
        xp = array_module(self.p["weights"])
        spec = ",".join(["r"] + self._factor_subs) + "->" + self._full
        return _einsum(xp, spec, self.p["weights"], *self._factors())

    def accumulate_weight_grad(self, dweight, wsl):
        """Chain ``dL/dW`` into the rank-weight and factor gradients."""
        xp = array_module(dweight)
        G = _embed(xp, dweight, wsl, self.weight_shape())
        cf = [f.conj() for f in self._factors()]
        n = len(cf)
        self.g["weights"] += _einsum(xp, ",".join([self._full] + self._factor_subs) + "->r", G, *cf)
        cw = self.p["weights"].conj()
        for k in range(n):
            others = [j for j in range(n) if j != k]
            spec = ",".join([self._full, "r"] + [self._factor_subs[j] for j in others]) + "->" + self._factor_subs[k]
            self.g[f"factor{k}"] += _einsum(xp, spec, G, cw, *[cf[j] for j in others])


class TFNO(FNO):
    """FNO with factorized spectral weights (neuraloperator's ``TFNO``), trained in factorized form.

    Not collective. Config keys of :class:`~solvers.surrogates.models.FNO` plus
    ``factorization`` ("tucker", the default as in neuraloperator's TFNO, or "cp")
    and ``rank`` (float fraction of each dense weight's parameters; default 0.1).
    """

    kind = "tfno"
    defaults: ClassVar[dict] = {**FNO.defaults, "factorization": "tucker", "rank": 0.1}

    def _validate(self, cfg):
        super()._validate(cfg)
        cfg["factorization"] = str(cfg["factorization"]).lower()
        if cfg["factorization"] not in ("tucker", "cp"):
            raise ValueError(f"TFNO: factorization must be 'tucker' or 'cp', got {cfg['factorization']!r}")
        if isinstance(cfg["rank"], bool) or not float(cfg["rank"]) > 0:
            raise ValueError(f"TFNO: rank must be a positive fraction, got {cfg['rank']!r}")
        cfg["rank"] = float(cfg["rank"])

    def _spectral(self, cfg, i):
        cls = TuckerSpectralConv if cfg["factorization"] == "tucker" else CPSpectralConv
        return cls(cfg["hidden_channels"], cfg["hidden_channels"], cfg["n_modes"], rank=cfg["rank"], bias=True,
                   fft_norm=cfg["fft_norm"], neuralop_odd_shift=cfg["neuralop_odd_shift"])

    def spectral_param_counts(self) -> tuple:
        """``(dense, factorized)``: real numbers in the spectral weights, dense FNO vs this model."""
        dense = factorized = 0
        for _, layer in self.layers:
            if isinstance(layer, SpectralConv):
                dense += 2 * int(np.prod(layer.weight_shape()))
                factorized += sum(spec.n_real for spec in layer.param_specs() if spec.name != "bias")
        return dense, factorized

    @property
    def compression_ratio(self) -> float:
        """Dense spectral weight parameters / factorized ones (> 1 means smaller)."""
        dense, factorized = self.spectral_param_counts()
        return dense / factorized


MODEL_KINDS["tfno"] = TFNO
