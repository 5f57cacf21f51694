"""Shared fixtures. Tests are MPI-agnostic: the serial run executes all of them, the
MPI runs (``mpirun -n 2|3 python -m pytest -m mpi``) the ones marked ``mpi``, which
compare the parallel result with a serial one computed in-process on COMM_SELF."""

import fem_dnn  # noqa: F401  (DOLFINx import order)
import numpy as np
import pytest
from mpi4py import MPI


@pytest.fixture
def comm():
    return MPI.COMM_WORLD


def observed_orders(errors):
    e = np.asarray(errors)
    return np.log2(e[:-1] / e[1:])


@pytest.fixture
def tmp_shared(tmp_path_factory):
    """A temporary folder with the same path on every rank."""
    path = None
    if MPI.COMM_WORLD.rank == 0:
        path = str(tmp_path_factory.mktemp("shared"))
    return MPI.COMM_WORLD.bcast(path, root=0)
