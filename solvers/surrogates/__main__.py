"""Command line: train surrogates and generate data.

``mpiexec -n N python -m solvers.surrogates train [config.toml] [--set section.key=value ...]``
    Train an FNO/TFNO/MLP (``default.toml`` beside this module is the default run: neuraloperator's
    Darcy 16x16 set, FNO modes 8x8, width 32, 4 blocks, 20 epochs), data-parallel over the ranks or
    domain-parallel (MG patching, ``--set parallel.mode="domain"``). Every ``--set`` is applied to the
    file's values first and the result is validated as a whole; a refused configuration is named on
    every rank (printed once) and every rank exits with status 2. Progress lines (epoch, train loss,
    test errors, samples/s) come from rank 0; the output directory gets ``history.json``, the HDF5
    checkpoint ``model.h5`` and PNG plots (``loss.png``, ``predictions.png``).
``mpiexec -n N python -m solvers.surrogates generate darcy --samples S --resolution R --out file.h5``
    Darcy samples solved by PCG over ``HaloExchange`` in groups of ``--group-size`` ranks.
``python -m solvers.surrogates generate burgers|heat --samples S --resolution R --out file.h5``
    1-D periodic data (serial; rank 0 writes).

Exit status: 0 on success, 2 for a refused configuration or input, 1 for other errors (an error on
some ranks only, e.g. mid-run, is printed with its rank and ends the whole job with ``MPI_Abort``).
Set ``SURROGATES_DEBUG=1`` for per-rank debug output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from ..configuration import ConfigError, coerce_value, load_toml, parse_override

__all__ = ["main", "load_run_config", "RunConfig", "ConfigError", "DEFAULT_CONFIG_PATH"]

DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(__file__), "default.toml")


@dataclass
class DataConfig:
    """Where the samples come from (see default.toml)."""

    source: str = "neuralop"
    train_file: str = ""
    test_files: list = field(default_factory=list)
    n_train: int = 1000
    n_test: int = 50
    wheel: str = ""


@dataclass
class ModelSection:
    """The model: ``kind`` plus the architecture keys of :func:`solvers.surrogates.build_model`."""

    kind: str = "fno"
    n_modes: list = field(default_factory=lambda: [8, 8])
    hidden_channels: int = 32
    lifting_channels: int = 0
    projection_channels: int = 64
    n_layers: int = 4
    positional_embedding: bool = True
    factorization: str = "tucker"
    rank: float = 0.1
    dtype: str = "float32"
    seed: int = 0


@dataclass
class ParallelSection:
    """``mode`` "data" or "domain"; gradient buckets, overlap, sharded state, hierarchy levels; MG patching."""

    mode: str = "data"
    bucket_kib: int = 256
    overlap: bool = True
    sharded: bool = False
    levels: list = field(default_factory=list)
    padding: int = 2
    mg_levels: int = 1


@dataclass
class OutputSection:
    """Output directory, checkpoint, plots and progress lines."""

    directory: str = "surrogate_output"
    checkpoint: bool = True
    plots: bool = True
    progress: bool = True


def _train_cls():
    from .training import TrainConfig

    return TrainConfig


SECTIONS = {"data": DataConfig, "model": ModelSection, "train": None, "parallel": ParallelSection,
            "output": OutputSection}


@dataclass
class RunConfig:
    """A whole training run. Build with :func:`load_run_config`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    train: object = None
    parallel: ParallelSection = field(default_factory=ParallelSection)
    output: OutputSection = field(default_factory=OutputSection)

    def __post_init__(self):
        if self.train is None:
            self.train = _train_cls()()

    def to_dict(self) -> dict:
        """Nested plain dict of every value."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def model_config(self) -> dict:
        """The ``build_model`` config (``in_channels`` from the data, set by the caller)."""
        m = self.model
        if m.kind == "mlp":
            return {"model": "mlp", "in_channels": 1, "out_channels": 1, "hidden_channels": m.hidden_channels,
                    "n_layers": m.n_layers, "dtype": m.dtype, "seed": m.seed}
        cfg = {"model": m.kind, "n_modes": list(m.n_modes), "hidden_channels": m.hidden_channels, "in_channels": 1,
               "out_channels": 1, "lifting_channels": m.lifting_channels,
               "projection_channels": m.projection_channels, "n_layers": m.n_layers,
               "positional_embedding": m.positional_embedding, "dtype": m.dtype, "seed": m.seed}
        if m.kind == "tfno":
            cfg.update(factorization=m.factorization, rank=m.rank)
        return cfg

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming every bad value (joined by "; "). Not collective (pure)."""
        d, m, p = self.data, self.model, self.parallel
        bad = []
        if d.source not in ("neuralop", "h5"):
            bad.append(f"data.source: expected 'neuralop' or 'h5', got {d.source!r}")
        if d.source == "h5" and not d.train_file:
            bad.append("data.train_file: needed when data.source = 'h5'")
        for key in ("n_train", "n_test"):
            if getattr(d, key) < 1:
                bad.append(f"data.{key}: expected >= 1, got {getattr(d, key)}")
        if m.kind not in ("fno", "tfno", "mlp"):
            bad.append(f"model.kind: expected 'fno', 'tfno' or 'mlp', got {m.kind!r}")
        if m.dtype not in ("float32", "float64"):
            bad.append(f"model.dtype: expected 'float32' or 'float64', got {m.dtype!r}")
        if not 1 <= len(m.n_modes) <= 3 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                                               for k in m.n_modes):
            bad.append(f"model.n_modes: expected 1 to 3 ints >= 1, got {m.n_modes!r}")
        for key in ("hidden_channels", "projection_channels", "n_layers"):
            if getattr(m, key) < 1:
                bad.append(f"model.{key}: expected >= 1, got {getattr(m, key)}")
        if m.lifting_channels < 0:
            bad.append(f"model.lifting_channels: expected >= 0, got {m.lifting_channels}")
        if m.factorization not in ("tucker", "cp"):
            bad.append(f"model.factorization: expected 'tucker' or 'cp', got {m.factorization!r}")
        if not m.rank > 0:
            bad.append(f"model.rank: expected a fraction > 0, got {m.rank}")
        try:
            self.train.validate()
        except ValueError as exc:
            bad.append(str(exc))
        if p.mode not in ("data", "domain"):
            bad.append(f"parallel.mode: expected 'data' or 'domain', got {p.mode!r}")
        if p.bucket_kib < 1:
            bad.append(f"parallel.bucket_kib: expected >= 1, got {p.bucket_kib}")
        if p.padding < 0 or p.mg_levels < 0:
            bad.append(f"parallel.padding, parallel.mg_levels: expected >= 0, got {p.padding}, {p.mg_levels}")
        if p.mode == "domain" and (m.kind == "mlp" or len(m.n_modes) != 2):
            bad.append("parallel.mode = 'domain' needs a 2-D FNO or TFNO (model.kind, model.n_modes)")
        if p.mode == "domain" and (p.sharded or p.levels):
            bad.append("parallel.mode = 'domain' does not combine with parallel.sharded or parallel.levels")
        if p.mode == "domain" and self.train.loss != "l2":
            bad.append(f"train.loss: parallel.mode = 'domain' trains with 'l2', got {self.train.loss!r}")
        if p.sharded and p.levels:
            bad.append("parallel.sharded and parallel.levels: choose one (the sharded state reduces over all ranks)")
        if not self.output.directory:
            bad.append("output.directory: expected a directory name")
        if bad:
            raise ConfigError("; ".join(bad))


