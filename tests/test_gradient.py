"""The optimality system: exact discrete gradients and Hessian actions of J(m).

Taylor tests for every scheme, element, eps, decay and loss; agreement across ranks; the
exact-ResNet case against a hand-written backpropagation; derivative vs Riesz gradient;
convergence of the discrete L2 gradient to the continuous formulas of docs/model.md §3 on the
closed-form problem of LM §3.3; critical points (LM Remark 4.1)."""

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.core.depth import Depth
from fem_dnn.core.layout import split_comm
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.errors import InputError
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.learning.losses import DEFAULT, LOSSES
from fem_dnn.network import SCHEMES, Network
from fem_dnn.learning.verify import taylor_test

from conftest import observed_orders, on_ranks, ranks_vs_serial

ELEMENTS = [("DG", 0, "lumped"), ("P", 1, "consistent")]


def data(kind, n_nat, S=5, K=3, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(S, n_nat))
    if LOSSES[DEFAULT.get(kind, kind)].readout == "classes":
        y = rng.integers(0, K, S)
        y[:K] = np.arange(K)
    else:
        y = 1.0 / (1.0 + np.exp(-rng.normal(size=(S, n_nat))))
    return X, y


def make(comm, family, degree, mass, scheme, eps, kind, sample_groups=1, n=8, N=4, lam=1e-2, gamma=0.0, act="tanh",
         decay=0.0):
    layout = split_comm(comm, sample_groups)
    space = NodeSpace(create_node_mesh(layout.node_comm, "interval", n), family, degree, mass)
    net = Network(space, Depth(T=1.0, N=N), act, scheme, eps=eps, layout=layout, decay=decay)
    X, y = data(kind, space.n)
    J = ReducedFunctional(net, X, y, kind, lam=lam, gamma=gamma)
    return net, J


def close(net, J):
    J.destroy()
    net.destroy()
    net.space.destroy()


@pytest.mark.mpi(ranks=(2,))
@pytest.mark.parametrize("kind", ["classes", "function"])
@pytest.mark.parametrize("eps,decay", [(0.0, 0.0), (0.05, 0.0), (0.0, 0.8)])
@pytest.mark.parametrize("family,degree,mass", ELEMENTS)
@pytest.mark.parametrize("scheme", on_ranks(SCHEMES, ["heun"]))
def test_taylor(comm, scheme, family, degree, mass, eps, decay, kind):
    """Remainder rates 2 (gradient) and 3 (Hessian action) serially (every scheme; without
    and with node diffusion eps and the relaxation rate decay) and on 2 ranks (Heun; every
    scheme's rank agreement is test_parallel_matches_serial's)."""
    net, J = make(comm, family, degree, mass, scheme, eps, kind, gamma=1e-2 if eps else 0.0, decay=decay)
    m = J.controls.random(1, 0.5)
    dm = J.controls.random(2)
    res = taylor_test(J, m, dm, J.derivative(m), J.hessian(m, dm), step=1e-2, n_steps=4)
    assert res.min_rate(1) > 1.9, str(res)
    assert res.min_rate(2) > 2.85, str(res)
    close(net, J)


@pytest.mark.mpi(ranks=(2,))
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_taylor_every_loss(comm, loss):
    """Every loss of the registry (a new loss class is tested here by being registered):
    remainder rates 2 and 3 with P1, diffusion and the H1-in-depth term, on 1, 2 and 3
    ranks; the accuracy of a classes readout is a fraction of the samples."""
    net, J = make(comm, "P", 1, "consistent", "heun", 0.05, loss, gamma=1e-2)
    m, dm = J.controls.random(1, 0.5), J.controls.random(2)
    res = taylor_test(J, m, dm, J.derivative(m), J.hessian(m, dm), step=1e-2, n_steps=4)
    assert res.min_rate(1) > 1.9, str(res)
    assert res.min_rate(2) > 2.85, str(res)
    assert J.kind == LOSSES[loss].readout
    if J.kind == "classes":
        assert 0.0 <= J.accuracy(m) <= 1.0
    close(net, J)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_taylor_p1_lumped_relu_like(comm, scheme):
    """P1 with lumped mass, and a smooth activation other than tanh (ELU is C^1 only,
    so use arctan), with the H1-in-depth regulariser."""
    net, J = make(comm, "P", 1, "lumped", scheme, 0.0, "function", act="arctan", gamma=0.1)
    m, dm = J.controls.random(4, 0.5), J.controls.random(5)
    res = taylor_test(J, m, dm, J.derivative(m), J.hessian(m, dm), n_steps=4)
    assert res.min_rate(1) > 1.9 and res.min_rate(2) > 2.85, str(res)
    close(net, J)


