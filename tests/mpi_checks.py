"""Assertions for MPI tests that every rank makes alike (no rank passes while another fails)."""


def verdict(comm, ok: bool, detail: str = "") -> None:
    """Assert on every rank that the check passed on every rank of ``comm``. Collective."""
    reports = comm.allgather((bool(ok), detail))
    bad = [f"rank {r}: {d}" for r, (o, d) in enumerate(reports) if not o]
    assert not bad, "; ".join(bad)


def raises_everywhere(comm, exc_type, fn, match: str = "") -> str:
    """Run ``fn`` on every rank; assert that every rank raised ``exc_type`` with ``match`` in
    its message. Returns this rank's message. Collective."""
    try:
        fn()
        got = ("no exception", "")
    except Exception as exc:  # noqa: BLE001 - inspected below
        got = (type(exc).__name__, str(exc))
    reports = comm.allgather(got)
    for r, (name, msg) in enumerate(reports):
        assert name == exc_type.__name__, f"rank {r} raised {name}: {msg} (expected {exc_type.__name__})"
        assert match in msg, f"rank {r}: {msg!r} lacks {match!r}"
    return reports[comm.Get_rank()][1]
