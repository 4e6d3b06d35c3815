"""Models over one flat parameter buffer: the base class, MLP, FNO, and ``build_model``.

A model owns two contiguous 1-D real arrays, ``params`` and ``grads`` (float32 or
float64), and hands each layer views of them. Layers are laid out in forward
order, so the last layer's parameters sit at the end of the buffer and backward
finalises gradient slices from the end toward the start: ``backward(dy,
on_grads_ready)`` calls ``on_grads_ready(start, stop)`` each time
``grads[start:stop]`` is final, in decreasing order, and the calls together cover
``[0, params.size)`` exactly once. A data-parallel trainer launches the allreduce of
each finished bucket while backward continues (as PyTorch DDP does).

Complex parameters start at an even offset (a padding float is inserted where
needed, so device kernels see aligned complex numbers); ``n_params`` counts the
real trainable numbers, ``params.size`` the buffer length (``>= n_params``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from hpcore.arrays import array_module

from .layers import GELU, Dense
from .spectral import SpectralConv

__all__ = ["FNO", "MLP", "MODEL_KINDS", "Model", "build_model", "grid_channels"]

_DTYPES = ("float32", "float64")


def _check_dtype(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in _DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return name


def _positive_int(cls, key, value, minimum=1):
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{cls}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Model:
    """Base class: flat buffers, layer views, the backward hook, config round trip.

    Not collective. Subclasses build ``self.layers`` (a list of ``(name, layer)`` in
    forward order) in ``_build`` and implement ``_forward``/``_backward``.
    """

    kind = "model"
    #: config keys with their defaults (subclasses extend); ``build_model`` accepts exactly these
    defaults: ClassVar[dict] = {}

    def __init__(self, config: dict | None = None, **kwargs):
        cfg = dict(self.defaults)
        given = dict(config or {})
        given.update(kwargs)
        given.pop("model", None)
        unknown = sorted(set(given) - set(cfg) - {"dtype", "seed"})
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown config keys {unknown}; expected some of "
                             f"{sorted(set(cfg) | {'dtype', 'seed'})}")
        cfg.update(given)
        cfg["dtype"] = _check_dtype(cfg.get("dtype", "float64"))
        cfg["seed"] = int(cfg.get("seed", 0))
        self._validate(cfg)
        self.config = {"model": self.kind, **cfg}
        self.dtype = np.dtype(cfg["dtype"])
        self.layers = self._build(cfg)
        self._by_name = dict(self.layers)
        self._enable_buffer_reuse()
        self._allocate()
        self.init_params(cfg["seed"])

    # -- subclass hooks -------------------------------------------------------------
    def _validate(self, cfg):
        pass

    def _build(self, cfg) -> list:  # pragma: no cover - interface
        raise NotImplementedError

    def _forward(self, x):  # pragma: no cover - interface
        raise NotImplementedError

    def _backward(self, dy, ready):  # pragma: no cover - interface
        raise NotImplementedError

    def _enable_buffer_reuse(self):
        """Let layers reuse their output / input-gradient buffers between steps.

        Safe because within one forward (backward) pass every layer runs once and its
        buffer is consumed before that layer runs again; the arrays handed back to the
        caller (the last layer's output, the first layer's input gradient) are excluded.
        """
        names = [n for n, _ in self.layers]
        for name, layer in self.layers:
            layer.reuse_output = name not in self._escaping_outputs(names)
            layer.reuse_grad = name not in self._escaping_grads(names)

    def _escaping_outputs(self, names):
        return {names[-1]}

    def _escaping_grads(self, names):
        return {names[0]}

    # -- buffers ------------------------------------------------------------------------
    def _allocate(self, xp=np):
        entries, offset = [], 0
        self._layer_range = {}
        for lname, layer in self.layers:
            start = offset
            for spec in layer.param_specs():
                if spec.is_complex and offset % 2:
                    offset += 1
                entries.append((lname, layer, spec, offset))
                offset += spec.n_real
            self._layer_range[lname] = (start, offset)
        self._entries = entries
        self.params = xp.zeros(offset, dtype=self.dtype)
        self.grads = xp.zeros(offset, dtype=self.dtype)
        self.n_params = int(sum(spec.n_real for _, _, spec, _ in entries))
        self._bind()

    def _bind(self):
        complex_dtype = np.result_type(self.dtype, np.complex64)
        per_layer = {lname: ({}, {}) for lname, _ in self.layers}
        for lname, layer, spec, off in self._entries:
            for buf, target in ((self.params, 0), (self.grads, 1)):
                view = buf[off:off + spec.n_real]
                if spec.is_complex:
                    view = view.view(complex_dtype)
                per_layer[lname][target][spec.name] = view.reshape(spec.shape)
        for lname, layer in self.layers:
            layer.bind(*per_layer[lname])

    def init_params(self, seed: int = 0) -> None:
        """Draw every parameter from its layer's initialiser (``numpy.random.default_rng(seed)``)."""
        rng = np.random.default_rng(seed)
        host = np.zeros(self.params.size, dtype=self.dtype)
        for _, _, spec, off in self._entries:
            value = np.asarray(spec.init(rng, spec.shape))
            if spec.is_complex:
                pairs = np.empty(spec.shape + (2,), dtype=np.float64)
                pairs[..., 0], pairs[..., 1] = value.real, value.imag
                value = pairs
            host[off:off + spec.n_real] = value.reshape(-1)
        xp = array_module(self.params)
        self.params[...] = xp.asarray(host)
        self.grads[...] = 0

    def zero_grad(self) -> None:
        """Set every gradient to zero (in place; views stay valid)."""
        self.grads.fill(0)

    def param_groups(self) -> list:
        """One dict per parameter tensor in buffer order.

        Keys: ``name`` ("layer.param"), ``start``/``stop`` (float offsets into
        ``params``), ``shape``, ``complex``, ``layer``.
        """
        return [{"name": f"{lname}.{spec.name}", "layer": lname, "start": off, "stop": off + spec.n_real,
                 "shape": spec.shape, "complex": spec.is_complex}
                for lname, _, spec, off in self._entries]

    def named_parameters(self) -> dict:
        """``"layer.param" -> view`` (complex views for complex parameters)."""
        return {f"{lname}.{name}": view for lname, layer in self.layers for name, view in layer.p.items()}

    def named_grads(self) -> dict:
        """``"layer.param" -> gradient view``."""
        return {f"{lname}.{name}": view for lname, layer in self.layers for name, view in layer.g.items()}

    def layer_ranges(self) -> list:
        """``(layer name, start, stop)`` in buffer order (ranges tile the buffer)."""
        return [(lname, *self._layer_range[lname]) for lname, _ in self.layers]

    @property
    def xp(self):
        """The array module (numpy or cupy) holding the parameters."""
        return array_module(self.params)

    # -- conversions --------------------------------------------------------------------
    def astype(self, dtype) -> Model:
        """A copy of this model with parameters converted to ``dtype`` (float32/float64)."""
        cfg = dict(self.config)
        cfg["dtype"] = _check_dtype(dtype)
        other = build_model(cfg)
        other.to(self.xp)
        other.params[...] = self.params.astype(other.dtype)
        return other

    def to(self, xp) -> Model:
        """Move parameters and gradients to array module ``xp`` (numpy or cupy), in place."""
        if xp is array_module(self.params):
            return self
        params, grads = xp.asarray(self.params), xp.asarray(self.grads)
        self.params, self.grads = params, grads
        self._bind()
        return self

    def copy(self) -> Model:
        """An independent copy (same config and parameter values)."""
        other = build_model(copy.deepcopy(self.config))
        other.to(self.xp)
        other.params[...] = self.params
        return other

    # -- forward / backward --------------------------------------------------------------
    def forward(self, x):
        """Run the model; saves what backward needs. ``x`` is cast to the model's dtype."""
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        return self._forward(x)

    __call__ = forward

    def predict(self, x):
        """Forward without keeping activations for backward (evaluation)."""
        try:
            return self.forward(x)
        finally:
            for _, layer in self.layers:
                layer.clear()

    def backward(self, dy, on_grads_ready: Callable[[int, int], None] | None = None):
        """Accumulate ``dL/dparams`` into ``grads`` and return ``dL/dx``.

        ``on_grads_ready(start, stop)`` is called, in decreasing ``start`` order, each
        time ``grads[start:stop]`` is final for this backward pass.
        """
        if dy.dtype != self.dtype:
            dy = dy.astype(self.dtype)
        calls = []

        def ready(lname):
            start, stop = self._layer_range[lname]
            if stop > start:
                if calls and start >= calls[-1]:
                    raise RuntimeError(f"gradient range of {lname} finished out of order")
                calls.append(start)
                if on_grads_ready is not None:
                    on_grads_ready(start, stop)

        dx = self._backward(dy, ready)
        for _, layer in self.layers:
            layer.clear()
        return dx

    # -- helpers for subclasses ----------------------------------------------------------
    def _seq_forward(self, names, x):
        for n in names:
            x = self._layer[n].forward(x)
        return x

    def _seq_backward(self, names, dy, ready):
        for n in reversed(names):
            dy = self._layer[n].backward(dy)
            ready(n)
        return dy

    @property
    def _layer(self):
        return self._by_name

    def __repr__(self):
        return f"{type(self).__name__}({self.config}, n_params={self.n_params})"


