"""The performance model: defaults, storage, interpolation, and the transport's choice."""

import json

import numpy as np
import pytest
from mpi4py import MPI

import hpcore
from hpcore import perfmodel


def test_defaults_exist_and_grow_with_run():
    m = perfmodel.PerfModel()
    times = [m.pack_time(1 << 20, run) for run in (1, 4, 16, 256, 4096)]
    assert all(t > 0 for t in times) and times == sorted(times, reverse=True)
    assert m.message_time("host_pack", 1 << 20) > m.message_time("host_pack", 1)
    for meth in perfmodel.METHODS:
        assert m.predict(meth, 1 << 16, 8) > 0
    with pytest.raises(ValueError, match="method"):
        m.predict("carrier-pigeon", 10, 1)


def test_interpolation_is_loglog_and_clamped():
    m = perfmodel.PerfModel(pack_bw={"host": {1.0: 1e9, 100.0: 100e9}})
    assert m.pack_time(1e9, 10) == pytest.approx(1e9 / 10e9)
    assert m.pack_time(1e9, 0.01) == pytest.approx(1.0)  # clamped at the first point
    assert m.pack_time(1e9, 1e6) == pytest.approx(0.01)


def test_save_load_roundtrip(tmp_path):
    m = perfmodel.PerfModel(
        pack_bw={"host": {1: 1e9, 64: 8e9}, "mpi": {1: 0.5e9, 64: 2e9}},
        message={"host_pack": {1: 2e-6, 1 << 20: 1e-4}},
        staging={"latency_s": 1e-5, "bandwidth": 2e10},
    )
    path = m.save(tmp_path / "model.json")
    got = perfmodel.load(path)
    assert got.pack_bw == {k: {float(a): b for a, b in v.items()} for k, v in m.pack_bw.items()}
    assert got.staging == m.staging and got.source == str(path)
    assert got.predict("host_pack", 4096, 8) == pytest.approx(m.predict("host_pack", 4096, 8))


def test_missing_or_damaged_files_fall_back(tmp_path, caplog):
    assert perfmodel.load(tmp_path / "nope.json").source == "defaults"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert perfmodel.load(bad).source == "defaults"
    bad.write_text(json.dumps({"version": 99}))
    assert perfmodel.load(bad).source == "defaults"


def test_default_path_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HPCORE_CACHE_DIR", str(tmp_path))
    assert perfmodel.default_path().parent == tmp_path


def test_transport_choice_follows_the_model():
    t = MPI.INT.Create_vector(1000, 1, 3).Commit()
    try:
        buf = np.zeros(3000, np.int32)
        slow_mpi = perfmodel.PerfModel(pack_bw={"host": {1: 10e9}, "mpi": {1: 0.1e9}})
        fast_mpi = perfmodel.PerfModel(pack_bw={"host": {1: 0.1e9}, "mpi": {1: 10e9}})
        assert hpcore.Comm(MPI.COMM_SELF, model=slow_mpi).choose(buf, t) == "host_pack"
        assert hpcore.Comm(MPI.COMM_SELF, model=fast_mpi).choose(buf, t) == "mpi"
        assert hpcore.Comm(MPI.COMM_SELF, model=slow_mpi).choose(buf, MPI.INT, 3000) == "mpi"  # contiguous
        assert hpcore.Comm(MPI.COMM_SELF, model=slow_mpi, method="mpi").choose(buf, t) == "mpi"
    finally:
        t.Free()


def test_mean_run():
    t = MPI.DOUBLE.Create_vector(10, 3, 4).Commit()
    try:
        assert perfmodel.mean_run(hpcore.canonicalize(t)) == 24
    finally:
        t.Free()


def test_typed_send_penalty_default_and_measured():
    m = perfmodel.PerfModel()
    assert m.typed_extra(4096) == 0.0 and m.typed_extra(8192) == 0.0  # eager: MPI packs straight in
    assert m.typed_extra(1 << 20) == pytest.approx((1 << 20) / 0.45e9)
    # unmeasured, a large vector of doubles goes through hpcore's pack, a small one through MPI
    assert m.predict("host_pack", 1 << 16, 8) < m.predict("mpi", 1 << 16, 8)
    assert m.predict("mpi", 1 << 10, 8) < m.predict("host_pack", 1 << 10, 8)
    measured = perfmodel.PerfModel(pack_bw={"mpi": {8: 1e9}}, message={
        "host_pack": {1024: 1e-6, 1 << 20: 1e-4}, "mpi_typed": {1024: 1e-6, 1 << 20: 1e-2}})
    n = 1 << 20
    expect = 1e-2 - 1e-4 - 2 * n / 1e9
    assert measured.typed_extra(n) == pytest.approx(expect)
    assert measured.typed_extra(1024) == 0.0  # measured cheaper than pack + wire: clamped at 0
