"""HDF5 maps in HipFT's layout (``Data`` with scales ``dim1`` phi, ``dim2`` theta, ``dim3`` realization)
and checkpoints.

HipFT writes maps with the Fortran HDF5 API, phi fastest: seen from C/h5py a 2-D
map is ``Data[theta, phi]`` of shape ``(ntheta, nphi + 1)`` (phi from 0 to 2 pi
inclusive), with the 1-D datasets ``dim1`` (phi, ``nphi + 1`` values) and
``dim2`` (theta, ``ntheta`` values, pole to pole) marked as dimension scales; a
map of ``n`` realizations is ``Data[r, theta, phi]`` with ``dim3 = 1 .. n``.
The scales are attached in Fortran order (``dim1`` to the first h5py axis), as
HipFT's files have them; readers here use the scale datasets by name. Values
are Br in gauss, single precision unless asked otherwise.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .grid import SphereGrid
from .initial import from_file_columns

__all__ = ["MapFileError", "read_assimilation_map", "read_checkpoint", "read_checkpoint_header", "read_map",
           "write_checkpoint", "write_map"]


class MapFileError(ValueError):
    """A map file is missing, not in HipFT's layout, on another grid, or holds NaN/Inf."""


def read_map(path: str, grid: SphereGrid | None = None, name: str = "map"):
    """Read a HipFT map. Not collective.

    Returns ``(data, grid, realizations)``: ``data`` of shape ``(ntheta, nphi)`` or
    ``(n, ntheta, nphi)`` (the 2 pi copy folded in as HipFT does, poles averaged),
    float64; the grid of its scales; the ``dim3`` scale or None. With ``grid``,
    a map on another grid is refused. Raises :class:`MapFileError`.
    """
    import h5py

    if not os.path.exists(path):
        raise MapFileError(f"{name}: file {path!r} does not exist")
    try:
        with h5py.File(path, "r") as h:
            if "Data" not in h:
                raise MapFileError(f"{name}: {path!r} has no dataset 'Data' (HipFT layout)")
            data = np.asarray(h["Data"][...], dtype=np.float64)
            if data.ndim not in (2, 3):
                raise MapFileError(f"{name}: {path!r} Data has {data.ndim} dimensions, expected 2 or 3")
            for key in ("dim1", "dim2"):
                if key not in h:
                    raise MapFileError(f"{name}: {path!r} has no scale {key!r} (HipFT layout: dim1 = phi, "
                                       "dim2 = theta)")
            phi = np.asarray(h["dim1"][...], dtype=np.float64)
            theta = np.asarray(h["dim2"][...], dtype=np.float64)
            r = np.asarray(h["dim3"][...], dtype=np.float64) if data.ndim == 3 and "dim3" in h else None
    except OSError as exc:
        raise MapFileError(f"{name}: cannot read {path!r} as HDF5: {exc}") from None
    if data.shape[-1] != phi.size or data.shape[-2] != theta.size:
        raise MapFileError(f"{name}: {path!r} Data shape {data.shape} does not match dim1 (phi, {phi.size}) as the "
                           f"fastest axis and dim2 (theta, {theta.size}); expected HipFT's (theta, phi) layout")
    try:
        file_grid = SphereGrid.from_scales(phi, theta, name=f"{name} ({path})")
    except ValueError as exc:
        raise MapFileError(str(exc)) from None
    if grid is not None and file_grid != grid:
        raise MapFileError(f"{name}: {path!r} is on a {file_grid.ntheta} x {file_grid.nphi + 1} (theta x phi) grid, "
                           f"the run is on {grid.ntheta} x {grid.nphi + 1}")
    bad = ~np.isfinite(data)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise MapFileError(f"{name}: {path!r} holds {int(bad.sum())} NaN/Inf values (first at index {idx})")
    return from_file_columns(data, file_grid), file_grid, r


def write_map(path: str, data, grid: SphereGrid, single_precision: bool = True, force_3d: bool = False) -> None:
    """Write ``data`` of shape ``(ntheta, nphi)`` or ``(n, ntheta, nphi)`` as a HipFT map. Not collective.

    The phi = 2 pi column is added (a copy of phi = 0). A 3-D array with ``n = 1``
    is written as 2-D unless ``force_3d``.
    """
    import h5py

    data = np.asarray(data, dtype=np.float64)
    if data.shape[-2:] != grid.shape:
        raise ValueError(f"write_map: data shape {data.shape} does not end with the grid shape {grid.shape}")
    if data.ndim == 3 and data.shape[0] == 1 and not force_3d:
        data = data[0]
    full = np.concatenate([data, data[..., :1]], axis=-1)
    dtype = np.float32 if single_precision else np.float64
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as h:
        d = h.create_dataset("Data", data=full.astype(dtype))
        scales = [("dim1", grid.file_phi), ("dim2", grid.file_theta)]
        if full.ndim == 3:
            scales.append(("dim3", np.arange(1, full.shape[0] + 1, dtype=np.float64)))
        for axis, (key, values) in enumerate(scales):
            s = h.create_dataset(key, data=np.asarray(values).astype(dtype))
            s.make_scale(key)
            d.dims[axis].attach_scale(s)
            d.dims[axis].label = key
    os.replace(tmp, path)


