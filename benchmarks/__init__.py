"""hpcore benchmarks: ``python -m benchmarks pack`` and ``mpiexec -n 2 python -m benchmarks pingpong``."""

__all__: list = []
