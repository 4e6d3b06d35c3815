"""Save and load a model, its optimizer and its learning-rate schedule in one HDF5 file (h5py).

Layout: root attributes ``format`` ("hpcore.surrogates"), ``version`` (int),
``config`` (the model's JSON config); dataset ``params`` (the flat buffer);
optional group ``optimizer`` (datasets ``m``, ``v``; attribute ``state``, JSON of
the scalars) and group ``scheduler`` (attribute ``state``); attribute ``meta``
(JSON: epoch and whatever the caller passes as ``extra``).

Loading into a model of a different architecture is refused, naming the first
differing config key and both values. ``seed`` is not architecture; a different
``dtype`` is converted. Not collective: in a data-parallel run one rank writes
(every rank holds the same parameters) and every rank may read.
"""

from __future__ import annotations

import json

import numpy as np

from hpcore.arrays import array_module

from .models import Model, build_model

__all__ = ["FORMAT", "VERSION", "CheckpointError", "load_checkpoint", "load_model", "read_config", "save_checkpoint"]

FORMAT = "hpcore.surrogates"
VERSION = 1
_NOT_ARCHITECTURE = ("seed", "dtype")


class CheckpointError(ValueError):
    """A checkpoint file that does not fit the objects it is loaded into."""


def _host(a):
    return a.get() if array_module(a) is not np else np.asarray(a)


def _norm(value):
    """Config values compared after a JSON round trip (tuples and lists alike)."""
    return json.loads(json.dumps(value))


def save_checkpoint(path, model: Model, optimizer=None, scheduler=None, *, epoch=None, extra=None) -> None:
    """Write ``model`` (and optionally ``optimizer``, ``scheduler``) to HDF5 file ``path``.

    Not collective. ``extra`` is any JSON-able dict (stored in ``meta``).
    """
    import h5py

    meta = {"epoch": epoch, "extra": extra if extra is not None else {}}
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["config"] = json.dumps(model.config)
        f.attrs["meta"] = json.dumps(meta)
        f.create_dataset("params", data=_host(model.params))
        if optimizer is not None:
            state = optimizer.state_dict()
            g = f.create_group("optimizer")
            g.create_dataset("m", data=state.pop("m"))
            g.create_dataset("v", data=state.pop("v"))
            g.attrs["state"] = json.dumps(state)
        if scheduler is not None:
            g = f.create_group("scheduler")
            g.attrs["state"] = json.dumps(scheduler.state_dict())


def _open_checked(path):
    import h5py

    f = h5py.File(path, "r")
    try:
        if f.attrs.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {path}: not a {FORMAT} file (format attribute "
                                  f"{f.attrs.get('format')!r})")
        version = int(f.attrs.get("version", -1))
        if version > VERSION:
            raise CheckpointError(f"checkpoint {path}: version {version} is newer than this code's {VERSION}")
    except Exception:
        f.close()
        raise
    return f


def read_config(path) -> dict:
    """The model config stored in checkpoint ``path``. Not collective."""
    with _open_checked(path) as f:
        return json.loads(f.attrs["config"])


def _check_architecture(path, stored: dict, config: dict) -> None:
    keys = sorted(set(stored) | set(config))
    for key in keys:
        if key in _NOT_ARCHITECTURE:
            continue
        a, b = _norm(stored.get(key, "<absent>")), _norm(config.get(key, "<absent>"))
        if a != b:
            raise CheckpointError(f"checkpoint {path} was written by a different architecture: config key "
                                  f"{key!r} is {a!r} in the file and {b!r} in the model")


def load_checkpoint(path, model: Model, optimizer=None, scheduler=None) -> dict:
    """Load parameters (and optimizer, scheduler state) from ``path`` into existing objects.

    Not collective. Returns the ``meta`` dict (``epoch``, ``extra``, ``version``).
    Raises :class:`CheckpointError` when the file's architecture differs from
    ``model``'s or a requested optimizer/scheduler state is missing.
    """
    with _open_checked(path) as f:
        stored = json.loads(f.attrs["config"])
        _check_architecture(path, stored, model.config)
        params = f["params"][...]
        if params.shape != model.params.shape:
            raise CheckpointError(f"checkpoint {path}: parameter buffer has {params.shape[0]} numbers, "
                                  f"the model {model.params.shape[0]}")
        opt_state = sched_state = None
        if optimizer is not None:
            if "optimizer" not in f:
                raise CheckpointError(f"checkpoint {path} holds no optimizer state")
            g = f["optimizer"]
            opt_state = json.loads(g.attrs["state"])
            opt_state["m"], opt_state["v"] = g["m"][...], g["v"][...]
        if scheduler is not None:
            if "scheduler" not in f:
                raise CheckpointError(f"checkpoint {path} holds no scheduler state")
            sched_state = json.loads(f["scheduler"].attrs["state"])
        meta = json.loads(f.attrs["meta"])
        meta["version"] = int(f.attrs["version"])
    xp = array_module(model.params)
    model.params[...] = xp.asarray(params.astype(model.dtype))
    if opt_state is not None:
        opt_state["m"] = opt_state["m"].astype(model.dtype)
        opt_state["v"] = opt_state["v"].astype(model.dtype)
        optimizer.load_state_dict(opt_state)
    if sched_state is not None:
        scheduler.load_state_dict(sched_state)
    return meta


def load_model(path) -> Model:
    """Build the model stored in ``path`` (its config) and load its parameters. Not collective."""
    model = build_model(read_config(path))
    load_checkpoint(path, model)
    return model
