# # Pontryagin's maximum principle: bang-bang controls and successive approximations
#
# This demo is implemented in {download}`demo_pmp.py`. It shows
#
# - the learning problem with a box of admissible controls $A = [a_-, a_+]\times[b_-, b_+]$,
# - the method of successive approximations (MSA, LM §5 algorithm 2): forward solve,
#   costate solve, pointwise minimisation of the Hamiltonian, no parameter gradients,
# - that its result satisfies the discrete maximum principle: the controls are
#   bang-bang, with the switching structure given by the sign of the costate $r$, and
#   every layer's Hamiltonian is minimised over $A$,
# - the switching set in the (depth, node) domain, which moves with depth,
# - a comparison with box-constrained L-BFGS on the same problem,
# - figures, and XDMF/VTX output of a, f and r over the (depth, node) mesh.
#
# Run it with `mpirun -n 2 python demos/demo_pmp.py`; every claim is asserted.
#
# ## Problem statement
#
# One input $f_I(y) = \sin 2\pi y$ on $Y = (0,1)$, of class 3 out of $K = 3$, with a fixed
# readout $O_k = \int_Y W_k(z) f(z,T)\,dz$, $W_k(z) = \cos k\pi z$, and the cross-entropy
# loss; no regulariser ($\lambda = 0$). The controls a and b are sought in the box
#
# $$ A = \{(a, b):\ a_- \le a(y,t) \le a_+,\ b_- \le b(y,z,t) \le b_+\}. $$
#
# Pontryagin's principle (docs/model.md §3, LM 4.11, minimisation form): an optimal control
# minimises, at every depth t, the Hamiltonian
#
# $$ H(f, r, a, b) = \int_Y r(y,t)\, \sigma\Big(a(y) - \int_Y b(y,z) f(z,t)\,dz\Big)\,dy $$
#
# over A, where $r$ is the costate, $\partial_t r = B_b^T(\sigma'(u) r)$ backward from
# $r(T) = \int dloss/dO\, W$. With $\sigma = \tanh$ increasing and no running cost the
# minimum is pointwise in y and *bang-bang*: where $r(y,t) > 0$, $u$ is made as small as
# possible, $a = a_-$ and $b(y,z) = b_+$ where $f(z) > 0$, $b_-$ where $f(z) < 0$; where
# $r < 0$ the opposite.
#
# Discretely, on the ResNet (DG0 neurons, explicit Euler, $f_{k+1} = f_k +
# \tau\sigma(a^k - B_{b^k} f_k)$) the Hamiltonian of layer k is
#
# $$ H_k(a, b) = \tau \sum_i \omega_i\, r_i(t_{k+1})\, \sigma\Big(a_i - \sum_j b_{ij}\,\omega_j f_j(t_k)\Big), $$
#
# with the costate at the *top* of the layer and the state at its bottom, and its
# derivative is the layer's gradient. MSA iterates: forward solve, costate solve,
# $(a^k, b^k) \leftarrow \arg\min_A H_k$ for every layer; `msa` adds a safeguard (the step
# $m + \theta(m_H - m)$, $\theta = 1, 1/2, \dots$, until J decreases).
#
# ## Implementation

from mpi4py import MPI  # noqa: I001  (fem_dnn orders the DOLFINx imports itself)

import sys
from pathlib import Path

import numpy as np

import fem_dnn  # noqa: F401
from fem_dnn.process import configure
from fem_dnn.core.depth import Depth, ProductMesh
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.app.output import write_trajectory
from fem_dnn.network import Network
from fem_dnn.learning import FixedReadout
from fem_dnn.optimize import Optimizer, hamiltonian_minimiser, msa

configure()  # the job's process settings: BLAS threads per rank, malloc (fem_dnn.process)

comm = MPI.COMM_WORLD
out = Path("out_pmp")
quick = "--quick" in sys.argv  # smaller sizes for the test suite


def say(*args):
    if comm.rank == 0:
        print(*args, flush=True)


n = 32 if quick else 64
N, T = n // 2, 2.0
alo, ahi, blo, bhi = -1.0, 1.0, -2.0, 2.0
box = {"a": (alo, ahi), "b": (blo, bhi)}

