"""Surrogate training: accuracy vs neuraloperator, data-parallel scaling and overlap, TFNO compression, MG patching.

Parts (``--part``), each printing a table with its peer from the same launch:

``accuracy`` (1 rank)
    Darcy 16x16 (neuraloperator's bundled ``darcy_train_16``/``darcy_test_16``/``darcy_test_32``,
    or our own generated set with ``--data``): our FNO and neuraloperator 0.3.0's FNO of the same
    architecture, trained on the same samples in the same batch order with the same budget
    (Adam, cosine schedule, relative L2 loss on the decoded output, ``UnitGaussianNormalizer`` on
    ``y``, grid channels appended), both float32 on one thread. Test relative L2 at 16x16 and
    zero-shot at 32x32, samples/s.
``scaling`` (``mpiexec -n 2``)
    The same training on rank 0 alone (the other ranks wait without spinning), then data-parallel
    over all ranks with the bucket allreduce overlapped with backward and without overlap; the
    overlap fraction ``(t_no_overlap - t_overlap) / t_allreduce`` per step; optimizer memory per
    rank with and without the ZeRO-style sharded state.
``tfno`` (1 rank)
    TFNO (Tucker) at several ranks against the dense FNO: spectral parameters, compression, test error.
``mg`` (``mpiexec -n 4``)
    MG patching (patch + halo + coarse context) on every rank against the undecomposed model
    (trained data-parallel over the same ranks, i.e. serial training), test error and per-rank
    activation memory (NumPy allocations traced over one forward + backward).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from .common import Column, command_line, format_table, machine_lines, write_json

__all__ = ["COMMAND", "HELP", "add_arguments", "run", "main"]

COMMAND = "surrogate-train"
HELP = ("FNO training on Darcy 16x16 vs neuraloperator, data-parallel scaling (mpiexec -n 2), TFNO compression, "
        "MG patching (mpiexec -n 4)")
PARTS = ("accuracy", "scaling", "tfno", "mg")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--part", choices=PARTS, default="accuracy")
    p.add_argument("--data", default="neuralop", help="'neuralop' (bundled .pt files) or an HDF5 file of ours "
                   "(first --train samples train, next --test test)")
    p.add_argument("--train", type=int, default=1000, help="training samples")
    p.add_argument("--test", type=int, default=50, help="test samples (each resolution)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--modes", type=int, default=8)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lifting", type=int, default=0)
    p.add_argument("--projection", type=int, default=64)
    p.add_argument("--lr", type=float, default=8e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ranks", default="0.2,0.1,0.05,0.02", help="TFNO Tucker ranks (fractions), --part tfno")
    p.add_argument("--padding", type=int, default=2, help="MG patching halo width, --part mg")
    p.add_argument("--levels", type=int, default=1, help="MG patching context levels, --part mg")
    p.add_argument("--bucket-kib", type=int, default=256, help="gradient bucket size [KiB], --part scaling")
    p.add_argument("--json", default=None, help="write the raw numbers here")


def _load(args):
    from solvers.surrogates.data import load_darcy_pt, load_h5, neuralop_file

    if args.data == "neuralop":
        train = load_darcy_pt(neuralop_file("darcy_train_16"), args.train, dtype="float32")
        tests = {"16": load_darcy_pt(neuralop_file("darcy_test_16"), args.test, dtype="float32")}
        try:
            tests["32"] = load_darcy_pt(neuralop_file("darcy_test_32"), args.test, dtype="float32")
        except (FileNotFoundError, ValueError):
            pass
        return train, tests, "neuraloperator 0.3.0 darcy_{train,test}_16, darcy_test_32"
    train = load_h5(args.data, args.train, dtype="float32")
    test = load_h5(args.data, args.test, start=args.train, dtype="float32")
    return train, {str(train.x.shape[-1]): test}, f"{args.data}"


def _config(args, **kw):
    cfg = {"model": "fno", "n_modes": [args.modes, args.modes], "hidden_channels": args.width, "in_channels": 1,
           "out_channels": 1, "lifting_channels": args.lifting, "projection_channels": args.projection,
           "n_layers": args.layers, "positional_embedding": True, "dtype": "float32", "seed": args.seed}
    cfg.update(kw)
    return cfg


def _train_config(args):
    from solvers.surrogates.training import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, weight_decay=1e-4, schedule="cosine",
                       loss="l2", seed=args.seed, normalize_output=True)


def _train_ours(args, train, tests, comm=None, **kw):
    from solvers.surrogates import build_model
    from solvers.surrogates.training import Trainer

    model = build_model(_config(args, **kw))
    t = Trainer(model, train, tests, _train_config(args), comm=comm, log=False)
    t0 = time.perf_counter()
    t.fit()
    wall = time.perf_counter() - t0
    train_s = sum(r["wall_s"] for r in t.history)
    return t, {"test": t.history[-1]["test"], "samples_per_s": len(train) * args.epochs / train_s, "wall_s": wall,
               "n_params": model.n_params}


def _train_neuralop(args, train, tests):
    """The peer: neuraloperator's FNO with the same architecture, data, batch order, optimizer and schedule."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    try:
        from neuralop.models import FNO as NopFNO
    except ImportError as exc:
        return None, f"neuraloperator is not importable ({exc})"
    from solvers.surrogates.data import GaussianNormalizer
    from solvers.surrogates.torch_interop import append_grid

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = NopFNO(n_modes=(args.modes, args.modes), hidden_channels=args.width, in_channels=3, out_channels=1,
                   lifting_channels=args.lifting, projection_channels=args.projection, n_layers=args.layers)
    norm = GaussianNormalizer.fit(train.y)
    mean, scale = float(norm.mean.reshape(-1)[0]), float(norm.std.reshape(-1)[0] + norm.eps)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    x_all = torch.from_numpy(append_grid(train.x))
    y_all = torch.from_numpy(train.y)

    def rel_l2(pred, y):
        dims = tuple(range(1, pred.ndim))
        return (torch.linalg.vector_norm(pred - y, dim=dims) / torch.linalg.vector_norm(y, dim=dims))

    train_s = 0.0
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        model.train()
        for index in train.batches(args.batch, epoch=epoch, seed=args.seed):
            idx = torch.from_numpy(index)
            opt.zero_grad()
            pred = model(x_all[idx]) * scale + mean
            loss = rel_l2(pred, y_all[idx]).mean()
            loss.backward()
            opt.step()
        sched.step()
        train_s += time.perf_counter() - t0
    model.eval()
    errs = {}
    with torch.no_grad():
        for name, ds in tests.items():
            pred = model(torch.from_numpy(append_grid(ds.x))) * scale + mean
            errs[name] = float(rel_l2(pred, torch.from_numpy(ds.y)).mean())
    n_params = sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())
    import neuralop

    version = getattr(neuralop, "__version__", "0.3.0")
    return {"test": errs, "samples_per_s": len(train) * args.epochs / train_s, "n_params": n_params,
            "version": f"neuraloperator {version}, torch {torch.__version__}"}, None


