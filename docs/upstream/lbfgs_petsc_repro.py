"""petsc4py only: TAO bqnls (L-BFGS, scalar J0) gives different iterates depending on
whether malloc puts the LMVM matrix's Xprev and Fprev next to each other.
Run: mpirun -n 2 python petsc_bqnls_repro.py   (or serially)"""
import sys
import numpy as np
from mpi4py import MPI
from petsc4py import PETSc

comm = MPI.COMM_WORLD
n = 3000  # local size: 24 kB arrays, served from the brk heap

def fill_holes(nbytes):  # take every free heap chunk that fits: next arrays come from the top
    fillers, run = [], 0
    while run < 16 and len(fillers) < 20000:
        fillers.append(np.empty(nbytes - 64, np.uint8))
        if len(fillers) > 2:
            a, b, c = (f.ctypes.data for f in fillers[-3:])
            run = run + 1 if c - b == b - a > 0 else 0
    return fillers

import ctypes, ctypes.util
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]

def small_free_chunks():  # free small chunks, kept apart by guards: small requests are served from bins
    pairs = [(libc.malloc(size), libc.malloc(16)) for size in range(16, 4096, 16) for _ in range(8)]
    for p, _ in pairs:
        libc.free(p)

def solve(layout):
    keep = fill_holes(8 * n)
    small_free_chunks()
    if layout == "apart":  # holes of one vector each, between allocated guards
        pairs = [(np.empty(8 * n + 256, np.uint8), np.empty(4096, np.uint8)) for _ in range(256)]
        keep.append([g for _, g in pairs]); del pairs
    rng = np.random.default_rng(comm.rank)
    d = PETSc.Vec().createMPI((n, PETSc.DECIDE), comm=comm); d.array[:] = rng.uniform(1, 100, n)
    c = d.duplicate(); c.array[:] = rng.standard_normal(n)
    def fg(tao, x, g):  # sum_i d_i (x_i - c_i)^2 / 2 + log cosh(x_i)
        r = x.array_r - c.array_r
        g.array[:] = d.array_r * r + np.tanh(x.array_r)
        return comm.allreduce(float(0.5 * np.sum(d.array_r * r * r) + np.sum(np.log(np.cosh(x.array_r)))))
    x = d.duplicate(); x.set(0.0)
    tao = PETSc.TAO().create(comm); tao.setType("bqnls")
    tao.setObjectiveGradient(fg, x.duplicate())
    PETSc.Options()["tao_bqnls_mat_lmvm_scale_type"] = "scalar"
    tao.setTolerances(gatol=0, grtol=0, gttol=0); tao.setMaximumIterations(20)
    tao.setFromOptions(); tao.setSolution(x)
    hist = []
    tao.setMonitor(lambda t: hist.append(t.getSolution().array_r.tobytes()))
    tao.solve(x)
    if "-diag" in sys.argv:
        import ctypes
        lib = ctypes.CDLL(sys.argv[-1]); vp = ctypes.c_void_p
        X, F = vp(), vp(); lib.MatLMVMGetLastUpdate(vp(tao.getLMVMMat().handle), ctypes.byref(X), ctypes.byref(F))
        def ad(v):
            q = vp(); lib.VecGetArrayRead(v, ctypes.byref(q)); a = q.value; lib.VecRestoreArrayRead(v, ctypes.byref(q)); return a
        print(comm.rank, layout, "Fprev - Xprev =", (ad(F) - ad(X)) // 8, "doubles; n =", n, tao.getLMVMMat().getOptionsPrefix(), flush=True)
    tao.destroy()
    return hist

a, b = solve("adjacent"), solve("apart")
first = next((k for k, (p, q) in enumerate(zip(a, b)) if p != q), None)
print(f"rank {comm.rank}: {len(a)} iterates; first differing iterate: {first}", flush=True)
