"""Run configuration: typed dataclasses loaded from TOML, with strict checks and per-realization values."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..configuration import ConfigError, coerce_value, load_toml, merge_tables, parse_override, parse_value

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "RESTART_SAFE",
    "AssimilationConfig",
    "ConfigError",
    "DiffusionConfig",
    "FlowConfig",
    "FluxTransportConfig",
    "GridConfig",
    "InitialConfig",
    "OutputConfig",
    "ParallelConfig",
    "TimeConfig",
    "ValidationConfig",
    "load_config",
    "merge_tables",
    "read_toml",
    "restart_check",
]

DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(__file__), "default.toml")

Number = int | float
PerRealization = Number | list


@dataclass
class GridConfig:
    """Grid of synthetic initial maps (a map file brings its own grid)."""

    ntheta: int = 181
    nphi: int = 360


@dataclass
class InitialConfig:
    """Initial Br.

    ``kind``: ``"bipolar"`` (built-in active regions on a dipole), ``"file"`` (a HipFT
    map), ``"soccer"`` (``Y_6^0 + sqrt(14/11) Y_6^5``), ``"dipole"`` (``dipole_gauss
    cos(theta)``), ``"gaussians"`` (HipFT's validation run 2: two Gaussians of
    opposite sign, width ``validation.width``), ``"zero"``. ``regions``: rows of ``[lat, lon, peak, separation,
    tilt, width]`` [deg, deg, G, deg, deg, deg] for ``"bipolar"`` (empty: built-in set).
    """

    kind: str = "bipolar"
    file: str = ""
    flux_balance: bool = False
    scale: float = 1.0
    dipole_gauss: float = 5.0
    regions: list = field(default_factory=list)


@dataclass
class TimeConfig:
    """Times in hours. ``dt_h``: a fixed step (refused if above the advection limit); 0 = automatic."""

    start_h: float = 0.0
    end_h: float = 672.0
    dt_max_h: float = 1.0
    dt_h: float = 0.0
    strang: bool = False


@dataclass
class FlowConfig:
    """Flows. AFT coefficients in m/s (scalars or one value per realization); rigid rotation and
    constant vt in km/s; attenuation ``1 - tanh(|Br| / attenuate_gauss)``."""

    enabled: bool = True
    differential_rotation: bool = True
    dr_p0: PerRealization = 46.0
    dr_p2: PerRealization = -262.0
    dr_p4: PerRealization = -379.0
    meridional_flow: bool = True
    mf_p1: PerRealization = 22.0
    mf_p3: PerRealization = 11.0
    mf_p5: PerRealization = -28.0
    rigid_omega_km_s: float = 0.0
    vt_const_km_s: float = 0.0
    attenuate: bool = False
    attenuate_gauss: PerRealization = 500.0


@dataclass
class DiffusionConfig:
    """Diffusion ``eta_km2_s`` [km^2/s] (scalar or per realization; 1 km^2/s = 7.43162901307967e-9 R^2/h).

    ``method``: ``"rkg2"`` or ``"rkl2"`` super time stepping, or ``"implicit"``
    (backward Euler through petsc4py's KSP). ``subcycles``: HipFT's
    ``diffusion_subcycles``: 0 = automatic sub-cycling by HipFT's practical time-step
    limit, n > 0 = n equal sub-steps per step. ``max_stages``: the older cap on
    stages per super step (used only where the stepping still reads it).
    """

    enabled: bool = True
    eta_km2_s: PerRealization = 500.0
    method: str = "rkg2"
    max_stages: int = 75
    subcycles: int = 0
    implicit_rtol: float = 1e-12


@dataclass
class AssimilationConfig:
    """Data assimilation of observed maps listed in a CSV (``target_datetime_utc, obs_datetime_utc,
    obs_jd, map_path``; times relative to the first map, in hours from ``24 * jd``).

    ``Br += w (Br_obs - Br)``; with ``custom_from_mu`` the weight is rebuilt as
    ``mu^mu_power`` where ``mu > mu_limit`` (else 0); weights within
    ``pole_exclusion_deg`` of a pole, and on the pole caps, are zero.
    """

    enabled: bool = False
    map_list: str = ""
    root_dir: str = ""
    custom_from_mu: bool = False
    mu_power: PerRealization = 4.0
    mu_limit: PerRealization = 0.1
    pole_exclusion_deg: PerRealization = 0.0
    balance_flux: bool = False


@dataclass
class OutputConfig:
    """Output under ``directory``: maps every ``map_cadence_h`` (0: initial and final only), history
    every ``history_cadence_h`` (0: every step), checkpoints every ``checkpoint_cadence_h`` (0: at
    the end only), plots at the end, a progress line every ``progress_every`` steps on rank 0.
    History files are ``<history_prefix>_r000001.out``; ``history_prefix = ""`` means
    ``<first word of prefix>_history`` (HipFT decks use ``hipft_history_sol``)."""

    directory: str = "flux_output"
    prefix: str = "ft_brmap"
    map_cadence_h: float = 0.0
    history_cadence_h: float = 0.0
    checkpoint_cadence_h: float = 0.0
    single_precision: bool = True
    plots: bool = True
    history_prefix: str = ""
    progress_every: int = 0
    polar_latitude_deg: float = 60.0


@dataclass
class ParallelConfig:
    """``realization_groups``: split the realizations over this many groups of ranks; ``dims``: the
    (theta, phi) process grid inside a group (0 = choose); ``device``: ``"cpu"`` or ``"gpu"``."""

    realization_groups: int = 1
    dims: list = field(default_factory=lambda: [0, 0])
    halo_method: str = "auto"
    device: str = "cpu"


@dataclass
class ValidationConfig:
    """``kind = "soccer"``: start from the soccer ball and report the error against
    ``f0(theta, phi - Omega t) exp(-42 eta t)`` in the history. ``kind = "gaussians"``:
    HipFT's validation run 2, two Gaussians of ``width`` [rad^2] carried by rigid
    rotation and a constant vt, error against the moved Gaussians."""

    kind: str = "none"
    width: float = 0.03


SECTIONS = {
    "grid": GridConfig,
    "initial": InitialConfig,
    "time": TimeConfig,
    "flow": FlowConfig,
    "diffusion": DiffusionConfig,
    "assimilation": AssimilationConfig,
    "output": OutputConfig,
    "parallel": ParallelConfig,
    "validation": ValidationConfig,
}

PER_REALIZATION = {
    ("flow", "dr_p0"), ("flow", "dr_p2"), ("flow", "dr_p4"), ("flow", "mf_p1"), ("flow", "mf_p3"),
    ("flow", "mf_p5"), ("flow", "attenuate_gauss"), ("diffusion", "eta_km2_s"), ("assimilation", "mu_power"),
    ("assimilation", "mu_limit"), ("assimilation", "pole_exclusion_deg"),
}

CHOICES = {
    ("initial", "kind"): ("bipolar", "file", "soccer", "dipole", "gaussians", "zero"),
    ("diffusion", "method"): ("rkg2", "rkl2", "implicit"),
    ("parallel", "halo_method"): ("auto", "datatype", "pack"),
    ("parallel", "device"): ("cpu", "gpu"),
    ("validation", "kind"): ("none", "soccer", "gaussians"),
}


@dataclass
class FluxTransportConfig:
    """A whole run. Build with :func:`load_config` (TOML file and/or dict and overrides)."""

    n_realizations: int = 1
    grid: GridConfig = field(default_factory=GridConfig)
    initial: InitialConfig = field(default_factory=InitialConfig)
    time: TimeConfig = field(default_factory=TimeConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    assimilation: AssimilationConfig = field(default_factory=AssimilationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, data: dict, base: FluxTransportConfig | None = None,
                  validate: bool = True) -> FluxTransportConfig:
        """A config from nested ``{section: {key: value}}`` on top of ``base`` (default: defaults).

        Raises :class:`ConfigError` for an unknown section or key or a value of the wrong type,
        and (``validate``) for values that do not fit together.
        """
        cfg = dataclasses.replace(base) if base is not None else cls()
        if base is not None:
            for name in SECTIONS:
                setattr(cfg, name, dataclasses.replace(getattr(base, name)))
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a table of sections, got {type(data).__name__}")
        for key, value in data.items():
            if key == "n_realizations":
                cfg.n_realizations = _coerce("n_realizations", value, int)
                continue
            if key not in SECTIONS:
                raise ConfigError(f"config: unknown key {key!r} (sections: {', '.join(SECTIONS)}, "
                                  "and n_realizations)")
            if not isinstance(value, dict):
                raise ConfigError(f"config: [{key}] must be a table, got {value!r}")
            section = getattr(cfg, key)
            known = {f.name: f for f in dataclasses.fields(section)}
            for k, v in value.items():
                if k not in known:
                    raise ConfigError(f"config: unknown key {key}.{k!r} (known: {', '.join(known)})")
                setattr(section, k, _coerce(f"{key}.{k}", v, known[k].type, per_realization=(key, k) in
                                            PER_REALIZATION))
        if validate:
            cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        """Nested plain dict (TOML-able) of every value."""
        out: dict = {"n_realizations": self.n_realizations}
        for name in SECTIONS:
            out[name] = dataclasses.asdict(getattr(self, name))
        return out

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad value. Not collective (pure)."""
        n = self.n_realizations
        if n < 1:
            raise ConfigError(f"n_realizations: expected >= 1, got {n}")
        for (section, key), options in CHOICES.items():
            v = getattr(getattr(self, section), key)
            if v not in options:
                raise ConfigError(f"{section}.{key}: expected one of {options}, got {v!r}")
        g = self.grid
        if g.ntheta < 5 or g.nphi < 4:
            raise ConfigError(f"grid: need ntheta >= 5 and nphi >= 4, got ntheta={g.ntheta}, nphi={g.nphi}")
        for section, key in sorted(PER_REALIZATION):
            self.per_realization(section, key)  # length check
        t = self.time
        for k in ("start_h", "end_h", "dt_max_h", "dt_h"):
            if not math.isfinite(getattr(t, k)):
                raise ConfigError(f"time.{k}: must be finite, got {getattr(t, k)}")
        if t.end_h <= t.start_h:
            raise ConfigError(f"time.end_h: must be after time.start_h ({t.start_h}), got {t.end_h}")
        if t.dt_max_h <= 0:
            raise ConfigError(f"time.dt_max_h: must be > 0, got {t.dt_max_h}")
        if t.dt_h < 0:
            raise ConfigError(f"time.dt_h: must be >= 0 (0 = automatic), got {t.dt_h}")
        eta = self.per_realization("diffusion", "eta_km2_s")
        if np.any(~np.isfinite(eta)) or np.any(eta < 0):
            bad = [float(x) for x in eta if not (math.isfinite(x) and x >= 0)]
            raise ConfigError(f"diffusion.eta_km2_s: diffusivity must be >= 0 km^2/s, got {bad[0]}")
        if isinstance(self.diffusion.subcycles, bool) or self.diffusion.subcycles < 0:
            raise ConfigError(f"diffusion.subcycles: must be >= 0 (0 = automatic), got {self.diffusion.subcycles}")
        if self.diffusion.max_stages < 3:
            raise ConfigError(f"diffusion.max_stages: must be >= 3, got {self.diffusion.max_stages}")
        if not 0 < self.diffusion.implicit_rtol < 1:
            raise ConfigError(f"diffusion.implicit_rtol: expected 0 < rtol < 1, got {self.diffusion.implicit_rtol}")
        if self.flow.attenuate:
            b = self.per_realization("flow", "attenuate_gauss")
            if np.any(b <= 0):
                raise ConfigError(f"flow.attenuate_gauss: must be > 0 G, got {float(b[b <= 0][0])}")
        for k in ("rigid_omega_km_s", "vt_const_km_s"):
            if not math.isfinite(getattr(self.flow, k)):
                raise ConfigError(f"flow.{k}: must be finite")
        a = self.assimilation
        if a.enabled and not a.map_list:
            raise ConfigError("assimilation.map_list: needed when assimilation.enabled")
        if np.any(self.per_realization("assimilation", "mu_power") < 0):
            raise ConfigError("assimilation.mu_power: must be >= 0")
        pe = self.per_realization("assimilation", "pole_exclusion_deg")
        if np.any((pe < 0) | (pe >= 90)):
            raise ConfigError(f"assimilation.pole_exclusion_deg: must be in [0, 90), got {pe.tolist()}")
        o = self.output
        for k in ("map_cadence_h", "history_cadence_h", "checkpoint_cadence_h"):
            if getattr(o, k) < 0:
                raise ConfigError(f"output.{k}: must be >= 0, got {getattr(o, k)}")
        if o.progress_every < 0:
            raise ConfigError(f"output.progress_every: must be >= 0, got {o.progress_every}")
        if not 0 < o.polar_latitude_deg < 90:
            raise ConfigError(f"output.polar_latitude_deg: expected 0 < lat < 90, got {o.polar_latitude_deg}")
        if not o.prefix or os.sep in o.prefix:
            raise ConfigError(f"output.prefix: expected a file name prefix, got {o.prefix!r}")
        if os.sep in o.history_prefix:
            raise ConfigError(f"output.history_prefix: expected a file name prefix, got {o.history_prefix!r}")
        if not o.directory:
            raise ConfigError("output.directory: expected a directory name, got ''")
        p = self.parallel
        if p.realization_groups < 1:
            raise ConfigError(f"parallel.realization_groups: expected >= 1, got {p.realization_groups}")
        if p.realization_groups > n:
            raise ConfigError(f"parallel.realization_groups: {p.realization_groups} groups for {n} realizations")
        if len(p.dims) != 2 or any((not isinstance(x, int)) or x < 0 for x in p.dims):
            raise ConfigError(f"parallel.dims: expected two ints >= 0, got {p.dims!r}")
        if self.initial.kind == "file" and not self.initial.file:
            raise ConfigError("initial.file: needed when initial.kind = 'file'")
        for region in self.initial.regions:
            if not isinstance(region, (list, tuple)) or len(region) != 6:
                raise ConfigError(f"initial.regions: each region is [lat, lon, peak, separation, tilt, width], "
                                  f"got {region!r}")
        if self.validation.kind == "soccer" and self.initial.kind not in ("soccer",):
            raise ConfigError("validation.kind = 'soccer' needs initial.kind = 'soccer'")
        if self.validation.kind == "gaussians" and self.initial.kind != "gaussians":
            raise ConfigError("validation.kind = 'gaussians' needs initial.kind = 'gaussians'")
        if not (math.isfinite(self.validation.width) and self.validation.width > 0):
            raise ConfigError(f"validation.width: expected > 0 rad^2, got {self.validation.width}")
        if self.validation.kind == "gaussians" and self.flow.enabled and (
                self.flow.differential_rotation or self.flow.meridional_flow or self.flow.attenuate):
            raise ConfigError("validation.kind = 'gaussians' has an exact solution only with rigid rotation and a "
                              "constant vt: set flow.differential_rotation, flow.meridional_flow and "
                              "flow.attenuate to false")
        if self.validation.kind == "soccer" and self.flow.enabled and (
                self.flow.differential_rotation or self.flow.meridional_flow or self.flow.vt_const_km_s
                or self.flow.attenuate):
            raise ConfigError("validation.kind = 'soccer' has an exact solution only with rigid rotation: set "
                              "flow.differential_rotation, flow.meridional_flow and flow.attenuate to false and "
                              "flow.vt_const_km_s to 0")

    def per_realization(self, section: str, key: str) -> np.ndarray:
        """``(n_realizations,)`` float array of a scalar-or-list setting (ConfigError on a wrong length)."""
        v = getattr(getattr(self, section), key)
        n = self.n_realizations
        if isinstance(v, list):
            if len(v) != n:
                raise ConfigError(f"{section}.{key}: a list needs one value per realization ({n}), got {len(v)}")
            return np.asarray(v, dtype=np.float64)
        return np.full(n, float(v))

    @property
    def advection(self) -> bool:
        """Whether any flow moves the field (flows enabled and some flow term non-zero)."""
        f = self.flow
        return bool(f.enabled and (f.differential_rotation or f.meridional_flow or f.rigid_omega_km_s
                                   or f.vt_const_km_s))

    @property
    def diffusion_on(self) -> bool:
        """Whether diffusion is enabled with a non-zero diffusivity in some realization."""
        return bool(self.diffusion.enabled and np.any(self.per_realization("diffusion", "eta_km2_s") > 0))


def _coerce(name: str, value: Any, kind, per_realization: bool = False):
    """Check and convert one value against the dataclass field type."""
    if per_realization and isinstance(value, list):
        return [_coerce(f"{name}[{i}]", v, float) for i, v in enumerate(value)]
    kinds = {"int": int, "float": float, "bool": bool, "str": str, "list": list}
    if isinstance(kind, str):
        kind = kinds.get(kind.split("[")[0].strip(), None) or (float if "PerRealization" in kind else kind)
    return coerce_value(name, value, kind)


def _parse_value(key: str, raw: str):
    """A ``--set`` value (see :func:`solvers.configuration.parse_value`)."""
    return parse_value(key, raw)


def _parse_override(text: str) -> dict:
    return parse_override(text, allow_top_level=True)


def read_toml(path: str) -> dict:
    """The table of a TOML configuration file, relative file paths made absolute against its folder."""
    table = load_toml(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    for section, key in (("initial", "file"), ("assimilation", "map_list"), ("assimilation", "root_dir")):
        v = table.get(section, {}).get(key) if isinstance(table.get(section), dict) else None
        if isinstance(v, str) and v and not os.path.isabs(v):
            table[section][key] = os.path.join(base_dir, v)
    return table


def load_config(path: str | None = None, data: dict | None = None, overrides=()) -> FluxTransportConfig:
    """Defaults, then the TOML file ``path`` (relative file paths inside it resolve against its
    folder), then ``data``, then ``overrides`` (``"section.key=value"``, value in TOML syntax).

    Everything is applied first and checked once at the end, so overrides that only
    make sense together (``n_realizations`` and a per-realization list; ``initial.kind``
    and ``initial.file``; ``time.start_h`` and ``time.end_h``) work in any order.
    Not collective: every rank loads the same file. Raises :class:`ConfigError`.
    """
    tables = [read_toml(path)] if path is not None else []
    if data:
        tables.append(data)
    tables.extend(_parse_override(text) for text in overrides)
    cfg = FluxTransportConfig.from_dict(merge_tables(*tables), validate=False)
    cfg.validate()
    return cfg


RESTART_SAFE = ("time.end_h", "output.map_cadence_h", "output.history_cadence_h", "output.checkpoint_cadence_h",
                "output.progress_every", "output.plots", "output.single_precision")
"""Settings a restart may change when asked (``--allow-change KEY``): they do not alter the solution so far."""
RESTART_FREE = ("output.directory", "parallel.")
"""Settings a restart may always change (where output goes, how ranks are laid out: same bits)."""


def _flatten(table: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def restart_check(saved: dict, current: FluxTransportConfig, allow=(), time_h: float = 0.0) -> list:
    """Refuse a restart whose configuration differs from the checkpoint's in anything but allowed settings.

    ``saved``: the checkpoint's configuration (``to_dict()`` of the original run);
    ``allow``: keys of :data:`RESTART_SAFE` the user allows to change; ``time_h``:
    the checkpoint's time. Returns the allowed differences ``[(key, old, new)]``.
    Raises :class:`ConfigError` naming every refused key with both values. Not collective.
    """
    old = _flatten(saved)
    new = _flatten(current.to_dict())
    bad_allow = [a for a in allow if a not in RESTART_SAFE]
    if bad_allow:
        raise ConfigError(f"--allow-change {', '.join(bad_allow)}: a restart can only be allowed to change "
                          f"{', '.join(RESTART_SAFE)}")
    refused, allowed, need_flag = [], [], []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)):
            continue
        if key == "output.directory" or key.startswith("parallel."):
            continue
        if key in RESTART_SAFE:
            (allowed if key in allow else need_flag).append((key, a, b))
        elif key not in old:
            continue  # a setting newer than the checkpoint, at its default
        else:
            refused.append((key, a, b))
    if refused:
        what = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in refused)
        raise ConfigError(f"restart: the configuration differs from the checkpoint's in settings a restart cannot "
                          f"change ({what}); run from the start or use the checkpoint's configuration")
    if need_flag:
        what = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in need_flag)
        keys = " ".join(f"--allow-change {k}" for k, _, _ in need_flag)
        raise ConfigError(f"restart: the configuration differs from the checkpoint's ({what}); pass {keys} to "
                          "continue with the new value(s)")
    if current.time.end_h <= time_h:
        raise ConfigError(f"time.end_h: {current.time.end_h} h is not after the checkpoint's time {time_h} h")
    return allowed
