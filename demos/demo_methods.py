# # Training the continuum ResNet: eight methods on one learning problem
#
# This demo is implemented in {download}`demo_methods.py`. It shows
#
# - one learning problem of Liu-Markowich (function-to-function, LM 2.2) trained by
#   steepest descent, nonlinear CG, L-BFGS, Newton-CG with a line search, trust-region
#   Newton, mini-batch Adam, the proximal-point method and the method of successive
#   approximations (the paper's two algorithms, LM §5),
# - their cost counted in PDE solves: forward and costate solves (one of each per
#   gradient) and incremental solves (one incremental forward and one incremental
#   costate per Hessian action),
# - that all gradient methods find the same minimiser, that Newton-CG needs the fewest
#   forward + costate solves, and that MSA decreases J monotonically,
# - a table and a figure of the convergence histories.
#
# Run it with `mpirun -n 2 python demos/demo_methods.py`; every claim is asserted.
#
# ## Problem statement
#
# For S inputs $f_I^s$ (bumps on $Y = (0,1)$) and targets $C^s$ (shifted, squashed
# bumps) we minimise over the controls $m = (a, b, W, \mu)$
#
# $$ J(m) = \frac1S\sum_s \frac12\int_Y |h(O_s) - C_s|^2\,dy + \frac\lambda2\|m\|^2,\qquad
#    O_s = \int_Y W(\cdot,z) f_s(z,T)\,dz + \mu, $$
#
# with $h$ the logistic function and $f_s$ the solution of the state equation
# $\partial_t f = \tanh(a - B_b f)$, $f(0) = f_I^s$. The network is the ResNet itself
# (DG0 neurons, explicit Euler in depth), so that MSA, whose Hamiltonian step is
# implemented for that scheme, applies to the same problem.
#
# The methods:
#
# - **TAO methods** (`Optimizer`): steepest descent, nonlinear CG (Polak-Ribière),
#   L-BFGS, Newton-CG with a line search and trust-region Newton (Steihaug CG). They work
#   in L2-orthonormal coordinates of the controls, so their iteration counts do not
#   depend on the mesh (see the README). Newton's Hessian actions come from second-order
#   adjoints.
# - **Adam** (`minibatch`): stochastic steps on mini-batches of the samples, in the same
#   coordinates.
# - **Proximal point** (LM §5, algorithm 1, "minimizing movement"):
#   $m_{k+1} = \arg\min_m J(m) + \frac1{2h}\|m - m_k\|^2$, each subproblem by inexact
#   L-BFGS.
# - **MSA** (LM §5, algorithm 2): forward solve, costate solve, then the pointwise
#   minimisation of the Hamiltonian over a box of controls; no parameter gradients. MSA
#   updates only a and b, so it is started with the readout (W, mu) of the Newton
#   minimiser and a = b = 0, in a box that contains the minimiser's a and b.
#
# ## Implementation

from mpi4py import MPI  # noqa: I001  (fem_dnn orders the DOLFINx imports itself)

import sys
import time
from pathlib import Path

import numpy as np

import fem_dnn  # noqa: F401
from fem_dnn.process import configure
from fem_dnn.core.depth import Depth
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.network import Network
from fem_dnn.optimize import Optimizer, minibatch, msa, proximal_point

configure()  # the job's process settings: BLAS threads per rank, malloc (fem_dnn.process)

comm = MPI.COMM_WORLD
out = Path("out_methods")
quick = "--quick" in sys.argv  # smaller sizes for the test suite


def say(*args):
    if comm.rank == 0:
        print(*args, flush=True)


# The data of `tests/test_optimize.py`: 8 Gaussian bumps in, logistic images of the
# bumps shifted by 0.1 out. Data are callables of the node coordinates.

S = 8
centres = np.linspace(0.15, 0.85, S)


def inputs(y):
    return np.exp(-20.0 * (y[0][None, :] - centres[:, None]) ** 2)


def targets(y):
    return 1.0 / (1.0 + np.exp(-2.0 * np.exp(-20.0 * (y[0][None, :] - centres[:, None] - 0.1) ** 2) + 0.5))


