"""Online vs offline surrogate training on one Darcy study: wall time to a test error, samples/s,
trainer busy fraction, disk bytes; a PNG of test error vs wall time.

    python -m benchmarks.online_vs_offline [--budget-s 40] [--online-members 64] [--members 16] \
        [--concurrency 2] [--out DIR]          # same wall time (default)
    python -m benchmarks.online_vs_offline --budget-s 0 [--steps 300]   # offline: fixed steps

Both runs use the same study (``tests/data/online/darcy.toml``: 16 Darcy members x 16 samples at
16x16, FNO), the same model, optimizer, batch (8 per rank), 2 trainer ranks and the same number of
steps. Online: ``mpiexec -n 2 python -m solvers.online train`` starts the members (2 at a time)
and trains while they run; nothing is written to disk but logs. Offline: the same members (2 at a
time) write HDF5 files, then ``mpiexec -n 2`` trainer ranks read them and train (shuffled epochs).
The test set (32 samples of other GRF seeds) is made before either clock starts. Each phase is a
separate MPI launch from this driver; wall times are the driver's clock. The machine line
(load average) is printed at the start and the end.

``--budget-s T`` compares at the same wall time, Melissa's way: online trains for T seconds while
members with new parameters keep streaming (up to ``--online-members``), so it sees as many distinct
samples as the members produce meanwhile; offline generates ``--members`` members to HDF5, then
trains until its whole run is as long as online's. Both end at the same wall time.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

__all__ = ["main", "COMMAND", "HELP", "add_arguments", "run"]

COMMAND = "online"
HELP = "online vs offline surrogate training on a Darcy study (wall time to a test error, disk bytes, PNG)"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(ROOT, "tests", "data", "online", "darcy.toml")


def _machine() -> str:
    load = os.getloadavg()
    return f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MPIR_CVAR_CH4_NETMOD", "ofi")
    return env


def _run(cmd, log):
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=_env(), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}); see {log}")


# --------------------------------------------------------------------------- MPI phases (subcommands)

class _H5Sink:
    """The client API's three calls, writing a member's samples to one HDF5 file (offline mode)."""

    def __init__(self, path, member):
        self.path, self.member, self.data = path, member, {}

    def init(self, name, local_size, comm):
        self.comm = comm

    def send(self, name, array, time_step):
        self.data.setdefault(name, {})[time_step] = np.array(array)

    def finalize(self):
        import h5py

        if self.comm.Get_rank() == 0:
            with h5py.File(self.path, "w") as f:
                for name, steps in self.data.items():
                    f[name] = np.stack([steps[t] for t in sorted(steps)])


def _offline_member(args):
    from mpi4py import MPI

    from solvers.online.members import darcy

    params = [float(p) for p in args.params.split(",")]
    darcy(MPI.COMM_WORLD, params, resolution=args.resolution, samples=args.samples,
          sink=_H5Sink(args.path, args.member))


def _make_test(args):
    import h5py
    from mpi4py import MPI

    from solvers.surrogates.darcy import solve_darcy

    rng = np.random.default_rng(12345)
    xs, ys = [], []
    for i in range(args.n):
        alpha, tau = rng.uniform(1.5, 3.0), rng.uniform(2.0, 4.0)
        a, u, _ = solve_darcy(MPI.COMM_WORLD, args.resolution, 900_000 + i, alpha=alpha, tau=tau)
        xs.append(a[None])
        ys.append(u[None])
    with h5py.File(args.path, "w") as f:
        f["x"], f["y"] = np.stack(xs), np.stack(ys)


def _offline_train(args):
    """Data-parallel training on the member files: the online trainer's model, loss, optimizer and step."""
    import h5py
    from mpi4py import MPI

    from solvers.online.study import load_study
    from solvers.online.trainer import OnlineTrainer

    comm = MPI.COMM_WORLD
    t0 = time.perf_counter()
    t0_unix = time.time()
    study = load_study(STUDY, [f"train.test_file={args.test}", f"study.run_dir={args.run_dir}"])
    trainer = OnlineTrainer(comm, study)
    xs, ys = [], []
    for path in sorted(glob.glob(os.path.join(args.data, "member-*.h5"))):
        with h5py.File(path) as f:
            xs.append(f["a"][...])
            ys.append(f["u"][...])
    shape = tuple(study.data.input_shape)
    x = np.concatenate(xs).reshape(-1, *shape)
    y = np.concatenate(ys).reshape(-1, *shape)
    rng = np.random.default_rng([study.train.seed, comm.Get_rank()])
    mine = np.arange(comm.Get_rank(), len(x), comm.Get_size())  # each rank its shard, reshuffled per epoch
    order = []
    history = []
    bs = study.train.batch_size
    load_s = time.perf_counter() - t0
    deadline = args.deadline_unix
    step = 0
    while True:
        if deadline:  # same-budget mode: train until the driver's deadline (rank 0's clock decides)
            if comm.bcast(time.time() >= deadline if comm.Get_rank() == 0 else None, root=0):
                break
        elif step >= args.steps:
            break
        step += 1
        if len(order) < bs:
            order.extend(rng.permutation(mine).tolist())
        idx, order = order[:bs], order[bs:]
        trainer.buffer.x, trainer.buffer.y = [x[i] for i in idx], [y[i] for i in idx]
        trainer.buffer.uses, trainer.buffer.keys = [0] * len(idx), [(0, i) for i in idx]
        trainer._train_step(draw=True)
        if step % study.train.validate_every == 0 or step == args.steps:
            e = trainer.evaluate()
            history.append({"step": step, "wall_s": time.perf_counter() - t0, "test_error": e["test_error"],
                            "samples_seen": trainer.samples_seen})
    if not history or history[-1]["step"] != step:
        e = trainer.evaluate()
        history.append({"step": step, "wall_s": time.perf_counter() - t0, "test_error": e["test_error"],
                        "samples_seen": trainer.samples_seen})
    wall = time.perf_counter() - t0
    busy = comm.allreduce(trainer.busy_s) / comm.Get_size()
    if comm.Get_rank() == 0:
        with open(os.path.join(args.run_dir, "offline.json"), "w") as f:
            json.dump({"history": history, "wall_s": wall, "busy_fraction": busy / wall, "load_s": load_s,
                       "t0_unix": t0_unix,
                       "samples_seen": trainer.samples_seen, "distinct_samples": len(x)}, f)


