"""Slurm in one place: the task's environment, network levels, and the batch templates.

- :mod:`hpcore.slurm.env`: :func:`slurm_env` reads a task's Slurm facts
  (``SLURM_PROCID``, ``SLURM_NODEID``, tasks per node, GPUs, ``SLURM_TOPOLOGY_ADDR``);
  :func:`gather_topology_addrs` and :func:`switch_depths` give the switch levels that
  :class:`comms.Hierarchy` detects.
- :mod:`hpcore.slurm.render`: fills the templates installed in
  ``hpcore/templates/slurm/`` (``python -m hpcore.slurm list``, ``... render cpu
  --nodes 2 --tasks-per-node 4``).

Importing does no MPI work.
"""

from .env import (
                  SlurmInfo,
                  env_index_list,
                  env_int,
                  format_tasks_per_node,
                  gather_topology_addrs,
                  parse_tasks_per_node,
                  slurm_env,
                  switch_depths,
)
from .render import (
                  LAUNCHERS,
                  MPI_STACKS,
                  VARIABLES,
                  Template,
                  Variable,
                  detect_mpi,
                  launch_command,
                  launcher_for,
                  list_templates,
                  load_template,
                  main,
                  mpi_stack_of,
                  render,
                  template_dir,
)

__all__ = [
    "SlurmInfo",
    "slurm_env",
    "parse_tasks_per_node",
    "format_tasks_per_node",
    "gather_topology_addrs",
    "switch_depths",
    "env_int",
    "env_index_list",
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
