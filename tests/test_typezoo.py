"""Serial tests of hpcore.testing.typezoo: random datatypes, MPI's reference pack, named patterns."""

import dataclasses
import re

import numpy as np
import pytest
from mpi4py import MPI

from hpcore.testing.typezoo import (
    CONSTRUCTORS,
    MAX_SIZE,
    MAX_TRUE_EXTENT,
    Pattern,
    buffer_nbytes,
    ddtbench_patterns,
    mpi_pack,
    mpi_unpack,
    random_datatype,
    tempi_sweep,
    touched_mask,
)

SEEDS = range(200)
DDTBENCH_NAMES = {
    "NAS_LU_x", "NAS_LU_y", "NAS_MG_x", "NAS_MG_y", "NAS_MG_z", "MILC_su3_zd",
    "SPECFEM3D_oc", "SPECFEM3D_cm", "LAMMPS_full", "LAMMPS_atomic",
    "WRF_x_vec", "WRF_y_vec", "WRF_x_sa", "WRF_y_sa", "FFT",
    "FACE3D_x", "FACE3D_y", "FACE3D_z",
}


def kinds_in(description):
    return set(re.findall(r"([a-z_]+)\(", description))


@pytest.fixture
def free_later():
    types = []
    yield types.append
    for t in types:
        if t != MPI.DATATYPE_NULL:
            t.Free()


def check_round_trip(datatype, count, rng, nbytes=None):
    """Pack random bytes, unpack into zeros: equal on touched bytes, zero elsewhere."""
    nbytes = buffer_nbytes(datatype, count) if nbytes is None else nbytes
    x = rng.integers(0, 256, size=nbytes, dtype=np.uint8)
    packed = mpi_pack(x, datatype, count)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.nbytes == datatype.Pack_size(count, MPI.COMM_SELF) == datatype.Get_size() * count
    y = np.zeros_like(x)
    mpi_unpack(packed, y, datatype, count)
    mask = touched_mask(datatype, count, nbytes)
    np.testing.assert_array_equal(y[mask], x[mask])
    assert not y[~mask].any()
    np.testing.assert_array_equal(mpi_pack(y, datatype, count), packed)
    return x, packed, mask


# ---------------------------------------------------------------- random types


@pytest.mark.parametrize("seed", SEEDS)
def test_random_datatype_properties_and_round_trip(seed):
    rng = np.random.default_rng(seed)
    datatype, description = random_datatype(rng)
    try:
        true_lb, true_extent = datatype.Get_true_extent()
        assert true_lb >= 0, description
        assert 1 <= datatype.Get_size() <= MAX_SIZE, description
        assert true_extent <= MAX_TRUE_EXTENT, description
        assert kinds_in(description) <= set(CONSTRUCTORS), description
        for count in (1, 2):
            # mpi_pack of an uncommitted type would fail: this also checks Commit()
            _, _, mask = check_round_trip(datatype, count, rng)
            assert mask[-1], f"buffer_nbytes not tight: {description}"
            assert mask.sum() <= datatype.Get_size() * count
    finally:
        datatype.Free()


def test_every_constructor_appears():
    seen = set()
    for seed in SEEDS:
        datatype, description = random_datatype(np.random.default_rng(seed))
        datatype.Free()
        seen |= kinds_in(description)
    assert seen == set(CONSTRUCTORS)


def test_base_types_and_pairs_appear():
    names = set()
    for seed in SEEDS:
        datatype, description = random_datatype(np.random.default_rng(seed))
        datatype.Free()
        names |= set(re.findall(r"\b([A-Z][A-Z_]+)\b", description))
    assert {"CHAR", "SHORT", "INT", "FLOAT", "DOUBLE", "LONG_LONG", "C_DOUBLE_COMPLEX"} <= names
    assert names & {"DOUBLE_INT", "SHORT_INT"}


