"""1-D periodic data for FNO tests: viscous Burgers (pseudo-spectral) and the heat equation (exact).

Both live on the periodic unit interval with ``resolution`` equispaced points ``x_i = i / N``.
Initial conditions are Gaussian random fields with covariance ``sigma^2 (-Laplacian + tau^2)^(-alpha)``
(the FNO paper's Burgers setup uses ``sigma = 625^(1/2)``, ``tau = 5``, ``alpha = 2``), drawn in
Fourier space with periodic eigenfunctions and no mean mode.

* :func:`burgers_1d`: ``u_t + (u^2 / 2)_x = nu u_xx``, Fourier pseudo-spectral in space with the
  2/3 dealiasing rule, the diffusion integrated exactly (integrating factor) and the advection by
  classical RK4 with a CFL-limited step (``dt <= cfl * dx / max|u|``). Vectorized over samples.
* :func:`heat_1d`: ``u_t = nu u_xx``, exact in Fourier space (a linear operator an FNO can
  represent exactly: a check that training recovers it).
"""

from __future__ import annotations

import numpy as np

__all__ = ["burgers_1d", "grf_1d", "heat_1d"]


def _check(resolution, n_samples):
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 4:
        raise ValueError(f"resolution: expected an int >= 4, got {resolution!r}")
    if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples: expected an int >= 1, got {n_samples!r}")


def grf_1d(n_samples: int, resolution: int, *, seed: int = 0, alpha: float = 2.0, tau: float = 5.0,
           sigma: float = 25.0) -> np.ndarray:
    """Periodic Gaussian random fields, ``(n_samples, resolution)`` float64. Not collective.

    Spectrum ``sigma (4 pi^2 k^2 + tau^2)^(-alpha/2)`` for wavenumbers ``1 <= |k| <= resolution/2``
    (the Nyquist mode real), from ``numpy.random.default_rng(seed)``.
    """
    _check(resolution, n_samples)
    rng = np.random.default_rng(int(seed))
    nk = resolution // 2 + 1
    k = np.arange(nk, dtype=np.float64)
    amp = sigma * (4 * np.pi**2 * k**2 + tau**2) ** (-alpha / 2.0)
    amp[0] = 0.0
    coef = (rng.standard_normal((n_samples, nk)) + 1j * rng.standard_normal((n_samples, nk))) * amp
    if resolution % 2 == 0:
        coef[:, -1] = coef[:, -1].real * np.sqrt(2)
    return np.fft.irfft(coef, n=resolution, axis=-1) * resolution / np.sqrt(2)


def heat_1d(u0, nu: float = 0.01, t: float = 1.0) -> np.ndarray:
    """Exact solution of ``u_t = nu u_xx`` on the periodic unit interval at time ``t``. Not collective.

    ``u0``: ``(..., resolution)``. Returns an array of the same shape.
    """
    u0 = np.asarray(u0, dtype=np.float64)
    if not nu >= 0 or not t >= 0:
        raise ValueError(f"nu, t: expected >= 0, got nu={nu!r}, t={t!r}")
    n = u0.shape[-1]
    k = np.fft.rfftfreq(n, d=1.0 / n)
    return np.fft.irfft(np.fft.rfft(u0, axis=-1) * np.exp(-nu * (2 * np.pi * k) ** 2 * t), n=n, axis=-1)


def burgers_1d(u0, nu: float = 0.05, t: float = 1.0, *, cfl: float = 0.4, max_steps: int = 200_000) -> np.ndarray:
    """Viscous Burgers on the periodic unit interval, from ``u0`` to time ``t``. Not collective.

    ``u0``: ``(..., resolution)``; returns the solution at ``t``, same shape. Pseudo-spectral (2/3
    dealiasing), exact diffusion, RK4 advection with ``dt = min(cfl dx / max|u0|, t / 10)``
    (Burgers keeps ``max|u|`` non-increasing). The resolution must resolve the viscous scale
    (``nu`` of about ``4 / resolution`` or more keeps the shocks smooth).
    """
    u = np.asarray(u0, dtype=np.float64)
    if not nu > 0 or not t >= 0 or not cfl > 0:
        raise ValueError(f"nu, t, cfl: expected nu > 0, t >= 0, cfl > 0, got {nu!r}, {t!r}, {cfl!r}")
    n = u.shape[-1]
    if t == 0:
        return u.copy()
    k = np.fft.rfftfreq(n, d=1.0 / n)
    ik = 2j * np.pi * k
    keep = k <= n / 3.0  # 2/3 rule
    umax = max(float(np.abs(u).max()), 1e-12)
    steps = max(10, int(np.ceil(t / (cfl * (1.0 / n) / umax))))
    if steps > max_steps:
        raise ValueError(f"burgers_1d: {steps} steps needed (> max_steps={max_steps}); lower the resolution or t")
    dt = t / steps
    lin = -nu * (2 * np.pi * k) ** 2
    e_half = np.exp(lin * dt / 2)
    e_full = np.exp(lin * dt)

    def nonlinear(uh):
        w = np.fft.irfft(uh, n=n, axis=-1)
        return -0.5 * ik * np.fft.rfft(w * w, axis=-1) * keep

    uh = np.fft.rfft(u, axis=-1)
    for _ in range(steps):  # integrating-factor RK4 (Cox-Matthews style ETD-free variant)
        k1 = nonlinear(uh)
        k2 = nonlinear(e_half * (uh + 0.5 * dt * k1))
        k3 = nonlinear(e_half * uh + 0.5 * dt * k2)
        k4 = nonlinear(e_full * uh + dt * e_half * k3)
        uh = e_full * uh + dt / 6.0 * (e_full * k1 + 2 * e_half * (k2 + k3) + k4)
    return np.fft.irfft(uh, n=n, axis=-1)
