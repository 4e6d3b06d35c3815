"""solvers.surrogates: neural PDE surrogates (MLP, FNO, TFNO) on NumPy/CuPy with their own backward passes.

Parameters and gradients of a model are views of one flat buffer each
(``model.params``, ``model.grads``); ``model.backward(dy, on_grads_ready)`` reports
finished gradient slices from the end of the buffer toward the start so a
data-parallel trainer can overlap its allreduce with the backward pass.
Importing does no MPI or GPU work; torch is never needed (see ``torch_interop``).
"""

from .burgers import burgers_1d, heat_1d
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    read_config,
    save_checkpoint,
)
from .darcy import DarcySolver, generate_darcy
from .data import ArrayDataset, GaussianNormalizer, load_darcy_pt, load_h5, neuralop_file
from .domain import DomainTrainer, MultigridPatches
from .factorized import TFNO, CPSpectralConv, TuckerSpectralConv
from .layers import GELU, Dense, Layer, ParamSpec
from .losses import H1Loss, LpLoss, relative_l2
from .models import FNO, MLP, Model, build_model
from .optim import Adam, AdamW, CosineLR, StepLR
from .parallel import DataParallel
from .spectral import SpectralConv
from .training import TrainConfig, Trainer

__all__ = [
    "ArrayDataset",
    "DarcySolver",
    "DataParallel",
    "DomainTrainer",
    "GaussianNormalizer",
    "MultigridPatches",
    "TrainConfig",
    "Trainer",
    "burgers_1d",
    "generate_darcy",
    "heat_1d",
    "load_darcy_pt",
    "load_h5",
    "neuralop_file",
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