space = NodeSpace(create_node_mesh(comm, "interval", n), "DG", 0, "lumped")
depth = Depth(T=T, N=N)
net = Network(space, depth, "tanh", "euler")
J = ReducedFunctional(net, lambda y: np.sin(2 * np.pi * y[0]), np.array([2]), "classes", K=3, lam=0.0)
y_nat = np.sort(space.x_all[0])  # DG0 dofs (cell midpoints), left to right
w_nat = space.to_natural(space.weights[: space.n_local])  # node weights omega_i = 1/n
W = np.array([np.cos(k * np.pi * y_nat) for k in (1, 2, 3)])
m0 = J.controls.from_natural(np.zeros((N, n)), np.zeros((N, n, n)), W, np.zeros(3))
say(f"One sample, n = {n} DG0 neurons, N = {N} Euler layers, T = {T}, box a in {box['a']}, b in {box['b']}")

# ### 1. MSA
#
# From a = b = 0. `msa` prints one line per iteration: J, the accepted step theta and the
# forward solves so far. It stops when no step theta >= 2^-10 decreases J (reason 2) or
# when the decrease falls below a relative 1e-10 (reason 1). At a fixed point of the PMP
# step the trial points differ from the iterate only by round-off in W (`m + theta (m_H -
# m)` is not bitwise m), so which of the two ends the run can depend on the number of
# ranks; the iterate is the same.

J0 = J(m0)
res = msa(J, m0, box, max_it=50)
m = res.m
Js = [h["J"] for h in res.history]
say(f"MSA: {len(Js) - 1} accepted steps (stop reason {res.reason}), J {J0:.6f} -> {res.J:.6f}, "
    f"{res.counts['forward']} forward and {res.counts['costate']} costate solves")
assert all(b < a for a, b in zip(Js, Js[1:])) and res.J < 0.5 * J0 and res.reason in (1, 2)

# ### 2. The maximum principle at the MSA result
#
# The state and the costate at the final iterate, in natural node order (every rank).

traj, costate = J.trajectory(m), J.costate(m)
R = costate.r()  # (N+1, S, n_local): the costate at the depth points
r_nat = np.array([space.to_natural(R[k, 0]) for k in range(N + 1)])
f_nat = np.array([traj.natural(k)[0] for k in range(N + 1)])
nat = J.controls.natural(m)
A, B = nat["a"], nat["b"]
r_layer = r_nat[1:]  # r(t_{k+1}): the costate that enters layer k's Hamiltonian

# (a) The controls are bang-bang: every a and every b on a bound.

assert np.all((A == alo) | (A == ahi)) and np.all((B == blo) | (B == bhi))
say(f"(a) all {A.size} values of a and {B.size} of b lie on the bounds")

# (b) The switching structure is the sign of the costate: $a = a_-$ exactly where
# $r > 0$, and $b = b_+$ exactly where $r(y) f(z) > 0$ (with f at the bottom of the layer).

assert np.all(r_layer != 0.0)
assert np.array_equal(A == alo, r_layer > 0) and np.array_equal(A == ahi, r_layer < 0)
rf = r_layer[:, :, None] * f_nat[:-1, None, :]
assert np.all(B[rf > 0] == bhi) and np.all(B[rf < 0] == blo)
say(f"(b) a = a- exactly where r > 0 and b = b+ exactly where r(y) f(z) > 0, on every layer "
    f"(min |r| = {np.abs(r_layer).min():.2e})")

# (c) The final iterate is a fixed point of the PMP step (the Hamiltonian minimisation
# from its own state and costate returns it unchanged) ...

mH = hamiltonian_minimiser(J, m, box)
mH.axpy(-1.0, m)
assert mH.norm() == 0.0
say("(c) the PMP step from the final iterate returns it unchanged")

# ... and, checked independently of the library, each layer's Hamiltonian $H_k$ at the
# MSA controls is no larger than at 200 random admissible controls, nor at the controls
# with the signs of a or of b flipped.

