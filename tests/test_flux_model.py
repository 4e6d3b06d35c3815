"""flux_transport runs on one rank: validation against exact solutions, conservation, I/O, restart, CLI, refusals."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from mpi4py import MPI

from solvers.flux_transport import ConfigError, FluxTransport, SphereGrid, load_config
from solvers.flux_transport.config import DEFAULT_CONFIG_PATH, FluxTransportConfig
from solvers.flux_transport.history import COLUMNS, read_history
from solvers.flux_transport.initial import dipole_map, soccer_ball
from solvers.flux_transport.io import MapFileError, read_map, write_map

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
HIPFT_DATA = os.path.join(SHARED, "data", "hipft")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import matplotlib  # noqa: F401

    PNG = True
except ImportError:  # plots are optional (the "plot" extra)
    PNG = False

SOCCER_BUDGET = {100.0: 2.2e-5, 200.0: 4.4e-5, 400.0: 8.8e-5, 800.0: 1.8e-4}


def _cfg(**sections):
    data = {"grid": {"ntheta": 37, "nphi": 48}, "time": {"end_h": 6.0, "dt_max_h": 1.0},
            "output": {"plots": False}}
    for k, v in sections.items():
        if isinstance(v, dict):
            data.setdefault(k, {}).update(v)
        else:
            data[k] = v
    return load_config(data=data)


def _run(cfg, **kw):
    m = FluxTransport(MPI.COMM_SELF, cfg, output=kw.pop("output", False), **kw)
    try:
        while not m.done:
            m.step()
        return m.gather(0), m.diagnose(), m
    finally:
        m.free()


# ---------------------------------------------------------------------------- validation (short, serial)


def test_soccer_ball_diffusion_error_grows_within_budget():
    """24 h of the 672 h soccer-ball test at 360 x 180: the error grows linearly in time, so the
    budget scaled by 24/672 must hold (the full run is in test_flux_mpi.py)."""
    cfg = load_config(data={
        "n_realizations": 4, "grid": {"ntheta": 180, "nphi": 359}, "initial": {"kind": "soccer"},
        "validation": {"kind": "soccer"}, "time": {"end_h": 24.0, "dt_max_h": 1.0}, "flow": {"enabled": False},
        "diffusion": {"eta_km2_s": list(SOCCER_BUDGET)}})
    _, diag, m = _run(cfg)
    err = diag["VALIDATION_ERR_HHabs"]
    for e, budget in zip(err, SOCCER_BUDGET.values()):
        assert e <= budget * 24 / 672
    assert m.last_stages == 27 and m.steps == 24


def _soccer_error(nt, nphi, dt, end_h=48.0, eta=2000.0):
    cfg = load_config(data={
        "grid": {"ntheta": nt, "nphi": nphi}, "initial": {"kind": "soccer"}, "validation": {"kind": "soccer"},
        "time": {"end_h": end_h, "dt_max_h": dt}, "flow": {"enabled": False}, "diffusion": {"eta_km2_s": eta}})
    f, diag, m = _run(cfg)
    return f[0], float(diag["VALIDATION_ERR_HHabs"][0])


def test_diffusion_second_order_in_space_and_time():
    # space and time refined together (dt ~ h)
    errs = [_soccer_error(nt, nphi, dt)[1] for nt, nphi, dt in ((23, 44, 8.0), (45, 88, 4.0), (89, 176, 2.0))]
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(o > 1.85 for o in orders), (errs, orders)
    # time alone: one grid, steps halved, against a run with tiny steps
    ref, _ = _soccer_error(45, 88, 0.125, end_h=48.0, eta=20000.0)
    diffs = [np.abs(_soccer_error(45, 88, dt, end_h=48.0, eta=20000.0)[0] - ref).max() for dt in (16.0, 8.0, 4.0)]
    orders = [math.log2(a / b) for a, b in zip(diffs, diffs[1:])]
    assert all(o > 1.8 for o in orders), (diffs, orders)


def test_flux_conserved_with_every_process_on():
    cfg = _cfg(n_realizations=2, initial={"kind": "bipolar"}, time={"end_h": 48.0, "dt_max_h": 2.0},
               flow={"attenuate": True, "attenuate_gauss": [300.0, 800.0], "dr_p0": [46.0, 60.0]},
               diffusion={"eta_km2_s": [500.0, 1500.0]})
    m = FluxTransport(MPI.COMM_SELF, cfg, output=False)
    try:
        first = m.diagnose()
        while not m.done:
            m.step()
        last = m.diagnose()
    finally:
        m.free()
    unsigned = last["FLUX_POSITIVE"] - last["FLUX_NEGATIVE"]
    drift = (last["FLUX_POSITIVE"] + last["FLUX_NEGATIVE"]) - (first["FLUX_POSITIVE"] + first["FLUX_NEGATIVE"])
    assert np.all(np.abs(drift) <= 1e-9 * unsigned), drift / unsigned
    assert np.all(last["FLUX_POSITIVE"] < first["FLUX_POSITIVE"])  # diffusion cancels flux


def test_strang_and_rkl2_agree_with_the_default_scheme():
    common = dict(initial={"kind": "bipolar"}, time={"end_h": 12.0})
    f_ref, d_ref, _ = _run(_cfg(**common))
    f_strang, d_s, _ = _run(_cfg(time={"end_h": 12.0, "strang": True}, initial={"kind": "bipolar"}))
    f_rkl2, d_l, _ = _run(_cfg(diffusion={"method": "rkl2"}, **common))
    scale = np.abs(f_ref).max()
    for f in (f_strang, f_rkl2):
        assert 0 < np.abs(f - f_ref).max() < 2e-3 * scale
    net_ref = d_ref["FLUX_POSITIVE"] + d_ref["FLUX_NEGATIVE"]  # the map's net flux in HipFT's weights, conserved
    for d in (d_s, d_l):
        net = d["FLUX_POSITIVE"] + d["FLUX_NEGATIVE"]
        assert abs(net[0] - net_ref[0]) < 1e-12 * (d["FLUX_POSITIVE"][0] - d["FLUX_NEGATIVE"][0])


def test_axial_dipole_of_cos_theta_map():
    # (37 rows put a row exactly on both 30-degree limits: HipFT's tests t <= 30 deg and t >= 150 deg then
    # count 7 rows in the north and 6 in the south, as its own weights do; 41 and 181 rows do not)
    for nt, nphi, tol in ((41, 48, 2e-3), (181, 360, 1e-4)):
        grid = SphereGrid(nt, nphi)
        cfg = _cfg(grid={"ntheta": nt, "nphi": nphi}, flow={"enabled": False}, diffusion={"enabled": False})
        m = FluxTransport(MPI.COMM_SELF, cfg, initial=dipole_map(grid, 7.5), output=False)
        try:
            d = m.diagnose()
        finally:
            m.free()
        assert d["AX_DIPOLE"][0] == pytest.approx(7.5, rel=tol)
        assert d["EQ_DIPOLE"][0] < 1e-12
        assert d["NPOLE_AREA"][0] == pytest.approx(d["SPOLE_AREA"][0], rel=1e-12)
        # rows within 30 deg of the pole: the cap to their outer faces, in HipFT's mid-point weights
        rows = grid.theta <= math.radians(30) + 1e-12
        edge = grid.theta[rows][-1] + 0.5 * grid.dtheta
        cap = 2 * math.pi * (1 - math.cos(edge)) * 4.84416e21
        assert d["NPOLE_AREA"][0] == pytest.approx(cap, rel=grid.dtheta ** 2 / 8)


def test_initial_areas_match_hipft_reference():
    """HipFT's soccer-ball decks (180 x 360 file points): its reference NPOLE/SPOLE_AREA at t = 0, to round-off."""
    grid = SphereGrid(180, 359)
    cfg = _cfg(grid={"ntheta": 180, "nphi": 359}, flow={"enabled": False}, diffusion={"enabled": False})
    m = FluxTransport(MPI.COMM_SELF, cfg, initial=dipole_map(grid, 1.0), output=False)
    try:
        d = m.diagnose()
    finally:
        m.free()
    assert d["NPOLE_AREA"][0] == pytest.approx(3.989223162302474e21, rel=1e-14)
    assert d["SPOLE_AREA"][0] == pytest.approx(3.989223162302476e21, rel=1e-14)


