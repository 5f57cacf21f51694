"""The UFL forms (the specification, fem_dnn.core.forms) against the assembled and batched
operators (NodeSpace, Kernel, Network) and against values computed by hand.

Every test is MPI-agnostic: vectors are compared on owned rows, scalars are reduced
with ``comm.allreduce``, and random data is drawn in natural node order (rank
independent) and distributed with ``NodeSpace.from_natural``.
"""

import numpy as np
import pytest
import ufl
from dolfinx import fem, la
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx.fem.petsc

from fem_dnn.core import forms
from fem_dnn.core.activation import ACTIVATIONS
from fem_dnn.core.depth import Depth
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.core.kernel import DenseKernel
from fem_dnn.network import Network, logistic as np_logistic, softmax as np_softmax

TANH = ACTIVATIONS["tanh"]
VERTEX = ufl.dx(metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})


# --------------------------------------------------------------------------- helpers
def owned_vector(form, V):
    """Owned entries of the assembled vector of a linear form (ghost contributions added)."""
    b = fem.assemble_vector(fem.form(form))
    b.scatter_reverse(la.InsertMode.add)
    n = V.dofmap.index_map.size_local * V.dofmap.index_map_bs
    return b.array[:n].copy()


def total(form, comm):
    """Global value of a scalar form."""
    return comm.allreduce(fem.assemble_scalar(fem.form(form)), op=MPI.SUM)


def gmax(comm, x):
    return comm.allreduce(float(np.max(np.abs(x), initial=0.0)), op=MPI.MAX)


def gdot(comm, x, y):
    return comm.allreduce(float(np.sum(x * y)), op=MPI.SUM)


def natural_random(space, S=None, seed=0):
    """Rank-independent random node values: owned part of a natural-order array."""
    rng = np.random.default_rng(seed)
    if S is None:
        return space.from_natural(rng.uniform(-1.0, 1.0, size=space.n))
    return np.asfortranarray(space.from_natural(rng.uniform(-1.0, 1.0, size=(S, space.n)), axis=1).T)


def assembled_matrix(form):
    A = dolfinx.fem.petsc.assemble_matrix(fem.form(form))
    A.assemble()
    return A


def matvec(A, x_owned):
    x, y = A.createVecRight(), A.createVecLeft()
    x.array[:] = x_owned
    A.mult(x, y)
    out = y.array.copy()
    x.destroy(), y.destroy()
    return out


SPACES = {
    "DG0": ("DG", 0, "lumped"),
    "P1-lumped": ("P", 1, "lumped"),
    "P1-consistent": ("P", 1, "consistent"),
    "P2-consistent": ("P", 2, "consistent"),
}


def make_space(comm, key, shape="rectangle", n=(4, 3), **kw):
    family, degree, mass = SPACES[key]
    return NodeSpace(create_node_mesh(comm, shape, n, **kw), family, degree, mass)


# --------------------------------------------------------------------------- activations
@pytest.mark.mpi
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_numpy_matches_ufl(comm, name):
    """sigma, sigma', sigma'' in numpy equal act.ufl(s) and its UFL derivatives
    (ufl.diff of a ufl.variable), evaluated cell-wise on a DG0 function s whose
    values -2.75, -2.25, ..., 2.75 avoid the kink at 0."""
    act = ACTIVATIONS[name]
    space = NodeSpace(create_node_mesh(comm, "interval", 12), "DG", 0)
    s_h = space.function(space.interpolate(lambda y: -3.0 + 6.0 * y[0]))
    s = s_h.x.array[: space.n_local]
    assert np.all(np.abs(s) > 0.2)
    v = ufl.TestFunction(space.V)
    sv = ufl.variable(s_h)
    expr = act.ufl(sv)
    d1 = ufl.diff(expr, sv)
    d2 = ufl.diff(d1, sv)
    for e, ref in ((expr, act.sigma(s)), (d1, act.dsigma(s)), (d2, act.d2sigma(s))):
        vals = owned_vector(e * v * ufl.dx, space.V) / space.weights
        assert gmax(comm, vals - ref) < 1e-13, name


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_finite_differences(name):
    """dsigma and d2sigma are the central differences of sigma and dsigma (away from 0)."""
    act = ACTIVATIONS[name]
    s = np.linspace(-3.0, 3.0, 60)  # an even count: 0 is not a sample
    h = 1e-5
    fd1 = (act.sigma(s + h) - act.sigma(s - h)) / (2 * h)
    fd2 = (act.dsigma(s + h) - act.dsigma(s - h)) / (2 * h)
    assert np.allclose(act.dsigma(s), fd1, rtol=0, atol=1e-8)
    assert np.allclose(act.d2sigma(s), fd2, rtol=0, atol=1e-8)
    assert np.all(np.abs(np.diff(act.sigma(s)) / np.diff(s)) <= act.lipschitz + 1e-12)