class MLP(Model):
    """Pointwise multi-layer perceptron on the channel axis (GELU between dense layers).

    Not collective. Input ``(batch, in_channels, *spatial)`` (``spatial`` may be
    empty: a plain ``(batch, features)`` MLP).

    Config keys: ``in_channels``, ``out_channels``, ``hidden_channels``,
    ``n_layers`` (number of dense layers, >= 1), ``dtype``, ``seed``.
    """

    kind = "mlp"
    defaults: ClassVar[dict] = {"in_channels": 1, "out_channels": 1, "hidden_channels": 64, "n_layers": 2}

    def _validate(self, cfg):
        for key in self.defaults:
            _positive_int("MLP", key, cfg[key])

    def _build(self, cfg):
        widths = [cfg["in_channels"]] + [cfg["hidden_channels"]] * (cfg["n_layers"] - 1) + [cfg["out_channels"]]
        layers = []
        for i in range(cfg["n_layers"]):
            layers.append((f"fc{i}", Dense(widths[i], widths[i + 1])))
            if i < cfg["n_layers"] - 1:
                layers.append((f"act{i}", GELU()))
        self._names = [n for n, _ in layers]
        return layers

    def _forward(self, x):
        return self._seq_forward(self._names, x)

    def _backward(self, dy, ready):
        return self._seq_backward(self._names, dy, ready)


