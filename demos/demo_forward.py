# # The continuum ResNet: forward problem and well-posedness
#
# This demo is implemented in {download}`demo_forward.py`. It shows
#
# - the Liu-Markowich state equation solved on the (depth, node) domain,
# - its closed-form solution (LM §3.3) reproduced,
# - convergence under depth and width refinement (tables of errors and observed orders),
# - the Lipschitz stability estimate of LM Thm 3.1,
# - the Lyapunov functional of LM Thm 3.2 decaying,
# - a network whose neurons live on a disk (a gmsh mesh from `meshes/`),
# - output for ParaView (XDMF and VTX over the (depth, node) mesh) and a PNG.
#
# Run it with `mpirun -n 2 python demos/demo_forward.py`; every claim is asserted.
#
# ## Problem statement
#
# A residual network $x^{k+1} = x^k + \tau\sigma(a^k - B^k x^k)$ becomes, as width and
# depth go to infinity, the partial differential-integral equation
#
# $$ \partial_t f(y,t) = \sigma\Big(a(y,t) - \int_Y b(y,z,t) f(z,t)\,dz\Big),
#    \qquad f(y,0) = f_I(y), $$
#
# on the node domain $Y$ (the width) and the depth interval $[0,T]$. With
# $\|\phi\| = 1$, $\psi \perp \sigma(\phi)$, $b(y,z) = \phi(y)\psi(z)$, $a = \alpha\phi$ and
# $\int f_I\psi = \alpha - 1$ the solution is $f = f_I + t\,\sigma(\phi)$ exactly.
#
# ## Implementation

from mpi4py import MPI  # noqa: I001  (fem_dnn orders the DOLFINx imports itself)

import sys
from pathlib import Path

import numpy as np

import fem_dnn  # noqa: F401
from fem_dnn.process import configure
from fem_dnn.core.depth import Depth, ProductMesh
from fem_dnn.core.meshes import create_node_mesh, read_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.app.output import plot_trajectory, write_trajectory
from fem_dnn.network import ORDER, SCHEMES, Network

configure()  # the job's process settings: BLAS threads per rank, malloc (fem_dnn.process)

comm = MPI.COMM_WORLD
out = Path("out_forward")
quick = "--quick" in sys.argv  # smaller sizes for the test suite


def say(*args):
    if comm.rank == 0:
        print(*args, flush=True)


# The closed-form data on $Y = (0,1)$: $\phi = \sqrt2\cos\pi y$, $\psi = 1$ (even about
# $y = 1/2$ while $\tanh\phi$ is odd, so $\psi\perp\sigma(\phi)$), $\alpha = 1/2$.

alpha, T = 0.5, 1.0


def phi(y):
    return np.sqrt(2.0) * np.cos(np.pi * y[0])


def f_I(y):
    return (alpha - 1.0) + 0.5 * np.sin(2 * np.pi * y[0])


def exact(y, t):
    return f_I(y) + t * np.tanh(phi(y))


def closed_form(net):
    return net.make_controls(
        a=lambda y, t: alpha * phi(y), b=lambda y, z, t: np.outer(phi(y), np.ones(z.shape[1]))
    )


def l2(space, F):  # discrete L2(Y) norm with the node weights
    return np.sqrt(comm.allreduce(float(np.sum(space.weights[:, None] * F**2))))


# ### 1. The closed-form solution and width convergence
#
# DG0 (a cell is a neuron) converges at order 1, P1 with consistent mass at order 2.

say("1. Width refinement against the closed-form solution f = f_I + t sigma(phi)")
say(f"   {'n':>5} {'DG0 error':>12} {'order':>6} {'P1 error':>12} {'order':>6}")
widths = (8, 16, 32) if quick else (16, 32, 64, 128)
errs = {"DG": [], "P": []}
for n in widths:
    row = []
    for fam, deg, mass in (("DG", 0, "lumped"), ("P", 1, "consistent")):
        space = NodeSpace(create_node_mesh(comm, "interval", n), fam, deg, mass)
        net = Network(space, Depth(T, 4), "tanh", "heun")
        traj = net.forward(f_I, closed_form(net))
        # compare with the exact solution at a fine set of points (L2 via 4-point Gauss per cell)
        gx, gw = np.polynomial.legendre.leggauss(4)
        pts = ((np.arange(n)[:, None] + 0.5 * (gx[None, :] + 1.0)) / n).ravel()
        vals = net.evaluate(traj, pts[:, None])[0]
        e = np.sqrt(np.sum(np.tile(gw / (2 * n), n) * (vals - exact(pts[None, :], T)) ** 2))
        errs[fam].append(e)
        space.destroy()
    k = len(errs["DG"]) - 1
    rates = [np.log2(errs[f][k - 1] / errs[f][k]) if k else np.nan for f in ("DG", "P")]
    say(f"   {n:5d} {errs['DG'][-1]:12.3e} {rates[0]:6.2f} {errs['P'][-1]:12.3e} {rates[1]:6.2f}")
rate_dg = np.log2(errs["DG"][-2] / errs["DG"][-1])
rate_p1 = np.log2(errs["P"][-2] / errs["P"][-1])
assert abs(rate_dg - 1) < 0.15 and abs(rate_p1 - 2) < 0.15, (rate_dg, rate_p1)

# ### 2. Depth convergence of the four architectures
#
# Autonomous smooth controls; the reference is RK4 with 512 layers on the same node space.

say("2. Depth refinement (P1, consistent mass, n = 32): error at T and observed order")
space = NodeSpace(create_node_mesh(comm, "interval", 32), "P", 1, "consistent")


def smooth(net):
    return net.make_controls(
        a=lambda y, t: 0.5 * np.sin(np.pi * y[0]) + 0.2,
        b=lambda y, z, t: 1.5 * np.cos(np.pi * (y[0][:, None] - z[0][None, :])) - 0.3,
    )


