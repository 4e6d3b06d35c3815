"""Canonical datatypes and host packing against MPI's own Pack/Unpack."""

import numpy as np
import pytest
from mpi4py import MPI

import hpcore
from hpcore.datatype import BlockSet, StridedBlock
from hpcore.testing import typezoo


def _random_buffer(rng, nbytes):
    return rng.integers(0, 256, max(nbytes, 1), dtype=np.uint8)


def _check_against_mpi(rng, dt, counts=(1, 2, 5)):
    ctype = hpcore.canonicalize(dt)
    assert ctype.size == dt.Get_size()
    for count in counts:
        nbytes = typezoo.buffer_nbytes(dt, count)
        buf = _random_buffer(rng, nbytes + 7)
        before = buf.copy()
        ref = typezoo.mpi_pack(buf, dt, count)
        got = hpcore.pack(buf, dt, count)
        assert got.dtype == np.uint8 and got.ndim == 1
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(buf, before)  # pack never writes its input
        # unpack against MPI's Unpack, onto random (not zero) contents
        dst_ref = _random_buffer(rng, nbytes + 7)
        dst = dst_ref.copy()
        typezoo.mpi_unpack(ref, dst_ref, dt, count)
        hpcore.unpack(ref, dst, dt, count)
        np.testing.assert_array_equal(dst, dst_ref)
        # back to MPI: the rebuilt type packs the same bytes
        back = hpcore.to_mpi(ctype)
        try:
            assert back.Get_extent() == dt.Get_extent()
            assert back.Get_size() == dt.Get_size()
            np.testing.assert_array_equal(typezoo.mpi_pack(buf, back, count), ref)
        finally:
            back.Free()


@pytest.mark.parametrize("seed", range(300))
def test_random_nested_types_match_mpi_pack(seed):
    rng = np.random.default_rng(seed)
    dt, desc = typezoo.random_datatype(rng)
    try:
        _check_against_mpi(rng, dt)
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}: {desc}\n{hpcore.canonicalize(dt).describe()}") from exc
    finally:
        dt.Free()


def test_ddtbench_patterns_match_mpi_pack(rng):
    patterns = typezoo.ddtbench_patterns(target_nbytes=64 * 1024)
    try:
        for name, p in patterns.items():
            buf = _random_buffer(rng, p.buffer_nbytes)
            ref = typezoo.mpi_pack(buf, p.datatype, p.count)
            np.testing.assert_array_equal(hpcore.pack(buf, p.datatype, p.count), ref, err_msg=name)
            dst, dst_ref = np.zeros_like(buf), np.zeros_like(buf)
            hpcore.unpack(ref, dst, p.datatype, p.count)
            typezoo.mpi_unpack(ref, dst_ref, p.datatype, p.count)
            np.testing.assert_array_equal(dst, dst_ref, err_msg=name)
    finally:
        for p in patterns.values():
            p.free()


def test_tempi_sweep_is_one_block_each(rng):
    for p in typezoo.tempi_sweep(total_nbytes=1 << 16).values():
        try:
            ctype = hpcore.canonicalize(p.datatype)
            assert len(ctype.pieces) == 1
            buf = _random_buffer(rng, p.buffer_nbytes)
            ref = typezoo.mpi_pack(buf, p.datatype, p.count)
            np.testing.assert_array_equal(hpcore.pack(buf, p.datatype, p.count), ref)
        finally:
            p.free()


def _committed(t):
    t.Commit()
    return t


@pytest.fixture
def made():
    types = []

    def make(t):
        types.append(_committed(t))
        return t

    yield make
    for t in types:
        t.Free()


def test_vector_is_one_strided_block(made):
    t = made(MPI.DOUBLE.Create_vector(7, 3, 10))
    (b,) = hpcore.canonicalize(t).pieces
    assert b == StridedBlock(0, (24, 7), (1, 80), 0, (1, 24))


def test_subarray_c_and_fortran_orders(made, rng):
    c = made(MPI.FLOAT.Create_subarray([5, 6, 7], [2, 3, 4], [1, 2, 3], order=MPI.ORDER_C))
    f = made(MPI.FLOAT.Create_subarray([5, 6, 7], [2, 3, 4], [1, 2, 3], order=MPI.ORDER_FORTRAN))
    (bc,) = hpcore.canonicalize(c).pieces
    (bf,) = hpcore.canonicalize(f).pieces
    assert bc.counts == (16, 3, 2) and bc.strides == (1, 28, 168)
    assert bf.counts == (8, 3, 4) and bf.strides == (1, 20, 120)
    a = rng.standard_normal((5, 6, 7)).astype(np.float32)
    np.testing.assert_array_equal(hpcore.pack(a, c).view(np.float32), a[1:3, 2:5, 3:7].ravel())
    af = np.asfortranarray(a)
    np.testing.assert_array_equal(hpcore.pack(af, f).view(np.float32), af[1:3, 2:5, 3:7].ravel(order="F"))


def test_struct_repeated_keeps_typemap_order_without_exploding(made, rng):
    s = MPI.Datatype.Create_struct([1, 1], [0, 8], [MPI.INT, MPI.DOUBLE])
    t = made(s.Create_resized(0, 16).Create_contiguous(1000))
    s.Free()
    ctype = hpcore.canonicalize(t)
    assert len(ctype.pieces) == 2  # one strided block per member, not 2000 entries
    assert ctype.nblocks == 2000
    _check_against_mpi(rng, t, counts=(1, 3))