def read_assimilation_map(path: str, grid: SphereGrid):
    """An observation file: ``Data`` of 3 layers ``(3, ntheta, nphi + 1)``: Br [G], weight, mu.

    Returns ``(br, weight, mu)`` each ``(ntheta, nphi)``. Raises :class:`MapFileError`.
    """
    data, _, _ = read_map(path, grid, name="assimilation map")
    if data.ndim != 3 or data.shape[0] < 2:
        raise MapFileError(f"assimilation map: {path!r} needs layers Br, weight[, mu] along the first axis, got "
                           f"shape {data.shape}")
    mu = data[2] if data.shape[0] > 2 else np.ones_like(data[0])
    return data[0], data[1], mu


def write_checkpoint(path: str, field, grid: SphereGrid, state: dict, config: dict) -> None:
    """Write a restart file (double precision, every realization). Not collective."""
    import h5py

    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as h:
        h.create_dataset("Data", data=np.asarray(field, dtype=np.float64))
        h.attrs["ntheta"] = grid.ntheta
        h.attrs["nphi"] = grid.nphi
        h.attrs["state"] = json.dumps(state, sort_keys=True)
        h.attrs["config"] = json.dumps(config, sort_keys=True)
        h.attrs["format"] = CHECKPOINT_FORMAT
    os.replace(tmp, path)


CHECKPOINT_FORMAT = "hpcore.flux_transport checkpoint 1"
CHECKPOINT_ATTRS = ("format", "ntheta", "nphi", "state", "config")


def read_checkpoint_header(path: str):
    """``(grid, state, config, data_shape)`` of a restart file, without reading the field. Not collective.

    Raises :class:`MapFileError` naming the file and the missing or broken dataset or
    attribute (never KeyError or an h5py error).
    """
    import h5py

    if not os.path.exists(path):
        raise MapFileError(f"checkpoint: file {path!r} does not exist")
    try:
        with h5py.File(path, "r") as h:
            missing = [a for a in CHECKPOINT_ATTRS if a not in h.attrs]
            if "format" not in missing and h.attrs["format"] != CHECKPOINT_FORMAT:
                raise MapFileError(f"checkpoint: {path!r} is not a flux_transport checkpoint (format "
                                   f"{h.attrs['format']!r})")
            if missing:
                raise MapFileError(f"checkpoint: {path!r} lacks the attribute(s) {', '.join(missing)}")
            if "Data" not in h or not isinstance(h["Data"], h5py.Dataset):
                raise MapFileError(f"checkpoint: {path!r} lacks the dataset 'Data'")
            shape = tuple(int(x) for x in h["Data"].shape)
            ntheta, nphi = int(h.attrs["ntheta"]), int(h.attrs["nphi"])
            try:
                state = json.loads(h.attrs["state"])
                config = json.loads(h.attrs["config"])
            except (TypeError, ValueError) as exc:
                raise MapFileError(f"checkpoint: {path!r} attribute state/config is not JSON: {exc}") from None
    except OSError as exc:
        raise MapFileError(f"checkpoint: cannot read {path!r} as HDF5: {exc}") from None
    if len(shape) != 3 or shape[1:] != (ntheta, nphi):
        raise MapFileError(f"checkpoint: {path!r} Data has shape {shape}, expected (realizations, {ntheta}, {nphi}) "
                           "from its ntheta/nphi attributes")
    for key in ("time", "steps", "n_map", "n_hist", "n_ckpt"):
        if not isinstance(state, dict) or key not in state:
            raise MapFileError(f"checkpoint: {path!r} attribute state lacks {key!r}")
    if not isinstance(config, dict):
        raise MapFileError(f"checkpoint: {path!r} attribute config is not a table")
    try:
        grid = SphereGrid(ntheta, nphi)
    except (TypeError, ValueError) as exc:
        raise MapFileError(f"checkpoint: {path!r}: {exc}") from None
    return grid, state, config, shape


def read_checkpoint(path: str):
    """``(field (n, ntheta, nphi), grid, state, config)`` of a restart file. Not collective.

    Raises :class:`MapFileError` naming the file and what is missing or broken.
    """
    import h5py

    grid, state, config, _ = read_checkpoint_header(path)
    try:
        with h5py.File(path, "r") as h:
            field = np.asarray(h["Data"][...], dtype=np.float64)
    except OSError as exc:
        raise MapFileError(f"checkpoint: cannot read the dataset 'Data' of {path!r}: {exc}") from None
    if not np.all(np.isfinite(field)):
        raise MapFileError(f"checkpoint: {path!r} Data holds NaN/Inf values")
    return field, grid, state, config