#: The error bound of the exp-based tanh ``2 / (1 + e) - 1``, ``e = exp(-2 s)``, against
#: tanh itself, with u = 2^-53: the sum 1 + e and the quotient round by at most u in
#: absolute terms where they lie in [1, 2) (half an ulp), and the quotient's slope in the
#: sum is at most 2, so rounding adds at most 3 u; the last subtraction is exact
#: (Sterbenz) or rounds by u/2 where the result lies in (-1, -1/2); exp's relative error
#: d adds at most d/2 (the factor 2e / (1 + e)^2 <= 1/2). With exp within 2 ulp (d <= 4 u)
#: that is 5 u = 5.6e-16. Measured: 3.3e-16, with numpy's AVX-512 and AVX2 loops and
#: without SIMD. The reference is tanh in long double (80-bit on x86), not numpy's
#: float64 tanh, whose own error (up to 0.8 ulp of 1 without SIMD, 0.4 with AVX-512,
#: measured) differs between machines: against it, the old bound 5e-16 left 0.3 ulp.
TANH_BOUND = 5 * 2.0**-53


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="long double is no wider than double here")
def test_tanh_accuracy():
    """The exp-based tanh (activation._tanh) is within TANH_BOUND (5 u) of tanh everywhere,
    odd to twice that, exact at 0 and in the tails, never beyond +-1, and keeps NaN."""
    act = ACTIVATIONS["tanh"]
    s = np.concatenate([np.linspace(-40.0, 40.0, 400001), np.geomspace(1e-300, 1e3, 2000)])
    s = np.concatenate([s, -s])
    t = act.sigma(s)
    exact = np.tanh(s.astype(np.longdouble))
    assert np.abs(t - exact).max() <= TANH_BOUND
    assert np.abs(t + act.sigma(-s)).max() <= 2 * TANH_BOUND
    assert np.all(np.abs(t) <= 1.0)  # 2 / (1 + e) rounds into [0, 2]
    ends = act.sigma(np.array([0.0, 400.0, -400.0, np.inf, -np.inf, np.nan]))
    assert np.array_equal(ends[:5], [0.0, 1.0, -1.0, 1.0, -1.0]) and np.isnan(ends[5])
    for x in (0.3, -400.0, np.float64(2.0)):  # scalars too
        assert abs(act.sigma(x) - np.tanh(np.longdouble(x))) <= TANH_BOUND and np.ndim(act.sigma(x)) == 0


# --------------------------------------------------------------------------- node weights, mass
@pytest.mark.mpi
@pytest.mark.parametrize("key", ["DG0", "P1-lumped", "P1-consistent"])
@pytest.mark.parametrize("cell", ["triangle", "quadrilateral"])
def test_weights_are_lumped_mass(comm, key, cell):
    space = make_space(comm, key, bounds=[[0.0, 0.0], [2.0, 1.5]], cell=cell)
    v = ufl.TestFunction(space.V)
    w = owned_vector(forms.lumped_mass(v), space.V)
    assert np.allclose(space.weights, w, rtol=1e-14, atol=0)
    assert np.all(space.weights > 0)
    assert abs(space.volume - 3.0) < 1e-13
    # lumped mass = row sums of the consistent mass matrix
    u = ufl.TrialFunction(space.V)
    M = assembled_matrix(forms.mass(u, v))
    assert gmax(comm, matvec(M, np.ones(space.n_local)) - space.weights) < 1e-14
    M.destroy()
    if space.mass == "lumped":
        F = natural_random(space, S=2)
        assert np.array_equal(space.apply_mass(F), space.weights[:, None] * F)


