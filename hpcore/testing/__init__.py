"""Test oracles for hpcore's users, tests and benchmarks; not part of the core layer.

``hpcore.testing.typezoo`` builds random MPI derived datatypes with a reference
pack (the oracle of the datatype, pack and transport tests and of the pack
benchmark). Nothing in ``hpcore`` imports this package.
"""

__all__ = ["typezoo"]
