"""Honest detection of CUDA-aware MPI, with an environment override."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["CudaAwareness", "detect_cuda_aware", "ENV_VAR"]

ENV_VAR = "HPCORE_CUDA_AWARE"
"""Set to 1/0 (true/false, yes/no) to force CUDA-aware MPI on or off; read once."""


@dataclass(frozen=True)
class CudaAwareness:
    """Whether MPI can be handed device pointers, and how that was decided."""

    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available


def _mpi_libraries() -> list[str]:
    """Paths of loaded shared objects that look like the MPI library."""
    paths = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6:
                    path = parts[5]
                    name = os.path.basename(path)
                    if name.startswith(("libmpi", "libmpich", "libmpi_cray")) and ".so" in name and path not in paths:
                        paths.append(path)
    except OSError:
        pass
    return paths


def _query_library() -> CudaAwareness | None:
    """Ask the MPI library itself through its MPIX query functions, where it has them."""
    for path in _mpi_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        fn = getattr(lib, "MPIX_Query_cuda_support", None)  # Open MPI, MVAPICH2-GDR
        if fn is not None:
            fn.restype = ctypes.c_int
            ok = bool(fn())
            return CudaAwareness(ok, f"MPIX_Query_cuda_support() = {int(ok)} in {os.path.basename(path)}")
        fn = getattr(lib, "MPIX_GPU_query_support", None)  # MPICH >= 4
        if fn is not None:
            flag = ctypes.c_int(0)
            fn.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
            fn.restype = ctypes.c_int
            rc = fn(0, ctypes.byref(flag))  # 0 == MPIX_GPU_SUPPORT_CUDA
            if rc == 0:
                ok = bool(flag.value)
                return CudaAwareness(ok, f"MPIX_GPU_query_support(CUDA) = {int(ok)} in {os.path.basename(path)}")
    return None


def _parse_flag(value: str) -> bool | None:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    return None


@lru_cache(maxsize=1)
def detect_cuda_aware() -> CudaAwareness:
    """Decide once per process whether MPI accepts device buffers. Not collective.

    Order: ``HPCORE_CUDA_AWARE`` if set; else the MPI library's own query function
    (Open MPI's ``MPIX_Query_cuda_support``, MPICH's ``MPIX_GPU_query_support``);
    else Cray MPICH's ``MPICH_GPU_SUPPORT_ENABLED=1``; else False (the safe answer:
    device data is staged through host memory). Ranks may disagree only if their
    environments differ; each rank's choice is local and the wire format is the same.
    """
    env = os.environ.get(ENV_VAR)
    if env is not None:
        flag = _parse_flag(env)
        if flag is None:
            raise ValueError(f"{ENV_VAR}={env!r}: expected 1/0, true/false, yes/no or on/off")
        return CudaAwareness(flag, f"forced by {ENV_VAR}={env}")
    got = _query_library()
    if got is not None:
        return got
    if os.environ.get("MPICH_GPU_SUPPORT_ENABLED") == "1":
        return CudaAwareness(True, "Cray MPICH with MPICH_GPU_SUPPORT_ENABLED=1")
    return CudaAwareness(False, "no CUDA support reported by the MPI library; staging through host memory")
