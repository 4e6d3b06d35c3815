"""History diagnostics per realization (fluxes, polar fluxes and areas, dipoles, validation error) and their files."""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np

from .grid import RSUN_CM2

__all__ = ["Diagnostics", "HistoryWriter", "COLUMNS", "read_history"]

COLUMNS = ("STEP", "TIME", "BR_MIN", "BR_MAX", "BR_ABS_MIN", "FLUX_POSITIVE", "FLUX_NEGATIVE",
           "NPOLE_FLUX_POSITIVE", "NPOLE_FLUX_NEGATIVE", "SPOLE_FLUX_POSITIVE", "SPOLE_FLUX_NEGATIVE",
           "NPOLE_AREA", "SPOLE_AREA", "EQ_DIPOLE", "AX_DIPOLE", "VALIDATION_ERR_CVRMSD")
"""HipFT's ``hipft_history_sol`` columns: time [h], Br [G], fluxes [Mx], areas [cm^2], dipoles [G]."""


class Diagnostics:
    """Integrals of Br over this rank's cells, summed over the group's ranks.

    Not collective to build; :meth:`compute` is collective on the group
    (``domain.decomp.comm``). Every integral uses exact cell integrals of its
    weight (areas, ``cos(theta)``, ``sin(theta) cos(phi)``, ``sin(theta) sin(phi)``),
    so a map of ``B0 cos(theta)`` has an axial dipole ``B0`` up to the grid's
    second-order sampling error. Polar regions: rows whose colatitude is within
    ``90 - polar_latitude_deg`` of a pole (HipFT's ``pole_flux_lat_limit``).

    Sums over ranks are ``MPI_Allreduce``: their last bits depend on the rank
    count (min and max do not).
    """

    def __init__(self, domain, grid, polar_latitude_deg: float = 60.0):
        self.domain = domain
        self.grid = grid
        d = domain
        rows = np.arange(d.row0, d.row0 + d.ntl)
        cols = np.arange(d.col0, d.col0 + d.npl)
        h = grid.dtheta
        area = grid.cell_area[rows]
        theta = grid.theta[rows]
        # exact cell integrals of cos(theta) dOmega and sin(theta) dtheta-weights
        cos_w = np.cos(theta) * math.cos(0.5 * h) * area
        sin2 = 0.5 * h - 0.5 * np.cos(2.0 * theta) * math.sin(h)  # integral of sin^2 over the cell's theta range
        pole = (rows == 0) | (rows == grid.ntheta - 1)
        a = 0.5 * h
        cos_w[rows == 0] = math.pi * math.sin(a) ** 2 / grid.nphi
        cos_w[rows == grid.ntheta - 1] = -math.pi * math.sin(a) ** 2 / grid.nphi
        sin2[pole] = 0.0
        phi = grid.phi[cols]
        c = 2.0 * math.sin(0.5 * grid.dphi)
        self.area = area[:, None, None]
        self.cos_w = cos_w[:, None, None]
        self.ex_w = (sin2[:, None] * (c * np.cos(phi))[None, :])[:, :, None]
        self.ey_w = (sin2[:, None] * (c * np.sin(phi))[None, :])[:, :, None]
        limit = math.radians(90.0 - polar_latitude_deg)
        self.north = (theta <= limit + 1e-12)[:, None, None]
        self.south = (theta >= math.pi - limit - 1e-12)[:, None, None]
        self._dev = None

    def _weights(self, xp):
        if xp is np:
            return self.area, self.cos_w, self.ex_w, self.ey_w, self.north, self.south
        if self._dev is None:
            self._dev = tuple(xp.asarray(w) for w in (self.area, self.cos_w, self.ex_w, self.ey_w, self.north,
                                                       self.south))
        return self._dev

    def compute(self, f_interior, exact=None) -> dict:
        """Diagnostics of ``f_interior`` ``(ntl, npl, nr)``; ``exact`` the same shape (validation) or None.

        Returns ``{column: (nr,) float64 array}`` for the columns of :data:`COLUMNS` after TIME.
        Collective on the group.
        """
        from mpi4py import MPI

        from hpcore.arrays import array_module

        xp = array_module(f_interior)
        area, cos_w, ex_w, ey_w, north, south = self._weights(xp)
        f = f_interior
        pos = xp.where(f > 0, f, 0.0)
        neg = xp.where(f < 0, f, 0.0)
        fa_p = pos * area
        fa_m = neg * area
        nr = f.shape[-1]
        sums = xp.stack([
            fa_p.sum(axis=(0, 1)), fa_m.sum(axis=(0, 1)),
            (fa_p * north).sum(axis=(0, 1)), (fa_m * north).sum(axis=(0, 1)),
            (fa_p * south).sum(axis=(0, 1)), (fa_m * south).sum(axis=(0, 1)),
            xp.broadcast_to((area * north).sum() * f.shape[1], (nr,)),
            xp.broadcast_to((area * south).sum() * f.shape[1], (nr,)),
            (f * ex_w).sum(axis=(0, 1)), (f * ey_w).sum(axis=(0, 1)), (f * cos_w).sum(axis=(0, 1)),
        ])
        if exact is not None:
            err = xp.stack([((f - exact) ** 2).sum(axis=(0, 1)), (xp.abs(f) * xp.abs(exact)).sum(axis=(0, 1))])
            sums = xp.concatenate([sums, err])
        sums = np.ascontiguousarray(sums.get() if hasattr(sums, "get") else sums, dtype=np.float64)
        mins = np.stack([_host(f.min(axis=(0, 1))), _host(xp.abs(f).min(axis=(0, 1)))]).astype(np.float64)
        maxs = np.ascontiguousarray(_host(f.max(axis=(0, 1))), dtype=np.float64)
        comm = self.domain.decomp.comm
        comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        comm.Allreduce(MPI.IN_PLACE, mins, op=MPI.MIN)
        comm.Allreduce(MPI.IN_PLACE, maxs, op=MPI.MAX)
        k = 3.0 / (4.0 * math.pi)
        out = {
            "BR_MIN": mins[0], "BR_MAX": maxs, "BR_ABS_MIN": mins[1],
            "FLUX_POSITIVE": RSUN_CM2 * sums[0], "FLUX_NEGATIVE": RSUN_CM2 * sums[1],
            "NPOLE_FLUX_POSITIVE": RSUN_CM2 * sums[2], "NPOLE_FLUX_NEGATIVE": RSUN_CM2 * sums[3],
            "SPOLE_FLUX_POSITIVE": RSUN_CM2 * sums[4], "SPOLE_FLUX_NEGATIVE": RSUN_CM2 * sums[5],
            "NPOLE_AREA": RSUN_CM2 * sums[6], "SPOLE_AREA": RSUN_CM2 * sums[7],
            "EQ_DIPOLE": k * np.sqrt(sums[8] ** 2 + sums[9] ** 2), "AX_DIPOLE": k * sums[10],
            "VALIDATION_ERR_CVRMSD": (np.sqrt(sums[11] / np.where(sums[12] > 0, sums[12], 1.0))
                                      if exact is not None else np.zeros(nr)),
        }
        return out


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