def grid_channels(xp, spatial, dtype):
    """Coordinates ``x_a = i / N_a`` on ``[0, 1)`` per spatial axis, shape ``(ndim, *spatial)``.

    neuraloperator's positional embedding (``linspace(0, 1, N + 1)[:-1]``).
    """
    axes = [xp.arange(n, dtype=np.float64) / n for n in spatial]
    mesh = xp.meshgrid(*axes, indexing="ij")
    return xp.stack(mesh).astype(dtype)


class FNO(Model):
    """Fourier neural operator (neuraloperator 0.3.0's ``FNO`` architecture), 1-D to 3-D.

    Not collective. ``lifting`` (dense, or a two-layer channel MLP when
    ``lifting_channels`` > 0), ``n_layers`` Fourier blocks ``x <- act(K x + S x)``
    (``K`` spectral convolution with bias, ``S`` pointwise linear skip without bias,
    no activation after the last block), and a two-layer ``projection`` MLP.

    Parameters
    ----------
    n_modes : sequence of int
        Retained modes per spatial axis (``len(n_modes)`` = 1, 2 or 3).
    hidden_channels : int
        Width of the Fourier blocks.
    in_channels, out_channels : int
        Data channels in and out (grid channels not included).
    lifting_channels, projection_channels : int
        Hidden widths of the lifting and projection MLPs (0 lifting: one dense layer).
    n_layers : int
        Number of Fourier blocks.
    positional_embedding : bool
        Append the grid coordinates ``i / N`` (one channel per axis) to the input.

    Other Parameters
    ----------------
    fft_norm : {"backward", "forward", "ortho"}
    neuralop_odd_shift : bool
        neuraloperator 0.3.0's output shift on odd-sized axes (see ``SpectralConv``).
    dtype : {"float32", "float64"}
    seed : int
    """

    kind = "fno"
    defaults: ClassVar[dict] = {"n_modes": (16, 16), "hidden_channels": 32, "in_channels": 1, "out_channels": 1,
                "lifting_channels": 256, "projection_channels": 256, "n_layers": 4,
                "positional_embedding": False, "fft_norm": "backward", "neuralop_odd_shift": False}

    def _validate(self, cfg):
        modes = cfg["n_modes"]
        modes = [modes] if isinstance(modes, (int, np.integer)) else list(modes)
        if not 1 <= len(modes) <= 3 or any(isinstance(m, bool) or int(m) != m or m < 1 for m in modes):
            raise ValueError(f"{type(self).__name__}: n_modes must be 1 to 3 positive integers, got {cfg['n_modes']!r}")
        cfg["n_modes"] = [int(m) for m in modes]
        for key in ("hidden_channels", "in_channels", "out_channels", "projection_channels", "n_layers"):
            cfg[key] = _positive_int(type(self).__name__, key, cfg[key])
        cfg["lifting_channels"] = _positive_int(type(self).__name__, "lifting_channels", cfg["lifting_channels"], 0)
        cfg["positional_embedding"] = bool(cfg["positional_embedding"])
        cfg["neuralop_odd_shift"] = bool(cfg["neuralop_odd_shift"])

    def _spectral(self, cfg, i):
        return SpectralConv(cfg["hidden_channels"], cfg["hidden_channels"], cfg["n_modes"], bias=True,
                            fft_norm=cfg["fft_norm"], neuralop_odd_shift=cfg["neuralop_odd_shift"])

    def _build(self, cfg):
        self.ndim = len(cfg["n_modes"])
        width = cfg["hidden_channels"]
        cin = cfg["in_channels"] + (self.ndim if cfg["positional_embedding"] else 0)
        layers = []
        if cfg["lifting_channels"]:
            layers += [("lifting.fc0", Dense(cin, cfg["lifting_channels"])), ("lifting.act", GELU()),
                       ("lifting.fc1", Dense(cfg["lifting_channels"], width))]
        else:
            layers += [("lifting.fc0", Dense(cin, width))]
        self._lifting = [n for n, _ in layers]
        self._blocks = []
        for i in range(cfg["n_layers"]):
            names = (f"blocks.{i}.spectral", f"blocks.{i}.skip", f"blocks.{i}.act")
            layers += [(names[0], self._spectral(cfg, i)), (names[1], Dense(width, width, bias=False))]
            if i < cfg["n_layers"] - 1:
                layers.append((names[2], GELU()))
            self._blocks.append(names)
        proj = [("projection.fc0", Dense(width, cfg["projection_channels"])), ("projection.act", GELU()),
                ("projection.fc1", Dense(cfg["projection_channels"], cfg["out_channels"]))]
        layers += proj
        self._projection = [n for n, _ in proj]
        return layers

    def _forward(self, x):
        cfg = self.config
        if x.ndim != 2 + self.ndim or x.shape[1] != cfg["in_channels"]:
            raise ValueError(f"{type(self).__name__}: input must be (batch, {cfg['in_channels']}, "
                             f"{self.ndim} spatial axes), got shape {x.shape}")
        xp = array_module(x)
        if cfg["positional_embedding"]:
            grid = grid_channels(xp, x.shape[2:], self.dtype)
            grid = xp.broadcast_to(grid[None], (x.shape[0],) + grid.shape)
            x = xp.concatenate([x, grid], axis=1)
        layer = self._layer
        h = self._seq_forward(self._lifting, x)
        n = len(self._blocks)
        for i, (spec, skip, act) in enumerate(self._blocks):
            h = layer[spec].forward(h) + layer[skip].forward(h)
            if i < n - 1:
                h = layer[act].forward(h)
        return self._seq_forward(self._projection, h)

    def _backward(self, dy, ready):
        layer = self._layer
        dh = self._seq_backward(self._projection, dy, ready)
        n = len(self._blocks)
        for i in reversed(range(n)):
            spec, skip, act = self._blocks[i]
            if i < n - 1:
                dh = layer[act].backward(dh)
            d_skip = layer[skip].backward(dh)
            ready(skip)
            d_spec = layer[spec].backward(dh)
            ready(spec)
            dh = d_skip + d_spec
        dx = self._seq_backward(self._lifting, dh, ready)
        return dx[:, :self.config["in_channels"]]


MODEL_KINDS: dict = {"mlp": MLP, "fno": FNO}


def build_model(config: dict) -> Model:
    """Build a model from its ``config`` dict (``model.config`` round-trips).

    ``config["model"]`` picks the class: "mlp", "fno", "tfno".
    """
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"build_model: config must be a dict with a 'model' key, got {config!r}")
    kind = str(config["model"]).lower()
    if kind == "tfno" and "tfno" not in MODEL_KINDS:
        from . import factorized  # noqa: F401  (registers TFNO)
    if kind not in MODEL_KINDS:
        raise ValueError(f"build_model: model must be one of {sorted(set(MODEL_KINDS) | {'tfno'})}, got {kind!r}")
    return MODEL_KINDS[kind](config)