def natural_results(comm, family, degree, mass, scheme, eps, kind, sample_groups=1, decay=0.0):
    net, J = make(comm, family, degree, mass, scheme, eps, kind, sample_groups, decay=decay)
    m, dm = J.controls.random(1, 0.5), J.controls.random(2)
    out = {"J": J(m)}
    for name, vec in (("grad", J.gradient(m)), ("hess", J.hessian(m, dm)), ("gn", J.hessian(m, dm, gauss_newton=True))):
        out[name] = np.concatenate([v.ravel() for v in J.controls.natural(vec).values()])
    close(net, J)
    return out


def assert_same(par, ser):
    assert abs(par["J"] - ser["J"]) <= 1e-12 * abs(ser["J"])
    for key in ("grad", "hess", "gn"):
        assert np.linalg.norm(par[key] - ser[key]) <= 1e-12 * np.linalg.norm(ser[key]), key


@ranks_vs_serial
@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["classes", "function"])
@pytest.mark.parametrize("family,degree,mass,eps,decay", [("DG", 0, "lumped", 0.05, 0.0), ("P", 1, "consistent", 0.0, 0.0),
                                                         ("P", 1, "lumped", 0.05, 0.0), ("P", 1, "consistent", 0.0, 0.8)])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_parallel_matches_serial(comm, scheme, family, degree, mass, eps, decay, kind):
    """Gradient, Hessian action and Gauss-Newton action agree with an in-process serial
    solve to 1e-12 (relative), the directions being the same on any number of ranks."""
    ser = natural_results(MPI.COMM_SELF, family, degree, mass, scheme, eps, kind, decay=decay)
    par = natural_results(comm, family, degree, mass, scheme, eps, kind, decay=decay)
    assert_same(par, ser)


@pytest.mark.parametrize("scheme,eps", [(name, 0.0) for name in SCHEMES] + [("heun", 0.05)])
def test_gradient_skips_the_costate_at_depth_zero(scheme, eps):
    """A gradient's costate solve does not form the costate at depth 0 (nobody reads it):
    the first layer's step adds its control part only, the first stage's B^T product
    skipped. The control parts are the same operations as the solve that forms it
    (``initial``), so the gradients agree to round-off, for every scheme (and with the
    diffusion split off)."""
    net, J = make(MPI.COMM_SELF, "DG", 0, "lumped", scheme, eps, "classes", decay=0.3)
    c = net.make_controls(0.1, 0.5)
    F = net.inputs(np.random.default_rng(0).normal(size=(4, net.space.n)))
    traj = net.forward(F, c, tape=True)
    dual_T = np.asfortranarray(np.random.default_rng(1).normal(size=F.shape))
    _, skipped = net.costate(traj, dual_T, keep=False)
    _, formed, dual0 = net.costate(traj, dual_T, keep=False, initial=True)
    assert np.isfinite(dual0).all()
    for x, y in ((skipped.a, formed.a), (skipped.b, formed.b)):
        assert np.allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-14 * np.abs(np.asarray(y)).max())
    close(net, J)


@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["classes", "function"])
def test_sample_parallel_matches_serial(comm, kind):
    ser = natural_results(MPI.COMM_SELF, "DG", 0, "lumped", "rk4", 0.0, kind)
    par = natural_results(comm, "DG", 0, "lumped", "rk4", 0.0, kind, sample_groups=comm.size)
    assert_same(par, ser)


