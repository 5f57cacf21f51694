"""The proximal-point gradient method ("minimizing movement", LM section 5, algorithm 1;
docs/model.md §5.8): a sequence of proximal subproblems, each solved by a TAO method."""

from fem_dnn import _dolfinx  # noqa: F401
from petsc4py import PETSc

from fem_dnn.errors import InputError
from fem_dnn.learning import Proximal, ReducedFunctional
from fem_dnn.optimize.callbacks import report
from fem_dnn.optimize.tao import Optimizer, Result

__all__ = ["proximal_point"]


def proximal_point(
    J: ReducedFunctional, m0: PETSc.Vec, h: float = 1.0, gttol: float = 1e-6, max_it: int = 100,
    inner: str = "lbfgs", inner_gttol: float = 1e-2, monitor=True,
) -> Result:
    """Proximal-point gradient method ("minimizing movement", LM §5 algorithm 1):
    ``m_{k+1} = argmin_m J(m) + 1/(2h) ||m - m_k||^2`` in the controls' inner product
    (L2, or H1 in depth when J's controls use it), each subproblem solved inexactly by a
    TAO method (``inner``) to a relative gradient reduction ``inner_gttol``. Stops when
    the gradient of J, in the same inner product, has dropped by ``gttol``."""
    if not h > 0:
        raise InputError(f"the proximal step h must be positive, got {h!r}")
    cs, world = J.controls, J.network.layout.world
    m = m0.copy()
    g0 = cs.norm(J.gradient(m))
    history, its, reason = [], 0, -1
    for its in range(1, max_it + 1):
        sub = Optimizer(Proximal(J, m.copy(), h), inner, gttol=inner_gttol, max_it=200, monitor=False,
                        petsc_options_prefix="fem_dnn_prox_")
        res = sub.solve(m)
        res.m.copy(m)
        res.m.destroy(), sub.destroy()
        f, gn = J(m), cs.norm(J.gradient(m))
        row = {"iteration": its, "J": f, "gnorm": gn, **J.counts}
        history.append(row)
        report(monitor, world, f"prox {its:4d}  J {f:.10e}  |g| {gn:.3e}  solves fwd {J.counts['forward']}", row)
        if gn <= gttol * g0:
            reason = 1
            break
    return Result(m, its, reason, J(m), cs.norm(J.gradient(m)), history, dict(J.counts))
