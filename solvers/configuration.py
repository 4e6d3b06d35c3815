"""Configuration files of every solver: TOML tables, ``--set section.key=value`` overrides, typed values.

One reader for the flux-transport runs, the surrogate training runs and the online-training
studies, so that an override means the same thing on every command line: the value is TOML
(``1.5``, ``true``, ``"text"``, ``[1.0, 2.0]``), numbers with a trailing dot (``[1.,2.]``) are
read as floats, and a bare word (``initial.kind=file``, where the shell ate the quotes) is a
string. All functions are local (not collective); callers agree on the outcome across ranks.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

__all__ = ["ConfigError", "load_toml", "coerce_value", "parse_value", "parse_override", "merge_tables"]


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range (names the key)."""


_BARE = re.compile(r"^[A-Za-z0-9_./+:~-]*$")
_TRAILING_DOT = re.compile(r"(?<![\w.])(\d+)\.(?!\d)")


def load_toml(path: str) -> dict:
    """The table of the TOML file ``path``. Not collective.

    Raises
    ------
    ConfigError
        The file cannot be read or is not TOML (the message names the file and the reason).
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path!r}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r}: {exc}") from None


def parse_value(key: str, raw: str) -> Any:
    """The value of one ``--set key=raw``: TOML syntax, ``1.`` as ``1.0``, or a bare word. Not collective.

    Raises
    ------
    ConfigError
        ``raw`` is neither TOML nor a bare word (the message names ``key``).
    """
    raw = raw.strip()
    for text in (raw, _TRAILING_DOT.sub(r"\1.0", raw)):
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            pass
    if _BARE.match(raw):
        return raw
    raise ConfigError(f"--set {key}: cannot read the value {raw!r} (TOML syntax: 1.5, true, \"text\", [1.0, 2.0])")


def parse_override(text: str, *, allow_top_level: bool = False) -> dict:
    """``"section.key=value"`` as the table ``{section: {key: value}}``. Not collective.

    With ``allow_top_level``, ``"key=value"`` gives ``{key: value}``.
    """
    if "=" not in text:
        raise ConfigError(f"--set: expected section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if allow_top_level and len(parts) == 1 and parts[0]:
        return {parts[0]: parse_value(key, raw)}
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set: expected section.key=value, got {text!r}")
    return {parts[0]: {parts[1]: parse_value(key, raw)}}


def coerce_value(name: str, value: Any, kind: type) -> Any:
    """``value`` checked against ``kind`` (bool, int, float, str, list; ints widen to float). Not collective.

    Other kinds pass ``value`` through unchanged.
    """
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    if kind is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return value
    return value


def merge_tables(*tables: dict) -> dict:
    """Later tables win key by key inside each section (a new dict; the inputs are not changed)."""
    out: dict = {}
    for table in tables:
        for k, v in table.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = {**out[k], **v}
            else:
                out[k] = dict(v) if isinstance(v, dict) else v
    return out
