"""Process-wide settings for a job, switched on by the code that runs one.

Importing a fem_dnn module changes nothing in the process. The code that runs a job
(``fem-dnn``, the demos, the benchmarks; your own script if it wants the same) calls
:func:`configure` once, which:

- **limits the BLAS threads** when the ranks of one node share its cores: each rank
  gets ``max(1, cores // ranks on the node)`` threads (threadpoolctl, the library
  scikit-learn uses for this), unless ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` or
  ``MKL_NUM_THREADS`` is set (then the user's choice stands): the BLAS libraries loaded
  now (numpy's, loaded first) by threadpoolctl, those loaded later (SciPy's own
  OpenBLAS) by setting ``OPENBLAS_NUM_THREADS`` and ``OMP_NUM_THREADS``, which they read
  when they load. (Until issue 17 the limit missed numpy's BLAS when numpy had not been
  imported yet: a benchmark under ``mpirun -n 2`` ran the local kernel's GEMMs with 2
  threads per rank, 1.57 s against 0.08 s a product.) Without it, two ranks with
  a BLAS thread per core each fight for the cores: measured on the 2-core development
  machine (other jobs running), 50 L-BFGS iterations on the digits trained in 92.3 s
  under ``mpirun -n 2`` with 2 threads per rank against 6.6 s with one;
- **keeps freed batch arrays in the process** (glibc's malloc thresholds,
  :mod:`fem_dnn._malloc`; ``FEM_DNN_MALLOC=system`` keeps glibc's defaults).

Figures need nothing: :mod:`fem_dnn.app.output` draws on its own Agg canvas, without pyplot, so
no matplotlib backend is switched.
"""

import os

__all__ = ["configure"]

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_done: dict | None = None


def configure(comm=None) -> dict:
    """Apply the job settings (idempotent; collective over ``comm``, default
    ``MPI.COMM_WORLD``, the first time). Returns what was done: ``{"blas_threads": k or
    None (left alone), "ranks_on_node": r, "cores": c, "malloc": bool}``."""
    global _done
    if _done is not None:
        return dict(_done)
    from fem_dnn import _dolfinx  # noqa: F401
    from mpi4py import MPI

    from fem_dnn import _malloc

    comm = MPI.COMM_WORLD if comm is None else comm
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    ranks_on_node = node.size
    node.Free()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = None
    if not any(os.environ.get(v) for v in _THREAD_VARIABLES):
        threads = max(1, cores // ranks_on_node)
        if ranks_on_node > 1:
            import numpy  # noqa: F401  (its BLAS must be loaded to be limited)
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=threads, user_api="blas")
            for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):  # BLAS libraries loaded later (SciPy's)
                os.environ[v] = str(threads)
        else:
            threads = None  # one rank: BLAS keeps its own choice (every core)
    _done = {"blas_threads": threads, "ranks_on_node": ranks_on_node, "cores": cores, "malloc": _malloc.tune()}
    return dict(_done)
