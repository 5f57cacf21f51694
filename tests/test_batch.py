"""The blocked copy to Fortran order (fem_dnn.core.batch): the same array as numpy's."""

import numpy as np
import pytest

from fem_dnn.core.batch import BLOCK, fortran


@pytest.mark.parametrize("shape", [(12544, 32), (6272, 64), (1000, 7), (3, 5000), (BLOCK // 64, 64), (0, 4), (700, 600)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fortran_copy_equals_numpys(shape, dtype):
    A = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    F = fortran(A)
    assert F.flags.f_contiguous and F.dtype == dtype and np.array_equal(F, A)
    assert fortran(F) is F  # already Fortran: itself
    view = A[1::2, ::-1] if A.size else A  # a strided view is copied too
    assert np.array_equal(fortran(view), view) and fortran(view).flags.f_contiguous
    D = fortran(A, dtype=np.float64)
    assert D.dtype == np.float64 and np.array_equal(D, A.astype(np.float64))
    out = np.empty(shape, dtype=dtype, order="F")
    assert fortran(A, out=out) is out and np.array_equal(out, A)


def test_fortran_of_one_dimensional_arrays():
    v = np.arange(10.0)
    assert fortran(v) is v or np.array_equal(fortran(v), v)


def test_array_memo_forgets_a_freed_array():
    from fem_dnn.core.batch import ArrayMemo

    memo = ArrayMemo(2)
    A = np.ones((4, 3))
    memo.put(A, "a")
    assert memo.get(A) == "a" and memo.get(A[:, :]) == "a"  # the same memory, shape and strides
    assert memo.get(A[:2]) is None and memo.get(A.copy()) is None
    del A  # freed: its entry goes with it, whatever is allocated at that address next
    assert len(memo._entries) == 0
    B, C, D = np.zeros(2), np.zeros(3), np.zeros(4)
    for X, v in ((B, 1), (C, 2), (D, 3)):
        memo.put(X, v)
    assert memo.get(B) is None and memo.get(C) == 2 and memo.get(D) == 3  # the oldest goes first