def _header(title, args, source, cmd, comm=None):
    from mpi4py import MPI

    print(f"# {title}")
    print(f"# data: {source}; {args.train} train / {args.test} test samples; FNO modes {args.modes}x{args.modes}, "
          f"width {args.width}, {args.layers} blocks, lifting {args.lifting}, projection {args.projection}, grid "
          f"channels; {args.epochs} epochs, batch {args.batch}, Adam lr {args.lr} wd 1e-4, cosine; float32")
    for line in machine_lines(MPI):
        print("# " + line)
    threads = ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    print(f"# ranks: {comm.Get_size() if comm is not None else 1}; threads: {threads}")
    print(f"# reproduce: {cmd}")


def _load_end():
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


# --------------------------------------------------------------------------- parts

def _accuracy(args, markdown, cmd):
    train, tests, source = _load(args)
    _header("FNO on Darcy: ours vs neuraloperator, same data, batches and budget", args, source, cmd)
    ours_t, ours = _train_ours(args, train, tests)
    theirs, why = _train_neuralop(args, train, tests)
    names = list(tests)
    cols = [Column("implementation", left=True)] + [Column(f"test rel L2 @{n}", ".4f") for n in names] + [
        Column("ours / theirs @16", ".3f"), Column("train samples/s", ".1f"), Column("parameters", "d")]
    rows = [["ours (numpy)"] + [ours["test"][n] for n in names] +
            [ours["test"][names[0]] / theirs["test"][names[0]] if theirs else float("nan"),
             ours["samples_per_s"], ours["n_params"]]]
    if theirs:
        rows.append([theirs["version"]] + [theirs["test"][n] for n in names] + [1.0, theirs["samples_per_s"],
                                                                                 theirs["n_params"]])
    else:
        print(f"# neuraloperator not run: {why}")
    print()
    print(format_table(cols, rows, markdown=markdown))
    print(f"\n# load average at the end: {_load_end()}")
    return {"ours": ours, "theirs": theirs, "history": ours_t.history}


