"""Datasets for training: in-memory arrays with seeded batches, normalizers, HDF5 and neuraloperator ``.pt`` files.

Arrays are ``(samples, channels, *spatial)``. :class:`ArrayDataset` hands out the sample
indices of each batch from a seeded permutation per epoch, the same on every rank, so a
data-parallel trainer only has to take its shard of each batch. Files:

* our HDF5 datasets (``inputs``, ``outputs`` of shape ``(n, *spatial)`` or ``(n, c, *spatial)``,
  written by :func:`solvers.surrogates.darcy.generate_darcy` or :func:`write_dataset`);
* neuraloperator's small Darcy files (``darcy_train_16.pt``, ``darcy_test_16.pt``,
  ``darcy_test_32.pt``: dicts of ``x`` (bool coefficient mask) and ``y`` (float32 solution)),
  read with torch when it is installed (``pip install hpcore[torch]``); found in an installed
  ``neuralop`` package or extracted from a neuraloperator wheel.
"""

from __future__ import annotations

import os
import zipfile
from typing import Optional

import numpy as np

from hpcore.arrays import array_module

__all__ = ["ArrayDataset", "GaussianNormalizer", "load_h5", "write_dataset", "load_darcy_pt", "neuralop_file",
           "NEURALOP_FILES"]

NEURALOP_FILES = ("darcy_train_16", "darcy_test_16", "darcy_test_32")


class ArrayDataset:
    """Input/output pairs held in memory. Not collective.

    Parameters
    ----------
    x, y : arrays ``(n, channels, *spatial)``; with ``add_channel=True``, ``(n, *spatial)`` arrays
        that get a channel axis of length 1
    dtype : the floating dtype to store (default float64)
    """

    def __init__(self, x, y, *, dtype="float64", add_channel: bool = False):
        x = np.asarray(x)
        y = np.asarray(y)
        if add_channel:
            x, y = x[:, None], y[:, None]
        if x.ndim < 2 or y.ndim < 2:
            raise ValueError(f"x, y: expected (samples, channels, *spatial) arrays, got shapes {x.shape}, {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x, y: different numbers of samples ({x.shape[0]} and {y.shape[0]})")
        if x.shape[0] < 1:
            raise ValueError("x, y: the dataset is empty")
        if np.dtype(dtype).kind != "f":
            raise ValueError(f"dtype: expected a floating dtype, got {dtype!r}")
        self.x = np.ascontiguousarray(x, dtype=dtype)
        self.y = np.ascontiguousarray(y, dtype=dtype)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def spatial(self) -> tuple:
        """Grid shape of one sample."""
        return tuple(self.x.shape[2:])

    def batches(self, batch_size: int, *, epoch: int = 0, seed: int = 0, shuffle: bool = True,
                drop_last: bool = False) -> list:
        """Sample indices of each batch of one epoch: a permutation from ``default_rng((seed,
        epoch))`` (the same on every rank), cut into batches of ``batch_size`` (the last one
        shorter unless ``drop_last``)."""
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        n = len(self)
        order = np.random.default_rng((int(seed), int(epoch))).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last else n
        return [order[i:i + batch_size] for i in range(0, stop, batch_size)]

    def subset(self, index) -> "ArrayDataset":
        """The samples ``index`` (a slice or index array) as a new dataset."""
        return ArrayDataset(self.x[index], self.y[index], dtype=self.x.dtype)

    def astype(self, dtype) -> "ArrayDataset":
        """A copy stored as ``dtype``."""
        return ArrayDataset(self.x, self.y, dtype=dtype)

    def __repr__(self) -> str:
        return f"ArrayDataset(n={len(self)}, x={self.x.shape[1:]}, y={self.y.shape[1:]}, dtype={self.x.dtype})"


class GaussianNormalizer:
    """``(v - mean) / (std + eps)`` with statistics of a training set (neuraloperator's
    ``UnitGaussianNormalizer``). Not collective.

    ``per_point=False`` (neuraloperator's "channel-wise" for one channel): one mean and std per
    channel over samples and space; ``per_point=True`` ("pixel-wise"): per channel and point.
    """

    def __init__(self, mean, std, eps: float = 1e-7):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.eps = float(eps)

    @classmethod
    def fit(cls, v, per_point: bool = False, eps: float = 1e-7) -> "GaussianNormalizer":
        """Statistics of ``v`` ``(samples, channels, *spatial)``."""
        v = np.asarray(v, dtype=np.float64)
        axes = (0,) if per_point else (0,) + tuple(range(2, v.ndim))
        return cls(v.mean(axis=axes, keepdims=True), v.std(axis=axes, keepdims=True), eps)

    def _stats(self, v):
        xp = array_module(v)
        mean, scale = self.mean, self.std + self.eps
        if mean.ndim and mean.shape[2:] != tuple(v.shape[2:]) and any(s > 1 for s in mean.shape[2:]):
            raise ValueError(f"GaussianNormalizer: per-point statistics of shape {mean.shape[1:]} "
                             f"do not fit data of shape {tuple(v.shape[1:])}")
        return xp.asarray(mean, dtype=v.dtype), xp.asarray(scale, dtype=v.dtype)

    def encode(self, v):
        """``(v - mean) / (std + eps)``."""
        mean, scale = self._stats(v)
        return (v - mean) / scale

    def decode(self, v):
        """``v (std + eps) + mean``."""
        mean, scale = self._stats(v)
        return v * scale + mean

    def decode_grad(self, g):
        """Gradient through :meth:`decode` (``dL/dv = dL/dout * scale``)."""
        _, scale = self._stats(g)
        return g * scale

    def state(self) -> dict:
        """``mean``, ``std``, ``eps`` (for checkpoints)."""
        return {"mean": self.mean, "std": self.std, "eps": self.eps}