@pytest.mark.mpi
@pytest.mark.parametrize("key", ["P1-consistent", "P2-consistent"])
@pytest.mark.parametrize("shape,n", [("interval", 7), ("rectangle", (3, 4))])
def test_apply_mass_is_assembled_mass(comm, key, shape, n):
    space = make_space(comm, key, shape, n)
    u, v = ufl.TrialFunction(space.V), ufl.TestFunction(space.V)
    M = assembled_matrix(forms.mass(u, v))
    F = natural_random(space, S=3, seed=1)
    G = space.apply_mass(F)
    assert G.shape == F.shape
    for s in range(F.shape[1]):
        assert gmax(comm, G[:, s] - matvec(M, F[:, s])) < 1e-14
    # and solve_mass inverts it
    assert gmax(comm, space.solve_mass(G) - F) < 1e-12
    M.destroy()


# --------------------------------------------------------------------------- consistent sigma term
@pytest.mark.mpi
@pytest.mark.parametrize("key", ["P1-consistent", "P2-consistent"])
@pytest.mark.parametrize("shape,n,cell", [("interval", 9, None), ("rectangle", (3, 4), "triangle"), ("rectangle", (3, 2), "quadrilateral")])
def test_quadrature_sigma_load_matches_sigma_term(comm, key, shape, n, cell):
    """Q sigma(P u) (values at quadrature points P, weighted load Q, built in fem_dnn/core/nodes.py)
    equals the assembled int_Y tanh(u_h) v with the same quadrature degree."""
    space = make_space(comm, key, shape, n, cell=cell)
    U = space.interpolate(lambda y: np.vstack([2.0 * np.sin(3 * y[0]) + y[1], 1.5 - 3.0 * y[0] * (1 + y[1])]))
    got = space.quad_load(np.tanh(space.quad_values(U)))
    v = ufl.TestFunction(space.V)
    scale = gmax(comm, got)
    for s in range(U.shape[1]):
        u_h = space.function(U[:, s])
        ref = owned_vector(forms.sigma_term(u_h, v, TANH, degree=space.qdeg), space.V)
        assert gmax(comm, got[:, s] - ref) < 1e-13 * max(scale, 1.0)
    # with the identity, Q P is the (exactly integrated) mass matrix
    assert gmax(comm, space.quad_load(space.quad_values(U)) - space.apply_mass(U)) < 1e-13


# --------------------------------------------------------------------------- state equation terms
@pytest.mark.mpi
@pytest.mark.parametrize("key", ["DG0", "P1-lumped", "P1-consistent", "P2-consistent"])
def test_state_rhs_matches_network_rhs(comm, key):
    """M * Network.rhs equals the assembled state_rhs(a_h, (B f)_h, v, sigma): Gauss
    quadrature of degree qdeg (consistent), vertex quadrature (lumped P1), exact (DG0)."""
    space = make_space(comm, key, "interval", 10)
    net = Network(space, Depth(1.0, 2), "arctan", "euler")
    c = net.make_controls(
        a=lambda y, t: 0.5 * np.sin(np.pi * y[0]) + t,
        b=lambda y, z, t: 2.0 * np.cos(np.pi * (y[0][:, None] - z[0][None, :])),
    )
    F = natural_random(space, S=2, seed=3)
    k = 1
    got = space.apply_mass(net.rhs(k, F, c))
    Bf = net.kernel.apply(c.b[k], F)
    v = ufl.TestFunction(space.V)
    a_h = space.function(c.a[k])
    if key == "P1-lumped":
        measure, degree = VERTEX, None
    else:
        measure, degree = None, space.qdeg
    for s in range(F.shape[1]):
        Bf_h = space.function(Bf[:, s])
        L = forms.state_rhs(a_h, Bf_h, v, net.sigma, degree=degree, measure=measure)
        assert gmax(comm, got[:, s] - owned_vector(L, space.V)) < 1e-12


