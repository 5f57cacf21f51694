"""Keep freed batch arrays in the process instead of returning them to the OS.

Every layer of a batched solve creates temporaries of the batch's size (n x S doubles,
megabytes). glibc serves blocks that large with mmap, or trims them off the heap when
freed, so each new temporary is faulted in page by page again. On virtual machines a
page fault costs microseconds: measured on the 2-core development VM, a fresh 3.7 MB
array cost 2.5 ms to fill against 0.1 ms for a reused one, more than the tanh computed
into it (3 ms); a 256-neuron, 32-layer Euler forward solve of 1797 samples took 600 ms
with glibc's defaults and 355-450 ms with the settings below.

With mallopt, blocks up to 256 MiB come from the heap, and the heap is trimmed only when
more than 1 GiB of it is free: memory freed by one solve is reused by the next without
page faults. The resident size then stays at its peak (what a cached allocator does);
the peak itself does not grow. Set ``FEM_DNN_MALLOC=system`` to keep glibc's defaults.
Elsewhere than glibc this does nothing.

This is a setting of the whole process, so no import makes it: the code that runs a job
does (:func:`fem_dnn.process.configure`, called by ``fem-dnn``, the demos and the
benchmarks).
"""

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 256 * 2**20
TRIM_THRESHOLD = 2**30


def tune() -> bool:
    """Apply the settings above; returns whether they took effect."""
    if os.environ.get("FEM_DNN_MALLOC", "").lower() == "system":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

