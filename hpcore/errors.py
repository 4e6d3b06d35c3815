"""The error family of hpcore: one base class, the cross-rank mismatch, and the rank prefix of messages."""

from __future__ import annotations

__all__ = ["HpcoreError", "MismatchError", "rank_prefix"]


class HpcoreError(RuntimeError):
    """An error detected by hpcore that is not a bad argument (e.g. an MPI-level mismatch)."""


class MismatchError(HpcoreError):
    """Ranks called a collective with arguments that must match but do not (raised on every rank).

    Raised by :func:`hpcore.agree`; the message names the operation, each differing
    argument and the ranks holding each value. ``comms.RingMismatchError``,
    ``comms.HaloMismatchError`` and ``comms.HierarchyMismatchError`` are subclasses; a
    subclass's ``hint`` (what every rank must pass) ends the message.
    """

    hint: str = ""


def rank_prefix(comm) -> str:
    """Return ``"rank r/size: "`` for ``comm`` (``""`` when ``comm`` is None). Not collective."""
    if comm is None:
        return ""
    return f"rank {comm.Get_rank()}/{comm.Get_size()}: "


def __getattr__(name):
    # agree and check live in hpcore.boundary (which imports this module); kept here by name
    # for the callers that import them from hpcore.errors.
    if name in ("agree", "check"):
        from . import boundary

        return getattr(boundary, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
