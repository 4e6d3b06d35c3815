"""Errors and the agreement step that turns a local error into the same error on every rank."""

from __future__ import annotations

__all__ = ["HpcoreError", "rank_prefix", "agree", "check"]


class HpcoreError(RuntimeError):
    """An error detected by hpcore that is not a bad argument (e.g. an MPI-level mismatch)."""


def rank_prefix(comm) -> str:
    """Return ``"rank r/size: "`` for ``comm`` (``""`` when ``comm`` is None). Not collective."""
    if comm is None:
        return ""
    return f"rank {comm.Get_rank()}/{comm.Get_size()}: "


def agree(comm, error: BaseException | None) -> None:
    """Raise the same error on every rank of ``comm`` if any rank passes one.

    Collective on ``comm``: every rank must call it, with ``error=None`` when its own
    checks passed. Costs one small allreduce when nobody failed; when some rank
    failed, the messages are gathered and every rank raises an exception of the type
    the lowest failing rank raised, naming each failing rank.
    """
    from mpi4py import MPI

    failed = comm.allreduce(1 if error is not None else 0, op=MPI.SUM)
    if not failed:
        return
    mine = None if error is None else (type(error), str(error))
    reports = comm.allgather(mine)
    bad = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
    exc_type = bad[0][1][0]
    size = comm.Get_size()
    lines = []
    for r, (_, msg) in bad:
        prefix = f"rank {r}/{size}: "
        lines.append(msg if msg.startswith(prefix) else prefix + msg)
    message = "; ".join(lines)
    if error is not None and len(bad) == 1:
        raise exc_type(message) from error
    raise exc_type(message)


def check(comm, condition_fn) -> None:
    """Run ``condition_fn()`` locally and :func:`agree` on its outcome.

    Collective on ``comm``. ``condition_fn`` raises ``TypeError``/``ValueError`` (or any
    exception) on bad local input; every rank then raises the same error.
    """
    error = None
    try:
        condition_fn()
    except Exception as exc:  # noqa: BLE001 - re-raised on every rank by agree()
        error = exc
    agree(comm, error)