def test_intermediate_types_are_freed():
    # MPI recycles freed handles: if every intermediate type is freed, building and
    # freeing many types cycles through a handful of handles instead of growing.
    handles = set()
    for seed in SEEDS:
        datatype, _ = random_datatype(np.random.default_rng(seed), depth=3)
        mpi_pack(np.zeros(buffer_nbytes(datatype, 2), np.uint8), datatype, 2)
        handles.add(datatype.py2f())
        datatype.Free()
    assert len(handles) <= 16
    handles = set()
    for _ in range(8):  # 18 patterns each: about 95 distinct handles if temporaries leaked
        patterns = ddtbench_patterns(4096)
        handles |= {p.datatype.py2f() for p in patterns.values()}
        for p in patterns.values():
            p.free()
    assert len(handles) <= 64


def test_random_datatype_is_reproducible():
    a, da = random_datatype(np.random.default_rng(42))
    b, db = random_datatype(np.random.default_rng(42))
    try:
        assert da == db
        assert a.Get_size() == b.Get_size() and a.Get_true_extent() == b.Get_true_extent()
    finally:
        a.Free()
        b.Free()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_random_datatype_depth_and_base(depth):
    for seed in range(20):
        rng = np.random.default_rng(seed)
        datatype, description = random_datatype(rng, depth=depth, base=MPI.DOUBLE)
        try:
            assert re.search(r"\bDOUBLE\b", description)
            # levels, plus at most one wrapper that moves true_lb to >= 0
            levels = len(re.findall(r"[a-z_]+\(", description))
            assert depth <= levels <= depth + 1, description
            check_round_trip(datatype, 1, rng)
        finally:
            datatype.Free()


def test_random_datatype_bad_arguments():
    with pytest.raises(TypeError, match="rng"):
        random_datatype(0)
    with pytest.raises(ValueError, match="depth"):
        random_datatype(np.random.default_rng(0), depth=0)
    with pytest.raises(TypeError, match="base"):
        random_datatype(np.random.default_rng(0), base="double")


# ---------------------------------------------------- buffer_nbytes, pack, unpack


