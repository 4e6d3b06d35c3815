"""solvers: science on comms and hpcore (flux transport; PDE surrogates and online training to come).

Importing does no MPI or GPU work.
"""

from .flux_transport import FluxTransport, FluxTransportConfig, load_config

__all__ = ["FluxTransport", "FluxTransportConfig", "load_config"]
