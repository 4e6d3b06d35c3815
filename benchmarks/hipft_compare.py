"""HipFT's test-suite decks through HipFT and through ``solvers.flux_transport``: every history column, and wall time.

``python -m benchmarks.hipft_compare --hipft PATH/bin/hipft [--decks NAME,...] [--ranks N]``

For each deck (a folder with ``hipft.in`` and its input maps, by default the
decks of HipFT's own ``testsuite/`` beside the binary: ``<deck>/input``), both
codes run the deck on the same number of ranks (HipFT: OpenMPI's
``mpirun.openmpi``, at most one rank per realization as HipFT requires; ours:
``mpiexec -n N python -m solvers.flux_transport --hipft-input``), each in its own
folder under ``--work``. Then every column of every realization's
``hipft_history_sol_r00000K.out`` is compared:

- HipFT's test-suite rule (``bin/hipft_compare_run_diags.py`` as its
  ``run_test_suite.sh`` calls it, ``-p 5``): on the LAST row, the columns BR_MIN,
  BR_MAX, BR_ABS_MIN, FLUX_POSITIVE, FLUX_NEGATIVE and VALIDATION_ERR_HHabs must
  agree in the first ``p + 3 = 8`` characters of their ``%.15E`` text (7 significant
  digits for positive values, 6 for negative ones); values below 1e-64 pass. HipFT's
  script takes the exponent of its first file for both; here the exponents must
  match too (stricter), and every realization counts (HipFT's script reports only
  the last one).
- For every other column, and over the whole history, the largest relative
  difference is reported for information (no tolerance: HipFT's suite checks none).

The table gives, per deck and column: HipFT's and our final value of realization
1, the largest relative difference over realizations at the end and over the
history, the tolerance and pass/fail; then the wall times of both codes and their
ratio (same machine, same run, one after the other). Exit status 0 when every
checked column of every deck passes, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

__all__ = ["CHECKED", "COMMAND", "HELP", "add_arguments", "hipft_rule", "main", "read_history_file", "run"]

COMMAND = "hipft-compare"
HELP = "HipFT test-suite decks through HipFT and ours: every history column, HipFT's tolerance, wall times"

SUITE = ("advect_gaussians_phi", "advect_gaussians_theta", "advect_gaussians_phi_theta", "diffuse_soccer",
         "diffuse_advect_soccer", "diffuse_dipole", "diffuse_advect_atten_map_1cr")
CHECKED = ("BR_MIN", "BR_MAX", "BR_ABS_MIN", "FLUX_POSITIVE", "FLUX_NEGATIVE", "VALIDATION_ERR_HHabs")
"""The columns HipFT's test suite compares (indices 2-6 and 15 of the history row)."""
ALIASES = {"VALIDATION_ERR_CVRMSD": "VALIDATION_ERR_HHabs"}
GLIBC_TUNABLES = ("glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:"
                  "glibc.malloc.top_pad=268435456")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hipft", required=True, metavar="PATH", help="the HipFT binary (bin/hipft of a build)")
    p.add_argument("--decks", default=",".join(SUITE), metavar="NAME[,NAME]",
                   help="test-suite deck names or folders holding hipft.in (default: the whole suite)")
    p.add_argument("--suite", default=None, metavar="DIR", help="HipFT's testsuite folder (default: beside the binary)")
    p.add_argument("--ranks", type=int, default=1, help="ranks for both codes (HipFT: at most n_realizations)")
    p.add_argument("--work", default="/tmp/hipft_compare", metavar="DIR", help="run folders (default %(default)s)")
    p.add_argument("--precision", type=int, default=5, help="HipFT's -p (decimal places; default 5 as its suite)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--reuse-hipft", action="store_true", help="reuse HipFT's histories already in --work")
    p.add_argument("--reuse-ours", action="store_true", help="reuse our histories already in --work (no run)")
    p.add_argument("--only-ours", action="store_true", help="compare ours against HipFT's stored reference/ "
                   "histories instead of running HipFT")
    p.add_argument("--mpirun", default="mpirun.openmpi", help="OpenMPI launcher for HipFT")
    p.add_argument("--mpiexec", default="mpiexec", help="launcher for ours (the mpi4py MPI's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="--set for our runs (repeatable)")
    p.add_argument("--time-end", type=float, default=None, metavar="H",
                   help="shorten every deck to end at H hours (both codes; for timing runs)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run the pair N times, alternating HipFT and ours (timings: each pair and the median "
                        "ratio; the comparison uses the last pair)")


def read_history_file(path: str) -> dict:
    """``{column: 1-D float64 array}`` of a history file (HipFT's or ours), column names as HipFT's."""
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().split()
        rows = [ln.split() for ln in fh if ln.strip()]
    data = np.array([[float(x.replace("D", "E")) for x in r] for r in rows], dtype=np.float64)
    data = data.reshape(-1, len(header))
    return {ALIASES.get(name, name): data[:, i] for i, name in enumerate(header)}


def hipft_rule(ref: float, new: float, precision: int = 5) -> bool:
    """HipFT's test-suite check of one value: the first ``precision + 3`` characters of ``%.15E`` and the exponent."""
    a, b = f"{ref:.15E}", f"{new:.15E}"
    if a[:precision + 3] == b[:precision + 3] and a.split("E")[1] == b.split("E")[1]:
        return True
    return abs(ref) <= 1e-64


FAMILY = {"BR_ABS_MIN": ("BR_MIN", "BR_MAX"), "EQ_DIPOLE": ("EQ_DIPOLE", "AX_DIPOLE", "BR_MIN", "BR_MAX"),
          "AX_DIPOLE": ("EQ_DIPOLE", "AX_DIPOLE", "BR_MIN", "BR_MAX"), "NPOLE_FLUX_POSITIVE": ("FLUX_POSITIVE",),
          "NPOLE_FLUX_NEGATIVE": ("FLUX_POSITIVE",), "SPOLE_FLUX_POSITIVE": ("FLUX_POSITIVE",),
          "SPOLE_FLUX_NEGATIVE": ("FLUX_POSITIVE",)}
FLOOR = 1e-10
"""Relative differences are taken against ``max(|HipFT|, FLOOR x the scale of the column's family)`` (e.g. the
larger of the dipoles and |Br| extrema [G] for a dipole, the total flux for polar fluxes, 1 for the validation
error), so a value that is zero up to rounding does not read as a 100% difference."""


def _rel(a, b, floor=None) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = np.abs(a) if floor is None else np.maximum(np.abs(a), floor)
    scale = np.maximum(scale, 1e-300)
    d = np.abs(a - b) / scale
    d[(a == 0) & (b == 0)] = 0.0
    return float(np.max(d)) if d.size else 0.0


def _floor(h: dict, col: str):
    if col == "VALIDATION_ERR_HHabs":
        return FLOOR
    family = FAMILY.get(col, (col,))
    return FLOOR * np.max(np.abs(np.stack([h[c] for c in family if c in h])), axis=0)


def _n_realizations(deck: str) -> int:
    from solvers.flux_transport.hipft_namelist import read_namelist

    nl = read_namelist(os.path.join(deck, "hipft.in"), "hipft_input_parameters")
    return int(nl.get("n_realizations", 1))


def _deck_dirs(args) -> list:
    suite = args.suite or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.hipft))), "testsuite")
    out = []
    for name in filter(None, (d.strip() for d in args.decks.split(","))):
        if os.path.isfile(os.path.join(name, "hipft.in")):
            out.append((os.path.basename(os.path.abspath(name)), os.path.abspath(name), None))
            continue
        inp = os.path.join(suite, name, "input")
        if not os.path.isfile(os.path.join(inp, "hipft.in")):
            raise SystemExit(f"hipft_compare: no deck {name!r} (looked for {inp}/hipft.in and {name}/hipft.in)")
        ref = os.path.join(suite, name, "reference")
        out.append((name, inp, ref if os.path.isdir(ref) else None))
    return out


