"""The exchange of the ghost rows a rank's kernel product reads (the local kernel's halo)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = ["Halo"]


class Halo:
    """Values of owned rows that other ranks need, exchanged with one Alltoallv.

    Args:
        comm: the node communicator.
        offsets: ``(size + 1,)`` global index ranges of the ranks' owned rows.
        ghosts: sorted unique global indices this rank needs but does not own.
    """

    def __init__(self, comm: MPI.Comm, offsets: np.ndarray, ghosts: np.ndarray):
        self.comm = comm
        self.ghosts = np.asarray(ghosts, dtype=np.int64)
        owners = np.searchsorted(offsets, self.ghosts, side="right") - 1
        self.recv_counts = np.bincount(owners, minlength=comm.size).astype(np.int64)
        self.send_counts = np.array(comm.alltoall(self.recv_counts.tolist()), dtype=np.int64)
        wanted = np.empty(int(self.send_counts.sum()), dtype=np.int64)
        comm.Alltoallv([self.ghosts, self.recv_counts], [wanted, self.send_counts])
        #: owned rows (local indices) to send, in the order of the receivers
        self.send_rows = wanted - offsets[comm.rank]

    def forward(self, X: np.ndarray, out: np.ndarray):
        """``out[g] = X[ghost g]`` for a ``(rows, S)`` array X of owned rows; ``out`` is
        C-ordered ``(len(ghosts), S)``."""
        S = out.shape[1]
        send = np.ascontiguousarray(X[self.send_rows])
        self.comm.Alltoallv([send, self.send_counts * S], [out, self.recv_counts * S])

    def reverse(self, G: np.ndarray, out: np.ndarray):
        """``out[owned row] += G[g]`` summed over the ranks that hold the row as ghost g;
        ``G`` C-ordered ``(len(ghosts), S)``."""
        S = G.shape[1]
        recv = np.empty((self.send_rows.size, S), dtype=G.dtype)
        self.comm.Alltoallv([np.ascontiguousarray(G), self.recv_counts * S], [recv, self.send_counts * S])
        np.add.at(out, self.send_rows, recv)