rng = np.random.default_rng(0)
gap_min = np.inf
for k in range(N):
    lam_k = depth.tau[k] * w_nat * r_layer[k]  # lam_{k+1} = M r(t_{k+1}), times tau_k

    def H(a, b):
        return float(lam_k @ np.tanh(a - b @ (w_nat * f_nat[k])))

    Hk = H(A[k], B[k])
    trials = [H(rng.uniform(alo, ahi, n), rng.uniform(blo, bhi, (n, n))) for _ in range(200)]
    trials += [H(-A[k], B[k]), H(A[k], blo + bhi - B[k])]
    gap_min = min(gap_min, min(trials) - Hk)
assert gap_min > 0
say(f"    H_k(MSA controls) < H_k(any of 202 other admissible controls) on all {N} layers (smallest gap {gap_min:.2e})")

# (d) The switching set moves with depth: the sign of a changes along t at some neurons.
# The map below shows a(y, t), one row per layer from t = T (top) to t = 0, "+" for a+
# and "-" for a-.

flips = np.argwhere(np.diff(A, axis=0) != 0)  # (layer k, node i): a changes between k and k+1
say(f"(d) a(y, t) ({len(flips)} switches in depth):")
for k in reversed(range(N)):
    say("    " + "".join("+" if v == ahi else "-" for v in A[k]) + f"   t in ({depth.points[k]:.3f}, {depth.points[k + 1]:.3f})")
for k, i in flips:
    say(f"    neuron y = {y_nat[i]:.4f}: a switches from {A[k, i]:+g} to {A[k + 1, i]:+g} at t = {depth.points[k + 1]:.3f}")
assert len(flips) >= 1

# ### 3. Box-constrained L-BFGS on the same problem
#
# `Optimizer(J, "lbfgs", bounds=box)` trains the readout W, mu too (unbounded). To solve
# the *same* problem as MSA, the readout is frozen by `FixedReadout(J)`, which zeroes the
# W and mu parts of the derivative (and of the Hessian action): TAO then never moves them.

for key in J.counts:
    J.counts[key] = 0
opt = Optimizer(FixedReadout(J), "lbfgs", bounds=box, gttol=1e-8, max_it=500, monitor=False)
lb = opt.solve(m0)
opt.destroy()
nat_lb = J.controls.natural(lb.m)
A_lb, B_lb = nat_lb["a"], nat_lb["b"]
lb_solves = lb.counts["forward"] + lb.counts["costate"]
msa_solves = res.counts["forward"] + res.counts["costate"]
r_lb = np.array([space.to_natural(J.costate(lb.m).r(k)[0]) for k in range(1, N + 1)])
same_a = np.mean(A_lb == A)
say(f"box L-BFGS: {lb.iterations} iterations (reason {lb.reason}), J = {lb.J:.10f}, {lb_solves} forward + costate solves")
say(f"MSA:        {len(Js) - 1} accepted steps,           J = {res.J:.10f}, {msa_solves} forward + costate solves")
say(f"            a identical on {100 * same_a:.1f}% of the (depth, node) cells, b on {100 * np.mean(B_lb == B):.1f}%")

# Here the first-order (KKT) conditions of the box problem *are* the maximum principle:
# the a-derivative is $\tau\omega_i\sigma'(u_i) r_i$ with $\sigma' > 0$, so a local
# minimiser has $a = a_-$ where $r > 0$ and $a = a_+$ where $r < 0$. Box L-BFGS, a
# gradient method, therefore ends at a bang-bang a with the same sign rule (with its own
# costate), and at the same J as MSA up to the choice of local minimum.

assert np.all(np.abs(nat_lb["W"] - W) <= 1e-12) and np.all(np.abs(nat_lb["mu"]) <= 1e-12)
big = np.abs(r_lb) > 1e-6 * np.abs(r_lb).max()
assert np.allclose(A_lb[big & (r_lb > 0)], alo, rtol=0, atol=1e-10)
assert np.allclose(A_lb[big & (r_lb < 0)], ahi, rtol=0, atol=1e-10)
assert abs(lb.J - res.J) <= 1e-3 * res.J and same_a > 0.95
assert msa_solves < lb_solves

# With W and mu trained as well (the library call as it is), one sample is fitted almost
# exactly by the readout alone: the limitation of MSA here is that LM §5's algorithm
# updates only a and b.

for key in J.counts:
    J.counts[key] = 0
