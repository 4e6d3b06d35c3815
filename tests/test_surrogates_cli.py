"""Command line (serial in-process, and 2 ranks by subprocess): configuration loading and refusals, generate, train."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from solvers.surrogates.__main__ import DEFAULT_CONFIG_PATH, ConfigError, load_run_config, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAKY = re.compile(r"^(PMI_|PMIX_|PMI2_|HYDRA_|HYDI_|MPIR_CVAR_CH4_ROOTS|MPI_LOCALRANKID|MPI_LOCALNRANKS|OMPI_|PRTE_|"
                   r"SLURM_)")


def _world_size():
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size()


# main() runs on COMM_WORLD: under `mpiexec -n 4 pytest --with-mpi` every rank would run it with its own
# tmp_path (a refused, mismatched call). Those tests run in the serial pass.
SERIAL_ONLY = pytest.mark.skipif(_world_size() > 1, reason="calls main() on COMM_WORLD; run from the serial pass")


def test_default_config_loads_and_overrides_apply_together(tmp_path):
    cfg = load_run_config(DEFAULT_CONFIG_PATH)
    assert cfg.model.n_modes == [8, 8] and cfg.train.epochs == 20 and cfg.parallel.mode == "data"
    # two overrides that are only valid together (domain mode needs l2; set loss first, then mode)
    cfg = load_run_config(DEFAULT_CONFIG_PATH, ["train.loss=\"h1\"", "train.loss=\"l2\"", "parallel.mode=\"domain\""])
    assert cfg.parallel.mode == "domain"
    mc = cfg.model_config()
    assert mc["model"] == "fno" and mc["n_modes"] == [8, 8] and mc["positional_embedding"] is True
    tfno = load_run_config(DEFAULT_CONFIG_PATH, ["model.kind=\"tfno\"", "model.rank=0.05"]).model_config()
    assert tfno["rank"] == 0.05 and tfno["factorization"] == "tucker"
    # relative data paths resolve against the file's folder
    (tmp_path / "run.toml").write_text('[data]\nsource = "h5"\ntrain_file = "d.h5"\n')
    assert load_run_config(str(tmp_path / "run.toml")).data.train_file == str(tmp_path / "d.h5")


@pytest.mark.parametrize("overrides,match", [
    (["train.epochs=0"], "train.epochs"),
    (["model.kind=\"gru\""], "model.kind"),
    (["model.kind=\"gru\"", "train.lr=-1"], "train.lr"),  # every bad value is named
    (["parallel.mode=\"domain\"", "train.loss=\"h1\""], "domain"),
    (["model.hidden=3"], "unknown key model.hidden"),
    (["nosection.x=1"], "unknown section"),
    (["train.epochs=\"ten\""], "expected an integer"),
    (["model.n_modes=[8, 0]"], "model.n_modes"),
    (["data.source=\"h5\""], "data.train_file"),
    (["epochs=3"], "section.key=value"),
])
def test_refused_configurations(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_run_config(DEFAULT_CONFIG_PATH, overrides)


@SERIAL_ONLY
def test_train_refusal_exit_status(capsys):
    assert main(["train", "--set", "train.epochs=0", "--set", "model.kind=\"x\""]) == 2
    err = capsys.readouterr().err
    assert "configuration refused" in err and "train.epochs" in err and "model.kind" in err
    assert main(["train", "--set", "data.source=\"h5\"", "--set", "data.train_file=\"/nonexistent.h5\""]) == 2
    assert "cannot open" in capsys.readouterr().err


@SERIAL_ONLY
def test_generate_and_train_serial(tmp_path, monkeypatch, capsys):
    pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "darcy", "--samples", "12", "--resolution", "8", "--out", "d.h5"]) == 0
    assert main(["generate", "heat", "--samples", "4", "--resolution", "16", "--out", "h.h5"]) == 0
    assert main(["generate", "burgers", "--samples", "0", "--resolution", "16", "--out", "x.h5"]) == 2
    rc = main(["train", "--set", "data.source=\"h5\"", "--set", "data.train_file=\"d.h5\"", "--set", "data.n_train=8",
               "--set", "data.n_test=4", "--set", "train.epochs=2", "--set", "train.batch_size=4", "--set",
               "model.hidden_channels=4", "--set", "model.n_modes=[4, 4]", "--set", "output.directory=\"out\"",
               "--set", "output.plots=true"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "epoch   2/2" in out and "samples/s" in out and "test[8x8]" in out
    hist = json.loads((tmp_path / "out" / "history.json").read_text())
    assert len(hist["history"]) == 2 and hist["config"]["train"]["epochs"] == 2
    assert (tmp_path / "out" / "model.h5").exists()
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "out" / "loss.png").stat().st_size > 1000
        assert (tmp_path / "out" / "predictions.png").stat().st_size > 1000
    from solvers.surrogates import load_model

    m = load_model(str(tmp_path / "out" / "model.h5"))
    assert np.all(np.isfinite(m.params)) and m.config["hidden_channels"] == 4
    # a 1-D run on the heat data with a 1-D model
    assert main(["train", "--set", "data.source=\"h5\"", "--set", "data.train_file=\"h.h5\"", "--set",
                 "data.n_train=3", "--set", "data.n_test=1", "--set", "train.epochs=1", "--set", "model.n_modes=[4]",
                 "--set", "model.hidden_channels=4", "--set", "output.plots=false", "--set",
                 "output.directory=\"out1\""]) == 0
    assert main(["train", "--set", "data.source=\"h5\"", "--set", "data.train_file=\"h.h5\"", "--set",
                 "data.n_train=3", "--set", "data.n_test=1"]) == 2  # 2-D modes on 1-D data
    assert "1 spatial axes" in capsys.readouterr().err


def _mpiexec(args, cwd, timeout=240):
    env = {k: v for k, v in os.environ.items() if not LEAKY.match(k)}
    env.update(PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run(["mpiexec", "-n", "2", sys.executable, "-m", "solvers.surrogates", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


@SERIAL_ONLY
@pytest.mark.timeout(600)
def test_two_ranks_refusal_named_once_and_domain_run(tmp_path):
    if shutil.which("mpiexec") is None:
        pytest.skip("no mpiexec on PATH")
    r = _mpiexec(["train", "--set", "model.kind=\"gru\""], tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("configuration refused") == 1 and "model.kind" in r.stderr
    r = _mpiexec(["generate", "darcy", "--samples", "8", "--resolution", "16", "--out", "d.h5"], tmp_path)
    assert r.returncode == 0, r.stderr
    base = ["train", "--set", "data.source=\"h5\"", "--set", "data.train_file=\"d.h5\"", "--set", "data.n_train=6",
            "--set", "data.n_test=2", "--set", "train.epochs=1", "--set", "train.batch_size=3", "--set",
            "model.hidden_channels=4", "--set", "model.n_modes=[4, 4]", "--set", "output.plots=false"]
    r = _mpiexec(base + ["--set", "parallel.mode=\"domain\"", "--set", "output.directory=\"dom\""], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "domain-parallel" in r.stdout and r.stdout.count("epoch   1/1") == 1
    r = _mpiexec(base + ["--set", "parallel.mode=\"domain\"", "--set", "parallel.mg_levels=4"], tmp_path)
    assert r.returncode == 2 and r.stderr.count("refused before training") == 1 and "2^levels" in r.stderr
