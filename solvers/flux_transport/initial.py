"""Initial maps: bipolar active regions on a dipole, the soccer ball (real spherical harmonics), a dipole."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .grid import SphereGrid

__all__ = ["DEFAULT_REGIONS", "bipolar_map", "dipole_map", "from_file_columns", "gaussians", "pole_average",
           "real_harmonic", "soccer_ball"]

DEFAULT_REGIONS = (
    # latitude [deg], longitude [deg], peak |Br| [G], separation [deg], tilt [deg], width [deg]
    (18.0, 40.0, 600.0, 8.0, 6.0, 2.5),
    (-15.0, 95.0, 500.0, 7.0, 5.0, 2.5),
    (25.0, 150.0, 400.0, 10.0, 9.0, 3.0),
    (-22.0, 205.0, 700.0, 9.0, 7.0, 2.5),
    (10.0, 260.0, 350.0, 6.0, 3.0, 2.0),
    (-8.0, 300.0, 450.0, 6.0, 3.0, 2.0),
    (30.0, 330.0, 300.0, 12.0, 12.0, 3.5),
    (-28.0, 20.0, 300.0, 11.0, 11.0, 3.5),
)
"""A made-up set of bipolar regions (Hale's law: leading polarity flips between hemispheres;
Joy's law: tilt grows with latitude)."""


def real_harmonic(l: int, m: int, theta, phi) -> np.ndarray:
    """Orthonormal real spherical harmonic ``Y_l^m(theta, phi)`` (cos for m >= 0, sin for m < 0).

    Normalized so that the integral of its square over the unit sphere is 1, with
    the Condon-Shortley phase (as HipFT's ``tesseral_spherical_harmonic``). Uses the
    fully normalized forward column recursion (Holmes & Featherstone 2002), stable
    near the poles.
    """
    theta = np.asarray(theta, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    am = abs(int(m))
    if l < 0 or am > l:
        raise ValueError(f"need 0 <= |m| <= l, got l={l}, m={m}")
    x = np.cos(theta)
    p_old = np.ones_like(x)  # P~_0^0 / u^0
    if am > 0:
        p_old = np.full_like(x, math.sqrt(3.0))
        for i in range(2, am + 1):
            p_old = math.sqrt((2.0 * i + 1.0) / (2.0 * i)) * p_old
    p_oldold = np.zeros_like(x)
    for i in range(am + 1, l + 1):
        a = math.sqrt((2.0 * i - 1.0) * (2.0 * i + 1.0) / ((i - am) * (i + am)))
        b = math.sqrt((2.0 * i + 1.0) * (i + am - 1.0) * (i - am - 1.0) / ((i - am) * (i + am) * (2.0 * i - 3.0)))
        p_new = a * x * p_old - b * p_oldold
        p_oldold, p_old = p_old, p_new
    p = ((-1.0) ** am) * np.sin(theta) ** am / math.sqrt(4.0 * math.pi) * p_old
    if m >= 0:
        return p * np.cos(am * phi)
    return p * np.sin(am * phi)


def soccer_ball(grid: SphereGrid, phase: float = 0.0) -> np.ndarray:
    """``Y_6^0 + sqrt(14/11) Y_6^5`` on the grid, shape ``(ntheta, nphi)``, rotated by ``phase`` [rad] in phi.

    An eigenfunction of the surface Laplacian with eigenvalue ``-42``: under
    diffusion ``eta`` it decays as ``exp(-42 eta t)``.
    """
    T, P = np.meshgrid(grid.theta, grid.phi - phase, indexing="ij")
    f = real_harmonic(6, 0, T, P) + math.sqrt(14.0 / 11.0) * real_harmonic(6, 5, T, P)
    return pole_average(f)


def gaussians(theta, phi, width: float = 0.03, dtheta: float = 0.0, dphi: float = 0.0) -> np.ndarray:
    """HipFT's validation run 2: two Gaussian blobs of opposite sign, moved by ``(dtheta, dphi)`` [rad].

    ``f = (-exp(-(t - pi/4 - dtheta)^2/w - (p - p1)^2/w) + exp(-(t - pi/4 - dtheta)^2/w
    - (p - p2)^2/w)) / sin(t)`` with ``p1 = (pi/2 + dphi) mod 2 pi``, ``p2 = (3 pi/2 +
    dphi) mod 2 pi`` (no periodic wrap of ``p - p1``, as HipFT), zero on the pole rows
    (``sin(t) = 0``). ``theta`` ``(nt,)`` and ``phi`` ``(np,)`` are node coordinates;
    returns ``(nt, np)``. With ``dtheta = dphi = 0`` it is HipFT's initial map; with
    ``dtheta = vt t``, ``dphi = omega t`` (``R_sun/h`` times hours) its exact solution
    for rigid rotation and constant vt (``src/hipft.f90``, validation_run = 2).
    """
    theta = np.asarray(theta, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    st = np.sin(theta)
    pole = (np.abs(theta) < 1e-12) | (np.abs(theta - math.pi) < 1e-12)
    st_i = np.where(pole, 0.0, 1.0 / np.where(pole, 1.0, st))
    p1 = (0.5 * math.pi + dphi) % (2.0 * math.pi)  # Fortran MODULO: in [0, 2 pi)
    p2 = (1.5 * math.pi + dphi) % (2.0 * math.pi)
    gt = np.exp(-((theta - 0.25 * math.pi - dtheta) ** 2) / width)[:, None]
    g1 = np.exp(-((phi - p1) ** 2) / width)[None, :]
    g2 = np.exp(-((phi - p2) ** 2) / width)[None, :]
    return st_i[:, None] * gt * (g2 - g1)


def dipole_map(grid: SphereGrid, b0: float = 1.0) -> np.ndarray:
    """``Br = b0 cos(theta)``, shape ``(ntheta, nphi)`` [G]."""
    return np.repeat((b0 * grid.cos_theta)[:, None], grid.nphi, axis=1)


def _great_circle(theta, phi, theta0, phi0):
    c = np.cos(theta) * math.cos(theta0) + np.sin(theta) * math.sin(theta0) * np.cos(phi - phi0)
    return np.arccos(np.clip(c, -1.0, 1.0))


def bipolar_map(grid: SphereGrid, regions: Sequence[Sequence[float]] = DEFAULT_REGIONS,
                dipole_gauss: float = 5.0) -> np.ndarray:
    """Gaussian bipolar active regions on an axial dipole ``dipole_gauss cos(theta)``, shape ``(ntheta, nphi)``.

    Each region ``(lat, lon, peak, separation, tilt, width)`` [deg, deg, G, deg,
    deg, deg] is a pair of Gaussian spots of opposite sign, ``separation`` apart
    along a line tilted by ``tilt`` from the east-west direction (leading spot
    nearer the equator); the leading spot is negative in the north, positive in
    the south. The map is flux-balanced multiplicatively (HipFT's method).
    """
    T, P = np.meshgrid(grid.theta, grid.phi, indexing="ij")
    br = dipole_gauss * np.cos(T)
    for region in regions:
        if len(region) != 6:
            raise ValueError(f"initial.regions: each region needs 6 numbers (lat, lon, peak, separation, tilt, "
                             f"width), got {list(region)!r}")
        lat, lon, peak, sep, tilt, width = (float(x) for x in region)
        north = 1.0 if lat >= 0 else -1.0
        half = 0.5 * math.radians(sep)
        tl = math.radians(tilt)
        dlon = half * math.cos(tl) / max(math.cos(math.radians(lat)), 1e-3)
        dlat = half * math.sin(tl)
        lead = (math.radians(lat) - north * dlat, math.radians(lon) + dlon)
        trail = (math.radians(lat) + north * dlat, math.radians(lon) - dlon)
        w2 = 2.0 * math.radians(width) ** 2
        for (la, lo), sign in ((lead, -north), (trail, north)):
            d = _great_circle(T, P, 0.5 * math.pi - la, lo)
            br = br + sign * peak * np.exp(-d * d / w2)
    br = pole_average(br)
    return balance_flux(grid, br)


def balance_flux(grid: SphereGrid, br: np.ndarray) -> np.ndarray:
    """Scale positive values by ``1/ratio`` and negative ones by ``ratio`` (``ratio = sqrt(|F+ / F-|)``), HipFT's
    multiplicative balance, on a whole map ``(..., ntheta, nphi)``; returns a new array."""
    area = grid.cell_area[:, None]
    br = np.array(br, dtype=np.float64, copy=True)
    flat = br.reshape((-1,) + grid.shape)
    for i in range(flat.shape[0]):
        m = flat[i]
        fp = float(np.sum(np.where(m > 0, m, 0.0) * area))
        fm = float(np.sum(np.where(m < 0, m, 0.0) * area))
        if fp + fm == 0.0 or fp == 0.0 or fm == 0.0:
            continue
        ratio = math.sqrt(abs(fp / fm))
        flat[i] = np.where(m > 0, m / ratio, m * ratio)
    return br


def pole_average(br: np.ndarray, grid=None) -> np.ndarray:
    """Set both pole rows of ``(..., ntheta, nphi)`` to one value each (caps hold one value).

    Without ``grid`` (or a grid without cell widths ``dp``) the plain mean over phi;
    with one, HipFT's ``sum_k f(pole, k) dp_k / (2 pi)`` over its cell widths ``grid.dp``
    (the two differ only on non-uniform float32 scales).
    """
    br = np.array(br, dtype=np.float64, copy=True)
    dp = getattr(grid, "dp", None) if grid is not None else None
    if dp is not None and np.shape(dp)[-1] == br.shape[-1]:
        w = np.asarray(dp, dtype=np.float64) / (2.0 * math.pi)
        br[..., 0, :] = (br[..., 0, :] * w).sum(axis=-1, keepdims=True)
        br[..., -1, :] = (br[..., -1, :] * w).sum(axis=-1, keepdims=True)
        return br
    br[..., 0, :] = br[..., 0, :].mean(axis=-1, keepdims=True)
    br[..., -1, :] = br[..., -1, :].mean(axis=-1, keepdims=True)
    return br


def from_file_columns(data: np.ndarray, grid=None) -> np.ndarray:
    """A HipFT map ``(..., ntheta, nphi + 1)`` (phi = 0 and 2 pi both stored) to ``(..., ntheta, nphi)``.

    As HipFT: the phi = 0 column becomes the mean of the two copies, the copy is
    dropped, and the pole rows are set to one value (:func:`pole_average`, with
    ``grid``'s cell widths when given).
    """
    data = np.asarray(data, dtype=np.float64)
    out = np.array(data[..., :-1], copy=True)
    out[..., 0] = 0.5 * (data[..., 0] + data[..., -1])
    return pole_average(out, grid)
