"""Render the sbatch templates of ``hpcore/templates/slurm/``: ``python -m hpcore.slurm render cpu --nodes 2 ...``.

A template is a batch script with ``{{NAME}}`` placeholders and a few ``#%`` lines
for the renderer (a summary, per-template defaults and minimums), which are left
out of the result. The templates install with the package (package data); every
``*.sbatch`` file in that directory is a template, found by listing it, so adding
one needs no code: it uses the shared variables of :data:`VARIABLES` and may declare
its own with ``#% var NAME: help`` (see ``slurm/README.md``). Every shared variable
is described in :data:`VARIABLES`; the renderer
checks each value before writing anything, so that a bad node count or a typo in a
variable name fails on the login node, not after hours in the queue. Rendering
needs no Slurm; only ``--launcher auto`` (the default) asks mpi4py which MPI
library it uses, without initializing MPI.

Command line::

    python -m hpcore.slurm list [-v]
    python -m hpcore.slurm render TEMPLATE --nodes N --tasks-per-node M [--gpus-per-task G]
        [--cpus-per-task C] [--launcher auto|pmi2|pmix|cray_shasta|mpiexec] [--time T]
        [--output DIR] [--set KEY=VALUE ...] [-o job.sbatch] [--template-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "LAUNCHERS",
    "MPI_STACKS",
    "VARIABLES",
    "Variable",
    "Template",
    "template_dir",
    "list_templates",
    "load_template",
    "mpi_stack_of",
    "detect_mpi",
    "launcher_for",
    "launch_command",
    "render",
    "main",
]

LAUNCHERS = ("auto", "pmi2", "pmix", "cray_shasta", "mpiexec")
"""``--launcher`` choices: ``auto`` picks from the MPI library mpi4py reports."""

MPI_STACKS = ("mpich", "cray-mpich", "openmpi", "mvapich2", "other")
"""Values of the ``MPI`` variable: which MPI the job's mpi4py uses (sets CUDA-aware switches)."""