def _run_hipft(args, name, inp, folder, ranks) -> float:
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    shutil.copytree(inp, folder)
    if args.time_end is not None:
        deck = os.path.join(folder, "hipft.in")
        with open(deck) as fh:
            text = fh.read()
        # a later assignment wins in a namelist: add it before the closing '/'
        text = re.sub(r"^\s*/\s*$", f"  time_end = {args.time_end!r}\n/", text, count=1, flags=re.M)
        with open(deck, "w") as fh:
            fh.write(text)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               GLIBC_TUNABLES=GLIBC_TUNABLES)
    cmd = [args.mpirun, "-x", "GLIBC_TUNABLES", "-x", "OMP_NUM_THREADS", "--bind-to", "none", "--oversubscribe",
           "-np", str(ranks), os.path.abspath(args.hipft), "hipft.in"]
    t0 = time.perf_counter()
    with open(os.path.join(folder, "hipft.log"), "w") as log, open(os.path.join(folder, "hipft.err"), "w") as err:
        rc = subprocess.run(cmd, cwd=folder, env=env, stdout=log, stderr=err, timeout=args.timeout,
                            check=False).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"HipFT failed on {name} (exit {rc}); see {folder}/hipft.log and hipft.err")
    return wall


def _run_ours(args, name, inp, folder, ranks) -> tuple:
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    cmd = [args.mpiexec, "-n", str(ranks), sys.executable, "-m", "solvers.flux_transport", "--hipft-input",
           os.path.join(inp, "hipft.in"), "--out", folder]
    for o in args.overrides:
        cmd += ["--set", o]
    if args.time_end is not None:
        cmd += ["--set", f"time.end_h={args.time_end!r}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout,
                          check=False)
    wall = time.perf_counter() - t0
    with open(os.path.join(folder, "ours.log"), "w") as fh:
        fh.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"ours failed on {name} (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    m = re.search(r"steps to t = [-0-9.e+]+ h in ([0-9.]+) s", proc.stdout)
    return wall, float(m.group(1)) if m else math.nan


