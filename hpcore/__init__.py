"""hpcore: the CUDA-aware MPI layer (canonical datatypes, packing, transport, topology).

Also the boundary every entry point of hpcore, comms and solvers goes through
(:mod:`hpcore.boundary`: ``as_comm``, ``agree``, ``as_op``, ``MismatchError``).
"""

from .arrays import array_module
from .boundary import agree, as_comm, as_op
from .datatype import BlockSet, CanonicalType, StridedBlock, canonicalize, from_view, to_mpi
from .errors import HpcoreError, MismatchError
from .pack import pack, packed_nbytes, plan, unpack
from .transport import Comm, Request

__all__ = [
    "array_module",
    "BlockSet",
    "CanonicalType",
    "StridedBlock",
    "canonicalize",
    "from_view",
    "to_mpi",
    "HpcoreError",
    "MismatchError",
    "agree",
    "as_comm",
    "as_op",
    "pack",
    "packed_nbytes",
    "plan",
    "unpack",
    "Comm",
    "Request",
]

__version__ = "0.1.0"
