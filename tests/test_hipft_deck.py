"""HipFT decks: the namelist reader, the hipft.in -> configuration converter, refusals, and HipFT's reference rows.

The decks in tests/data/hipft are HipFT's own test-suite inputs (Apache-2.0, see the NOTICE
there), with the header, first and last rows of its reference histories. Input maps are read
from ../shared/data/hipft when present (skip otherwise).
"""

import math
import os
import shutil

import numpy as np
import pytest

from benchmarks.hipft_compare import CHECKED, hipft_rule, read_history_file
from solvers.flux_transport.config import ConfigError, load_config
from solvers.flux_transport.grid import KM_S_TO_RS_H
from solvers.flux_transport.hipft_deck import deck_to_dict, load_deck, to_toml
from solvers.flux_transport.hipft_namelist import (
    UNSET,
    NamelistError,
    parse_namelist,
    read_namelist,
)
from solvers.flux_transport.initial import gaussians

DATA = os.path.join(os.path.dirname(__file__), "data", "hipft")
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hipft")
DECKS = ("advect_gaussians_phi", "advect_gaussians_theta", "advect_gaussians_phi_theta", "diffuse_soccer",
         "diffuse_advect_soccer", "diffuse_dipole", "diffuse_advect_atten_map_1cr")


def _deck(name):
    return os.path.join(DATA, name, "hipft.in")


def _write(tmp_path, body, name="hipft.in"):
    p = tmp_path / name
    p.write_text("&hipft_input_parameters\n" + body + "\n/\n")
    return str(p)


# ---------------------------------------------------------------------------- namelist reader


def test_namelist_values_of_every_kind():
    text = '''junk before the group is ignored
    &g  a = 3*1.0, 2.5d-3 ! comment with 'quote'
      b(2:3) = 'it''s', "say ""hi""" , c=.true. d = T, f, .false.
      e = , 4  e(5)=7 s = 2*'q'  big = 1.5E+10, -2.D0, .5, 7.
      flag = .t lone = F
    /
    text after the group'''
    g = parse_namelist(text)["g"]
    assert g["a"] == [1.0, 1.0, 1.0, 0.0025]
    assert g["b"][0] is UNSET and g["b"][1:] == ["it's", 'say "hi"']
    assert g["c"] is True and g["d"] == [True, False, False]
    assert g["e"][0] is UNSET and g["e"][1] == 4 and g["e"][4] == 7
    assert g["s"] == ["q", "q"]
    assert g["big"] == [1.5e10, -2.0, 0.5, 7.0]
    assert g["flag"] is True and g["lone"] is False
    assert isinstance(g["e"][1], int) and isinstance(g["big"][0], float)
    assert "A" in g and g.lines["s"] == 4


def test_namelist_case_and_end_forms():
    g = parse_namelist("$GROUP X = 1 Y=2 $END")["group"]
    assert g["x"] == 1 and g["y"] == 2
    g = parse_namelist("&grp\n z = 'a/b' ! slash inside a string\n&end")["grp"]
    assert g["z"] == "a/b"


@pytest.mark.parametrize("text, match", [
    ("&g a = 1", "not closed"),
    ("&g a = (1.0, 2.0) /", "complex values"),
    ("&g a = 1 2x /", r"cannot read the value '2x'"),
    ("&g 5 = 1 /", "expected 'name = value'"),
    ("&g a(1:x) = 1 /", "cannot read the index"),
    ("&g a(0) = 1 /", "start at 1"),
    ("&g a(1:2) = 1, 2, 3 /", "3 values for a"),
])
def test_namelist_errors_name_the_line(text, match):
    with pytest.raises(NamelistError, match=match):
        parse_namelist(text, source="deck.in")


def test_read_namelist_missing_file_and_group(tmp_path):
    with pytest.raises(NamelistError, match="cannot read"):
        read_namelist(str(tmp_path / "nope.in"))
    p = tmp_path / "x.in"
    p.write_text("&other a = 1 /\n")
    with pytest.raises(NamelistError, match=r"no namelist group &hipft_input_parameters \(found: &other\)"):
        read_namelist(str(p), "hipft_input_parameters")


