"""comms: communication patterns on hpcore.

Decomposition and halo exchange, ring collectives and ring attention, hierarchical
collectives, sharded training state and their cost model. Importing does no MPI or
GPU work; every entry point takes the caller's communicator.
"""

from .costmodel import CostModel, LevelCost
from .decomposition import CartDecomposition
from .halo import HaloExchange, HaloHandle, HaloMismatchError
from .hierarchy import Hierarchy, HierarchyMismatchError, Traffic
from .levels import Layout, Level
from .link_placement import Placement, detect_link_class, identity_placement, link_aware_order, link_classes, reorder
from .ring import (
                   RingMismatchError,
                   RingRequest,
                   chunk_elements,
                   ring_allgather,
                   ring_allgather_start,
                   ring_allreduce,
                   ring_allreduce_bucket,
                   ring_allreduce_bucket_start,
                   ring_allreduce_start,
                   ring_blocks,
                   ring_reduce_scatter,
                   ring_reduce_scatter_start,
)
from .ring_attention import RingAttention, attention_reference, sequence_positions, zigzag_merge, zigzag_split
from .sharded import SGD, Adam, ShardedState

__all__ = [
    "CartDecomposition", "HaloExchange", "HaloHandle", "HaloMismatchError",
    "ring_allreduce", "ring_allreduce_start", "ring_reduce_scatter", "ring_reduce_scatter_start",
    "ring_allgather", "ring_allgather_start", "ring_allreduce_bucket", "ring_allreduce_bucket_start",
    "ring_blocks", "chunk_elements", "RingRequest", "RingMismatchError",
    "RingAttention", "zigzag_split", "zigzag_merge", "sequence_positions", "attention_reference",
    "Hierarchy", "HierarchyMismatchError", "Traffic", "Layout", "Level",
    "CostModel", "LevelCost",
    "ShardedState", "SGD", "Adam",
    "link_aware_order", "identity_placement", "link_classes", "detect_link_class", "reorder", "Placement",
]
