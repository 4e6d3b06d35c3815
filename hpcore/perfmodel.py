"""Measured performance model: pack bandwidth and message times per method, stored as JSON."""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datatype import TypeCache

__all__ = ["PerfModel", "default_path", "load", "mean_run", "METHODS"]

log = logging.getLogger(__name__)

METHODS = ("mpi", "host_pack", "device_pack", "staged")
"""Transport methods: MPI's own datatype path; host pack + send; device pack +
CUDA-aware send; device pack staged through pinned host memory."""

# Safe defaults [bytes/s] by run length [bytes], used when nothing was measured.
# They are deliberately conservative and only decide between methods.
_DEFAULT_PACK_BW = {
    "host": {1: 0.3e9, 4: 1.0e9, 8: 2.0e9, 16: 4.0e9, 64: 8.0e9, 256: 12.0e9, 4096: 15.0e9},
    "device": {1: 20e9, 4: 80e9, 8: 150e9, 16: 300e9, 64: 600e9, 256: 800e9, 4096: 1000e9},
    "mpi": {1: 0.3e9, 4: 1.0e9, 8: 2.0e9, 16: 4.0e9, 64: 8.0e9, 256: 12.0e9, 4096: 15.0e9},
}
_DEFAULT_LINK = {"latency_s": 2e-6, "bandwidth": 5e9}  # contiguous messages
_DEFAULT_D2H = {"latency_s": 10e-6, "bandwidth": 20e9}  # pinned staging copy
# What MPI's own derived-datatype send adds beyond packing plus a contiguous message,
# when not measured: nothing up to the eager size, then a pipeline of small pack
# chunks. MPICH 5 over shared memory measured 0.42-0.45 GB/s for it from 16 KiB to
# 4 MiB (a 16 KiB vector of doubles took 50 us one-way, a contiguous one 7 us).
_DEFAULT_TYPED_EXTRA = {"eager_bytes": 8192, "bandwidth": 0.45e9}