def _wait_quietly(comm):
    """Block until rank 0 joins, without spinning a core (an Ibarrier polled with sleeps)."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.01)


def _scaling(args, markdown, cmd):
    """1 rank vs all ranks, interleaved epoch by epoch (1 rank, overlapped, not overlapped, again), so
    that drifting load on a shared machine hits every variant alike; medians over the epochs after
    the first (warm-up)."""
    from mpi4py import MPI

    from solvers.surrogates import build_model
    from solvers.surrogates.parallel import DataParallel
    from solvers.surrogates.training import Trainer

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    train, _, source = _load(args)
    if rank == 0:
        _header(f"data-parallel training: 1 rank vs {size} ranks, interleaved epochs in one launch", args, source,
                cmd, comm)
    single = Trainer(build_model(_config(args)), train, {}, _train_config(args), comm=MPI.COMM_SELF, log=False) \
        if rank == 0 else None
    dps, trainers = {}, {}
    for key, overlap in (("overlap", True), ("no_overlap", False)):
        model = build_model(_config(args))
        dps[key] = DataParallel(comm, model, overlap=overlap, bucket_nbytes=args.bucket_kib * 1024)
        trainers[key] = Trainer(model, train, {}, _train_config(args), parallel=dps[key], log=False)
    epoch_s = {"1": [], "overlap": [], "no_overlap": []}
    waits = {"overlap": [], "no_overlap": []}
    for _ in range(args.epochs):
        if rank == 0:
            epoch_s["1"].append(single.train_epoch()["wall_s"])
            comm.Ibarrier().Wait()
        else:
            _wait_quietly(comm)
        for key, t in trainers.items():
            before = dps[key].stats["wait_s"]
            epoch_s[key].append(t.train_epoch()["wall_s"])
            waits[key].append(dps[key].stats["wait_s"] - before)
    steps = len(train.batches(args.batch))
    out = {"epoch_s": epoch_s, "steps_per_epoch": steps, "load_end": _load_end()}
    for key in trainers:
        dp = dps[key]
        out[key] = {"allreduce_s": dp.time_allreduce(repeats=5), "buckets": len(dp.buckets),
                    "same": dp.same_on_every_rank(), "memory": dp.memory_per_rank(trainers[key].optimizer)}
        dp.free()
    model = build_model(_config(args))
    dp = DataParallel(comm, model, sharded=True)
    t = Trainer(model, train, {}, _train_config(args), parallel=dp, log=False)
    t.fit(1)
    out["sharded_memory"] = dp.memory_per_rank()
    dp.free()
    if rank == 0:
        def med(key):
            v = epoch_s[key][1:] or epoch_s[key]
            return float(np.median(v))

        one = len(train) / med("1")
        ov = out["overlap"]
        step_ov, step_no = med("overlap") / steps, med("no_overlap") / steps
        exposed_ov = float(np.median(waits["overlap"][1:] or waits["overlap"])) / steps
        exposed_no = float(np.median(waits["no_overlap"][1:] or waits["no_overlap"])) / steps
        frac = (step_no - step_ov) / ov["allreduce_s"] if ov["allreduce_s"] > 0 else float("nan")
        hidden = 1.0 - exposed_ov / ov["allreduce_s"] if ov["allreduce_s"] > 0 else float("nan")
        out.update(overlap_fraction=frac, hidden_fraction=hidden, samples_per_s_1=one)
        cols = [Column("run", left=True), Column("samples/s", ".1f"), Column("speed-up vs 1 rank", ".2f"),
                Column("step [ms]", ".1f"), Column("exposed comm/step [ms]", ".2f"),
                Column("allreduce alone [ms]", ".2f"), Column("params same bitwise", left=True)]
        rows = [["1 rank", one, 1.0, med("1") / steps * 1e3, "", "", ""]]
        for key, label, step, exposed in (("overlap", f"{size} ranks, overlapped buckets", step_ov, exposed_ov),
                                          ("no_overlap", f"{size} ranks, allreduce after backward", step_no,
                                           exposed_no)):
            sps = len(train) / med(key)
            out[key]["samples_per_s"] = sps
            rows.append([label, sps, sps / one, step * 1e3, exposed * 1e3, out[key]["allreduce_s"] * 1e3,
                         str(out[key]["same"])])
        print()
        print(format_table(cols, rows, markdown=markdown))
        print(f"\n# medians of epochs 2..{args.epochs} (epoch 1 is warm-up), {steps} steps per epoch; "
              f"{ov['buckets']} buckets of ~{args.bucket_kib} KiB")
        print(f"# overlap fraction (t_step_no_overlap - t_step_overlap) / t_allreduce = {frac:.2f}; hidden fraction "
              f"1 - exposed / t_allreduce = {hidden:.2f}")
        full, sh = ov["memory"], out["sharded_memory"]
        print(f"# memory per rank [bytes]: replicated Adam state (m, v) {full.get('optimizer', 0)}, ZeRO-style "
              f"sharded {sh.get('optimizer', 0)} (+ parameter block {sh.get('param_shard', 0)}); params "
              f"{full['params']}, grads {full['grads']}")
        print(f"# load average at the end: {out['load_end']}")
    return out


def _tfno(args, markdown, cmd):
    train, tests, source = _load(args)
    _header("TFNO (Tucker) error vs compression against the dense FNO, same data and budget", args, source, cmd)
    ranks = [float(r) for r in args.ranks.split(",") if r]
    t, dense = _train_ours(args, train, tests)
    rows = []
    names = list(tests)
    spectral_dense = None
    results = {"dense": dense}
    for rank in [None] + ranks:
        if rank is None:
            res = dense
            from solvers.surrogates import build_model

            tfno = build_model(_config(args, model="tfno", rank=1.0))
            spectral_dense, _ = tfno.spectral_param_counts()
            spec, comp = spectral_dense, 1.0
        else:
            tt, res = _train_ours(args, train, tests, model="tfno", factorization="tucker", rank=rank)
            _, spec = tt.model.spectral_param_counts()
            comp = tt.model.compression_ratio
            results[str(rank)] = res
        rows.append(["dense FNO" if rank is None else f"TFNO tucker rank {rank}", spec, comp, res["n_params"]]
                    + [res["test"][n] for n in names] + [res["test"][names[0]] / dense["test"][names[0]]])
    cols = [Column("model", left=True), Column("spectral params", "d"), Column("compression [x]", ".1f"),
            Column("all params", "d")] + [Column(f"test rel L2 @{n}", ".4f") for n in names] + [
        Column("error / dense @16", ".3f")]
    print()
    print(format_table(cols, rows, markdown=markdown))
    print(f"\n# load average at the end: {_load_end()}")
    return results


def _mg(args, markdown, cmd):
    from mpi4py import MPI

    from solvers.surrogates import build_model
    from solvers.surrogates.domain import DomainTrainer, MultigridPatches, activation_bytes
    from solvers.surrogates.training import Trainer

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    train, tests, source = _load(args)
    tests = {k: v for k, v in tests.items() if v.x.shape[2:] == train.x.shape[2:]}
    if rank == 0:
        _header(f"MG patching on {size} ranks vs the undecomposed model", args, source, cmd, comm)
    full = Trainer(build_model(_config(args)), train, tests, _train_config(args), comm=comm, log=False)
    full.fit()
    patches = MultigridPatches(comm, train.x.shape[2:], padding=args.padding, levels=args.levels)
    mg_model = build_model(_config(args, in_channels=patches.channels_factor))
    mg = DomainTrainer(mg_model, patches, train, tests, _train_config(args), log=False)
    mg.fit()
    index = np.arange(min(args.batch, len(train)))
    xb = train.x[index].astype(np.float32)
    mem_full = activation_bytes(full.model, xb)
    xp, _ = mg._patch_batch(train, index)
    mem_mg = activation_bytes(mg.model, xp)
    mem_mg_all = comm.allgather(mem_mg["peak_bytes"])
    out = {"undecomposed": {"test": full.history[-1]["test"], "activation_bytes": mem_full["peak_bytes"]},
           "mg": {"test": mg.history[-1]["test"], "activation_bytes_per_rank": mem_mg_all,
                  "patch_shape": patches.patch_shape, "same": mg.parallel.same_on_every_rank()}}
    if rank == 0:
        name = list(tests)[0]
        e_full, e_mg = full.history[-1]["test"][name], mg.history[-1]["test"][name]
        cols = [Column("model", left=True), Column("grid per rank", left=True), Column(f"test rel L2 @{name}", ".4f"),
                Column("error / undecomposed", ".3f"), Column(f"activation MiB (batch {len(index)})", ".2f"),
                Column("vs one rank's", ".2f")]
        rows = [["undecomposed FNO", "x".join(map(str, train.x.shape[2:])), e_full, 1.0,
                 mem_full["peak_bytes"] / 2**20, 1.0],
                [f"MG patching, {size} ranks, padding {args.padding}, {args.levels} level(s)",
                 "x".join(map(str, patches.patch_shape)) + f" ({patches.channels_factor} ch)", e_mg, e_mg / e_full,
                 max(mem_mg_all) / 2**20, max(mem_mg_all) / mem_full["peak_bytes"]]]
        print()
        print(format_table(cols, rows, markdown=markdown))
        print(f"\n# process grid {patches.decomposition.dims}; model identical on every rank: {out['mg']['same']}; "
              f"load average at the end: {_load_end()}")
    patches.free()
    return out


def run(args, markdown: bool = False) -> int:
    """Run one part and print its table. Collective on COMM_WORLD for ``scaling`` and ``mg``."""
    if min(args.train, args.test, args.epochs, args.batch, args.width, args.modes, args.layers) < 1:
        print("surrogate-train: sizes must be >= 1", file=sys.stderr)
        return 2
    opts = [("--part", args.part), ("--data", args.data), ("--train", args.train), ("--test", args.test),
            ("--epochs", args.epochs), ("--batch", args.batch), ("--width", args.width), ("--modes", args.modes),
            ("--layers", args.layers), ("--lifting", args.lifting), ("--projection", args.projection),
            ("--lr", args.lr), ("--seed", args.seed)]
    if args.part == "tfno":
        opts.append(("--ranks", args.ranks))
    if args.part == "scaling":
        opts.append(("--bucket-kib", args.bucket_kib))
    if args.part == "mg":
        opts += [("--padding", args.padding), ("--levels", args.levels)]
    nprocs = {"scaling": 2, "mg": 4}.get(args.part, 1)
    cmd = "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 " + command_line(COMMAND, opts, nprocs=nprocs, markdown=markdown)
    t0 = time.perf_counter()
    result = {"accuracy": _accuracy, "scaling": _scaling, "tfno": _tfno, "mg": _mg}[args.part](args, markdown, cmd)
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() == 0:
        print(f"# {time.perf_counter() - t0:.0f} s")
        if args.json:
            write_json(args.json, {"command": cmd, "result": result})
    return 0


def main(argv=None) -> int:
    """``python -m benchmarks.surrogate_train [options]``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.surrogate_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--markdown", action="store_true")
    add_arguments(p)
    args = p.parse_args(argv)
    return run(args, markdown=args.markdown)


if __name__ == "__main__":
    sys.exit(main())