@pytest.mark.mpi
def test_exact_resnet_backprop(comm):
    """DG0 on n equal cells, Euler: the derivative equals a hand-written backpropagation
    through x^{k+1} = x^k + tau tanh(a^k - b^k x^k / n), O = W x^N / n + mu, mean
    cross-entropy, plus the L2 regulariser (node weight 1/n, layer weight tau)."""
    n, N, S, K, T, lam = 10, 6, 7, 3, 1.5, 0.03
    tau, w = T / N, 1.0 / n
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(N, n)), rng.normal(size=(N, n, n)) * 2
    W, mu = rng.normal(size=(K, n)), rng.normal(size=K)
    X, y = rng.normal(size=(S, n)), rng.integers(0, K, S)
    space = NodeSpace(create_node_mesh(comm, "interval", n), "DG", 0)
    net = Network(space, Depth(T=T, N=N), "tanh", "euler")
    J = ReducedFunctional(net, X, y, "classes", K=K, lam=lam)
    m = J.controls.from_natural(a, b, W, mu)
    d = J.controls.natural(J.derivative(m))

    # hand backprop, samples as columns
    xs = [X.T]
    for k in range(N):
        xs.append(xs[-1] + tau * np.tanh(a[k][:, None] - b[k] @ xs[-1] / n))
    O = W @ xs[-1] / n + mu[:, None]
    P = np.exp(O - O.max(0)) / np.exp(O - O.max(0)).sum(0)
    C = np.eye(K)[:, y]
    loss = np.mean(-np.log((P * C).sum(0)))
    gO = (P - C) / S
    dW, dmu = gO @ xs[-1].T / n, gO.sum(1)
    lam_x = W.T @ gO / n
    da, db = np.zeros_like(a), np.zeros_like(b)
    for k in reversed(range(N)):
        u = a[k][:, None] - b[k] @ xs[k] / n
        zeta = tau * (1 - np.tanh(u) ** 2) * lam_x
        da[k], db[k] = zeta.sum(1), -zeta @ xs[k].T / n
        lam_x = lam_x - b[k].T @ zeta / n
    reg = 0.5 * lam * (tau * w * (a**2).sum() + tau * w * w * (b**2).sum() + w * (W**2).sum() + (mu**2).sum())
    assert abs(J(m) - (loss + reg)) <= 1e-13 * abs(loss + reg)
    expect = {
        "a": da + lam * tau * w * a,
        "b": db + lam * tau * w * w * b,
        "W": dW + lam * w * W,
        "mu": dmu + lam * mu,
    }
    for key, ref in expect.items():
        assert np.allclose(d[key], ref, rtol=1e-12, atol=1e-14 * np.abs(ref).max()), key
    close(net, J)


@pytest.mark.mpi
@pytest.mark.parametrize("inner_product", ["l2", "h1"])
def test_derivative_and_gradient_are_not_confused(comm, inner_product):
    """(g, v)_M = dJ . v for the Riesz gradient g; in L2 with DG0 the a-block of g is the
    derivative divided by node weight x layer length; the H1 representer differs."""
    net, J = make(comm, "DG", 0, "lumped", "heun", 0.0, "classes", lam=0.1, gamma=0.05 if inner_product == "h1" else 0.0)
    assert J.controls.inner_product == inner_product
    m, v = J.controls.random(1, 0.5), J.controls.random(9)
    dJ, g = J.derivative(m), J.gradient(m)
    assert abs(J.controls.inner(g, v) - dJ.dot(v)) <= 1e-12 * abs(dJ.dot(v))
    ga, da = J.controls.blocks(g)[0], J.controls.blocks(dJ)[0]
    scale = np.outer(net.depth.tau, net.space.weights[: net.space.n_local])
    if inner_product == "l2":
        assert np.allclose(ga, da / scale, rtol=1e-12)
    else:
        assert not np.allclose(ga, da / scale, rtol=1e-3)
    close(net, J)


