"""HipFT decks (``hipft.in``) as flux-transport configurations.

:func:`deck_to_dict` turns the ``&hipft_input_parameters`` group of a HipFT input
file into this solver's nested configuration (the same keys as the TOML files),
with HipFT's defaults for everything the deck leaves out, and refuses, naming the
namelist key and its value, any setting this solver does not implement.
:func:`load_deck` adds ``--set`` overrides and validates. ``python -m
solvers.flux_transport.hipft_deck hipft.in`` prints the equivalent TOML.

What is read (HipFT name -> configuration key):

- ``res_nt``, ``res_np`` -> ``grid.ntheta = res_nt``, ``grid.nphi = res_np - 1``
  (HipFT's ``res_np`` counts the phi = 2 pi copy); ignored with a map file, as HipFT.
- ``initial_map_filename`` (relative paths resolve against the deck's folder),
  ``initial_map_flux_balance``, ``initial_map_mult_fac`` -> ``initial.*``; without a
  map HipFT starts from zero (``initial.kind = "zero"``).
- ``validation_run`` 1 (soccer ball) and 2 (two Gaussians, HipFT overrides a
  non-zero ``flow_vp_rigid_omega`` to one turn and a non-zero ``flow_vt_const`` to
  pi/2 over the run, as done here), ``validation_run_width`` -> ``validation.*``.
- ``n_realizations`` and every ``*_value``/``*_values`` pair (a per-realization
  list wins where set, as HipFT's sentinels do) -> lists per realization.
- ``time_start``, ``time_end``, ``dt_max`` (default: the whole run), ``dt_min``
  (checked only), ``strang_splitting`` -> ``time.*``.
- ``advance_flow``, ``flow_dr_model``/``flow_mf_model`` (0 or 1), AFT coefficients,
  ``flow_vp_rigid_omega``, ``flow_vt_const``, ``flow_attenuate*`` -> ``flow.*``;
  ``flow_num_method = 4``, ``upwind = 1``, ``weno_eps = 0`` (the only scheme here).
- ``advance_diffusion``, ``diffusion_coef_constant(s)`` -> ``diffusion.eta_km2_s``;
  ``diffusion_num_method`` 2 (RKL2) or 3 (RKG2); ``diffusion_subcycles`` -> ``diffusion.subcycles``.
- ``assimilate_data*`` (not ``_add``; ``_mult_fac = 1``) -> ``assimilation.*``.
- ``output_map_root_filename`` -> ``output.prefix``, ``output_map_time_cadence``,
  ``output_history_time_cadence``, ``output_single_precision``,
  ``pole_flux_lat_limit`` (degrees from the pole) -> ``output.*``. History files
  get HipFT's names (``hipft_history_sol_r000001.out``) and columns.

Refused: sources (``advance_source``), flows from files, output of flows,
``flow_rigid_omega``, diffusion from a file or grid, a changed
``diffusion_coef_factor``, Euler diffusion, other advection schemes,
``output_map_idx_cadence``, ``output_map_flux_balance``, ``validation_run = 3``,
and names HipFT does not know.

Not collective; pure Python (reads the deck only).
"""

from __future__ import annotations

import math
import os
import sys

from .config import ConfigError, load_config
from .grid import KM_S_TO_RS_H
from .hipft_namelist import UNSET, NamelistError, read_namelist

__all__ = ["HIPFT_HISTORY_PREFIX", "HIPFT_NAMES", "deck_to_dict", "load_deck", "to_toml"]

GROUP = "hipft_input_parameters"
HIPFT_HISTORY_PREFIX = "hipft_history_sol"
KM_S_TO_RS_HR = KM_S_TO_RS_H  # HipFT's km_s_to_rs_hr
DIFF_KM2_S_TO_RS2_HR = 7.43162901307967e-9

