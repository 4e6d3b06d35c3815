"""Ensemble members in Python that embed the client API: 1-D heat, Darcy (solvers.surrogates) and flux transport.

Each member is a function ``run(comm, params, options)`` that calls only
:func:`solvers.online.client.init`, :func:`~solvers.online.client.send` and
:func:`~solvers.online.client.finalize`, so it shows what a solver has to add to
become an online member. ``python -m solvers.online member NAME`` runs one with
``MPI.COMM_WORLD`` as the member communicator and the parameters from
``HPCORE_ONLINE_PARAMS``.
"""

from __future__ import annotations

import numpy as np

from . import client

__all__ = ["MEMBERS", "darcy", "flux", "heat1d", "heat1d_reference"]


def _rows(n: int, rank: int, size: int) -> tuple:
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def heat1d_reference(params, n: int = 32, steps: int = 20, substeps: int = 20) -> np.ndarray:
    """Serial reference of :func:`heat1d`: ``(steps, n)`` snapshots. Not collective."""
    kappa, amp = params[0], params[1] if len(params) > 1 else 1.0
    x = (np.arange(n) + 0.5) / n
    u = amp * np.sin(np.pi * x) + 0.5 * amp * np.sin(3 * np.pi * x) * kappa
    dx = 1.0 / n
    dt = 0.2 * dx * dx
    out = []
    for _ in range(steps):
        for _ in range(substeps):
            g = np.concatenate([[-u[0]], u, [-u[-1]]])  # u = 0 on the walls (ghosts mirror)
            u = u + kappa * dt / dx ** 2 * (g[2:] - 2 * g[1:-1] + g[:-2])
        out.append(u.copy())
    return np.array(out)


def heat1d(comm, params, n: int = 32, steps: int = 20, substeps: int = 20) -> None:
    """1-D heat equation ``u_t = kappa u_xx`` on [0, 1], u = 0 at both ends, rows split over ``comm``.

    Collective on ``comm``. ``params = (kappa, amplitude)``; sends field ``"u"`` at
    time steps ``0 .. steps-1`` (each after ``substeps`` explicit steps).
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    lo, hi = _rows(n, rank, size)
    kappa, amp = params[0], params[1] if len(params) > 1 else 1.0
    x = (np.arange(lo, hi) + 0.5) / n
    u = amp * np.sin(np.pi * x) + 0.5 * amp * np.sin(3 * np.pi * x) * kappa
    dx = 1.0 / n
    dt = 0.2 * dx * dx
    left = rank - 1 if rank > 0 else None
    right = rank + 1 if rank < size - 1 else None
    client.init("u", hi - lo, comm)
    for t in range(steps):
        for _ in range(substeps):
            g = np.empty(u.size + 2)
            g[1:-1] = u
            g[0] = -u[0] if left is None else 0.0
            g[-1] = -u[-1] if right is None else 0.0
            if left is not None:
                g[0] = comm.sendrecv(u[0], dest=left, source=left)
            if right is not None:
                g[-1] = comm.sendrecv(u[-1], dest=right, source=right)
            u = u + kappa * dt / dx ** 2 * (g[2:] - 2 * g[1:-1] + g[:-2])
        client.send("u", u, t)
    client.finalize()


def darcy(comm, params, resolution: int = 16, samples: int = 16, sink=None) -> None:
    """Darcy flow member: ``samples`` coefficient fields of one GRF parameter set, solved distributed.

    Collective on ``comm``. ``params = (alpha, tau)`` of the Gaussian random field
    (:func:`solvers.surrogates.darcy.darcy_coefficient`); sample ``t`` uses GRF seed
    ``member * 10007 + t``. Sends ``"a"`` (coefficient) and ``"u"`` (solution),
    ``resolution**2`` values each, from rank 0 (other ranks send 0 values; the solve
    itself is split over ``comm`` by :class:`solvers.surrogates.darcy.DarcySolver`).
    ``sink``: an object with ``init``/``send``/``finalize`` (default: the online client;
    the offline benchmark passes an HDF5 writer).
    """
    from solvers.surrogates.darcy import DarcySolver

    sink = client if sink is None else sink
    member = int(client.environment()["member"]) if sink is client else int(getattr(sink, "member", 0))
    alpha, tau = float(params[0]), float(params[1])
    rank = comm.Get_rank()
    n_local = resolution * resolution if rank == 0 else 0
    sink.init("a", n_local, comm)
    sink.init("u", n_local, comm)
    with DarcySolver(comm, resolution) as solver:
        d = solver.decomposition
        for t in range(samples):
            a_local = solver.coefficient(member * 10007 + t, alpha=alpha, tau=tau)
            u_local, _ = solver.solve(a_local, 1.0)
            a, u = d.gather(a_local), d.gather(u_local)
            sink.send("a", a.ravel() if rank == 0 else np.zeros(0), t)
            sink.send("u", u.ravel() if rank == 0 else np.zeros(0), t)
    sink.finalize()


def flux(comm, params, steps: int = 8, hours_per_step: float = 6.0, ntheta: int = 31, nphi: int = 60) -> None:
    """Flux-transport member (built-in bipolar map): diffusivity and meridional-flow amplitude from ``params``.

    Collective on ``comm``. ``params = (eta [km^2/s], mf_p1 [m/s])``; one realization.
    Sends the gathered Br map (``ntheta * nphi`` values from rank 0; other ranks send
    0 values) as field ``"br"`` every ``hours_per_step`` hours, ``steps`` times.
    """
    from solvers.flux_transport import FluxTransport, load_config

    eta = float(params[0])
    mf = float(params[1]) if len(params) > 1 else 22.0
    config = load_config(None, overrides=[
        "n_realizations=1", f"grid.ntheta={ntheta}", f"grid.nphi={nphi}", f"diffusion.eta_km2_s={eta!r}",
        f"flow.mf_p1={mf!r}", f"time.end_h={steps * hours_per_step!r}", "output.plots=false"])
    model = FluxTransport(comm, config, output=False)
    rank = comm.Get_rank()
    client.init("br", ntheta * nphi if rank == 0 else 0, comm)
    for t in range(steps):
        target = (t + 1) * hours_per_step
        while model.time < target - 1e-9:
            model.step()
        br = model.gather(0)
        client.send("br", br.ravel() if rank == 0 else np.zeros(0), t)
    client.finalize()


MEMBERS = {"heat1d": heat1d, "darcy": darcy, "flux": flux}
