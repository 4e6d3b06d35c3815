"""Halo exchange throughput: comms.HaloExchange vs PETSc DMDA vs plain mpi4py subarray Sendrecv.

3-D periodic grids of float64 cells, ``n^3`` cells per rank, ghost width ``g``,
box or star stencil, 1 or 8 fields. Throughput is ghost bytes filled (summed over
all ranks) per second of the slowest rank. Peers in the same launch:

* PETSc ``DMDA.globalToLocal`` (dof = number of fields, same process grid). This is
  what a DMDA code calls every step; it also copies the owned cells from the
  global into the local vector, which an in-place halo fill does not need.
* PETSc ``DMDA.localToLocal`` (ghost update between local vectors), shown as well.
* plain mpi4py: one subarray datatype per neighbour and field, one ``Sendrecv``
  per direction.
* our per-direction struct datatypes through one ``MPI_Neighbor_alltoallw`` on a
  distributed-graph communicator (the neighbourhood-collective alternative to our
  persistent requests).

Also prints the inter-node halo bytes of node-block placement vs row-major
placement for a few virtual node sizes (pure geometry, no timing).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from .common import BenchmarkError, Column, command_line, format_table, machine_lines, median, ratio, write_json

COMMAND = "halo"
HELP = "halo exchange vs PETSc DMDA and mpi4py Sendrecv (mpiexec -n 4, or -n 2 for timing on 2 cores)"

__all__ = ["run", "add_arguments", "placement_table"]


def _ints(text: str) -> list:
    return [int(x) for x in text.split(",") if x.strip()]


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default="32,64,128", metavar="N,..",
                        help="cells per rank per axis (default 32,64,128)")
    parser.add_argument("--ghosts", default="1,3", metavar="G,..", help="ghost widths (default 1,3)")
    parser.add_argument("--stencils", default="star,box", metavar="S,..", help="stencils (default star,box)")
    parser.add_argument("--fields", default="1,8", metavar="F,..", help="fields per exchange (default 1,8)")
    parser.add_argument("--layouts", default="arrays,components", metavar="L,..",
                        help="how several fields are held: 'arrays' (one array each) and/or 'components' (one "
                             "array with a trailing axis of F components: PETSc's dof=F layout) (default both)")
    parser.add_argument("--samples", type=int, default=5, metavar="N",
                        help="interleaved samples per implementation; the median is shown (default 5)")
    parser.add_argument("--min-sample-s", type=float, default=0.02, metavar="S",
                        help="repeat exchanges so one sample lasts at least this long (default 0.02)")
    parser.add_argument("--no-petsc", action="store_true", help="skip the PETSc peers")
    parser.add_argument("--device", action="store_true",
                        help="also CuPy fields: staged and CUDA-aware paths (needs a GPU)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write settings and raw samples (rank 0)")


# --------------------------------------------------------------------------- checks


def _fill(loc, d, g: int, k: int) -> None:
    """Interior = global linear index + k * 1e7 (so each field differs); ghosts = -1."""
    loc[...] = -1.0
    idx = np.ix_(*[np.arange(s.start, s.stop) for s in d.local_slices])
    lin = (idx[0] * d.global_shape[1] + idx[1]) * d.global_shape[2] + idx[2]
    loc[g:-g, g:-g, g:-g] = lin + k * 1e7


def _verify(loc, d, g: int, k: int, stencil: str, what: str) -> None:
    """Every ghost cell the stencil needs holds the (wrapped) global value."""
    n = d.local_shape
    ax = [np.arange(-g, n[i] + g) + d.local_start[i] for i in range(3)]
    wrapped = [a % d.global_shape[i] for i, a in enumerate(ax)]
    idx = np.ix_(*wrapped)
    exp = (idx[0] * d.global_shape[1] + idx[1]) * d.global_shape[2] + idx[2] + k * 1e7
    outside = [((a < d.local_start[i]) | (a >= d.local_start[i] + n[i])) for i, a in enumerate(ax)]
    nghost = outside[0][:, None, None].astype(int) + outside[1][None, :, None] + outside[2][None, None, :]
    need = nghost >= 1 if stencil == "box" else nghost == 1
    got = loc.get() if hasattr(loc, "get") else loc
    if not np.array_equal(got[need], np.broadcast_to(exp, need.shape)[need]):
        raise BenchmarkError(f"{what}: wrong ghost cells on rank {d.rank} (n={n}, g={g}, {stencil})")


# --------------------------------------------------------------------------- peers


class MpiSubarray:
    """Plain mpi4py: subarray types per direction, one Sendrecv per direction and field."""

    def __init__(self, halo, fields):
        from mpi4py import MPI

        self.comm = halo.comm
        self.fields = fields
        full = list(halo.full_shape)
        ncomp = int(np.prod(fields[0].shape[3:], dtype=int))
        cell = MPI.DOUBLE.Create_contiguous(ncomp).Commit() if ncomp > 1 else MPI.DOUBLE
        self.steps = []
        self.types = [cell] if ncomp > 1 else []
        d = halo.decomposition
        for off in halo.directions:  # every neighbour, this rank itself included (MPI copies)
            dest, src, tag = d.neighbor(off), d.neighbor(tuple(-o for o in off)), 0
            if src is None or dest is None:
                continue
            tag = sum((o + 1) * 3 ** i for i, o in enumerate(off))
            s_idx, r_idx = halo._slices(off, "send"), halo._slices(tuple(-o for o in off), "recv")
            st = cell.Create_subarray(full, [x.stop - x.start for x in s_idx], [x.start for x in s_idx]).Commit()
            rt = cell.Create_subarray(full, [x.stop - x.start for x in r_idx], [x.start for x in r_idx]).Commit()
            self.types += [st, rt]
            self.steps.append((st, dest, rt, src, tag))

    def __call__(self) -> None:
        for f in self.fields:
            for st, dest, rt, src, tag in self.steps:
                self.comm.Sendrecv([f, 1, st], dest, tag, [f, 1, rt], src, tag)

    def free(self) -> None:
        for t in self.types:
            t.Free()


class NeighborAlltoallw:
    """Our struct datatypes (one per direction, all fields) through one MPI_Neighbor_alltoallw
    on a distributed-graph communicator: the neighbourhood-collective alternative to
    persistent point-to-point requests."""

    def __init__(self, halo, fields):
        from mpi4py import MPI

        from comms.halo import _DatatypePlan

        d = halo.decomposition
        sig = 12345
        self.plan = _DatatypePlan(halo, fields, sig)
        ns = len(halo.sends)
        self.graph = d.comm.Create_dist_graph_adjacent([src for _, src, _ in halo.recvs],
                                                       [dest for _, dest, _ in halo.sends], reorder=False)
        st, rt = self.plan.types[:ns], self.plan.types[ns:]
        self.send = [MPI.BOTTOM, [1] * len(st), [0] * len(st), st]
        self.recv = [MPI.BOTTOM, [1] * len(rt), [0] * len(rt), rt]

        self.fields = fields
        self.copy_self = halo._copy_self if halo.self_copies else None

    def __call__(self) -> None:
        self.graph.Neighbor_alltoallw(self.send, self.recv)
        if self.copy_self is not None:  # the same in-field copies as HaloExchange (this rank is its own neighbour)
            for f in self.fields:
                self.copy_self(f)

    def free(self) -> None:
        self.plan.free()
        self.graph.Free()


def _petsc():
    try:
        from petsc4py import PETSc
    except ImportError:
        return None
    return PETSc


class PetscDMDA:
    """PETSc DMDA with dof = fields on the same process grid; global and local vectors."""

    def __init__(self, PETSc, comm, global_shape, dims, ghost: int, stencil: str, nfields: int):
        B = PETSc.DM.BoundaryType.PERIODIC
        st = PETSc.DMDA.StencilType.BOX if stencil == "box" else PETSc.DMDA.StencilType.STAR
        # PETSc orders axes x fastest: give it the sizes reversed so its boxes are ours.
        self.da = PETSc.DMDA().create(dim=3, sizes=tuple(reversed(global_shape)), proc_sizes=tuple(reversed(dims)),
                                      boundary_type=(B, B, B), stencil_type=st, stencil_width=ghost, dof=nfields,
                                      comm=PETSc.Comm(comm))
        self.g = self.da.createGlobalVec()
        self.l = self.da.createLocalVec()
        self.l2 = self.da.createLocalVec()
        self.g.set(1.0)
        self.l.set(1.0)

    def global_to_local(self) -> None:
        self.da.globalToLocal(self.g, self.l)

    def local_to_local(self) -> None:
        self.da.localToLocal(self.l, self.l2)

    def free(self) -> None:
        for o in (self.g, self.l, self.l2, self.da):
            o.destroy()


# --------------------------------------------------------------------------- timing


def _repeat(fn, k: int):
    def run():
        for _ in range(k):
            fn()
    return run


def _time(world, ops: dict, samples: int, min_sample_s: float, sync=None) -> tuple:
    """Median seconds per call of each op, max over ranks; collective."""
    from mpi4py import MPI

    for fn in ops.values():  # warm-up (plans, autotuning of pack engines)
        fn()
        fn()
    t0 = time.perf_counter()
    first = next(iter(ops.values()))
    first()
    if sync:
        sync()
    probe = world.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    k = int(min(1000, max(1, min_sample_s / max(probe, 1e-7))))
    raw = {name: [] for name in ops}
    for _ in range(samples):
        for name, fn in ops.items():
            world.Barrier()
            t = time.perf_counter()
            for _ in range(k):
                fn()
            if sync:
                sync()
            raw[name].append((time.perf_counter() - t) / k)
    med = {name: world.allreduce(median(v), op=MPI.MAX) for name, v in raw.items()}
    return med, raw, k


def _case(world, PETSc, n: int, g: int, stencil: str, nfields: int, args, xp=np, halo_kwargs=None,
          layout: str = "arrays") -> dict:
    from comms import CartDecomposition, HaloExchange
    from comms.placement import balanced_dims

    size = world.Get_size()
    dims = balanced_dims(size, (n * size,) * 3, (True,) * 3)
    shape = tuple(n * d for d in dims)
    out = {"n": n, "ghost": g, "stencil": stencil, "fields": nfields, "dims": dims, "layout": layout}
    with CartDecomposition(world, shape, periodic=True, dims=dims) as d:
        with HaloExchange(d, ghost=g, stencil=stencil, **(halo_kwargs or {})) as h:
            def filled(xp_):
                """The arrays to exchange: one per field, or one with a component axis."""
                if layout == "components":
                    f = np.empty(h.full_shape + (nfields,))
                    for k in range(nfields):
                        _fill(f[..., k], d, g, k)
                    return [xp_.asarray(f)]
                out_ = []
                for k in range(nfields):
                    f = np.empty(h.full_shape)
                    _fill(f, d, g, k)
                    out_.append(xp_.asarray(f))
                return out_

            def verified(name, exchange, flds):
                exchange()
                views = [flds[0][..., k] for k in range(nfields)] if layout == "components" else flds
                for k, f in enumerate(views):
                    _verify(f, d, g, k, stencil, name)

            fields = filled(xp)
            verified("HaloExchange", lambda: h.exchange(*fields), fields)
            out["method"] = "pack" if xp is not np else h.method
            nbytes = world.allreduce(h.bytes_per_exchange(*fields)["filled"])
            out["ghost_bytes"] = nbytes
            ops = {"hpcore": lambda: h.exchange(*fields)}
            sync = None
            peers = []
            if xp is np:
                for key, name, cls in (("mpi4py", "mpi4py Sendrecv", MpiSubarray),
                                       ("neighbor", "Neighbor_alltoallw", NeighborAlltoallw)):
                    flds = filled(np)
                    peer = cls(h, flds)
                    peers.append(peer)
                    verified(name, peer, flds)
                    ops[key] = peer
                if PETSc is not None:
                    da = PetscDMDA(PETSc, d.comm, shape, dims, g, stencil, nfields)
                    ops["petsc_g2l"] = da.global_to_local
                    ops["petsc_l2l"] = da.local_to_local
                    peers.append(da)
            else:
                sync = xp.cuda.get_current_stream().synchronize
            try:
                med, raw, k = _time(d.comm, ops, args.samples, args.min_sample_s, sync)
            finally:
                for p in peers:
                    p.free()
            out.update({"seconds": med, "raw": raw, "repeat": k})
    return out


def _rows(results):
    rows = []
    for r in results:
        s = r["seconds"]
        gbs = {k: r["ghost_bytes"] / v / 1e9 for k, v in s.items()}
        rows.append([r["n"], r["ghost"], r["stencil"], r["fields"], LAYOUT_LABEL[r.get("layout", "arrays")],
                     r["method"], r["ghost_bytes"] / 2 ** 20,
                     s["hpcore"] * 1e6, gbs["hpcore"],
                     s.get("petsc_g2l", float("nan")) * 1e6, ratio(s.get("petsc_g2l"), s["hpcore"]),
                     s.get("petsc_l2l", float("nan")) * 1e6, ratio(s.get("petsc_l2l"), s["hpcore"]),
                     s.get("mpi4py", float("nan")) * 1e6, ratio(s.get("mpi4py"), s["hpcore"]),
                     s.get("neighbor", float("nan")) * 1e6, ratio(s.get("neighbor"), s["hpcore"])])
    return rows


LAYOUT_LABEL = {"arrays": "arrays", "components": "1 array"}
COLUMNS = [Column("n^3/rank", "d"), Column("g", "d"), Column("stencil", left=True), Column("fields", "d"),
           Column("layout", left=True), Column("method", left=True), Column("ghost MiB", ".2f"),
           Column("hpcore us", ".0f"),
           Column("hpcore GB/s", ".2f"), Column("DMDA g2l us", ".0f"), Column("vs g2l", ".2f"),
           Column("DMDA l2l us", ".0f"), Column("vs l2l", ".2f"), Column("Sendrecv us", ".0f"),
           Column("vs Sendrecv", ".2f"), Column("nbr-a2aw us", ".0f"), Column("vs nbr", ".2f")]


PLACEMENT_CASES = [  # (process grid, ranks per node, periodic)
    ((16, 16), 8, False), ((4, 4, 4), 16, False), ((8, 8, 8), 64, False), ((8, 8, 8), 64, True),
    ((8, 8, 8), 48, False), ((16, 8, 8), 56, False), ((2, 2, 16), 4, False), ((12, 12, 12), 128, False),
]


def placement_table(markdown: bool = False) -> str:
    """Inter-node halo bytes per exchange: node-block vs row-major placement (virtual nodes).

    Not collective, no timing: pure geometry from :mod:`comms.placement`. Each rank
    owns 64 cells per axis, ghost 1, float64, box stencil.
    """
    from comms.placement import halo_bytes_by_node, node_block_grid, row_major_grid

    cols = [Column("ranks", "d"), Column("grid", left=True), Column("ranks/node", "d"), Column("periodic", left=True),
            Column("row-major inter MiB", ".2f"), Column("node-blocks inter MiB", ".2f"), Column("reduction", ".2f"),
            Column("all halo MiB", ".1f")]
    rows = []
    n, g = 64, 1
    for dims, per_node, periodic in PLACEMENT_CASES:
        size = int(np.prod(dims))
        shape = tuple(n * x for x in dims)
        per = (periodic,) * len(dims)
        nodes = [list(range(i, min(i + per_node, size))) for i in range(0, size, per_node)]
        node_of = [r // per_node for r in range(size)]
        ghost = (g,) * len(dims)
        rm = halo_bytes_by_node(row_major_grid(dims), shape, per, ghost, "box", 8, node_of)
        nb = halo_bytes_by_node(node_block_grid(dims, nodes, shape, per), shape, per, ghost, "box", 8, node_of)
        rows.append([size, "x".join(map(str, dims)), per_node, "yes" if periodic else "no", rm["inter"] / 2 ** 20,
                     nb["inter"] / 2 ** 20, ratio(rm["inter"], nb["inter"]), rm["total"] / 2 ** 20])
    return format_table(cols, rows, markdown=markdown)


def run(args, markdown: bool = False) -> int:
    """``mpiexec -n 4 python -m benchmarks halo``. Collective on ``MPI.COMM_WORLD``."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    t_start = time.perf_counter()
    machine = machine_lines(MPI)  # at the start, so its load average is the one before the run
    PETSc = None if args.no_petsc else _petsc()
    sizes, ghosts, fields = _ints(args.sizes), _ints(args.ghosts), _ints(args.fields)
    stencils = [s.strip() for s in args.stencils.split(",") if s.strip()]
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    if not layouts or any(x not in LAYOUT_LABEL for x in layouts):
        raise SystemExit(f"halo: --layouts must list some of {', '.join(LAYOUT_LABEL)}, got {args.layouts!r}")
    cmd = command_line(COMMAND, [("--sizes", args.sizes), ("--ghosts", args.ghosts), ("--stencils", args.stencils),
                                 ("--fields", args.fields), ("--layouts", args.layouts), ("--samples", args.samples),
                                 ("--min-sample-s", args.min_sample_s), ("--no-petsc", args.no_petsc),
                                 ("--device", args.device)], nprocs=world.Get_size(), markdown=markdown)
    results = []
    for n in sizes:
        for g in ghosts:
            for stencil in stencils:
                for nf in fields:
                    for layout in (layouts if nf > 1 else layouts[:1]):
                        r = _case(world, PETSc, n, g, stencil, nf, args, layout=layout)
                        results.append(r)
                        if world.rank == 0:
                            print(f"# done n={n} g={g} {stencil} fields={nf} {layout}: "
                                  f"hpcore {r['seconds']['hpcore'] * 1e6:.0f} us", file=sys.stderr, flush=True)
    device_results = []
    cp = None
    if args.device:
        from hpcore.arrays import cupy_or_none

        cp = cupy_or_none()
        if cp is not None:
            cp.cuda.Device(world.rank % cp.cuda.runtime.getDeviceCount()).use()
            from hpcore.cuda_aware import detect_cuda_aware

            aware = bool(detect_cuda_aware())
            for n in sizes:
                for g in ghosts:
                    for nf in fields:
                        for label, kw in [("staged", dict(cuda_aware=False)),
                                          ("cuda-aware", dict(cuda_aware=True))] if aware else \
                                [("staged", dict(cuda_aware=False))]:
                            r = _case(world, None, n, g, "box", nf, args, xp=cp, halo_kwargs=kw)
                            r["method"] = label
                            device_results.append(r)
    if world.rank == 0:
        print("# halo exchange: comms.HaloExchange vs PETSc DMDA vs plain mpi4py (3-D, periodic, float64)")
        for line in machine:
            print("# " + line)
        petsc_note = f"petsc4py {PETSc.__version__ if hasattr(PETSc, '__version__') else ''}".strip() \
            if PETSc is not None else "PETSc: not installed (pip install -e '.[petsc]')"
        print(f"# {world.Get_size()} ranks; {petsc_note}")
        print("# time per exchange: median of interleaved samples, slowest rank; 'vs X' = time(X) / time(hpcore) "
              "(>1: hpcore faster); ghost MiB = ghost bytes filled per exchange, all ranks")
        print()
        print(format_table(COLUMNS, _rows(results), markdown=markdown))
        if args.device:
            print()
            if cp is None:
                print("# device: skipped: CuPy is not installed or sees no CUDA device")
            else:
                print("## device fields (CuPy), box stencil; 'method' is the transport path")
                print(format_table(COLUMNS, _rows(device_results), markdown=markdown))
        print()
        print("## inter-node halo bytes per exchange: 64 cells per rank and axis, ghost 1, float64, box stencil "
              "(virtual nodes, geometry only; the last node may be short)")
        print(placement_table(markdown))
        print(f"\n# {time.perf_counter() - t_start:.0f} s. Reproduce: {cmd}")
        if args.json:
            write_json(args.json, {"command": cmd, "machine": machine, "host": results,
                                   "device": device_results})
    return 0
