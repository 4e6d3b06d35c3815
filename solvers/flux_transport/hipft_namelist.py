"""A small reader of Fortran namelist files (HipFT's ``hipft.in``).

Covers what list-directed namelist input allows and HipFT's decks use: groups
``&name ... /`` (also ``&end`` / ``$end``), case-insensitive names, values separated
by commas, blanks or line ends, ``!`` comments outside strings, strings in single
or double quotes (a doubled quote inside is one quote), logicals (``.true.``,
``.false.``, ``T``, ``F``, ``.t``, ``f`` ...), integers, reals with ``e`` or ``d``
exponents (``1.5d-3``), repeat counts (``3*1.0``; ``3*`` leaves three values
unset), and array elements or sections on the left (``x(2) = 1.0``, ``x(2:4) =
1, 2, 3``). Text outside groups is ignored, as Fortran does. Complex values and
derived-type components are refused with the line number.

Not collective; pure Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["UNSET", "Namelist", "NamelistError", "parse_namelist", "read_namelist"]


class NamelistError(ValueError):
    """The namelist text cannot be read (names the file, line and what was found)."""


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()
"""Placeholder of an element a null value (``3*`` or ``,,``) left unset."""


@dataclass
class _Assignment:
    name: str
    start: int | None  # 1-based first index, None for the whole variable
    stop: int | None
    values: list
    line: int


@dataclass
class Namelist:
    """The assignments of one namelist group, in file order.

    ``values[name]`` is the resolved value: a scalar when the variable was given
    exactly one value without an index, else a list from index 1 up to the
    highest index set (``UNSET`` where nothing was given). ``lines[name]`` is the
    line of its last assignment.
    """

    group: str
    values: dict = field(default_factory=dict)
    lines: dict = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self.values

    def __getitem__(self, name: str):
        return self.values[name.lower()]

    def get(self, name: str, default=None):
        """The value of ``name`` (any case), or ``default``."""
        return self.values.get(name.lower(), default)

    def keys(self):
        """The names assigned (lower case), in file order."""
        return self.values.keys()


_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\f]+)
  | (?P<nl>\n)
  | (?P<comment>![^\n]*)
  | (?P<str>'(?:[^']|'')*'|"(?:[^"]|"")*")
  | (?P<amp>[&$][A-Za-z_][A-Za-z0-9_]*)
  | (?P<slash>/)
  | (?P<comma>,)
  | (?P<semi>;)
  | (?P<eq>=)
  | (?P<lpar>\()
  | (?P<rpar>\))
  | (?P<colon>:)
  | (?P<word>[^\s,/=()!'";:]+)
""", re.VERBOSE)