@pytest.mark.mpi
def test_state_rhs_and_hamiltonian_dg0_by_hand(comm):
    space = NodeSpace(create_node_mesh(comm, "rectangle", (4, 3), bounds=[[0, 0], [2, 1]]), "DG", 0)
    r, a, Bf = (natural_random(space, seed=s) for s in (10, 11, 12))
    r_h, a_h, Bf_h = space.function(r), space.function(a), space.function(Bf)
    v = ufl.TestFunction(space.V)
    w = space.weights
    rhs = owned_vector(forms.state_rhs(a_h, Bf_h, v, TANH), space.V)
    assert gmax(comm, rhs - w * np.tanh(a - Bf)) < 1e-15
    lam = 0.3
    H_ref = gdot(comm, w, r * np.tanh(a - Bf))
    R_ref = 0.5 * lam * gdot(comm, w, a * a)
    assert abs(total(forms.hamiltonian(r_h, a_h, Bf_h, TANH), comm) - H_ref) < 1e-14
    assert abs(total(forms.regularisation(a_h, lam), comm) - R_ref) < 1e-14
    H = forms.hamiltonian(r_h, a_h, Bf_h, ACTIVATIONS["sigmoid"], running_cost=forms.regularisation(a_h, lam))
    ref = gdot(comm, w, r * np.asarray(np_logistic(a - Bf))) + R_ref
    assert abs(total(H, comm) - ref) < 1e-14


@pytest.mark.mpi
def test_regularisation_p1_exact(comm):
    """lambda/2 int x^2 y^2 over the unit square = lambda/18."""
    space = NodeSpace(create_node_mesh(comm, "rectangle", (3, 5)), "P", 1)
    mesh = space.mesh
    x = ufl.SpatialCoordinate(mesh)
    lam = 0.7
    assert abs(total(forms.regularisation(x[0] * x[1], lam), comm) - lam / 18.0) < 1e-14
    c = space.function(space.interpolate(lambda y: y[0]))  # P1 interpolates x exactly
    assert abs(total(forms.regularisation(c, lam), comm) - lam / 6.0) < 1e-14


# --------------------------------------------------------------------------- readout and losses
@pytest.mark.mpi
@pytest.mark.parametrize("key", ["DG0", "P1-lumped", "P1-consistent"])
def test_classes_readout_matches_forms(comm, key):
    """Network.readout (classes) = int_Y W_k f(T) dz + mu_k with forms.readout per class
    (vertex quadrature for lumped P1: the node weights are vertex quadrature)."""
    space = make_space(comm, key, "rectangle", (3, 3), bounds=[[0, 0], [2, 1]])
    net = Network(space, Depth(1.0, 1))
    K, S = 3, 2
    rng = np.random.default_rng(7)
    r = net.make_readout("classes", W=rng.normal(size=(K, space.n)), mu=rng.normal(size=K))
    F = natural_random(space, S=S, seed=8)
    O = net.readout(F, r)
    assert O.shape == (K, S)
    measure = VERTEX if key == "P1-lumped" else None
    for k in range(K):
        W_h = space.function(r.W[k])
        for s in range(S):
            ref = total(forms.readout(W_h, space.function(F[:, s]), measure=measure), comm) + r.mu[k]
            assert abs(O[k, s] - ref) < 1e-13
    # prediction = softmax of the readout
    assert np.allclose(net.predict(F, r), np_softmax(O, axis=0), rtol=0, atol=1e-15)


@pytest.mark.mpi
def test_classes_readout_bias_on_non_unit_domain(comm):
    space = NodeSpace(create_node_mesh(comm, "interval", 4, bounds=[[0.0], [2.0]]), "DG", 0)
    net = Network(space, Depth(1.0, 1))
    r = net.make_readout("classes", W=np.ones((1, space.n)), mu=np.array([0.5]))
    F = np.asfortranarray(np.ones((space.n_local, 1)))
    O = net.readout(F, r)  # int_0^2 1 dz + 0.5 = 2.5
    val = total(forms.readout(space.function(r.W[0]), space.function(F[:, 0])), comm) + 0.5
    assert abs(O[0, 0] - 2.5) < 1e-14
    assert abs(val - O[0, 0]) < 1e-13  # mu is added, not integrated over |Y| = 2


