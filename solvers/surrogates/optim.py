"""Adam and AdamW over a flat parameter buffer, and step / cosine learning-rate schedules.

PyTorch semantics: ``Adam(weight_decay=w)`` adds ``w * p`` to the gradient (L2
penalty); ``AdamW`` multiplies ``p`` by ``1 - lr * w`` before the update (decoupled
decay); both use bias corrections ``1 - beta^t`` and ``eps`` added to
``sqrt(v_hat)``. Complex parameters are their (real, imaginary) float pairs in the
flat buffer, which is what ``torch.optim.Adam`` does with complex tensors
(``view_as_real``). An optimizer may run on any slice of a model's buffers (one
rank's shard of a ZeRO-style sharded state).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from hpcore.arrays import array_module

__all__ = ["Adam", "AdamW", "CosineLR", "StepLR"]


@njit(cache=True)
def _adam_kernel(p, g, m, v, lr, beta1, beta2, eps, bc1, bc2_sqrt, l2, decay):
    step = lr / bc1
    for i in range(p.size):
        gi = g[i] + l2 * p[i]
        pi = p[i] * decay
        mi = beta1 * m[i] + (1.0 - beta1) * gi
        vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pi - step * mi / (math.sqrt(vi) / bc2_sqrt + eps)


class Adam:
    """Adam over one flat buffer (``torch.optim.Adam`` semantics).

    Not collective.

    Parameters
    ----------
    params : Model or 1-D array
        A model (its ``params``/``grads`` are used) or a contiguous parameter array.
    grads : 1-D array, optional
        Gradient array of ``params``' shape (required when ``params`` is an array).
    lr : float
    betas : (float, float)
    eps : float
    weight_decay : float
        L2 penalty added to the gradient.
    """

    decoupled = False

    def __init__(self, params, grads=None, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if hasattr(params, "params") and hasattr(params, "grads"):
            params, grads = params.params, params.grads
        if grads is None or params.shape != grads.shape or params.ndim != 1:
            raise ValueError(f"{type(self).__name__}: params and grads must be 1-D arrays of one shape, got "
                             f"{getattr(params, 'shape', None)} and {getattr(grads, 'shape', None)}")
        if not lr >= 0 or not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"{type(self).__name__}: lr, eps, weight_decay must be >= 0, "
                             f"got {lr}, {eps}, {weight_decay}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas!r}")
        self.params, self.grads = params, grads
        xp = array_module(params)
        self.m = xp.zeros_like(params)
        self.v = xp.zeros_like(params)
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.t = 0

    def step(self) -> None:
        """One update of ``params`` from ``grads`` (in place)."""
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1.0 - b1 ** self.t
        bc2_sqrt = math.sqrt(1.0 - b2 ** self.t)
        l2 = 0.0 if self.decoupled else self.weight_decay
        decay = 1.0 - self.lr * self.weight_decay if self.decoupled else 1.0
        p, g, m, v = self.params, self.grads, self.m, self.v
        xp = array_module(p)
        if xp is np and p.flags.c_contiguous and g.flags.c_contiguous:
            t = p.dtype.type
            _adam_kernel(p, g, m, v, t(self.lr), t(b1), t(b2), t(self.eps), t(bc1), t(bc2_sqrt), t(l2), t(decay))
            return
        gi = g + l2 * p if l2 else g
        if decay != 1.0:
            p *= decay
        m *= b1
        m += (1 - b1) * gi
        v *= b2
        v += (1 - b2) * gi * gi
        p -= (self.lr / bc1) * m / (xp.sqrt(v) / bc2_sqrt + self.eps)

    def state_dict(self) -> dict:
        """Hyperparameters, step count and moment arrays (host copies)."""
        xp = array_module(self.m)
        host = (lambda a: a.get()) if xp is not np else (lambda a: a.copy())
        return {"kind": type(self).__name__, "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "t": self.t, "m": host(self.m), "v": host(self.v)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (kind and buffer size must match)."""
        if state.get("kind") != type(self).__name__:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state is for {state.get('kind')!r}")
        if np.shape(state["m"]) != self.m.shape:
            raise ValueError(f"{type(self).__name__}.load_state_dict: moment shape {np.shape(state['m'])} "
                             f"does not match the buffer {self.m.shape}")
        xp = array_module(self.m)
        self.lr, self.eps = float(state["lr"]), float(state["eps"])
        self.betas = (float(state["betas"][0]), float(state["betas"][1]))
        self.weight_decay, self.t = float(state["weight_decay"]), int(state["t"])
        self.m[...] = xp.asarray(state["m"])
        self.v[...] = xp.asarray(state["v"])


class AdamW(Adam):
    """AdamW: decoupled weight decay (``torch.optim.AdamW``; default ``weight_decay=0.01``)."""

    decoupled = True

    def __init__(self, params, grads=None, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, grads, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class _Schedule:
    """Base: sets ``optimizer.lr`` from the epoch count; ``step()`` once per epoch."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def lr_at(self, epoch: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def step(self) -> None:
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def state_dict(self) -> dict:
        return {"kind": type(self).__name__, "base_lr": self.base_lr, "last_epoch": self.last_epoch,
                **self._params()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != type(self).__name__:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state is for {state.get('kind')!r}")
        self.base_lr, self.last_epoch = float(state["base_lr"]), int(state["last_epoch"])
        for k in self._params():
            setattr(self, k, type(getattr(self, k))(state[k]))
        self.optimizer.lr = self.lr_at(self.last_epoch)


class StepLR(_Schedule):
    """``lr = base_lr * gamma ** (epoch // step_size)`` (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        if int(step_size) != step_size or step_size < 1:
            raise ValueError(f"StepLR: step_size must be a positive integer, got {step_size!r}")
        super().__init__(optimizer)
        self.step_size, self.gamma = int(step_size), float(gamma)

    def _params(self):
        return {"step_size": self.step_size, "gamma": self.gamma}

    def lr_at(self, epoch):
        """Learning rate after ``epoch`` schedule steps."""
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineLR(_Schedule):
    """``lr = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2`` (``CosineAnnealingLR``'s closed form)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):
        if int(T_max) != T_max or T_max < 1:
            raise ValueError(f"CosineLR: T_max must be a positive integer, got {T_max!r}")
        super().__init__(optimizer)
        self.T_max, self.eta_min = int(T_max), float(eta_min)

    def _params(self):
        return {"T_max": self.T_max, "eta_min": self.eta_min}

    def lr_at(self, epoch):
        """Learning rate after ``epoch`` schedule steps."""
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2