def test_every_hipft_deck_parses_as_fortran_would():
    nl = read_namelist(_deck("diffuse_advect_atten_map_1cr"), "hipft_input_parameters")
    assert nl["flow_dr_coef_p0_values"] == [41.4, 46.0, 50.6, 46.0, 46.0]
    assert nl["time_end"] == 672 and nl["flow_attenuate"] is True
    assert nl["initial_map_filename"] == "br_hmi_synoptic_mr_polfil_720s_cr2252_pslt_flxbal_remeshed_small.h5"


# ---------------------------------------------------------------------------- deck -> configuration


@pytest.mark.parametrize("name", DECKS)
def test_suite_decks_convert(name):
    cfg, notes = load_deck(_deck(name))
    nl = read_namelist(_deck(name), "hipft_input_parameters")
    assert cfg.n_realizations == nl.get("n_realizations", 1)
    assert cfg.time.end_h == float(nl["time_end"])
    assert cfg.time.dt_max_h == float(nl.get("dt_max", nl["time_end"]))
    assert cfg.output.history_prefix == "hipft_history_sol" and cfg.output.prefix == "hipft_brmap"
    assert cfg.output.polar_latitude_deg == 60.0 and cfg.output.plots is False
    assert cfg.diffusion.enabled == nl.get("advance_diffusion", False)
    assert cfg.flow.enabled == nl.get("advance_flow", False)
    assert any("verbose" in n for n in notes)
    if "initial_map_filename" in nl:
        assert cfg.initial.kind == "file"
        assert cfg.initial.file == os.path.join(DATA, name, nl["initial_map_filename"])
    else:
        # HipFT's res_np counts the phi = 2 pi copy
        assert (cfg.grid.ntheta, cfg.grid.nphi) == (nl["res_nt"], nl["res_np"] - 1)


def test_deck_details_1cr():
    cfg, _ = load_deck(_deck("diffuse_advect_atten_map_1cr"))
    f = cfg.flow
    assert f.differential_rotation and f.meridional_flow and f.attenuate
    assert f.dr_p0 == [41.4, 46.0, 50.6, 46.0, 46.0] and f.mf_p5 == [-28.0, -28.0, -28.0, -30.8, -25.2]
    assert f.attenuate_gauss == 300.0 and f.rigid_omega_km_s == 0.0
    assert cfg.diffusion.eta_km2_s == 25.0 and cfg.diffusion.method == "rkg2" and cfg.diffusion.subcycles == 0
    assert cfg.output.history_cadence_h == 0.5 and cfg.output.map_cadence_h == 100.0
    assert cfg.output.single_precision is False


def test_validation_decks():
    cfg, _ = load_deck(_deck("diffuse_advect_soccer"))
    assert cfg.initial.kind == cfg.validation.kind == "soccer"
    assert cfg.diffusion.eta_km2_s == [100.0, 200.0, 400.0, 800.0]
    assert cfg.flow.rigid_omega_km_s == 1.8076624395655556
    assert not cfg.flow.differential_rotation and not cfg.flow.meridional_flow
    cfg, notes = load_deck(_deck("advect_gaussians_phi_theta"))
    assert cfg.initial.kind == cfg.validation.kind == "gaussians" and cfg.validation.width == 0.03
    # HipFT overrides a non-zero omega to one turn and a non-zero vt to pi/2 over the run
    assert math.isclose(cfg.flow.rigid_omega_km_s * KM_S_TO_RS_H * 672.0, 2 * math.pi, rel_tol=1e-14)
    assert math.isclose(cfg.flow.vt_const_km_s * KM_S_TO_RS_H * 672.0, 0.5 * math.pi, rel_tol=1e-14)
    assert sum("validation_run = 2" in n for n in notes) == 2
    cfg, _ = load_deck(_deck("advect_gaussians_theta"))
    assert cfg.flow.rigid_omega_km_s == 0.0 and cfg.flow.vt_const_km_s > 0