# The launcher each MPI family needs under srun (verified here: mpich -> pmi2, openmpi -> pmix).
_LAUNCHER_OF_STACK = {"mpich": "pmi2", "mvapich2": "pmi2", "openmpi": "pmix", "cray-mpich": "cray_shasta"}

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_DIRECTIVE = re.compile(r"^#%\s*(\w+)\s*:?\s*(.*)$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+,@%:=~-]+$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
_ARRAY = re.compile(r"^\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?$")


@dataclasses.dataclass(frozen=True)
class Variable:
    """One template variable: its meaning, default and how its value is checked.

    ``kind`` is ``"int"`` (with ``minimum``), ``"choice"`` (one of ``choices``),
    ``"path"`` (an absolute path without spaces or shell characters), ``"name"``,
    ``"time"``, ``"array"``, ``"token"`` (one word), ``"text"`` (a shell fragment, used as written) or
    ``"derived"`` (computed by the renderer; some derived ones may be overridden).
    """

    name: str
    help: str
    kind: str = "text"
    default: str | None = None
    minimum: int | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = None
    settable: bool = True


def _v(*args, **kwargs) -> tuple[str, Variable]:
    var = Variable(*args, **kwargs)
    return var.name, var


VARIABLES: dict[str, Variable] = dict([
    _v("NODES", "nodes of the job (#SBATCH --nodes)", "int", None, 1, flag="--nodes"),
    _v("TASKS_PER_NODE", "MPI ranks per node (#SBATCH --ntasks-per-node)", "int", None, 1, flag="--tasks-per-node"),
    _v("NTASKS", "NODES x TASKS_PER_NODE, the MPI size", "derived", settable=False),
    _v("CPUS_PER_TASK", "cores per rank (#SBATCH --cpus-per-task; OMP_NUM_THREADS follows)", "int", "1", 1,
       flag="--cpus-per-task"),
    _v("GPUS_PER_TASK", "GPUs per rank (#SBATCH --gpus-per-task)", "int", "1", 0, flag="--gpus-per-task"),
    _v("GPU_BIND", "#SBATCH --gpu-bind: 'closest' (each rank sees the GPUs near its cores; hpcore binds by "
       "local rank), 'per_task:1' or 'single:1' (exactly one GPU per rank), 'map_gpu:0,1,...'", "token", "closest"),
    _v("CUDA_AWARE", "'auto' (hpcore asks the MPI library), '1' (force on), '0' (stage device buffers through "
       "pinned host memory: HPCORE_CUDA_AWARE=0)", "choice", "auto", choices=("auto", "1", "0")),
    _v("LAUNCHER", "how ranks start: auto (from the MPI mpi4py reports), pmi2 (srun --mpi=pmi2: MPICH, MVAPICH2), "
       "pmix (srun --mpi=pmix: Open MPI), cray_shasta (srun --mpi=cray_shasta: Cray MPICH), mpiexec (the MPI's "
       "own mpiexec inside the allocation)", "choice", "auto", choices=LAUNCHERS, flag="--launcher"),
    _v("LAUNCH", "the launch command before PYTHON, from LAUNCHER; set it to add options, e.g. "
       "'srun --mpi=pmi2 --cpu-bind=cores'", "derived"),
    _v("MPI", "the MPI family mpi4py uses (" + ", ".join(MPI_STACKS) + "); detected from "
       "MPI.Get_library_version() when not set", "choice", None, choices=MPI_STACKS),
    _v("MPI_LIBRARY", "first line of MPI.Get_library_version(), for the job's header comment", "derived",
       settable=False),
    _v("PYTHON", "the Python that has mpi4py and hpcore on the compute nodes (sbatch exports the submitting "
       "shell's PATH, so 'python' is the active virtual environment's)", "text", "python"),
    _v("SETUP", "shell lines run before launching, e.g. 'module load openmpi cuda; source ~/venv/bin/activate' "
       "(empty: none)", "text", ""),
    _v("TIME", "wall-clock limit (#SBATCH --time), [D-]HH:MM:SS or minutes", "time", "00:10:00", flag="--time"),
    _v("JOB_NAME", "job name (#SBATCH --job-name); output files are named after it", "name", None),
    _v("PARTITION", "partition (#SBATCH --partition; empty: the site's default)", "name", ""),
    _v("ACCOUNT", "account to charge (#SBATCH --account; empty: your default)", "name", ""),
    _v("OUTPUT_DIR", "directory for the job's log and results (created when rendering; the job starts in "
       "it); default: the current directory", "path", None, flag="--output"),
    _v("EXAMPLES_DIR", "hpcore's examples/ directory (default: next to the installed hpcore package)", "path"),
    _v("EXAMPLE", "the example and its arguments (a shell fragment; placeholders allowed)", "text", None),
    _v("ARRAY", "job array indices (#SBATCH --array), e.g. '0-15' or '0-99%10' (at most 10 at once)",
       "array", "0-3"),
])


@dataclasses.dataclass(frozen=True)
class Template:
    """A template file read from disk: its name, text, summary, defaults and minimums."""

    name: str
    path: Path
    text: str
    summary: str
    defaults: Mapping[str, str]
    minimums: Mapping[str, int]
    uses: tuple[str, ...]
    own: Mapping[str, Variable] = dataclasses.field(default_factory=dict)
    """Variables this template declares itself (``#% var NAME: help``)."""

    @property
    def variables(self) -> dict[str, Variable]:
        """The shared :data:`VARIABLES` and this template's own, in that order."""
        return {**VARIABLES, **self.own}

    @property
    def settable(self) -> tuple[str, ...]:
        """The variables a user may set for this template (``LAUNCHER`` and ``MPI`` come with ``LAUNCH``)."""
        names = set(self.uses)
        if "LAUNCH" in names:
            names |= {"LAUNCHER", "MPI"}
        known = self.variables
        return tuple(n for n in known if n in names and known[n].settable)

    def describe(self) -> str:
        """Lines for ``list -v``: every variable the template takes, with its default."""
        lines = [f"{self.name}: {self.summary}"]
        for name in self.settable:
            var = self.variables[name]
            default = self.defaults.get(name, var.default)
            if name == "MPI":
                shown = "(detected)"
            elif default is None:
                shown = "(required)" if name in ("NODES", "TASKS_PER_NODE") else "(computed)"
            else:
                shown = repr(default)
            minimum = self.minimums.get(name)
            flag = f" [{var.flag}]" if var.flag else ""
            more = f", at least {minimum}" if minimum is not None else ""
            lines.append(f"    {name:<15}{flag:<20} {shown}{more}: {var.help}")
        return "\n".join(lines)


def template_dir() -> Path | None:
    """The directory of the installed templates, ``hpcore/templates/slurm/`` (package data), or None."""
    here = Path(__file__).resolve().parent.parent / "templates" / "slurm"
    return here if here.is_dir() else None


def _examples_dir() -> Path | None:
    """The repository's ``examples/`` next to the package (a checkout or an editable install), or None."""
    here = Path(__file__).resolve().parent.parent.parent / "examples"
    return here if here.is_dir() else None


def _resolve_dir(directory) -> Path:
    if directory is not None:
        path = Path(directory)
        if not path.is_dir():
            raise ValueError(f"template directory {str(directory)!r} does not exist")
        return path
    found = template_dir()
    if found is None:
        raise ValueError(
            "no template directory: hpcore/templates/slurm/ is missing from this installation; "
            "pass --template-dir DIR or a path to a template file"
        )
    return found


def list_templates(directory=None) -> list[Template]:
    """All templates (``*.sbatch``) in `directory` (default: :func:`template_dir`), by name. Not collective."""
    root = _resolve_dir(directory)
    return [load_template(p.stem, root) for p in sorted(root.glob("*.sbatch"))]


def load_template(template, directory=None) -> Template:
    """Read a template by name (``cpu``) from `directory`, or from a path to a file.

    Raises ``ValueError`` naming the template and the ones that exist when there is no
    such template, and when the file uses an unknown variable or a malformed ``#%`` line.
    """
    if not isinstance(template, (str, os.PathLike)):
        raise TypeError(f"template must be a name or a path, got {type(template).__name__}")
    candidate = Path(template)
    if candidate.suffix == ".sbatch" and candidate.is_file():
        path = candidate
    else:
        root = _resolve_dir(directory)
        path = root / f"{template}.sbatch"
        if not path.is_file():
            names = sorted(p.stem for p in root.glob("*.sbatch"))
            raise ValueError(
                f"unknown template {str(template)!r}; templates in {root}: {', '.join(names) or 'none'}"
            )
    text = path.read_text(encoding="utf-8")
    summary, defaults, minimums = "", {}, {}
    own = _own_variables(path, text)
    known = {**VARIABLES, **own}
    for number, line in enumerate(text.splitlines(), 1):
        match = _DIRECTIVE.match(line)
        if match is None:
            continue
        key, rest = match.group(1), match.group(2).strip()
        where = f"{path}:{number}"
        if key == "summary":
            summary = rest
        elif key in ("default", "min"):
            name, sep, value = rest.partition("=")
            name = name.strip()
            if not sep or name not in known:
                raise ValueError(f"{where}: expected '#% {key} NAME=VALUE' with a known NAME, got {line!r}")
            if key == "default":
                defaults[name] = value.strip()
            else:
                try:
                    minimums[name] = int(value)
                except ValueError:
                    raise ValueError(f"{where}: minimum of {name} must be an integer, got {value.strip()!r}") from None
        elif key != "var":
            raise ValueError(f"{where}: unknown directive '#% {key}' (known: summary, default, min, var)")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#%"))
    uses = []
    for source in [body, *defaults.values()]:
        for name in _PLACEHOLDER.findall(source):
            if name not in known:
                raise ValueError(f"template {path}: uses unknown variable {{{{{name}}}}} (declare it with "
                                 f"'#% var {name}: what it means')")
            if name not in uses:
                uses.append(name)
    uses.sort(key=list(known).index)
    return Template(path.stem, path, text, summary, defaults, minimums, tuple(uses), own)


_VAR = re.compile(r"^#%\s*var\s+([A-Z][A-Z0-9_]*)\s*(?:\(\s*(\w+)\s*\))?\s*:\s*(\S.*)$")
_OWN_KINDS = ("text", "int", "path", "name", "token", "time")


def _own_variables(path: Path, text: str) -> dict[str, Variable]:
    """The ``#% var NAME[(kind)]: help`` declarations of a template. Not collective."""
    own: dict[str, Variable] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not re.match(r"^#%\s*var\b", line):
            continue
        match = _VAR.match(line)
        where = f"{path}:{number}"
        if match is None:
            raise ValueError(f"{where}: expected '#% var NAME: help' or '#% var NAME(kind): help' "
                             f"(NAME in capitals), got {line!r}")
        name, kind, help_text = match.group(1), match.group(2) or "text", match.group(3).strip()
        if name in VARIABLES or name in own:
            raise ValueError(f"{where}: variable {name} is already defined"
                             + (" (a shared variable; use '#% default' to change its default)"
                                if name in VARIABLES else ""))
        if kind not in _OWN_KINDS:
            raise ValueError(f"{where}: kind of {name} must be one of {', '.join(_OWN_KINDS)}, got {kind!r}")
        own[name] = Variable(name, help_text, kind, None, 0 if kind == "int" else None)
    return own


# --------------------------------------------------------------------------- MPI and launchers


def mpi_stack_of(library_version: str) -> str:
    """The MPI family of a ``MPI.Get_library_version()`` string (one of :data:`MPI_STACKS`). Not collective.

    >>> mpi_stack_of("Open MPI v5.0.3, package: Open MPI ...")
    'openmpi'
    """
    text = library_version.upper()
    if "CRAY MPICH" in text:
        return "cray-mpich"
    if "MVAPICH" in text:
        return "mvapich2"
    if "OPEN MPI" in text:
        return "openmpi"
    if "INTEL(R) MPI" in text or "INTEL MPI" in text:
        return "other"
    if "MPICH" in text:
        return "mpich"
    return "other"


def detect_mpi() -> tuple[str, str]:
    """``(stack, first line of the library version)`` of the MPI that mpi4py loads.

    Not collective, and never initializes MPI in the caller: when ``mpi4py.MPI`` is
    already imported it is asked directly; otherwise a child process of the same
    Python asks ``MPI_Get_library_version`` (callable before ``MPI_Init``) with
    mpi4py's automatic initialization turned off.
    """
    if "mpi4py.MPI" in sys.modules:
        version = sys.modules["mpi4py.MPI"].Get_library_version()
    else:
        import subprocess

        code = ("import mpi4py; mpi4py.rc.initialize = mpi4py.rc.finalize = False; "
                "from mpi4py import MPI; print(MPI.Get_library_version())")
        try:
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            proc, version = None, f"{type(exc).__name__}: {exc}"
        if proc is None or proc.returncode != 0:
            why = version if proc is None else (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ValueError(
                f"cannot detect the MPI library through mpi4py ({why}); pass --launcher and --set MPI=... "
                "(" + ", ".join(MPI_STACKS) + ")"
            )
        version = proc.stdout
    # Open MPI's string ends in a NUL byte, which sbatch refuses in a script: keep printable text only.
    version = "".join(c for c in version if c.isprintable() or c in "\n\t")
    first = " ".join(version.strip().splitlines()[0].split()) if version.strip() else "unknown"
    return mpi_stack_of(version), first


def launcher_for(stack: str) -> str:
    """The launcher :data:`LAUNCHERS` that MPI family `stack` needs under Slurm. Not collective.

    Raises ``ValueError`` for ``"other"``: no guess is safer than a wrong one.
    """
    if stack not in MPI_STACKS:
        raise ValueError(f"MPI must be one of {', '.join(MPI_STACKS)}, got {stack!r}")
    try:
        return _LAUNCHER_OF_STACK[stack]
    except KeyError:
        raise ValueError(
            f"cannot pick a launcher for MPI={stack!r}; pass --launcher pmi2, pmix, cray_shasta or mpiexec "
            "(Intel MPI: pmi2 with I_MPI_PMI_LIBRARY set to Slurm's libpmi2.so, in SETUP)"
        ) from None


def launch_command(launcher: str) -> str:
    """The command that starts the ranks for `launcher` (not ``auto``), before ``PYTHON``. Not collective."""
    if launcher in ("pmi2", "pmix", "cray_shasta"):
        return f"srun --mpi={launcher}"
    if launcher == "mpiexec":
        return "mpiexec -n {{NTASKS}}"
    raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS[1:])} here, got {launcher!r}")