# Every name of HipFT 1.19's &hipft_input_parameters (src/hipft.f90, READ_INPUT_FILE).
HIPFT_NAMES = frozenset("""
verbose res_nt res_np n_realizations initial_map_filename initial_map_flux_balance initial_map_mult_fac
validation_run validation_run_width time_start time_end output_map_idx_start output_map_directory
output_map_root_filename output_map_idx_cadence output_map_time_cadence output_map_2d output_map_flux_balance
output_flows output_flows_directory output_history_time_cadence output_single_precision dt_min dt_max
strang_splitting pole_flux_lat_limit advance_flow flow_vp_rigid_omega flow_rigid_omega flow_vt_const
flow_attenuate flow_attenuate_value flow_attenuate_values flow_dr_model flow_dr_coef_p0_value
flow_dr_coef_p2_value flow_dr_coef_p4_value flow_dr_coef_p0_values flow_dr_coef_p2_values
flow_dr_coef_p4_values flow_mf_model flow_mf_coef_p1_value flow_mf_coef_p3_value flow_mf_coef_p5_value
flow_mf_coef_p1_values flow_mf_coef_p3_values flow_mf_coef_p5_values use_flow_from_files flow_list_filename
flow_root_dir flow_num_method weno_eps upwind advance_diffusion diffusion_coef_filename diffusion_coef_grid
diffusion_coef_factor diffusion_num_method diffusion_subcycles diffusion_coef_constant
diffusion_coef_constants assimilate_data assimilate_data_balance_flux assimilate_data_mult_fac
assimilate_data_map_list_filename assimilate_data_map_root_dir assimilate_data_custom_from_mu
assimilate_data_mu_power assimilate_data_mu_powers assimilate_data_lat_limit assimilate_data_lat_limits
assimilate_data_mu_limit assimilate_data_mu_limits assimilate_data_add advance_source source_from_file
source_filename source_rfe_model source_rfe_total_unsigned_flux_per_hour
source_rfe_total_unsigned_flux_per_hours source_rfe_lifetime source_rfe_seed
""".split())

# HipFT's defaults (src/hipft.f90, module input_parameters) of what is read here.
DEFAULTS = {
    "verbose": 0, "res_nt": 0, "res_np": 0, "n_realizations": 1, "initial_map_filename": "",
    "initial_map_flux_balance": False, "initial_map_mult_fac": 1.0, "validation_run": 0,
    "validation_run_width": 0.03, "time_start": 0.0, "time_end": 1.0, "output_map_idx_start": 1,
    "output_map_directory": "output_maps", "output_map_root_filename": "hipft_brmap", "output_map_idx_cadence": 0,
    "output_map_time_cadence": 0.0, "output_map_2d": True, "output_map_flux_balance": False,
    "output_flows": False, "output_flows_directory": "output_flows", "output_history_time_cadence": 0.0,
    "output_single_precision": True, "dt_min": 1.0e-15, "dt_max": None, "strang_splitting": False,
    "pole_flux_lat_limit": 30.0, "advance_flow": False, "flow_vp_rigid_omega": 0.0, "flow_rigid_omega": 0.0,
    "flow_vt_const": 0.0, "flow_attenuate": False, "flow_attenuate_value": 500.0, "flow_dr_model": 0,
    "flow_mf_model": 0, "flow_dr_coef_p0_value": 46.0, "flow_dr_coef_p2_value": -262.0,
    "flow_dr_coef_p4_value": -379.0, "flow_mf_coef_p1_value": 22.0, "flow_mf_coef_p3_value": 11.0,
    "flow_mf_coef_p5_value": -28.0, "use_flow_from_files": False, "flow_list_filename": "", "flow_root_dir": ".",
    "flow_num_method": 4, "upwind": 1.0, "weno_eps": 0.0, "advance_diffusion": False,
    "diffusion_coef_constant": 0.0, "diffusion_coef_filename": "", "diffusion_coef_grid": False,
    "diffusion_coef_factor": DIFF_KM2_S_TO_RS2_HR, "diffusion_num_method": 3, "diffusion_subcycles": 0,
    "assimilate_data": False, "assimilate_data_balance_flux": False, "assimilate_data_mult_fac": 1.0,
    "assimilate_data_map_list_filename": "", "assimilate_data_map_root_dir": ".",
    "assimilate_data_custom_from_mu": False, "assimilate_data_mu_power": 4.0, "assimilate_data_lat_limit": 0.0,
    "assimilate_data_mu_limit": 0.1, "assimilate_data_add": False, "advance_source": False,
    "source_from_file": False, "source_filename": "", "source_rfe_model": 0,
    "source_rfe_total_unsigned_flux_per_hour": 0.0, "source_rfe_lifetime": 0.3, "source_rfe_seed": -9999,
}

