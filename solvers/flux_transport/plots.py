"""PNG plots of a run: a map (Mollweide or lat-lon), the butterfly diagram, history curves (matplotlib, Agg)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .grid import SphereGrid

__all__ = ["plot_butterfly", "plot_history", "plot_map", "plot_run"]


def _plt():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is a test dependency here
        raise ImportError("plots need matplotlib: pip install 'hpcore[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _limit(data) -> float:
    v = float(np.percentile(np.abs(data), 99.5)) if np.size(data) else 1.0
    return v if v > 0 else 1.0


def plot_map(path: str, br: np.ndarray, grid: SphereGrid, title: str = "Br",
             projection: Literal["mollweide", "latlon"] = "mollweide", vmax: float | None = None) -> str:
    """Write ``br`` ``(ntheta, nphi)`` [G] as a PNG. Not collective."""
    plt = _plt()
    br = np.asarray(br, dtype=np.float64)
    vmax = vmax or _limit(br)
    lat = 90.0 - np.degrees(grid.theta)
    lon = np.degrees(np.append(grid.phi, 2 * math.pi))
    data = np.concatenate([br, br[:, :1]], axis=1)
    if projection == "mollweide":
        fig = plt.figure(figsize=(8, 4.4))
        ax = fig.add_subplot(111, projection="mollweide")
        lon_r = np.radians(lon) - math.pi  # Mollweide wants [-pi, pi]
        im = ax.pcolormesh(lon_r, np.radians(lat), data, cmap="RdBu_r", vmin=-vmax, vmax=vmax, shading="auto")
        ax.set_xticklabels([])
        ax.grid(True, alpha=0.3)
    elif projection == "latlon":
        fig, ax = plt.subplots(figsize=(8, 4.2))
        im = ax.pcolormesh(lon, lat, data, cmap="RdBu_r", vmin=-vmax, vmax=vmax, shading="auto")
        ax.set_xlabel("Carrington longitude [deg]")
        ax.set_ylabel("latitude [deg]")
        ax.set_xlim(0, 360)
        ax.set_ylim(-90, 90)
    else:
        raise ValueError(f"projection: expected 'mollweide' or 'latlon', got {projection!r}")
    fig.colorbar(im, ax=ax, label="Br [G]", shrink=0.8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_butterfly(path: str, times: Sequence[float], zonal: np.ndarray, grid: SphereGrid,
                   title: str = "butterfly diagram (longitude-averaged Br)") -> str:
    """Write the butterfly diagram: zonal mean Br ``(ntimes, ntheta)`` against time [h] and latitude. Not collective."""
    plt = _plt()
    zonal = np.asarray(zonal, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    vmax = _limit(zonal)
    lat = 90.0 - np.degrees(grid.theta)
    if times.size > 1:
        im = ax.pcolormesh(times / 24.0, lat, zonal.T, cmap="RdBu_r", vmin=-vmax, vmax=vmax, shading="auto")
        fig.colorbar(im, ax=ax, label="<Br> [G]")
    ax.set_xlabel("time [days]")
    ax.set_ylabel("latitude [deg]")
    ax.set_ylim(-90, 90)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_history(path: str, history: dict, title: str = "history") -> str:
    """Write history curves (fluxes, polar fluxes, dipoles; validation error if present). Not collective."""
    plt = _plt()
    t = np.asarray(history["TIME"]) / 24.0
    has_val = "VALIDATION_ERR_CVRMSD" in history and np.any(np.asarray(history["VALIDATION_ERR_CVRMSD"]) > 0)
    n = 4 if has_val else 3
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.3 * n), sharex=True)
    ax = axes[0]
    ax.plot(t, history["FLUX_POSITIVE"], label="flux +")
    ax.plot(t, -np.asarray(history["FLUX_NEGATIVE"]), label="|flux -|")
    ax.set_ylabel("[Mx]")
    ax.legend(fontsize=8)
    ax = axes[1]
    for key, lab in (("NPOLE_FLUX_POSITIVE", "N +"), ("NPOLE_FLUX_NEGATIVE", "N -"),
                     ("SPOLE_FLUX_POSITIVE", "S +"), ("SPOLE_FLUX_NEGATIVE", "S -")):
        ax.plot(t, history[key], label=lab)
    ax.set_ylabel("polar flux [Mx]")
    ax.legend(fontsize=8, ncol=4)
    ax = axes[2]
    ax.plot(t, history["AX_DIPOLE"], label="axial")
    ax.plot(t, history["EQ_DIPOLE"], label="equatorial")
    ax.set_ylabel("dipole [G]")
    ax.legend(fontsize=8)
    if has_val:
        axes[3].semilogy(t, np.maximum(history["VALIDATION_ERR_CVRMSD"], 1e-300))
        axes[3].set_ylabel("validation error")
    axes[-1].set_xlabel("time [days]")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(directory: str, prefix: str, br: np.ndarray, grid: SphereGrid, history_path: str | None = None,
             butterfly: tuple | None = None) -> list:
    """The standard plots of a run in ``directory``; returns the paths written. Not collective."""
    from .history import read_history

    files = [plot_map(os.path.join(directory, f"{prefix}_final_mollweide.png"), br, grid, "Br, final (realization 1)"),
             plot_map(os.path.join(directory, f"{prefix}_final_latlon.png"), br, grid, "Br, final (realization 1)",
                      projection="latlon")]
    if butterfly is not None and len(butterfly[0]) > 1:
        files.append(plot_butterfly(os.path.join(directory, f"{prefix}_butterfly.png"), butterfly[0], butterfly[1],
                                    grid))
    if history_path and os.path.exists(history_path):
        files.append(plot_history(os.path.join(directory, f"{prefix}_history.png"), read_history(history_path),
                                  "history (realization 1)"))
    return files
