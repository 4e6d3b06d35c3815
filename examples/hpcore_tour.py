"""A tour of hpcore: topology, CUDA-awareness, canonical datatypes, packing vs MPI, and a verified exchange.

Run with ``mpiexec -n 2 python examples/hpcore_tour.py`` (any rank count >= 1).
Rank 0 prints; every check is verified and agreed across ranks.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from mpi4py import MPI

import hpcore
from hpcore.cuda_aware import detect_cuda_aware
from hpcore.testing import typezoo
from hpcore.topology import Topology, describe


def _median_s(fn, repeat):
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def pack_table(target_nbytes: int, repeat: int) -> list[str]:
    """Pack every DDTBench pattern with hpcore and with MPI; check bytes; return table lines."""
    lines = [
        f"{'pattern':<16} {'packed KiB':>10} {'pieces':>6} {'runs':>7} {'hpcore GB/s':>11} {'MPI GB/s':>9} {'ratio':>6}"
    ]
    patterns = typezoo.ddtbench_patterns(target_nbytes=target_nbytes)
    ratios = []
    try:
        for name, p in patterns.items():
            buf = np.random.default_rng(0).integers(0, 256, p.buffer_nbytes, dtype=np.uint8)
            ref = typezoo.mpi_pack(buf, p.datatype, p.count)
            out = np.empty(ref.nbytes, np.uint8)
            got = hpcore.pack(buf, p.datatype, p.count, out=out)
            if not np.array_equal(got, ref):
                raise RuntimeError(f"{name}: hpcore.pack differs from MPI_Pack")
            whole = p.datatype.Create_contiguous(p.count).Commit()
            mem = MPI.buffer.fromaddress(buf.ctypes.data, max(whole.Get_extent()[1], 1))
            mout = bytearray(ref.nbytes)
            try:
                t_mpi = _median_s(lambda: whole.Pack(mem, mout, 0, MPI.COMM_SELF), repeat)
            finally:
                whole.Free()
            t_hp = _median_s(lambda: hpcore.pack(buf, p.datatype, p.count, out=out), repeat)
            ctype = hpcore.canonicalize(p.datatype)
            ratios.append(t_mpi / t_hp)
            lines.append(
                f"{name:<16} {ref.nbytes / 1024:10.1f} {len(ctype.pieces):6d} {ctype.nblocks * p.count:7d} "
                f"{ref.nbytes / t_hp / 1e9:11.2f} {ref.nbytes / t_mpi / 1e9:9.2f} {t_mpi / t_hp:6.2f}"
            )
    finally:
        for p in patterns.values():
            p.free()
    lines.append(f"median ratio hpcore/MPI: {np.median(ratios):.2f}   min: {min(ratios):.2f}   (all bytes identical)")
    return lines


def exchange_check(comm) -> str:
    """Each rank sends a 3-D subarray face to the next rank through hpcore.Comm; verify."""
    c = hpcore.Comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    shape = (34, 35, 36)
    face = MPI.DOUBLE.Create_subarray(shape, [1, 35, 36], [32, 0, 0]).Commit()
    ghost = MPI.DOUBLE.Create_subarray(shape, [1, 35, 36], [0, 0, 0]).Commit()
    try:
        a = np.random.default_rng(rank).standard_normal(shape)
        c.sendrecv(a, (rank + 1) % size, a, (rank - 1) % size, senddatatype=face, recvdatatype=ghost)
        prev = np.random.default_rng((rank - 1) % size).standard_normal(shape)
        ok = bool(np.array_equal(a[0], prev[32]))
    finally:
        face.Free()
        ghost.Free()
    all_ok = comm.allreduce(ok, op=MPI.LAND)
    used = ", ".join(f"{k}={v}" for k, v in c.counts.items() if v)
    return f"ring exchange of a 35x36 face of 34x35x36 doubles: {'OK' if all_ok else 'MISMATCH'} ({used})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-kib", type=int, default=256, help="packed size per pattern [KiB]")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    topo = Topology(comm)
    lines = [
        f"hpcore {hpcore.__version__} on {comm.Get_size()} rank(s); {MPI.Get_library_version().splitlines()[0]}",
        f"topology: {describe(topo)}",
        f"CUDA-aware MPI: {detect_cuda_aware()}",
    ]
    check = exchange_check(comm)
    if comm.Get_rank() == 0:
        lines += ["", "DDTBench patterns, host pack vs MPI_Pack (rank 0):"]
        lines += pack_table(args.target_kib * 1024, args.repeat)
        lines += ["", check]
        print("\n".join(lines), flush=True)
    topo.free()
    return 0 if "OK" in check else 1


if __name__ == "__main__":
    raise SystemExit(main())
