"""The blocked copy to Fortran order (fem_dnn.core.batch): the same array as numpy's."""

import numpy as np
import pytest

from fem_dnn.core.batch import BLOCK, fortran


@pytest.mark.parametrize("shape", [(12544, 32), (6272, 64), (1000, 7), (3, 5000), (BLOCK // 64, 64), (0, 4)])
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