def default_path() -> Path:
    """Where the model lives: ``$HPCORE_CACHE_DIR`` or ``~/.cache/hpcore``, one file per host."""
    root = os.environ.get("HPCORE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "hpcore")
    return Path(root) / f"perfmodel-{socket.gethostname()}.json"


_curves: dict = {}


def _interp_loglog(table: dict, x: float) -> float:
    """Piecewise-linear interpolation in log-log space, clamped at the ends."""
    got = _curves.get(id(table))
    if got is None or got[0] is not table or got[3] != len(table):
        keys = sorted(table, key=float)
        xs = np.log(np.array([float(k) for k in keys]))
        ys = np.log(np.array([float(table[k]) for k in keys]))
        got = _curves[id(table)] = (table, xs, ys, len(table))
    _, xs, ys, _ = got
    lx = np.log(max(float(x), 1e-300))
    return float(np.exp(np.interp(lx, xs, ys)))


@dataclass
class PerfModel:
    """Pack bandwidths by run length and message time curves by method.

    ``pack_bw[side][run] -> bytes/s`` for side in "host", "device" (ours) and "mpi"
    (MPI's own datatype engine, host); ``message[method][nbytes] -> seconds`` one-way
    for a contiguous message of that method; ``staging`` latency/bandwidth of a
    pinned host<->device copy; ``overhead_s`` hpcore's fixed cost per pack or unpack
    call [s]. Missing entries fall back to safe defaults.
    """

    pack_bw: dict = field(default_factory=dict)
    message: dict = field(default_factory=dict)
    staging: dict = field(default_factory=dict)
    overhead_s: float = 5e-6
    source: str = "defaults"

    # ----------------------------------------------------------------- queries
    def pack_time(self, nbytes: int, run: float, side: str = "host") -> float:
        """Predicted time [s] to pack ``nbytes`` in runs of ``run`` bytes on ``side``."""
        if nbytes <= 0:
            return 0.0
        table = self.pack_bw.get(side) or _DEFAULT_PACK_BW[side]
        return nbytes / _interp_loglog(table, max(run, 1.0))

    def message_time(self, method: str, nbytes: int) -> float:
        """Predicted one-way time [s] of a contiguous ``nbytes`` message sent by ``method``."""
        table = self.message.get(method) or self.message.get("host_pack")
        if table:
            return _interp_loglog(table, max(nbytes, 1))
        return _DEFAULT_LINK["latency_s"] + nbytes / _DEFAULT_LINK["bandwidth"]

    def typed_extra(self, nbytes: int) -> float:
        """Extra one-way time [s] MPI's derived-datatype path adds to a non-contiguous
        message of ``nbytes`` beyond its own pack/unpack and a contiguous message.

        From ``message["mpi_typed"]`` (one-way times of a vector of doubles, stride 2,
        measured by :mod:`hpcore.measure`) when present, else the defaults."""
        table = self.message.get("mpi_typed")
        if table:
            n = max(nbytes, 1)
            rest = self.message_time("host_pack", n) + 2 * self.pack_time(n, 8.0, "mpi")
            return max(0.0, _interp_loglog(table, n) - rest)
        d = _DEFAULT_TYPED_EXTRA
        return nbytes / d["bandwidth"] if nbytes > d["eager_bytes"] else 0.0

    def staging_time(self, nbytes: int) -> float:
        """Predicted time [s] of one pinned host<->device copy of ``nbytes``."""
        s = self.staging or _DEFAULT_D2H
        return s["latency_s"] + nbytes / s["bandwidth"]

    def predict(self, method: str, nbytes: int, run: float, contiguous: bool = False) -> float:
        """Predicted one-way time [s] of sending one non-contiguous message by ``method``.

        ``nbytes`` packed bytes in runs of ``run`` bytes on average. The receiver's
        unpack costs the same as the pack and is counted once more.
        """
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        wire = self.message_time("host_pack" if method in ("mpi", "host_pack", "staged") else "device_pack", nbytes)
        if contiguous:
            return wire
        if method == "mpi":
            return wire + 2 * self.pack_time(nbytes, run, "mpi") + self.typed_extra(nbytes)
        fixed = 2 * self.overhead_s
        if method == "host_pack":
            return wire + fixed + 2 * self.pack_time(nbytes, run, "host")
        if method == "device_pack":
            return wire + fixed + 2 * self.pack_time(nbytes, run, "device")
        return wire + fixed + 2 * (self.pack_time(nbytes, run, "device") + self.staging_time(nbytes))

    # ----------------------------------------------------------------- storage
    def to_json(self) -> dict:
        """The model as JSON-able data (the cache file's content; :meth:`from_json` reads it). Not collective."""
        return {"version": 1, "pack_bw": self.pack_bw, "message": self.message, "staging": self.staging,
                "overhead_s": self.overhead_s}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the model as JSON (atomically). Not collective: call on one rank."""
        path = Path(path) if path is not None else default_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))
        os.replace(tmp, path)
        return path

    @classmethod
    def from_json(cls, data: dict, source: str = "json") -> "PerfModel":
        """A model from :meth:`to_json`'s data; ``source`` names where it came from. Not collective."""
        if data.get("version") != 1:
            raise ValueError(f"perfmodel: unsupported version {data.get('version')!r}")

        def keyed(d):  # JSON keys are strings; tables are keyed by numbers
            return {k: {float(x): float(y) for x, y in v.items()} for k, v in d.items()}

        return cls(keyed(data.get("pack_bw", {})), keyed(data.get("message", {})),
                   {k: float(v) for k, v in data.get("staging", {}).items()},
                   float(data.get("overhead_s", cls.overhead_s)), source)


def load(path: str | os.PathLike | None = None) -> PerfModel:
    """The stored model, or the safe defaults when none was measured (or it is unreadable).

    Not collective. A damaged file is reported with ``logging`` and ignored.
    """
    path = Path(path) if path is not None else default_path()
    try:
        data = json.loads(path.read_text())
        return PerfModel.from_json(data, source=str(path))
    except FileNotFoundError:
        return PerfModel()
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("hpcore.perfmodel: ignoring unreadable %s (%s); using defaults", path, exc)
        return PerfModel()


def mean_run(ctype) -> float:
    """Mean contiguous run length [bytes] of a canonical type (its size over its runs)."""
    got = _MEAN_RUN.get(ctype, None)
    if got is None:
        n = ctype.nblocks
        got = ctype.size / n if n else float(ctype.size or 1)
        _MEAN_RUN.put(ctype, None, got)
    return got


_MEAN_RUN = TypeCache()