def test_dipole_decays_at_the_harmonic_rate():
    """Br = cos(theta) is Y_1^0: under diffusion alone it decays as exp(-2 eta t)."""
    grid = SphereGrid(91, 180)
    eta = 3000.0
    cfg = _cfg(grid={"ntheta": 91, "nphi": 180}, flow={"enabled": False}, diffusion={"eta_km2_s": eta},
               time={"end_h": 96.0, "dt_max_h": 4.0})
    m = FluxTransport(MPI.COMM_SELF, cfg, initial=dipole_map(grid, 1.0), output=False)
    try:
        while not m.done:
            m.step()
        ax = m.diagnose()["AX_DIPOLE"][0]
    finally:
        m.free()
    assert ax == pytest.approx(math.exp(-2 * eta * 7.43162901307967e-9 * 96.0), rel=2e-4)


# ---------------------------------------------------------------------------- refusals


def test_config_refusals():
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(data={"time": {"end": 3}})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(data={"tiem": {}})
    with pytest.raises(ConfigError, match="diffusivity must be >= 0"):
        load_config(data={"diffusion": {"eta_km2_s": -5.0}})
    with pytest.raises(ConfigError, match="one value per realization"):
        load_config(data={"n_realizations": 3, "diffusion": {"eta_km2_s": [1.0, 2.0]}})
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(data={"time": {"end_h": "soon"}})
    with pytest.raises(ConfigError, match="expected one of"):
        load_config(data={"diffusion": {"method": "euler"}})
    with pytest.raises(ConfigError, match="after time.start_h"):
        load_config(data={"time": {"start_h": 5.0, "end_h": 5.0}})
    with pytest.raises(ConfigError, match="needs initial.kind"):
        load_config(data={"validation": {"kind": "soccer"}})


