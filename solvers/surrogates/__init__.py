"""solvers.surrogates: neural PDE surrogates (MLP, FNO, TFNO) on NumPy/CuPy with their own backward passes.

Parameters and gradients of a model are views of one flat buffer each
(``model.params``, ``model.grads``); ``model.backward(dy, on_grads_ready)`` reports
finished gradient slices from the end of the buffer toward the start so a
data-parallel trainer can overlap its allreduce with the backward pass.
Importing does no MPI or GPU work; torch is never needed (see ``torch_interop``).
"""

from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    read_config,
    save_checkpoint,
)
from .factorized import TFNO, CPSpectralConv, TuckerSpectralConv
from .layers import GELU, Dense, Layer, ParamSpec
from .losses import H1Loss, LpLoss, relative_l2
from .models import FNO, MLP, Model, build_model
from .optim import Adam, AdamW, CosineLR, StepLR
from .spectral import SpectralConv

__all__ = [
    "FNO",
    "GELU",
    "MLP",
    "TFNO",
    "Adam",
    "AdamW",
    "CPSpectralConv",
    "CheckpointError",
    "CosineLR",
    "Dense",
    "H1Loss",
    "Layer",
    "LpLoss",
    "Model",
    "ParamSpec",
    "SpectralConv",
    "StepLR",
    "TuckerSpectralConv",
    "build_model",
    "load_checkpoint",
    "load_model",
    "read_config",
    "relative_l2",
    "save_checkpoint",
]
