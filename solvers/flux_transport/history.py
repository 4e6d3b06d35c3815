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
           "NPOLE_AREA", "SPOLE_AREA", "EQ_DIPOLE", "AX_DIPOLE", "VALIDATION_ERR_HHabs")
"""HipFT's ``hipft_history_sol`` columns: time [h], Br [G], fluxes [Mx], areas [cm^2], dipoles [G]."""


class Diagnostics:
    """Integrals of Br over this rank's cells with HipFT's weights, summed over the group's ranks.

    Not collective to build; :meth:`compute` is collective on the group
    (``domain.decomp.comm``). The weights are HipFT's (``analysis_step``): a cell
    counts ``da_t da_p`` with ``da_t = sin(t) dt`` (a pole row: ``sin(t_mid) dth / 4``
    at the mid-point colatitude of the first interval) and ``da_p`` its phi width
    (the seam column gathers HipFT's two half widths); dipoles weight by the
    sines and cosines HipFT uses. On the same map the initial history agrees
    with HipFT's to round-off. Polar regions: rows whose colatitude is at most
    ``90 - polar_latitude_deg`` from a pole (HipFT's ``pole_flux_lat_limit``).

    Sums over ranks are ``MPI_Allreduce``: their last bits depend on the rank
    count (min and max do not).
    """

    def __init__(self, domain, grid, polar_latitude_deg: float = 60.0):
        self.domain = domain
        self.grid = grid
        d = domain
        rows = np.arange(d.row0, d.row0 + d.ntl)
        cols = np.arange(d.col0, d.col0 + d.npl)
        da_t, sn_t, cs_t = (w[rows] for w in grid.diag_theta)
        da_p, cos_p, sin_p = (w[cols] for w in grid.diag_phi)
        t = grid.h_t[rows]
        limit = (90.0 - polar_latitude_deg) * (math.pi / 180.0)
        north = (t <= limit).astype(np.float64)
        south = (t >= math.pi - limit).astype(np.float64)
        area = np.outer(da_t, da_p).ravel()
        self.flux_w = np.stack([area, np.outer(da_t * north, da_p).ravel(), np.outer(da_t * south, da_p).ravel()],
                               axis=1)
        self.dip_w = np.stack([np.outer(sn_t * da_t, cos_p).ravel(), np.outer(sn_t * da_t, sin_p).ravel(),
                               np.outer(cs_t * da_t, da_p).ravel()], axis=1)
        self.polar_area = (float(self.flux_w[:, 1].sum()), float(self.flux_w[:, 2].sum()))
        self._dev = None

    def _weights(self, xp):
        if xp is np:
            return self.flux_w, self.dip_w
        if self._dev is None:
            self._dev = (xp.asarray(self.flux_w), xp.asarray(self.dip_w))
        return self._dev

    def compute(self, f_interior, exact=None) -> dict:
        """Diagnostics of ``f_interior`` ``(ntl, npl, nr)``; ``exact`` the same shape (validation) or None.

        Returns ``{column: (nr,) float64 array}`` for the columns of :data:`COLUMNS` after TIME.
        Collective on the group.
        """
        from mpi4py import MPI

        from hpcore.arrays import array_module

        xp = array_module(f_interior)
        flux_w, dip_w = self._weights(xp)
        nr = f_interior.shape[-1]
        f = xp.ascontiguousarray(xp.moveaxis(f_interior, -1, 0).reshape(nr, -1))  # (nr, cells)
        sp = xp.maximum(f, 0.0) @ flux_w  # (nr, 3): all, north, south
        sm = xp.minimum(f, 0.0) @ flux_w
        sd = f @ dip_w  # (nr, 3): x, y, axial
        parts = [sp.T, sm.T, sd.T]
        if exact is not None:
            e = xp.ascontiguousarray(xp.moveaxis(exact, -1, 0).reshape(nr, -1))
            parts.append(xp.stack([((f - e) ** 2).sum(axis=1), (xp.abs(f) * xp.abs(e)).sum(axis=1)]))
        sums = xp.concatenate(parts, axis=0)
        area = np.array([[self.polar_area[0]] * nr, [self.polar_area[1]] * nr])
        sums = np.concatenate([_host(sums).astype(np.float64), area])
        mins = np.stack([_host(f.min(axis=1)), _host(xp.abs(f).min(axis=1))]).astype(np.float64)
        # HipFT starts its maximum at the smallest positive double
        maxs = np.maximum(np.ascontiguousarray(_host(f.max(axis=1)), dtype=np.float64), np.finfo(np.float64).tiny)
        comm = self.domain.decomp.comm
        comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        comm.Allreduce(MPI.IN_PLACE, mins, op=MPI.MIN)
        comm.Allreduce(MPI.IN_PLACE, maxs, op=MPI.MAX)
        area = sums[-2:]
        k = 3.0 / (4.0 * math.pi)
        out = {
            "BR_MIN": mins[0], "BR_MAX": maxs, "BR_ABS_MIN": mins[1],
            "FLUX_POSITIVE": RSUN_CM2 * sums[0], "FLUX_NEGATIVE": RSUN_CM2 * sums[3],
            "NPOLE_FLUX_POSITIVE": RSUN_CM2 * sums[1], "NPOLE_FLUX_NEGATIVE": RSUN_CM2 * sums[4],
            "SPOLE_FLUX_POSITIVE": RSUN_CM2 * sums[2], "SPOLE_FLUX_NEGATIVE": RSUN_CM2 * sums[5],
            "NPOLE_AREA": RSUN_CM2 * area[0], "SPOLE_AREA": RSUN_CM2 * area[1],
            "EQ_DIPOLE": k * np.sqrt(sums[6] ** 2 + sums[7] ** 2), "AX_DIPOLE": k * sums[8],
            "VALIDATION_ERR_HHabs": (np.sqrt(sums[9] / np.where(sums[10] > 0, sums[10], 1.0))
                                      if exact is not None else np.zeros(nr)),
        }
        return out


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


class HistoryWriter:
    """One text file per realization, HipFT's columns (``<stem>_r000001.out``, e.g. ``hipft_history_sol``).

    Not collective: the root rank of each realization group writes its realizations.
    ``restart_step``: keep the rows of steps <= it (a restart continues the file).
    """

    def __init__(self, directory: str, realizations, stem: str = "ft_history", restart_step: Optional[int] = None):
        self.paths = [os.path.join(directory, f"{stem}_r{r + 1:06d}.out") for r in realizations]
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
        """Append one row per realization (``values``: ``{column: (nr,)}``)."""
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
