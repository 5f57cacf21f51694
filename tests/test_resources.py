"""Issue 14: every check before any work, the resource estimate before any allocation.

- The depth operators of the controls' inner products are O(N): a control space with
  200000 layers builds in megabytes, and the H1 Riesz map still inverts the H1 mass and
  matches the dense construction.
- :func:`fem_dnn.app.memory.estimate_memory` gives the sizes that :class:`fem_dnn.app.run.Run`
  builds, the trajectory and tape that the forward solve stores, and the peak resident
  memory of real trainings within 30%; :func:`~fem_dnn.app.memory.check` refuses runs that
  cannot fit (memory, PETSc's 32-bit indices) with one line and no big allocation.
"""

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI
from petsc4py import PETSc

from fem_dnn.app.config import load_config
from fem_dnn.core.depth import Depth
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.errors import InputError
from fem_dnn.learning.controls import ControlSpace, DepthOperator
from fem_dnn.network import Network
from fem_dnn.optimize import Coordinates
from fem_dnn.app.hjb_memory import estimate_hjb_memory
from fem_dnn.app.memory import check, estimate_memory
from fem_dnn.app.system import available_memory, resident_memory

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- O(N) depth
def _dense_h1(depth: Depth, length: float) -> np.ndarray:
    """The depth inner product of the H1 Riesz map, built densely as before issue 14."""
    N = depth.N
    Dm = np.zeros((N - 1, N))
    for k in range(N - 1):
        Dm[k, k], Dm[k, k + 1] = -1.0, 1.0
    return np.diag(depth.tau) + length**2 * (Dm.T @ np.diag(1.0 / np.diff(depth.mid)) @ Dm)


