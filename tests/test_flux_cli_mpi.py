"""The flux-transport CLI never hangs: every error on any rank ends the whole job, message printed once.

Each case launches ``mpiexec -n 2`` and ``-n 4`` ``python -m solvers.flux_transport`` as a
subprocess under a timeout (a hang fails the test). Faults that strike one rank mid-run are
injected with the test-only ``HPCORE_TEST_FAULT`` hook (solvers/flux_transport/runner.py).
Runs from the serial pytest pass (``python -m pytest tests/test_flux_cli_mpi.py``); under
``mpiexec ... pytest --with-mpi`` these tests skip, since they launch their own jobs.
"""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--set", "grid.ntheta=21", "--set", "grid.nphi=40", "--set", "time.end_h=6", "--set", "output.plots=false",
         "--set", "time.dt_max_h=1.0", "--quiet"]
LEAKY = re.compile(r"^(PMI_|PMIX_|PMI2_|HYDRA_|HYDI_|MPI_LOCALRANKID|MPI_LOCALNRANKS|OMPI_|PRTE_)")
TIMEOUT = 240  # a hang shows as subprocess.TimeoutExpired


def _world_size():
    try:
        from mpi4py import MPI

        return MPI.COMM_WORLD.Get_size()
    except ImportError:  # pragma: no cover
        return 1


pytestmark = [
    pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec on PATH"),
    pytest.mark.skipif(_world_size() > 1, reason="launches its own mpiexec jobs; run from the serial pytest pass"),
    pytest.mark.timeout(2 * TIMEOUT + 60),
]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not LEAKY.match(k)}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["FLUX_TRANSPORT_ABORT_AFTER_S"] = "3"
    env.pop("HPCORE_TEST_FAULT", None)
    env.update(extra)
    return env


def _cli(tmp_path, ranks, *args, **env):
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "solvers.flux_transport", *args]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), timeout=TIMEOUT, cwd=str(tmp_path),
                         check=False)
    res.wall = time.monotonic() - t0
    res.text = res.stdout + res.stderr
    return res


RANKS = pytest.mark.parametrize("ranks", [2, 4])


@RANKS
def test_unknown_key_refused_once(tmp_path, ranks):
    res = _cli(tmp_path, ranks, *SMALL, "--set", "time.end=12")
    assert res.returncode == 2, res.text
    assert res.text.count("unknown key time.'end'") == 1, res.text


@RANKS
def test_overrides_in_any_order_on_every_rank(tmp_path, ranks):
    m = tmp_path / "m.h5"
    _write_map(m)
    for pair in (["n_realizations=3", "diffusion.eta_km2_s=[1.,2.,3.]"],
                 ["initial.kind=\"file\"", f"initial.file=\"{m}\""],
                 ["time.start_h=100", "time.end_h=124"]):
        for order in (pair, pair[::-1]):
            args = [a for kv in order for a in ("--set", kv)]
            res = _cli(tmp_path, ranks, *args, "--print-config")
            assert res.returncode == 0, res.text
            assert res.stdout.count('"n_realizations"') == 1  # printed once


def _write_map(path, ntheta=21, nphi=40):
    sys.path.insert(0, ROOT)
    import numpy as np

    from solvers.flux_transport.grid import SphereGrid
    from solvers.flux_transport.io import write_map

    g = SphereGrid(ntheta, nphi)
    write_map(str(path), np.cos(g.theta)[:, None] * np.ones(nphi), g, single_precision=False)


@RANKS
def test_output_directory_not_writable(tmp_path, ranks):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    res = _cli(tmp_path, ranks, *SMALL, "--out", str(blocker / "sub"))
    assert res.returncode != 0 and res.wall < TIMEOUT, res.text
    assert res.text.count(str(blocker / "sub")) == 1, res.text


@RANKS
def test_quotes_in_out_are_kept_verbatim(tmp_path, ranks):
    res = _cli(tmp_path, ranks, *SMALL, "--set", "time.end_h=1", "--out", "it's")
    assert res.returncode == 0, res.text
    assert os.path.isfile(tmp_path / "it's" / "ft_history_r000001.out")
    assert not any('"' in p for p in os.listdir(tmp_path))