@pytest.mark.mpi(ranks=(2,))
@pytest.mark.parametrize("kind", ["classes", "function"])
def test_hessian_symmetric_and_gauss_newton_psd(comm, kind):
    net, J = make(comm, "P", 1, "consistent", "midpoint", 0.02, kind)
    m, u, v = J.controls.random(1, 0.5), J.controls.random(2), J.controls.random(3)
    Hu, Hv = J.hessian(m, u), J.hessian(m, v)
    assert abs(Hu.dot(v) - Hv.dot(u)) <= 1e-10 * abs(Hu.dot(v))
    Gu, Gv = J.hessian(m, u, gauss_newton=True), J.hessian(m, v, gauss_newton=True)
    assert abs(Gu.dot(v) - Gv.dot(u)) <= 1e-10 * abs(Gu.dot(v))
    assert Gu.dot(u) > 0 and Gv.dot(v) > 0
    assert abs(Gu.dot(u) - Hu.dot(u)) > 1e-6 * abs(Hu.dot(u))  # GN drops real terms
    close(net, J)


def test_solve_counters(comm):
    """One forward per new point; a gradient adds one costate; a Hessian action one
    incremental forward and one incremental costate; repeated calls at the same point
    reuse the solves."""
    net, J = make(comm, "DG", 0, "lumped", "rk4", 0.0, "function")
    m, dm = J.controls.random(1, 0.5), J.controls.random(2)
    J(m), J.gradient(m), J.derivative(m)
    assert J.counts == {"forward": 1, "costate": 1, "incremental_forward": 0, "incremental_costate": 0}
    # a gradient keeps only the current layer's costate: the first Hessian action at the
    # point solves the costate again and keeps it, later ones reuse it
    J.hessian(m, dm), J.hessian(m, dm)
    assert J.counts == {"forward": 1, "costate": 2, "incremental_forward": 2, "incremental_costate": 2}
    m.array[0] += 1e-3
    J.gradient(m)
    assert J.counts["forward"] == 2 and J.counts["costate"] == 3
    m.array[0] += 1e-3  # Hessian first: its costate solve gives the gradient too
    J.hessian(m, dm), J.gradient(m)
    assert J.counts["forward"] == 3 and J.counts["costate"] == 4
    close(net, J)


def test_bad_input(comm):
    space = NodeSpace(create_node_mesh(comm, "interval", 4), "DG", 0)
    net = Network(space, Depth(1.0, 2))
    X = np.zeros((3, 4))
    with pytest.raises(InputError, match="labels must lie"):
        ReducedFunctional(net, X, np.array([0, 1, 5]), "classes", K=3)
    with pytest.raises(InputError, match="integers"):
        ReducedFunctional(net, X, np.array([0.0, 1.0, 1.0]), "classes")
    with pytest.raises(InputError, match="lambda"):
        ReducedFunctional(net, X, np.array([0, 1, 1]), "classes", lam=-1.0)
    with pytest.raises(InputError, match=r"unknown loss 'regression'; choose one of \['cross_entropy', 'logistic_l2', 'mse'\]"):
        ReducedFunctional(net, X, X, "regression")
    net.destroy()


# --------------------------------------------------------------------------- continuous
# LM §3.3 closed form on Y = (0,1): phi with ||phi|| = 1, psi orthogonal to tanh(phi),
# b(y,z) = phi(y) psi(z), a = ALPHA phi, int f_I psi = ALPHA - 1: f = f_I + t tanh(phi)
# and u = phi. With the function readout W = W0 (constant), mu = 0, one sample and
# target C, the costate is r(y,t) = rho - psi(y) Cc(t) (docs/model.md §3) with
#   rho = W0 h'(O)(h(O) - int C),  O = W0 int f(T),
#   Cc(t) = (g0/beta)(1 - exp(beta (t - T))),  g0 = rho int phi sech^2(phi),
#   beta = int phi sech^2(phi) psi,
# and D_a J = sech^2(phi) r, D_b J = -sech^2(phi(y)) r(y,t) f(z,t), D_W J = h'(O)(h(O)-C) f(z,T).
ALPHA, W0, T_END = 0.7, 0.8, 1.0
_xg, _wg = np.polynomial.legendre.leggauss(200)
_xg, _wg = 0.5 * (_xg + 1.0), 0.5 * _wg


def _phi_raw(y):
    return 1.0 + y + 0.5 * np.sin(np.pi * y)