def write_dataset(path: str, inputs, outputs, **attrs) -> None:
    """Write ``inputs``/``outputs`` and attributes to HDF5. Not collective.

    Arrays ``(n, *spatial)``, or ``(n, channels, *spatial)`` with ``channel_axis=True`` in ``attrs``.
    """
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("inputs", data=np.asarray(inputs))
        f.create_dataset("outputs", data=np.asarray(outputs))
        f.attrs.update({"version": 1, **attrs})


def load_h5(path: str, n: Optional[int] = None, start: int = 0, *, dtype="float64") -> ArrayDataset:
    """Samples ``[start, start + n)`` of an HDF5 dataset as an :class:`ArrayDataset`. Not collective.

    ``inputs``/``outputs`` of shape ``(n, *spatial)`` get a channel axis.
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"path: cannot open HDF5 dataset {path!r}: {exc}") from None
    with f:
        for key in ("inputs", "outputs"):
            if key not in f:
                raise ValueError(f"{path}: no {key!r} dataset (has {sorted(f)})")
        total = f["inputs"].shape[0]
        stop = total if n is None else start + int(n)
        if not 0 <= start < stop <= total:
            raise ValueError(f"{path}: asked for samples [{start}, {stop}), the file has {total}")
        x, y = f["inputs"][start:stop], f["outputs"][start:stop]
        channel_axis = bool(f.attrs.get("channel_axis", False))
    return ArrayDataset(x, y, dtype=dtype, add_channel=not channel_axis)


def neuralop_file(name: str, *, wheel: Optional[str] = None, cache_dir: Optional[str] = None) -> str:
    """Path of neuraloperator's bundled ``<name>.pt`` (one of :data:`NEURALOP_FILES`). Not collective.

    Looks in an installed ``neuralop`` package, then in ``wheel`` (a neuraloperator 0.3.0 wheel,
    or the environment variable ``NEURALOP_WHEEL``), extracting the file to ``cache_dir``
    (default ``~/.cache/hpcore/neuralop``). FileNotFoundError names what was tried.
    """
    if name.endswith(".pt"):
        name = name[:-3]
    if name not in NEURALOP_FILES + ("burgers_lowres",):
        raise ValueError(f"name: expected one of {NEURALOP_FILES}, got {name!r}")
    tried = []
    import importlib.util

    spec = importlib.util.find_spec("neuralop")
    if spec is not None and spec.submodule_search_locations:
        cand = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", f"{name}.pt")
        tried.append(cand)
        if os.path.exists(cand):
            return cand
    wheel = wheel or os.environ.get("NEURALOP_WHEEL")
    if wheel:
        cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "hpcore", "neuralop")
        target = os.path.join(cache_dir, f"{name}.pt")
        tried.append(f"{wheel}!neuralop/datasets/data/{name}.pt")
        if os.path.exists(target):
            return target
        try:
            with zipfile.ZipFile(wheel) as z:
                data = z.read(f"neuralop/datasets/data/{name}.pt")
        except (OSError, KeyError, zipfile.BadZipFile):
            data = None
        if data is not None:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{target}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
            return target
    raise FileNotFoundError(f"neuraloperator's {name}.pt not found (tried {tried or 'no neuralop package'}); "
                            "install neuraloperator 0.3.0 or pass wheel=/set NEURALOP_WHEEL to its wheel")


def load_darcy_pt(path: str, n: Optional[int] = None, *, dtype="float64") -> ArrayDataset:
    """Neuraloperator's Darcy ``.pt`` file as an :class:`ArrayDataset` of ``(n, 1, R, R)`` arrays.

    Not collective. Needs torch (ImportError naming the extra otherwise). ``x`` is the
    coefficient mask as 0.0/1.0 (neuraloperator casts it to float the same way), ``y`` the
    solution; the first ``n`` samples (all when None).
    """
    try:
        import torch
    except ImportError:
        raise ImportError("load_darcy_pt needs torch to read .pt files (pip install hpcore[torch])") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"path: cannot read {path!r} with torch.load: {exc}") from None
    if not isinstance(data, dict) or "x" not in data or "y" not in data:
        raise ValueError(f"{path}: expected a dict with 'x' and 'y' tensors, got {type(data).__name__}")
    x = data["x"].to(torch.float64).numpy()
    y = data["y"].to(torch.float64).numpy()
    if n is not None:
        if not 1 <= n <= x.shape[0]:
            raise ValueError(f"n: expected 1 <= n <= {x.shape[0]} for {path}, got {n}")
        x, y = x[:n], y[:n]
    return ArrayDataset(x, y, dtype=dtype, add_channel=True)
