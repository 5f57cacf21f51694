import fem_dnn  # noqa
import numpy as np
from mpi4py import MPI
from petsc4py import PETSc
comm = MPI.COMM_WORLD
n = 4485
rng = np.random.default_rng(1 + comm.rank)
s = rng.standard_normal(n); y = rng.standard_normal(n)
def vec(arr):
    return PETSc.Vec().createWithArray(arr, size=(n, PETSc.DECIDE), comm=comm)
# separate buffers, far apart
bs = np.empty(n + 10000); bs[:n] = s
by = np.empty(n + 10000); by[:n] = y
X, F = vec(bs[:n]), vec(by[:n])
print(comm.rank, "separate :", [float.hex(float(v)) for v in X.mDot([X, F])])
for pad in (0, 1, 8, 64, 65):
    buf = np.empty(2 * n + pad)
    buf[:n] = s; buf[n + pad:2 * n + pad] = y
    X2, F2 = vec(buf[:n]), vec(buf[n + pad:])
    print(comm.rank, f"stride n+{pad:2d}:", [float.hex(float(v)) for v in X2.mDot([X2, F2])])
print(comm.rank, "dot/dot  :", [float.hex(X.dot(X)), float.hex(X.dot(F))])
