"""hpcore.Comm between ranks: every method pair, random datatypes, non-blocking forms, errors."""

import numpy as np
import pytest
from mpi4py import MPI

import hpcore
from hpcore.testing import typezoo

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(120)]

HOST_METHODS = ["mpi", "host_pack"]


def _world():
    return MPI.COMM_WORLD


@pytest.mark.parametrize("send_method", HOST_METHODS + [None])
@pytest.mark.parametrize("recv_method", HOST_METHODS + [None])
def test_ring_of_random_types_every_method_pair(send_method, recv_method):
    comm = _world()
    c = hpcore.Comm(comm)
    rank, size = comm.rank, comm.size
    for seed in range(12):
        rng = np.random.default_rng(seed)  # every rank builds the same type
        dt, desc = typezoo.random_datatype(rng)
        try:
            count = int(rng.integers(1, 4))
            nbytes = typezoo.buffer_nbytes(dt, count)
            data = np.random.default_rng([seed, rank]).integers(0, 256, nbytes + 5, dtype=np.uint8)
            prev = (rank - 1) % size
            expect_src = np.random.default_rng([seed, prev]).integers(0, 256, nbytes + 5, dtype=np.uint8)
            recv = np.full(nbytes + 5, 0xAB, np.uint8)
            expect = recv.copy()
            typezoo.mpi_unpack(typezoo.mpi_pack(expect_src, dt, count), expect, dt, count)
            r = c.irecv(recv, prev, 3, datatype=dt, count=count, method=recv_method)
            s = c.isend(data, (rank + 1) % size, 3, datatype=dt, count=count, method=send_method)
            s.wait()
            r.wait()
            np.testing.assert_array_equal(recv, expect, err_msg=desc)
        finally:
            dt.Free()


def test_blocking_send_recv_and_sendrecv():
    comm = _world()
    c = hpcore.Comm(comm)
    rank, size = comm.rank, comm.size
    t = MPI.DOUBLE.Create_subarray([8, 9, 10], [3, 4, 5], [2, 3, 1]).Commit()
    try:
        a = np.arange(720.0) + 1000 * rank
        b = np.zeros(720)
        c.sendrecv(a, (rank + 1) % size, b, (rank - 1) % size, senddatatype=t, recvdatatype=t)
        prev = (rank - 1) % size
        ref = (np.arange(720.0) + 1000 * prev).reshape(8, 9, 10)
        got = b.reshape(8, 9, 10)
        np.testing.assert_array_equal(got[2:5, 3:7, 1:6], ref[2:5, 3:7, 1:6])
        got[2:5, 3:7, 1:6] = 0
        assert not got.any()
        if rank == 0:
            c.send(a, 1, 9, datatype=t, method="host_pack")
        elif rank == 1:
            out = np.zeros(720)
            status = MPI.Status()
            c.recv(out, 0, 9, datatype=t, status=status)
            assert status.Get_source() == 0 and status.Get_tag() == 9
            box = (slice(2, 5), slice(3, 7), slice(1, 6))
            np.testing.assert_array_equal(out.reshape(8, 9, 10)[box], np.arange(720.0).reshape(8, 9, 10)[box])
    finally:
        t.Free()


def test_whole_buffer_without_datatype_and_test_polling():
    comm = _world()
    c = hpcore.Comm(comm)
    rank, size = comm.rank, comm.size
    a = np.full(1000, rank, np.int32)
    b = np.zeros(1000, np.int32)
    r = c.irecv(b, (rank - 1) % size, 4)
    s = c.isend(a, (rank + 1) % size, 4)
    while not (r.test() and s.test()):
        pass
    assert (b == (rank - 1) % size).all()
    with pytest.raises(ValueError, match="without a datatype"):
        c.isend(a, 0, 4, count=2)


