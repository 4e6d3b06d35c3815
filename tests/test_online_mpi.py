"""solvers.online inside one MPI job (``mpiexec -n 4 python -m pytest --with-mpi``): the world is split into
2 trainer ranks and member ranks that connect to them through the trainer's port, as in an MPMD launch.

- routing "one": every time step goes to trainer rank 0, rank 1 receives nothing, yet both stop on the
  same step (the per-step agreement) with bitwise equal models and every sample taken once;
- back-pressure: a trainer that takes one sample per step and a one-credit window hold the members in
  ``send``: no more samples wait at the trainer than its staging limit plus the credits in flight.
"""

import os

import numpy as np
import pytest
from mpi4py import MPI

pytestmark = [pytest.mark.mpi(min_size=3), pytest.mark.timeout(300, method="thread")]

STEPS = 10


def _study(run_dir, members, **sections):
    from solvers.online import load_study

    data = {
        "study": {"members": members, "ranks_per_member": 1, "launcher": "mpmd", "run_dir": run_dir,
                  "command": ["{python}", "-m", "solvers.online", "member", "heat1d"], "window": 2,
                  "member_timeout_s": 200, "client_timeout_s": 120, "seed": 2},
        "parameters": {"method": "halton", "bounds": [[0.2, 1.0], [0.5, 1.5]]},
        "data": {"inputs": ["params", "time"], "outputs": ["u"], "time_scale": 0.1},
        "buffer": {"policy": "fifo", "capacity": 32, "watermark": 4},
        "model": {"model": "mlp", "in_channels": 3, "out_channels": 16, "hidden_channels": 16, "n_layers": 2,
                  "seed": 0},
        "train": {"batch_size": 4, "max_steps": 5000, "lr": 1e-3, "loss": "mse", "validate_every": 0,
                  "log_every": 0, "seed": 0},
    }
    for name, values in sections.items():
        data[name].update(values)
    return load_study(data=data)


def _run(tmp_path, **sections):
    """Trainer on world ranks 0-1, one member per other rank. Returns (summary or None, trainer comm)."""
    from solvers.online import OnlineTrainer
    from solvers.online.launcher import member_environment, mpmd_members
    from solvers.online.members import heat1d
    from solvers.online.sampling import ParameterSampler

    world = MPI.COMM_WORLD
    run_dir = world.bcast(str(tmp_path / "online") if world.Get_rank() == 0 else None, root=0)
    n_clients = world.Get_size() - 2
    study = _study(run_dir, members=2 * n_clients, **sections)
    is_trainer = world.Get_rank() < 2
    comm = world.Split(0 if is_trainer else 1, world.Get_rank())
    port_file = os.path.join(run_dir, "ports.txt")
    summary = None
    if is_trainer:
        trainer = OnlineTrainer(comm, study)
        summary = trainer.run()
        params = trainer.model.params.copy()
        other = comm.sendrecv(params, dest=1 - comm.Get_rank(), source=1 - comm.Get_rank())
        np.testing.assert_array_equal(params, other)  # the models stay bitwise equal
    else:
        design = ParameterSampler(study.parameters.bounds, study.parameters.method, study.study.seed).design(
            study.study.members)
        saved = dict(os.environ)
        try:
            for m in mpmd_members(study.study.members, n_clients, comm.Get_rank()):
                os.environ.update(member_environment(port_file, m, 0, design[m], study))
                heat1d(MPI.COMM_SELF, tuple(design[m]), n=16, steps=STEPS, substeps=5)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    comm.Free()
    world.Barrier()
    return summary, is_trainer


def test_one_trainer_rank_receives_all(tmp_path):
    summary, is_trainer = _run(tmp_path, study={"routing": "one"}, train={"max_steps": 5000})
    if is_trainer:
        n_members = 2 * (MPI.COMM_WORLD.Get_size() - 2)
        assert summary["members"]["done"] == n_members
        assert summary["samples_in"] == n_members * STEPS
        assert summary["messages_ignored"] == 0
        assert summary["step"] >= n_members * STEPS // 4  # every sample in a batch of 4 at least once


def test_back_pressure_bounds_what_waits(tmp_path):
    stage = 3
    summary, is_trainer = _run(tmp_path, study={"window": 1},
                               buffer={"policy": "fifo", "capacity": stage, "watermark": 1, "ingest_per_step": 1},
                               train={"batch_size": 1})
    if is_trainer:
        n_members = 2 * (MPI.COMM_WORLD.Get_size() - 2)
        assert summary["samples_in"] == n_members * STEPS
        # members produce every step long before the trainer takes them, one per step: without credits
        # all n_members * STEPS samples would wait; with them at most the staging limit plus one
        # message in flight per member rank and trainer rank
        assert summary["staged_high_water"] <= stage + (MPI.COMM_WORLD.Get_size() - 2), summary
