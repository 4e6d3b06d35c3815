"""comms: communication patterns on hpcore (decomposition, halo exchange, ring and hierarchical collectives)."""

__all__: list = []
