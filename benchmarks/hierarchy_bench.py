"""Hierarchical collectives: measured (flat ring vs hierarchical vs MPI on virtual levels) and modelled (Frontier-like).

Measured: on ``comm = MPI.COMM_WORLD`` with virtual levels (``--levels``, default pairs
when the rank count allows), every size is checked first (integer-valued data, so every
summation order is exact: the hierarchical and flat results must equal MPI's element for
element), then timed: each implementation runs ``iters`` back-to-back calls per sample,
samples interleaved (flat, hierarchical, MPI, flat, ...), barrier before each sample; a
sample's time is the slowest rank's time per call; medians shown. Beside the times: the
cost model measured on this machine (``CostModel.measure``) predicts flat and hierarchical
and names its pick, and the bytes each schedule sent over the top level (counted by
``Hierarchy.traffic``).

On one machine the virtual levels share one memory system, so the hierarchy cannot win
bandwidth here; what it changes is the number of ring steps and calls.

Modelled: ``CostModel.frontier()`` (sources in ``comms.costmodel.FRONTIER_SOURCES``) for
2 to 1024 nodes of 8 GCDs: allreduce flat vs 2-level (node / world) vs 3-level (GCD pair /
node / world), the bytes per GCD that cross nodes, and the communication of one training
step of ZeRO-3, ZeRO++ hpZ and the 3-level variant (forward gather, backward gather,
gradient reduce-scatter). ``--plot PATH`` writes the allreduce times as a PNG.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from .common import BenchmarkError, Column, command_line, format_table, machine_lines, median, ratio, write_json

COMMAND = "hierarchy"
HELP = ("hierarchical vs flat ring vs MPI collectives on virtual levels (mpiexec -n 2 or 4), "
        "and Frontier-like modelled predictions with a plot")

__all__ = ["add_arguments", "run", "measure", "modelled_allreduce", "modelled_training", "plot"]

COLLECTIVES = ("allreduce", "reduce_scatter", "allgather")


def _ints(text: str) -> list:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default="65536,1048576,8388608", metavar="B,..",
                        help="measured message sizes [bytes] per rank (default 64 KiB, 1 MiB, 8 MiB)")
    parser.add_argument("--levels", default=None, metavar="K,..",
                        help="virtual levels, innermost first "
                             "(default: 2 when the rank count is even and >= 4, else 1)")
    parser.add_argument("--collectives", default="allreduce,reduce_scatter,allgather", metavar="C,..",
                        help="measured collectives (default all three)")
    parser.add_argument("--samples", type=int, default=7, metavar="N", help="interleaved samples (default 7)")
    parser.add_argument("--no-measure", action="store_true", help="skip the measured part")
    parser.add_argument("--no-model", action="store_true", help="skip the modelled part")
    parser.add_argument("--model-sizes", default="16777216,1073741824", metavar="B,..",
                        help="modelled allreduce sizes [bytes] (default 16 MiB, 1 GiB)")
    parser.add_argument("--max-nodes", type=int, default=1024, metavar="N", help="modelled nodes up to (default 1024)")
    parser.add_argument("--params", type=float, default=20e9,
                        help="modelled training: parameters (default 20e9, the GPT of Xu et al.)")
    parser.add_argument("--param-bytes", type=int, default=2, help="bytes per parameter and gradient (default 2: fp16)")
    parser.add_argument("--plot", default=None, metavar="PATH", help="write the modelled allreduce times as a PNG here")
    parser.add_argument("--json", default=None, metavar="PATH", help="write settings and raw samples (rank 0)")


# --------------------------------------------------------------------------- measured


def _iters(nbytes: int) -> int:
    return int(min(50, max(1, (8 << 20) // max(nbytes, 1))))


def _impls(comm, h, what: str, x, shard):
    """Name -> fn() for one collective: flat ring, hierarchical, MPI."""
    from mpi4py import MPI

    from comms.ring import ring_allgather, ring_allreduce, ring_blocks, ring_reduce_scatter

    size = comm.Get_size()
    if what == "allreduce":
        out = np.empty_like(x)
        return {"flat ring": lambda: ring_allreduce(comm, x),
                "hierarchical": lambda: h.allreduce(x),
                "MPI": lambda: comm.Allreduce(x, out, op=MPI.SUM)}
    if what == "reduce_scatter":
        counts, _ = ring_blocks(x.size, size)
        out = np.empty(counts[comm.Get_rank()], dtype=x.dtype)
        return {"flat ring": lambda: ring_reduce_scatter(comm, x),
                "hierarchical": lambda: h.reduce_scatter(x),
                "MPI": lambda: comm.Reduce_scatter(x, out, recvcounts=counts, op=MPI.SUM)}
    out = np.empty(shard.size * size, dtype=shard.dtype)
    return {"flat ring": lambda: ring_allgather(comm, shard),
            "hierarchical": lambda: h.allgather(shard),
            "MPI": lambda: comm.Allgather(shard, out)}


def _check(comm, h, what: str, x, shard) -> None:
    """Every implementation equals MPI's result exactly (integer-valued data)."""
    from mpi4py import MPI

    from comms.ring import ring_blocks

    if what == "allreduce":
        ref = np.empty_like(x)
        comm.Allreduce(x, ref)
        results = {"flat ring": None, "hierarchical": h.allreduce(x)}
        from comms.ring import ring_allreduce

        results["flat ring"] = ring_allreduce(comm, x)
    elif what == "reduce_scatter":
        counts, displs = ring_blocks(x.size, comm.Get_size())
        full = np.empty_like(x)
        comm.Allreduce(x, full)
        r = comm.Get_rank()
        ref = full[displs[r]:displs[r] + counts[r]]
        from comms.ring import ring_reduce_scatter

        results = {"flat ring": ring_reduce_scatter(comm, x), "hierarchical": h.reduce_scatter(x)}
    else:
        ref = np.concatenate(comm.allgather(shard))
        from comms.ring import ring_allgather

        results = {"flat ring": ring_allgather(comm, shard), "hierarchical": h.allgather(shard)}
    bad = {k: int(np.count_nonzero(v != ref)) for k, v in results.items()}
    total = {k: comm.allreduce(v, op=MPI.SUM) for k, v in bad.items()}
    if any(total.values()):
        raise BenchmarkError(f"hierarchy: {what} gave wrong elements {total} at {x.nbytes} B")