def test_default_toml_loads_and_overrides():
    cfg = load_config(DEFAULT_CONFIG_PATH)
    assert cfg.n_realizations == 2 and cfg.initial.kind == "bipolar"
    assert cfg.per_realization("diffusion", "eta_km2_s").tolist() == [300.0, 600.0]
    # every key of every section is spelled out in the default file
    import tomllib

    with open(DEFAULT_CONFIG_PATH, "rb") as fh:
        table = tomllib.load(fh)
    for section, values in FluxTransportConfig().to_dict().items():
        if isinstance(values, dict):
            assert set(table[section]) == set(values), section
    cfg = load_config(DEFAULT_CONFIG_PATH, overrides=["time.end_h=12", "flow.attenuate=true",
                                                      'output.directory="x y"'])
    assert cfg.time.end_h == 12.0 and cfg.flow.attenuate and cfg.output.directory == "x y"
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(DEFAULT_CONFIG_PATH, overrides=["time.end=12"])


def test_fixed_step_above_the_advection_limit_is_refused():
    cfg = _cfg(flow={"rigid_omega_km_s": 5.0}, time={"dt_h": 0.1})
    ok = FluxTransport(MPI.COMM_SELF, cfg, output=False)
    limit = ok.dt_adv_limit0
    ok.free()
    cfg = _cfg(flow={"rigid_omega_km_s": 5.0}, time={"dt_h": 1.5 * limit, "dt_max_h": 10.0})
    with pytest.raises(ConfigError, match="exceeds the advection limit"):
        FluxTransport(MPI.COMM_SELF, cfg, output=False)


def test_nan_map_and_wrong_grid_refused(tmp_path):
    grid = SphereGrid(19, 24)
    bad = soccer_ball(grid)
    bad[5, 7] = np.nan
    write_map(str(tmp_path / "nan.h5"), bad, grid, single_precision=False)
    with pytest.raises(MapFileError, match="NaN"):
        read_map(str(tmp_path / "nan.h5"))
    cfg = _cfg(initial={"kind": "file", "file": str(tmp_path / "nan.h5")})
    with pytest.raises(MapFileError, match="NaN"):
        FluxTransport(MPI.COMM_SELF, cfg, output=False)
    write_map(str(tmp_path / "ok.h5"), soccer_ball(grid), grid)
    with pytest.raises(MapFileError, match="grid"):
        read_map(str(tmp_path / "ok.h5"), SphereGrid(21, 24))
    with pytest.raises(ConfigError, match="initial map"):
        FluxTransport(MPI.COMM_SELF, _cfg(), initial=np.full((19, 24), np.inf), output=False)


