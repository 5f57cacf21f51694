"""float32 states, tape and costate (issue 19, in progress): J, the gradient and Hessian
actions agree with float64 on the test problems, the states are float32, and the
settings PETSc solves in float64 are refused."""

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.core.depth import Depth
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
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


def test_every_activation_keeps_float32():
    """sigma, sigma' and sigma'' of a float32 array are float32 for every activation, so a
    float32 network's tape and costate stay float32 (relu's sigma' was float64, which
    doubled its tape and ran its costate in float64)."""
    from fem_dnn.core.activation import ACTIVATIONS

    s = np.linspace(-2.0, 2.0, 9, dtype=np.float32)
    for name, act in ACTIVATIONS.items():
        got = [act.sigma(s), act.dsigma(s), act.d2sigma(s), *act.both(s)]
        assert all(v.dtype == np.float32 for v in got), (name, [v.dtype for v in got])
    sp = NodeSpace(create_node_mesh(MPI.COMM_WORLD, "interval", 8), "DG", 0)
    X = np.random.default_rng(0).normal(size=(5, sp.n))
    nbytes = {}
    for dtype in ("float64", "float32"):
        net = Network(sp, Depth(T=1.0, N=3), "relu", "heun", dtype=dtype)
        traj = net.forward(X, net.make_controls(a=0.3, b=1.0), tape=True)
        costate, _ = net.costate(traj, np.asfortranarray(np.ones_like(traj.final)))
        assert all(np.asarray(d).dtype == np.dtype(dtype) for d in costate.dual)
        nbytes[dtype] = traj.nbytes
    assert nbytes["float32"] * 2 == nbytes["float64"]


