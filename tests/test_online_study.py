"""solvers.online end to end: studies launched as separate MPI jobs (trainer on 2 ranks, members as
their own mpiexec jobs), a killed member, a killed and resumed trainer, the C client, an MPMD launch.

Every run is a subprocess under a timeout; its process group is killed when the time is up, and the
log is shown in the failure message.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "online")
ROOT = os.path.dirname(HERE)
STUDY = os.path.join(DATA, "heat.toml")
_UNDER_MPIEXEC = any(k in os.environ for k in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE"))
pytestmark = [
    pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec"),
    pytest.mark.skipif(_UNDER_MPIEXEC, reason="starts its own mpiexec jobs: run it serially, not under mpiexec"),
]


def _env(**extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(cmd, timeout_s, cwd, **extra):
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(**extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} ran past {timeout_s} s:\n{out[-4000:]}")
    return proc.returncode, out


def _kill_members(run_dir):
    for name in os.listdir(run_dir):
        if name.endswith(".pid"):
            try:
                os.killpg(int(open(os.path.join(run_dir, name)).read()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def _train(tmp_path, sets, timeout_s=150, name="run", **extra):
    run_dir = str(tmp_path / name)
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "solvers.online", "train", STUDY,
           "--set", f"study.run_dir={run_dir}", *[a for s in sets for a in ("--set", s)]]
    try:
        rc, out = _run(cmd, timeout_s, str(tmp_path), **extra)
    finally:
        if os.path.isdir(run_dir):
            _kill_members(run_dir)
    assert rc == 0, out[-4000:]
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f), out, run_dir


def _params(run_dir):
    with h5py.File(os.path.join(run_dir, "model_final.h5")) as f:
        return f["params"][...]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("receive", ["poll", "thread"])
def test_study_two_trainer_ranks(tmp_path, receive):
    """Receiving by probes between steps (poll) or in a thread beside training (thread)."""
    summary, out, _ = _train(tmp_path, ["buffer.policy=\"reservoir\"", "train.max_steps=2000",
                                        "train.min_steps_after_data=60", f"study.receive=\"{receive}\""])
    assert summary["samples_in"] == 5 * 12 and summary["messages_ignored"] == 0
    assert summary["members"]["failed"] == 0, out[-3000:]
    assert summary["n_val"] == 12  # one held-out member, 12 time steps
    assert summary["step"] >= 10
    assert "step" in out and "members running" in out  # progress lines
    first = summary["history"][0]["val_error"]
    assert summary["val_error"] < first, (first, summary["val_error"])


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig, why", [("KILL", "exit code"), ("STOP", "silent for")], ids=["kill-9", "frozen"])
def test_killed_member_is_retried(tmp_path, sig, why):
    """kill -9 of one member rank: mpiexec ends the member (exit code); a frozen rank (SIGSTOP): the member
    goes silent and the silence timeout catches it. Either way the member reruns and training goes on."""
    cmd = json.dumps(["{python}", os.path.join(DATA, "member_kill.py")])
    silence = 30 if sig == "STOP" else 120  # on 2 loaded cores a healthy member can pause for 30 s
    summary, out, run_dir = _train(tmp_path, [f"study.command={cmd}", f"study.silence_timeout_s={silence}",
                                              "train.max_steps=2000"], timeout_s=200, HPCORE_TEST_SIGNAL=sig)
    assert summary["members"]["failed"] >= 1, out[-3000:]
    assert summary["members"]["done"] == 6
    assert os.path.exists(os.path.join(run_dir, "member-2-1.log"))  # the retry ran
    assert "member 2 attempt 0 failed (" + why in out, out[-3000:]
    # keep policy: every (member, time step) of the 5 training members arrives exactly once
    assert summary["samples_in"] == 5 * 12, summary["samples_in"]
    assert summary["partial_dropped"] == {"staged": 0, "buffer": 0}


@pytest.mark.timeout(240)
def test_killed_member_partial_drop(tmp_path):
    """partial = "drop": the unused samples of the killed try leave the staging queue and the buffer,
    and the retry's time steps are all taken again (none ignored as repeats). The buffer holds every
    sample (reservoir, capacity 200), so the count is exact: what came in less what was dropped from the
    buffer is the 5 training members' 12 time steps, plus the killed try's samples already used."""
    cmd = json.dumps(["{python}", os.path.join(DATA, "member_kill.py")])
    summary, out, run_dir = _train(tmp_path, [f"study.command={cmd}", "study.partial=\"drop\"",
                                              "buffer.policy=\"reservoir\"", "buffer.capacity=200",
                                              "buffer.watermark=40", "train.max_steps=2000",
                                              "train.min_steps_after_data=5"],
                                   timeout_s=200, HPCORE_TEST_SIGNAL="KILL")
    assert summary["members"]["failed"] == 1 and summary["members"]["done"] == 6, out[-3000:]
    assert "member 2 attempt 0 failed (exit code" in out, out[-3000:]
    assert summary["messages_ignored"] == 0, summary  # the retry's steps 0-3 were not seen as repeats
    kept = summary["samples_in"] - summary["partial_dropped"]["buffer"]
    # member 2 dies before its time step 4: at most 4 of its samples were taken from attempt 0; a
    # watermark of 40 keeps them unused (no batch yet), so all of them leave the buffer again
    assert kept == 5 * 12, summary
    assert summary["partial_dropped"]["staged"] + summary["partial_dropped"]["buffer"] <= 4, summary


DETERMINISTIC = ["study.concurrency=1", "study.validation_members=0", "buffer.ingest_per_step=3",
                 "buffer.policy=\"firo\"", "buffer.watermark=6", "train.max_steps=2000", "train.validate_every=0"]


@pytest.mark.timeout(400)
def test_trainer_killed_and_resumed_gives_same_model(tmp_path):
    ckpt_a = str(tmp_path / "ckpt_a")
    ref, _, ref_dir = _train(tmp_path, DETERMINISTIC + [f"train.checkpoint_dir={ckpt_a}"], name="ref")
    # the same run, killed (SIGKILL of every trainer rank) after its second checkpoint, then resumed
    run_dir, ckpt = str(tmp_path / "cut"), str(tmp_path / "ckpt_b")
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "solvers.online", "train", STUDY,
           "--set", f"study.run_dir={run_dir}", "--set", f"train.checkpoint_dir={ckpt}",
           "--set", "train.checkpoint_every=5", *[a for s in DETERMINISTIC for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 150
    latest = os.path.join(ckpt, "latest")
    while time.time() < deadline:
        if os.path.exists(latest) and int(open(latest).read() or 0) >= 10:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _kill_members(run_dir)
    killed_at = int(open(latest).read())
    assert killed_at >= 10
    rc, out = _run(cmd + ["--resume"], 200, str(tmp_path))
    _kill_members(run_dir)
    assert rc == 0, out[-4000:]
    assert "resumed from step" in out
    with open(os.path.join(run_dir, "summary.json")) as f:
        resumed = json.load(f)
    assert resumed["step"] == ref["step"] and resumed["samples_in"] == ref["samples_in"]
    np.testing.assert_array_equal(_params(run_dir), _params(ref_dir))


@pytest.mark.timeout(200)
def test_c_client_member(tmp_path):
    exe = str(tmp_path / "heat2d")
    c_dir = os.path.join(ROOT, "solvers", "online", "c")
    subprocess.run(["mpicc", "-O2", "-I", c_dir, os.path.join(ROOT, "examples", "heat2d.c"),
                    os.path.join(c_dir, "hpcore_online.c"), "-o", exe, "-lm"], check=True, timeout=120)
    cmd = json.dumps([exe, "8", "6", "{p0}", "{p1}"])
    model = ["model.in_channels=3", "model.out_channels=64"]
    summary, out, _ = _train(tmp_path, [f"study.command={cmd}", "study.members=3", "study.validation_members=0",
                                        "train.max_steps=30", *model])
    assert summary["members"]["done"] == 3, out[-3000:]
    assert summary["samples_in"] == 3 * 6


@pytest.mark.timeout(200)
def test_mpmd_one_command(tmp_path):
    run_dir = str(tmp_path / "mpmd")
    common = ["--set", f"study.run_dir={run_dir}", "--set", "study.launcher=\"mpmd\""]
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "solvers.online", "train", STUDY, *common,
           "--set", "train.max_steps=40", ":", "-n", "4", sys.executable, "-m", "solvers.online", "client", STUDY,
           *common]
    rc, out = _run(cmd, 150, str(tmp_path))
    assert rc == 0, out[-4000:]
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["members"]["done"] == 6, out[-3000:]
    assert summary["n_val"] == 12


@pytest.mark.timeout(200)
@pytest.mark.skipif(shutil.which("gfortran") is None, reason="needs gfortran (apt-get install gfortran)")
def test_fortran_client_member(tmp_path):
    c_dir = os.path.join(ROOT, "solvers", "online", "c")
    objs = []
    for cmd, obj in (
        (["mpicc", "-O2", "-c", "-I", c_dir, os.path.join(c_dir, "hpcore_online.c")], "hpcore_online.o"),
        (["mpicc", "-c", os.path.join(DATA, "fortran_shim.c")], "fortran_shim.o"),
        (["gfortran", "-c", os.path.join(c_dir, "hpcore_online.f90")], "hpcore_online_f.o"),
        (["gfortran", "-c", os.path.join(DATA, "member.f90")], "member_f.o"),
    ):
        subprocess.run([*cmd, "-o", obj], check=True, timeout=120, cwd=str(tmp_path))
        objs.append(obj)
    exe = str(tmp_path / "fmember")
    subprocess.run(["mpicc", "-o", exe, *objs, "-lgfortran", "-lm"], check=True, timeout=120, cwd=str(tmp_path))
    cmd = json.dumps([exe])
    summary, out, _ = _train(tmp_path, [f"study.command={cmd}", "study.members=2", "study.validation_members=0",
                                        "train.max_steps=20", "model.in_channels=3", "model.out_channels=16"])
    assert summary["members"]["done"] == 2, out[-3000:]
    assert summary["samples_in"] == 2 * 6


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", ["exit-before-connect", "exit-after-connect", "hang-before-connect"])
def test_member_failing_while_connecting_is_retried(tmp_path, fault):
    """A member that dies (or freezes) between the trainer's go file and the end of its connect: the
    trainer's accept is released (stand-in connection) or the half-made connection abandoned, the
    member is retried, and every sample of the training members arrives once."""
    cmd = json.dumps(["{python}", os.path.join(DATA, "member_connect_fault.py")])
    summary, out, run_dir = _train(tmp_path, [f"study.command={cmd}", "study.connect_timeout_s=15",
                                              "train.max_steps=2000"], timeout_s=200,
                                   HPCORE_TEST_CONNECT_FAULT=fault)
    assert summary["members"]["failed"] == 1, out[-3000:]
    assert summary["members"]["done"] == 6
    assert "member 2 attempt 0 failed (" in out, out[-3000:]
    assert os.path.exists(os.path.join(run_dir, "member-2-1.log"))  # the retry ran
    assert summary["samples_in"] == 5 * 12, summary["samples_in"]
    if fault != "exit-after-connect":
        assert "starting a stand-in connection" in out, out[-3000:]


@pytest.mark.timeout(300)
def test_flux_transport_members(tmp_path):
    """Our flux-transport solver as members (2 ranks each, theta-phi decomposition): every Br map that
    reaches the trainer equals a serial run of solvers.flux_transport with the member's parameters."""
    from mpi4py import MPI

    from solvers.flux_transport import FluxTransport, load_config

    ckpt = str(tmp_path / "ckpt")
    run_dir = str(tmp_path / "flux")
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "solvers.online", "train", os.path.join(DATA, "flux.toml"),
           "--set", f"study.run_dir={run_dir}", "--set", f"train.checkpoint_dir={ckpt}",
           "--set", "train.checkpoint_every=5"]
    try:
        rc, out = _run(cmd, 260, str(tmp_path))
    finally:
        if os.path.isdir(run_dir):
            _kill_members(run_dir)
    assert rc == 0, out[-4000:]
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["members"]["done"] == 4 and summary["members"]["failed"] == 0, out[-3000:]
    assert summary["samples_in"] == 3 * 4 and summary["n_val"] == 4
    assert summary["history"][-1]["val_error"] < summary["history"][0]["val_error"]
    step = int(open(os.path.join(ckpt, "latest")).read())
    xs, ys = [], []
    for rank in range(2):
        with h5py.File(os.path.join(ckpt, f"step{step:08d}-rank{rank}.h5")) as f:
            xs += list(f["validation/x"][...])
            ys += list(f["validation/y"][...])
    assert len(xs) == 4
    for x, y in zip(xs, ys):
        eta, mf, t = float(x[0]), float(x[1]), int(round(x[2] / 0.25))
        config = load_config(None, overrides=[
            "n_realizations=1", "grid.ntheta=31", "grid.nphi=60", f"diffusion.eta_km2_s={eta!r}",
            f"flow.mf_p1={mf!r}", f"time.end_h={4 * 6.0!r}", "output.plots=false"])
        model = FluxTransport(MPI.COMM_SELF, config, output=False)
        while model.time < (t + 1) * 6.0 - 1e-9:
            model.step()
        np.testing.assert_allclose(y, model.gather(0).ravel(), rtol=1e-12, atol=1e-12 * np.abs(y).max())