def test_buffer_nbytes_hand_made(free_later):
    vec = MPI.DOUBLE.Create_vector(3, 1, 2).Commit()  # lb 0, extent 40
    free_later(vec)
    assert buffer_nbytes(vec) == 40
    assert buffer_nbytes(vec, 3) == 2 * 40 + 40
    assert buffer_nbytes(vec, 0) == 0

    neg = MPI.DOUBLE.Create_vector(3, 1, -2)  # true_lb -32, true_extent 40
    free_later(neg)
    assert neg.Get_true_extent() == (-32, 40)
    assert buffer_nbytes(neg) == 8
    wrapped = MPI.Datatype.Create_struct([1], [32], [neg]).Commit()
    free_later(wrapped)
    assert wrapped.Get_true_extent() == (0, 40)
    assert buffer_nbytes(wrapped) == 40
    assert buffer_nbytes(wrapped, 2) == 80
    x = np.arange(5.0)
    np.testing.assert_array_equal(mpi_pack(x, wrapped).view(np.float64), [4.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="before the start"):
        mpi_pack(np.zeros(10), neg.Commit())

    shrunk = MPI.DOUBLE.Create_resized(0, 4).Commit()  # instances overlap
    free_later(shrunk)
    assert buffer_nbytes(shrunk, 3) == 2 * 4 + 8

    backwards = MPI.DOUBLE.Create_resized(0, -8).Commit()  # negative extent
    free_later(backwards)
    assert buffer_nbytes(backwards, 3) == 8
    with pytest.raises(ValueError, match="before the start"):
        mpi_pack(np.zeros(4), backwards, 3)

    flat = MPI.DOUBLE.Create_resized(0, 0).Commit()  # zero extent
    free_later(flat)
    assert buffer_nbytes(flat, 5) == 8

    moved = MPI.INT.Create_resized(-4, 16).Commit()  # lb moved, typemap not
    free_later(moved)
    assert buffer_nbytes(moved, 2) == 16 + 4


def test_pair_types_have_gaps():
    mask = touched_mask(MPI.DOUBLE_INT, 2)
    expected = np.zeros(28, bool)
    expected[0:12] = expected[16:28] = True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(touched_mask(MPI.SHORT_INT), [1, 1, 0, 0, 1, 1, 1, 1])
    check_round_trip(MPI.DOUBLE_INT, 3, np.random.default_rng(0))


def test_pack_count_is_exact(free_later):
    vec = MPI.DOUBLE.Create_vector(3, 1, 2).Commit()
    free_later(vec)
    x = np.arange(40.0)  # far more than 2 instances: mpi4py alone would pack 8
    np.testing.assert_array_equal(mpi_pack(x, vec, 2).view(np.float64), [0, 2, 4, 5, 7, 9])
    assert mpi_pack(x, vec, 0).nbytes == 0
    assert mpi_pack(bytes(40), vec).nbytes == 24  # bytes-like input


def test_pack_unpack_bad_buffers(free_later):
    vec = MPI.DOUBLE.Create_vector(3, 1, 2).Commit()
    free_later(vec)
    with pytest.raises(ValueError, match="too small"):
        mpi_pack(np.zeros(4), vec)
    with pytest.raises(ValueError, match="contiguous"):
        mpi_pack(np.zeros((10, 2))[:, 0], vec)
    with pytest.raises(TypeError, match="buf"):
        mpi_pack(object(), vec)
    with pytest.raises(ValueError, match="writable"):
        mpi_unpack(np.zeros(24, np.uint8), bytes(40), vec)
    with pytest.raises(ValueError, match="packed"):
        mpi_unpack(np.zeros(8, np.uint8), np.zeros(5), vec)
    with pytest.raises(TypeError, match="datatype"):
        mpi_pack(np.zeros(5), "double")


def test_unpack_leaves_other_bytes_alone(free_later):
    vec = MPI.INT.Create_vector(2, 1, 3).Commit()
    free_later(vec)
    y = np.full(6, -1, dtype=np.int32)
    mpi_unpack(np.array([7, 8], dtype=np.int32).view(np.uint8), y, vec)
    np.testing.assert_array_equal(y, [7, -1, -1, 8, -1, -1])


# ------------------------------------------------------------------ patterns


@pytest.mark.parametrize("target", [512 * 1024, 64 * 1024, 4096])
def test_ddtbench_sizes_near_target(target):
    patterns = ddtbench_patterns(target)
    try:
        assert set(patterns) == DDTBENCH_NAMES
        for name, p in patterns.items():
            assert isinstance(p, Pattern) and p.name == name
            assert target / 1.5 <= p.packed_nbytes <= target * 1.5, (name, p.packed_nbytes)
            assert p.buffer_nbytes >= buffer_nbytes(p.datatype, p.count), name
            assert p.datatype.Get_true_extent()[0] >= 0, name
            assert p.description
    finally:
        for p in patterns.values():
            p.free()


def test_ddtbench_round_trip():
    rng = np.random.default_rng(1)
    patterns = ddtbench_patterns(16 * 1024)
    try:
        for p in patterns.values():
            check_round_trip(p.datatype, p.count, rng, p.buffer_nbytes)
    finally:
        for p in patterns.values():
            p.free()


def test_ddtbench_layouts_match_manual_packing():
    # m = 16 for NAS_MG and FACE3D; DIM3 = 51 for NAS_LU_y; nloc = 6 for FFT (4 ranks)
    patterns = ddtbench_patterns(2048)
    try:
        def packed(name):
            p = patterns[name]
            u = np.arange(p.buffer_nbytes // 8, dtype=np.float64)
            return u, mpi_pack(u, p.datatype, p.count).view(np.float64)

        u, got = packed("NAS_MG_x")  # u(34, 18, 18), x fastest: send plane x = DIM1-2
        np.testing.assert_array_equal(got, u.reshape(18, 18, 34)[1:17, 1:17, 32].ravel())
        u, got = packed("NAS_MG_y")  # u(18, 18, 18): plane y = DIM2-2
        np.testing.assert_array_equal(got, u.reshape(18, 18, 18)[1:17, 16, 1:17].ravel())
        u, got = packed("NAS_MG_z")  # plane z = 1
        np.testing.assert_array_equal(got, u.reshape(18, 18, 18)[1, 1:17, 1:17].ravel())
        p = patterns["NAS_LU_y"]
        assert p.packed_nbytes == 40 * 51
        u, got = packed("NAS_LU_y")  # u(5, 35, 53): y = 33, z = 1..51
        np.testing.assert_array_equal(got, u[: 5 * 35 * 53].reshape(53, 35, 5)[1:52, 33, :].ravel())
        u, got = packed("FACE3D_x")  # (18, 18, 18) with ghosts: last interior x plane
        np.testing.assert_array_equal(got, u.reshape(18, 18, 18)[1:17, 1:17, 16].ravel())
        u, got = packed("FACE3D_z")
        np.testing.assert_array_equal(got, u.reshape(18, 18, 18)[16, 1:17, 1:17].ravel())
        # FFT: a (nloc, N) complex slab; block i, column j, row r <- M[r, i*nloc + j]
        p = patterns["FFT"]
        assert p.count == 4
        m = np.arange(p.buffer_nbytes // 16) * (1 + 1j)
        got = mpi_pack(m, p.datatype, p.count).view(np.complex128)
        nloc = int(round(np.sqrt(m.size / 4)))
        np.testing.assert_array_equal(got, m.reshape(nloc, 4, nloc).transpose(1, 2, 0).ravel())
    finally:
        for p in patterns.values():
            p.free()


def test_pattern_free_twice_and_context_manager():
    patterns = tempi_sweep((8,), total_nbytes=64)
    p = patterns["vec_b8_s512"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.count = 2
    with p:
        assert p.datatype != MPI.DATATYPE_NULL
    assert p.datatype == MPI.DATATYPE_NULL
    p.free()


def test_tempi_sweep_default_sizes():
    patterns = tempi_sweep()
    try:
        assert list(patterns) == [f"vec_b{b}_s512" for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)]
        for name, p in patterns.items():
            b = int(name.split("_")[1][1:])
            assert p.packed_nbytes == 1 << 20 and p.count == 1
            assert p.buffer_nbytes == ((1 << 20) // b - 1) * 512 + b
    finally:
        for p in patterns.values():
            p.free()


def test_tempi_sweep_round_trip():
    patterns = tempi_sweep(total_nbytes=4096)
    try:
        for name, p in patterns.items():
            b = int(name.split("_")[1][1:])
            x, packed, _ = check_round_trip(p.datatype, p.count, np.random.default_rng(b))
            padded = np.zeros(4096 // b * 512, np.uint8)
            padded[: x.size] = x
            np.testing.assert_array_equal(packed, padded.reshape(-1, 512)[:, :b].ravel())
    finally:
        for p in patterns.values():
            p.free()


def test_tempi_sweep_bad_arguments():
    with pytest.raises(ValueError, match="block_nbytes_list"):
        tempi_sweep((1024,))
    with pytest.raises(ValueError, match="block_nbytes_list"):
        tempi_sweep((3,))
    with pytest.raises(ValueError, match="target_nbytes"):
        ddtbench_patterns(0)


def test_wrf_layout_matches_manual_packing():
    patterns = ddtbench_patterns(8 * 1024)
    try:
        for axis, (d1, d3), (ii, jj) in (
            ("y", (11, 52), (slice(5, 7), slice(7, 10))),  # n = 2 columns of halo width
            ("x", (32, 10), (slice(22, 25), slice(4, 6))),
        ):
            vec, sa = patterns[f"WRF_{axis}_vec"], patterns[f"WRF_{axis}_sa"]
            assert vec.buffer_nbytes == sa.buffer_nbytes
            u = np.arange(vec.buffer_nbytes // 4, dtype=np.float32)
            parts, at = [], 0
            for shape in [(d3, d1)] * 4 + [(d3, 65, d1)] * 3 + [(2, d3, 65, d1)] * 2:
                a = u[at: at + np.prod(shape)].reshape(shape)
                at += a.size
                if a.ndim == 2:
                    parts.append(a[jj, ii])
                elif a.ndim == 3:
                    parts.append(a[jj, :, ii])
                else:
                    parts.append(a[1:, jj, :, ii])
            expected = np.concatenate([p.ravel() for p in parts])
            assert at == u.size
            np.testing.assert_array_equal(mpi_pack(u, vec.datatype).view(np.float32), expected)
            np.testing.assert_array_equal(mpi_pack(u, sa.datatype).view(np.float32), expected)
    finally:
        for p in patterns.values():
            p.free()
