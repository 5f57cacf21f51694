"""numpy batches as PETSc dense matrices: the one place that wraps, multiplies and solves.

A batch is a Fortran-ordered ``(local rows, S)`` array (S samples as columns). PETSc
wraps it without a copy (``MatCreateDense`` on the array); the products and solves
return new Fortran-ordered numpy arrays, and every temporary PETSc object is destroyed
before returning, so nothing is left for the garbage collector to free collectively.
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from petsc4py import PETSc

__all__ = ["dense", "mat_mult", "mat_solve"]


def dense(rows, F: np.ndarray, comm) -> PETSc.Mat:
    """Wrap ``F`` (``(local rows, S)``, made Fortran-ordered if it is not) as a dense
    matrix with row layout ``rows`` (``(local, global)``) on ``comm``."""
    return PETSc.Mat().createDense((rows, (None, F.shape[1])), array=np.asfortranarray(F), comm=comm)


def _to_numpy(C: PETSc.Mat, rows: int, S: int) -> np.ndarray:
    return np.array(C.getDenseArray(), order="F", copy=True).reshape(rows, S, order="F")


def mat_mult(A: PETSc.Mat, X: np.ndarray) -> np.ndarray:
    """``A X`` for a sparse (or dense) PETSc matrix and a batch X laid out like A's columns."""
    B = dense(A.getSizes()[1], X, A.getComm())
    C = A.matMult(B)
    out = _to_numpy(C, A.getLocalSize()[0], X.shape[1])
    B.destroy(), C.destroy()
    return out


def mat_solve(ksp: PETSc.KSP, R: np.ndarray) -> np.ndarray:
    """``A^{-1} R`` with the (factored, direct) solver ``ksp`` of A: every column at once."""
    A = ksp.getOperators()[0]
    B = dense(A.getSizes()[0], R, A.getComm())
    X = B.duplicate()
    ksp.matSolve(B, X)
    out = _to_numpy(X, A.getLocalSize()[0], R.shape[1])
    B.destroy(), X.destroy()
    return out