# name: (the value this solver implements, what to say)
_MUST_EQUAL = {
    "advance_source": (False, "sources (random flux emergence, source files) are not implemented"),
    "source_from_file": (False, "sources are not implemented"),
    "use_flow_from_files": (False, "flows from files are not implemented; use the analytic flow models"),
    "output_flows": (False, "writing the flows is not implemented"),
    "output_map_flux_balance": (False, "flux balancing of output maps is not implemented"),
    "output_map_idx_cadence": (0, "maps by step count are not implemented; use output_map_time_cadence"),
    "output_map_idx_start": (1, "output map numbering always starts at 1"),
    "flow_rigid_omega": (0.0, "rigid rotation through the poles is not implemented"),
    "flow_num_method": (4, "only SSPRK(4,3) with WENO3 (flow_num_method = 4) is implemented"),
    "upwind": (1.0, "only full upwinding (upwind = 1) is implemented"),
    "weno_eps": (0.0, "only HipFT's default WENO epsilon (weno_eps = 0: the grid spacing) is implemented"),
    "diffusion_coef_filename": ("", "a diffusion coefficient from a file is not implemented"),
    "diffusion_coef_grid": (False, "a grid-dependent diffusion coefficient is not implemented"),
    "assimilate_data_add": (False, "additive data assimilation is not implemented"),
    "assimilate_data_mult_fac": (1.0, "scaling assimilated maps is not implemented"),
}


def _refuse(path: str, name: str, value, why: str):
    return ConfigError(f"{path}: {name} = {_fmt(value)}: {why}")


def _fmt(value) -> str:
    if isinstance(value, bool):
        return ".true." if value else ".false."
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return ", ".join("(unset)" if v is UNSET else _fmt(v) for v in value)
    return repr(value)


def _per_realization(nl, path: str, name: str, n: int, kind=float):
    """A ``name_value`` / ``name_values`` pair (or HipFT's plural ``constant(s)``) as a list of ``n``."""
    scalar_name, list_name = name
    scalar = nl.get(scalar_name, DEFAULTS.get(scalar_name))
    if isinstance(scalar, list):
        raise _refuse(path, scalar_name, scalar, "expected one value (the per-realization list is "
                      f"{list_name})")
    values = nl.get(list_name)
    if values is None:
        return [kind(scalar)] * n, False
    if not isinstance(values, list):
        values = [values]
    out = []
    for i in range(n):
        v = values[i] if i < len(values) else UNSET
        out.append(kind(scalar) if v is UNSET else kind(v))
    return out, True


def _check_type(path, name, value, kinds):
    if isinstance(value, list) or not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise _refuse(path, name, value, f"expected {' or '.join(k.__name__ for k in kinds)}")
    return value