n, N = (16, 8) if quick else (32, 16)
lam = 1e-2
gttol = 1e-6  # every full-batch method stops when |grad J| has dropped by this factor
space = NodeSpace(create_node_mesh(comm, "interval", n), "DG", 0, "lumped")
net = Network(space, Depth(T=1.0, N=N), "tanh", "euler")


def functional():
    """A fresh J (its solve counters start at zero)."""
    return ReducedFunctional(net, inputs, targets, "function", lam=lam)


say(f"Function-to-function learning: {S} samples, n = {n} DG0 neurons, N = {N} Euler layers, lambda = {lam}")

# ### The full-batch methods
#
# All start from $m = 0$. Each history row holds J, the gradient norm (the L2 norm of the
# Riesz gradient: TAO's 2-norm in the L2-orthonormal coordinates) and the solve counters
# at that iterate.

runs = {}
labels = {"gd": "steepest descent", "cg": "nonlinear CG", "lbfgs": "L-BFGS", "newton": "Newton-CG",
          "trust": "trust-region Newton", "adam": "Adam (mini-batch)", "prox": "proximal point", "msa": "MSA"}


def fwd_adj(counts):
    return counts["forward"] + counts["costate"]


for method in ("gd", "cg", "lbfgs", "newton", "trust"):
    J = functional()
    t0 = time.perf_counter()
    opt = Optimizer(J, method, gttol=gttol, max_it=2000, monitor=False)
    res = opt.solve(J.controls.create_vec())
    runs[method] = dict(res=res, time=time.perf_counter() - t0, converged=res.converged,
                        hist=[(fwd_adj(h), h["J"], h["gnorm"]) for h in res.history],
                        all_solves=[fwd_adj(h) + h["incremental_forward"] + h["incremental_costate"] for h in res.history])
    say(f"   {labels[method]:20s} {res.iterations:4d} iterations, J = {res.J:.10e}, reason {res.reason}")
    if method == "newton":
        J_newton, newton_m = J, res.m  # kept: MSA starts from its readout
    else:
        J.destroy()
    opt.destroy()
g0 = runs["lbfgs"]["hist"][0][2]  # the gradient norm at m = 0 (the same for every method)

# ### The proximal-point method (LM §5, algorithm 1)
#
# Each subproblem is solved by L-BFGS to a relative gradient reduction of 1e-2. A large
# step h makes the subproblem close to the original problem (h → ∞ gives J itself) and
# the outer iteration fast; a small h makes it a slow, implicit gradient flow.

J = functional()
t0 = time.perf_counter()
res = proximal_point(J, J.controls.create_vec(), h=1e3, gttol=gttol, max_it=40, monitor=False)
runs["prox"] = dict(res=res, time=time.perf_counter() - t0, converged=res.converged,
                    hist=[(2, runs["lbfgs"]["hist"][0][1], g0)] + [(fwd_adj(h), h["J"], h["gnorm"]) for h in res.history])
say(f"   {labels['prox']:20s} {res.iterations:4d} outer steps, J = {res.J:.10e}")
J.destroy()

# ### Adam on mini-batches
#
# Two mini-batches of 4 samples per epoch: one epoch costs one forward and one costate
# solve per sample, like one full-batch gradient, so we count *sample-equivalent* solves,
# 2 per epoch. (`minibatch` also evaluates the full-batch J and gradient after every
# epoch for its history; those monitor solves are left out of the count.)