# --------------------------------------------------------------------------- rendering


def _check_value(var: Variable, value, template: Template) -> str:
    """Validate one value; return it as the string to insert."""
    label = f"{var.flag} ({var.name})" if var.flag else var.name
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{label} must be a str or int, got {type(value).__name__} {value!r}")
    text = str(value).strip() if var.kind != "text" else str(value)
    if var.kind == "int":
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError(f"{label} must be an integer, got {str(value)!r}")
        number = int(text)
        minimum = template.minimums.get(var.name, var.minimum)
        if minimum is not None and number < minimum:
            why = f" for template {template.name!r}" if var.name in template.minimums else ""
            raise ValueError(f"{label} must be >= {minimum}{why}, got {number}")
        return str(number)
    if var.kind == "choice":
        if text not in var.choices:
            raise ValueError(f"{label} must be one of {', '.join(var.choices)}, got {str(value)!r}")
        return text
    if var.kind == "path":
        if not os.path.isabs(text) or not _SAFE_PATH.match(text):
            raise ValueError(
                f"{label} must be an absolute path without spaces, quotes or shell characters, got {str(value)!r}"
            )
        return text
    if var.kind == "name":
        if text and not _JOB_NAME.match(text):
            raise ValueError(f"{label} may hold letters, digits and . _ + - only, got {str(value)!r}")
        return text
    if var.kind == "time":
        if not _TIME.match(text):
            raise ValueError(f"{label} must be minutes or [D-]HH:MM:SS, got {str(value)!r}")
        return text
    if var.kind == "token":
        if not re.fullmatch(r"[A-Za-z0-9_:,.+=-]+", text):
            raise ValueError(f"{label} must be one word without spaces or quotes (e.g. closest, per_task:1), "
                             f"got {str(value)!r}")
        return text
    if var.kind == "array":
        if not _ARRAY.match(text):
            raise ValueError(f"{label} must be job array indices such as '0-15', '1,3,5' or '0-99%10', "
                             f"got {str(value)!r}")
        return text
    if "\n" in text and var.name != "SETUP":
        raise ValueError(f"{label} must be one line, got {str(value)!r}")
    if var.name == "LAUNCH" and re.search(r'["`\\]', text):
        raise ValueError(f"{label} goes between double quotes in the script and may not hold \", ` or \\, "
                         f"got {str(value)!r}")
    return text


