"""solvers.online, serial parts: wire format, buffers, parameter designs, study checks."""

import numpy as np
import pytest

from solvers.online import protocol as P
from solvers.online.buffers import make_buffer
from solvers.online.sampling import ParameterSampler
from solvers.online.study import StudyError, load_study


def test_header_round_trip(rng):
    data = rng.standard_normal(7)
    h = P.Header(P.KIND_DATA, 12, 3, 45, 1, 4, 7, (0.25, -1.5, 3.0), "u_field")
    got, payload = P.unpack_message(P.pack_message(h, data))
    assert (got.kind, got.member, got.attempt, got.time_step, got.rank, got.size, got.local_size) == \
        (P.KIND_DATA, 12, 3, 45, 1, 4, 7)
    assert got.params == (0.25, -1.5, 3.0) and got.field == "u_field"
    np.testing.assert_array_equal(payload, data)
    assert P.HEADER_NBYTES == 224


def test_header_refusals():
    with pytest.raises(ValueError, match="magic"):
        P.unpack_message(np.zeros(P.HEADER_NBYTES, dtype=np.uint8))
    with pytest.raises(ValueError, match="field_name"):
        P.pack_message(P.Header(1, 0, 0, 0, 0, 1, 0, (), "x" * 40))
    with pytest.raises(ValueError, match="params"):
        P.pack_message(P.Header(1, 0, 0, 0, 0, 1, 0, tuple(range(9)), "u"))
    msg = P.pack_message(P.Header(1, 0, 0, 0, 0, 1, 3, (), "u"), np.zeros(3))
    with pytest.raises(ValueError, match="payload"):
        P.unpack_message(msg[:-8])


def test_routing():
    assert [P.trainer_of(3, t, 2) for t in range(4)] == [1, 0, 1, 0]
    assert {P.trainer_of(3, t, 2, "one") for t in range(4)} == {0}


