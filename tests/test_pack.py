"""pack/unpack arguments: bad input gets a clear error and nothing outside the type is touched."""

import numpy as np
import pytest
from mpi4py import MPI

import hpcore
from hpcore.testing import typezoo


@pytest.fixture
def vec():
    t = MPI.DOUBLE.Create_vector(4, 2, 5).Commit()  # touches bytes [0, 136)
    yield t
    t.Free()


def test_buffer_too_small_names_the_span(vec):
    buf = np.zeros(16, dtype=np.float64)  # 128 bytes
    with pytest.raises(ValueError, match=r"too small.*\[0, 136\)"):
        hpcore.pack(buf, vec)
    with pytest.raises(ValueError, match="too small"):
        hpcore.unpack(np.zeros(64, np.uint8), buf, vec)
    buf2 = np.zeros(17, dtype=np.float64)
    hpcore.pack(buf2, vec)  # exactly enough
    with pytest.raises(ValueError, match="too small"):
        hpcore.pack(buf2, vec, count=2)


def test_negative_and_non_integer_count(vec):
    buf = np.zeros(100)
    with pytest.raises(ValueError, match="count"):
        hpcore.pack(buf, vec, count=-1)
    with pytest.raises(TypeError, match="count"):
        hpcore.pack(buf, vec, count=1.5)
    with pytest.raises(TypeError, match="count"):
        hpcore.pack(buf, vec, count=True)


def test_count_zero_is_empty(vec):
    got = hpcore.pack(np.zeros(0), vec, count=0)
    assert got.shape == (0,) and got.dtype == np.uint8
    hpcore.unpack(got, np.zeros(0), vec, count=0)