def deck_to_dict(path: str) -> tuple:
    """``(config dict, notes)`` of the HipFT deck ``path``. Not collective.

    ``notes`` lists settings read but without effect here (e.g. ``verbose``).
    Raises :class:`ConfigError` naming the file, the namelist key and its value for
    anything not supported, unknown or of the wrong type.
    """
    try:
        nl = read_namelist(path, GROUP)
    except NamelistError as exc:
        raise ConfigError(str(exc)) from None
    base = os.path.dirname(os.path.abspath(path))
    notes: list = []
    for name in nl.values:
        if name not in HIPFT_NAMES:
            raise ConfigError(f"{path}: {name} (line {nl.lines[name]}) is not a HipFT input parameter")

    def get(name, kinds=None):
        v = nl.get(name, DEFAULTS.get(name))
        if kinds is not None and v is not None:
            _check_type(path, name, v, kinds)
        return v

    num = (int, float)
    for name, (want, why) in _MUST_EQUAL.items():
        v = get(name)
        if isinstance(want, str):
            ok = isinstance(v, str) and v.strip() == want
        elif isinstance(want, bool):
            ok = v is want
        else:
            ok = isinstance(v, num) and not isinstance(v, bool) and float(v) == float(want)
        if not ok:
            raise _refuse(path, name, v, why + " here")
    factor = get("diffusion_coef_factor", num)
    if abs(factor / DIFF_KM2_S_TO_RS2_HR - 1.0) > 1e-12:
        raise _refuse(path, "diffusion_coef_factor", factor, "only HipFT's default (km^2/s in R_sun^2/h, "
                      f"{DIFF_KM2_S_TO_RS2_HR}) is implemented here")

    n = get("n_realizations", (int,))
    if n < 1:
        raise _refuse(path, "n_realizations", n, "expected >= 1")
    cfg: dict = {"n_realizations": n, "grid": {}, "initial": {}, "time": {}, "flow": {}, "diffusion": {},
                 "assimilation": {}, "output": {}, "validation": {}}

    # ------------------------------------------------------------ grid and initial state
    fname = get("initial_map_filename", (str,)).strip()
    res_nt, res_np = get("res_nt", (int,)), get("res_np", (int,))
    vrun = get("validation_run", (int,))
    if vrun not in (0, 1, 2):
        raise _refuse(path, "validation_run", vrun, "HipFT implements validation runs 1 (soccer ball) and 2 "
                      "(Gaussians); 0 = none")
    if fname:
        full = fname if os.path.isabs(fname) else os.path.join(base, fname)
        cfg["initial"].update(kind="file", file=full)
        if res_nt or res_np:
            notes.append(f"res_nt = {res_nt}, res_np = {res_np} ignored: the grid comes from {fname!r} (as HipFT)")
    else:
        if res_nt < 5 or res_np < 5:
            raise ConfigError(f"{path}: res_nt = {res_nt}, res_np = {res_np}: without initial_map_filename the grid "
                              "needs res_nt >= 5 and res_np >= 5")
        cfg["grid"].update(ntheta=res_nt, nphi=res_np - 1)
        cfg["initial"]["kind"] = "zero"
    if vrun == 1:
        cfg["initial"]["kind"] = "soccer"
        cfg["validation"]["kind"] = "soccer"
    elif vrun == 2:
        cfg["initial"]["kind"] = "gaussians"
        cfg["validation"]["kind"] = "gaussians"
    width = get("validation_run_width", num)
    if width <= 0:
        raise _refuse(path, "validation_run_width", width, "expected > 0")
    cfg["validation"]["width"] = float(width)
    cfg["initial"]["flux_balance"] = bool(get("initial_map_flux_balance", (bool,)))
    cfg["initial"]["scale"] = float(get("initial_map_mult_fac", num))

    # ------------------------------------------------------------ time
    t0, t1 = float(get("time_start", num)), float(get("time_end", num))
    if not t1 > t0:
        raise _refuse(path, "time_end", t1, f"must be after time_start = {t0}")
    dt_max = get("dt_max", num)
    dt_max = (t1 - t0) if dt_max is None or dt_max >= 1e100 else float(dt_max)
    if dt_max <= 0:
        raise _refuse(path, "dt_max", dt_max, "expected > 0")
    dt_min = float(get("dt_min", num))
    if dt_min > dt_max:
        raise _refuse(path, "dt_min", dt_min, f"larger than dt_max = {dt_max}")
    cfg["time"].update(start_h=t0, end_h=t1, dt_max_h=dt_max, strang=bool(get("strang_splitting", (bool,))))

    # ------------------------------------------------------------ flows
    flow = cfg["flow"]
    adv = bool(get("advance_flow", (bool,)))
    dr_model, mf_model = get("flow_dr_model", (int,)), get("flow_mf_model", (int,))
    for name, model in (("flow_dr_model", dr_model), ("flow_mf_model", mf_model)):
        if model not in (0, 1):
            raise _refuse(path, name, model, "HipFT's analytic models are 0 (none) and 1 (AFT)")
    omega = float(get("flow_vp_rigid_omega", num))
    vt = float(get("flow_vt_const", num))
    if vrun == 2:
        span = t1 - t0
        if omega != 0.0:
            notes.append(f"validation_run = 2: flow_vp_rigid_omega {omega} -> {2 * math.pi / span / KM_S_TO_RS_HR} "
                         "km/s (one turn over the run, as HipFT)")
            omega = 2.0 * math.pi / span / KM_S_TO_RS_HR
        if vt != 0.0:
            notes.append(f"validation_run = 2: flow_vt_const {vt} -> {0.5 * math.pi / span / KM_S_TO_RS_HR} km/s "
                         "(pi/2 over the run, as HipFT)")
            vt = 0.5 * math.pi / span / KM_S_TO_RS_HR
    flow.update(enabled=adv, differential_rotation=dr_model == 1, meridional_flow=mf_model == 1,
                rigid_omega_km_s=omega, vt_const_km_s=vt, attenuate=bool(get("flow_attenuate", (bool,))))
    for ours, hipft in (("dr_p0", "flow_dr_coef_p0"), ("dr_p2", "flow_dr_coef_p2"), ("dr_p4", "flow_dr_coef_p4"),
                        ("mf_p1", "flow_mf_coef_p1"), ("mf_p3", "flow_mf_coef_p3"), ("mf_p5", "flow_mf_coef_p5")):
        vals, _ = _per_realization(nl, path, (hipft + "_value", hipft + "_values"), n)
        flow[ours] = _scalar_or_list(vals)
    att, _ = _per_realization(nl, path, ("flow_attenuate_value", "flow_attenuate_values"), n)
    if flow["attenuate"] and any(a <= 0 for a in att):
        raise _refuse(path, "flow_attenuate_values", att, "expected > 0 G")
    flow["attenuate_gauss"] = _scalar_or_list(att)

    # ------------------------------------------------------------ diffusion
    diff = cfg["diffusion"]
    eta, _ = _per_realization(nl, path, ("diffusion_coef_constant", "diffusion_coef_constants"), n)
    if any(e < 0 for e in eta):
        raise _refuse(path, "diffusion_coef_constants", eta, "diffusivity must be >= 0 km^2/s")
    method = get("diffusion_num_method", (int,))
    if method not in (2, 3):
        raise _refuse(path, "diffusion_num_method", method, "implemented here: 2 (RKL2) and 3 (RKG2)")
    sub = get("diffusion_subcycles", (int,))
    if sub < 0:
        raise _refuse(path, "diffusion_subcycles", sub, "expected >= 0 (0 = automatic)")
    diff.update(enabled=bool(get("advance_diffusion", (bool,))), eta_km2_s=_scalar_or_list(eta),
                method="rkl2" if method == 2 else "rkg2", subcycles=sub)

    # ------------------------------------------------------------ data assimilation
    a = cfg["assimilation"]
    a["enabled"] = bool(get("assimilate_data", (bool,)))
    if a["enabled"]:
        lst = get("assimilate_data_map_list_filename", (str,)).strip()
        if not lst:
            raise _refuse(path, "assimilate_data_map_list_filename", lst, "needed with assimilate_data = .true.")
        a["map_list"] = lst if os.path.isabs(lst) else os.path.join(base, lst)
        root = get("assimilate_data_map_root_dir", (str,)).strip() or "."
        a["root_dir"] = root if os.path.isabs(root) else os.path.join(base, root)
    a["custom_from_mu"] = bool(get("assimilate_data_custom_from_mu", (bool,)))
    a["balance_flux"] = bool(get("assimilate_data_balance_flux", (bool,)))
    for ours, hipft in (("mu_power", "assimilate_data_mu_power"), ("mu_limit", "assimilate_data_mu_limit"),
                        ("pole_exclusion_deg", "assimilate_data_lat_limit")):
        vals, _ = _per_realization(nl, path, (hipft, hipft + "s"), n)
        a[ours] = _scalar_or_list(vals)

    # ------------------------------------------------------------ output
    o = cfg["output"]
    prefix = get("output_map_root_filename", (str,)).strip()
    if not prefix or os.sep in prefix:
        raise _refuse(path, "output_map_root_filename", prefix, "expected a file name prefix")
    o.update(prefix=prefix, map_cadence_h=float(get("output_map_time_cadence", num)),
             history_cadence_h=float(get("output_history_time_cadence", num)),
             single_precision=bool(get("output_single_precision", (bool,))), plots=False,
             history_prefix=HIPFT_HISTORY_PREFIX)
    lat = float(get("pole_flux_lat_limit", num))
    if not 0.0 < lat < 90.0:
        raise _refuse(path, "pole_flux_lat_limit", lat, "expected 0 < degrees from the pole < 90")
    o["polar_latitude_deg"] = 90.0 - lat
    mapdir = get("output_map_directory", (str,)).strip()
    if mapdir != DEFAULTS["output_map_directory"]:
        notes.append(f"output_map_directory = {mapdir!r}: maps are written into the output directory (--out)")
    for name in ("verbose", "output_map_2d", "output_flows_directory", "flow_list_filename", "flow_root_dir",
                 "source_filename", "source_rfe_model", "source_rfe_seed", "source_rfe_lifetime"):
        if name in nl:
            notes.append(f"{name} = {_fmt(nl[name])}: no effect here")
    return cfg, notes


