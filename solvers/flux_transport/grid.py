"""The theta-phi grid of the sphere: nodes pole to pole, periodic phi cells, pole caps, exact cell areas."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SphereGrid", "RSUN_CM2", "KM2_S_TO_RS2_H", "M_S_TO_RS_H", "KM_S_TO_RS_H"]

RSUN_CM2 = 4.84416e21
"""Solar radius squared [cm^2]: converts G R^2 to Mx."""
KM2_S_TO_RS2_H = 7.43162901307967e-9
"""1 km^2/s in R_sun^2/h (HipFT's ``diff_km2_s_to_rs2_hr``)."""
M_S_TO_RS_H = 5.172413793103448e-6
"""1 m/s in R_sun/h."""
KM_S_TO_RS_H = 5.172413793103448e-3
"""1 km/s in R_sun/h."""


class SphereGrid:
    """A uniform theta-phi grid of the unit sphere, HipFT's mesh.

    Not collective; cheap (1-D arrays only). Rows are ``ntheta`` colatitude nodes
    ``theta_j = j pi / (ntheta - 1)`` including both poles; the two pole rows are
    the pole caps (``0 <= theta <= dtheta/2`` and its mirror), single values stored
    once per phi column. Columns are ``nphi`` periodic cells ``phi_k = k 2 pi /
    nphi``; files carry one more column (``phi = 2 pi``, a copy of ``phi = 0``).
    Cell faces sit half-way between nodes. Areas are exact on the unit sphere:
    ``2 sin(theta_j) sin(dtheta/2) dphi`` for a cell, ``2 pi (1 - cos(dtheta/2))``
    for a cap, so the areas sum to ``4 pi`` up to rounding.

    Parameters
    ----------
    ntheta : int
        Rows, poles included (>= 5).
    nphi : int
        Periodic phi cells (>= 4), i.e. the file's phi points minus one.
    """

    def __init__(self, ntheta: int, nphi: int):
        for name, value, least in (("ntheta", ntheta, 5), ("nphi", nphi, 4)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
            if value < least:
                raise ValueError(f"{name}: expected >= {least}, got {value}")
        self.ntheta = int(ntheta)
        self.nphi = int(nphi)
        self.dtheta = math.pi / (self.ntheta - 1)
        self.dphi = 2.0 * math.pi / self.nphi
        j = np.arange(self.ntheta, dtype=np.float64)
        self.theta = j * math.pi / (self.ntheta - 1)
        self.theta[-1] = math.pi
        self.phi = np.arange(self.nphi, dtype=np.float64) * (2.0 * math.pi / self.nphi)
        # face j+1/2 between rows j and j+1, j = 0 .. ntheta-2
        self.theta_faces = (np.arange(self.ntheta - 1, dtype=np.float64) + 0.5) * math.pi / (self.ntheta - 1)
        self.sin_theta = np.sin(self.theta)
        self.sin_theta[0] = self.sin_theta[-1] = 0.0
        self.cos_theta = np.cos(self.theta)
        self.sin_faces = np.sin(self.theta_faces)
        half = math.sin(0.5 * self.dtheta)
        self.cap_area = 2.0 * math.pi * (1.0 - math.cos(0.5 * self.dtheta))
        # area of one stored cell; a pole row's cap is shared by its nphi entries
        self.cell_area = 2.0 * self.sin_theta * half * self.dphi
        self.cell_area[0] = self.cell_area[-1] = self.cap_area / self.nphi

    # ------------------------------------------------------------------ scales of files
    @property
    def shape(self) -> tuple:
        """``(ntheta, nphi)``: the stored (unique-cell) grid."""
        return (self.ntheta, self.nphi)

    @property
    def file_phi(self) -> np.ndarray:
        """The phi scale of files, ``nphi + 1`` points from 0 to 2 pi inclusive."""
        return np.linspace(0.0, 2.0 * math.pi, self.nphi + 1)

    @property
    def file_theta(self) -> np.ndarray:
        """The theta scale of files, ``ntheta`` points from 0 to pi inclusive."""
        return self.theta.copy()

    @classmethod
    def from_scales(cls, phi, theta, tol: float = 1e-5, name: str = "map") -> "SphereGrid":
        """The grid of a HipFT map from its scales (phi with the 2 pi copy, theta pole to pole).

        Raises ``ValueError`` naming ``name`` when the scales do not cover the sphere
        uniformly (HipFT's grids are uniform; this solver does not interpolate).
        """
        phi = np.asarray(phi, dtype=np.float64).ravel()
        theta = np.asarray(theta, dtype=np.float64).ravel()
        if phi.size < 5 or theta.size < 5:
            raise ValueError(f"{name}: scales too short (phi {phi.size}, theta {theta.size} points; need >= 5)")
        if abs(phi[0]) > tol or abs(phi[-1] - 2 * math.pi) > tol:
            raise ValueError(f"{name}: phi scale must run from 0 to 2 pi inclusive, got {phi[0]:.6g} .. "
                             f"{phi[-1]:.6g}")
        if abs(theta[0]) > tol or abs(theta[-1] - math.pi) > tol:
            raise ValueError(f"{name}: theta scale must run from 0 to pi inclusive (poles included), got "
                             f"{theta[0]:.6g} .. {theta[-1]:.6g}")
        grid = cls(theta.size, phi.size - 1)
        dphi_err = float(np.max(np.abs(phi - grid.file_phi)))
        dtheta_err = float(np.max(np.abs(theta - grid.theta)))
        if dphi_err > tol * 10 or dtheta_err > tol * 10:
            raise ValueError(f"{name}: scales are not uniform (max deviation phi {dphi_err:.3g}, theta "
                             f"{dtheta_err:.3g} rad); this solver needs HipFT's uniform mesh")
        return grid

    def total_area(self) -> float:
        """Sum of all stored cell areas (4 pi up to rounding)."""
        return float(self.cell_area.sum() * self.nphi)

    def __eq__(self, other) -> bool:
        return isinstance(other, SphereGrid) and self.shape == other.shape

    def __hash__(self) -> int:
        return hash(self.shape)

    def __repr__(self) -> str:
        return f"SphereGrid(ntheta={self.ntheta}, nphi={self.nphi})"
