"""The memory order of batch arrays, and the copies between orders.

A batch of states is an ``(n_local, S)`` array in Fortran order (each sample's column
contiguous: the layout PETSc's per-sample vectors and the readout read). Some products
work in C order (samples innermost: the grid kernel's padded boxes, a sparse matrix's
rows, the max pooling's windows), so a state changes order on the way in and out.

One numpy assignment of a C-ordered ``(n, S)`` array into Fortran order runs far below
a plain copy's speed when S is a power of two (measured on a 2-core Xeon, float32:
``12544 x 64`` in 4.6 ms against 0.41 ms in blocks of 64 rows and 0.21 ms for a plain
copy; ``12544 x 32`` in 0.37 ms against 0.19 ms; float64 ``12544 x 32`` in 2.3 ms
against 0.30 ms), most likely because a destination column reads source elements S
apart, which fall into a few cache sets. :func:`fortran` copies in blocks of rows that
fit in the level-1 cache, and batches of more than ``TILE`` samples in square tiles.
The other direction (Fortran to C) numpy does at full speed.
"""

from __future__ import annotations

import weakref

import numpy as np

__all__ = ["ArrayMemo", "BLOCK", "TILE", "fortran"]

#: elements per block of a blocked copy to Fortran order (16 KiB of float32: measured
#: best or within 10% of best for S from 16 to 200, float32 and float64)
BLOCK = 4096
#: batches wider than this many samples are copied in TILE x TILE tiles instead (12544 x
#: 4000 float32: 76 ms against 159 ms in blocks of rows and 316 ms in one assignment)
TILE = 256


def fortran(A: np.ndarray, dtype=None, out: np.ndarray | None = None) -> np.ndarray:
    """``A`` (2-D) in Fortran order: A itself if it is one (and ``out`` is not given),
    else a copy made in blocks of rows (see the module's docstring); into ``out`` (a
    Fortran array of A's shape) if given. ``dtype`` converts on the way."""
    A = np.asarray(A)
    dt = A.dtype if dtype is None else np.dtype(dtype)
    if out is None:
        if A.ndim != 2 or (A.flags.f_contiguous and A.dtype == dt):
            return np.asfortranarray(A, dtype=dt)
        out = np.empty(A.shape, dtype=dt, order="F")
    n, S = A.shape
    if A.flags.f_contiguous or n * S <= BLOCK:
        out[...] = A
        return out
    if S <= TILE:  # blocks of whole rows
        step = max(8, BLOCK // max(S, 1))
        for i in range(0, n, step):
            out[i : i + step] = A[i : i + step]
        return out
    for j in range(0, S, TILE):  # a wide batch (a full-batch solve): square tiles
        for i in range(0, n, TILE):
            out[i : i + TILE, j : j + TILE] = A[i : i + TILE, j : j + TILE]
    return out


class ArrayMemo:
    """Values computed from arrays, recalled by the array while it lives: a state's max
    pooling maximisers, the box a product last padded it into. An array is known by its
    memory (address, shape, strides, type) while the array owning that memory lives (a
    weak reference drops the entry with it, so a later array at the same address is not
    mistaken for it). Only for arrays nobody writes into between :meth:`put` and
    :meth:`get`: the solves' states, which are never changed once computed.

    Args:
        size: the entries kept (the oldest goes first).
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._entries = {}

    @staticmethod
    def _key(F):
        return (F.__array_interface__["data"][0], F.shape, F.strides, F.dtype.str)

    def get(self, F: np.ndarray):
        """The value put for F (None if there is none, or F's memory was freed since)."""
        hit = self._entries.get(self._key(F))
        return None if hit is None else hit[1]

    def put(self, F: np.ndarray, value) -> None:
        """Keep ``value`` for F while F's memory lives."""
        if len(self._entries) >= self.size:
            self._entries.pop(next(iter(self._entries)))
        owner = F
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        key, entries = self._key(F), self._entries
        entries[key] = (weakref.ref(owner, lambda _: entries.pop(key, None)), value)
