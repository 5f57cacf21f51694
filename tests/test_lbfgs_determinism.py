"""L-BFGS (TAO ``bqnls``, scalar J0) is bitwise reproducible, whatever the heap layout.

PETSc's ``VecMDot`` (since 3.21, option ``-vec_mdot_use_gemv``, on by default) calls BLAS
gemv when the Vecs happen to lie at one stride in memory, and ``VecDot``/``VecMDot_Seq``
otherwise, with other rounding. Each L-BFGS update takes ``s^T s`` and ``y^T s`` with one
``VecMDot`` on the LMVM matrix's Xprev and Fprev, two Vecs malloc'ed one after the other:
whether they lie next to each other varied from run to run (on several ranks), and so
did the iterates from the first step that uses the L-BFGS matrix, in the last bits. The
Optimizer creates TAO's work vectors with the plain kernel (``optimize._plain_mdot``).

The test trains twice in one process, under two heap layouts made on purpose (glibc
malloc). In the first, every free chunk that could hold a vector is filled first, so the
next vectors come from the top of the heap one after the other: Xprev and Fprev are
adjacent, and gemv is used. In the second, each vector goes into a hole of its own
between two arrays that stay allocated: never at one vector's stride, so VecDot is used.
Checked through the LMVM matrix's addresses: n + 2 and n + 548 doubles apart. Without
the fix the two runs differ from iteration 4 on, serially and on 2 ranks."""

from contextlib import contextmanager

import numpy as np
import pytest

from fem_dnn.optimize import Optimizer

from conftest import bumps_problem, destroying

def fill_holes(nbytes):
    """Fill every free heap chunk that could hold ``nbytes``: the arrays of that size
    allocated next come from the top of the heap, one after the other."""
    fillers, run = [], 0
    while run < 16 and len(fillers) < 20000:  # 16 fillers in a row contiguous: at the top
        fillers.append(np.empty(nbytes - 64, np.uint8))
        if len(fillers) > 2:
            a, b, c = (f.ctypes.data for f in fillers[-3:])
            run = run + 1 if c - b == b - a > 0 else 0
    return fillers


@contextmanager
def adjacent(nbytes):
    """Vectors of ``nbytes`` allocated in this context lie one after the other."""
    fillers = fill_holes(nbytes)
    try:
        yield
    finally:
        del fillers


@contextmanager
def apart(nbytes):
    """Vectors of ``nbytes`` allocated in this context lie apart: each in a hole of
    its own (a little larger than one vector), between two arrays that stay allocated."""
    fillers = fill_holes(nbytes)
    pairs = [(np.empty(nbytes + 256, np.uint8), np.empty(4096, np.uint8)) for _ in range(256)]
    guards = [g for _, g in pairs]
    del pairs  # frees the holes
    try:
        yield
    finally:
        del fillers, guards


def lbfgs(comm, heap):
    """15 L-BFGS iterations (scalar J0, the Optimizer's default) under a heap layout: the
    bytes of every accepted iterate, its J, |g| and step, and of the trained controls."""
    seen = []
    with destroying(*bumps_problem(comm, 32, 4)) as (net, J), destroying(
            Optimizer(J, "lbfgs", gttol=0.0, max_it=15, monitor=lambda row: seen.append(
                (row["J"], row["gnorm"], row["step"], opt.tao.getSolution().array_r.tobytes()))),
            J.controls.create_vec()) as (opt, m0):
        with heap(8 * m0.getLocalSize()):
            res = opt.solve(m0)
        with destroying(res.m):
            return {"iterates": seen, "its": res.iterations, "J": res.J,
                    "m": {k: v.tobytes() for k, v in J.controls.natural(res.m).items()}}


@pytest.mark.mpi
def test_lbfgs_is_bitwise_reproducible(comm):
    """The same iterates, metrics and controls to the last bit under both heap layouts."""
    a = lbfgs(comm, adjacent)
    b = lbfgs(comm, apart)
    assert a["its"] == b["its"] == 15
    for k, (x, y) in enumerate(zip(a["iterates"], b["iterates"])):
        assert x == y, f"iteration {k} differs"
    assert a["J"] == b["J"] and a["m"] == b["m"]
