"""``mpi4py.MPI`` imported on first use and cached.

Importing hpcore never initializes MPI; hot paths call :func:`mpi` instead of a
function-level ``from mpi4py import MPI``, which costs ~1.5 us per call (Python
resolves the package's fromlist each time).
"""

from __future__ import annotations

__all__ = ["mpi"]

_MPI = None


def mpi():
    """The ``mpi4py.MPI`` module (imports it, and so initializes MPI, on the first call)."""
    global _MPI
    if _MPI is None:
        from mpi4py import MPI

        _MPI = MPI
    return _MPI