class HistoryWriter:
    """One text file per realization, HipFT's columns (``<prefix>_history_r000001.out``).

    Not collective: the root rank of each realization group writes its realizations.
    ``restart_step``: keep the rows of steps <= it (a restart continues the file).
    """

    def __init__(self, directory: str, realizations, prefix: str = "ft", restart_step: Optional[int] = None):
        self.paths = [os.path.join(directory, f"{prefix}_history_r{r + 1:06d}.out") for r in realizations]
        for p in self.paths:
            if restart_step is not None and os.path.exists(p):
                with open(p, encoding="utf-8") as fh:
                    lines = fh.readlines()
                keep = [lines[0]] + [ln for ln in lines[1:] if ln.split() and int(ln.split()[0]) <= restart_step]
                with open(p, "w", encoding="utf-8") as fh:
                    fh.writelines(keep)
            else:
                with open(p, "w", encoding="utf-8") as fh:
                    fh.write(" ".join(f"{c:>23s}" if i else f"{c:>10s}" for i, c in enumerate(COLUMNS)) + "\n")

    def write(self, step: int, time: float, values: dict) -> None:
        for i, p in enumerate(self.paths):
            row = [f"{step:10d}", f"{time:23.15e}"] + [f"{float(values[c][i]):23.15e}" for c in COLUMNS[2:]]
            with open(p, "a", encoding="utf-8") as fh:
                fh.write(" ".join(row) + "\n")


def read_history(path: str) -> dict:
    """``{column: 1-D array}`` of a history file written by :class:`HistoryWriter` (or HipFT)."""
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().split()
        rows = [ln.split() for ln in fh if ln.strip()]
    data = np.array(rows, dtype=np.float64).reshape(-1, len(header))
    return {name: data[:, i] for i, name in enumerate(header)}
