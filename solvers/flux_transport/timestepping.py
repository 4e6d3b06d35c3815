"""Time integrators: SSPRK(4,3) for advection, RKG2 / RKL2 super time stepping for diffusion."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

__all__ = ["sts_stages", "sts_coefficients", "STSCoefficients", "ssprk43", "sts_step", "max_ratio",
           "subcycles", "SAFETY"]

SAFETY = 0.95
"""Safety factor on explicit limits (HipFT's)."""


def sts_stages(ratio: float, method: Literal["rkg2", "rkl2"] = "rkg2") -> int:
    """Stages of one super step of length ``ratio`` explicit Euler limits.

    RKG2: ``s = ceil((sqrt(25 + 24 r) - 3) / 2)``; RKL2: ``s = ceil((sqrt(9 + 16 r) - 1) / 2)``;
    then at least 3 and odd (Skaras et al. 2021; Meyer et al. 2014; as HipFT).
    """
    r = max(float(ratio), 0.0)
    if method == "rkg2":
        s = math.ceil(0.5 * (math.sqrt(25.0 + 24.0 * r) - 3.0))
    elif method == "rkl2":
        s = math.ceil(0.5 * (math.sqrt(9.0 + 16.0 * r) - 1.0))
    else:
        raise ValueError(f"method: expected 'rkg2' or 'rkl2', got {method!r}")
    s = max(s, 3)
    if s % 2 == 0:
        s += 1
    return s


def max_ratio(stages: int, method: Literal["rkg2", "rkl2"] = "rkg2") -> float:
    """The largest step / explicit-limit ratio that ``stages`` stages cover."""
    s = float(stages)
    if method == "rkg2":
        return ((2.0 * s + 3.0) ** 2 - 25.0) / 24.0
    return ((2.0 * s + 1.0) ** 2 - 9.0) / 16.0


def subcycles(ratio: float, max_stages: int, method: Literal["rkg2", "rkl2"] = "rkg2") -> int:
    """Equal sub-steps needed so that no sub-step needs more than ``max_stages`` stages."""
    if sts_stages(ratio, method) <= max_stages:
        return 1
    n = max(1, math.ceil(ratio / max_ratio(max_stages, method)))
    while sts_stages(ratio / n, method) > max_stages:
        n += 1
    return n


@dataclass(frozen=True)
class STSCoefficients:
    """``mu_j, nu_j, mu~_j, gamma~_j`` (index j = 1..s; entry 0 unused) and ``w``."""

    s: int
    mu: tuple
    nu: tuple
    mut: tuple
    gam: tuple


def sts_coefficients(s: int, method: Literal["rkg2", "rkl2"] = "rkg2") -> STSCoefficients:
    """Coefficients of the s-stage RKG2 (Skaras, Meyer & Aslam 2021) or RKL2 (Meyer et al. 2014) step."""
    if s < 2:
        raise ValueError(f"s: need at least 2 stages, got {s}")
    mu = [0.0] * (s + 1)
    nu = [0.0] * (s + 1)
    mut = [0.0] * (s + 1)
    gam = [0.0] * (s + 1)
    if method == "rkg2":
        w = 6.0 / ((s + 4.0) * (s - 1.0))
        b = [1.0, 1.0 / 3.0, 1.0 / 15.0] + [0.0] * (s - 2)
        for j in range(3, s + 1):
            b[j] = 4.0 * (j - 1.0) * (j + 4.0) / (3.0 * j * (j + 1.0) * (j + 2.0) * (j + 3.0))
        mut[1] = w
        for j in range(2, s + 1):
            mu[j] = b[j] / b[j - 1] * (2.0 + 1.0 / j)
            nu[j] = -b[j] / b[j - 2] * (1.0 / j + 1.0)
            mut[j] = mu[j] * w
            gam[j] = (0.5 * j * (j + 1.0) * b[j - 1] - 1.0) * mut[j]
        mu[2], nu[2], gam[2] = 0.5, -0.1, 0.0  # set exactly, as HipFT's load_sts_rkg2
        mut[2] = mu[2] * w
    elif method == "rkl2":
        w = 4.0 / (s * s + s - 2.0)
        b = [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0] + [0.0] * (s - 2)
        for j in range(3, s + 1):
            b[j] = (j * j + j - 2.0) / (2.0 * j * (j + 1.0))
        mut[1] = w / 3.0
        for j in range(2, s + 1):
            mu[j] = b[j] / b[j - 1] * (2.0 - 1.0 / j)
            nu[j] = b[j] / b[j - 2] * (1.0 / j - 1.0)
            mut[j] = mu[j] * w
            gam[j] = (b[j - 1] - 1.0) * mut[j]
    else:
        raise ValueError(f"method: expected 'rkg2' or 'rkl2', got {method!r}")
    return STSCoefficients(s, tuple(mu), tuple(nu), tuple(mut), tuple(gam))


def ssprk43(xp, f, dt: float, rhs: Callable, f1, y) -> None:
    """One SSPRK(4,3) step of ``df/dt = rhs(f)`` in place (Kraaijevanger's, CFL 2; HipFT's form).

    ``rhs(u, y)`` writes ``du/dt`` into ``y`` (it fills ghosts of ``u`` itself);
    ``f1`` and ``y`` are scratch arrays like ``f``.
    """
    rhs(f, y)
    y *= 0.5 * dt
    xp.add(f, y, out=f1)
    rhs(f1, y)
    y *= 0.5 * dt
    f1 += y
    rhs(f1, y)
    y *= dt / 6.0
    f1 *= 1.0 / 3.0
    f1 += y
    xp.multiply(f, 2.0 / 3.0, out=y)
    f1 += y
    rhs(f1, y)
    y *= 0.5 * dt
    xp.add(f1, y, out=f)


def sts_step(xp, f, dt: float, coeffs: STSCoefficients, rhs: Callable, work, block: int = 0) -> None:
    """One super time step of length ``dt`` in place.

    ``work``: six scratch arrays like ``f`` (``u0, dty0, y, a, b, c``).
    ``u_j = mu_j u_{j-1} + nu_j u_{j-2} + (1 - mu_j - nu_j) u0 + mu~_j dt L(u_{j-1}) + gamma~_j dt L(u0)``.
    ``block``: combine the stages in blocks of this many values (cache reuse on the host; 0 = whole arrays).
    The result does not depend on ``block``.
    """
    u0, dty0, y, a, b, c = work
    u0[...] = f
    rhs(u0, dty0)
    dty0 *= dt
    xp.multiply(dty0, coeffs.mut[1], out=a)
    a += u0  # u_1
    b[...] = u0  # u_0
    km1, km2, new = a, b, c
    n = f.shape[0]
    step = block or n
    for j in range(2, coeffs.s + 1):
        rhs(km1, y)
        mu, nu, mut, gam = coeffs.mu[j], coeffs.nu[j], coeffs.mut[j], coeffs.gam[j]
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            yy, nn = y[lo:hi], new[lo:hi]
            yy *= mut * dt
            xp.multiply(km1[lo:hi], mu, out=nn)
            nn += yy
            xp.multiply(km2[lo:hi], nu, out=yy)
            nn += yy
            xp.multiply(u0[lo:hi], 1.0 - mu - nu, out=yy)
            nn += yy
            if gam != 0.0:
                xp.multiply(dty0[lo:hi], gam, out=yy)
                nn += yy
        km2, km1, new = km1, new, km2
    f[...] = km1


def reference_integrate(f: np.ndarray, dt: float, operator: Callable, coeffs: STSCoefficients) -> np.ndarray:
    """Plain (allocating) super step of a matrix-free ``operator``, for tests."""
    u0 = f.copy()
    dty0 = dt * operator(u0)
    km1 = u0 + coeffs.mut[1] * dty0
    km2 = u0.copy()
    for j in range(2, coeffs.s + 1):
        new = (coeffs.mu[j] * km1 + coeffs.nu[j] * km2 + (1 - coeffs.mu[j] - coeffs.nu[j]) * u0
               + coeffs.mut[j] * dt * operator(km1) + coeffs.gam[j] * dty0)
        km2, km1 = km1, new
    return km1
