"""The rank layout: the node partition and the sample groups.

The node mesh is partitioned by DOLFINx over ``node_comm``; samples may in addition be
split across groups of ranks, each holding the whole node mesh (:func:`split_comm`).
"""

from dataclasses import dataclass

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn.errors import InputError

__all__ = ["Layout", "split_comm"]


@dataclass
class Layout:
    """How ranks are used: ``node_comm`` partitions the node mesh, ``sample_comm``
    connects the groups that split the samples (rank i of each node group)."""

    world: MPI.Comm
    node_comm: MPI.Comm
    sample_comm: MPI.Comm

    def sample_range(self, S: int) -> tuple[int, int]:
        """Half-open range of the global samples handled by this rank's group."""
        g, G = self.sample_comm.rank, self.sample_comm.size
        counts = np.full(G, S // G) + (np.arange(G) < S % G)
        start = int(counts[:g].sum())
        return start, start + int(counts[g])


def split_comm(comm: MPI.Comm = MPI.COMM_WORLD, sample_groups: int = 1) -> Layout:
    """Split ``comm`` into ``sample_groups`` groups of ranks.

    Each group holds the whole node mesh (partitioned over its ``comm.size //
    sample_groups`` ranks) and a contiguous share of the samples. ``sample_groups=1``
    is pure node parallelism, ``sample_groups=comm.size`` pure data parallelism.
    """
    if sample_groups < 1 or comm.size % sample_groups:
        raise InputError(
            f"sample_groups={sample_groups} must divide the number of ranks {comm.size}"
        )
    per = comm.size // sample_groups
    node_comm = comm.Split(color=comm.rank // per, key=comm.rank)
    sample_comm = comm.Split(color=comm.rank % per, key=comm.rank)
    return Layout(comm, node_comm, sample_comm)