def measure(comm, levels, sizes, collectives, samples: int) -> dict:
    """Check, time and count every collective at every size. Collective on ``comm``."""
    from mpi4py import MPI

    from comms.costmodel import CostModel
    from comms.hierarchy import Hierarchy

    results = {"levels": levels, "rows": []}
    with Hierarchy(comm, levels=levels) as h:
        model = CostModel.measure(h)
        results["model"] = model.to_dict()
        results["names"] = h.names
        results["factors"] = h.layout.factors
        top = [i for i, lv in enumerate(h.levels) if lv.factor > 1]
        top_name = h.names[top[-1]] if top else h.names[-1]
        for what in collectives:
            for nbytes in sizes:
                count = max(1, nbytes // 8)
                rng = np.random.default_rng([3, comm.Get_rank()])
                x = rng.integers(-8, 9, count).astype(np.float64)
                shard = x[: max(1, count // comm.Get_size())].copy()
                _check(comm, h, what, x, shard)
                impls = _impls(comm, h, what, x, shard)
                # traffic of one call of each schedule (counted, per level)
                counted = {}
                for sched in ("flat", "hierarchical"):
                    h.reset_traffic()
                    arg = shard if what == "allgather" else x
                    getattr(h, what)(arg, schedule=sched)
                    counted[sched] = h.traffic_summary()
                iters = _iters(nbytes)
                for fn in impls.values():
                    fn()
                raw = {name: [] for name in impls}
                for _ in range(samples):
                    for name, fn in impls.items():
                        comm.Barrier()
                        t0 = time.perf_counter()
                        for _ in range(iters):
                            fn()
                        raw[name].append((time.perf_counter() - t0) / iters)
                names = list(raw)
                local = np.array([raw[n] for n in names])
                slow = np.empty_like(local)
                comm.Allreduce(local, slow, op=MPI.MAX)
                med = {n: median(slow[i]) for i, n in enumerate(names)}
                mbytes = nbytes if what != "allgather" else shard.nbytes * comm.Get_size()
                pred = {s: model.predict(h.layout.factors, mbytes, what, s) for s in ("flat", "hierarchical")}
                best, _ = model.pick(h.layout.factors, mbytes, what)
                results["rows"].append({
                    "collective": what, "nbytes": nbytes, "iters": iters, "median_s": med,
                    "samples": {n: slow[i].tolist() for i, n in enumerate(names)},
                    "predicted_s": pred, "pick": "flat" if len(best) == 1 else "hierarchical",
                    "top_level": top_name,
                    "top_bytes_max": {s: counted[s][top_name]["max"] for s in counted},
                    "top_bytes_total": {s: counted[s][top_name]["total"] for s in counted},
                })
                if comm.Get_rank() == 0:
                    print(f"# done {what} {nbytes} B: hierarchical {med['hierarchical'] * 1e6:.0f} us",
                          file=sys.stderr, flush=True)
    return results


MEASURED_COLUMNS = [
    Column("collective", left=True), Column("size/rank", left=True), Column("flat ring us", ".0f"),
    Column("hier us", ".0f"), Column("MPI us", ".0f"), Column("flat/hier", ".2f"), Column("MPI/hier", ".2f"),
    Column("model flat us", ".0f"), Column("model hier us", ".0f"), Column("model pick", left=True),
    Column("top KiB/rank flat", ".1f"), Column("top KiB/rank hier", ".1f"), Column("top KiB all flat", ".1f"),
    Column("top KiB all hier", ".1f"),
]


def _size(n: int) -> str:
    for unit, s in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= s and n % s == 0:
            return f"{n // s} {unit}"
    return f"{n} B"


def measured_rows(results) -> list:
    rows = []
    for r in results["rows"]:
        m, p = r["median_s"], r["predicted_s"]
        rows.append([r["collective"], _size(r["nbytes"]), m["flat ring"] * 1e6, m["hierarchical"] * 1e6,
                     m["MPI"] * 1e6, ratio(m["flat ring"], m["hierarchical"]), ratio(m["MPI"], m["hierarchical"]),
                     p["flat"] * 1e6, p["hierarchical"] * 1e6, r["pick"],
                     r["top_bytes_max"]["flat"] / 1024, r["top_bytes_max"]["hierarchical"] / 1024,
                     r["top_bytes_total"]["flat"] / 1024, r["top_bytes_total"]["hierarchical"] / 1024])
    return rows


# --------------------------------------------------------------------------- modelled


def _nodes(max_nodes: int) -> list:
    out, n = [], 2
    while n <= max_nodes:
        out.append(n)
        n *= 2
    return out


SCHEMES = {"flat": (2,), "2-level": (1, 2), "3-level": (0, 1, 2)}


def modelled_allreduce(sizes, max_nodes: int) -> list:
    """Frontier-like predictions per node count and size: times [s] and inter-node bytes per GCD."""
    from comms.costmodel import CostModel

    model = CostModel.frontier()
    rows = []
    for nbytes in sizes:
        for n in _nodes(max_nodes):
            factors = (2, 4, n)
            t = {k: model.predict(factors, nbytes, "allreduce", s) for k, s in SCHEMES.items()}
            tr = {k: model.traffic(factors, nbytes, "allreduce", s)["world"] for k, s in SCHEMES.items()}
            best, _ = model.pick(factors, nbytes, "allreduce")
            rows.append({"nbytes": nbytes, "nodes": n, "gcds": 8 * n, "seconds": t, "pick": best,
                         "inter_max": {k: v["max"] for k, v in tr.items()},
                         "inter_per_node": {k: v["total"] / n for k, v in tr.items()}})
    return rows


def modelled_training(params: float, param_bytes: int, max_nodes: int) -> list:
    """Communication of one training step [s] on Frontier-like nodes: ZeRO-3 (flat rings),
    hpZ (secondary in the node, node/world collectives), 3-level (secondary in the GCD pair,
    pair/node/world collectives)."""
    from comms.costmodel import CostModel

    model = CostModel.frontier()
    nbytes = params * param_bytes
    rows = []
    for n in _nodes(max_nodes):
        f = (2, 4, n)
        gather = {"ZeRO-3": model.predict(f, nbytes, "allgather", "flat"),
                  "hpZ": model.predict(f, nbytes, "allgather", (1, 2)),
                  "3-level": model.predict(f, nbytes, "allgather", (0, 1, 2))}
        backward = {"ZeRO-3": gather["ZeRO-3"],
                    "hpZ": model.predict(f[:2], nbytes, "allgather", "flat"),  # inside the node (8 GCDs)
                    "3-level": model.predict(f[:1], nbytes, "allgather", "flat")}  # inside the GCD pair
        reduce = {"ZeRO-3": model.predict(f, nbytes, "reduce_scatter", "flat"),
                  "hpZ": model.predict(f, nbytes, "reduce_scatter", (1, 2)),
                  "3-level": model.predict(f, nbytes, "reduce_scatter", (0, 1, 2))}
        step = {k: gather[k] + backward[k] + reduce[k] for k in gather}
        memory = {"ZeRO-3": nbytes / (8 * n), "hpZ": nbytes / (8 * n) + nbytes / 8,
                  "3-level": nbytes / (8 * n) + nbytes / 2}
        rows.append({"nodes": n, "step_s": step, "gather_s": gather, "backward_s": backward, "reduce_s": reduce,
                     "param_bytes_per_gcd": memory})
    return rows


def plot(rows, path: str) -> None:
    """Modelled allreduce time vs nodes, one panel per size. Not collective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["nbytes"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.2), squeeze=False)
    for ax, nbytes in zip(axes[0], sizes):
        sel = [r for r in rows if r["nbytes"] == nbytes]
        nodes = [r["nodes"] for r in sel]
        for k, style in (("flat", "o-"), ("2-level", "s-"), ("3-level", "^-")):
            ax.plot(nodes, [r["seconds"][k] * 1e3 for r in sel], style, label=k)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("nodes (8 GCDs each)")
        ax.set_ylabel("allreduce time [ms]")
        ax.set_title(f"ring allreduce of {_size(nbytes)} per GCD")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("Frontier-like alpha-beta model (peak link figures): flat vs node/world vs GCD-pair/node/world",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


MODEL_COLUMNS = [
    Column("size/GCD", left=True), Column("nodes", "d"), Column("GCDs", "d"), Column("flat ms", ".2f"),
    Column("2-level ms", ".2f"), Column("3-level ms", ".2f"), Column("flat/3-level", ".2f"),
    Column("2-level/3-level", ".2f"), Column("pick", left=True), Column("MiB/GCD off-node flat", ".1f"),
    Column("2-level", ".1f"), Column("3-level", ".1f"), Column("MiB/node off-node flat", ".1f"),
    Column("MiB/node 3-level", ".1f"),
]

TRAIN_COLUMNS = [
    Column("nodes", "d"), Column("ZeRO-3 s", ".3f"), Column("hpZ s", ".3f"), Column("3-level s", ".3f"),
    Column("ZeRO-3/3-level", ".2f"), Column("hpZ/3-level", ".2f"), Column("bwd gather ZeRO-3 ms", ".1f"),
    Column("hpZ ms", ".1f"), Column("3-level ms", ".1f"), Column("params GiB/GCD ZeRO-3", ".2f"),
    Column("GiB/GCD hpZ", ".2f"), Column("GiB/GCD 3-level", ".2f"),
]


def _model_rows(rows) -> list:
    from comms.costmodel import schedule_name

    names = ("gcd_pair", "node", "world")
    out = []
    for r in rows:
        t, mx, pn = r["seconds"], r["inter_max"], r["inter_per_node"]
        out.append([_size(r["nbytes"]), r["nodes"], r["gcds"], t["flat"] * 1e3, t["2-level"] * 1e3,
                    t["3-level"] * 1e3, ratio(t["flat"], t["3-level"]), ratio(t["2-level"], t["3-level"]),
                    schedule_name(r["pick"], names), mx["flat"] / 2 ** 20, mx["2-level"] / 2 ** 20,
                    mx["3-level"] / 2 ** 20, pn["flat"] / 2 ** 20, pn["3-level"] / 2 ** 20])
    return out


def _train_rows(rows) -> list:
    out = []
    for r in rows:
        s, b, m = r["step_s"], r["backward_s"], r["param_bytes_per_gcd"]
        out.append([r["nodes"], s["ZeRO-3"], s["hpZ"], s["3-level"], ratio(s["ZeRO-3"], s["3-level"]),
                    ratio(s["hpZ"], s["3-level"]), b["ZeRO-3"] * 1e3, b["hpZ"] * 1e3, b["3-level"] * 1e3,
                    m["ZeRO-3"] / 2 ** 30, m["hpZ"] / 2 ** 30, m["3-level"] / 2 ** 30])
    return out


# --------------------------------------------------------------------------- entry point


def run(args, markdown: bool = False) -> int:
    """``mpiexec -n 2 python -m benchmarks hierarchy``. Collective on ``MPI.COMM_WORLD``."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    size, rank = world.Get_size(), world.Get_rank()
    t_start = time.perf_counter()
    levels = _ints(args.levels) if args.levels else ([2] if size >= 4 and size % 2 == 0 else [1])
    collectives = [c.strip() for c in args.collectives.split(",") if c.strip()]
    for c in collectives:
        if c not in COLLECTIVES:
            raise SystemExit(f"--collectives: unknown {c!r}; expected some of {COLLECTIVES}")
    cmd = command_line(COMMAND, [("--sizes", args.sizes), ("--levels", args.levels),
                                 ("--collectives", args.collectives), ("--samples", args.samples),
                                 ("--no-measure", args.no_measure), ("--no-model", args.no_model),
                                 ("--model-sizes", args.model_sizes), ("--max-nodes", args.max_nodes),
                                 ("--params", args.params), ("--param-bytes", args.param_bytes),
                                 ("--plot", args.plot)], nprocs=size, markdown=markdown)
    measured = None
    if not args.no_measure and size >= 2:
        measured = measure(world, levels, _ints(args.sizes), collectives, args.samples)
    model_rows = train_rows = None
    if rank == 0 and not args.no_model:
        model_rows = modelled_allreduce(_ints(args.model_sizes), args.max_nodes)
        train_rows = modelled_training(args.params, args.param_bytes, args.max_nodes)
        if args.plot:
            plot(model_rows, args.plot)
    if rank == 0:
        print("# hierarchical collectives: comms.Hierarchy vs flat comms.ring vs MPI (float64)")
        for line in machine_lines(MPI):
            print("# " + line)
        if measured is not None:
            m = measured["model"]
            lv = ", ".join(f"{n} x{f}" for n, f in zip(measured["names"], measured["factors"]))
            over = " (OVERSUBSCRIBED: more ranks than cores)" if size > (__import__("os").cpu_count() or 1) else ""
            print(f"# measured: {size} ranks{over}, virtual levels [{lv}] (innermost first; 'x f' = groups of the "
                  "level below per group)")
            print("# time per call: median of interleaved samples, slowest rank per sample; flat/hier, MPI/hier > 1: "
                  "hierarchical faster")
            print("# model: CostModel.measure on this run: " + "; ".join(
                f"{l['name']}: alpha {l['alpha_s'] * 1e6:.1f} us, {l['bandwidth_Bps'] / 1e9:.2f} GB/s"
                for l in m["levels"]) + f"; call overhead {m['call_overhead_s'] * 1e6:.0f} us; local reduction "
                  f"{(m.get('reduce_Bps') or float('nan')) / 1e9:.2f} GB/s")
            print("# top KiB: bytes over the links of the outermost level with more than one group, counted by "
                  "Hierarchy.traffic for one call of each schedule (busiest rank, and all ranks together)")
            if len([f for f in measured["factors"] if f > 1]) < 2:
                print("# NOTE: with these levels only one level has more than one group: the hierarchical schedule is "
                      "one ring, and its difference to the flat ring is the Hierarchy's own overhead")
            print()
            print(format_table(MEASURED_COLUMNS, measured_rows(measured), markdown=markdown))
        elif not args.no_measure:
            print("# measured part skipped: run under mpiexec with 2 or more ranks")
        if model_rows is not None:
            print()
            print("# modelled: CostModel.frontier() (peak link figures; see comms.costmodel.FRONTIER_SOURCES): "
                  "GCD pair 200 GB/s, node 50 GB/s, inter-node 25 GB/s per NIC, 4 NICs per node; ring algorithms only")
            print("# 2-level = node/world (the 8 GCDs of a node as one ring), 3-level = gcd_pair/node/world; "
                  "off-node MiB: bytes one GCD (the busiest) and one node send to other nodes per allreduce")
            print()
            print(format_table(MODEL_COLUMNS, _model_rows(model_rows), markdown=markdown))
            print()
            print(f"# modelled training step communication, {args.params:.3g} parameters x {args.param_bytes} B: "
                  "forward gather + backward gather + gradient reduce-scatter; ZeRO-3 on flat rings, hpZ with its "
                  "secondary copy in the node and node/world collectives, 3-level with the secondary copy in the GCD "
                  "pair and pair/node/world collectives (no compute overlap, no quantization)")
            print()
            print(format_table(TRAIN_COLUMNS, _train_rows(train_rows), markdown=markdown))
            if args.plot:
                print(f"\n# plot: {args.plot}")
        print(f"# {time.perf_counter() - t_start:.0f} s. Reproduce: {cmd}")
        if args.json:
            write_json(args.json, {"measured": measured, "modelled": model_rows, "training": train_rows,
                                   "command": cmd})
    return 0