@RANKS
@pytest.mark.parametrize("fault, rank, expect", [
    ("memoryerror", 1, "out of memory"),
    ("enospc", 0, "No space left on device"),
    ("sigint", 1, "interrupted"),
])
def test_fault_on_one_rank_mid_run_ends_the_job(tmp_path, ranks, fault, rank, expect):
    res = _cli(tmp_path, ranks, *SMALL, "--set", "time.end_h=200", "--out", "o",
               HPCORE_TEST_FAULT=f"{fault}@rank{rank}@step2")
    assert res.returncode != 0, res.text
    assert res.text.count(expect) == 1, res.text
    assert f"rank {rank} of {ranks}: run failed" in res.text
    assert res.wall < 120, f"took {res.wall:.0f} s"


@RANKS
def test_fault_in_setup_on_one_rank_ends_the_job(tmp_path, ranks):
    res = _cli(tmp_path, ranks, *SMALL, HPCORE_TEST_FAULT=f"valueerror@rank{ranks - 1}@phase:set-up")
    assert res.returncode == 2, res.text
    assert res.text.count("test fault") == 1, res.text
    assert "did not reach the end of the set-up phase" in res.text


@RANKS
def test_same_error_on_every_rank_printed_once(tmp_path, ranks):
    faults = ",".join(f"valueerror@rank{r}@phase:pre-flight" for r in range(ranks))
    res = _cli(tmp_path, ranks, *SMALL, HPCORE_TEST_FAULT=faults)
    assert res.returncode == 2, res.text
    assert res.text.count("test fault") == 1, res.text
    assert "flux_transport: pre-flight refused" in res.text


@RANKS
def test_impossibly_long_run_refused_with_the_number(tmp_path, ranks):
    res = _cli(tmp_path, ranks, *SMALL, "--set", "diffusion.eta_km2_s=1e16")
    assert res.returncode == 2, res.text
    m = re.search(r"needs at least (\d+) diffusion stages", res.text)
    assert m and int(m.group(1)) > 200_000, res.text
    assert res.text.count("beyond the bound") == 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    res = _cli(folder, 2, *SMALL, "--out", "run")
    assert res.returncode == 0, res.text
    return folder / "run" / "checkpoint.h5"


def _damaged(checkpoint, tmp_path, what):
    import h5py

    path = tmp_path / "damaged.h5"
    shutil.copy(checkpoint, path)
    with h5py.File(path, "a") as h:
        if what == "Data":
            del h["Data"]
        else:
            del h.attrs[what]
    return str(path)


@RANKS
@pytest.mark.parametrize("what, expect", [("Data", "lacks the dataset 'Data'"),
                                          ("state", "lacks the attribute(s) state")])
def test_damaged_checkpoint_refused(tmp_path, checkpoint, ranks, what, expect):
    res = _cli(tmp_path, ranks, *SMALL, "--set", "time.end_h=8", "--restart", _damaged(checkpoint, tmp_path, what))
    assert res.returncode == 2, res.text
    assert res.text.count(expect) == 1, res.text
    assert "damaged.h5" in res.text


@RANKS
def test_restart_refuses_another_grid_and_asks_for_changed_end(tmp_path, checkpoint, ranks):
    res = _cli(tmp_path, ranks, *SMALL, "--set", "grid.ntheta=25", "--restart", str(checkpoint))
    assert res.returncode == 2 and res.text.count("grid.ntheta: checkpoint 21, now 25") == 1, res.text
    res = _cli(tmp_path, ranks, *SMALL, "--set", "time.end_h=8", "--restart", str(checkpoint), "--out", "r")
    assert res.returncode == 2 and "--allow-change time.end_h" in res.text, res.text
    res = _cli(tmp_path, ranks, *SMALL, "--set", "time.end_h=8", "--restart", str(checkpoint), "--out", "r",
               "--allow-change", "time.end_h")
    assert res.returncode == 0, res.text
    with open(tmp_path / "r" / "ft_history_r000001.out") as fh:
        assert float(fh.readlines()[-1].split()[1]) == 8.0
    res = _cli(tmp_path, ranks, *SMALL, "--set", "diffusion.eta_km2_s=[1.0, 2.0]", "--restart", str(checkpoint),
               "--allow-change", "diffusion.eta_km2_s")
    assert res.returncode == 2 and "a restart can only be allowed to change" in res.text, res.text