def render(template, values: Mapping[str, object] | None = None, *, directory=None) -> str:
    """Fill `template` with `values` and return the batch script.

    Not collective; needs no Slurm. ``values`` maps variable names (see
    :data:`VARIABLES`) to values; names the template does not use, unknown names,
    missing required values (``NODES``, ``TASKS_PER_NODE``) and values out of range
    raise ``ValueError`` naming the variable and the value. ``MPI`` and ``LAUNCHER``
    left at ``auto`` are detected from the MPI library mpi4py loads.

    Lines ``#SBATCH`` whose placeholders are all empty are disabled (``##SBATCH``);
    other lines that consist of one empty placeholder are dropped.

    Examples
    --------
    >>> script = render("cpu", {"NODES": 2, "TASKS_PER_NODE": 4, "LAUNCHER": "pmi2", "MPI": "mpich",
    ...                         "OUTPUT_DIR": "/scratch/me/run1"})
    >>> "srun --mpi=pmi2" in script
    True
    """
    tpl = template if isinstance(template, Template) else load_template(template, directory)
    given = dict(values or {})
    for name in given:
        if name not in tpl.variables:
            raise ValueError(f"unknown variable {name!r}; known: {', '.join(tpl.variables)}")
        var = tpl.variables[name]
        if not var.settable:
            raise ValueError(f"{name} is computed ({var.help}) and cannot be set")
        if name not in tpl.settable:
            label = f"{var.flag} ({name})" if var.flag else name
            raise ValueError(f"template {tpl.name!r} does not use {label}; it takes: {', '.join(tpl.settable)}")
    if "LAUNCH" in given and given.get("LAUNCHER", "auto") != "auto":
        raise ValueError("pass --launcher or --set LAUNCH=..., not both")

    out: dict[str, str] = {}
    for name in dict.fromkeys(tpl.uses + tpl.settable):
        var = tpl.variables[name]
        if name in given:
            out[name] = _check_value(var, given[name], tpl)
        elif name in tpl.defaults:
            out[name] = _check_value(var, tpl.defaults[name], tpl) if var.kind != "text" else tpl.defaults[name]
        elif var.default is not None:
            out[name] = _check_value(var, var.default, tpl)
        elif name in ("NODES", "TASKS_PER_NODE"):
            raise ValueError(f"template {tpl.name!r} needs {var.flag} ({name})")
        elif name in tpl.own:
            raise ValueError(f"template {tpl.name!r} needs {name} (--set {name}=...): {var.help}")
    # Computed values.
    if "NODES" in out and "TASKS_PER_NODE" in out:
        out["NTASKS"] = str(int(out["NODES"]) * int(out["TASKS_PER_NODE"]))
    if "JOB_NAME" in tpl.uses and "JOB_NAME" not in out:
        out["JOB_NAME"] = f"hpcore-{tpl.name}" if _JOB_NAME.match(f"hpcore-{tpl.name}") else "hpcore"
    if "OUTPUT_DIR" in tpl.uses and "OUTPUT_DIR" not in out:
        out["OUTPUT_DIR"] = _check_value(VARIABLES["OUTPUT_DIR"], os.path.abspath(os.getcwd()), tpl)
    if "EXAMPLES_DIR" in tpl.uses and "EXAMPLES_DIR" not in out:
        found = _examples_dir()
        if found is None:
            raise ValueError("cannot find hpcore's examples/ directory next to the package (an installed wheel "
                             "has none): --set EXAMPLES_DIR=/path/to/hpcore/examples")
        out["EXAMPLES_DIR"] = _check_value(VARIABLES["EXAMPLES_DIR"], str(found), tpl)
    if "EXAMPLE" in tpl.uses and "EXAMPLE" not in out:
        raise ValueError(f"template {tpl.name!r} needs EXAMPLE (--set EXAMPLE='path/to/script.py args')")
    library = None
    if "LAUNCH" in tpl.uses or "MPI" in tpl.uses:
        if "MPI" not in out:
            stack, library = detect_mpi()
            out.setdefault("MPI", stack)
        if "LAUNCH" in given:
            out["LAUNCH"] = _check_value(VARIABLES["LAUNCH"], given["LAUNCH"], tpl)
        else:
            launcher = out.get("LAUNCHER", "auto")
            if launcher == "auto":
                launcher = launcher_for(out["MPI"])
            out["LAUNCH"] = launch_command(launcher)
    out["MPI_LIBRARY"] = library or "library not detected: MPI was given"

    # Substitute (values may hold placeholders, e.g. EXAMPLE='{{EXAMPLES_DIR}}/x.py'), a few levels deep.
    def fill(text: str, depth: int = 0) -> str:
        def one(match):
            name = match.group(1)
            if name not in tpl.variables:
                raise ValueError(f"unknown variable {{{{{name}}}}} in a value")
            if name not in out:
                raise ValueError(f"template {tpl.name!r}: {{{{{name}}}}} has no value here")
            return out[name]

        result = _PLACEHOLDER.sub(one, text)
        if _PLACEHOLDER.search(result):
            if depth >= 4:
                raise ValueError(f"placeholders nest too deeply in {text!r}")
            return fill(result, depth + 1)
        return result

    lines = []
    for line in tpl.text.splitlines():
        if line.startswith("#%"):
            continue
        names = _PLACEHOLDER.findall(line)
        filled = fill(line)
        if names and all(fill("{{" + n + "}}") == "" for n in names):
            if line.lstrip().startswith("#SBATCH"):
                lines.append("#" + filled.lstrip())
                continue
            if _PLACEHOLDER.fullmatch(line.strip()):
                continue
        lines.append(filled)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line


