"""Surrogate data (serial): datasets and batches, normalizer, HDF5 round trip, 1-D generators, neuraloperator files."""

import os

import numpy as np
import pytest

from solvers.surrogates.burgers import burgers_1d, grf_1d, heat_1d
from solvers.surrogates.data import (
    ArrayDataset,
    GaussianNormalizer,
    load_darcy_pt,
    load_h5,
    neuralop_file,
    write_dataset,
)

WHEEL = os.environ.get("NEURALOP_WHEEL", "")  # a neuraloperator 0.3.0 wheel, for the extraction test


def test_batches_seeded_and_complete():
    ds = ArrayDataset(np.zeros((10, 1, 4)), np.zeros((10, 1, 4)))
    b1 = ds.batches(3, epoch=2, seed=5)
    b2 = ds.batches(3, epoch=2, seed=5)
    assert [list(b) for b in b1] == [list(b) for b in b2]
    assert [len(b) for b in b1] == [3, 3, 3, 1]
    assert sorted(np.concatenate(b1)) == list(range(10))
    assert [list(b) for b in ds.batches(3, epoch=3, seed=5)] != [list(b) for b in b1]
    assert [len(b) for b in ds.batches(3, drop_last=True)] == [3, 3, 3]
    assert list(np.concatenate(ds.batches(4, shuffle=False))) == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        ds.batches(0)
    with pytest.raises(ValueError, match="different numbers"):
        ArrayDataset(np.zeros((3, 1, 4)), np.zeros((2, 1, 4)))
    with pytest.raises(ValueError, match="samples, channels"):
        ArrayDataset(np.zeros(3), np.zeros(3))


def test_normalizer_round_trip_and_gradient(rng):
    y = rng.standard_normal((6, 2, 5, 4)) * 3 + 2
    n = GaussianNormalizer.fit(y)
    e = n.encode(y)
    assert np.allclose(e.mean(axis=(0, 2, 3)), 0) and np.allclose(e.std(axis=(0, 2, 3)), 1, atol=1e-6)
    assert np.allclose(n.decode(e), y)
    # decode is affine: its gradient is the scale
    g = rng.standard_normal(y.shape)
    v = rng.standard_normal(y.shape)
    eps = 1e-6
    fd = (np.sum(g * n.decode(v + eps * g)) - np.sum(g * n.decode(v - eps * g))) / (2 * eps)
    assert np.isclose(fd, np.sum(n.decode_grad(g) * g))
    pp = GaussianNormalizer.fit(y, per_point=True)
    assert pp.mean.shape == (1, 2, 5, 4)
    with pytest.raises(ValueError, match="per-point"):
        pp.encode(np.zeros((1, 2, 3, 3)))


def test_h5_round_trip(tmp_path):
    pytest.importorskip("h5py")
    x = np.arange(24.0).reshape(2, 3, 4)
    write_dataset(str(tmp_path / "a.h5"), x, -x, problem="test")
    ds = load_h5(str(tmp_path / "a.h5"))
    assert ds.x.shape == (2, 1, 3, 4) and np.array_equal(ds.y[:, 0], -x)
    assert len(load_h5(str(tmp_path / "a.h5"), n=1, start=1)) == 1
    with pytest.raises(ValueError, match="asked for samples"):
        load_h5(str(tmp_path / "a.h5"), n=5)
    with pytest.raises(ValueError, match="cannot open"):
        load_h5(str(tmp_path / "missing.h5"))


def test_heat_exact_for_a_sine():
    n = 32
    x = np.arange(n) / n
    u0 = np.sin(2 * np.pi * 3 * x)
    u = heat_1d(u0, nu=0.01, t=0.5)
    assert np.allclose(u, np.exp(-0.01 * (6 * np.pi) ** 2 * 0.5) * u0, atol=1e-13)


def test_burgers_small_amplitude_is_heat_and_converges():
    n = 64
    x = np.arange(n) / n
    u0 = 1e-4 * np.sin(2 * np.pi * x)
    u = burgers_1d(u0, nu=0.05, t=0.5)
    ref = heat_1d(u0, nu=0.05, t=0.5)
    assert np.abs(u - ref).max() < 1e-3 * np.abs(ref).max()  # nonlinear term ~ 3e-4 relative
    big = grf_1d(2, n, seed=3, sigma=3.0)
    coarse = burgers_1d(big, nu=0.05, t=0.3, cfl=0.4)
    fine = burgers_1d(big, nu=0.05, t=0.3, cfl=0.05)
    assert np.abs(coarse - fine).max() < 1e-6 * np.abs(fine).max()
    assert np.allclose(coarse.mean(axis=-1), big.mean(axis=-1), atol=1e-12)  # conservation
    assert np.abs(fine - heat_1d(big, nu=0.05, t=0.3)).max() > 1e-3  # the nonlinearity matters


def test_grf_1d():
    a = grf_1d(3, 16, seed=1)
    assert a.shape == (3, 16) and np.allclose(a.mean(axis=-1), 0)
    assert np.array_equal(a, grf_1d(3, 16, seed=1)) and not np.array_equal(a, grf_1d(3, 16, seed=2))
    with pytest.raises(ValueError, match="resolution"):
        grf_1d(1, 2)


def test_neuralop_darcy_files():
    pytest.importorskip("torch", reason="torch is not installed: neuraloperator's .pt files cannot be read")
    try:
        path = neuralop_file("darcy_train_16", wheel=WHEEL if WHEEL and os.path.exists(WHEEL) else None)
    except FileNotFoundError as exc:
        pytest.skip(f"neuraloperator's data files are not available here: {exc}")
    ds = load_darcy_pt(path, n=20)
    assert ds.x.shape == (20, 1, 16, 16) and ds.y.shape == (20, 1, 16, 16)
    assert set(np.unique(ds.x)) <= {0.0, 1.0}
    test32 = load_darcy_pt(neuralop_file("darcy_test_32", wheel=WHEEL if WHEEL and os.path.exists(WHEEL) else None))
    assert test32.x.shape == (50, 1, 32, 32)
    with pytest.raises(ValueError, match="n:"):
        load_darcy_pt(path, n=5000)
    with pytest.raises(ValueError, match="name"):
        neuralop_file("darcy_train_64")


def test_neuralop_file_from_wheel(tmp_path, monkeypatch):
    if not (WHEEL and os.path.exists(WHEEL)):
        pytest.skip(f"no neuraloperator wheel (NEURALOP_WHEEL={WHEEL!r}): pip download --no-deps neuraloperator==0.3.0")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "neuralop" else real(name, *a))
    path = neuralop_file("darcy_test_16", wheel=WHEEL, cache_dir=str(tmp_path))
    assert path.startswith(str(tmp_path)) and os.path.getsize(path) > 10000
    with pytest.raises(FileNotFoundError, match="NEURALOP_WHEEL"):
        neuralop_file("darcy_test_16", wheel=str(tmp_path / "none.whl"), cache_dir=str(tmp_path / "c"))