def test_depth_operators_are_linear_in_the_layers():
    """N = 200000 layers, a 2-cell node space: the control space (H1 in depth) and the
    coordinate map allocate a few MB (the dense matrices were 320 GB each), and the H1
    mass and Riesz map are inverse to each other."""
    N = 200_000
    space = NodeSpace(create_node_mesh(MPI.COMM_SELF, "interval", 2), "DG", 0)
    net = Network(space, Depth(1.0, N))
    import scipy.linalg  # noqa: F401  (imported on first use by the Cholesky factor: module memory is not the operators')

    tracemalloc.start()
    cs = ControlSpace(net, "classes", K=2, inner_product="h1", h1_length=0.3)
    co = Coordinates(cs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MiB for the depth operators of {N} layers"
    assert not co.diagonal_depth
    X = np.random.default_rng(0).standard_normal((N, 3))
    A = cs.depth_riesz
    Y = A.solve(X)  # backward stable: a residual of round-off size (A has condition ~1e10)
    scale = (np.abs(A.diagonal).max() + 2 * np.abs(A.off).max()) * np.abs(Y).max()
    assert np.abs(A.apply(Y) - X).max() <= 1e-13 * scale
    # the Cholesky factor C: C C^T = the H1 product; the triangular solves invert C and C^T
    ax = np.abs(A.apply(X)).max()
    assert np.abs(A.cholesky_apply(A.cholesky_apply(X, transpose=True)) - A.apply(X)).max() <= 1e-13 * scale + 1e-13 * ax
    L = np.abs(A.cholesky()).max()
    for t in (False, True):
        Z = A.cholesky_apply(X, transpose=t, inverse=True)
        assert np.abs(A.cholesky_apply(Z, transpose=t) - X).max() <= 1e-13 * L * np.abs(Z).max()
    net.destroy(), space.destroy()


@pytest.mark.mpi
def test_h1_riesz_map_matches_the_dense_construction(comm):
    """Graded depth mesh, N = 7: the tridiagonal operators equal the dense matrices of
    the old construction; mass and Riesz map of the controls are inverse to each other
    and equal the dense products blockwise."""
    depth = Depth(points=[0.0, 0.05, 0.2, 0.3, 0.55, 0.6, 0.8, 1.0])
    space = NodeSpace(create_node_mesh(comm, "interval", 6), "P", 1, "consistent")
    net = Network(space, depth)
    cs = ControlSpace(net, "function", inner_product="h1", h1_length=0.4)
    dense = _dense_h1(depth, 0.4)
    assert np.abs(cs.depth_riesz.dense() - dense).max() <= 1e-13 * np.abs(dense).max()
    assert np.array_equal(cs.depth_l2.dense(), np.diag(depth.tau))
    m = cs.random(3)
    Mm = cs.mass(m)
    back = cs.riesz(Mm)
    back.axpy(-1.0, m)
    assert back.norm() <= 1e-12 * m.norm()
    # the a-block of M m is (depth (x) M_Y) a: compare with the dense depth matrix
    a = np.asarray(cs.blocks(m.array_r)[0])
    Ma = space.apply_mass(np.asfortranarray(a.T)).T
    assert np.allclose(cs.blocks(Mm.array_r)[0], dense @ Ma, rtol=1e-12, atol=1e-14)
    Ra = np.asarray(cs.blocks(cs.riesz(m).array_r)[0])
    assert np.allclose(Ra, np.linalg.solve(dense, space.solve_mass(np.asfortranarray(a.T)).T), rtol=1e-10, atol=1e-13)
    for v in (m, Mm, back):
        v.destroy()
    net.destroy(), space.destroy()


def test_depth_operator_diagonal_fast_path_is_elementwise():
    """The L2 depth product is diagonal: solve is the product with 1/tau, bitwise."""
    tau = np.array([0.1, 0.3, 0.25, 0.35])
    op = DepthOperator(tau)
    X = np.random.default_rng(1).standard_normal((4, 5))
    assert op.is_diagonal
    assert np.array_equal(op.solve(X), (1.0 / tau)[:, None] * X)
    assert np.array_equal(op.apply(X), tau[:, None] * X)


# --------------------------------------------------------------------------- sizes
SIZE_CASES = [
    ["data.samples=500"],
    ['node.space="P1"', 'network.scheme="rk4"', "network.N=3", "data.samples=200"],
    ['data.name="bumps"', 'node.space="P2"', 'node.mass="consistent"', 'network.scheme="midpoint"', "network.N=2"],
    ["node.refine=2", 'network.activation="relu"', 'network.scheme="heun"', "data.samples=120", "training.sample_groups=RANKS"],
]


@pytest.mark.mpi
@pytest.mark.parametrize("overrides", SIZE_CASES, ids=["digits", "p1-rk4", "bumps-p2-midpoint", "relu-heun-groups"])
def test_estimate_sizes_are_those_run_builds(comm, overrides):
    """n, N, S, the control count and the stored trajectory and tape of the estimate are
    those of the objects ``Run(cfg)`` builds (local sizes: the largest rank's, to a few
    percent under MPI, where the mesh partition decides)."""
    from fem_dnn.app.run import Run

    cfg = load_config(None, [o.replace("RANKS", str(comm.size)) for o in overrides])  # data parallel on every rank
    est = estimate_memory(cfg, comm)
    run = Run(cfg, comm, out=lambda *a: None)
    sp, J = run.space, run.J
    assert (est.neurons, est.layers) == (sp.n, run.net.depth.N)
    assert (est.samples, est.test_samples) == (len(run.train_idx), len(run.test_idx))
    m = J.controls.random(0, 0.1)
    assert est.controls == m.getSize()
    nl, local = comm.allreduce(sp.n_local, op=MPI.MAX), comm.allreduce(m.getLocalSize(), op=MPI.MAX)
    tol = 0 if run.layout.node_comm.size == 1 else 0.1  # the partition of a tiny mesh: 44 of 81 P1 dofs
    assert nl <= est.neurons_local * (1 + tol) and est.neurons_local <= nl * (1 + tol)
    assert abs(est.controls_local - local) <= tol * local
    assert est.samples_local == comm.allreduce(J.F0.shape[1], op=MPI.MAX)
    J(m)  # a forward solve with its tape, as training does
    stored = comm.allreduce(J.trajectory(m).nbytes, op=MPI.MAX)
    estimated = sum(v for k, v in est.resident.items() if k.startswith(("trajectory", "tape")))
    assert abs(estimated - stored) <= tol * stored, (estimated, stored)
    m.destroy(), run.destroy()


# --------------------------------------------------------------------------- refusals
@pytest.mark.mpi
@pytest.mark.parametrize("overrides,match", [
    (["node.refine=6", "network.N=32"], "GiB per rank"),        # ~50 GiB of L-BFGS vectors
    (["network.N=100000000"], "PETSc's 32-bit indices"),         # 4e11 controls
    (["node.refine=64"], "PETSc's 32-bit indices"),              # 2.7e11 controls
    (["node.refine=200"], "PETSc's 32-bit indices"),
])
def test_check_refuses_runs_that_cannot_fit(comm, overrides, match):
    """One line naming the sizes and what to reduce, on every rank, without allocating."""
    cfg = load_config(None, overrides)
    before = resident_memory()
    est = estimate_memory(cfg, comm)
    with pytest.raises(InputError, match=match) as err:
        check(est, comm)
    msg = str(err.value)
    assert "\n" not in msg and "neurons" in msg and "layers" in msg and "controls" in msg
    assert "node.refine" in msg
    assert resident_memory() - before < 200 * 2**20
    assert comm.allgather(msg) == [msg] * comm.size


@pytest.mark.mpi
def test_default_run_passes_and_describe_is_short(comm):
    est = estimate_memory(load_config(None, []), comm)
    check(est, comm)
    text = est.describe()
    assert "peak per rank" in text and len(text.splitlines()) < 30
    assert 0.1 * 2**30 < est.peak_bytes < 1 * 2**30


def test_available_memory_is_positive_and_at_most_the_machine():
    with open("/proc/meminfo") as fh:
        total = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemTotal:"))
    assert 0 < available_memory() <= total


# --------------------------------------------------------------------------- measured
MEASURED = [
    ["data.samples=400", "training.max_it=2"],
    ['data.name="bumps"', "node.refine=8", "network.N=8", 'training.method="newton"', "training.max_it=2",
     "output.figures=false", "output.fields=false"],
]


def test_estimate_is_within_30_percent_of_measured_peaks():
    """Two small trainings, each in a fresh process (as bench/memory_estimate.py does,
    with its larger cases): the measured peak resident set is within 30% of the estimate."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    bench = str(ROOT / "bench" / "memory_estimate.py")
    procs = [subprocess.Popen([sys.executable, bench, "--worker", json.dumps(ov)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for ov in MEASURED]
    for ov, proc in zip(MEASURED, procs):
        out, errs = proc.communicate(timeout=300)
        assert proc.returncode == 0, errs[-2000:]
        row = json.loads(next(line for line in out.splitlines() if line.startswith("MEMORY_ESTIMATE "))[16:])
        ratio = row["measured"] / row["estimate"]
        assert 0.7 <= ratio <= 1.3, (ov, ratio, row["describe"])


# --------------------------------------------------------------------------- HJB
@pytest.mark.mpi
@pytest.mark.parametrize("scheme", ["lax_friedrichs", "semi_lagrangian"])
def test_hjb_estimate_counts_the_grid_and_the_steps(comm, scheme):
    """Vertices, depth steps and the stored levels of either scheme; the semi-Lagrangian
    interpolation matrix is bounded by its estimate (within 4x: the bound counts the
    widest arrival box at every vertex)."""
    from fem_dnn.hjb import HJBSolver, ReducedModel, quadratic_cost

    model = ReducedModel(2, "tanh", a=(-0.25, 0.25), b=(-2.0, 2.0))
    args = (model, [-2.0, -2.0], [2.0, 2.0], 48)
    est = estimate_hjb_memory(*args, T=1.0, comm=comm, min_steps=4, scheme=scheme)
    s = HJBSolver(model, quadratic_cost([0.5, 0.5]), *args[1:], T=1.0, comm=comm, min_steps=4, scheme=scheme)
    assert est.vertices == s.V.dofmap.index_map.size_global
    assert abs(est.steps - s.steps) <= max(1, 0.02 * s.steps), (est.steps, s.steps)
    if scheme == "semi_lagrangian":
        nz = comm.allreduce(s.stepper.I.getInfo(PETSc.Mat.InfoType.LOCAL)["nz_used"], op=MPI.MAX)
        part = est.parts["semi-Lagrangian interpolation matrix"]
        assert nz * 24 <= part <= 4 * nz * 40, (nz, part)
    s.solve()
    levels = comm.allreduce(s.levels.nbytes, op=MPI.MAX)
    stored = next(v for k, v in est.parts.items() if k.startswith("stored levels"))
    assert abs(stored - levels) <= 0.1 * levels


def test_every_tao_method_has_a_memory_model():
    """The estimate knows the vectors of every TAO method the registry offers (a method
    added to fem_dnn/optimize/methods.py without them would be estimated with none)."""
    from fem_dnn.optimize.methods import TAO, TAO_VECTORS

    assert set(TAO_VECTORS) == set(TAO)
