"""hpcore.measure's message ping-pong: contiguous and MPI-typed tables, alike on every rank."""

import pytest
from mpi4py import MPI

from hpcore.measure import measure_messages

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(120)]


def test_message_tables_are_positive_and_agreed():
    comm = MPI.COMM_WORLD
    got = measure_messages(comm, sizes=(1, 1000, 1 << 14), repeat=4)
    assert set(got) == {"host_pack", "mpi_typed"}
    assert sorted(got["host_pack"]) == [1, 1000, 1 << 14]
    assert sorted(got["mpi_typed"]) == [8, 1000, 1 << 14]  # whole doubles, at least one
    assert all(t > 0 for table in got.values() for t in table.values())
    everyone = comm.allgather(got)
    assert all(g == got for g in everyone)