epochs, batch = (50, 4) if quick else (300, 4)
J = functional()
t0 = time.perf_counter()
res = minibatch(J, J.controls.create_vec(), "adam", lr=0.02, batch_size=batch, epochs=epochs, seed=0, monitor=False)
steps_per_epoch = -(-S // batch)
assert res.iterations == epochs * steps_per_epoch
assert res.counts["forward"] == res.iterations + epochs + 1  # mini-batch steps + monitor + final value
adam_hist = [(2 * h["epoch"], h["J"], h["gnorm"]) for h in res.history]
runs["adam"] = dict(res=res, time=time.perf_counter() - t0, converged=res.gnorm <= gttol * g0, hist=adam_hist)
say(f"   {labels['adam']:20s} {epochs:4d} epochs ({res.iterations} steps), J = {res.J:.10e}")
J.destroy()

# ### MSA (LM §5, algorithm 2)
#
# The readout (W, mu) of the Newton minimiser, a = b = 0, and the box
# $A = [-1/2, 1/2] \times [-2, 2]$, which contains the minimiser's a and b in its
# interior: the minimiser is then also a local minimiser of the box problem in (a, b)
# that MSA solves. With several
# samples and $\lambda > 0$ the Hamiltonian of each layer is minimised by projected
# gradient (state and costate frozen, no PDE solves). Plain MSA (step theta = 1) can
# increase J; `msa` halves theta until J decreases.

box = {"a": (-0.5, 0.5), "b": (-2.0, 2.0)}
J = functional()
nat_star = J.controls.natural(newton_m)
assert np.abs(nat_star["a"]).max() < box["a"][1] and np.abs(nat_star["b"]).max() < box["b"][1]
m0 = newton_m.copy()
a0, b0 = J.controls.blocks(m0)[:2]
a0[:], b0[:] = 0.0, 0.0
t0 = time.perf_counter()
res = msa(J, m0, box, max_it=6 if quick else 60, monitor=False)
runs["msa"] = dict(res=res, time=time.perf_counter() - t0, converged=res.reason > 0,
                   hist=[(fwd_adj(h), h["J"], np.nan) for h in res.history])
thetas = [h["theta"] for h in res.history[1:]]
say(f"   {labels['msa']:20s} {res.iterations:4d} iterations, J = {res.J:.10e} (step theta: {min(thetas):g} .. {max(thetas):g})")
J.destroy()

# ### Results
#
# J* is the lowest J the full-batch methods found. "its" counts iterations (Adam: steps,
# proximal point: outer steps), "fwd+adj" forward plus costate solves (Adam:
# sample-equivalent, see above), "incr." the incremental forward + incremental costate
# solves of the Hessian actions; "time" is wall-clock time on this machine.

J_star = min(runs[k]["res"].J for k in ("gd", "cg", "lbfgs", "newton", "trust", "prox"))
say(f"\n{'method':22s} {'its':>5s} {'fwd+adj':>8s} {'incr.':>6s} {'final J':>17s} {'(J-J*)/J*':>10s} {'|g|/|g0|':>9s} {'conv.':>6s} {'time':>7s}")
for key, run in runs.items():
    res = run["res"]
    solves = run["hist"][-1][0]
    inc = res.counts.get("incremental_forward", 0) + res.counts.get("incremental_costate", 0)
    gn = "" if key == "msa" else f"{res.gnorm / g0:9.1e}"
    say(f"{labels[key]:22s} {res.iterations:5d} {solves:8d} {inc:6d} {res.J:17.10e} {(res.J - J_star) / J_star:10.1e} "
        f"{gn:>9s} {'yes' if run['converged'] else 'no':>6s} {run['time']:6.2f}s")
say("(MSA trains a and b only, from the Newton readout; its gradient norm is not computed)")

# The claims:
#
# 1. every full-batch gradient method converges, to the same J;
# 2. Newton-CG (and trust-region Newton) need the fewest forward + costate solves,
#    L-BFGS fewer than nonlinear CG, and CG fewer than steepest descent; only the Newton
#    methods use incremental solves, one incremental forward per incremental costate;
# 3. counting every solve (an incremental solve costs about as much as a forward or a
#    costate solve), L-BFGS is the cheapest method here: the Newton methods spend their
#    savings in forward + costate solves on the inner CG iterations;
# 4. Adam lowers J but, for the same number of (sample-equivalent) solves, is far from
#    J*: L-BFGS reaches Adam's final J with fewer solves;
# 5. the proximal-point iterates decrease J monotonically;
# 6. MSA decreases J strictly monotonically and approaches J* from above (linearly: the
#    safeguard halves nearly every step).

solves = {k: r["hist"][-1][0] for k, r in runs.items()}
for key in ("gd", "cg", "lbfgs", "newton", "trust", "prox"):
    assert runs[key]["converged"], key
    assert abs(runs[key]["res"].J - J_star) <= 1e-8 * J_star, (key, runs[key]["res"].J, J_star)
assert solves["newton"] < solves["lbfgs"] and solves["trust"] < solves["lbfgs"], solves
assert solves["lbfgs"] < solves["cg"] < solves["gd"], solves
for key in ("newton", "trust"):
    c = runs[key]["res"].counts
    assert c["incremental_forward"] == c["incremental_costate"] > 0, c
for key in ("gd", "cg", "lbfgs", "prox", "adam", "msa"):
    assert runs[key]["res"].counts["incremental_forward"] == 0
total = {k: runs[k]["all_solves"][-1] for k in ("gd", "cg", "lbfgs", "newton", "trust")}
say(f"\nall solves (forward, costate and incremental): {', '.join(f'{labels[k]} {v}' for k, v in total.items())}")
assert total["lbfgs"] == min(total.values()), total
adam = runs["adam"]
assert adam["res"].J < runs["lbfgs"]["hist"][0][1] and adam["res"].J > J_star * (1 + 1e-3) and not adam["converged"]
first = next(s for s, f, _ in runs["lbfgs"]["hist"] if f <= adam["res"].J)
say(f"L-BFGS reaches Adam's final J = {adam['res'].J:.6e} after {first} solves (Adam: {solves['adam']})")
assert first < solves["adam"]
Jp = [f for _, f, _ in runs["prox"]["hist"]]
assert all(b <= a for a, b in zip(Jp, Jp[1:]))
Jm = [f for _, f, _ in runs["msa"]["hist"]]
assert all(b < a for a, b in zip(Jm, Jm[1:]))
gap0, gap = (Jm[0] - J_star) / J_star, (Jm[-1] - J_star) / J_star
say(f"MSA: J - J* falls from {gap0:.2e} J* to {gap:.2e} J* in {len(Jm) - 1} iterations")
assert -1e-10 <= gap < (1e-2 if quick else 1e-4) * gap0, (gap0, gap)

# ### Figure: convergence against the PDE solves spent
#
# Left: $J - J^*$; right: the gradient norm, with the Newton methods also drawn against
# all their solves (dotted: forward, costate and incremental). Rank 0 draws.

png = out / "methods.png"
if comm.rank == 0:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    styles = {"gd": "-", "cg": "-", "lbfgs": "-", "newton": "-o", "trust": "-s", "adam": "--", "prox": "-^", "msa": "-d"}
    for key, run in runs.items():
        s, f, g = (np.array(v, dtype=float) for v in zip(*run["hist"]))
        d = f - J_star
        ax1.semilogy(s, np.where(d > 0, d, np.nan), styles[key], ms=3, label=labels[key] + (" (W, mu fixed)" if key == "msa" else ""))
        if key != "msa":
            ax2.semilogy(s, g, styles[key], ms=3, color=ax1.lines[-1].get_color(), label=labels[key])
        if "all_solves" in run and key in ("newton", "trust"):  # the same run against all its solves
            ax2.semilogy(run["all_solves"], g, ":", color=ax1.lines[-1].get_color(), label=labels[key] + ", all solves")
    ax1.set_xlabel("forward + costate solves")
    ax1.set_ylabel("J(m) - J*")
    ax1.set_title("objective")
    ax2.set_xlabel("forward + costate solves (dotted: + incremental solves)")
    ax2.set_ylabel("|grad J| (L2)")
    ax2.set_title("gradient norm")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.suptitle(f"training the continuum ResNet (n = {n}, N = {N}, S = {S})")
    fig.savefig(png, dpi=120)
    plt.close(fig)
    assert png.stat().st_size > 0
say(f"wrote {png}")
J_newton.destroy(), net.destroy()
say("All claims verified.")
