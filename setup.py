"""hpcore: a CUDA-aware MPI layer, communication patterns and solvers for MPI programs on CPUs and GPUs."""

from setuptools import find_packages, setup

setup(
    name="hpcore",
    version="0.1.0",
    description="CUDA-aware MPI layer: canonical datatype packing, halo exchange, ring and hierarchical collectives",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # 3.11+: solvers.flux_transport reads its TOML configs with the standard library's tomllib
    python_requires=">=3.11",
    packages=find_packages(include=["hpcore", "hpcore.*", "comms", "comms.*", "solvers", "solvers.*"]),
    # mpi4py is required; it builds against the MPI found by `mpicc` (the supercomputer case)
    # unless the `mpich` extra brings a wheel MPI for machines that have none.
    install_requires=["mpi4py>=4.0", "numpy>=1.23", "h5py>=3.0", "numba>=0.59"],
    # py.typed: the packages ship inline type hints (PEP 561); the Slurm templates are package data
    # so that `python -m hpcore.slurm render` works from a wheel (hpcore.slurm lists that directory)
    package_data={
        "hpcore": ["py.typed", "templates/slurm/*.sbatch"],
        "comms": ["py.typed"],
        "solvers": ["py.typed"],
        "solvers.flux_transport": ["default.toml"],
        "solvers.surrogates": ["default.toml"],
        # the online-training client for C and Fortran members (built with mpicc/mpif90 by the user)
        "solvers.online": ["c/*.h", "c/*.c", "c/*.f90"],
    },
    extras_require={
        "mpich": ["mpich>=4.2"],
        "gpu": ["cupy-cuda12x>=13"],
        "petsc": ["petsc4py>=3.20"],
        "test": ["pytest>=7", "pytest-mpi>=0.6", "pytest-timeout>=2.1", "matplotlib>=3.6"],
        "lint": ["ruff>=0.6"],
        "plot": ["matplotlib>=3.6"],
        # optional: the torch adapter and the neuraloperator comparisons (CPU build: pip install torch==2.13.0)
        "torch": ["torch>=2.1"],
    },
    entry_points={"console_scripts": ["hpcore-measure=hpcore.measure:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Typing :: Typed",
        "Topic :: Scientific/Engineering",
        "Topic :: System :: Distributed Computing",
    ],
)
