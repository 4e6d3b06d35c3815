"""The boundary of every entry point: communicator resolution, op names and cross-rank agreement.

Every public entry point of ``hpcore``, ``comms`` and ``solvers`` resolves its
communicator with :func:`as_comm`, names reduction ops with :func:`as_op`, and agrees
with the other ranks on its arguments with :func:`agree`, in the spirit of mpi4py's
``util/pkl5.py`` (one primitive passed to every caller) and petsc4py's one converter
per concept. No layer writes its own copy.

:func:`agree` costs one allreduce of three 64-bit integers when every rank passed its
local checks and the agreed fields match: a failure flag and a 63-bit hash of the
normalized fields (its maximum and the maximum of its negation, so that every rank
sees whether all hashes are equal). Only when something is wrong does it gather the
details, and then every rank raises the same exception with the same message.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import Any, Optional

import numpy as np

from .errors import HpcoreError, MismatchError
from .lazy_mpi import mpi

__all__ = ["as_comm", "as_op", "agree", "check", "normalize", "MismatchError", "OP_NAMES"]

OP_NAMES = ("sum", "prod", "max", "min")
"""The reduction ops that :func:`as_op` converts, by canonical name."""

_HPCORE_COMM = None  # hpcore.transport.Comm, imported on first use (transport imports this module)


def _hpcore_comm_type():
    global _HPCORE_COMM
    if _HPCORE_COMM is None:
        from .transport import Comm

        _HPCORE_COMM = Comm
    return _HPCORE_COMM


def as_comm(comm):
    """Return the mpi4py intracommunicator behind ``comm``. Not collective.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or hpcore.Comm
        The caller's communicator, or an ``hpcore.Comm`` wrapping one.

    Returns
    -------
    mpi4py.MPI.Intracomm
        ``comm`` itself, or the communicator an ``hpcore.Comm`` wraps.

    Raises
    ------
    TypeError
        ``comm`` is neither an mpi4py communicator nor an ``hpcore.Comm``, or it is an
        intercommunicator.
    ValueError
        ``comm`` is ``MPI.COMM_NULL`` (this rank is not a member).
    """
    MPI = mpi()
    inner = comm
    if not isinstance(inner, MPI.Comm):
        if isinstance(comm, _hpcore_comm_type()):
            inner = comm.mpi
        else:
            raise TypeError(f"comm: expected an mpi4py intracommunicator or an hpcore.Comm wrapping one, "
                            f"got {type(comm).__name__}")
    if inner == MPI.COMM_NULL:
        raise ValueError("comm: got MPI.COMM_NULL; pass a communicator this rank belongs to")
    if not isinstance(inner, MPI.Intracomm) or inner.Is_inter():
        raise TypeError(f"comm: expected an intracommunicator, got {type(inner).__name__}")
    return inner


def as_op(op) -> str:
    """Return the canonical name (``"sum"``, ``"prod"``, ``"max"`` or ``"min"``) of ``op``. Not collective.

    Parameters
    ----------
    op : mpi4py.MPI.Op, str or None
        ``MPI.SUM``, ``MPI.PROD``, ``MPI.MAX``, ``MPI.MIN``, one of their names (any
        case), or None for SUM.

    Raises
    ------
    ValueError
        Any other op (named in the message, e.g. ``MPI.BAND`` or a user-defined op).
    """
    if op is None:
        return "sum"
    if isinstance(op, str):
        name = op.lower()
        if name in OP_NAMES:
            return name
        raise ValueError(f"op: expected MPI.SUM, MPI.PROD, MPI.MAX, MPI.MIN or one of {list(OP_NAMES)}, got {op!r}")
    MPI = mpi()
    if isinstance(op, MPI.Op):
        for name, mop in (("sum", MPI.SUM), ("prod", MPI.PROD), ("max", MPI.MAX), ("min", MPI.MIN)):
            if op == mop:
                return name
        known = [n for n in ("LAND", "BAND", "LOR", "BOR", "LXOR", "BXOR", "MAXLOC", "MINLOC", "REPLACE", "NO_OP")
                 if op == getattr(MPI, n, None)]
        shown = f"MPI.{known[0]}" if known else "a user-defined MPI.Op"
    else:
        shown = f"{type(op).__name__} {op!r}"
    raise ValueError(f"op: expected MPI.SUM, MPI.PROD, MPI.MAX or MPI.MIN, got {shown}")


# --------------------------------------------------------------------------- field normalization


def normalize(value) -> Any:
    """Return ``value`` as plain, comparable Python data (the form :func:`agree` compares). Not collective.

    NumPy dtypes become their names (``"float64"``, with a ``>``/``<`` prefix when not
    native), NumPy scalars Python scalars, arrays and sequences tuples, sets sorted
    tuples, mappings sorted tuples of items, MPI ops their :func:`as_op` name (or
    ``repr``); ``None``, bools, ints, floats, strings and bytes stay. Anything else
    becomes its ``repr``.
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, np.dtype):
        return value.name if value.isnative else value.str
    if isinstance(value, type) and issubclass(value, np.generic):
        return normalize(np.dtype(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return tuple(normalize(v) for v in value.tolist()) if value.ndim else normalize(value.item())
    if isinstance(value, (tuple, list)):
        return tuple(normalize(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted((normalize(v) for v in value), key=repr))
    if isinstance(value, dict):
        return tuple(sorted(((str(k), normalize(v)) for k, v in value.items()), key=lambda kv: kv[0]))
    try:
        if isinstance(value, mpi().Op):
            return as_op(value)
    except ValueError:
        pass
    return repr(value)


_DIGESTS: dict = {}  # (what, field items) -> digest: a repeated call skips normalizing and hashing
_MAX_DIGESTS = 512


def _cached_digest(what: str, fields: dict) -> int:
    """:func:`_digest` of the normalized ``fields``, cached by their raw values where those are hashable."""
    try:
        key = (what, *fields.items())
        got = _DIGESTS.get(key)
    except TypeError:  # an unhashable value (a list, a dict): no cache
        key, got = None, None
    if got is None:
        got = _digest(what, {k: normalize(v) for k, v in fields.items()})
        if key is not None:
            if len(_DIGESTS) >= _MAX_DIGESTS:
                _DIGESTS.clear()
            _DIGESTS[key] = got
    return got


def _digest(what: str, fields: dict) -> int:
    """A 63-bit hash of ``what`` and the normalized ``fields``, equal on every rank for equal input."""
    if not fields and not what:
        return 0
    text = repr((what, tuple(sorted(fields.items()))))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


# --------------------------------------------------------------------------- agreement


def agree(comm, error: Optional[BaseException] = None, *, what: str = "",
          mismatch: type = MismatchError, **fields) -> None:
    """Raise the same error on every rank of ``comm`` if any rank failed or the ranks disagree.

    Collective on ``comm``: every rank calls it at the same point, passing ``error=None``
    when its own checks passed, and the same ``what`` and field names. Costs one
    allreduce of three int64 (a failure flag and a hash of ``what`` and the normalized
    fields) when nothing is wrong; the details are gathered only on failure.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or hpcore.Comm
    error : BaseException, optional
        This rank's local error. If any rank passes one, every rank raises an exception
        of the type the lowest failing rank raised, whose message joins every failing
        rank's message prefixed ``"rank r/size: "``. On the failing rank it is chained
        to the original (``raise ... from error``). A type that cannot be rebuilt from
        one message string (e.g. ``json.JSONDecodeError``) or that not every rank can
        import is replaced by its nearest base class that can (e.g. ``ValueError``),
        the same on every rank.
    what : str
        The operation being agreed on (e.g. ``"ring_allreduce"``): part of the hash, so
        ranks calling different collectives disagree, and the prefix of the message.
    **fields
        Values that must be equal on every rank (counts, shapes, dtypes, op names, roots,
        flags, chunk sizes...), compared after :func:`normalize`. If they differ, every
        rank raises :class:`MismatchError` naming ``what``, each differing field and the
        ranks holding each value, as ``name=value on ranks ...``.
    mismatch : type
        The :class:`MismatchError` subclass to raise on a mismatch (e.g.
        ``comms.RingMismatchError``); ``mismatch`` is therefore not a field name.

    Raises
    ------
    MismatchError
        Ranks passed different ``what`` or ``fields``.
    Exception
        The agreed local error (see ``error``).

    Examples
    --------
    ``mpiexec -n 2``::

        agree(comm, None, what="ring_allreduce", count=x.size, dtype=x.dtype, op="sum")
    """
    MPI = mpi()
    if not isinstance(comm, MPI.Comm):
        comm = as_comm(comm)
    failed = error is not None
    if failed:
        if not isinstance(error, BaseException):
            raise TypeError(f"error: expected an exception or None, got {type(error).__name__}")
        digest = 0
    else:
        try:
            digest = _cached_digest(what, fields)
        except Exception as exc:  # noqa: BLE001 - a field that cannot be normalized is this rank's error
            error, failed, digest = exc, True, 0
    mine = np.array((1 if failed else 0, digest, -digest), dtype=np.int64)
    if comm.Get_size() > 1:
        got = np.empty(3, dtype=np.int64)
        comm.Allreduce(mine, got, op=MPI.MAX)
    else:
        got = mine
    if got[0]:
        _raise_agreed_error(comm, error)
    if got[1] != -got[2]:
        _raise_mismatch(comm, what, {k: normalize(v) for k, v in fields.items()}, mismatch)


def check(comm, condition_fn, *, what: str = "", **fields) -> None:
    """Run ``condition_fn()`` locally, then :func:`agree` on its outcome and on ``fields``.

    Collective on ``comm``. ``condition_fn`` raises ``TypeError``/``ValueError`` (or any
    exception) on bad local input; every rank then raises the same error.
    """
    error = None
    try:
        condition_fn()
    except Exception as exc:  # noqa: BLE001 - re-raised on every rank by agree()
        error = exc
    agree(comm, error, what=what, **fields)


def _type_path(cls) -> tuple[str, str]:
    return cls.__module__, cls.__qualname__


def _resolve_type(path: tuple[str, str]):
    """The class at ``module.qualname`` or None (local classes and missing modules)."""
    module, qualname = path
    if "<locals>" in qualname:
        return None
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:  # noqa: BLE001 - anything unresolvable falls back to a base class
        return None
    return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None


def _rebuild(mro_paths, message: str) -> BaseException:
    """The first class of ``mro_paths`` that every rank can import and build from one message."""
    for path in mro_paths:
        cls = _resolve_type(path)
        if cls is None:
            continue
        try:
            exc = cls(message)
        except Exception:  # noqa: BLE001 - constructor needs other arguments: try the base class
            continue
        if isinstance(exc, BaseException):
            return exc
    return HpcoreError(message)


def _raise_agreed_error(comm, error) -> None:
    mine = None
    if error is not None:
        mro = [_type_path(c) for c in type(error).__mro__ if issubclass(c, BaseException)]
        mine = (mro, str(error))
    reports = comm.allgather(mine)
    bad = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
    size = comm.Get_size()
    lines = []
    for r, (_, msg) in bad:
        prefix = f"rank {r}/{size}: "
        lines.append(msg if msg.startswith(prefix) else prefix + msg)
    exc = _rebuild(bad[0][1][0], "; ".join(lines))
    if error is not None:
        raise exc from error
    raise exc


def _ranges(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"ranks 0-2, 5"``."""
    parts, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            parts.append(f"{start}" if start == r else f"{start}-{r}")
            start = None
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(parts)


_ABSENT = "<not passed>"


def _raise_mismatch(comm, what: str, norm: dict, mismatch: type) -> None:
    table = comm.allgather((what, norm))
    size = comm.Get_size()
    names = ["call"] if len({w for w, _ in table}) > 1 else []
    keys = sorted(set().union(*(f.keys() for _, f in table)))
    names += [k for k in keys if len({repr(f.get(k, _ABSENT)) for _, f in table}) > 1]
    parts = []
    for name in names:
        groups: dict = {}
        for r, (w, f) in enumerate(table):
            value = w if name == "call" else f.get(name, _ABSENT)
            groups.setdefault(repr(value), (value, []))[1].append(r)
        parts.append(", ".join(f"{name}={value if isinstance(value, str) else repr(value)} on {_ranges(ranks)}"
                               for value, ranks in groups.values()))
    label = what or "agree"
    hint = getattr(mismatch, "hint", "")
    raise mismatch(f"{label}: the {size} ranks disagree on {', '.join(names)} ({'; '.join(parts)})"
                   + (f"; {hint}" if hint else ""))