def _scalar_or_list(vals: list):
    return vals[0] if all(v == vals[0] for v in vals) else list(vals)


def load_deck(path: str, overrides=(), data: dict | None = None) -> tuple:
    """``(FluxTransportConfig, notes)`` of a HipFT deck with ``--set`` overrides applied together, then checked.

    Not collective. Raises :class:`ConfigError`.
    """
    table, notes = deck_to_dict(path)
    return load_config(None, data=_merge(table, data or {}), overrides=overrides), notes


def _merge(a: dict, b: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in a.items()}
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = v
    return out


def to_toml(table: dict) -> str:
    """A nested configuration dict as TOML text (top-level scalars first, then one table per section)."""
    lines = []
    for k, v in table.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in table.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            for kk, vv in v.items():
                lines.append(f"{kk} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def main(argv=None) -> int:
    """``python -m solvers.flux_transport.hipft_deck hipft.in [out.toml]``: the deck as our TOML."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or len(argv) > 2:
        print("usage: python -m solvers.flux_transport.hipft_deck hipft.in [out.toml]", file=sys.stderr)
        return 2
    try:
        config, notes = load_deck(argv[0])
    except ConfigError as exc:
        print(f"hipft_deck: refused: {exc}", file=sys.stderr)
        return 2
    text = "# converted from the HipFT deck " + os.path.abspath(argv[0]) + "\n" + "".join(
        f"# note: {n}\n" for n in notes) + to_toml(config.to_dict())
    if len(argv) == 2:
        with open(argv[1], "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
