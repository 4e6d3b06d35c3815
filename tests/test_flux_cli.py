"""CLI building blocks without MPI jobs: overrides applied together, value parsing, restart checks, fault hook."""

import errno

import pytest

from solvers.flux_transport.config import (
    DEFAULT_CONFIG_PATH,
    RESTART_SAFE,
    ConfigError,
    _parse_value,
    load_config,
    restart_check,
)
from solvers.flux_transport.runner import FaultHook, PhaseError, describe, exit_status


@pytest.mark.parametrize("pair", [
    ["n_realizations=3", "diffusion.eta_km2_s=[1.,2.,3.]"],
    ["initial.kind=\"file\"", "initial.file=\"/data/m.h5\""],
    ["initial.kind=file", "initial.file=/data/m.h5"],  # the shell ate the quotes
    ["time.start_h=100", "time.end_h=124"],
    ["time.start_h=700", "time.end_h=724"],  # start after the file's end: only valid together
])
def test_overrides_are_applied_together_in_any_order(pair):
    for order in (pair, pair[::-1]):
        cfg = load_config(DEFAULT_CONFIG_PATH, overrides=order)
        d = cfg.to_dict()
        for kv in order:
            key, raw = kv.split("=", 1)
            section, _, name = key.rpartition(".")
            value = d[section][name] if section else d[name]
            assert value == _parse_value(key, raw)


def test_the_last_of_repeated_overrides_wins_and_errors_name_the_key():
    assert load_config(DEFAULT_CONFIG_PATH, overrides=["time.end_h=5", "time.end_h=7"]).time.end_h == 7.0
    with pytest.raises(ConfigError, match="one value per realization"):
        load_config(DEFAULT_CONFIG_PATH, overrides=["n_realizations=3"])
    with pytest.raises(ConfigError, match=r"--set time.end_h: cannot read the value '\[1,'"):
        load_config(DEFAULT_CONFIG_PATH, overrides=["time.end_h=[1,"])


@pytest.mark.parametrize("raw, value", [
    ("1.", 1.0), ("[1.,2.,3.]", [1.0, 2.0, 3.0]), ("2", 2), ("true", True), ('"a b"', "a b"), ("file", "file"),
    ("/abs/path.h5", "/abs/path.h5"), ('"it\'s"', "it's"), ("1e3", 1000.0), ("[1.5, 2.]", [1.5, 2.0]),
])
def test_override_values(raw, value):
    assert _parse_value("k", raw) == value


def test_out_with_quotes_is_a_plain_directory_name():
    cfg = load_config(DEFAULT_CONFIG_PATH, data={"output": {"directory": "it's \"here\""}})
    assert cfg.output.directory == "it's \"here\""


def test_restart_check():
    old = load_config(DEFAULT_CONFIG_PATH)
    saved = old.to_dict()
    assert restart_check(saved, old, time_h=10.0) == []
    assert restart_check(saved, load_config(DEFAULT_CONFIG_PATH, overrides=["parallel.realization_groups=2",
                                                                             "output.directory=\"x\""])) == []
    new = load_config(DEFAULT_CONFIG_PATH, overrides=["grid.ntheta=91", "diffusion.eta_km2_s=[1., 2.]"])
    with pytest.raises(ConfigError, match=r"diffusion.eta_km2_s: checkpoint \[300.0, 600.0\], now \[1.0, 2.0\]; "
                                          r"grid.ntheta: checkpoint 181, now 91"):
        restart_check(saved, new)
    longer = load_config(DEFAULT_CONFIG_PATH, overrides=["time.end_h=1000", "output.history_cadence_h=2"])
    with pytest.raises(ConfigError, match="pass --allow-change output.history_cadence_h --allow-change time.end_h"):
        restart_check(saved, longer)
    got = restart_check(saved, longer, allow=["time.end_h", "output.history_cadence_h"], time_h=672.0)
    assert [k for k, _, _ in got] == ["output.history_cadence_h", "time.end_h"]
    with pytest.raises(ConfigError, match="a restart can only be allowed to change"):
        restart_check(saved, new, allow=["grid.ntheta"])
    with pytest.raises(ConfigError, match="is not after the checkpoint's time 672.0 h"):
        restart_check(saved, old, time_h=672.0)
    assert "time.end_h" in RESTART_SAFE


def test_fault_hook_parsing_and_firing():
    import os

    os.environ["HPCORE_TEST_FAULT"] = "memoryerror@rank1@step3,enospc@rank0@phase:run"
    try:
        f0, f1 = FaultHook.from_env(0), FaultHook.from_env(1)
    finally:
        del os.environ["HPCORE_TEST_FAULT"]
    f0.fire("step3")
    with pytest.raises(OSError) as info:
        f0.fire("phase:run")
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(MemoryError):
        f1.fire("step3")
    assert not FaultHook.from_env(5)
    os.environ["HPCORE_TEST_FAULT"] = "boom@rank1@step3"
    try:
        with pytest.raises(ValueError, match="HPCORE_TEST_FAULT: expected KIND@rankR"):
            FaultHook.from_env(0)
    finally:
        del os.environ["HPCORE_TEST_FAULT"]


def test_exit_status_and_messages():
    assert exit_status(ConfigError("x")) == 2 and exit_status(KeyboardInterrupt()) == 130
    assert exit_status(MemoryError()) == 1 and exit_status(OSError(errno.ENOSPC, "No space")) == 1
    assert describe(OSError(errno.ENOSPC, "No space left on device", "/d/f.h5")) == \
        "No space left on device: '/d/f.h5'"
    assert describe(MemoryError()).startswith("out of memory")
    assert describe(KeyError("state")) == "missing 'state'"
    assert PhaseError("run", "m", 1).status == 1


def test_one_rank_guard_settles_locally():
    from mpi4py import MPI

    from solvers.flux_transport.runner import Guard

    g = Guard(MPI.COMM_SELF)
    try:
        g.settle("x", None)
        with pytest.raises(PhaseError, match="bad key") as info:
            g.run_phase("configuration", _raise, ConfigError("bad key"))
        assert info.value.status == 2 and info.value.phase == "configuration"
        assert g.run_phase("x", lambda: 5) == 5
    finally:
        g.free()


def _raise(exc):
    raise exc