@pytest.mark.parametrize("kw, match", [
    ({"scheme": "midpoint"}, "implicit midpoint rule"),
    ({"eps": 0.1}, "node diffusion"),
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
    uninterrupted float32 run ends, and ``evaluate`` rebuilds the float32 network from
    the run folder and reproduces its J.

    Adam: the same iterate (its moments restored), the same operations: J to 1e-12.

    L-BFGS, whose quasi-Newton memory restarts on a resume, takes another path to the
    same minimiser. ``training.gttol = 1e-4`` lies below float32's resolution of this J
    (the line search loses sight of a decrease near |g|/|g0| ~ 3e-4, measured on an AMD
    EPYC; where exactly depends on the processor's rounding), so each run ends either
    converged or with the line search at J's resolution, which fem_dnn reports as a
    normal end (``at_resolution``), never as a failure. Both end near the same
    minimiser: with the regulariser, the Hessian in the optimiser's L2 coordinates is
    at least lam I near it, so ``J - J* <= |g|^2 / (2 lam)`` (Polyak-Lojasiewicz) for
    each run, and the two J differ by at most the sum plus the float32 rounding of J,
    bounded by 1e-7 |J| (measured noise 4e-10 at J = 2.2: the margin is a factor 500)."""
    from fem_dnn.app.config import load_config
    from fem_dnn.app.evaluate import evaluate
    from fem_dnn.app.train import train

    quiet = lambda *a: None  # noqa: E731
    base = ["data.samples=200", "network.N=2", "network.dtype='float32'", "training.checkpoint_every=1",
            "output.figures=false", "output.fields=false", "output.plot_samples=0", f"training.method='{method}'"]
    lam = 5e-2
    if method == "lbfgs":
        base += [f"training.lam={lam}", "training.gttol=1e-4"]
        steps, full = "training.max_it", 1000
    else:
        base += ["training.batch_size=16", "training.lr=1e-2"]
        steps, full = "training.epochs", 6
    whole = train(load_config(None, base + [f"{steps}={full}", f"output.folder='{tmp_path / 'whole'}'"]), MPI.COMM_SELF,
                  out=quiet)
    part = load_config(None, base + [f"{steps}=3", f"output.folder='{tmp_path / 'part'}'"])
    train(part, MPI.COMM_SELF, out=quiet)
    section, key = steps.split(".")
    part[section][key] = full
    resumed = train(part, MPI.COMM_SELF, resume=True, out=quiet)
    if method == "lbfgs":
        for run in (whole, resumed):  # converged, or stopped at float32's resolution: both a normal end
            assert run["reason"] > 0 or run["at_resolution"], run["stop"]
            assert run["reason"] > 0 or "float32's resolution" in run["stop"]
        tol = (whole["gnorm"] ** 2 + resumed["gnorm"] ** 2) / (2 * lam) + 1e-7 * abs(whole["J"])
    else:
        tol = 1e-12 * abs(whole["J"])
    assert abs(resumed["J"] - whole["J"]) <= tol, (resumed["J"], whole["J"], tol)
    again = evaluate(tmp_path / "part", MPI.COMM_SELF, out=quiet)
    assert abs(again["J"] - resumed["J"]) <= 1e-10 * abs(resumed["J"]), (again, resumed)


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="runs the command line in a subprocess, serially")
def test_float32_stop_at_resolution_is_a_normal_end(tmp_path):
    """``training.gttol = 1e-12`` is out of float32's reach on any machine (J resolves
    ~1e-7 relative, so |g|/|g0| cannot get below ~1e-4 here): L-BFGS ends when its line
    search no longer sees a decrease. That end is reported in words, in the last line,
    ``summary.json`` and the last row of ``metrics.csv``, with exit status 0."""
    import csv
    import json
    import subprocess
    import sys

    sets = ["data.samples=200", "network.N=2", "network.dtype='float32'", "training.lam=5e-2", "training.gttol=1e-12",
            "training.max_it=2000", "output.figures=false", "output.fields=false", "output.plot_samples=0",
            "output.folder='out'"]
    r = subprocess.run([sys.executable, "-m", "fem_dnn.app.cli", "train", *[a for s in sets for a in ("--set", s)]],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    words = "J reached float32's resolution"
    last = [line for line in r.stdout.splitlines() if line.startswith("fem-dnn train:")][-2]  # the stop line
    assert words in last and "network.dtype = 'float64'" in last, r.stdout[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["at_resolution"] and words in summary["stop"] and summary["reason"] in (-6, -7)
    with open(tmp_path / "out" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert words in rows[-1]["stop"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_real_line_search_failure_stays_a_failure(dtype):
    """A line search that fails where J could still decrease well above its noise is a
    failure, in either precision: an ascent direction (the derivative's sign flipped)
    makes TAO's line search fail at the first iterate, where the flipped curvature is
    negative (or a step would change J by far more than its noise)."""
    from fem_dnn.learning.functional import WrappedFunctional
    from fem_dnn.optimize.tao import RESOLUTION_FACTOR, Optimizer

    class Flipped(WrappedFunctional):
        def derivative(self, m, out=None):
            d = self.J.derivative(m, out)
            d.scale(-1.0)
            return d

        def hessian(self, m, dm, out=None, gauss_newton=False):
            h = self.J.hessian(m, dm, out, gauss_newton)
            h.scale(-1.0)
            return h

    sp = NodeSpace(create_node_mesh(MPI.COMM_WORLD, "interval", 8), "DG", 0)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, sp.n)), rng.integers(0, 3, 30)
    J = ReducedFunctional(Network(sp, Depth(T=1.0, N=2), "tanh", dtype=dtype), X, y, "classes", K=3, lam=1e-2)
    opt = Optimizer(Flipped(J), "lbfgs", max_it=20, monitor=False)
    m0 = J.controls.random(3, 0.5)
    res = opt.solve(m0)
    probe = opt.resolution(opt.coords.to_coordinates(m0))
    assert res.reason < 0 and not res.resolution and "failed" in res.stop and not res.converged
    # the flipped derivative sees negative curvature (c < 0): a decrease is there to find
    assert not probe.reached and (probe.curvature < 0 or probe.decrease > RESOLUTION_FACTOR * probe.noise)
    opt.destroy(), m0.destroy(), res.m.destroy(), J.destroy()