@pytest.mark.mpi
@pytest.mark.parametrize("key", ["DG0", "P1-consistent"])
def test_function_readout_matches_forms(comm, key):
    """Function readout O_i = int W(y_i, z) f(z) dz + mu(y_i): row i of Network.readout is
    the assembled forms.readout with W_i(z) = sum_j W_ij phi_j(z)."""
    space = make_space(comm, key, "interval", 6)
    net = Network(space, Depth(1.0, 1))
    r = net.make_readout(
        "function",
        W=lambda y, z: np.cos(y[0][:, None] + 2.0 * z[0][None, :]),
        mu=lambda y: 0.1 * y[0],
    )
    F = natural_random(space, S=1, seed=5)
    O = net.readout(F, r)[:, 0]
    f_h = space.function(F[:, 0])
    # readout value of node i (a global dof) computed on every rank, kept by its owner
    ref = np.zeros(space.n_local)
    for i in range(space.n):
        owner = int(np.searchsorted(space.offsets, i, side="right") - 1)
        row = space.comm.bcast(r.W[i - space.offset] if owner == comm.rank else None, root=owner)
        W_h = space.function(row[space.offset : space.offset + space.n_local])
        val = total(forms.readout(W_h, f_h), comm)
        if owner == comm.rank:
            ref[i - space.offset] = val + r.mu[i - space.offset]
    assert gmax(comm, O - ref) < 1e-13


@pytest.mark.mpi
def test_l2_loss_and_logistic(comm):
    """1/2 int_0^1 (h(O) - C)^2 with O = 2y - 1, h logistic, C = 0.3 against Gauss-Legendre."""
    space = NodeSpace(create_node_mesh(comm, "interval", 8), "P", 1)
    O_h = space.function(space.interpolate(lambda y: 2.0 * y[0] - 1.0))
    C = fem.Constant(space.mesh, PETSc.ScalarType(0.3))
    dx = ufl.dx(metadata={"quadrature_degree": 20})
    val = total(forms.l2_loss(forms.logistic(O_h), C, measure=dx), comm)
    xg, wg = np.polynomial.legendre.leggauss(40)
    yq = 0.5 * (xg + 1.0)
    ref = np.sum(0.5 * wg * 0.5 * (np_logistic(2.0 * yq - 1.0) - 0.3) ** 2)
    assert abs(val - ref) < 1e-14
    # l2 loss of P1 functions is exact with the default degree: 1/2 int (y - 0)^2 = 1/6
    y_h = space.function(space.interpolate(lambda y: y[0]))
    assert abs(total(forms.l2_loss(y_h, 0.0 * y_h), comm) - 1.0 / 6.0) < 1e-14


@pytest.mark.mpi
@pytest.mark.parametrize(
    "O,C",
    [
        ([2.0, -1.0, 0.5], [0.2, 0.5, 0.3]),
        ([0.0, 0.0], [1.0, 0.0]),
        ([1000.0, 999.0, -1000.0, 3.0], [0.0, 1.0, 0.0, 0.0]),  # needs the max shift
    ],
)
def test_softmax_cross_entropy_constants(comm, O, C):
    mesh = create_node_mesh(comm, "rectangle", (2, 2), bounds=[[0, 0], [1.5, 2.0]])
    Oc = fem.Constant(mesh, np.array(O, dtype=PETSc.ScalarType))
    Cc = fem.Constant(mesh, np.array(C, dtype=PETSc.ScalarType))
    ce = forms.softmax_cross_entropy(Oc, Cc)
    area = total(fem.Constant(mesh, PETSc.ScalarType(1.0)) * ufl.dx, comm)
    val = total(ce * ufl.dx, comm) / area
    O, C = np.array(O), np.array(C)
    m = O.max()
    ref = -np.sum(C * (O - m - np.log(np.sum(np.exp(O - m)))))
    assert np.isfinite(val)
    assert abs(val - ref) < 1e-12 * max(1.0, abs(ref))
    # and the network's numpy softmax agrees on moderate values
    if np.all(np.abs(O) < 50):
        assert abs(ref + np.sum(C * np.log(np_softmax(O)))) < 1e-13


