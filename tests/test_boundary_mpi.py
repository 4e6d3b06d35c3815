"""hpcore.agree across ranks: the same error on every rank, mismatch messages, no hangs."""

import json

import numpy as np
import pytest
from mpi4py import MPI
from mpi_checks import raises_everywhere, verdict

import hpcore

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(60)]


def _world():
    return MPI.COMM_WORLD


def test_equal_fields_pass():
    comm = _world()
    hpcore.agree(comm, None, what="op", count=10, dtype=np.dtype("float32"), shape=(2, 5), op=MPI.SUM)
    # the same values written differently normalize alike
    shape = [2, 5] if comm.rank % 2 else (2, 5)
    dtype = np.float32 if comm.rank % 2 else "float32"
    hpcore.agree(hpcore.Comm(comm), what="op", shape=shape, dtype=dtype, op="sum" if comm.rank else MPI.SUM)


def test_field_mismatch_raises_on_every_rank():
    comm = _world()
    chunk = 64 if comm.rank == 0 else 800
    msg = raises_everywhere(comm, hpcore.MismatchError,
                            lambda: hpcore.agree(comm, what="ring_allreduce", count=5, chunk_nbytes=chunk),
                            match="ring_allreduce: ")
    assert "disagree on chunk_nbytes" in msg
    assert "chunk_nbytes=64 on rank 0" in msg
    assert ("chunk_nbytes=800 on rank 1" if comm.size == 2 else f"chunk_nbytes=800 on ranks 1-{comm.size - 1}") in msg
    assert "count" not in msg  # only the fields that differ are named


def test_mismatch_names_every_differing_field():
    comm = _world()
    msg = raises_everywhere(comm, hpcore.MismatchError,
                            lambda: hpcore.agree(comm, what="f", a=comm.rank % 2, b="x", c=(comm.rank == 0)),
                            match="f: ")
    assert "disagree on a, c" in msg
    assert "a=0 on" in msg and "c=True on rank 0" in msg


def test_different_calls_disagree():
    """Rank 0 in one collective, the others in another: a mismatch, not a hang."""
    comm = _world()
    what = "ring_allreduce" if comm.rank == 0 else "ring_reduce_scatter"
    msg = raises_everywhere(comm, hpcore.MismatchError, lambda: hpcore.agree(comm, what=what, count=4),
                            match="disagree on call")
    assert "call=ring_allreduce on rank 0" in msg and "call=ring_reduce_scatter on rank" in msg


def test_missing_field_is_a_mismatch():
    comm = _world()
    fields = {"root": 0} if comm.rank == 0 else {}
    msg = raises_everywhere(comm, hpcore.MismatchError, lambda: hpcore.agree(comm, what="g", **fields),
                            match="disagree on root")
    assert "<not passed>" in msg


def test_mismatch_subclass():
    class Special(hpcore.MismatchError):
        hint = "pass the same n"

    comm = _world()
    msg = raises_everywhere(comm, Special, lambda: hpcore.agree(comm, what="h", mismatch=Special, n=comm.rank),
                            match="h: ")
    assert msg.endswith("; pass the same n")


def test_error_on_one_rank_everywhere():
    comm = _world()
    err = TypeError("x: bad") if comm.rank == comm.size - 1 else None
    msg = raises_everywhere(comm, TypeError, lambda: hpcore.agree(comm, err, what="f", n=comm.rank),
                            match=f"rank {comm.size - 1}/{comm.size}: x: bad")
    assert msg.count("rank ") == 1


def test_errors_on_several_ranks_take_the_lowest_ranks_type():
    comm = _world()
    err = ValueError("v") if comm.rank == 1 else (KeyError("k") if comm.rank == 0 else None)
    msg = raises_everywhere(comm, KeyError, lambda: hpcore.agree(comm, err))
    assert "rank 0/" in msg and f"rank 1/{comm.size}: v" in msg


def test_json_decode_error_on_one_rank():
    """Issue 14: re-raising a JSONDecodeError failed with a TypeError on every rank."""
    comm = _world()
    err = None
    if comm.rank == 1:
        try:
            json.loads("[1, 2")
        except json.JSONDecodeError as exc:
            err = exc
    raises_everywhere(comm, ValueError, lambda: hpcore.agree(comm, err), match="rank 1/")


def test_local_class_on_one_rank():
    comm = _world()

    class NotImportableError(OSError):
        pass

    err = NotImportableError("disk") if comm.rank == 0 else None
    raises_everywhere(comm, OSError, lambda: hpcore.agree(comm, err), match="rank 0/")


def test_sub_communicator_and_hpcore_comm():
    comm = _world()
    sub = comm.Split(comm.rank % 2, comm.rank)
    try:
        hpcore.agree(hpcore.Comm(sub), what="s", n=3)
        if sub.size > 1:
            raises_everywhere(sub, hpcore.MismatchError, lambda: hpcore.agree(sub, what="s", n=sub.rank))
    finally:
        sub.Free()


def test_agree_is_reusable_after_an_error():
    """After a raised agreement every rank is in step: the next collective works."""
    comm = _world()
    for _ in range(3):
        try:
            hpcore.agree(comm, what="x", n=comm.rank)
        except hpcore.MismatchError:
            pass
    total = comm.allreduce(1)
    verdict(comm, total == comm.size)
