"""Weights between our FNO/TFNO and neuraloperator 0.3.0's (PyTorch), both ways. Optional: imports torch lazily.

neuraloperator names -> ours:

===============================================  ==================================
``lifting.fcs.{j}.weight`` (out, in, 1, ...)      ``lifting.fc{j}.weight`` (out, in)
``lifting.fcs.{j}.bias``                          ``lifting.fc{j}.bias``
``fno_blocks.convs.weight.{i}.tensor`` (..., 2)   ``blocks.{i}.spectral.weight`` (complex)
``fno_blocks.convs.weight.{i}.core`` / ``factors.factor_{k}`` / ``weights``
                                                  ``blocks.{i}.spectral.core`` / ``factor{k}`` / ``weights``
``fno_blocks.convs.bias`` (layers, out, 1, ...)   ``blocks.{i}.spectral.bias`` (out,)
``fno_blocks.fno_skips.{i}.weight``               ``blocks.{i}.skip.weight``
``projection.fcs.{j}.weight`` / ``bias``          ``projection.fc{j}.weight`` / ``bias``
===============================================  ==================================

neuraloperator 0.3.0's FNO has no positional embedding inside the model (its data
pipeline appends the grid); our ``positional_embedding=True`` model corresponds to
a neuraloperator model with ``in_channels + ndim`` inputs fed
``concatenate([x, grid_channels(...)])``.
"""

from __future__ import annotations

import numpy as np

from .models import FNO, grid_channels

__all__ = ["append_grid", "build_neuralop", "copy_from_neuralop", "copy_to_neuralop", "neuralop_kwargs"]


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("solvers.surrogates.torch_interop needs torch (pip install 'hpcore[torch]')") from exc
    return torch


def neuralop_kwargs(model: FNO) -> dict:
    """Keyword arguments of ``neuralop.models.FNO`` / ``TFNO`` for the same architecture."""
    if not isinstance(model, FNO):
        raise TypeError(f"neuralop_kwargs: expected an FNO or TFNO, got {type(model).__name__}")
    cfg = model.config
    ndim = len(cfg["n_modes"])
    kw = {"n_modes": tuple(cfg["n_modes"]), "hidden_channels": cfg["hidden_channels"],
          "in_channels": cfg["in_channels"] + (ndim if cfg["positional_embedding"] else 0),
          "out_channels": cfg["out_channels"], "lifting_channels": cfg["lifting_channels"],
          "projection_channels": cfg["projection_channels"], "n_layers": cfg["n_layers"]}
    if cfg["fft_norm"] != "backward":
        raise ValueError("neuralop 0.3.0's FNO blocks always use fft_norm='backward'; "
                         f"this model has {cfg['fft_norm']!r}")
    if cfg["model"] == "tfno":
        kw.update(factorization=cfg["factorization"], rank=cfg["rank"], implementation="factorized")
    return kw


def _pairs(model: FNO, state_keys):
    """(our name, their key, their index or None) for every parameter."""
    pairs = []
    ours = model.named_parameters()
    for name in ours:
        parts = name.split(".")
        if parts[0] in ("lifting", "projection"):
            j = parts[1][2:]
            pairs.append((name, f"{parts[0]}.fcs.{j}.{parts[2]}", None))
        elif parts[2] == "skip":
            pairs.append((name, f"fno_blocks.fno_skips.{parts[1]}.weight", None))
        elif parts[3] == "bias":
            pairs.append((name, "fno_blocks.convs.bias", int(parts[1])))
        else:
            i, p = parts[1], parts[3]
            key = {"weight": f"fno_blocks.convs.weight.{i}.tensor", "core": f"fno_blocks.convs.weight.{i}.core",
                   "weights": f"fno_blocks.convs.weight.{i}.weights"}.get(p)
            if key is None and p.startswith("factor"):
                key = f"fno_blocks.convs.weight.{i}.factors.factor_{p[6:]}"
            pairs.append((name, key, None))
    missing = sorted({k for _, k, _ in pairs} - set(state_keys))
    if missing:
        raise ValueError(f"neuraloperator model lacks parameters {missing}: architectures differ")
    return pairs


def _to_host(view):
    xp_view = view.get() if hasattr(view, "get") else np.asarray(view)
    if np.iscomplexobj(xp_view):
        return np.stack([xp_view.real, xp_view.imag], axis=-1)
    return xp_view


def copy_to_neuralop(model: FNO, theirs) -> None:
    """Copy our parameters into neuraloperator model ``theirs`` (in place, its dtype kept)."""
    torch = _torch()
    state = theirs.state_dict()
    with torch.no_grad():
        for name, key, index in _pairs(model, state):
            value = _to_host(model.named_parameters()[name])
            target = state[key] if index is None else state[key][index]
            if target.numel() != value.size:
                raise ValueError(f"{name} has {value.size} numbers, neuraloperator's {key} {target.numel()}")
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)).reshape(target.shape).to(target.dtype))


def copy_from_neuralop(theirs, model: FNO) -> None:
    """Copy neuraloperator model ``theirs``'s parameters into our ``model`` (in place)."""
    state = theirs.state_dict()
    ours = model.named_parameters()
    xp = model.xp
    for name, key, index in _pairs(model, state):
        src = state[key] if index is None else state[key][index]
        value = src.detach().cpu().double().numpy()
        view = ours[name]
        if np.iscomplexobj(view):
            if value.shape[-1] != 2 or value[..., 0].size != view.size:
                raise ValueError(f"{name}: shape {view.shape} does not fit neuraloperator's {key} {tuple(src.shape)}")
            value = value[..., 0] + 1j * value[..., 1]
        elif value.size != view.size:
            raise ValueError(f"{name}: shape {view.shape} does not fit neuraloperator's {key} {tuple(src.shape)}")
        view[...] = xp.asarray(value.reshape(view.shape).astype(view.dtype))


def build_neuralop(model: FNO, dtype=None):
    """A neuraloperator 0.3.0 FNO/TFNO of ``model``'s architecture holding ``model``'s weights.

    ``dtype``: a torch dtype (default: float64 for float64 models, else float32).
    """
    torch = _torch()
    from neuralop.models import FNO as NopFNO
    from neuralop.models import TFNO as NopTFNO

    cls = NopTFNO if model.config["model"] == "tfno" else NopFNO
    theirs = cls(**neuralop_kwargs(model))
    if dtype is None:
        dtype = torch.float64 if model.dtype == np.float64 else torch.float32
    theirs = theirs.to(dtype)
    copy_to_neuralop(model, theirs)
    return theirs


def append_grid(x):
    """``x`` with our positional-embedding channels appended (NumPy in, NumPy out)."""
    grid = grid_channels(np, x.shape[2:], x.dtype)
    return np.concatenate([x, np.broadcast_to(grid[None], (x.shape[0],) + grid.shape)], axis=1)