_PHI_NORM = np.sqrt(np.sum(_wg * _phi_raw(_xg) ** 2))


def phi_c(y):
    return _phi_raw(y) / _PHI_NORM


def _psi_raw(y):
    return np.cos(np.pi * y)


_KAPPA = -np.sum(_wg * _psi_raw(_xg) * np.tanh(phi_c(_xg))) / np.sum(_wg * np.tanh(phi_c(_xg)))


def psi_c(y):
    return _psi_raw(y) + _KAPPA


def _integral(fn):
    return float(np.sum(_wg * fn(_xg)))


_C2 = (ALPHA - 1.0 - 0.5 * _integral(psi_c)) / _integral(lambda y: psi_c(y) ** 2)


def f_in(y):
    return _C2 * psi_c(y) + 0.5


def target(y):
    return 0.3 + 0.2 * y


def continuous_gradient():
    h = lambda s: 1.0 / (1.0 + np.exp(-s))  # noqa: E731
    sech2 = lambda s: 1.0 - np.tanh(s) ** 2  # noqa: E731
    O = W0 * _integral(lambda y: f_in(y) + T_END * np.tanh(phi_c(y)))
    hp = h(O) * (1 - h(O))
    rho = W0 * hp * (h(O) - _integral(target))
    g0 = rho * _integral(lambda y: phi_c(y) * sech2(phi_c(y)))
    beta = _integral(lambda y: phi_c(y) * sech2(phi_c(y)) * psi_c(y))

    def r(y, t):
        return rho - psi_c(y) * (g0 / beta) * (1.0 - np.exp(beta * (t - T_END)))

    def f(z, t):
        return f_in(z) + t * np.tanh(phi_c(z))

    Da = lambda y, t: sech2(phi_c(y)) * r(y, t)  # noqa: E731
    Db = lambda y, z, t: -np.outer(sech2(phi_c(y)) * r(y, t), f(z, t))  # noqa: E731
    DW = lambda y, z: np.outer(hp * (h(O) - target(y)), f(z, T_END))  # noqa: E731
    return Da, Db, DW, r


def gradient_errors(comm, n, N, scheme, family, degree, mass):
    space = NodeSpace(create_node_mesh(comm, "interval", n), family, degree, mass)
    net = Network(space, Depth(T=T_END, N=N), "tanh", scheme)
    J = ReducedFunctional(net, lambda y: f_in(y[0]), lambda y: target(y[0]), "function")
    c = net.make_controls(a=lambda y, t: ALPHA * phi_c(y[0]), b=lambda y, z, t: np.outer(phi_c(y[0]), psi_c(z[0])))
    r = net.make_readout("function", W=W0, mu=0.0)
    m = J.controls.join(c, r)
    g = J.controls.natural(J.gradient(m))
    Da, Db, DW, _ = continuous_gradient()
    x = np.sort(space.x_all[0])  # natural order: left to right
    wn = np.empty(space.n)
    wn[space.nat_of_global] = space.weights_all
    tm, tau = net.depth.mid, net.depth.tau
    ea = sum(tau[k] * np.sum(wn * (g["a"][k] - Da(x, tm[k])) ** 2) for k in range(N))
    eb = sum(tau[k] * np.sum(np.outer(wn, wn) * (g["b"][k] - Db(x, x, tm[k])) ** 2) for k in range(N))
    eW = np.sum(np.outer(wn, wn) * (g["W"] - DW(x, x)) ** 2)
    close(net, J)
    return np.sqrt([ea, eb, eW])


def test_continuous_problem_is_nontrivial():
    _, _, _, r = continuous_gradient()
    assert abs(_integral(lambda y: psi_c(y) * np.tanh(phi_c(y)))) < 1e-13
    assert abs(_integral(lambda y: phi_c(y) ** 2) - 1.0) < 1e-13
    y = np.linspace(0, 1, 11)
    assert np.abs(r(y, 0.0) - r(y, T_END)).max() > 0.2 * np.abs(r(y, T_END)).max()  # r varies in depth


