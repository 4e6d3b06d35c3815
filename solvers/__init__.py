"""solvers: science on comms and hpcore (flux transport, PDE surrogates, online training)."""

__all__: list = []