def _parse_sets(items) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        name = name.strip()
        if name in values:
            raise ValueError(f"--set {name} given twice")
        values[name] = value
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hpcore.slurm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lst = sub.add_parser("list", help="list the templates (-v: with their variables)")
    lst.add_argument("-v", "--verbose", action="store_true")
    lst.add_argument("--template-dir", help="directory of *.sbatch templates (default: hpcore/templates/slurm/)")
    ren = sub.add_parser("render", help="fill a template and write the batch script")
    ren.add_argument("template", help="template name (see 'list') or path to a .sbatch file")
    ren.add_argument("--nodes", help="nodes (NODES)")
    ren.add_argument("--tasks-per-node", help="MPI ranks per node (TASKS_PER_NODE)")
    ren.add_argument("--gpus-per-task", help="GPUs per rank (GPUS_PER_TASK; GPU templates)")
    ren.add_argument("--cpus-per-task", help="cores per rank (CPUS_PER_TASK)")
    ren.add_argument("--launcher", help="|".join(LAUNCHERS) + " (LAUNCHER; default auto)")
    ren.add_argument("--time", help="wall-clock limit (TIME)")
    ren.add_argument("--output", help="directory for the job's log and results (OUTPUT_DIR; default: .)")
    ren.add_argument("--set", action="append", metavar="KEY=VALUE", help="any variable (repeatable)")
    ren.add_argument("-o", "--out", metavar="FILE", help="write the script here (default: standard output)")
    ren.add_argument("--template-dir", help="directory of *.sbatch templates (default: hpcore/templates/slurm/)")
    return parser