@pytest.mark.mpi(ranks=(2,))
@pytest.mark.parametrize(
    "scheme,family,degree,mass,order",
    [("euler", "DG", 0, "lumped", 1.0), ("heun", "P", 1, "consistent", 2.0), ("midpoint", "P", 1, "lumped", 2.0)],
)
def test_gradient_converges_to_continuous_formulas(comm, scheme, family, degree, mass, order):
    """Under refinement of h and tau together the discrete L2 gradient converges to
    D_a J = sigma'(u) r, D_b J = -sigma'(u) r f, D_W J = dloss/dO f(T) (docs/model.md §3)."""
    sizes = [(8, 4), (16, 8), (32, 16), (64, 32)]
    errs = np.array([gradient_errors(comm, n, N, scheme, family, degree, mass) for n, N in sizes])
    for j, name in enumerate(("a", "b", "W")):
        rates = observed_orders(errs[:, j])
        assert rates[-1] > order - 0.2, (name, errs[:, j], rates)


@pytest.mark.mpi(ranks=(2,))
@pytest.mark.parametrize("scheme", ["euler", "rk4"])
def test_critical_points(comm, scheme):
    """LM Remark 4.1 (docs/model.md §3): without regularisation and with tanh (sigma' > 0),
    controls that reach the target exactly are critical points, and nearby controls
    that do not reach it are not: there the gradient grows linearly with the distance.
    With lambda > 0 the reaching controls are no longer critical."""
    space = NodeSpace(create_node_mesh(comm, "interval", 10), "P", 1, "consistent")
    net = Network(space, Depth(T=1.0, N=6), "tanh", scheme)
    X, _ = data("function", space.n, S=4)
    J0 = ReducedFunctional(net, X, np.full((4, space.n), 0.5), "function")
    m_star = J0.controls.random(11, 0.4)
    # the target is what the network with controls m_star produces
    traj = J0.trajectory(m_star)
    c, r = J0.controls.split(m_star)
    reached = space.to_natural(net.predict(traj.final, r), axis=0).T
    J = ReducedFunctional(net, X, reached, "function")
    assert J(m_star) < 1e-28
    assert J.controls.norm(J.gradient(m_star)) < 1e-14
    d = J.controls.random(12)
    slopes = []
    for t in (1e-1, 1e-2, 1e-3):
        m = m_star.copy()
        m.axpy(t, d)
        assert J(m) > 0
        slopes.append(J.controls.norm(J.gradient(m)) / t)
    assert min(slopes) > 1e-3 and max(slopes) / min(slopes) < 1.3, slopes
    Jreg = ReducedFunctional(net, X, reached, "function", lam=1e-2)
    assert Jreg.controls.norm(Jreg.gradient(m_star)) > 1e-3
    for F in (J0, J, Jreg):
        F.destroy()
    net.destroy()


@pytest.mark.mpi(ranks=(2,))
@pytest.mark.parametrize("scheme", on_ranks(SCHEMES, ["rk4", "midpoint"]))
@pytest.mark.parametrize("every", on_ranks([1, 2, 3], [2]))
def test_depth_checkpointing_gives_the_same_gradient(comm, scheme, every):
    """Keeping the states only every k levels and recomputing the rest in the costate
    solve gives bitwise the same J and derivative; Hessian actions still match."""
    net, J = make(comm, "P", 1, "consistent", scheme, 0.02, "function", N=4)
    X, y = data("function", net.space.n)
    Jc = ReducedFunctional(net, X, y, "function", lam=1e-2, store_every=every)
    m, dm = J.controls.random(1, 0.5), J.controls.random(2)
    assert Jc(m) == J(m)
    assert np.array_equal(Jc.derivative(m).array, J.derivative(m).array)
    traj = Jc.trajectory(m)
    assert traj.levels == sorted(set(range(0, 5, every)) | {4}) and traj.tape is None
    assert traj.states.shape[0] == len(traj.levels)
    h1, h2 = Jc.hessian(m, dm), J.hessian(m, dm)
    assert np.allclose(h1.array, h2.array, rtol=1e-12, atol=1e-14 * np.abs(h2.array).max())
    Jc.destroy()
    close(net, J)