_INT = re.compile(r"^[+-]?\d+$")
_REAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eEdDqQ][+-]?\d+)?$")
_LOGICAL = re.compile(r"^\.?([tTfF])[A-Za-z]*\.?$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_REPEAT = re.compile(r"^(\d+)\*(.*)$")


def _tokens(text: str, source: str):
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise NamelistError(f"{source}:{line}: cannot read {text[pos:pos + 20]!r}")
        kind = m.lastgroup
        value = m.group()
        if kind == "nl":
            line += 1
        elif kind == "str":
            line += value.count("\n")
            yield "str", value, line
        elif kind not in ("ws", "comment"):
            yield kind, value, line
        pos = m.end()


def _scalar(word: str, source: str, line: int):
    """A non-string value token: logical, integer or real."""
    if _INT.match(word):
        return int(word)
    if _REAL.match(word):
        return float(re.sub(r"[dDqQ]", "e", word))
    if _LOGICAL.match(word) and (word[0] == "." or len(word) == 1 or word.lower() in ("true", "false")):
        return _LOGICAL.match(word).group(1).lower() == "t"
    raise NamelistError(f"{source}:{line}: cannot read the value {word!r} (expected a number, a logical such as "
                        ".true., or a quoted string)")


def _unquote(s: str) -> str:
    q = s[0]
    return s[1:-1].replace(q + q, q)


def parse_namelist(text: str, source: str = "<namelist>") -> dict:
    """Every group of ``text`` as ``{group name (lower case): Namelist}``. Not collective.

    Raises :class:`NamelistError` naming ``source`` and the line of anything it
    cannot read, or a group that is not closed.
    """
    groups: dict = {}
    toks = list(_tokens(text, source))
    i = 0
    n = len(toks)
    while i < n:
        kind, value, line = toks[i]
        if kind != "amp" or value[1:].lower() == "end":
            i += 1  # text outside a group is ignored
            continue
        group = value[1:].lower()
        i += 1
        assigns: list = []
        closed = False
        current: _Assignment | None = None
        while i < n:
            kind, value, line = toks[i]
            if kind == "slash" or (kind == "amp" and value[1:].lower() == "end"):
                closed = True
                i += 1
                break
            if kind in ("comma", "semi"):
                # a comma after a value separates; two in a row (or right after '=') is a null value
                if current is not None and i > 0 and toks[i - 1][0] in ("comma", "eq", "semi"):
                    current.values.append(UNSET)
                i += 1
                continue
            # a new assignment starts with NAME [ (index) ] =
            if kind == "word" and _NAME.match(value):
                j = i + 1
                start = stop = None
                if j < n and toks[j][0] == "lpar":
                    k = j + 1
                    parts: list = []
                    while k < n and toks[k][0] != "rpar":
                        parts.append(toks[k])
                        k += 1
                    if k >= n:
                        raise NamelistError(f"{source}:{line}: unclosed '(' after {value!r}")
                    start, stop = _index(parts, value, source, line)
                    j = k + 1
                if j < n and toks[j][0] == "eq":
                    current = _Assignment(value.lower(), start, stop, [], line)
                    assigns.append(current)
                    i = j + 1
                    continue
                if "%" in value:
                    raise NamelistError(f"{source}:{line}: derived-type components are not supported ({value!r})")
            if current is None:
                raise NamelistError(f"{source}:{line}: expected 'name = value' in group &{group}, found {value!r}")
            if kind == "str":
                current.values.append(_unquote(value))
            elif kind == "word":
                m = _REPEAT.match(value)
                if m:
                    count = int(m.group(1))
                    rest = m.group(2)
                    if rest == "":
                        # 'r*' followed by a string token, or a null repeat
                        if i + 1 < n and toks[i + 1][0] == "str" and toks[i + 1][2] == line:
                            current.values.extend([_unquote(toks[i + 1][1])] * count)
                            i += 2
                            continue
                        current.values.extend([UNSET] * count)
                    else:
                        current.values.extend([_scalar(rest, source, line)] * count)
                else:
                    current.values.append(_scalar(value, source, line))
            elif kind == "lpar":
                raise NamelistError(f"{source}:{line}: complex values are not supported (in {current.name!r})")
            else:
                raise NamelistError(f"{source}:{line}: unexpected {value!r} in the values of {current.name!r}")
            i += 1
        if not closed:
            raise NamelistError(f"{source}: group &{group} is not closed with '/'")
        groups[group] = _resolve(group, assigns, source)
    return groups


def _index(parts, name, source, line):
    words = [p[1] for p in parts]
    try:
        if len(words) == 1:
            a = int(words[0])
            return a, a
        if len(words) == 3 and words[1] == ":":
            return int(words[0]), int(words[2])
    except ValueError:
        pass
    raise NamelistError(f"{source}:{line}: cannot read the index ({''.join(words)}) of {name!r}; expected (i) or "
                        "(i:j)")


def _resolve(group: str, assigns: list, source: str) -> Namelist:
    nl = Namelist(group)
    arrays: dict = {}
    for a in assigns:
        vals = a.values
        if not vals:
            raise NamelistError(f"{source}:{a.line}: {a.name!r} has no value")
        if a.start is None and len(vals) == 1 and a.name not in arrays:
            nl.values[a.name] = vals[0]
            nl.lines[a.name] = a.line
            continue
        arr = arrays.setdefault(a.name, {})
        prev = nl.values.get(a.name)
        if a.name in nl.values and not isinstance(prev, list):
            arr[1] = prev
        first = a.start if a.start is not None else 1
        if first < 1:
            raise NamelistError(f"{source}:{a.line}: index {first} of {a.name!r}: HipFT's arrays start at 1")
        if a.stop is not None and a.stop >= first and len(vals) > a.stop - first + 1:
            raise NamelistError(f"{source}:{a.line}: {len(vals)} values for {a.name}({a.start}:{a.stop})")
        for k, v in enumerate(vals):
            if v is not UNSET:
                arr[first + k] = v
        top = max(arr) if arr else 0
        nl.values[a.name] = [arr.get(k, UNSET) for k in range(1, top + 1)]
        nl.lines[a.name] = a.line
    return nl


def read_namelist(path: str, group: str | None = None):
    """Read ``path``; return one :class:`Namelist` (``group`` given) or ``{name: Namelist}``. Not collective.

    Raises :class:`NamelistError` (also for a missing file or group).
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        raise NamelistError(f"{path}: cannot read: {exc.strerror or exc}") from None
    groups = parse_namelist(text, source=path)
    if group is None:
        return groups
    if group.lower() not in groups:
        found = ", ".join("&" + g for g in groups) or "none"
        raise NamelistError(f"{path}: no namelist group &{group} (found: {found})")
    return groups[group.lower()]
