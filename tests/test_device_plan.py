"""The device launch lists (word size, memcpy, dimension splitting), run through the NumPy emulator."""

import numpy as np
import pytest
from mpi4py import MPI

import hpcore
from hpcore import device_pack
from hpcore.testing import typezoo

BASES = [(4096, 8192), (4096 + 4, 8192), (4096 + 8, 8192 + 2), (4096 + 1, 8192 + 16)]


def _roundtrip(rng, dt, count, src_ptr, dst_ptr, desc=""):
    pl = hpcore.plan(dt, count)
    nbytes = typezoo.buffer_nbytes(dt, count)
    buf = rng.integers(0, 256, nbytes + 3, dtype=np.uint8)
    ref = typezoo.mpi_pack(buf, dt, count)
    out = np.zeros(pl.nbytes, np.uint8)
    device_pack.emulate(pl, buf, out, True, src_ptr, dst_ptr)
    np.testing.assert_array_equal(out, ref, err_msg=desc)
    back = rng.integers(0, 256, buf.nbytes, dtype=np.uint8)
    expect = back.copy()
    typezoo.mpi_unpack(ref, expect, dt, count)
    device_pack.emulate(pl, ref, back, False, dst_ptr, src_ptr)
    np.testing.assert_array_equal(back, expect, err_msg=desc)


@pytest.mark.parametrize("seed", range(80))
def test_emulated_kernels_match_mpi_pack(seed):
    rng = np.random.default_rng(seed)
    dt, desc = typezoo.random_datatype(rng)
    try:
        for count in (1, 3):
            sp, dp = BASES[seed % len(BASES)]
            _roundtrip(rng, dt, count, sp, dp, desc)
    finally:
        dt.Free()


def test_word_size_follows_layout_and_alignment():
    t = MPI.DOUBLE.Create_vector(10, 2, 4).Commit()  # runs of 16 B every 32 B
    try:
        pl = hpcore.plan(t)
        assert pl.steps[0].word == 16
        assert [ln.word for ln in device_pack.launches(pl, 4096, 8192, True)] == [16]
        assert [ln.word for ln in device_pack.launches(pl, 4096 + 8, 8192, True)] == [8]
        assert [ln.word for ln in device_pack.launches(pl, 4096 + 2, 8192, True)] == [2]
    finally:
        t.Free()
    u = MPI.BYTE.Create_vector(10, 3, 8).Commit()  # odd run: bytes
    try:
        assert hpcore.plan(u).steps[0].word == 1
    finally:
        u.Free()


def test_large_runs_use_memcpy2d(rng):
    run = device_pack.MEMCPY_MIN_RUN
    t = MPI.BYTE.Create_vector(5, run, run + 64).Commit()
    try:
        kinds = {ln.kind for ln in device_pack.launches(hpcore.plan(t), 0, 0, True)}
        assert kinds == {"memcpy2d"}
        _roundtrip(rng, t, 2, 4096, 8192)
    finally:
        t.Free()


def test_deep_blocks_are_split_into_several_launches(rng):
    t = MPI.BYTE.Create_contiguous(3)
    temps = [t]
    for k in range(7):  # 8 strided dimensions that cannot merge
        t = t.Create_hvector(2, 1, 7 * 3 ** (k + 1))
        temps.append(t)
    t.Commit()
    try:
        (b,) = hpcore.canonicalize(t).pieces
        assert b.ndim == 8
        lns = device_pack.launches(hpcore.plan(t), 0, 0, True)
        assert all(len(ln.counts) <= device_pack.MAX_KERNEL_DIMS for ln in lns) and len(lns) == 4
        _roundtrip(rng, t, 1, 4096, 8192)
    finally:
        for x in temps:
            x.Free()


def test_blockset_launch_carries_offsets(rng):
    disp = rng.permutation(500)[:100] * 2
    t = MPI.DOUBLE.Create_indexed_block(2, disp.tolist()).Commit()
    try:
        (ln,) = device_pack.launches(hpcore.plan(t), 0, 0, True)
        assert ln.src_set is not None and len(ln.src_set) == 100 and ln.word == 16
        _roundtrip(rng, t, 2, 4096, 8192)
    finally:
        t.Free()
