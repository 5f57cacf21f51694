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
    5e-8, 2e-8), the states float32 (their difference about 1e-7 relative), the
    trajectory with its tape half float64's bytes."""
    sp = NodeSpace(create_node_mesh(MPI.COMM_WORLD, shape, 8), family, 0 if family == "DG" else 1)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, sp.n)), rng.integers(0, 3, 30)
    out = {}
    for dtype in ("float64", "float32"):
        J = ReducedFunctional(Network(sp, Depth(T=1.0, N=4), "tanh", scheme, dtype=dtype), X, y, "classes", K=3, lam=1e-3)
        m = J.controls.random(1, 0.5)
        traj = J.trajectory(m)
        out[dtype] = (J(m), J.derivative(m).copy(), J.hessian(m, J.controls.random(2, 1.0)).copy(), traj.states,
                      traj.nbytes)
    (J64, g64, h64, s64, b64), (J32, g32, h32, s32, b32) = out["float64"], out["float32"]
    assert s32.dtype == np.float32 and s64.dtype == np.float64
    assert b32 * 2 == b64  # the states and every stage's tape arrays in float32: half the memory
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


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="runs the command line in-process, serially")
@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_float32_checkpoint_resume_evaluate(tmp_path, method):
    """A float32 run interrupted and resumed from its checkpoint ends where the
    uninterrupted float32 run ends (Adam: the same iterate, its moments restored; L-BFGS,
    whose quasi-Newton memory restarts on a resume: the same minimiser, |g| reduced by
    1e-4, J to 1e-7), and ``evaluate`` rebuilds the float32 network from the run folder
    and reproduces its J."""
    from fem_dnn.app.config import load_config
    from fem_dnn.app.train import evaluate, train

    quiet = lambda *a: None  # noqa: E731
    base = ["data.samples=200", "network.N=2", "network.dtype='float32'", "training.checkpoint_every=1",
            "output.figures=false", "output.fields=false", "output.plot_samples=0", f"training.method='{method}'"]
    if method == "lbfgs":
        # float32 states resolve J to ~1e-7 relative: here the line search sees no
        # decrease below |g| / |g_0| ~ 6e-5 (measured), so the tolerance is 1e-4
        base += ["training.lam=5e-2", "training.gttol=1e-4"]
        steps, full, tol = "training.max_it", 1000, 1e-7
    else:
        base += ["training.batch_size=16", "training.lr=1e-2"]
        steps, full, tol = "training.epochs", 6, 1e-12
    whole = train(load_config(None, base + [f"{steps}={full}", f"output.folder='{tmp_path / 'whole'}'"]), MPI.COMM_SELF,
                  out=quiet)
    part = load_config(None, base + [f"{steps}=3", f"output.folder='{tmp_path / 'part'}'"])
    train(part, MPI.COMM_SELF, out=quiet)
    section, key = steps.split(".")
    part[section][key] = full
    resumed = train(part, MPI.COMM_SELF, resume=True, out=quiet)
    assert abs(resumed["J"] - whole["J"]) <= tol * abs(whole["J"]), (resumed["J"], whole["J"])
    if method == "lbfgs":
        assert whole["reason"] > 0 and resumed["reason"] > 0
    again = evaluate(tmp_path / "part", MPI.COMM_SELF, out=quiet)
    assert abs(again["J"] - resumed["J"]) <= 1e-10 * abs(resumed["J"]), (again, resumed)
