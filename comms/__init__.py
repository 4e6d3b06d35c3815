"""comms: communication patterns on hpcore (decomposition, halo exchange, ring and hierarchical collectives)."""

from .decomposition import CartDecomposition
from .halo import HaloExchange, HaloHandle, HaloMismatchError

__all__ = ["CartDecomposition", "HaloExchange", "HaloHandle", "HaloMismatchError"]