def test_per_realization_values_fill_from_the_scalar(tmp_path):
    p = _write(tmp_path, """n_realizations = 3 res_nt = 21 res_np = 41 advance_flow = .true. flow_dr_model = 1
      flow_dr_coef_p0_value = 40.0 flow_dr_coef_p0_values(2) = 50.0
      advance_diffusion = .true. diffusion_coef_constant = 7.0 diffusion_coef_constants = 1.0, , 3.0, 99.0
      flow_attenuate = .true. flow_attenuate_values = 3*250.0 diffusion_num_method = 2 time_end = 2""")
    cfg, _ = load_deck(p)
    assert cfg.flow.dr_p0 == [40.0, 50.0, 40.0]
    assert cfg.diffusion.eta_km2_s == [1.0, 7.0, 3.0]  # the 4th value is beyond n_realizations
    assert cfg.flow.attenuate_gauss == 250.0 and cfg.diffusion.method == "rkl2"
    assert (cfg.grid.ntheta, cfg.grid.nphi) == (21, 40) and cfg.initial.kind == "zero"
    assert cfg.time.dt_max_h == 2.0 and cfg.time.end_h == 2.0  # dt_max absent: the whole run (HipFT: huge)


@pytest.mark.parametrize("body, match", [
    ("advance_source = .true.", r"advance_source = \.true\.: sources"),
    ("use_flow_from_files = .true.", r"use_flow_from_files = \.true\.: flows from files"),
    ("flow_num_method = 3", r"flow_num_method = 3: only SSPRK\(4,3\)"),
    ("upwind = 0.0", r"upwind = 0\.0"),
    ("weno_eps = 0.01", r"weno_eps = 0\.01"),
    ("validation_run = 3", r"validation_run = 3"),
    ("flow_rigid_omega = 1.0", r"flow_rigid_omega = 1\.0"),
    ("diffusion_coef_factor = 3.0", r"diffusion_coef_factor = 3\.0"),
    ("diffusion_num_method = 1", r"diffusion_num_method = 1"),
    ("output_map_idx_cadence = 5", r"output_map_idx_cadence = 5"),
    ("flow_dr_model = 2", r"flow_dr_model = 2: HipFT's analytic models"),
    ("no_such_key = 1", r"no_such_key \(line 3\) is not a HipFT input parameter"),
    ("time_end = .true.", r"time_end = \.true\.: expected int or float"),
    ("time_start = 5.0 time_end = 5.0", r"time_end = 5\.0: must be after time_start"),
    ("diffusion_coef_constants = 1.0, -2.0", "diffusivity must be >= 0"),
    ("assimilate_data = .true.", "assimilate_data_map_list_filename = '': needed"),
    ("assimilate_data_add = .true.", "additive data assimilation"),
    ("pole_flux_lat_limit = 95.0", "pole_flux_lat_limit = 95.0"),
])
def test_unsupported_settings_are_refused_naming_key_and_value(tmp_path, body, match):
    p = _write(tmp_path, "res_nt = 21 res_np = 41 n_realizations = 2 time_end = 2.0\n  " + body)
    with pytest.raises(ConfigError, match=match) as info:
        load_deck(p)
    assert p in str(info.value)


def test_grid_needed_without_a_map(tmp_path):
    with pytest.raises(ConfigError, match="res_nt = 0, res_np = 0"):
        load_deck(_write(tmp_path, "time_end = 2.0"))


def test_overrides_on_a_deck_apply_together():
    cfg, _ = load_deck(_deck("diffuse_soccer"), overrides=["diffusion.eta_km2_s=[1.,2.]", "n_realizations=2"])
    assert cfg.n_realizations == 2 and cfg.diffusion.eta_km2_s == [1.0, 2.0]
    with pytest.raises(ConfigError, match="one value per realization"):
        load_deck(_deck("diffuse_soccer"), overrides=["n_realizations=2"])


def test_toml_of_a_deck_loads_to_the_same_configuration(tmp_path):
    for name in DECKS:
        cfg, _ = load_deck(_deck(name))
        path = tmp_path / f"{name}.toml"
        path.write_text(to_toml(cfg.to_dict()))
        assert load_config(str(path)).to_dict() == cfg.to_dict(), name


def test_deck_dict_is_plain_data():
    table, _ = deck_to_dict(_deck("diffuse_advect_atten_map_1cr"))
    assert set(table) >= {"n_realizations", "grid", "initial", "time", "flow", "diffusion", "output"}
    assert to_toml(table).count("[") >= 7


