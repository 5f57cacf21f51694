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
fit in the level-1 cache. The other direction (Fortran to C) numpy does at full speed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fortran", "BLOCK"]

#: elements per block of a blocked copy to Fortran order (16 KiB of float32: measured
#: best or within 10% of best for S from 16 to 200, float32 and float64)
BLOCK = 4096


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
    step = max(8, BLOCK // max(S, 1))
    for i in range(0, n, step):
        out[i : i + step] = A[i : i + step]
    return out
