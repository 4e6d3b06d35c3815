"""Explicit 3-D heat equation on a CartDecomposition, with the halo exchange overlapped.

    u_t = alpha * laplacian(u) on the unit cube, u = 0 on the boundary (or periodic),
    7-point stencil, forward Euler at 0.9 of the stable step.

Each step starts the halo exchange, updates the cells whose stencil needs no
ghost cell while the messages travel, waits, then updates the shell next to the
ghosts. With ``--check`` rank 0 gathers the result and repeats the run serially
on the whole grid (same arithmetic, so the same bits are expected), and compares
with the analytic decay of the initial sine mode.

Run::

    mpiexec -n 4 python examples/heat3d.py --n 48 --steps 100 --check --png heat.png
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from mpi4py import MPI

from comms import CartDecomposition, HaloExchange


def initial(x, y, z, periodic: bool):
    """The lowest sine mode: an eigenfunction of the Laplacian for both boundary kinds."""
    k = 2 * np.pi if periodic else np.pi
    return np.sin(k * x) * np.sin(k * y) * np.sin(k * z), 3 * k * k


def cell_centres(n: int, periodic: bool):
    h = 1.0 / (n if periodic else n + 1)
    first = 0.0 if periodic else h
    return first + h * np.arange(n), h


def shell_slabs(n: tuple) -> list:
    """Non-overlapping slabs (in ghosted indices, ghost 1) covering the cells within one
    cell of the ghosts, i.e. the interior minus ``[2, n-1)`` per axis."""
    slabs = []
    inner = [slice(2, max(2, m)) for m in n]  # interior cells not touching the ghosts: 2..n-1
    full = [slice(1, m + 1) for m in n]
    for ax in range(3):
        for side in (slice(1, 2), slice(max(n[ax], 1), n[ax] + 1)):
            if n[ax] == 1 and side.start != 1:
                continue
            idx = [inner[i] if i < ax else full[i] for i in range(3)]
            idx[ax] = side
            slabs.append(tuple(idx))
    return slabs


def update(u, new, r: float, index: tuple) -> None:
    """new[index] = u + r * (sum of the 6 neighbours - 6 u) at ``index`` (ghosted indices)."""
    c = u[index]
    acc = -6.0 * c
    for ax in range(3):
        for d in (-1, 1):
            idx = list(index)
            idx[ax] = slice(index[ax].start + d, index[ax].stop + d)
            acc = acc + u[tuple(idx)]
    new[index] = c + r * acc


def serial_solve(u0: np.ndarray, r: float, steps: int, periodic: bool) -> np.ndarray:
    """The same scheme on the whole grid, one process, ghosts from padding."""
    u = u0
    n = u0.shape
    mode = "wrap" if periodic else "constant"
    for _ in range(steps):
        p = np.pad(u, 1, mode=mode)
        new = np.empty_like(p)
        update(p, new, r, tuple(slice(1, m + 1) for m in n))
        u = new[1:-1, 1:-1, 1:-1]
    return u


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="cells per axis (default 48)")
    ap.add_argument("--steps", type=int, default=100, help="time steps (default 100)")
    ap.add_argument("--alpha", type=float, default=1.0, help="diffusivity [length^2/time] (default 1)")
    ap.add_argument("--periodic", action="store_true", help="periodic instead of u=0 boundaries")
    ap.add_argument("--no-overlap", action="store_true", help="exchange, then update everything")
    ap.add_argument("--check", action="store_true", help="compare with a serial solve and the analytic decay")
    ap.add_argument("--png", default=None, metavar="PATH", help="write the mid-plane slice of the result")
    ap.add_argument("--device", action="store_true", help="run on the GPU with CuPy")
    ap.add_argument("--progress", type=int, default=0, metavar="K", help="print progress every K steps (rank 0)")
    args = ap.parse_args(argv)

    comm = MPI.COMM_WORLD
    xp = np
    if args.device:
        import cupy as xp
    n = args.n
    decomp = CartDecomposition(comm, (n, n, n), periodic=args.periodic)
    halo = HaloExchange(decomp, ghost=1, stencil="star")
    x, h = cell_centres(n, args.periodic)
    dt = 0.9 * h * h / (6 * args.alpha)
    r = args.alpha * dt / (h * h)
    sl = decomp.local_slices
    X, Y, Z = np.meshgrid(x[sl[0]], x[sl[1]], x[sl[2]], indexing="ij")
    mode, lam = initial(X, Y, Z, args.periodic)
    u = xp.zeros(tuple(m + 2 for m in decomp.local_shape))
    u[1:-1, 1:-1, 1:-1] = xp.asarray(mode)
    new = xp.zeros_like(u)  # its ghosts stay 0: the boundary condition past non-periodic edges
    inner = tuple(slice(2, max(2, m)) for m in decomp.local_shape)
    whole = tuple(slice(1, m + 1) for m in decomp.local_shape)
    shell = shell_slabs(decomp.local_shape)
    if comm.rank == 0:
        print(f"heat3d: {n}^3 cells on {comm.size} ranks, grid {decomp.dims}, halo method {halo.method}, "
              f"{args.steps} steps of dt={dt:.3e}", flush=True)
    comm.Barrier()
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        if args.no_overlap:
            halo.exchange(u)
            update(u, new, r, whole)
        else:
            handle = halo.start(u)
            update(u, new, r, inner)
            handle.wait()
            for s in shell:
                update(u, new, r, s)
        u, new = new, u
        if args.progress and comm.rank == 0 and step % args.progress == 0:
            print(f"  step {step}/{args.steps}  t={step * dt:.4e}", flush=True)
    if args.device:
        xp.cuda.get_current_stream().synchronize()
    elapsed = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    result = decomp.gather(u, root=0, ghost=1)
    status = 0
    failure = None
    if comm.rank == 0:
        try:
            status = _report(args, result, elapsed, x, h, r, dt, lam)
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below, never a hang
            failure = f"{type(exc).__name__}: {exc}"
    status, failure = comm.bcast((status, failure), root=0)
    halo.free()
    decomp.free()
    if failure is not None:
        raise RuntimeError(f"heat3d: rank 0 failed while checking or plotting: {failure}")
    return status


def _report(args, result, elapsed: float, x, h: float, r: float, dt: float, lam: float) -> int:
    """Rank 0: throughput line, the serial/analytic check, the PNG. Returns the exit status."""
    n = args.n
    status = 0
    result = result.get() if hasattr(result, "get") else result
    cells = n ** 3 * args.steps
    print(f"heat3d: {elapsed:.3f} s, {cells / elapsed / 1e6:.1f} M cell-updates/s", flush=True)
    if args.check:
        Xg, Yg, Zg = np.meshgrid(x, x, x, indexing="ij")
        u0, _ = initial(Xg, Yg, Zg, args.periodic)
        ref = serial_solve(u0, r, args.steps, args.periodic)
        diff = float(np.max(np.abs(result - ref)))
        # discrete decay factor of the mode per step: 1 - r * sum(4 sin^2(k h / 2))
        k = 2 * np.pi if args.periodic else np.pi
        g = 1 - r * 3 * 4 * np.sin(k * h / 2) ** 2
        exact = u0 * g ** args.steps
        err = float(np.max(np.abs(result - exact)) / np.max(np.abs(exact)))
        cont = u0 * np.exp(-args.alpha * lam * args.steps * dt)
        err_cont = float(np.max(np.abs(result - cont)) / np.max(np.abs(cont)))
        ok = diff == 0.0 and err < 1e-10
        print(f"check: max |parallel - serial| = {diff:.3e} (expected 0: same arithmetic); "
              f"relative error vs discrete mode decay {err:.2e}, vs continuous decay {err_cont:.2e}: "
              f"{'PASS' if ok else 'FAIL'}", flush=True)
        status = 0 if ok else 1
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        im = ax.imshow(result[:, :, n // 2].T, origin="lower", extent=(0, 1, 0, 1), cmap="inferno")
        fig.colorbar(im, ax=ax, label="u")
        ax.set_title(f"heat3d: z mid-plane after {args.steps} steps")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
        print(f"wrote {args.png}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