def test_whole_arrays_go_straight_to_mpi_and_bad_ones_are_refused():
    comm = _world()
    c = hpcore.Comm(comm)
    rank, size = comm.rank, comm.size
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4) + 100 * rank  # any dtype: sent as its bytes
    b = np.zeros((2, 3, 4))
    c.sendrecv(a, (rank + 1) % size, b, (rank - 1) % size, sendtag=6, recvtag=6)
    np.testing.assert_array_equal(b, np.arange(24.0).reshape(2, 3, 4) + 100 * ((rank - 1) % size))
    assert c.counts["mpi"] == 2 and c.counts["host_pack"] == 0
    if rank == 0:
        c.send(a, 1, 7)
    elif rank == 1:
        st = MPI.Status()
        c.recv(b, None, None, status=st)  # blocking form, wildcards, status filled
        assert (st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE)) == (0, 7, a.nbytes)
        np.testing.assert_array_equal(b, np.arange(24.0).reshape(2, 3, 4))
    # not whole contiguous writable arrays: the general path refuses them before communicating
    with pytest.raises(ValueError, match="contiguous"):
        c.isend(a[:, :, ::2], 0, 1)
    ro = np.zeros(8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        c.irecv(ro, 0, 1)
    for refs in (np.array([1, "x"], dtype=object), np.empty(2, dtype=object)):  # pointers, not data
        with pytest.raises(TypeError):
            c.isend(refs, 0, 1)
        with pytest.raises(TypeError):
            c.irecv(refs, 0, 1)
    comm.Barrier()


def test_method_choice_follows_the_model_and_cuda_awareness():
    comm = _world()
    vec = MPI.DOUBLE.Create_vector(4096, 1, 2).Commit()
    try:
        buf = np.zeros(8192)
        c = hpcore.Comm(comm, model=hpcore.perfmodel.PerfModel(pack_bw={"host": {1: 1e12}, "mpi": {1: 1e6}}))
        assert c.choose(buf, vec) == "host_pack"
        assert c.choose(buf, vec) == "host_pack"  # cached
        for _ in range(3):  # a freed model's id may be reused: the cache must not follow ids alone
            c.model = hpcore.perfmodel.PerfModel(pack_bw={"host": {1: 1e12}, "mpi": {1: 1e6}})
            assert c.choose(buf, vec) == "host_pack"
            c.model = hpcore.perfmodel.PerfModel(pack_bw={"host": {1: 1e6}, "mpi": {1: 1e12}})
            assert c.choose(buf, vec) == "mpi"  # a new model is a new choice, not the cached one
        assert c.choose(buf, vec, count=2) == "mpi"
    finally:
        vec.Free()


def test_fewer_instances_received_than_posted():
    comm = _world()
    c = hpcore.Comm(comm)
    t = MPI.INT.Create_vector(3, 1, 2).Commit()
    try:
        if comm.rank == 0:
            c.send(np.arange(50, dtype=np.int32), 1, 5, datatype=t, count=2, method="host_pack")
        elif comm.rank == 1:
            out = np.full(50, -1, np.int32)
            c.recv(out, 0, 5, datatype=t, count=4, method="host_pack")
            assert out[:10].tolist() == [0, -1, 2, -1, 4, 5, -1, 7, -1, 9]  # extent is 5 ints
            assert (out[10:] == -1).all()
    finally:
        t.Free()


def test_bad_arguments_fail_before_communicating():
    comm = _world()
    c = hpcore.Comm(comm)
    t = MPI.DOUBLE.Create_vector(10, 1, 3).Commit()
    try:
        with pytest.raises(ValueError, match="too small"):
            c.isend(np.zeros(5), 0, 1, datatype=t)
        with pytest.raises(ValueError, match="too small"):
            c.irecv(np.zeros(5), 0, 1, datatype=t)
        with pytest.raises(ValueError, match="method"):
            c.isend(np.zeros(40), 0, 1, datatype=t, method="pigeon")
        with pytest.raises(ValueError, match="needs a device buffer"):
            c.isend(np.zeros(40), 0, 1, datatype=t, method="staged")
        with pytest.raises(TypeError, match="communicator"):
            hpcore.Comm(42)
    finally:
        t.Free()
    comm.Barrier()


def test_bring_your_own_communicator():
    world = _world()
    sub = world.Split(world.rank % 2, world.rank)
    try:
        c = hpcore.Comm(sub)
        assert hpcore.Comm(c).mpi == sub
        x = np.full(4, sub.rank, np.float64)
        y = np.zeros(4)
        c.sendrecv(x, (sub.rank + 1) % sub.size, y, (sub.rank - 1) % sub.size)
        assert (y == (sub.rank - 1) % sub.size).all()
    finally:
        sub.Free()


def test_agree_raises_the_same_error_everywhere():
    comm = _world()
    err = ValueError("bad thing") if comm.rank == 1 else None
    with pytest.raises(ValueError, match=r"rank 1/\d+: bad thing"):
        hpcore.agree(comm, err)
    hpcore.agree(comm, None)  # nobody failed: returns


def test_wildcard_source_and_tag():
    comm = _world()
    c = hpcore.Comm(comm)
    if comm.rank == 0:
        c.send(np.full(3, 7.0), 1, 42)
    elif comm.rank == 1:
        out = np.zeros(3)
        status = MPI.Status()
        c.recv(out, status=status)  # ANY_SOURCE, ANY_TAG
        assert status.Get_source() == 0 and status.Get_tag() == 42 and (out == 7.0).all()
    comm.Barrier()