def _fill(buf, n, start=0):
    for i in range(start, start + n):
        buf.add(np.full(2, float(i)), np.full(1, float(i)), (i // 10, i % 10))


def test_fifo_order_and_room():
    b = make_buffer("fifo", 5)
    _fill(b, 5)
    assert not b.has_room()
    x, _ = b.batch(3)
    assert x[:, 0].tolist() == [0, 1, 2] and len(b) == 2 and b.has_room()


def test_firo_watermark_and_reuse(rng):
    b = make_buffer("firo", 10, seed=3, watermark=6, reuse=2)
    _fill(b, 5)
    assert not b.can_batch(final=False) and b.can_batch(final=True)
    _fill(b, 1, 5)
    uses = {}
    while len(b):
        x, _ = b.batch(4)
        for v in x[:, 0]:
            uses[v] = uses.get(v, 0) + 1
    assert uses == {float(i): 2 for i in range(6)}  # each sample exactly `reuse` times, then gone


def test_reservoir_replaces_only_used():
    b = make_buffer("reservoir", 4, seed=1)
    _fill(b, 4)
    assert not b.has_room()
    b.batch(1)
    assert b.has_room()
    used = [k for k, u in zip(b.keys, b.uses) if u]
    b.add(np.zeros(2), np.zeros(1), (99, 0))
    assert (99, 0) in b.keys and used[0] not in b.keys and len(b) == 4


@pytest.mark.parametrize("policy", ["fifo", "firo", "reservoir"])
def test_buffer_state_round_trip(policy):
    a = make_buffer(policy, 12, seed=5, watermark=3, reuse=2)
    _fill(a, 9)
    a.batch(3)
    b = make_buffer(policy, 12, seed=0, watermark=3, reuse=2)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        xa, _ = a.batch(2)
        xb, _ = b.batch(2)
        np.testing.assert_array_equal(xa, xb)
    with pytest.raises(ValueError, match="buffer checkpoint"):
        make_buffer("fifo" if policy != "fifo" else "firo", 12).load_state_dict(a.state_dict())


def test_buffer_refusals():
    with pytest.raises(ValueError, match="policy"):
        make_buffer("lifo", 3)
    with pytest.raises(ValueError, match="watermark"):
        make_buffer("firo", 3, watermark=4)
    with pytest.raises(ValueError, match="capacity"):
        make_buffer("fifo", 0)


@pytest.mark.parametrize("method", ["uniform", "lhs", "halton"])
def test_sampler_seeded_in_bounds(method):
    s = ParameterSampler([(0, 1), (10, 20)], method, seed=7)
    d = s.design(16)
    np.testing.assert_array_equal(d, ParameterSampler([(0, 1), (10, 20)], method, seed=7).design(16))
    assert d.shape == (16, 2) and (d[:, 0] >= 0).all() and (d[:, 0] <= 1).all() and (d[:, 1] >= 10).all()
    assert not np.array_equal(d, ParameterSampler([(0, 1), (10, 20)], method, seed=8).design(16))
    r = s.redraw()
    assert 0 <= r[0] <= 1 and 10 <= r[1] <= 20


def test_lhs_is_stratified():
    d = ParameterSampler([(0, 1)] * 3, "lhs", seed=2).design(10)
    for k in range(3):
        assert sorted(np.floor(d[:, k] * 10).astype(int).tolist()) == list(range(10))


def test_sampler_refusals():
    with pytest.raises(ValueError, match="bounds"):
        ParameterSampler([(1, 0)])
    with pytest.raises(ValueError, match="method"):
        ParameterSampler([(0, 1)], "sobolx")


def test_study_checks(tmp_path):
    s = load_study(data={"study": {"members": 4}, "buffer": {"policy": "fifo"}},
                   overrides=["train.max_steps=7", "study.run_dir=r"])
    assert s.train.max_steps == 7 and s.study.members == 4 and s.study.run_dir.endswith("r")
    with pytest.raises(StudyError, match="buffer.policy"):
        load_study(data={"buffer": {"policy": "lifo"}})
    with pytest.raises(StudyError, match="study.validation_members"):
        load_study(data={"study": {"members": 2, "validation_members": 2}})
    with pytest.raises(StudyError, match="unknown key"):
        load_study(data={"train": {"max_step": 3}})
    with pytest.raises(StudyError, match="unknown section"):
        load_study(data={"trainer": {}})
    with pytest.raises(StudyError, match="train.max_wall_s"):
        load_study(data={"train": {"max_wall_s": -1.0}})
    with pytest.raises(StudyError, match="study.connect_timeout_s"):
        load_study(data={"study": {"connect_timeout_s": 0.0}})


def test_launcher_retries_then_redraws(tmp_path):
    """Bookkeeping of failures (no processes): max_retries tries with the same parameters, then the
    parameters are redrawn and the count starts again; every try has its own attempt number."""
    import time

    from solvers.online.launcher import Launcher
    from solvers.online.sampling import ParameterSampler

    study = load_study(data={"study": {"members": 3, "max_retries": 2, "run_dir": str(tmp_path)},
                             "parameters": {"bounds": [[0.0, 1.0], [5.0, 6.0]]}})
    sampler = ParameterSampler(study.parameters.bounds, study.parameters.method, study.study.seed)
    launcher = Launcher(study, str(tmp_path / "ports.txt"), sampler)
    first = list(launcher.records[1]["params"])
    seen = []
    for attempt in range(4):
        rec = launcher.records[1]
        rec["state"], rec["tries"] = "running", rec["tries"] + 1  # what _start does, without a process
        launcher.running[1] = {"proc": None, "start": time.time(), "attempt": rec["attempt"]}
        failed = launcher.connect_failed(1, attempt)
        assert failed == [(1, attempt)] and launcher.queue[0] == 1
        seen.append((rec["attempt"], list(rec["params"]), rec["redraws"]))
    assert [s[0] for s in seen] == [1, 2, 3, 4]
    assert seen[0][1] == first and seen[1][1] == first  # retries 1 and 2 keep the parameters
    assert seen[2][1] != first and seen[2][2] == 1      # then they are redrawn, within the bounds
    assert 0 <= seen[2][1][0] <= 1 and 5 <= seen[2][1][1] <= 6
    assert launcher.counts()["failed"] == 4
    assert launcher.connect_failed(1, 0) == []  # a stale try: nothing to fail