# --------------------------------------------------------------------------- driver

def _at(history, wall):
    """Test error of the last record at or before ``wall`` seconds (nan if none)."""
    best = float("nan")
    for h in history:
        if h["wall_s"] <= wall:
            best = h["test_error"]
    return best


def _smoothed(history, k: int = 5):
    """Running median of the test error over the last ``k`` evaluations (both curves swing by 3-4x
    from one evaluation to the next at a fixed learning rate: single points would decide the ratios)."""
    out = []
    for i, h in enumerate(history):
        window = [g["test_error"] for g in history[max(0, i - k + 1):i + 1]]
        out.append({**h, "test_error": float(np.median(window))})
    return out


def _first_below(history, err):
    for h in history:
        if h["test_error"] <= err:
            return h["wall_s"]
    return float("nan")


def drive(args) -> int:
    """Run the online study, then the offline one, and print the table. Not MPI itself (launches MPI jobs)."""
    from solvers.online.sampling import ParameterSampler
    from solvers.online.study import load_study

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    print(_machine(), flush=True)
    if args.budget_s > 0:
        print(f"same wall-time budget: online streams up to {args.online_members} Darcy members (16 samples "
              f"each, 16x16) for {args.budget_s:g} s of training; offline generates {args.members} members to "
              f"HDF5, then trains until its whole run is as long as online's. FNO, 2 trainer ranks, "
              f"{args.concurrency} members at a time, batches of 2 x 8 samples", flush=True)
    else:
        print(f"study: {args.members} Darcy members x 16 samples (16x16), FNO, 2 trainer ranks, "
              f"{args.concurrency} members at a time, batches of 2 x 8 samples; offline: {args.steps} steps after "
              f"generation; online: until every member is done and >= {args.steps} steps", flush=True)
    test = os.path.join(out, "test.h5")
    py = sys.executable
    _run(["mpiexec", "-n", "1", py, "-m", "benchmarks.online_vs_offline", "make-test", test],
         os.path.join(out, "test.log"))
    # offline trains --steps steps once every member is done; online trains from the first sample until
    # every member is done and at least --steps steps are taken (reservoir: reuse while data trickle in)
    sets = [f"study.members={args.members}", f"study.concurrency={args.concurrency}", f"train.test_file={test}",
            "train.max_steps=1000000", "buffer.policy=\"reservoir\"", f"train.min_steps={args.steps}"]
    budget = args.budget_s > 0
    online_sets = sets
    if budget:  # same wall time for both: online streams new members until the budget is spent
        online_sets = [f"study.members={args.online_members}", f"study.concurrency={args.concurrency}",
                       f"train.test_file={test}", "train.max_steps=1000000", "buffer.policy=\"reservoir\"",
                       f"buffer.capacity={16 * args.online_members}", f"train.max_wall_s={args.budget_s}"]

    # online
    run_on = os.path.join(out, "online")
    t0 = time.perf_counter()
    start_on = time.time()
    _run(["mpiexec", "-n", "2", py, "-m", "solvers.online", "train", STUDY, "--set", f"study.run_dir={run_on}",
          *[a for s in online_sets for a in ("--set", s)]], os.path.join(out, "online.log"))
    online_wall = time.perf_counter() - t0
    with open(os.path.join(run_on, "summary.json")) as f:
        on = json.load(f)
    print(f"online done in {online_wall:.1f} s (trainer {on['wall_s']:.1f} s), {_machine()}", flush=True)

    # offline: members write HDF5 (same concurrency), then train from the files
    study = load_study(STUDY, sets)
    design = ParameterSampler(study.parameters.bounds, study.parameters.method, study.study.seed).design(args.members)
    data = os.path.join(out, "offline-data")
    os.makedirs(data, exist_ok=True)
    t0 = time.perf_counter()
    running, queue = [], list(range(args.members))
    while queue or running:
        running = [p for p in running if p.poll() is None]
        while queue and len(running) < args.concurrency:
            m = queue.pop(0)
            cmd = ["mpiexec", "-n", "1", py, "-m", "benchmarks.online_vs_offline", "offline-member", str(m),
                   ",".join(repr(float(v)) for v in design[m]), os.path.join(data, f"member-{m:03d}.h5")]
            running.append(subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        time.sleep(0.05)
    gen_s = time.perf_counter() - t0
    start_off = time.time() - gen_s
    disk = sum(os.path.getsize(p) for p in glob.glob(os.path.join(data, "*.h5")))
    run_off = os.path.join(out, "offline")
    os.makedirs(run_off, exist_ok=True)
    # same-budget mode: offline trains until its whole run (generation included) is as long as online's
    deadline = ["--deadline-unix", repr(start_off + online_wall)] if budget else []
    _run(["mpiexec", "-n", "2", py, "-m", "benchmarks.online_vs_offline", "offline-train", data, test, run_off,
          str(args.steps), *deadline], os.path.join(out, "offline.log"))
    offline_wall = time.perf_counter() - t0
    with open(os.path.join(run_off, "offline.json")) as f:
        off = json.load(f)
    print(f"offline done in {offline_wall:.1f} s (generation {gen_s:.1f} s), {_machine()}", flush=True)

    # both curves on this driver's clock from the moment each run was launched (start-up included)
    on_shift = on["t0_unix"] - start_on
    off_shift = off["t0_unix"] - start_off
    on_hist = [{"wall_s": on_shift + h["wall_s"], "test_error": h["test_error"]} for h in on["history"]]
    off_hist = [{"wall_s": off_shift + h["wall_s"], "test_error": h["test_error"]} for h in off["history"]]
    raw_on, raw_off = on_hist, off_hist
    on_hist, off_hist = _smoothed(on_hist), _smoothed(off_hist)
    off_final = off_hist[-1]["test_error"]
    on_final = on_hist[-1]["test_error"]
    t_on = _first_below(on_hist, off_final)
    # online's error when offline ends (its final one if it ended sooner); same-budget: both ends
    same_wall = max(offline_wall, online_wall) if budget else offline_wall
    rows = [
        ("wall time, whole run [s]", f"{online_wall:.1f}", f"{offline_wall:.1f}"),
        ("  of which data generation before training [s]", "0 (overlapped)", f"{gen_s:.1f}"),
        ("final test error (rel. L2, median of the last 5 evaluations)", f"{on_final:.4f}", f"{off_final:.4f}"),
        ("wall time to offline's final test error [s]", f"{t_on:.1f}", f"{offline_wall:.1f}"),
        (f"test error at {same_wall:.0f} s ({'both ends' if budget else 'offline' + chr(39) + 's end'})",
         f"{_at(on_hist, same_wall):.4f}", f"{_at(off_hist, same_wall):.4f}"),
        ("members run to the end", f"{on['members']['done']}", f"{args.members}"),
        ("training steps", f"{on['step']}", f"{off['history'][-1]['step']}"),
        ("distinct training samples", f"{on['distinct_samples']}", f"{off['distinct_samples']}"),
        ("samples/s (trained, incl. reuse)", f"{on['samples_seen'] / on['wall_s']:.1f}",
         f"{off['samples_seen'] / off['wall_s']:.1f}"),
        ("trainer busy fraction", f"{on['busy_fraction']:.2f}", f"{off['busy_fraction']:.2f}"),
        ("training data written to disk [bytes]", "0", f"{disk}"),
    ]
    print("\n| quantity | online | offline |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    print(f"\nratios: time to offline's final error offline/online = {offline_wall / t_on:.2f}x; "
          f"final error offline/online at equal wall = {_at(off_hist, same_wall) / _at(on_hist, same_wall):.2f}x")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        curves = ((raw_on, on_hist, "C0", "online"), (raw_off, off_hist, "C1", "offline (HDF5)"))
        for raw, smooth, style, label in curves:
            ax.plot([h["wall_s"] for h in raw], [h["test_error"] for h in raw], color=style, lw=0.6, alpha=0.35)
            ax.plot([h["wall_s"] for h in smooth], [h["test_error"] for h in smooth], color=style, lw=2,
                    label=f"{label} (running median of 5)")
        ax.axvline(gen_s, color="grey", ls=":", label="offline data ready")
        ax.set_xlabel("wall time [s]")
        ax.set_ylabel("test error (relative L2)")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title(f"Darcy 16x16, 2 trainer ranks, {args.concurrency} member(s) at a time", fontsize=10)
        fig.tight_layout()
        png = os.path.join(out, "online_vs_offline.png")
        fig.savefig(png, dpi=120)
        print(f"plot: {png}")
    except ImportError:
        print("plot: matplotlib missing, no PNG")
    print(_machine(), flush=True)
    return 0


def add_arguments(parser) -> None:
    """Options of ``python -m benchmarks online``."""
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--out", default="online_vs_offline_out")
    parser.add_argument("--budget-s", type=float, default=40.0,
                        help="same wall time: online trains this long on a stream of --online-members "
                             "(0: the fixed-steps comparison)")
    parser.add_argument("--online-members", type=int, default=64)


def run(args, markdown: bool = False) -> int:
    """``python -m benchmarks online``: the whole comparison (tables are Markdown either way)."""
    return drive(args)


def main(argv=None) -> int:
    """``python -m benchmarks.online_vs_offline [run|make-test|offline-member|offline-train]``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.online_vs_offline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    d = sub.add_parser("run", help="the whole comparison (default)")
    for q in (p, d):
        q.add_argument("--members", type=int, default=16)
        q.add_argument("--steps", type=int, default=300)
        q.add_argument("--concurrency", type=int, default=2)
        q.add_argument("--out", default="online_vs_offline_out")
        q.add_argument("--budget-s", type=float, default=40.0)
        q.add_argument("--online-members", type=int, default=64)
    t = sub.add_parser("make-test")
    t.add_argument("path")
    t.add_argument("--n", type=int, default=32)
    t.add_argument("--resolution", type=int, default=16)
    m = sub.add_parser("offline-member")
    m.add_argument("member", type=int)
    m.add_argument("params")
    m.add_argument("path")
    m.add_argument("--resolution", type=int, default=16)
    m.add_argument("--samples", type=int, default=16)
    o = sub.add_parser("offline-train")
    o.add_argument("data")
    o.add_argument("test")
    o.add_argument("run_dir")
    o.add_argument("steps", type=int)
    o.add_argument("--deadline-unix", type=float, default=0.0)
    args = p.parse_args(argv)
    if args.cmd == "make-test":
        _make_test(args)
    elif args.cmd == "offline-member":
        _offline_member(args)
    elif args.cmd == "offline-train":
        _offline_train(args)
    else:
        return drive(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
