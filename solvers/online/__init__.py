"""solvers.online: online surrogate training after Melissa, over MPI (clients in Python, C and Fortran).

Members call three functions (:func:`init`, :func:`send`, :func:`finalize`);
trainer ranks receive while they train (:class:`OnlineTrainer`). Importing does
no MPI work. See ``python -m solvers.online --help``.
"""

from .buffers import FIFOBuffer, FIROBuffer, ReservoirBuffer, make_buffer
from .client import Client, finalize, init, send
from .launcher import Launcher
from .sampling import ParameterSampler
from .server import Receiver
from .study import StudyConfig, StudyError, load_study
from .trainer import OnlineTrainer

__all__ = [
    "Client",
    "FIFOBuffer",
    "FIROBuffer",
    "Launcher",
    "OnlineTrainer",
    "ParameterSampler",
    "Receiver",
    "ReservoirBuffer",
    "StudyConfig",
    "StudyError",
    "finalize",
    "init",
    "load_study",
    "make_buffer",
    "send",
]