opt = Optimizer(J, "lbfgs", bounds=box, gttol=1e-8, max_it=500, monitor=False)
free = opt.solve(m0)
opt.destroy()
nat_free = J.controls.natural(free.m)
say(f"box L-BFGS training W and mu too: J = {free.J:.3e} after {free.iterations} iterations")
assert free.J < 1e-3 * res.J
assert np.all((nat_free["a"] >= alo) & (nat_free["a"] <= ahi)) and np.all((nat_free["b"] >= blo) & (nat_free["b"] <= bhi))

# ### 4. Output
#
# Over the (depth, node) mesh: the state f and costate r of the sample (continuous in
# depth), and the layer-wise bias a and sign of r(t_{k+1}) (constant on each layer), for
# ParaView.

product = ProductMesh(space, depth)
c, _ = J.controls.split(m)
files = write_trajectory(out, product, {"f": traj.states[:, 0, :], "r": R[:, 0, :]},
                         {"a": c.a, "sign_r": np.sign(R[1:, 0, :])}, stem="pmp")
say(f"wrote {', '.join(str(p) for p in files)}")

# The figures (rank 0): a(y, t) next to the sign of the costate that sets it and r
# itself with its zero level set (the switching curve); b on the first and the last
# layer ($b_+$ where $r(y) f(z) > 0$: the sign changes of f in z move with depth too);
# J against the forward + costate solves spent.

if comm.rank == 0:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_edges, t_edges = np.linspace(0.0, 1.0, n + 1), depth.points
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), constrained_layout=True)
    pc = axes[0].pcolormesh(y_edges, t_edges, A, cmap="RdBu_r", vmin=-max(abs(alo), ahi), vmax=max(abs(alo), ahi))
    fig.colorbar(pc, ax=axes[0], label="a(y, t)")
    axes[0].set_title("bias a from MSA (bang-bang)")
    pc = axes[1].pcolormesh(y_edges, t_edges, np.sign(r_layer), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    fig.colorbar(pc, ax=axes[1], label="sign of $r(y, t_{k+1})$", ticks=[-1, 0, 1])
    axes[1].set_title("sign of the costate on each layer")
    lim = np.abs(r_nat).max()
    pc = axes[2].pcolormesh(y_nat, depth.points, r_nat, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="gouraud")
    axes[2].contour(y_nat, depth.points, r_nat, levels=[0.0], colors="k", linewidths=1.0)
    fig.colorbar(pc, ax=axes[2], label="r(y, t)")
    axes[2].set_title("costate r and its zero level set")
    for ax in axes:
        ax.set_xlabel("node y (width)")
        ax.set_ylabel("depth t")
    fig.savefig(out / "pmp_controls.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), constrained_layout=True)
    for ax, k in zip(axes, (0, N - 1)):
        pc = ax.pcolormesh(y_edges, y_edges, B[k], cmap="RdBu_r", vmin=-max(abs(blo), bhi), vmax=max(abs(blo), bhi))
        fig.colorbar(pc, ax=ax, label="b(y, z)")
        ax.set_xlabel("z")
        ax.set_ylabel("y")
        ax.set_title(f"b(y, z) on layer {k + 1} of {N}")
    fig.savefig(out / "pmp_b.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    J_low = min(res.J, lb.J)
    for hist, style, label in ((res.history, "-o", "MSA"), (lb.history, "-s", "box L-BFGS (W, mu fixed)")):
        d = np.array([h["J"] for h in hist]) - J_low
        ax.semilogy([h["forward"] + h["costate"] for h in hist], np.where(d > 0, d, np.nan), style, ms=3, label=label)
    ax.set_xlabel("forward + costate solves")
    ax.set_ylabel("J - (the lower of the two final J)")
    ax.set_title("MSA and box L-BFGS on the same box problem")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(out / "pmp_J.png", dpi=120)
    plt.close(fig)
    for name in ("pmp_controls.png", "pmp_b.png", "pmp_J.png"):
        assert (out / name).stat().st_size > 0
say(f"wrote {out / 'pmp_controls.png'}, {out / 'pmp_b.png'}, {out / 'pmp_J.png'}")
J.destroy(), net.destroy()
say("All claims verified.")