# --------------------------------------------------------------------------- diffusion
@pytest.mark.mpi
@pytest.mark.parametrize("eps", [1.0, 0.25])
def test_dg0_diffusion_is_finite_volume_laplacian(comm, eps):
    """Two-point flux on n uniform DG0 cells of [0, L]: the tridiagonal Neumann
    finite-volume Laplacian, (K f)_i = (2 f_i - f_{i-1} - f_{i+1}) / h (one neighbour
    at the ends), in natural (left-to-right) order."""
    n, L = 10, 2.0
    h = L / n
    space = NodeSpace(create_node_mesh(comm, "interval", n, bounds=[[0.0], [L]]), "DG", 0)
    K_nat = (np.diag(np.full(n, 2.0)) - np.diag(np.ones(n - 1), 1) - np.diag(np.ones(n - 1), -1)) / h
    K_nat[0, 0] = K_nat[-1, -1] = 1.0 / h
    u, v = ufl.TrialFunction(space.V), ufl.TestFunction(space.V)
    centres = fem.Function(fem.functionspace(space.mesh, ("DG", 0, (1,))))
    centres.interpolate(lambda x: x[:1])
    A = assembled_matrix(forms.diffusion(u, v, eps, centres))
    rng = np.random.default_rng(2)
    for _ in range(3):
        f_nat = rng.normal(size=n)
        f = space.from_natural(f_nat)
        ref = space.from_natural(eps * K_nat @ f_nat)
        assert gmax(comm, matvec(A, f) - ref) < 1e-12
        assert gmax(comm, space.apply(space.K, f[:, None])[:, 0] - ref / eps) < 1e-12
    A.destroy()


# --------------------------------------------------------------------------- kernel
@pytest.mark.mpi
@pytest.mark.parametrize("key", ["DG0", "P1-lumped", "P1-consistent", "P2-consistent"])
def test_kernel_adjoint(comm, key):
    """<v, B f> = <B^T v, f> in the Euclidean pairing of coefficient vectors."""
    space = make_space(comm, key, "rectangle", (3, 4))
    kern = DenseKernel(space)
    rng = np.random.default_rng(100 + comm.rank)
    b_local = rng.normal(size=(space.n_local, space.n))
    S = 3
    F = natural_random(space, S=S, seed=20)
    V = natural_random(space, S=S, seed=21)
    BF = kern.apply(b_local, F)
    BtV = kern.apply_transpose(b_local, V)
    assert BF.shape == BtV.shape == (space.n_local, S)
    for s in range(S):
        lhs = gdot(comm, V[:, s], BF[:, s])
        rhs = gdot(comm, BtV[:, s], F[:, s])
        scale = np.sqrt(gdot(comm, V[:, s], V[:, s]) * gdot(comm, BF[:, s], BF[:, s]))
        assert abs(lhs - rhs) < 1e-13 * scale


@pytest.mark.mpi
@pytest.mark.parametrize("key", ["DG0", "P1-consistent", "P2-consistent"])
def test_separable_kernel_is_integral(comm, key):
    """b(y,z) = phi(y) psi(z): (B f)_i = phi(y_i) int_Y f_h psi_h (forms.integral)."""
    space = make_space(comm, key, "rectangle", (3, 2))
    kern = DenseKernel(space)

    def phi(y):
        return np.cos(np.pi * y[0]) + y[1]

    def psi(z):
        return 1.0 + z[0] ** 2 - z[1]

    b_local = np.outer(phi(space.x_owned), psi(space.x_all))
    F = space.interpolate(lambda y: np.vstack([np.sin(2 * y[0]) * y[1], 1.0 + y[0]]))
    BF = kern.apply(b_local, F)
    psi_h = space.function(psi(space.x_owned))
    for s in range(F.shape[1]):
        integral = total(forms.integral(space.function(F[:, s]), psi_h), comm)
        assert gmax(comm, BF[:, s] - phi(space.x_owned) * integral) < 1e-13


@pytest.mark.mpi
def test_reuse_example_runs():
    """The "reuse the forms" example of docs/reuse.md runs as written (its asserts hold),
    serially and on 2 and 3 ranks."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "reuse.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/reuse.md", "exec"), {"__name__": "reuse_example"})