def _coerce(name: str, value, default):
    return coerce_value(name, value, type(default))


def _merge(cfg: RunConfig, table: dict) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"config: expected a table of sections, got {type(table).__name__}")
    for key, value in table.items():
        if key not in SECTIONS:
            raise ConfigError(f"config: unknown section {key!r} (sections: {', '.join(SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"config: [{key}] must be a table, got {value!r}")
        section = getattr(cfg, key)
        known = {f.name for f in dataclasses.fields(section)}
        for k, v in value.items():
            if k not in known:
                raise ConfigError(f"config: unknown key {key}.{k} (known: {', '.join(sorted(known))})")
            setattr(section, k, _coerce(f"{key}.{k}", v, getattr(section, k)))


def load_run_config(path: Optional[str] = None, overrides=()) -> RunConfig:
    """Defaults, then the TOML file ``path`` (relative data paths resolve against its folder),
    then every ``overrides`` entry (``"section.key=value"``, TOML value syntax), then one
    validation of the result. Not collective. Raises :class:`ConfigError`."""
    cfg = RunConfig()
    if path is not None:
        table = load_toml(path)
        base = os.path.dirname(os.path.abspath(path))
        data = table.get("data") if isinstance(table.get("data"), dict) else {}
        if isinstance(data.get("train_file"), str) and data["train_file"] and not os.path.isabs(data["train_file"]):
            data["train_file"] = os.path.join(base, data["train_file"])
        if isinstance(data.get("test_files"), list):
            data["test_files"] = [os.path.join(base, t) if isinstance(t, str) and not os.path.isabs(t) else t
                                  for t in data["test_files"]]
        _merge(cfg, table)
    for text in overrides:
        _merge(cfg, parse_override(text))
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------- commands

def _load_data(cfg: RunConfig):
    from .data import load_darcy_pt, load_h5, neuralop_file

    d = cfg.data
    dtype = cfg.model.dtype
    if d.source == "neuralop":
        wheel = d.wheel or None
        train = load_darcy_pt(neuralop_file("darcy_train_16", wheel=wheel), d.n_train, dtype=dtype)
        tests = {"16": load_darcy_pt(neuralop_file("darcy_test_16", wheel=wheel), d.n_test, dtype=dtype),
                 "32": load_darcy_pt(neuralop_file("darcy_test_32", wheel=wheel), d.n_test, dtype=dtype)}
        return train, tests
    train = load_h5(d.train_file, d.n_train, dtype=dtype)
    tests = {}
    for f in d.test_files or [d.train_file]:
        start = d.n_train if os.path.abspath(f) == os.path.abspath(d.train_file) else 0
        ds = load_h5(f, d.n_test, start=start, dtype=dtype)
        tests["x".join(map(str, ds.spatial))] = ds
    return train, tests


def _refused(comm, error, what: str) -> bool:
    """Collective: True on every rank when any rank has an ``error``; the messages are printed once
    by rank 0 (one line when every failing rank says the same)."""
    msgs = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    failed = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if not failed:
        return False
    if comm.Get_rank() == 0:
        if len({m for _, m in failed}) == 1 and len(failed) == comm.Get_size():
            text = failed[0][1]
        else:
            text = "; ".join(f"rank {r}/{comm.Get_size()}: {m}" for r, m in failed)
        print(f"surrogates: {what}: {text}", file=sys.stderr, flush=True)
    return True


def _train(args, comm, logger) -> int:
    rank = comm.Get_rank()
    cfg, error = None, None
    try:
        cfg = load_run_config(args.config or DEFAULT_CONFIG_PATH, overrides=args.overrides)
    except ConfigError as exc:
        error = exc
    if _refused(comm, error, "configuration refused"):
        return 2
    if args.print_config:
        if rank == 0:
            print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    from .models import build_model

    error, train, tests = None, None, None
    try:
        train, tests = _load_data(cfg)
        mcfg = cfg.model_config()
        ndim = train.x.ndim - 2
        if cfg.model.kind != "mlp" and len(mcfg["n_modes"]) != ndim:
            raise ValueError(f"model.n_modes: {len(mcfg['n_modes'])} axes, the data have {ndim} spatial axes")
        mcfg["in_channels"], mcfg["out_channels"] = train.x.shape[1], train.y.shape[1]
    except (ValueError, TypeError, OSError, ImportError) as exc:
        error = exc
    if _refused(comm, error, "refused before training"):
        return 2
    p, o = cfg.parallel, cfg.output
    patches = None
    try:
        if p.mode == "domain":
            from .domain import DomainTrainer, MultigridPatches

            patches = MultigridPatches(comm, train.spatial, padding=p.padding, levels=p.mg_levels)
            mcfg["in_channels"] *= patches.channels_factor
            tests = {k: v for k, v in tests.items() if v.spatial == train.spatial}
            trainer = DomainTrainer(build_model(mcfg), patches, train, tests, cfg.train, log=o.progress,
                                    bucket_nbytes=p.bucket_kib * 1024, overlap=p.overlap)
        else:
            from .training import Trainer

            trainer = Trainer(build_model(mcfg), train, tests, cfg.train, comm=comm, log=o.progress,
                              bucket_nbytes=p.bucket_kib * 1024, overlap=p.overlap, sharded=p.sharded,
                              levels=p.levels or None)
    except (ValueError, TypeError) as exc:
        if rank == 0:
            print(f"surrogates: refused before training: {exc}", file=sys.stderr, flush=True)
        return 2
    model = trainer.model
    test_sizes = ", ".join(f"{k}: {len(v)}" for k, v in tests.items())
    logger.info("surrogates: %s with %d parameters, %d train / %s test samples, %d rank(s), %s-parallel%s",
                model.config["model"], model.n_params, len(train), test_sizes,
                comm.Get_size(), p.mode, f" (patch {patches.patch_shape}, grid {patches.decomposition.dims})"
                if patches is not None else "")
    trainer.fit()
    mem = trainer.parallel.memory_per_rank(trainer.optimizer)
    logger.info("surrogates: done; memory per rank [bytes]: %s; exposed gradient communication %.2f s of "
                "%.2f s backward", mem, trainer.parallel.stats["wait_s"], trainer.parallel.stats["backward_s"])
    if rank == 0:
        os.makedirs(o.directory, exist_ok=True)
        with open(os.path.join(o.directory, "history.json"), "w") as f:
            json.dump({"config": cfg.to_dict(), "history": trainer.history, "memory_per_rank": mem}, f, indent=1)
    if o.checkpoint:
        trainer.save(os.path.join(o.directory, "model.h5"))
    if o.plots:
        _plots(trainer, tests, o.directory, patches, rank, logger)
    if patches is not None:
        patches.free()
    trainer.parallel.free()
    logger.info("surrogates: output in %s/", o.directory)
    return 0


def _plots(trainer, tests, directory, patches, rank, logger) -> None:
    import numpy as np

    from .plots import plot_history, plot_predictions

    name, ds = next(iter(tests.items())) if tests else (None, None)
    pred = None
    if ds is not None:
        index = np.arange(min(3, len(ds)))
        if patches is not None:
            x, _ = trainer._patch_batch(ds, index)
            pred = patches.gather(trainer.predict_patch(x))
        elif rank == 0:
            pred = trainer.predict(trainer.model.xp.asarray(ds.x[index], dtype=trainer.model.dtype))
    if rank != 0:
        return
    paths = [plot_history(trainer.history, os.path.join(directory, "loss.png"))]
    if pred is not None:
        paths.append(plot_predictions(ds.x[:len(pred)], ds.y[:len(pred)], np.asarray(pred),
                                      os.path.join(directory, "predictions.png"), title=f"test set {name}"))
    logger.info("surrogates: plots %s", ", ".join(paths))


def _generate(args, comm, logger) -> int:
    rank = comm.Get_rank()
    if min(args.samples, args.resolution) < 1:
        if rank == 0:
            print("surrogates: --samples and --resolution must be >= 1", file=sys.stderr)
        return 2
    try:
        if args.problem == "darcy":
            from .darcy import generate_darcy

            s = generate_darcy(comm, args.out, args.samples, args.resolution, seed=args.seed,
                               group_size=args.group_size, method=args.method, rtol=args.rtol, dtype=args.dtype)
            logger.info("surrogates: %d Darcy samples at %dx%d in %.1f s (%d group(s) of %d rank(s), mean %.0f "
                        "PCG iterations) -> %s", s["samples"], args.resolution, args.resolution, s["wall_s"],
                        s["groups"], s["group_size"], s["mean_iterations"], args.out)
            return 0
        from hpcore import agree

        from .burgers import burgers_1d, grf_1d, heat_1d
        from .data import write_dataset

        error = None
        if rank == 0:
            try:
                u0 = grf_1d(args.samples, args.resolution, seed=args.seed, sigma=args.sigma)
                u1 = heat_1d(u0, args.nu, args.time) if args.problem == "heat" else burgers_1d(u0, args.nu, args.time)
                write_dataset(args.out, u0.astype(args.dtype), u1.astype(args.dtype), problem=args.problem,
                              resolution=args.resolution, nu=args.nu, time=args.time, seed=args.seed,
                              n_samples=args.samples, domain="periodic [0, 1)",
                              discretization="Fourier pseudo-spectral, 2/3 dealiasing, integrating-factor RK4"
                              if args.problem == "burgers" else "exact in Fourier space")
            except (ValueError, OSError) as exc:
                error = exc
        agree(comm, error)
        logger.info("surrogates: %d %s samples at %d points -> %s", args.samples, args.problem, args.resolution,
                    args.out)
        return 0
    except (ValueError, TypeError, OSError, ImportError) as exc:
        if rank == 0:
            print(f"surrogates: generate refused: {exc}", file=sys.stderr, flush=True)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m solvers.surrogates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,generate}")
    t = sub.add_parser("train", help="train a surrogate from a TOML configuration")
    t.add_argument("config", nargs="?", default=None, help="TOML configuration (default: the built-in default.toml)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting (TOML value syntax), e.g. --set train.epochs=5 (repeatable)")
    t.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    g = sub.add_parser("generate", help="generate a dataset (HDF5)")
    g.add_argument("problem", choices=("darcy", "burgers", "heat"))
    g.add_argument("--samples", type=int, required=True)
    g.add_argument("--resolution", type=int, required=True)
    g.add_argument("--out", required=True, help="HDF5 file to write")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    g.add_argument("--group-size", type=int, default=1, help="darcy: ranks per sample (must divide the ranks)")
    g.add_argument("--method", default="cg", choices=("cg", "petsc"), help="darcy: linear solver")
    g.add_argument("--rtol", type=float, default=1e-10, help="darcy: relative residual of the solves")
    g.add_argument("--nu", type=float, default=0.05, help="burgers/heat: viscosity")
    g.add_argument("--time", type=float, default=1.0, help="burgers/heat: final time")
    g.add_argument("--sigma", type=float, default=3.0, help="burgers/heat: initial-condition amplitude")
    return p


def main(argv=None) -> int:
    """Run the command line (``argv``: the arguments after the program name). Returns the exit status."""
    args = _parser().parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    debug = os.environ.get("SURROGATES_DEBUG", "") not in ("", "0")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s" if debug else "%(message)s"))
    for name in ("solvers.surrogates", "solvers.surrogates.training", "solvers.surrogates.darcy"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler] if name == "solvers.surrogates" else []
        lg.propagate = name != "solvers.surrogates"
    logger = logging.getLogger("solvers.surrogates")
    logger.setLevel(logging.DEBUG if debug else (logging.INFO if rank == 0 else logging.WARNING))
    try:
        if args.command == "train":
            return _train(args, comm, logger)
        return _generate(args, comm, logger)
    except Exception:  # noqa: BLE001 - any error on one rank must end the job, not hang it
        # an error on some ranks only (mid-run): report it with the rank and end the whole job,
        # so that the other ranks do not wait forever in a collective
        import traceback

        print(f"surrogates: rank {rank}/{comm.Get_size()} failed:\n{traceback.format_exc()}", file=sys.stderr,
              flush=True)
        if comm.Get_size() > 1:
            comm.Abort(1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
