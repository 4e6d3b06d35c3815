"""Seeded parameter designs for a study: uniform, Latin hypercube and scrambled Halton (NumPy only).

The study draws its ``n_members`` parameter sets at once (Latin hypercube needs the
count up front) and redraws the parameters of a member that failed more than
``max_retries`` times from a separate uniform stream, seeded from the same seed,
so a rerun of the study draws the same parameters in the same order.
"""

from __future__ import annotations

import json

import numpy as np

__all__ = ["METHODS", "ParameterSampler", "latin_hypercube", "halton"]

METHODS = ("uniform", "lhs", "halton")

_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19)  # one Halton base per parameter (the header holds at most 8)


def latin_hypercube(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points in ``[0, 1)^dim``, ``(n, dim)``: each axis cut into ``n`` strata, one point in each.

    Not collective.
    """
    strata = np.stack([rng.permutation(n) for _ in range(dim)], axis=1)
    return (strata + rng.random((n, dim))) / n


def halton(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """The first ``n`` points of the Halton sequence in ``[0, 1)^dim``, ``(n, dim)``, digit-scrambled. Not collective.

    Axis ``j`` is the radical inverse of ``1..n`` in base ``p_j`` (the j-th prime), every digit
    position mapped through its own random permutation of the digits (random digit scrambling,
    which keeps the sequence's stratification and breaks the correlation of the higher bases).
    """
    if dim > len(_PRIMES):
        raise ValueError(f"dim: at most {len(_PRIMES)} parameters, got {dim}")
    out = np.zeros((n, dim))
    index = np.arange(1, n + 1)
    for j in range(dim):
        base = _PRIMES[j]
        k, scale = index.copy(), 1.0 / base
        while np.any(k > 0) or scale > 1e-16:
            perm = rng.permutation(base)
            out[:, j] += perm[k % base] * scale
            k //= base
            scale /= base
            if scale < 1e-16:
                break
    return out


class ParameterSampler:
    """Member parameters in a box. Not collective (every rank may build the same one).

    Parameters
    ----------
    bounds : sequence of (low, high)
        One pair per parameter (at most 8, the header's room).
    method : {"uniform", "lhs", "halton"}
    seed : int
    """

    def __init__(self, bounds, method: str = "lhs", seed: int = 0):
        b = np.asarray(bounds, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] != 2 or not 1 <= b.shape[0] <= 8:
            raise ValueError(f"bounds: expected 1 to 8 (low, high) pairs, got {bounds!r}")
        if not np.all(b[:, 1] > b[:, 0]):
            raise ValueError(f"bounds: every high must exceed its low, got {bounds!r}")
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        self.bounds = b
        self.method = method
        self.seed = int(seed)
        self.redraw_rng = np.random.default_rng([self.seed, 1])

    @property
    def dim(self) -> int:
        """Number of parameters."""
        return self.bounds.shape[0]

    def design(self, n: int) -> np.ndarray:
        """The first ``n`` parameter sets, ``(n, dim)``; the same for the same seed."""
        rng = np.random.default_rng([self.seed, 0])
        if self.method == "uniform":
            unit = rng.random((n, self.dim))
        elif self.method == "lhs":
            unit = latin_hypercube(n, self.dim, rng)
        else:
            unit = halton(n, self.dim, rng)
        return self.bounds[:, 0] + unit * (self.bounds[:, 1] - self.bounds[:, 0])

    def redraw(self) -> np.ndarray:
        """A fresh parameter set for a member that failed too often (uniform, own stream)."""
        unit = self.redraw_rng.random(self.dim)
        return self.bounds[:, 0] + unit * (self.bounds[:, 1] - self.bounds[:, 0])

    def state(self) -> str:
        """The redraw generator's state as JSON."""
        return json.dumps(self.redraw_rng.bit_generator.state)

    def load_state(self, text: str) -> None:
        """Restore :meth:`state`."""
        self.redraw_rng.bit_generator.state = json.loads(text)
