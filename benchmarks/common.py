"""Timing, tables and run descriptions shared by the benchmarks (raw samples, medians, ratios)."""

from __future__ import annotations

import json
import math
import platform
import shlex
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = [
    "BenchmarkError",
    "interleaved_samples",
    "median",
    "Column",
    "format_table",
    "fmt",
    "ratio",
    "machine_lines",
    "command_line",
    "write_json",
]


class BenchmarkError(RuntimeError):
    """A benchmark found wrong results (it refuses to time them)."""


def interleaved_samples(ops: dict, repeat: int, warmup: int = 3,
                        sync: Optional[Callable[[], None]] = None,
                        timer: Optional[Callable] = None) -> dict:
    """Time every op in ``ops`` ``repeat`` times, round-robin, after ``warmup`` rounds.

    Not collective. Interleaving the ops (one sample of each per round) spreads slow
    drift of the machine over all of them alike. ``sync`` (e.g. a device stream's
    ``synchronize``) runs before and after each sample; ``timer(fn) -> seconds``
    replaces the host clock (device event timing).

    Returns
    -------
    dict
        ``name -> list of seconds`` (the raw samples, in order).
    """
    if repeat < 1:
        raise ValueError(f"repeat: expected >= 1, got {repeat}")
    for _ in range(max(0, warmup)):
        for fn in ops.values():
            fn()
    if sync:
        sync()
    samples: dict = {name: [] for name in ops}
    for _ in range(repeat):
        for name, fn in ops.items():
            if timer is not None:
                samples[name].append(timer(fn))
                continue
            if sync:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            samples[name].append(time.perf_counter() - t0)
    return samples


def median(values: Sequence[float]) -> float:
    """Median of ``values`` (NaN for none)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.median(values)) if values else float("nan")


def ratio(num: Optional[float], den: Optional[float]) -> float:
    """``num / den``, NaN when either is missing or ``den`` is 0."""
    if num is None or den is None or den == 0 or math.isnan(num) or math.isnan(den):
        return float("nan")
    return num / den


def fmt(value, spec: str) -> str:
    """Format ``value`` with ``spec``; ``-`` for None/NaN, strings as they are."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return format(value, spec)


@dataclass
class Column:
    """A table column: header text, format spec of its values, alignment."""

    header: str
    spec: str = ""
    left: bool = False
    width: int = field(default=0)


def format_table(columns: Sequence[Column], rows: Sequence[Sequence], markdown: bool = False) -> str:
    """Render ``rows`` under ``columns`` as fixed-width text (or a Markdown table)."""
    cells = [[fmt(v, c.spec) for v, c in zip(row, columns)] for row in rows]
    widths = [max([len(c.header)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values):
        parts = [v.ljust(w) if c.left else v.rjust(w) for v, w, c in zip(values, widths, columns)]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts)

    out = [line([c.header for c in columns])]
    if markdown:
        out.append("|" + "|".join(":" + "-" * (w + 1) if c.left else "-" * (w + 1) + ":"
                                  for w, c in zip(widths, columns)) + "|")
    else:
        out.append("  ".join("-" * w for w in widths))
    out += [line(r) for r in cells]
    return "\n".join(out)


def machine_lines(MPI=None) -> list:
    """One-line facts about this run: host, CPUs, Python, NumPy, mpi4py, MPI library."""
    import os

    import mpi4py

    lines = [
        f"host: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), {platform.platform()}",
        f"python {platform.python_version()}, numpy {np.__version__}, mpi4py {mpi4py.__version__}",
    ]
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        lines.append(f"load average at start (1, 5, 15 min): {load}")
    except OSError:  # pragma: no cover - not on every platform
        pass
    if MPI is not None:
        lib = MPI.Get_library_version().strip().splitlines()
        lines.append(f"MPI: {lib[0].strip() if lib else '?'} (standard {'.'.join(map(str, MPI.Get_version()))})")
    try:
        import hpcore

        lines.append(f"hpcore {hpcore.__version__} from {os.path.dirname(hpcore.__file__)}")
    except ImportError:  # pragma: no cover - the benchmarks need hpcore anyway
        pass
    return lines


def command_line(subcommand: str, options: Sequence[tuple], nprocs: int = 1, markdown: bool = False) -> str:
    """The command that reproduces this run, every option spelled out.

    ``options``: ``(flag, value)`` pairs; value True is a bare flag, False/None drops it.
    """
    words = []
    if nprocs > 1:
        words += ["mpiexec", "-n", str(nprocs)]
    words += ["python", "-m", "benchmarks"] + (["--markdown"] if markdown else []) + [subcommand]
    for flag, value in options:
        if value is True:
            words.append(flag)
        elif value is not None and value is not False:
            words += [flag, str(value)]
    return "PYTHONPATH=. " + " ".join(shlex.quote(w) for w in words) + "   # from the repository root"


def write_json(path: str, data: dict) -> None:
    """Write the raw samples and settings of a run as JSON. Not collective."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=_jsonable)
        f.write("\n")


def _jsonable(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
