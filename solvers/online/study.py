"""A study's configuration: members, launch, parameters, data layout, buffer, model and training (TOML).

``load_study(path, overrides)`` reads the TOML file, applies ``--set key=value``
overrides (``section.key``) and checks every value; :class:`StudyConfig` is the
typed result. Relative paths in the file are taken relative to the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

from ..configuration import ConfigError, coerce_value, parse_value

__all__ = ["LAUNCHERS", "StudyConfig", "StudyError", "load_study"]

LAUNCHERS = ("subprocess", "mpmd")


class StudyError(ConfigError):
    """A study configuration value is missing or wrong."""


def _section(cls_name, **fields):
    return dataclasses.make_dataclass(cls_name, [(k, type(v), dataclasses.field(default_factory=lambda v=v: v))
                                             for k, v in fields.items()])


Study = _section(
    "Study", name="study", members=16, concurrency=2, ranks_per_member=1, launcher="subprocess",
    command=["{python}", "-m", "solvers.online", "member", "heat1d"], mpiexec="{mpiexec}", member_timeout_s=300.0,
    silence_timeout_s=60.0, max_retries=2, partial="keep", routing="round_robin", window=4,
    validation_members=0, seed=0, run_dir="online-run", client_timeout_s=300.0, receive="poll",
    connect_timeout_s=60.0, max_failures=50)
Parameters = _section("Parameters", method="lhs", bounds=[[0.0, 1.0]])
Data = _section("Data", inputs=["params", "time"], outputs=["u"], input_shape=[], output_shape=[],
                time_scale=1.0, solver={})
BufferCfg = _section("BufferCfg", policy="firo", capacity=256, watermark=16, reuse=4, ingest_per_step=0)
Train = _section("Train", batch_size=16, max_steps=1000, lr=1e-3, loss="l2rel", validate_every=50,
                 checkpoint_every=0, checkpoint_dir="", test_file="", log_every=50, seed=0,
                 min_steps_after_data=0, min_steps=0, overlap=True, bucket_nbytes=1 << 20,
                 max_wall_s=0.0)


@dataclasses.dataclass
class StudyConfig:
    """Typed study configuration (sections ``study``, ``parameters``, ``data``, ``buffer``, ``model``, ``train``)."""

    study: Any = dataclasses.field(default_factory=Study)
    parameters: Any = dataclasses.field(default_factory=Parameters)
    data: Any = dataclasses.field(default_factory=Data)
    buffer: Any = dataclasses.field(default_factory=BufferCfg)
    model: dict = dataclasses.field(default_factory=lambda: {"model": "mlp", "in_channels": 2, "out_channels": 1})
    train: Any = dataclasses.field(default_factory=Train)
    path: str = ""

    def validate(self) -> None:
        """Check every value; raises :class:`StudyError` naming the key, the value and what was expected."""
        s, b, t = self.study, self.buffer, self.train
        checks = [
            (s.members >= 1, "study.members", s.members, ">= 1"),
            (s.concurrency >= 1, "study.concurrency", s.concurrency, ">= 1"),
            (s.ranks_per_member >= 1, "study.ranks_per_member", s.ranks_per_member, ">= 1"),
            (s.launcher in LAUNCHERS, "study.launcher", s.launcher, f"one of {LAUNCHERS}"),
            (s.partial in ("keep", "drop"), "study.partial", s.partial, "'keep' or 'drop'"),
            (s.routing in ("round_robin", "one"), "study.routing", s.routing, "'round_robin' or 'one'"),
            (s.max_retries >= 0, "study.max_retries", s.max_retries, ">= 0"),
            (s.max_failures >= 0, "study.max_failures", s.max_failures, ">= 0 (0: no limit)"),
            (s.window >= 1, "study.window", s.window, ">= 1"),
            (s.connect_timeout_s > 0, "study.connect_timeout_s", s.connect_timeout_s, "> 0"),
            (s.receive in ("poll", "thread"), "study.receive", s.receive, "'poll' or 'thread'"),
            (0 <= s.validation_members < s.members, "study.validation_members", s.validation_members,
             "0 <= n < members"),
            (b.policy in ("fifo", "firo", "reservoir"), "buffer.policy", b.policy, "fifo, firo or reservoir"),
            (b.capacity >= 1, "buffer.capacity", b.capacity, ">= 1"),
            (1 <= b.watermark <= b.capacity, "buffer.watermark", b.watermark, "1 <= watermark <= capacity"),
            (b.ingest_per_step >= 0, "buffer.ingest_per_step", b.ingest_per_step, ">= 0"),
            (t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1"),
            (t.bucket_nbytes >= 1, "train.bucket_nbytes", t.bucket_nbytes, ">= 1"),
            (t.max_steps >= 1, "train.max_steps", t.max_steps, ">= 1"),
            (t.max_wall_s >= 0, "train.max_wall_s", t.max_wall_s, ">= 0 (0: no limit)"),
            (t.loss in ("l2rel", "mse"), "train.loss", t.loss, "'l2rel' or 'mse'"),
            (len(self.data.outputs) >= 1, "data.outputs", self.data.outputs, "at least one field"),
        ]
        for ok, key, value, expected in checks:
            if not ok:
                raise StudyError(f"{key}: expected {expected}, got {value!r}")
        if not isinstance(s.command, list) or not s.command:
            raise StudyError(f"study.command: expected a non-empty list of strings, got {s.command!r}")

    @property
    def fields(self) -> tuple:
        """Fields a sample needs (inputs other than 'params'/'time', then outputs)."""
        names = [f for f in self.data.inputs if f not in ("params", "time")] + list(self.data.outputs)
        return tuple(dict.fromkeys(names))

    def member_command(self) -> list[str]:
        """``study.command`` with ``{python}`` replaced (the launcher also fills ``{member}``,
        ``{attempt}`` and ``{p0}``, ``{p1}``, ... with the member's identity and parameters)."""
        base = os.path.dirname(self.path) if self.path else os.getcwd()
        out = []
        for c in self.study.command:
            c = c.replace("{python}", sys.executable).replace("{study_dir}", base)
            out.append(c)
        return out

    def to_json(self) -> str:
        """The configuration as canonical JSON (compared between ranks and with checkpoints)."""
        d = {k: dataclasses.asdict(getattr(self, k)) if dataclasses.is_dataclass(getattr(self, k))
             else getattr(self, k) for k in ("study", "parameters", "data", "buffer", "model", "train")}
        return json.dumps(d, sort_keys=True)


def _coerce(name: str, old, text: str):
    """One ``--set`` value, read as every solver reads it (:mod:`solvers.configuration`), typed like ``old``."""
    if isinstance(old, str) and text.strip()[:1] not in ('"', "'"):
        return text.strip()  # unquoted text is the string itself (a path may hold spaces)
    value = parse_value(name, text)
    if old is None or isinstance(old, dict):
        return value
    try:
        return coerce_value(name, value, type(old))
    except ConfigError as exc:
        raise StudyError(str(exc)) from None


def load_study(path: str | None = None, overrides=(), data: dict | None = None) -> StudyConfig:
    """Read a study from TOML ``path`` (or the dict ``data``), apply ``section.key=value`` overrides, validate.

    Not collective (every rank reads the same file).
    """
    import tomllib

    raw = dict(data or {})
    if path:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    cfg = StudyConfig(path=os.path.abspath(path) if path else "")
    for section, values in raw.items():
        if section == "model":
            cfg.model = dict(values)
            continue
        if section not in ("study", "parameters", "data", "buffer", "train"):
            raise StudyError(f"unknown section [{section}] (expected study, parameters, data, buffer, model, train)")
        obj = getattr(cfg, section)
        for key, value in values.items():
            if not hasattr(obj, key):
                raise StudyError(f"{section}.{key}: unknown key (known: {sorted(vars(obj))})")
            old = getattr(obj, key)
            if isinstance(old, float) and isinstance(value, int):
                value = float(value)
            setattr(obj, key, value)
    for item in overrides:
        key, _, text = item.partition("=")
        section, _, name = key.partition(".")
        if section == "model":
            cfg.model[name] = _coerce(key, cfg.model[name], text) if name in cfg.model else parse_value(key, text)
            continue
        obj = getattr(cfg, section, None)
        if obj is None or not hasattr(obj, name):
            raise StudyError(f"--set {item!r}: unknown key {key!r}")
        setattr(obj, name, _coerce(key, getattr(obj, name), text))
    base = os.path.dirname(cfg.path) if cfg.path else os.getcwd()
    for obj, name in ((cfg.study, "run_dir"), (cfg.train, "checkpoint_dir"), (cfg.train, "test_file")):
        value = getattr(obj, name)
        if value and not os.path.isabs(value):
            setattr(obj, name, os.path.normpath(os.path.join(base, value)))
    cfg.validate()
    return cfg