def f_smooth(y):
    return np.cos(2 * np.pi * y[0])


ref_net = Network(space, Depth(T, 512), "tanh", "rk4")
ref = ref_net.forward(f_smooth, smooth(ref_net)).final
layers = (4, 8, 16) if quick else (4, 8, 16, 32)
say("   " + f"{'N':>4}" + "".join(f"{s:>20}" for s in SCHEMES))
table = {s: [] for s in SCHEMES}
for N in layers:
    for s in SCHEMES:
        net = Network(space, Depth(T, N), "tanh", s)
        table[s].append(l2(space, net.forward(f_smooth, smooth(net)).final - ref))
        net.destroy()
    rates = {s: np.log2(table[s][-2] / table[s][-1]) if len(table[s]) > 1 else np.nan for s in SCHEMES}
    say("   " + f"{N:4d}" + "".join(f"{table[s][-1]:12.3e} ({rates[s]:5.2f})" for s in SCHEMES))
for s in SCHEMES:
    rate = np.log2(table[s][-2] / table[s][-1])
    assert abs(rate - ORDER[s]) < 0.3, (s, rate)

# ### 3. Stability (LM Thm 3.1)
#
# $\|f_1(t) - f_2(t)\| \le e^{Lt}\|f_1(0) - f_2(0)\|$ with $L = \mathrm{Lip}(\sigma)\,\|b\|$.

say("3. Lipschitz stability in the initial data")
net = Network(space, Depth(T, 32), "tanh", "rk4")
c = smooth(net)
traj = net.forward(lambda y: np.vstack([f_smooth(y), f_smooth(y) + 0.1 * np.sin(5 * y[0])]), c)
# ||b||_{L2(YxY)} from the kernel samples: sum_ij b_ij^2 w_i w_j (lumped-weight quadrature)
w_all = np.concatenate(comm.allgather(space.weights))
bnorm = np.sqrt(comm.allreduce(float(np.sum(c.b[0] ** 2 * space.weights[:, None] * w_all[None, :]))))
d0 = l2(space, traj.state(0)[:, :1] - traj.state(0)[:, 1:])
for k in range(0, net.depth.N + 1, 8):
    t = net.depth.points[k]
    dk = l2(space, traj.state(k)[:, :1] - traj.state(k)[:, 1:])
    say(f"   t = {t:4.2f}: ||f1 - f2|| = {dk:.4e} <= e^(Lt) ||f1(0) - f2(0)|| = {np.exp(bnorm * t) * d0:.4e}")
    assert dk <= np.exp(bnorm * t) * d0 * (1 + 1e-12)
net.destroy()

# ### 4. Lyapunov functional (LM Thm 3.2)
#
# For autonomous controls the pre-activation obeys $u_t = -B\sigma(u)$ and
# $\int_Y \Sigma(u)$, $\Sigma' = \sigma$ ($\Sigma = \log\cosh$ for tanh), does not increase
# when the symmetric part of $B$ is positive semidefinite: a Gaussian kernel is.

say("4. Lyapunov functional int log cosh(u) dy for a positive semidefinite kernel")
net = Network(space, Depth(2.0, 40), "tanh", "rk4")
c = net.make_controls(a=0.3, b=lambda y, z, t: 2.0 * np.exp(-((y[0][:, None] - z[0][None, :]) ** 2) / 0.05))
traj = net.forward(lambda y: np.sin(3 * y[0]), c)
lyap = []
for k in range(net.depth.N + 1):
    U = net.preactivation(min(k, net.depth.N - 1), np.asfortranarray(traj.state(k)), c)
    lyap.append(comm.allreduce(float(np.sum(space.weights * np.log(np.cosh(U[:, 0]))))))
say("   " + " -> ".join(f"{v:.5f}" for v in lyap[::10]))
assert np.all(np.diff(lyap) <= 1e-12)

# ### 5. Output: the state over the (depth, node) domain
#
# The trajectory is a function on the (depth, node) mesh (quadrilaterals here), written
# for ParaView; a PNG shows one sample.

product = ProductMesh(space, net.depth)
paths = write_trajectory(out, product, {"f": traj.states[:, 0, :]}, {"a": c.a})
nat = np.array([traj.natural(k)[0] for k in range(net.depth.N + 1)])
png = plot_trajectory(out / "state.png", space, net.depth.points, nat, "state f over the (depth, node) domain")
say(f"5. wrote {', '.join(str(p) for p in paths)} and {png}")
net.destroy()

# ### 6. Neurons on a disk
#
# The node domain can be any mesh: here the unit disk of `meshes/disk.msh`. The
# (depth, node) mesh is made of prisms.

disk = read_node_mesh(Path(__file__).resolve().parents[1] / "meshes" / "disk.msh", comm)
dspace = NodeSpace(disk, "P", 1, "lumped")
dnet = Network(dspace, Depth(1.0, 8), "tanh", "heun", eps=0.01)
dc = dnet.make_controls(a=lambda y, t: y[0], b=lambda y, z, t: np.exp(-((y[0][:, None] - z[0][None, :]) ** 2 + (y[1][:, None] - z[1][None, :]) ** 2)))
dtraj = dnet.forward(lambda y: np.sin(np.pi * y[1]), dc)
assert np.isfinite(dtraj.final).all()
write_trajectory(out, ProductMesh(dspace, dnet.depth), {"f": dtraj.states[:, 0, :]}, stem="disk")
say(f"6. disk network: {dspace.n} neurons, |f(T)|_L2 = {l2(dspace, dtraj.final):.4f}; wrote {out / 'disk.xdmf'}")
dnet.destroy()
say("All claims verified.")
