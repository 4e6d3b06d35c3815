"""Test member: heat1d, but attempt 0 of member 2 fails while connecting, as HPCORE_TEST_CONNECT_FAULT says:

- ``exit-before-connect``: asks to connect, sees the trainer's go file, exits before MPI_Comm_connect
  (the trainer is then waiting in MPI_Comm_accept, which has no timeout);
- ``exit-after-connect``: connects, then exits before the barrier and hello of the new connection;
- ``hang-before-connect``: asks to connect, sees the go file, then sleeps (never connects);
- ``no-finalize``: sends every time step, then exits with code 0 without ``finalize`` (no goodbye).

Follows the connect protocol of solvers/online/client.py by hand (request file, go file, connect)."""

import os
import time

from mpi4py import MPI

from solvers.online import client
from solvers.online.members import heat1d

env = client.environment()
fault = os.environ.get("HPCORE_TEST_CONNECT_FAULT", "")
world = MPI.COMM_WORLD
if env["member"] == 2 and env["attempt"] == 0 and fault == "no-finalize":
    def no_finalize():
        world.Barrier()
        os._exit(0)

    client.finalize = no_finalize
    heat1d(world, env["params"], n=32, steps=12)
elif env["member"] == 2 and env["attempt"] == 0 and fault:
    server = env["server"]
    ports = client.read_ports(server, 30) if world.Get_rank() == 0 else None
    ports = world.bcast(ports, root=0)
    if world.Get_rank() == 0:
        open(f"{server}.connect-2-0", "w").close()
        while not os.path.exists(f"{server}.go-2-0"):
            time.sleep(1e-3)
    world.Barrier()
    if fault == "exit-before-connect":
        os._exit(3)
    if fault == "hang-before-connect":
        time.sleep(3600)
    world.Connect(ports[0], MPI.INFO_NULL, 0)
    os._exit(3)
else:
    heat1d(world, env["params"], n=32, steps=12)
