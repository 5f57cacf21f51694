"""Process-wide settings: none on import, the job's on :func:`fem_dnn.process.configure`.

Importing every fem_dnn module (``fem_dnn.core.forms``, the reuse entry point, among them) and
drawing the run figures leaves the process as it was: glibc's malloc gives freed memory
back, the BLAS keeps its threads, matplotlib keeps the backend the user chose. A job's
``configure()`` under ``mpirun -n 2`` on 2 cores limits each rank's BLAS to one thread
(unless the user set a thread count) and keeps freed batch arrays in the process.
"""

import os
import subprocess
import sys
import textwrap

import pytest
from mpi4py import MPI

from conftest import mpirun

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="launches its own processes from the serial session")

PROBE = textwrap.dedent("""
    import json, sys
    if sys.argv[1] == "configure":  # a job configures first, before numpy loads its BLAS
        from fem_dnn.process import configure
        configure()
    import numpy as np

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024

    def freed_kept():
        '''MiB still resident after 400 MiB of 4 MiB arrays are freed.'''
        base = rss()
        arrays = [np.ones(2**19) for _ in range(100)]
        del arrays
        return rss() - base

    import importlib, pkgutil
    if sys.argv[1] == "baseline":  # the libraries fem_dnn uses, without fem_dnn
        for name in ("dolfinx_solver", "mpi4py.MPI", "petsc4py.PETSc", "dolfinx.fem.petsc", "scipy.linalg", "sklearn",
                     "matplotlib.figure"):
            try:
                importlib.import_module(name)
            except ImportError:
                pass
    else:
        import fem_dnn
        mods = [m.name for m in pkgutil.walk_packages(fem_dnn.__path__, "fem_dnn.") if m.name != "fem_dnn.__main__"]
        assert len(mods) > 30 and "fem_dnn.core.forms" in mods, mods
        for name in mods:  # every module of every subpackage
            importlib.import_module(name)
    if sys.argv[1] == "configure":
        from fem_dnn.process import configure
        configure()
    import matplotlib
    if sys.argv[1] != "baseline":
        from fem_dnn.app import output as io
        io.plot_training("/dev/null", [{"iteration": 0, "J": 1.0}, {"iteration": 1, "J": 0.5}])
    from threadpoolctl import threadpool_info
    from mpi4py import MPI
    blas = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    if MPI.COMM_WORLD.rank == 0:
        print(json.dumps({"backend": matplotlib.get_backend(), "blas": blas, "kept": freed_kept()}))
""")


def probe(tmp_path, mode, ranks=1):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env["MPLBACKEND"] = "svg"  # the user's choice of backend
    cmd = [sys.executable, str(script), mode]
    if ranks > 1:
        cmd = [mpirun(), "-n", str(ranks)] + cmd
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    return json.loads(res.stdout.strip().splitlines()[-1])


def test_imports_and_figures_change_nothing(tmp_path):
    out, base = probe(tmp_path, "import"), probe(tmp_path, "baseline")
    assert out["backend"] == "svg"
    assert out["kept"] < 100, out  # glibc's defaults: freed 4 MiB arrays go back to the OS
    both = out["blas"].keys() & base["blas"].keys()  # the BLAS libraries loaded either way
    assert both and {k: out["blas"][k] for k in both} == {k: base["blas"][k] for k in both}, (out, base)


@pytest.mark.mpirun
@pytest.mark.skipif(mpirun() is None or (os.cpu_count() or 1) > 2, reason="needs mpirun, and 2 ranks filling the cores")
def test_configure_limits_blas_threads_and_keeps_memory(tmp_path):
    """Every BLAS library: numpy's (loaded after configure) and SciPy's (loaded later by
    the modules' imports)."""
    out = probe(tmp_path, "configure", ranks=2)
    assert out["blas"] and all(n == max(1, (os.cpu_count() or 1) // 2) for n in out["blas"].values()), out
    assert out["kept"] > 300, out  # freed batch arrays stay in the process
    assert out["backend"] == "svg"