def _hipft_wall(folder: str) -> float:
    try:
        with open(os.path.join(folder, "hipft.log")) as fh:
            for line in fh:
                if "Wall clock time" in line:
                    return float(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


def compare_deck(hipft_dir: str, ours_dir: str, n: int, precision: int = 5) -> list:
    """Rows ``(column, hipft_final_r1, ours_final_r1, rel_final, rel_history, checked, passed)``."""
    rows = []
    pairs = []
    for k in range(1, n + 1):
        h = read_history_file(os.path.join(hipft_dir, f"hipft_history_sol_r{k:06d}.out"))
        o = read_history_file(os.path.join(ours_dir, f"hipft_history_sol_r{k:06d}.out"))
        if abs(h["TIME"][-1] - o["TIME"][-1]) > 1e-9 * max(1.0, abs(h["TIME"][-1])):
            raise RuntimeError(f"realization {k}: our history ends at t = {o['TIME'][-1]} h, HipFT's at "
                               f"{h['TIME'][-1]} h (incomplete run?)")
        pairs.append((h, o))
    for col in pairs[0][0]:
        if col == "STEP":
            continue
        if col not in pairs[0][1]:
            rows.append((col, pairs[0][0][col][-1], math.nan, math.nan, math.nan, col in CHECKED, False))
            continue
        rel_final, rel_hist, ok = 0.0, 0.0, True
        for h, o in pairs:
            fl = np.broadcast_to(_floor(h, col), h[col].shape)
            rel_final = max(rel_final, _rel([h[col][-1]], [o[col][-1]], fl[-1:]))
            common, ih, io_ = np.intersect1d(np.round(h["TIME"], 6), np.round(o["TIME"], 6), return_indices=True)
            if common.size:
                rel_hist = max(rel_hist, _rel(h[col][ih], o[col][io_], fl[ih]))
            if col in CHECKED:
                ok = ok and hipft_rule(float(h[col][-1]), float(o[col][-1]), precision)
        rows.append((col, float(pairs[0][0][col][-1]), float(pairs[0][1][col][-1]), rel_final, rel_hist,
                     col in CHECKED, ok if col in CHECKED else True))
    return rows


def _table(name, rows, precision, markdown) -> str:
    head = ["column", "HipFT final (r1)", "ours final (r1)", "max rel diff, end", "max rel diff, history",
            "tolerance", "pass"]
    lines = []
    if markdown:
        lines.append(f"\n**{name}**\n")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
    else:
        lines.append(f"\n== {name}")
        lines.append(f"{head[0]:<22s} {head[1]:>24s} {head[2]:>24s} {head[3]:>17s} {head[4]:>21s} {head[5]:>12s} "
                     f"{head[6]:>5s}")
    for col, hv, ov, rf, rh, checked, ok in rows:
        tol = f"{precision + 3} chars" if checked else "-"
        pas = ("PASS" if ok else "FAIL") if checked else "-"
        cells = [col, f"{hv:.12e}", f"{ov:.12e}", f"{rf:.2e}", f"{rh:.2e}", tol, pas]
        if markdown:
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append(f"{cells[0]:<22s} {cells[1]:>24s} {cells[2]:>24s} {cells[3]:>17s} {cells[4]:>21s} "
                         f"{cells[5]:>12s} {cells[6]:>5s}")
    return "\n".join(lines)


def run(args, markdown: bool = False) -> int:
    try:
        decks = _deck_dirs(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    if not args.only_ours and not os.access(args.hipft, os.X_OK):
        print(f"hipft_compare: --hipft {args.hipft!r} is not an executable", file=sys.stderr)
        return 2
    load = os.getloadavg()
    print(f"# hipft_compare: {len(decks)} deck(s), {args.ranks} rank(s), load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}")
    status = 0
    timings = []
    for name, inp, ref in decks:
        n = _n_realizations(inp)
        h_ranks = max(1, min(args.ranks, n))
        base = os.path.join(args.work, name)
        hdir, odir = os.path.join(base, "hipft"), os.path.join(base, "ours")
        try:
            h_label = f"HipFT on {h_ranks} rank(s)"
            if args.only_ours:
                if ref is None:
                    raise RuntimeError(f"{name}: no reference/ folder to compare against")
                hdir, h_wall, h_label = ref, math.nan, "HipFT's stored reference"
            pairs = []
            for _ in range(max(1, args.repeat)):
                if args.only_ours:
                    pass
                elif args.reuse_hipft and os.path.exists(os.path.join(hdir, "hipft_history_sol_r000001.out")):
                    h_wall, h_label = math.nan, "HipFT's earlier run in --work"
                else:
                    h_wall = _run_hipft(args, name, inp, hdir, h_ranks)
                if args.reuse_ours and os.path.exists(os.path.join(odir, "hipft_history_sol_r000001.out")):
                    o_wall, o_solver = math.nan, math.nan
                else:
                    o_wall, o_solver = _run_ours(args, name, inp, odir, args.ranks)
                pairs.append((h_wall, _hipft_wall(hdir), o_wall, o_solver, os.getloadavg()[0]))
            rows = compare_deck(hdir, odir, n, args.precision)
        except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as exc:
            print(f"\n== {name}: ERROR {exc}")
            status = 1
            continue
        print(_table(f"{name} ({n} realization(s); {h_label}, ours on {args.ranks} rank(s))", rows,
                     args.precision, markdown))
        if any(checked and not ok for _, _, _, _, _, checked, ok in rows):
            status = 1
        for hw, ht, ow, ol, la in pairs:
            timings.append((name, h_ranks, args.ranks, hw, ht, ow, ol, la))
    if timings:
        print("\n" + ("| deck | ranks (HipFT/ours) | HipFT wall s (its own timer) | ours wall s (solver loop) | "
                      "ours / HipFT | load after |\n|---|---|---|---|---|---|" if markdown else
                      f"{'deck':<30s} {'ranks':>7s} {'HipFT s':>10s} {'(timer)':>9s} {'ours s':>9s} {'(loop)':>9s} "
                      f"{'ours/HipFT':>10s} {'load':>6s}"))
        for name, hr, orr, hw, ht, ow, ol, la in timings:
            ratio = ow / hw if hw and math.isfinite(hw) else math.nan
            if markdown:
                print(f"| {name} | {hr}/{orr} | {hw:.1f} ({ht:.1f}) | {ow:.1f} ({ol:.1f}) | {ratio:.2f} | {la:.1f} |")
            else:
                print(f"{name:<30s} {hr:>3d}/{orr:<3d} {hw:>10.1f} {ht:>9.1f} {ow:>9.1f} {ol:>9.1f} {ratio:>10.2f} "
                      f"{la:>6.1f}")
        ratios = [t[5] / t[3] for t in timings if t[3] and math.isfinite(t[3]) and math.isfinite(t[5])]
        if len(ratios) > 1:
            print(f"# median ours/HipFT over {len(ratios)} pairs: {float(np.median(ratios)):.2f}")
    load = os.getloadavg()
    print(f"# load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return status


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hipft_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--markdown", action="store_true", help="Markdown tables")
    add_arguments(p)
    args = p.parse_args(argv)
    return run(args, markdown=args.markdown)


if __name__ == "__main__":
    sys.exit(main())
