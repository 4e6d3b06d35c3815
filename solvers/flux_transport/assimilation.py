"""Data assimilation of observed maps: ``Br += w (Br_obs - Br)`` with weights from the data or from mu."""

from __future__ import annotations

import csv
import math
import os
from typing import Optional

import numpy as np

from hpcore.errors import agree

from .config import ConfigError

__all__ = ["Assimilator", "read_map_list", "weights_from_mu"]


def read_map_list(path: str, root_dir: str = "") -> list:
    """``[(time_h, path), ...]`` from a HipFT/OFTpy map list CSV, times relative to the first map.

    Columns ``target_datetime_utc, obs_datetime_utc, obs_jd, map_path`` (a header
    row first); the time of a map is ``24 (obs_jd - obs_jd_first)`` hours. Map
    paths are relative to ``root_dir`` (default: the list's folder).
    """
    if not os.path.exists(path):
        raise ConfigError(f"assimilation.map_list: file {path!r} does not exist")
    base = root_dir or os.path.dirname(os.path.abspath(path))
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ConfigError(f"assimilation.map_list: {path!r} is empty")
        for n, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 4:
                raise ConfigError(f"assimilation.map_list: {path!r} line {n}: expected 4 comma-separated columns "
                                  f"(target_datetime_utc, obs_datetime_utc, obs_jd, map_path), got {row!r}")
            try:
                jd = float(row[2])
            except ValueError:
                raise ConfigError(f"assimilation.map_list: {path!r} line {n}: obs_jd {row[2]!r} is not a number") \
                    from None
            p = row[3].strip()
            rows.append((jd, p if os.path.isabs(p) else os.path.join(base, p)))
    if not rows:
        raise ConfigError(f"assimilation.map_list: {path!r} lists no maps")
    jd0 = rows[0][0]
    out = [(24.0 * (jd - jd0), p) for jd, p in rows]
    if any(b[0] <= a[0] for a, b in zip(out, out[1:])):
        raise ConfigError(f"assimilation.map_list: {path!r}: map times must increase")
    return out


def weights_from_mu(mu: np.ndarray, power: float, limit: float) -> np.ndarray:
    """``mu^power`` where ``mu > limit``, else 0 (HipFT's ``assimilate_data_custom_from_mu``)."""
    mu = np.asarray(mu, dtype=np.float64)
    return np.where(mu > limit, np.abs(mu) ** power, 0.0)


class Assimilator:
    """Applies the listed observations when the run reaches their times.

    Collective on the run's ``comm`` to build: rank 0 reads the list and checks
    that every map exists and is on the run's grid (before any step). At a map's
    time (the step is cut to land on it) rank 0 reads the map and broadcasts it;
    each rank blends its own cells. Weights: the file's second layer, or
    ``mu^p`` above the mu limit (per realization); always zero on the pole caps
    (a cap holds one value) and within ``pole_exclusion_deg`` of a pole.
    ``balance_flux`` rescales the increment's positive and negative parts so its
    net flux is zero (the factor is a sum over ranks).
    """

    def __init__(self, model, config):
        self.model = model
        a = config.assimilation
        self.cfg = a
        r0, r1 = model.domain.r0, model.domain.r1
        pr = config.per_realization
        self.mu_power = pr("assimilation", "mu_power")[r0:r1]
        self.mu_limit = pr("assimilation", "mu_limit")[r0:r1]
        self.exclusion = np.radians(pr("assimilation", "pole_exclusion_deg")[r0:r1])
        self.index = 0
        entries = None
        error = None
        if model.rank == 0:
            try:
                entries = read_map_list(a.map_list, a.root_dir)
                for _, p in entries:
                    self._check_file(p, model.grid)
            except (ValueError, OSError) as exc:
                error = exc
        agree(model.comm, error)
        self.entries = model.comm.bcast(entries, root=0)
        t0 = config.time.start_h
        # first map at or after the start time
        while self.index < len(self.entries) and self.entries[self.index][0] < t0 - 1e-9 * max(1.0, abs(t0)):
            self.index += 1

    @staticmethod
    def _check_file(path: str, grid) -> None:
        import h5py

        from .io import MapFileError

        if not os.path.exists(path):
            raise MapFileError(f"assimilation map {path!r} does not exist")
        with h5py.File(path, "r") as h:
            if "Data" not in h or "dim1" not in h or "dim2" not in h:
                raise MapFileError(f"assimilation map {path!r}: not in HipFT's layout (Data, dim1, dim2)")
            shape = h["Data"].shape
        if len(shape) != 3 or shape[-2:] != (grid.ntheta, grid.nphi + 1) or shape[0] < 2:
            raise MapFileError(f"assimilation map {path!r}: Data shape {shape}, expected (>=2 layers, "
                               f"{grid.ntheta}, {grid.nphi + 1}) for the run's grid")

    def next_time(self) -> Optional[float]:
        """Time of the next map [h], or None when all are used."""
        return self.entries[self.index][0] if self.index < len(self.entries) else None

    def apply_due(self, time: float) -> int:
        """Assimilate every map whose time has come. Collective on the run's ``comm``; returns the count."""
        n = 0
        while self.index < len(self.entries):
            t, path = self.entries[self.index]
            if time < t - 1e-9 * max(1.0, abs(t)):
                break
            self.assimilate(path)
            self.index += 1
            n += 1
        return n

    def assimilate(self, path: str) -> None:
        """Blend one observation file into every realization. Collective on the run's ``comm``."""
        from mpi4py import MPI

        from .io import read_assimilation_map

        m = self.model
        d = m.domain
        grid = m.grid
        buf = np.empty((3,) + grid.shape)
        error = None
        if m.rank == 0:
            try:
                br, w, mu = read_assimilation_map(path, grid)
                buf[0], buf[1], buf[2] = br, w, mu
            except ValueError as exc:
                error = exc
        agree(m.comm, error)
        m.comm.Bcast(buf, root=0)
        rows = slice(d.row0, d.row0 + d.ntl)
        cols = slice(d.col0, d.col0 + d.npl)
        obs = buf[0, rows, cols][:, :, None]
        if self.cfg.custom_from_mu:
            mu = buf[2, rows, cols][:, :, None]
            w = np.where(mu > self.mu_limit, np.abs(mu) ** self.mu_power, 0.0)
        else:
            w = np.repeat(buf[1, rows, cols][:, :, None], d.nr, axis=2)
        theta = grid.theta[rows]
        near = (theta[:, None] <= self.exclusion[None, :]) | (theta[:, None] >= math.pi - self.exclusion[None, :])
        grow = np.arange(d.row0, d.row0 + d.ntl)
        near |= ((grow == 0) | (grow == grid.ntheta - 1))[:, None]
        w = np.where(near[:, None, :], 0.0, w)
        xp = m.xp
        f = m.local_interior()
        delta = xp.asarray(w) * (xp.asarray(obs) - f)
        if self.cfg.balance_flux:
            area = xp.asarray(grid.cell_area[rows][:, None, None])
            fp = xp.where(delta > 0, delta, 0.0) * area
            fm = xp.where(delta < 0, delta, 0.0) * area
            sums = np.stack([_host(fp.sum(axis=(0, 1))), _host(fm.sum(axis=(0, 1)))]).astype(np.float64)
            d.decomp.comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
            ok = (sums[0] > 0) & (sums[1] < 0)
            ratio = np.where(ok, np.sqrt(np.abs(sums[0] / np.where(ok, sums[1], -1.0))), 1.0)
            r = xp.asarray(ratio)[None, None, :]
            delta = xp.where(delta > 0, delta / r, delta * r)
        f += delta


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)