@pytest.mark.timeout(200)
def test_wall_time_limit_stops_every_rank(tmp_path):
    """train.max_wall_s: rank 0's clock decides, every rank stops on the same step; members still
    running are killed (the launcher's shutdown)."""
    summary, out, _ = _train(tmp_path, ["train.max_wall_s=6", "train.max_steps=1000000",
                                        "study.members=40", "study.validation_members=0"])
    assert 6 <= summary["wall_s"] < 40, summary["wall_s"]
    assert summary["members"]["done"] < 40 and summary["step"] > 0, out[-3000:]


@pytest.mark.timeout(240)
def test_member_exiting_without_finalize_is_retried(tmp_path):
    """Exit code 0 without the goodbye: the trainer would wait for that connection forever; after a grace
    period the try counts as failed, its connection is dropped, the member reruns and the study ends."""
    cmd = json.dumps(["{python}", os.path.join(DATA, "member_connect_fault.py")])
    summary, out, _ = _train(tmp_path, [f"study.command={cmd}", "train.max_steps=2000"], timeout_s=200,
                             HPCORE_TEST_CONNECT_FAULT="no-finalize")
    assert "member 2 attempt 0 failed (exit code 0 without finalize" in out, out[-3000:]
    assert summary["members"]["failed"] == 1 and summary["members"]["done"] == 6, out[-3000:]
    assert summary["samples_in"] == 5 * 12, summary["samples_in"]