# ---------------------------------------------------------------------------- I/O


def test_map_round_trip_in_hipft_layout(tmp_path):
    import h5py

    grid = SphereGrid(19, 24)
    data = np.stack([soccer_ball(grid), 2 * soccer_ball(grid, 0.3)])
    p = str(tmp_path / "m.h5")
    write_map(p, data, grid, single_precision=False)
    back, g2, r = read_map(p)
    assert g2 == grid and r.tolist() == [1.0, 2.0]
    assert np.array_equal(back, data)
    with h5py.File(p, "r") as h:
        assert h["Data"].shape == (2, 19, 25)
        assert h["dim1"].shape == (25,) and h["dim2"].shape == (19,) and h["dim3"].shape == (2,)
        assert [dim.label for dim in h["Data"].dims] == ["dim1", "dim2", "dim3"]
        assert h["Data"].dims[0][0].name == "/dim1"
    write_map(p, data[:1], grid)
    with h5py.File(p, "r") as h:
        assert h["Data"].shape == (19, 25) and h["Data"].dtype == np.float32


@pytest.mark.skipif(not os.path.isdir(HIPFT_DATA), reason="HipFT sample maps (../shared/data/hipft) not present")
def test_hipft_maps_load_and_our_files_have_their_layout(tmp_path):
    import h5py

    for name, shape in (("br_input.h5", (512, 1023)), ("hmi_synoptic_mr_polfil_720s_cr2255_pslt_pt_1024x512.h5",
                                                        (512, 1023)),
                        ("br_hmi_synoptic_mr_polfil_720s_cr2252_pslt_flxbal_remeshed_small.h5", (180, 359))):
        path = os.path.join(HIPFT_DATA, name)
        data, grid, _ = read_map(path)
        assert data.shape == shape and grid.shape == shape
        assert np.all(data[0] == data[0, 0]) and np.all(data[-1] == data[-1, 0])
        ours = str(tmp_path / name)
        write_map(ours, data, grid)
        with h5py.File(path, "r") as theirs, h5py.File(ours, "r") as mine:
            assert sorted(theirs.keys()) == sorted(mine.keys())
            for key in theirs:
                assert theirs[key].shape == mine[key].shape and theirs[key].dtype == mine[key].dtype
            assert list(theirs["Data"].attrs["DIMENSION_LABELS"]) == list(mine["Data"].attrs["DIMENSION_LABELS"])
            assert [d[0].name for d in theirs["Data"].dims] == [d[0].name for d in mine["Data"].dims]
            assert np.allclose(theirs["dim1"][...], mine["dim1"][...]) and np.allclose(theirs["dim2"][...],
                                                                                       mine["dim2"][...])
            raw = theirs["Data"][...]
            if np.array_equal(raw[:, 0], raw[:, -1]):  # a map already periodic and pole-averaged reads back
                assert np.allclose(mine["Data"][...][1:-1], raw[1:-1])


@pytest.mark.skipif(not os.path.isdir(HIPFT_DATA), reason="HipFT sample maps (../shared/data/hipft) not present")
def test_hmi_map_runs_a_day(tmp_path):
    path = os.path.join(HIPFT_DATA, "br_hmi_synoptic_mr_polfil_720s_cr2252_pslt_flxbal_remeshed_small.h5")
    cfg = _cfg(initial={"kind": "file", "file": path}, time={"end_h": 24.0},
               output={"directory": str(tmp_path), "plots": True})
    m = FluxTransport(MPI.COMM_SELF, cfg)
    try:
        summary = m.run()
    finally:
        m.free()
    assert summary["steps"] == 24
    h = read_history(str(tmp_path / "ft_history_r000001.out"))
    assert np.all(np.isfinite(h["FLUX_POSITIVE"])) and h["FLUX_POSITIVE"][0] > 1e22
    pngs = ("ft_brmap_final_mollweide.png", "ft_brmap_history.png", "ft_brmap_butterfly.png") if PNG else ()
    for f in ("ft_brmap_initial.h5", "ft_brmap_final.h5", "checkpoint.h5") + pngs:
        assert os.path.exists(tmp_path / f), f


