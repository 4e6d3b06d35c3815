"""Surface flux transport of Br on the sphere, after HipFT: domain-decomposed and ensemble-parallel."""

from .config import ConfigError, FluxTransportConfig, load_config
from .grid import KM2_S_TO_RS2_H, SphereGrid
from .model import FluxTransport

__all__ = ["FluxTransport", "FluxTransportConfig", "load_config", "ConfigError", "SphereGrid", "KM2_S_TO_RS2_H"]