def main(argv=None) -> int:
    """Entry point of ``python -m hpcore.slurm``; returns the exit status (2 for bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            for tpl in list_templates(args.template_dir):
                print(tpl.describe() if args.verbose else f"{tpl.name:<12} {tpl.summary}")
            return 0
        values = _parse_sets(args.set)
        for flag, name in (("nodes", "NODES"), ("tasks_per_node", "TASKS_PER_NODE"),
                           ("gpus_per_task", "GPUS_PER_TASK"), ("cpus_per_task", "CPUS_PER_TASK"),
                           ("launcher", "LAUNCHER"), ("time", "TIME"), ("output", "OUTPUT_DIR")):
            value = getattr(args, flag)
            if value is None:
                continue
            if name in values:
                raise ValueError(f"{VARIABLES[name].flag} and --set {name}=... both given; pass one")
            values[name] = os.path.abspath(value) if name == "OUTPUT_DIR" else value
        script = render(args.template, values, directory=args.template_dir)
        output_dir = re.search(r"^#SBATCH --chdir=(\S+)$", script, re.M)
        if output_dir:
            os.makedirs(output_dir.group(1), exist_ok=True)
        if args.out:
            Path(args.out).write_text(script, encoding="utf-8")
            sys.stderr.write(f"wrote {args.out}; submit it with: sbatch {args.out}\n")
        else:
            sys.stdout.write(script)
    except (ValueError, TypeError, OSError) as exc:
        sys.stderr.write(f"python -m hpcore.slurm: error: {exc}\n")
        return 2
    return 0