def test_out_too_small_or_read_only(vec):
    buf = np.arange(40.0)
    with pytest.raises(ValueError, match="out: has 10 bytes"):
        hpcore.pack(buf, vec, out=np.zeros(10, np.uint8))
    ro = np.zeros(64, np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: array is read-only"):
        hpcore.pack(buf, vec, out=ro)
    big = np.full(100, 7, np.uint8)
    got = hpcore.pack(buf, vec, out=big)
    assert got.nbytes == 64 and np.shares_memory(got, big)
    assert (big[64:] == 7).all()


def test_non_contiguous_and_non_buffer_inputs(vec):
    a = np.arange(100.0)
    with pytest.raises(ValueError, match="contiguous"):
        hpcore.pack(a[::2], vec)
    with pytest.raises(TypeError, match="bytes-like"):
        hpcore.pack(object(), vec)
    ro = np.arange(40.0)
    ro.flags.writeable = False
    hpcore.pack(ro, vec)  # reading a read-only buffer is fine
    with pytest.raises(ValueError, match="read-only"):
        hpcore.unpack(np.zeros(64, np.uint8), ro, vec)
    with pytest.raises(ValueError, match="packed has 8 bytes"):
        hpcore.unpack(np.zeros(8, np.uint8), np.zeros(40), vec)


def test_bytes_like_buffers(vec):
    a = np.arange(40.0)
    ref = hpcore.pack(a, vec)
    np.testing.assert_array_equal(hpcore.pack(a.tobytes(), vec), ref)
    ba = bytearray(a.nbytes)
    hpcore.unpack(ref, ba, vec)
    np.testing.assert_array_equal(hpcore.pack(bytes(ba), vec), ref)


def test_unpack_writes_only_the_typemap(rng):
    """Guard bytes around and between the blocks stay as they were, on random types."""
    for seed in range(60):
        r = np.random.default_rng(seed)
        dt, desc = typezoo.random_datatype(r)
        try:
            count = int(r.integers(1, 4))
            nbytes = typezoo.buffer_nbytes(dt, count)
            buf = r.integers(0, 256, nbytes + 64, dtype=np.uint8)
            touched = typezoo.touched_mask(dt, count, buf.nbytes)
            packed = r.integers(0, 256, hpcore.packed_nbytes(dt, count), dtype=np.uint8)
            out = buf.copy()
            hpcore.unpack(packed, out, dt, count)
            np.testing.assert_array_equal(out[~touched], buf[~touched], err_msg=desc)
        finally:
            dt.Free()


def test_packed_nbytes_equals_pack_size():
    for seed in range(30):
        dt, _ = typezoo.random_datatype(np.random.default_rng(1000 + seed))
        try:
            for count in (0, 1, 3):
                assert hpcore.packed_nbytes(dt, count) == dt.Pack_size(count, MPI.COMM_SELF)
        finally:
            dt.Free()


@pytest.mark.parametrize("engine", ["numpy", "mpi", "mpi_source"], ids=lambda e: f"engine_{e}")
def test_every_host_engine_matches_mpi(engine, monkeypatch):
    monkeypatch.setenv("HPCORE_HOST_ENGINE", engine)
    for seed in range(40):
        r = np.random.default_rng(500 + seed)
        dt, desc = typezoo.random_datatype(r)
        try:
            count = int(r.integers(1, 4))
            buf = r.integers(0, 256, typezoo.buffer_nbytes(dt, count) + 3, dtype=np.uint8)
            ref = typezoo.mpi_pack(buf, dt, count)
            np.testing.assert_array_equal(hpcore.pack(buf, dt, count), ref, err_msg=desc)
            out, expect = np.zeros_like(buf), np.zeros_like(buf)
            typezoo.mpi_unpack(ref, expect, dt, count)
            hpcore.unpack(ref, out, dt, count)
            np.testing.assert_array_equal(out, expect, err_msg=desc)
            assert hpcore.plan(dt, count).host_engine == {"pack": engine, "unpack": engine}
        finally:
            dt.Free()


def test_auto_engine_records_its_timings_and_survives_free(monkeypatch):
    monkeypatch.delenv("HPCORE_HOST_ENGINE", raising=False)
    t = MPI.DOUBLE.Create_indexed_block(2, [9, 0, 4, 20, 13]).Commit()
    buf = np.arange(60.0)
    ref1, ref2 = typezoo.mpi_pack(buf, t), typezoo.mpi_pack(buf, t, 2)
    ctype = hpcore.canonicalize(t)
    np.testing.assert_array_equal(hpcore.pack(buf, t), ref1)
    assert set(hpcore.plan(t).host_state["pack_times_s"]) == {"numpy", "mpi", "mpi_source"}
    t.Free()  # the canonical form (and hpcore's duplicate of the type) outlive the caller's handle
    monkeypatch.setenv("HPCORE_HOST_ENGINE", "mpi_source")
    np.testing.assert_array_equal(hpcore.pack(buf, ctype, 2), ref2)


def test_bad_engine_setting(monkeypatch):
    monkeypatch.setenv("HPCORE_HOST_ENGINE", "turbo")
    t = MPI.INT.Create_vector(2, 1, 2).Commit()
    try:
        with pytest.raises(ValueError, match="HPCORE_HOST_ENGINE"):
            hpcore.pack(np.zeros(4, np.int32), t, count=1)
    finally:
        t.Free()


def test_plans_own_their_cache_not_the_type():
    """Issue 14: pack plans are cached by pack (keyed by the canonical type), not in a dict on the type."""
    import gc
    import sys

    from hpcore.datatype import _INSTANCES, TypeCache

    pack_module = sys.modules["hpcore.pack"]  # hpcore.pack is the function
    ctype = hpcore.from_view(np.zeros((6, 5))[::2, 1:4])
    assert not hasattr(ctype, "_plans") and ctype.source is None
    p = hpcore.plan(ctype, 3)
    assert hpcore.plan(ctype, 3) is p and hpcore.plan(ctype, 2) is not p
    assert pack_module._PLANS.get(ctype, 3) is p
    # the bounded plan cache lets old types go
    cache = TypeCache(max_types=2)
    types = [hpcore.from_view(np.zeros(n)) for n in (3, 4, 5)]
    for t in types:
        cache.put(t, "k", t)
    assert cache.get(types[0], "k") is None and cache.get(types[2], "k") is types[2] and len(cache) == 2
    # when MPI deletes a datatype's attributes, every cache forgets its canonical form
    dt = MPI.DOUBLE.Create_vector(3, 2, 5).Commit()
    ct = hpcore.canonicalize(dt)
    hpcore.pack(np.zeros(15), dt)
    assert pack_module._PLANS.get(ct, 1) is not None
    TypeCache.forget_everywhere(ct)
    assert pack_module._PLANS.get(ct, 1) is None
    dt.Free()
    # entries that do not hold their type go when the type is collected
    other = hpcore.from_view(np.zeros((4, 4))[:, ::2])
    other.instances(5)
    before = len(_INSTANCES)
    del other
    gc.collect()
    assert len(_INSTANCES) == before - 1