def test_run_writes_maps_history_and_plots(tmp_path):
    cfg = _cfg(n_realizations=2, diffusion={"eta_km2_s": [300.0, 900.0]}, time={"end_h": 12.0},
               output={"directory": str(tmp_path), "map_cadence_h": 5.0, "plots": True})
    m = FluxTransport(MPI.COMM_SELF, cfg)
    try:
        m.run()
    finally:
        m.free()
    names = sorted(os.listdir(tmp_path))
    pngs = ("ft_brmap_final_mollweide.png", "ft_brmap_final_latlon.png", "ft_brmap_butterfly.png",
            "ft_brmap_history.png") if PNG else ()
    for f in ("ft_brmap_initial.h5", "ft_brmap_idx000001.h5", "ft_brmap_idx000002.h5", "ft_brmap_final.h5",
              "ft_history_r000001.out", "ft_history_r000002.out") + pngs:
        assert f in names, (f, names)
    h = read_history(str(tmp_path / "ft_history_r000002.out"))
    assert list(h) == list(COLUMNS)
    assert h["TIME"][0] == 0.0 and h["TIME"][-1] == 12.0
    assert 5.0 in h["TIME"] and 10.0 in h["TIME"]  # steps cut to land on output times
    data, _, r = read_map(str(tmp_path / "ft_brmap_final.h5"))
    assert data.shape == (2, 37, 48) and r.tolist() == [1.0, 2.0]


def test_checkpoint_restart_same_bits(tmp_path):
    import shutil

    def cfg(sub):
        return _cfg(n_realizations=2, initial={"kind": "bipolar"}, time={"end_h": 10.0}, flow={"attenuate": True},
                    diffusion={"eta_km2_s": [400.0, 800.0]},
                    output={"checkpoint_cadence_h": 4.0, "directory": str(tmp_path / sub)})

    def keep(mm):
        if mm.time == 8.0:
            shutil.copy(tmp_path / "a" / "checkpoint.h5", tmp_path / "ckpt8.h5")

    m = FluxTransport(MPI.COMM_SELF, cfg("a"))
    try:
        m.run(callback=keep)
        full = m.gather(0)
    finally:
        m.free()
    r = FluxTransport(MPI.COMM_SELF, cfg("a"), restart=str(tmp_path / "ckpt8.h5"))
    try:
        assert r.time == 8.0 and r.steps == 8
        r.run()
        again = r.gather(0)
    finally:
        r.free()
    assert np.array_equal(full, again)
    h = read_history(str(tmp_path / "a" / "ft_history_r000002.out"))
    assert h["STEP"].tolist() == list(range(11))  # the restart continued the history file
    with pytest.raises(ConfigError, match="realizations"):
        FluxTransport(MPI.COMM_SELF, _cfg(n_realizations=3), restart=str(tmp_path / "ckpt8.h5"), output=False)


