"""Import order for the DOLFINx stack.

The ``dolfinx-solver-real`` binary wheel ships its own MPI; its ``dolfinx_solver``
module must be imported before mpi4py and dolfinx so that the MPI library is found.
On a conda-forge or Docker DOLFINx install the module does not exist and nothing
needs doing.
"""

try:  # pragma: no cover - depends on how DOLFINx was installed
    import dolfinx_solver  # noqa: F401
except ImportError:
    pass
