"""Ring attention on one rank: reference vs finite differences, RingAttention on COMM_SELF, layouts, memory."""

import tracemalloc

import numpy as np
import pytest
from mpi4py import MPI

from comms.ring_attention import (
    RingAttention,
    attention_reference,
    sequence_positions,
    zigzag_merge,
    zigzag_split,
)


def _rel(a, b) -> float:
    """Largest error relative to the largest reference value (norm-wise, robust to tiny entries)."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-300))


def _qkv(rng, batch, length, d, dv, dtype=np.float64):
    q = rng.standard_normal(batch + (length, d)).astype(dtype)
    k = rng.standard_normal(batch + (length, d)).astype(dtype)
    v = rng.standard_normal(batch + (length, dv)).astype(dtype)
    return q, k, v


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_reference_gradient_matches_finite_differences(causal, rng):
    q, k, v = _qkv(rng, (2,), 7, 3, 4)
    dout = rng.standard_normal((2, 7, 4))
    scale = 0.7
    _, dq, dk, dv = attention_reference(q, k, v, causal, scale, dout=dout)

    def loss(q_, k_, v_):
        return float(np.sum(attention_reference(q_, k_, v_, causal, scale) * dout))

    h = 1e-6
    for name, arr, grad in (("q", q, dq), ("k", k, dk), ("v", v, dv)):
        fd = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            keep = arr[idx]
            arr[idx] = keep + h
            up = loss(q, k, v)
            arr[idx] = keep - h
            down = loss(q, k, v)
            arr[idx] = keep
            fd[idx] = (up - down) / (2 * h)
        assert _rel(grad, fd) < 1e-7, name


def test_reference_causal_first_query_sees_only_first_key(rng):
    q, k, v = _qkv(rng, (), 5, 2, 3)
    out = attention_reference(q, k, v, causal=True)
    np.testing.assert_allclose(out[0], v[0], rtol=1e-14)
    full = attention_reference(q, k, v, causal=False)
    np.testing.assert_allclose(out[-1], full[-1], rtol=1e-13)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("block_size", [None, 1, 4, 1024], ids=lambda b: f"block{b}")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_single_rank_equals_reference(causal, block_size, dtype, rng):
    q, k, v = _qkv(rng, (2, 3), 11, 5, 4, np.float64)
    dout = rng.standard_normal((2, 3, 11, 4))
    cast = [a.astype(dtype) for a in (q, k, v, dout)]
    # the reference in float64 on the (rounded) inputs the ring sees
    ref = attention_reference(*[a.astype(np.float64) for a in cast[:3]], causal, dout=cast[3].astype(np.float64))
    ra = RingAttention(MPI.COMM_SELF, causal, block_size=block_size)
    out = ra.forward(*cast[:3])
    grads = ra.backward(cast[3])
    tol = 1e-10 if dtype == "float64" else 1e-5
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out,) + grads, ref):
        assert got.dtype == np.dtype(dtype) and got.shape == want.shape, name
        assert _rel(got, want) < tol, (name, _rel(got, want))


def test_scale_and_unbatched_shapes(rng):
    q, k, v = _qkv(rng, (), 9, 3, 2)
    dout = rng.standard_normal((9, 2))
    ra = RingAttention(MPI.COMM_SELF, scale=0.25, block_size=2)
    out = ra.forward(q, k, v)
    ref = attention_reference(q, k, v, scale=0.25, dout=dout)
    assert _rel(out, ref[0]) < 1e-12
    for got, want in zip(ra.backward(dout), ref[1:]):
        assert _rel(got, want) < 1e-12
    # inputs are left alone
    q2, k2, v2 = _qkv(np.random.default_rng(int(rng.integers(1000))), (), 9, 3, 2)
    keep = [a.copy() for a in (q2, k2, v2)]
    ra.forward(q2, k2, v2)
    assert all(np.array_equal(a, b) for a, b in zip((q2, k2, v2), keep))


def test_zigzag_split_merge_and_positions(rng):
    x = rng.standard_normal((2, 24, 3))
    for size in (1, 2, 3, 4, 6):
        parts = zigzag_split(x, size)
        assert len(parts) == size and all(p.shape == (2, 24 // size, 3) for p in parts)
        np.testing.assert_array_equal(zigzag_merge(parts), x)
        for r in range(size):
            np.testing.assert_array_equal(zigzag_split(x, size, r), parts[r])
            pos = sequence_positions(24 // size, size, r, "zigzag")
            np.testing.assert_array_equal(zigzag_split(np.arange(24)[:, None], size, r)[:, 0], pos)
            np.testing.assert_array_equal(sequence_positions(24 // size, size, r, "contiguous"),
                                          np.arange(r * 24 // size, (r + 1) * 24 // size))
    assert sorted(np.concatenate([sequence_positions(6, 4, r) for r in range(4)]).tolist()) == list(range(24))
    with pytest.raises(ValueError, match="multiple of 2"):
        zigzag_split(x, 5)
    with pytest.raises(ValueError, match="even"):
        sequence_positions(5, 2, 0)
    with pytest.raises(ValueError, match="layout"):
        sequence_positions(4, 2, 0, "striped")


def test_bad_arguments_raise(rng):
    q, k, v = _qkv(rng, (), 6, 3, 3)
    with pytest.raises(ValueError, match="layout"):
        RingAttention(MPI.COMM_SELF, layout="ring")
    with pytest.raises(ValueError, match="block_size"):
        RingAttention(MPI.COMM_SELF, block_size=0)
    ra = RingAttention(MPI.COMM_SELF)
    with pytest.raises(ValueError, match="forward"):
        ra.backward(np.zeros((6, 3)))
    with pytest.raises(TypeError, match="float32 or float64"):
        ra.forward(q.astype(np.int64), k, v)
    with pytest.raises(TypeError, match="dtypes differ"):
        ra.forward(q.astype(np.float32), k.astype(np.float32), v)
    with pytest.raises(ValueError, match="shape"):
        ra.forward(q, k[:5], v)
    with pytest.raises(ValueError, match="dv"):
        ra.forward(q, k, v[:4])
    with pytest.raises(TypeError, match="NumPy or CuPy"):
        ra.forward(q.tolist(), k, v)
    ra.forward(q, k, v)
    with pytest.raises(ValueError, match="dout"):
        ra.backward(np.zeros((6, 4)))


def _peak_bytes(fn) -> int:
    """Peak of traced allocations (NumPy reports its data buffers to tracemalloc) during ``fn()``."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_memory_is_one_tile_of_scores_not_the_score_matrix(rng):
    length, d, block = 1024, 8, 64
    q, k, v = _qkv(rng, (), length, d, d)
    dout = rng.standard_normal((length, d))
    ra = RingAttention(MPI.COMM_SELF, causal=True, block_size=block)

    def both():
        ra.forward(q, k, v)
        ra.backward(dout)

    peak = _peak_bytes(both)
    linear = 32 * length * (d + 1) * 8  # q/k/v/out copies, accumulators, lse, gradients
    tiles = 4 * block * block * 8  # p and ds, plus a matmul temporary
    assert peak < linear + tiles, peak
    assert ra.stats["score_tile_shape"] == (block, block)
    # the measurement does see an L x L score matrix where one exists
    full = _peak_bytes(lambda: attention_reference(q, k, v, True, dout=dout))
    assert full > length * length * 8 > 4 * (linear + tiles) / 2