def _clean_env() -> dict:
    """The environment without the launcher's PMI/Hydra variables (a child must not join our MPI job)."""
    import re

    leaky = re.compile(r"^(PMI_|PMIX_|PMI2_|HYDRA_|HYDI_|MPIR_CVAR_CH4_ROOTS|MPI_LOCALRANKID|MPI_LOCALNRANKS|"
                       r"OMPI_|PRTE_|SLURM_)")
    env = {k: v for k, v in os.environ.items() if not leaky.match(k)}
    env["PYTHONPATH"] = REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def test_cli_default_run_small(tmp_path):
    env = _clean_env()
    cmd = [sys.executable, "-m", "solvers.flux_transport", "--out", str(tmp_path / "out"),
           "--set", "time.end_h=6", "--set", "grid.ntheta=37", "--set", "grid.nphi=48"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr + res.stdout
    assert "6 steps" in res.stdout
    assert os.path.exists(tmp_path / "out" / "ft_brmap_final.h5")
    assert os.path.exists(tmp_path / "out" / "ft_brmap_butterfly.png") or not PNG
    bad = subprocess.run(cmd + ["--set", "diffusion.eta_km2_s=-1"], capture_output=True, text=True, env=env,
                         timeout=300, cwd=str(tmp_path))
    assert bad.returncode == 2 and "diffusivity must be >= 0" in bad.stderr


# ---------------------------------------------------------------------------- assimilation


def _obs_file(path, grid, br, weight, mu):
    import h5py

    layers = np.stack([br, weight, mu])
    full = np.concatenate([layers, layers[..., :1]], axis=-1)
    with h5py.File(path, "w") as h:
        d = h.create_dataset("Data", data=full)
        for axis, (key, vals) in enumerate((("dim1", grid.file_phi), ("dim2", grid.file_theta),
                                            ("dim3", np.arange(1.0, 4.0)))):
            s = h.create_dataset(key, data=vals)
            s.make_scale(key)
            d.dims[axis].attach_scale(s)


def test_assimilation_blends_observations(tmp_path):
    grid = SphereGrid(37, 48)
    obs = 3.0 * soccer_ball(grid)
    mu = np.cos(grid.theta)[:, None] * np.cos(grid.phi)[None, :]
    _obs_file(str(tmp_path / "o1.h5"), grid, obs, np.ones(grid.shape), mu)
    _obs_file(str(tmp_path / "o2.h5"), grid, obs, np.ones(grid.shape), mu)
    with open(tmp_path / "list.csv", "w") as fh:
        fh.write("target_datetime_utc,obs_datetime_utc,obs_jd,map_path\n")
        fh.write("2024-01-01T00:00:00,2024-01-01T00:00:00,2460310.5,o1.h5\n")
        fh.write("2024-01-01T03:00:00,2024-01-01T03:00:00,2460310.625,o2.h5\n")
    cfg = _cfg(n_realizations=2, flow={"enabled": False}, diffusion={"enabled": False},
               initial={"kind": "zero"}, time={"start_h": 0.5, "end_h": 4.0},
               assimilation={"enabled": True, "map_list": str(tmp_path / "list.csv"), "custom_from_mu": True,
                             "mu_power": [1.0, 2.0], "mu_limit": 0.2})
    f, _, m = _run(cfg)
    assert m.steps == 4  # 0.5 -> 1.5 -> 2.5 -> 3.0 (map) -> 4.0; the map at t = 0 is before the start
    w1 = np.where(mu > 0.2, mu, 0.0)
    w2 = np.where(mu > 0.2, mu ** 2, 0.0)
    for w, got in ((w1, f[0]), (w2, f[1])):
        exp = w * obs
        exp[0] = exp[-1] = 0.0
        assert np.allclose(got, exp, rtol=1e-14, atol=1e-14)
    bad = _cfg(assimilation={"enabled": True, "map_list": str(tmp_path / "nope.csv")})
    with pytest.raises(ConfigError, match="does not exist"):
        FluxTransport(MPI.COMM_SELF, bad, output=False)


def test_assimilation_balanced_increment(tmp_path):
    grid = SphereGrid(37, 48)
    obs = 0.2 + soccer_ball(grid)  # net positive flux: the balance must remove it
    _obs_file(str(tmp_path / "o.h5"), grid, obs, np.full(grid.shape, 0.5), np.ones(grid.shape))
    with open(tmp_path / "list.csv", "w") as fh:
        fh.write("target_datetime_utc,obs_datetime_utc,obs_jd,map_path\n")
        fh.write("x,x,2460310.5,o.h5\n")
    cfg = _cfg(flow={"enabled": False}, diffusion={"enabled": False}, initial={"kind": "zero"},
               assimilation={"enabled": True, "map_list": str(tmp_path / "list.csv"), "balance_flux": True})
    m = FluxTransport(MPI.COMM_SELF, cfg, output=False)
    try:
        assert np.abs(m.local_interior()).max() > 0.1  # the map at the start time is used before the first step
    finally:
        m.free()
    f, diag, _ = _run(cfg)
    net = diag["FLUX_POSITIVE"][0] + diag["FLUX_NEGATIVE"][0]
    assert abs(net) < 1e-12 * (diag["FLUX_POSITIVE"][0] - diag["FLUX_NEGATIVE"][0])
    assert f[0].max() > 0.3 and f[0].min() < -0.1


# ---------------------------------------------------------------------------- optional back ends


def test_implicit_diffusion_matches_explicit():
    pytest.importorskip("petsc4py")
    common = dict(flow={"enabled": False}, initial={"kind": "soccer"}, validation={"kind": "soccer"},
                  time={"end_h": 24.0, "dt_max_h": 0.25}, diffusion={"eta_km2_s": 5000.0})
    f_exp, d_exp, _ = _run(_cfg(**common))
    imp = dict(common, diffusion={"eta_km2_s": 5000.0, "method": "implicit"})
    f_imp, d_imp, _ = _run(_cfg(**imp))
    # the same spatial operator (test below); backward Euler is first order in time: with 96 steps it
    # agrees with the explicit (RKG2 super-step) result to 7.5e-6 of the field's maximum
    assert np.abs(f_imp - f_exp).max() < 3e-5 * np.abs(f_exp).max()
    assert d_imp["VALIDATION_ERR_HHabs"][0] < 5 * d_exp["VALIDATION_ERR_HHabs"][0] + 1e-3


@pytest.mark.parametrize("grid", [{"ntheta": 13, "nphi": 16}, {"ntheta": 21, "nphi": 35}], ids=["13x16", "21x35"])
def test_implicit_matrix_is_the_explicit_operator(grid, rng):
    """The KSP matrix is ``W (I - dt L)`` with the explicit solver's own ``L`` (HipFT's operator, caps
    included), applied to a random field, and it is symmetric (CG is valid)."""
    pytest.importorskip("petsc4py")
    from solvers.flux_transport.parallel import GHOST

    cfg = _cfg(grid=grid, n_realizations=2, flow={"enabled": False},
               diffusion={"eta_km2_s": [700.0, 3000.0], "method": "implicit"})
    m = FluxTransport(MPI.COMM_SELF, cfg, output=False)
    try:
        imp, op, d = m.implicit, m.diffusion, m.domain
        f3 = m.f.reshape(d.padded_shape)
        x = rng.standard_normal((d.ntl, d.npl, f3.shape[2]))
        x[0] = x[0, :1]  # the caps hold one value each
        x[-1] = x[-1, :1]
        g = GHOST
        f3[g:g + d.ntl, g:g + d.npl] = x
        y = np.zeros_like(m.f)
        m._exchange(m.f)
        op.apply(m.f, y)
        lx = y.reshape(d.padded_shape)[g:g + d.ntl, g:g + d.npl]
        dt = 0.7
        for r in range(x.shape[2]):
            A, _ = imp._matrix(float(op.eta[r]), dt)
            assert A.isSymmetric(1e-12 * A.norm())
            xv = A.createVecRight()
            xv.setArray(np.concatenate([x[imp.inner_rows, :, r].ravel(), [x[0, 0, r], x[-1, 0, r]]]))
            got = A.createVecLeft()
            A.mult(xv, got)
            be = x[:, :, r] - dt * lx[:, :, r]  # (I - dt L) x
            want = np.concatenate([(be[imp.inner_rows] * imp.weights).ravel(),
                                   [be[0, 0] * imp.cap_weights[0], be[-1, 0] * imp.cap_weights[1]]])
            np.testing.assert_allclose(got.getArray(), want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    finally:
        m.free()


@pytest.mark.gpu
def test_gpu_matches_cpu(cupy):
    common = dict(n_realizations=2, initial={"kind": "bipolar"}, flow={"attenuate": True},
                  diffusion={"eta_km2_s": [300.0, 700.0]})
    f_cpu, d_cpu, _ = _run(_cfg(**common))
    f_gpu, d_gpu, _ = _run(_cfg(parallel={"device": "gpu"}, **common))
    assert np.allclose(f_gpu, f_cpu, rtol=1e-12, atol=1e-12 * np.abs(f_cpu).max())
    assert np.allclose(d_gpu["FLUX_POSITIVE"], d_cpu["FLUX_POSITIVE"], rtol=1e-12)
