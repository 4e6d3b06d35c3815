"""Fill the performance model: ``python -m hpcore.measure`` (or under ``mpiexec -n 2`` for messages)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from . import perfmodel
from .arrays import cupy_or_none
from .pack import pack

__all__ = ["measure_pack", "measure_messages", "measure_staging", "measure_overhead", "main"]

RUNS = (1, 4, 8, 16, 64, 256, 4096)


def _median_time(fn, repeat: int, sync=None) -> float:
    fn()
    if sync:
        sync()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def _vector_type(run: int, nbytes: int):
    """A vector of runs of ``run`` bytes every ``2 run`` bytes, in the widest typed word
    (MPI engines pack typed words much faster than MPI.BYTE, and user types are typed)."""
    from mpi4py import MPI

    word, unit = next((w, u) for w, u in ((8, MPI.UINT64_T), (4, MPI.UINT32_T), (2, MPI.UINT16_T), (1, MPI.BYTE))
                      if run % w == 0)
    count = max(1, nbytes // run)
    t = unit.Create_vector(count, run // word, 2 * run // word).Commit()
    return t, count * run, (2 * count) * run


def measure_overhead(repeat: int = 200) -> float:
    """Hpcore's fixed cost [s] of one pack call (8 bytes of a strided type). Not collective."""
    from mpi4py import MPI

    t = MPI.DOUBLE.Create_vector(1, 1, 2).Commit()
    try:
        buf, out = np.zeros(2), np.empty(8, np.uint8)
        return _median_time(lambda: pack(buf, t, 1, out=out), repeat)
    finally:
        t.Free()


def measure_pack(nbytes: int = 1 << 20, repeat: int = 10, device: bool = False) -> dict:
    """Pack bandwidth [bytes/s] by run length for hpcore (host or device) and MPI's own Pack.

    Not collective. Returns ``{"host"|"device": {run: bw}, "mpi": {run: bw}}``.
    """
    from mpi4py import MPI

    cp = cupy_or_none() if device else None
    out: dict = {"host": {}, "mpi": {}}
    if cp is not None:
        out["device"] = {}
    for run in RUNS:
        t, packed, span = _vector_type(run, nbytes)
        try:
            buf = np.random.default_rng(run).integers(0, 256, span, dtype=np.uint8)
            dst = np.empty(packed, np.uint8)
            out["host"][run] = packed / _median_time(lambda: pack(buf, t, 1, out=dst), repeat)
            mdst = bytearray(packed)
            out["mpi"][run] = packed / _median_time(lambda: t.Pack(buf, mdst, 0, MPI.COMM_SELF), repeat)
            if cp is not None:
                dbuf = cp.asarray(buf)
                ddst = cp.empty(packed, cp.uint8)
                sync = cp.cuda.get_current_stream().synchronize
                out["device"][run] = packed / _median_time(lambda: pack(dbuf, t, 1, out=ddst), repeat, sync)
        finally:
            t.Free()
    return out


def measure_messages(comm, sizes=(1, 1 << 10, 1 << 16, 1 << 20, 1 << 22), repeat: int = 20,
                     device: bool = False) -> dict:
    """One-way time [s] of contiguous messages between ranks 0 and 1 (ping-pong / 2).

    Collective on ``comm`` (needs at least 2 ranks; ranks >= 2 idle). Returns
    ``{"host_pack": {nbytes: s}, "mpi_typed": {nbytes: s}}`` (the latter: ``nbytes``
    of doubles sent by MPI as a stride-2 vector type) and, with a CUDA-aware device
    run, ``{"device_pack": {...}}``.
    """
    from mpi4py import MPI

    cp = cupy_or_none() if device else None
    result: dict = {"host_pack": {}, "mpi_typed": {}}
    if cp is not None:
        result["device_pack"] = {}
    for kind in result:
        for n in sizes:
            typed = None
            if kind == "device_pack":
                buf = cp.zeros(n, cp.uint8)
            elif kind == "mpi_typed":
                n = max(8, n - n % 8)
                buf = np.zeros(2 * n, np.uint8)
                typed = MPI.DOUBLE.Create_vector(n // 8, 1, 2).Commit()
            else:
                buf = np.zeros(n, np.uint8)
            spec = [buf, 1, typed] if typed is not None else [buf, n, MPI.BYTE]
            try:
                result[kind][n] = _ping_pong(comm, spec, repeat)
            finally:
                if typed is not None:
                    typed.Free()
    return result


def _ping_pong(comm, spec, repeat: int) -> float:
    """One-way time [s] of ``spec`` between ranks 0 and 1, the same on every rank."""
    rank = comm.Get_rank()
    for it in range(repeat + 3):  # 3 warm-up round trips, then timed ones
        if it == 3:
            comm.Barrier()
            t0 = time.perf_counter()
        if rank == 0:
            comm.Send(spec, 1, 7)
            comm.Recv(spec, 1, 7)
        elif rank == 1:
            comm.Recv(spec, 0, 7)
            comm.Send(spec, 0, 7)
    return comm.bcast((time.perf_counter() - t0) / (2 * repeat), root=0)


def measure_staging(nbytes=(1 << 10, 1 << 20, 1 << 24), repeat: int = 10) -> dict | None:
    """Latency [s] and bandwidth [bytes/s] of pinned device-to-host copies, or None without a GPU."""
    cp = cupy_or_none()
    if cp is None:
        return None
    times = []
    for n in nbytes:
        d = cp.zeros(n, cp.uint8)
        h = np.frombuffer(cp.cuda.alloc_pinned_memory(n), np.uint8, count=n)
        s = cp.cuda.get_current_stream()
        times.append(_median_time(lambda: d.get(out=h, stream=s), repeat, s.synchronize))
    slope, intercept = np.polyfit(np.asarray(nbytes, float), np.asarray(times), 1)
    return {"latency_s": max(float(intercept), 1e-7), "bandwidth": 1.0 / max(float(slope), 1e-15)}


def main(argv=None) -> int:
    """Entry point of ``python -m hpcore.measure`` (``hpcore-measure``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m hpcore.measure", description=__doc__)
    parser.add_argument("--out", default=None, help="JSON path (default: hpcore.perfmodel.default_path())")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--device", action="store_true", help="also measure the GPU path (needs CuPy)")
    args = parser.parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    model = perfmodel.PerfModel(source="measured")
    if comm.Get_rank() == 0:
        model.pack_bw = measure_pack(repeat=args.repeat, device=args.device)
        model.staging = measure_staging() or {}
        model.overhead_s = measure_overhead()
    if comm.Get_size() >= 2:
        model.message = measure_messages(comm, repeat=args.repeat * 2, device=args.device)
    if comm.Get_rank() == 0:
        path = model.save(args.out)
        print(f"hpcore.measure: wrote {path}")
        print(f"{'run [B]':>8} {'hpcore GB/s':>12} {'MPI_Pack GB/s':>14} {'ratio':>6}")
        for run in RUNS:
            h, m = model.pack_bw["host"][run], model.pack_bw["mpi"][run]
            print(f"{run:8d} {h / 1e9:12.2f} {m / 1e9:14.2f} {h / m:6.2f}")
        for meth, table in model.message.items():
            for n, s in table.items():
                print(f"message {meth:12s} {n:9d} B  {s * 1e6:9.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
