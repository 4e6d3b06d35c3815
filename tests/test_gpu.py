"""Device pack/unpack and transport on CuPy arrays (skipped without a GPU)."""

import numpy as np
import pytest
from mpi4py import MPI

import hpcore
from hpcore.testing import typezoo

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("seed", range(60))
def test_device_pack_matches_mpi_pack(cupy, seed):
    rng = np.random.default_rng(seed)
    dt, desc = typezoo.random_datatype(rng)
    try:
        for count in (1, 3):
            nbytes = typezoo.buffer_nbytes(dt, count)
            host = rng.integers(0, 256, nbytes + 9, dtype=np.uint8)
            ref = typezoo.mpi_pack(host, dt, count)
            for shift in (0, 1, 4, 8):  # misaligned base addresses pick narrower words
                dev = cupy.zeros(host.nbytes + shift, cupy.uint8)[shift:]
                dev[...] = cupy.asarray(host)
                got = hpcore.pack(dev, dt, count)
                assert isinstance(got, cupy.ndarray)
                np.testing.assert_array_equal(cupy.asnumpy(got), ref, err_msg=desc)
                back = cupy.asarray(rng.integers(0, 256, host.nbytes, dtype=np.uint8))
                expect = cupy.asnumpy(back)
                typezoo.mpi_unpack(ref, expect, dt, count)
                hpcore.unpack(got, back, dt, count)
                np.testing.assert_array_equal(cupy.asnumpy(back), expect, err_msg=desc)
    finally:
        dt.Free()


def test_device_out_checks(cupy):
    t = MPI.DOUBLE.Create_vector(4, 1, 2).Commit()
    try:
        d = cupy.arange(10.0)
        with pytest.raises(ValueError, match="same device"):
            hpcore.pack(d, t, out=np.zeros(64, np.uint8))
        with pytest.raises(ValueError, match="both be"):
            hpcore.unpack(np.zeros(32, np.uint8), d, t)
        with pytest.raises(ValueError, match="too small"):
            hpcore.pack(cupy.arange(3.0), t)
    finally:
        t.Free()


def test_large_runs_and_blocksets_on_device(cupy):
    rng = np.random.default_rng(7)
    a = MPI.BYTE.Create_vector(6, 20000, 20100).Commit()
    b = MPI.DOUBLE.Create_indexed_block(3, (rng.permutation(3000)[:500] * 3).tolist()).Commit()
    try:
        for t in (a, b):
            n = typezoo.buffer_nbytes(t, 2)
            host = rng.integers(0, 256, n, dtype=np.uint8)
            got = hpcore.pack(cupy.asarray(host), t, 2)
            np.testing.assert_array_equal(cupy.asnumpy(got), typezoo.mpi_pack(host, t, 2))
    finally:
        a.Free()
        b.Free()


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["staged", "device_pack", None])
def test_device_transport_ring(cupy, method):
    comm = MPI.COMM_WORLD
    c = hpcore.Comm(comm)
    if method == "device_pack" and not c.cuda_aware:
        pytest.skip("MPI is not CUDA-aware here")
    t = MPI.FLOAT.Create_subarray([20, 30], [7, 11], [3, 5]).Commit()
    try:
        rank, size = comm.rank, comm.size
        a = cupy.arange(600, dtype=cupy.float32) + 1000 * rank
        b = cupy.zeros(600, cupy.float32)
        r = c.irecv(b, (rank - 1) % size, 2, datatype=t, method=method)
        s = c.isend(a, (rank + 1) % size, 2, datatype=t, method=method)
        s.wait()
        r.wait()
        prev = (np.arange(600, dtype=np.float32) + 1000 * ((rank - 1) % size)).reshape(20, 30)
        got = cupy.asnumpy(b).reshape(20, 30)
        np.testing.assert_array_equal(got[3:10, 5:16], prev[3:10, 5:16])
        if method == "staged":
            assert c.pool.stats["copies_d2h"] >= 1 and c.pool.stats["copies_h2d"] >= 1
    finally:
        t.Free()