def test_negative_stride_keeps_order(made, rng):
    inner = MPI.INT.Create_hvector(5, 1, -12)
    t = made(MPI.Datatype.Create_struct([1], [100], [inner]))
    inner.Free()
    (b,) = hpcore.canonicalize(t).pieces
    assert b.strides == (1, -12)  # not sorted into ascending order
    _check_against_mpi(rng, t)


def test_regular_indexed_becomes_strided(made):
    t = made(MPI.DOUBLE.Create_indexed_block(2, [0, 5, 10, 15, 20, 25]))
    (b,) = hpcore.canonicalize(t).pieces
    assert isinstance(b, StridedBlock) and b.counts == (16, 6) and b.strides == (1, 40)


def test_irregular_indexed_is_one_blockset(made, rng):
    disp = rng.permutation(4000)[:1000]
    t = made(MPI.FLOAT.Create_indexed_block(1, disp.tolist()))
    (p,) = hpcore.canonicalize(t).pieces
    assert isinstance(p, BlockSet) and len(p.starts) == 1000
    _check_against_mpi(rng, t)


@pytest.mark.parametrize("pair", ["SHORT_INT", "DOUBLE_INT", "FLOAT_INT", "LONG_INT", "TWOINT"])
def test_pair_types_skip_their_padding(pair, rng):
    _check_against_mpi(rng, getattr(MPI, pair), counts=(1, 4))


def test_resized_dup_and_f90(made, rng):
    base = MPI.SHORT.Create_vector(3, 1, 4)
    r = made(base.Create_resized(-8, 40))
    base.Free()
    d = made(r.Dup())
    wrap = made(MPI.Datatype.Create_struct([2], [16], [d]))
    _check_against_mpi(rng, wrap, counts=(1, 3))
    _check_against_mpi(rng, MPI.Datatype.Create_f90_real(12, 30), counts=(1, 3))


@pytest.mark.parametrize("order", ["C", "F"])
def test_darray_cyclic_and_block(order, rng):
    o = MPI.ORDER_C if order == "C" else MPI.ORDER_FORTRAN
    for rank in range(6):
        t = MPI.DOUBLE.Create_darray(
            6, rank, [11, 9], [MPI.DISTRIBUTE_CYCLIC, MPI.DISTRIBUTE_BLOCK], [2, MPI.DISTRIBUTE_DFLT_DARG], [3, 2], o
        ).Commit()
        try:
            _check_against_mpi(rng, t, counts=(1,))
        finally:
            t.Free()


def test_canonical_form_is_cached_and_dropped_on_free(rng):
    t = MPI.INT.Create_vector(3, 1, 2).Commit()
    c1 = hpcore.canonicalize(t)
    assert hpcore.canonicalize(t) is c1
    t.Free()
    u = MPI.DOUBLE.Create_vector(4, 2, 3).Commit()  # may reuse t's handle
    try:
        c2 = hpcore.canonicalize(u)
        assert c2 is not c1 and c2.size == 64
    finally:
        u.Free()


def _views(rng):
    a = rng.standard_normal((6, 7, 5))
    yield a, lambda x: x[1:5:2, ::-1, 1:4]
    yield a, lambda x: x.transpose(2, 0, 1)[1:, :, ::3]
    yield a, lambda x: x[:, 3, :]
    b = np.asfortranarray(rng.integers(0, 100, (9, 8), dtype=np.int16))
    yield b, lambda x: x[::-2, 1:7]
    c = rng.standard_normal(31).astype(np.complex64)
    yield c, lambda x: x[3:30:4]
    yield c, lambda x: x[5:5]


def test_from_view_matches_tobytes_unpack_and_to_mpi(rng):
    for base, slicer in _views(rng):
        view = slicer(base)
        ctype = hpcore.from_view(view, base)
        expect = np.frombuffer(view.tobytes(), np.uint8)
        np.testing.assert_array_equal(hpcore.pack(base, ctype), expect)
        out = np.zeros_like(base)
        hpcore.unpack(expect, out, ctype)
        np.testing.assert_array_equal(slicer(out), view)
        mask = np.zeros(base.shape, bool)
        slicer(mask)[...] = True
        assert not out[~mask].any()  # nothing outside the view was written
        if ctype.size == 0:
            continue
        t = hpcore.to_mpi(ctype)
        try:
            np.testing.assert_array_equal(typezoo.mpi_pack(base, t), expect)
        finally:
            t.Free()


def test_from_view_without_base_is_relative_to_first_element(rng):
    a = rng.standard_normal((4, 6))
    v = a[1:, ::2]
    ctype = hpcore.from_view(v)
    assert ctype.true_lb == 0
    np.testing.assert_array_equal(hpcore.pack(a[1:], ctype), np.frombuffer(v.tobytes(), np.uint8))


def test_from_view_outside_base_is_refused(rng):
    a = rng.standard_normal(10)
    b = rng.standard_normal(10)
    with pytest.raises(ValueError, match="outside base"):
        hpcore.from_view(b[2:5], a)


def test_bad_datatypes_are_refused():
    t = MPI.INT.Create_vector(2, 1, 3)
    try:
        with pytest.raises(ValueError, match="not committed"):
            hpcore.canonicalize(t)
    finally:
        t.Free()
    with pytest.raises(ValueError, match="DATATYPE_NULL"):
        hpcore.canonicalize(MPI.DATATYPE_NULL)
    with pytest.raises(TypeError, match="mpi4py.MPI.Datatype"):
        hpcore.canonicalize("double")