def _train_failing(tmp_path, sets, timeout_s=120):
    run_dir = str(tmp_path / "run")
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "solvers.online", "train", STUDY,
           "--set", f"study.run_dir={run_dir}", *[a for s in sets for a in ("--set", s)]]
    try:
        return _run(cmd, timeout_s, str(tmp_path))
    finally:
        if os.path.isdir(run_dir):
            _kill_members(run_dir)


@pytest.mark.timeout(180)
def test_broken_member_command_stops_the_study(tmp_path):
    """Every try fails: after study.max_failures the study stops on every rank with the reason."""
    cmd = json.dumps(["{python}", "-c", "import sys; sys.exit(3)"])
    rc, out = _train_failing(tmp_path, [f"study.command={cmd}", "study.max_failures=4"])
    assert rc != 0
    assert "more than study.max_failures=4" in out, out[-3000:]


@pytest.mark.timeout(180)
def test_member_data_that_do_not_fit_the_model_stop_every_rank(tmp_path):
    """Members send 16 values where the model predicts 32: every trainer rank stops with the member,
    its time step and the shapes named (no rank left waiting in a collective)."""
    sets = ["study.command=[\"{python}\", \"-m\", \"solvers.online\", \"member\", \"heat1d\", \"--option\", "
            "\"n=16\", \"--option\", \"steps=12\"]"]
    rc, out = _train_failing(tmp_path, sets)
    assert rc != 0
    assert "online training stopped" in out and "the model maps input (3,) to (32,)" in out, out[-3000:]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("params, why", [("1,2,3,4,5,6,7,8,9", "more than 8 parameters"),
                                         ("0.5,abc", "comma-separated numbers expected")])
def test_c_client_refuses_bad_parameters(tmp_path, params, why):
    """The C client refuses what the Python client refuses (too many or unreadable parameters), on every
    rank, before it touches the trainer; the example solver aborts on the error."""
    exe = str(tmp_path / "heat2d")
    c_dir = os.path.join(ROOT, "solvers", "online", "c")
    subprocess.run(["mpicc", "-O2", "-I", c_dir, os.path.join(ROOT, "examples", "heat2d.c"),
                    os.path.join(c_dir, "hpcore_online.c"), "-o", exe, "-lm"], check=True, timeout=120)
    rc, out = _run(["mpiexec", "-n", "2", exe, "8", "2"], 60, str(tmp_path),
                   HPCORE_ONLINE_SERVER=str(tmp_path / "no-such-port-file"), HPCORE_ONLINE_PARAMS=params)
    assert rc != 0
    # every rank says why; MPI_Abort may cut a rank's line before the launcher forwards it
    assert why in out, out[-2000:]
