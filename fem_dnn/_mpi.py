"""MPI collectives the package uses in many places, written once.

- :func:`all_finite`: is an array finite on every rank (one ``allreduce``)? :func:`finite`
  is the local test (one summation; the layers call it on every state and costate).
- :func:`on_root`: run a file operation on rank 0 and make every rank raise its error.
- :func:`bcast_arrays`: broadcast arrays from rank 0 as raw bytes (no pickling).
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn.errors import InputError, describe_exception, one_line

__all__ = ["all_finite", "bcast_arrays", "finite", "on_root"]

_CHUNK = 1 << 30  # bytes per MPI broadcast message


def finite(array) -> bool:
    """``np.isfinite(array).all()`` at the cost of one read-only summation: a NaN or an
    Inf makes the sum NaN or Inf; only a sum that overflows although every entry is
    finite takes the exact (element-wise) test. Measured on a (256, 1797) float64 batch:
    0.1 ms against 0.25 ms for the element-wise test and its boolean temporary."""
    a = np.asarray(array)
    if a.dtype.kind != "f":
        return bool(np.isfinite(a).all())
    with np.errstate(over="ignore", invalid="ignore"):
        total = a.sum()
    return bool(np.isfinite(total)) or bool(np.isfinite(a).all())


def all_finite(comm: MPI.Comm, array) -> bool:
    """True on every rank if every rank's ``array`` is finite (no NaN, no Inf). Collective."""
    return comm.allreduce(finite(array), op=MPI.LAND)


def on_root(comm: MPI.Comm, fn, context: str | None):
    """Run ``fn`` on rank 0 and make every rank raise if it failed.

    An :class:`InputError` keeps its message (on one line); any other exception becomes
    an InputError ``"<context>: <Type>: <message>"`` (chained to the original on rank 0).
    """
    result, message, exc = None, None, None
    if comm.rank == 0:
        try:
            result = fn()
        except InputError as e:
            exc, message = e, one_line(e)
        except Exception as e:
            exc, message = e, f"{context}: {describe_exception(e)}"
    message = comm.bcast(message, root=0)
    if message is not None:
        raise InputError(message) from exc
    return result


def bcast_arrays(comm: MPI.Comm, arrays: dict | None) -> dict:
    """Broadcast a dict of arrays from rank 0 as raw bytes (no pickling of the data)."""
    layout = None if comm.rank else {k: (v.shape, v.dtype.str) for k, v in arrays.items()}
    layout = comm.bcast(layout, root=0)
    if comm.size == 1:
        return dict(arrays)
    out = {}
    for name, (shape, dtype) in layout.items():
        if comm.rank == 0:
            arr = np.asarray(arrays[name])
            arr = arr if arr.flags.c_contiguous else arr.copy(order="C")
        else:
            arr = np.empty(shape, dtype=np.dtype(dtype))
        raw = arr.reshape(-1).view(np.uint8)
        for start in range(0, raw.size, _CHUNK):
            comm.Bcast(raw[start : start + _CHUNK], root=0)
        out[name] = arr
    return out