# ---------------------------------------------------------------------------- HipFT's reference rows


def test_gaussians_match_hipft_formula():
    theta = np.linspace(0, math.pi, 7)
    phi = np.linspace(0, 2 * math.pi, 9)[:-1]
    g = gaussians(theta, phi, 0.05, dtheta=0.1, dphi=7.0)
    p1, p2 = (0.5 * math.pi + 7.0) % (2 * math.pi), (1.5 * math.pi + 7.0) % (2 * math.pi)
    for j, t in enumerate(theta):
        for i, p in enumerate(phi):
            st_i = 0.0 if j in (0, 6) else 1.0 / math.sin(t)
            e = -st_i * math.exp(-(t - math.pi / 4 - 0.1) ** 2 / 0.05 - (p - p1) ** 2 / 0.05) + \
                st_i * math.exp(-(t - math.pi / 4 - 0.1) ** 2 / 0.05 - (p - p2) ** 2 / 0.05)
            assert g[j, i] == pytest.approx(e, rel=1e-13, abs=1e-300)


def test_hipft_rule():
    assert hipft_rule(1.140473999023438e3, 1.1404739e3)
    assert not hipft_rule(1.140473999023438e3, 1.1404729e3)
    assert hipft_rule(-1.216641967773438e3, -1.2166419e3)
    assert not hipft_rule(-1.216641967773438e3, -1.2165419e3)
    assert not hipft_rule(1.5e3, 1.5e4)  # exponents must match too
    assert hipft_rule(1e-70, 5e-70)  # HipFT passes |value| < 1e-64


@pytest.mark.parametrize("name", DECKS)
def test_reference_rows_are_hipfts_layout(name):
    files = sorted(f for f in os.listdir(os.path.join(DATA, name)) if f.endswith("_first_last.out"))
    cfg, _ = load_deck(_deck(name))
    assert len(files) == cfg.n_realizations
    h = read_history_file(os.path.join(DATA, name, files[0]))
    assert set(CHECKED) <= set(h) and h["TIME"][-1] == cfg.time.end_h and h["TIME"][0] == cfg.time.start_h


def _map_deck(tmp_path, name):
    cfg, _ = load_deck(_deck(name))
    src = os.path.join(SHARED, os.path.basename(cfg.initial.file))
    if not os.path.exists(src):
        pytest.skip(f"HipFT map {os.path.basename(src)} not in ../shared/data/hipft")
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(_deck(name), folder / "hipft.in")
    os.symlink(src, folder / os.path.basename(src))
    return str(folder / "hipft.in")


@pytest.mark.parametrize("name", ["diffuse_advect_atten_map_1cr", "diffuse_dipole"])
def test_map_decks_read_hipfts_initial_field(tmp_path, name):
    """Row 0 of HipFT's reference: the extrema of the map as read (no quadrature involved) agree to 1e-14."""
    from mpi4py import MPI

    from solvers.flux_transport.model import FluxTransport

    cfg, _ = load_deck(_map_deck(tmp_path, name))
    model = FluxTransport(MPI.COMM_SELF, cfg, output=False)
    try:
        values = model.diagnose()
    finally:
        model.free()
    for k in range(cfg.n_realizations):
        ref = read_history_file(os.path.join(DATA, name, f"hipft_history_sol_r{k + 1:06d}_first_last.out"))
        for col in ("BR_MIN", "BR_MAX", "BR_ABS_MIN"):
            assert values[col][k] == pytest.approx(ref[col][0], rel=1e-14, abs=1e-300), col


def test_converter_command_writes_loadable_toml(tmp_path, capsys):
    from solvers.flux_transport.hipft_deck import main

    out = tmp_path / "run.toml"
    assert main([_deck("diffuse_advect_soccer"), str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# converted from the HipFT deck") and "# note: verbose = 2" in text
    assert load_config(str(out)).to_dict() == load_deck(_deck("diffuse_advect_soccer"))[0].to_dict()
    bad = _write(tmp_path, "res_nt = 21 res_np = 41 advance_source = .true.", name="bad.in")
    assert main([bad]) == 2
    assert "advance_source = .true." in capsys.readouterr().err
