"""FNO training throughput on one CPU core: solvers.surrogates vs neuraloperator 0.3.0 (PyTorch), same run.

Both models have the same architecture and start from the same weights (ours copied
into neuraloperator's through ``solvers.surrogates.torch_interop``); the first loss
of each must agree before anything is timed. One train step = zero gradients,
forward, relative-L2 loss, backward, Adam step. BLAS/OpenMP and torch run on one
thread (the process re-executes itself with ``OMP_NUM_THREADS=1`` etc. where they
are not set). Run: ``python -m benchmarks surrogate-speed`` or
``python -m benchmarks.surrogate_speed``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings

import numpy as np

from .common import (
    BenchmarkError,
    Column,
    command_line,
    format_table,
    interleaved_samples,
    machine_lines,
    median,
    ratio,
    write_json,
)

__all__ = ["COMMAND", "HELP", "add_arguments", "run", "main"]

COMMAND = "surrogate-speed"
HELP = "FNO train-step throughput, ours vs neuraloperator+torch, one core, float32 (serial)"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def add_arguments(parser) -> None:
    """Options of ``surrogate-speed``."""
    parser.add_argument("--resolution", type=int, default=16, help="grid points per axis (2-D square grid)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="hidden channels")
    parser.add_argument("--modes", type=int, default=8, help="retained modes per axis")
    parser.add_argument("--layers", type=int, default=4, help="Fourier blocks")
    parser.add_argument("--lifting", type=int, default=256, help="lifting MLP hidden channels (neuraloperator default)")
    parser.add_argument("--projection", type=int, default=256, help="projection MLP hidden channels")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--samples", type=int, default=15, help="timed steps per implementation (interleaved)")
    parser.add_argument("--json", default=None, help="write raw samples to this file")


def _config(args) -> dict:
    return {"n_modes": (args.modes, args.modes), "hidden_channels": args.width, "in_channels": 1, "out_channels": 1,
            "lifting_channels": args.lifting, "projection_channels": args.projection, "n_layers": args.layers,
            "positional_embedding": True, "dtype": args.dtype, "seed": 0}


def _ours(args, x, y):
    from solvers.surrogates import FNO, Adam, LpLoss

    model = FNO(_config(args))
    opt = Adam(model, lr=1e-3)
    loss = LpLoss()

    def step():
        model.zero_grad()
        value, d = loss(model.forward(x), y)
        model.backward(d)
        opt.step()
        return value

    def forward():
        model.forward(x)
        for _, layer in model.layers:
            layer.clear()

    return model, step, forward


def _theirs(model, x, y):
    """The neuraloperator FNO with our weights; ``None`` with the reason when it is not installed."""
    try:
        import torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from neuralop.losses import LpLoss as NopLpLoss
    except Exception as exc:  # noqa: BLE001 (torch, neuraloperator or one of its imports missing)
        return None, f"{type(exc).__name__}: {exc}"
    from solvers.surrogates.torch_interop import append_grid, build_neuralop

    torch.set_num_threads(1)
    # neuraloperator 0.3.0 indexes with lists (a deprecation warning per call on torch >= 2.9)
    warnings.filterwarnings("ignore", category=UserWarning, message=".*non-tuple sequence.*")
    theirs = build_neuralop(model)
    opt = torch.optim.Adam(theirs.parameters(), lr=1e-3)
    loss = NopLpLoss(d=2, p=2, reductions="mean")
    tx = torch.from_numpy(np.ascontiguousarray(append_grid(x)))
    ty = torch.from_numpy(y)

    def step():
        opt.zero_grad()
        value = loss(theirs(tx), ty)
        value.backward()
        opt.step()
        return float(value.detach())

    def forward():
        with torch.no_grad():
            theirs(tx)

    return (theirs, step, forward, torch.__version__), None


def _reexec_single_threaded(argv) -> int:
    env = dict(os.environ)
    env.update({v: "1" for v in _THREAD_VARS})
    env["HPCORE_SURROGATE_SPEED_CHILD"] = "1"
    return subprocess.call([sys.executable, "-m", "benchmarks.surrogate_speed", *argv], env=env)


def run(args, markdown: bool = False) -> int:
    """Time both implementations in this process and print the table. Not collective (serial)."""
    if any(os.environ.get(v) != "1" for v in _THREAD_VARS[:3]) and not os.environ.get("HPCORE_SURROGATE_SPEED_CHILD"):
        argv = [f"--{k}={v}" for k, v in (("resolution", args.resolution), ("batch", args.batch),
                                          ("width", args.width), ("modes", args.modes), ("layers", args.layers),
                                          ("lifting", args.lifting), ("projection", args.projection),
                                          ("dtype", args.dtype), ("samples", args.samples))]
        if args.json:
            argv.append(f"--json={args.json}")
        if markdown:
            argv.append("--markdown")
        return _reexec_single_threaded(argv)
    if min(args.resolution, args.batch, args.width, args.modes, args.layers, args.samples) < 1:
        print("surrogate-speed: sizes and --samples must be >= 1", file=sys.stderr)
        return 2
    cmd = command_line(COMMAND, [("--resolution", args.resolution), ("--batch", args.batch), ("--width", args.width),
                                 ("--modes", args.modes), ("--layers", args.layers), ("--dtype", args.dtype),
                                 ("--samples", args.samples)], markdown=markdown)
    machine = machine_lines()
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    n = args.resolution
    x = rng.standard_normal((args.batch, 1, n, n)).astype(args.dtype)
    y = rng.standard_normal((args.batch, 1, n, n)).astype(args.dtype)
    model, our_step, our_fwd = _ours(args, x, y)
    theirs, why = _theirs(model, x, y)
    ops = {"ours: train step": our_step, "ours: forward": our_fwd}
    if theirs is not None:
        _, nop_step, nop_fwd, torch_version = theirs
        a, b = our_step(), nop_step()  # same weights, same data: the first losses must agree
        if abs(a - b) > 1e-3 * abs(b):
            raise BenchmarkError(f"first losses differ: ours {a!r}, neuraloperator {b!r}")
        ops.update({"neuralop: train step": nop_step, "neuralop: forward": nop_fwd})
    samples = interleaved_samples(ops, args.samples, warmup=2)
    med = {k: median(v) for k, v in samples.items()}
    rows = []
    for impl in ("ours", "neuralop"):
        if f"{impl}: train step" not in med:
            continue
        step_s, fwd_s = med[f"{impl}: train step"], med[f"{impl}: forward"]
        base = med.get("neuralop: train step")
        rows.append([impl, step_s * 1e3, args.batch / step_s, fwd_s * 1e3,
                     ratio(base, step_s) if base else float("nan")])
    cols = [Column("implementation", left=True), Column("train step [ms]", ".1f"), Column("samples/s", ".1f"),
            Column("forward [ms]", ".1f"), Column("throughput vs neuralop [x]", ".2f")]
    print(f"# FNO train step, {args.dtype}, one thread: {n}x{n} grid, batch {args.batch}, width {args.width}, "
          f"modes {args.modes}x{args.modes}, {args.layers} blocks, "
          f"lifting/projection {args.lifting}/{args.projection}, "
          "grid channels appended")
    for line in machine:
        print("# " + line)
    print(f"# threads: {', '.join(f'{v}={os.environ.get(v)}' for v in _THREAD_VARS)}")
    if theirs is None:
        print(f"# neuraloperator not run: {why}")
    else:
        print(f"# neuraloperator 0.3.0 on torch {torch_version} (torch.set_num_threads(1)), same initial weights")
    print(f"# {model.n_params} parameters; medians of {args.samples} interleaved samples after 2 warm-up rounds")
    print()
    print(format_table(cols, rows, markdown=markdown))
    end = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\n# {time.perf_counter() - t0:.0f} s, load average at the end {end}. Reproduce: {cmd}")
    if args.json:
        write_json(args.json, {"command": cmd, "machine": machine, "samples": samples})
    return 0


def main(argv=None) -> int:
    """``python -m benchmarks.surrogate_speed [options]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.surrogate_speed", description=__doc__)
    parser.add_argument("--markdown", action="store_true")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args, markdown=args.markdown)


if __name__ == "__main__":
    sys.exit(main())
