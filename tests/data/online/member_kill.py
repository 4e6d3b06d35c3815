"""Test member: heat1d, but on attempt 0 of member 2 rank 1 sends itself HPCORE_TEST_SIGNAL (KILL: dies,
mpiexec ends the member; STOP: freezes, the member goes silent) before time step 4."""

import os
import signal

from mpi4py import MPI

from solvers.online import client
from solvers.online.members import heat1d

env = client.environment()
if env["member"] == 2 and env["attempt"] == 0 and MPI.COMM_WORLD.Get_rank() == 1:
    send = client.send
    sig = getattr(signal, "SIG" + os.environ.get("HPCORE_TEST_SIGNAL", "KILL"))

    def dying_send(name, array, time_step):
        if time_step == 4:
            os.kill(os.getpid(), sig)
        send(name, array, time_step)

    client.send = dying_send
heat1d(MPI.COMM_WORLD, env["params"], n=32, steps=12)
