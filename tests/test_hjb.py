"""The HJB equation of a reduced network (docs/model.md §6): the Hamiltonian and its argmin,
the monotone P1 scheme (comparison principle), convergence to the exactly known viscosity
solution of the bias-controlled problem, the feedback law steering to the target (or to
the nearest reachable point), the agreement of the HJB value, the closed-loop cost and
the open-loop optimum of the same network under refinement, and the same results on
1, 2 and 3 ranks."""

import itertools

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.errors import InputError
from fem_dnn.hjb import (
    HJBSolver,
    ReducedModel,
    bias_value,
    box_around,
    closed_loop,
    open_loop,
    quadratic_cost,
    readout_cost,
)

from conftest import observed_orders

# the exactly solvable problem: n = 1, identity, b = 0, a in [a-, a+], Phi = 1/2 (v - vt)^2
ALO, AHI, VT, T = -0.5, 1.0, 0.3, 1.0
BOX1 = ([-3.0], [3.0])
INNER1 = ([-1.5], [1.5])  # reachable sets of these states stay 1.5 - 1 = 0.5 inside the box


def bias_problem(comm, cells, **kw):
    model = ReducedModel(1, "identity", a=(ALO, AHI))
    s = HJBSolver(model, quadratic_cost([VT]), *BOX1, cells, T, comm=comm, **kw)
    s.solve()
    return s


# the comparison problem: n = 2, tanh, a box on a and b, the network's readout loss
V0 = np.array([0.0, 0.1])
V_TARGET = np.array([2.5, 0.1])


def tanh_model():
    return ReducedModel(2, "tanh", a=(-0.25, 0.25), b=(-2.0, 2.0))


def tanh_cost(model):
    return readout_cost(1.0 / (1.0 + np.exp(-V_TARGET)), model.w)


def tanh_problem(comm, cells, N, **kw):
    model = tanh_model()
    lo, hi = box_around(model, V0, T, 0.5)
    s = HJBSolver(model, tanh_cost(model), lo, hi, cells, T, comm=comm, min_steps=N, **kw)
    s.solve()
    return s


# --------------------------------------------------------------------------- the Hamiltonian
def test_bang_bang_hamiltonian_is_the_minimum_over_the_box_vertices():
    """Without running cost the minimum over A is attained at a vertex of the box (the
    objective is monotone in each control entry); the closed form equals the minimum over
    all 2^(1+n) vertices of each row, and the argmin attains it."""
    rng = np.random.default_rng(0)
    model = ReducedModel(2, "tanh", a=([-0.3, -1.0], [0.5, 0.2]), b=(-np.array([[1.0, 2.0], [0.5, 1.5]]), 1.0))
    v, p = rng.uniform(-2, 2, (2, 40)), rng.normal(size=(2, 40))
    p[0, :5] = 0.0
    H = model.hamiltonian(v, p)
    best = np.full(40, np.inf)
    for corner in itertools.product((0, 1), repeat=6):
        c = np.array(corner).reshape(2, 3)
        a = np.where(c[:, :1] == 1, model.a_hi[:, None], model.a_lo[:, None]) * np.ones((1, 40))
        b = np.where(c[:, 1:, None] == 1, model.b_hi[:, :, None], model.b_lo[:, :, None]) * np.ones((1, 1, 40))
        best = np.minimum(best, np.sum(p * model.velocity(v, a, b), axis=0))
    assert np.allclose(H, best, rtol=0, atol=1e-14)
    a, b = model.controls(v, p)
    assert np.allclose(np.sum(p * model.velocity(v, a, b), axis=0), H, rtol=0, atol=1e-14)
    assert np.all((a >= model.a_lo[:, None]) & (a <= model.a_hi[:, None]))


@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_running_cost_argmin(activation):
    """With a running cost lambda/2 (w a^2 + w w b^2): identity has the clipped closed
    form, tanh the 1-D search along the KKT curve. n = 1: compared with a dense grid of
    the 2-D control box; n = 2: never above 4000 random admissible controls."""
    rng = np.random.default_rng(1)
    m1 = ReducedModel(1, activation, a=(-0.5, 0.7), b=(-1.0, 1.5), lam=0.4)
    v, p = rng.uniform(-2, 2, (1, 30)), rng.uniform(-1, 1, (1, 30))
    H = m1.hamiltonian(v, p)
    ga, gb = np.meshgrid(np.linspace(-0.5, 0.7, 601), np.linspace(-1.0, 1.5, 601), indexing="ij")
    for q in range(30):
        u = ga - gb * m1.w[0] * v[0, q]
        vals = p[0, q] * m1.sigma.sigma(u) + 0.5 * m1.lam * m1.w[0] * (ga**2 + m1.w[0] * gb**2)
        assert vals.min() - 1e-5 <= H[q] <= vals.min() + 1e-12
    m2 = ReducedModel(2, activation, a=(-0.5, 0.5), b=(-1.0, 1.0), lam=0.3)
    v, p = rng.uniform(-2, 2, (2, 30)), rng.uniform(-1, 1, (2, 30))
    H = m2.hamiltonian(v, p)
    for _ in range(4000 // 100):
        a, b = rng.uniform(-0.5, 0.5, (2, 100, 30)), rng.uniform(-1, 1, (2, 2, 100, 30))
        for s in range(100):
            val = np.sum(p * m2.velocity(v, a[:, s], b[:, :, s]), axis=0) + m2.running_cost(a[:, s], b[:, :, s])
            assert np.all(H <= val + 1e-12)


@pytest.mark.parametrize("model", [
    ReducedModel(2, "tanh", a=(-0.25, 0.25), b=(-2.0, 2.0)),
    ReducedModel(2, "identity", a=(-0.5, 0.5), b=(-1.0, 1.0), lam=0.2),
    ReducedModel(3, "relu", a=(-0.5, 0.5), b=(-1.0, 1.0)),
], ids=["tanh", "identity-lam", "relu-3d"])
def test_ufl_and_numpy_hamiltonians_agree(model):
    """The UFL closed form interpolated at the vertices and the numpy one give the same
    value function to round-off."""
    n = model.n
    Phi = quadratic_cost(np.linspace(0.3, -0.3, n))
    out = []
    for ham in ("ufl", "numpy"):
        s = HJBSolver(model, Phi, [-1.5] * n, [1.5] * n, 12 if n == 2 else 5, 0.5, comm=MPI.COMM_SELF, hamiltonian=ham)
        out.append(s.solve())
        s.destroy()
    assert np.max(np.abs(out[0] - out[1])) <= 1e-13


def test_no_closed_form_in_ufl():
    model = ReducedModel(1, "tanh", a=(-1, 1), lam=0.1)
    with pytest.raises(InputError, match="closed form"):
        HJBSolver(model, quadratic_cost([0.0]), [-1], [1], 4, comm=MPI.COMM_SELF, hamiltonian="ufl")


# --------------------------------------------------------------------------- the scheme
def test_scheme_is_monotone():
    """The graph viscosity dominates the gradient couplings (off-diagonal entries of the
    linearised update are >= 0 at the CFL step), its rows sum to zero, and the discrete
    comparison principle holds: Phi_1 >= Phi_2 gives F_1 >= F_2 at every depth."""
    model = tanh_model()
    lo, hi = box_around(model, V0, T, 0.5)
    Phi = tanh_cost(model)
    s1 = HJBSolver(model, Phi, lo, hi, 12, T, comm=MPI.COMM_SELF)
    indptr, cols, d = s1.D.getValuesCSR()
    rows = np.repeat(np.arange(s1.n_owned), np.diff(indptr))
    off = cols != rows
    assert np.allclose(np.bincount(rows, weights=d), 0.0, atol=1e-12)
    lam = model.speeds(s1.x)
    bound = sum(lam[k][rows] * np.abs(C.getValuesCSR()[2]) for k, C in enumerate(s1.C))
    assert np.all(d[off] >= bound[off] - 1e-12)
    assert np.all(1.0 + s1.dt * (d[~off] - bound[~off]) >= 0.0)  # the CFL condition

    def bump(v):
        return 0.05 * np.exp(-4.0 * np.sum((v - 0.3) ** 2, axis=0))

    s2 = HJBSolver(model, lambda v: Phi(v) - bump(v), lo, hi, 12, T, comm=MPI.COMM_SELF)
    s1.solve(), s2.solve()
    assert np.all(s1.levels >= s2.levels - 1e-15)
    assert np.all(s1.levels - s2.levels <= 0.05 + 1e-15)  # L-infinity contraction
    s1.destroy(), s2.destroy()


def test_exact_viscosity_solution_converges():
    """n = 1, identity, b = 0, a in [a-, a+], Phi = 1/2 (v - vt)^2:
    F(v,t) = 1/2 dist(vt, [v + a-(T-t), v + a+(T-t)])^2. The max and L1 errors at t = 0
    and t = T/2 (on states whose reachable sets stay inside the box) decrease at an
    observed order near 1 under refinement of h and of the depth step (CFL fixed)."""
    errs = {0.0: [], 0.5: []}
    for cells in (40, 80, 160, 320):
        s = bias_problem(MPI.COMM_SELF, cells)
        for t in errs:
            errs[t].append(s.errors(lambda x: bias_value(x[0], s.level_of(t) * s.dt, T, ALO, AHI, VT), t, INNER1))
        s.destroy()
    for t, e in errs.items():
        for norm in ("max", "l1"):
            rates = observed_orders([x[norm] for x in e])
            assert np.all(rates > 0.8), (t, norm, rates)
    assert errs[0.0][-1]["max"] < 1e-2


def test_feedback_steers_to_the_target():
    """Reachable starts end within 0.5 h of the target (h the state mesh size) and the
    miss shrinks under refinement; an unreachable start ends at the nearest reachable
    point v0 + a+ T (or v0 + a- T), with the exact cost."""
    starts = np.linspace(VT - AHI * T + 0.01, VT - ALO * T - 0.01, 9)
    misses = []
    for cells in (40, 80, 160):
        s = bias_problem(MPI.COMM_SELF, cells)
        miss = max(abs(closed_loop(s, [v0]).v[-1, 0] - VT) for v0 in starts)
        assert miss <= 0.5 * s.h, (cells, miss, s.h)
        misses.append(miss)
        for v0, end in ((-1.2, -1.2 + AHI * T), (1.4, 1.4 + ALO * T)):
            cl = closed_loop(s, [v0])
            assert abs(cl.v[-1, 0] - end) <= 1e-12
            assert abs(cl.cost - bias_value(v0, 0.0, T, ALO, AHI, VT)) <= 1e-12
            assert np.all(cl.a[:, 0] == (AHI if v0 < VT else ALO))
        s.destroy()
    assert misses[-1] < misses[0]


def test_running_cost_linear_quadratic():
    """n = 1, identity, a in [-1, 1], running cost lambda/2 a^2, Phi = 1/2 (v - vt)^2:
    where the box does not bind (|v - vt| <= lambda + T - t) the value is the linear-
    quadratic one, F(v, t) = 1/2 (v - vt)^2 / (1 + (T - t)/lambda), with the constant
    optimal control (vt - v)/(lambda + T - t). F_h converges at order about 1 and the
    closed-loop cost (terminal + running) to the exact value."""
    lam = 0.5
    model = ReducedModel(1, "identity", a=(-1.0, 1.0), lam=lam)

    def exact(v):
        return 0.5 * (v - VT) ** 2 / (1.0 + T / lam)

    errs, gaps = [], []
    for cells in (40, 80, 160):
        s = HJBSolver(model, quadratic_cost([VT]), *BOX1, cells, T, comm=MPI.COMM_SELF)
        s.solve()
        errs.append(s.errors(lambda x: exact(x[0]), 0.0, ([VT - 1.2], [VT + 1.2]))["max"])
        cls = [closed_loop(s, [v0]) for v0 in (-0.6, 1.0)]
        assert all(c.running > 0 for c in cls)
        gaps.append(max(abs(c.cost - exact(v0)) for c, v0 in zip(cls, (-0.6, 1.0))))
        s.destroy()
    assert np.all(observed_orders(errs) > 0.8), errs
    assert np.all(observed_orders(gaps) > 1.5) and gaps[-1] < 1e-4, gaps


def test_closed_loop_matches_open_loop_n2_tanh():
    """n = 2, tanh, a in [-1/4, 1/4], b in [-2, 2], the network's readout loss. The HJB
    value F_h(v0, 0), the closed-loop cost with the network's N Euler layers and the
    open-loop optimum of the same N-layer network (box L-BFGS) agree within the
    discretisation error, and the gap shrinks when the state mesh and the depth are
    refined together. The closed loop is admissible for the open-loop problem, so its
    cost is not below the open-loop optimum."""
    model = tanh_model()
    rows = []
    for cells, N in ((16, 8), (32, 16), (64, 32)):
        s = tanh_problem(MPI.COMM_SELF, cells, N)
        F0 = s.value(V0)
        cl = closed_loop(s, V0, steps=N)
        ol = open_loop(model, s.Phi, V0, N, T, starts=[(cl.a, cl.b)])
        rows.append((F0, cl.cost, ol.J))
        # the reduced model is the package's network: the closed-loop controls cost the same there
        assert abs(ol.initial[1] - cl.cost) <= 1e-14
        assert cl.cost >= ol.J - 1e-10
        assert cl.cost - ol.J <= 1e-2 * ol.J
        s.destroy()
    assert rows[-1][1] - rows[-1][2] <= 2e-3 * rows[-1][2]
    gap = [F0 - J for F0, _, J in rows]
    assert all(g > 0 for g in gap) and gap[0] > gap[1] > gap[2], rows
    assert gap[-1] < 0.12 * rows[-1][2]
    # the controls switch once in depth (a_2 from a+ to a-): not a constant control
    assert np.any(ol.a[:, 1] == 0.25) and np.any(ol.a[:, 1] == -0.25)


def test_bad_input():
    model = ReducedModel(1, "identity", a=(ALO, AHI))
    with pytest.raises(InputError, match="lo <= hi"):
        ReducedModel(1, a=(1.0, -1.0))
    with pytest.raises(InputError, match="lower < upper"):
        HJBSolver(model, quadratic_cost([0.0]), [1.0], [0.0], 4, comm=MPI.COMM_SELF)
    with pytest.raises(InputError, match="dimension 1 to 3"):
        HJBSolver(ReducedModel(4), quadratic_cost([0.0] * 4), [-1] * 4, [1] * 4, 2, comm=MPI.COMM_SELF)
    s = HJBSolver(model, quadratic_cost([0.0]), [-1.0], [1.0], 8, comm=MPI.COMM_SELF)
    s.solve()
    with pytest.raises(InputError, match="outside the HJB box"):
        s.value([2.0])
    with pytest.raises(InputError, match="readout"):
        open_loop(model, quadratic_cost([0.0]), [0.0], 4)
    with pytest.raises(InputError, match=r"\(0, 1\)"):
        readout_cost([1.5], [1.0])
    s.destroy()
    with pytest.raises(InputError, match="unknown HJB scheme 'weno'; choose one of"):
        HJBSolver(model, quadratic_cost([0.0]), [-1.0], [1.0], 8, comm=MPI.COMM_SELF, scheme="weno")
    with pytest.raises(InputError, match="courant .* must be > 0"):
        HJBSolver(model, quadratic_cost([0.0]), [-1.0], [1.0], 8, comm=MPI.COMM_SELF, scheme="semi_lagrangian", courant=0)
    with pytest.raises(InputError, match="no running cost"):
        HJBSolver(ReducedModel(1, "identity", a=(ALO, AHI), lam=0.1), quadratic_cost([0.0]), [-1.0], [1.0], 8,
                  comm=MPI.COMM_SELF, scheme="semi_lagrangian")


# --------------------------------------------------------------------------- exact values in 1-3 dimensions
def separable(kind):
    """n neurons, identity sigma, b = 0, a_i in [ALO, AHI], Phi = sum_i phi(v_i): the value
    is the sum of the 1-D values (each state moves at its own speed):
    F(v, 0) = sum_i min {phi(y) : y in [v_i + ALO T, v_i + AHI T]}."""
    def Phi(v):
        return np.sum(0.5 * (v - VT) ** 2 if kind == "smooth" else np.abs(v - VT), axis=0)

    def exact(v):
        d = np.maximum(0.0, np.maximum(v + ALO * T - VT, VT - v - AHI * T))
        return np.sum(0.5 * d * d if kind == "smooth" else d, axis=0)

    return Phi, exact


#: cells a side per dimension (two levels) and the semi-Lagrangian step in cells; 3-D is
#: the 3-neuron case, tested for accuracy (a step of 2 cells keeps its 4^3 candidates small)
LEVELS = {1: (128, 256), 2: (16, 32), 3: (8, 16)}
COURANT = {1: 4.0, 2: 4.0, 3: 2.0}


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("kind", ["smooth", "kinked"])
def test_separable_exact_values(n, kind):
    """Max errors on [-1.5, 1.5]^n at t = 0 against the exact separable value, both
    schemes, on simplices. Smooth terminal cost: the semi-Lagrangian scheme converges at
    observed order >= 0.9 (measured 2.3, 1.0, 2.0 in 1-3 D) with at most a third of
    Lax-Friedrichs' error; Lax-Friedrichs at >= 0.9 in 1-2 D (1.0) and >= 0.6 on the
    coarse 3-D grids (0.70 from 8 to 16 cells, pre-asymptotic). Kinked terminal
    cost (sum_i |v_i - vt|, kinks off the grid): the semi-Lagrangian error is below n h
    at every level (first order: a kink between grid lines costs up to h/2 a coordinate
    in the interpolated terminal data already; measured 0.27-0.65 h a coordinate) and at
    most half of Lax-Friedrichs', which smears the kinks over sqrt(h)."""
    Phi, exact = separable(kind)
    model = ReducedModel(n, "identity", a=(ALO, AHI))
    errs = {"lax_friedrichs": [], "semi_lagrangian": []}
    hs = []
    for cells in LEVELS[n]:
        for scheme in errs:
            s = HJBSolver(model, Phi, [-3.0] * n, [3.0] * n, cells, T, comm=MPI.COMM_SELF, scheme=scheme,
                          courant=COURANT[n])
            s.solve()
            errs[scheme].append(s.errors(exact, 0.0, ([-1.5] * n, [1.5] * n))["max"])
            h = s.h
            s.destroy()
        hs.append(h)
    lf, sl = np.array(errs["lax_friedrichs"]), np.array(errs["semi_lagrangian"])
    if kind == "smooth":
        assert observed_orders(lf)[0] >= (0.9 if n < 3 else 0.6) and observed_orders(sl)[0] >= 0.9, errs
        assert np.all(sl <= lf / 3), errs
    else:
        assert np.all(sl <= n * np.array(hs)) and np.all(sl <= lf / 2), (errs, hs)


def test_semi_lagrangian_is_monotone_and_takes_the_exact_minimum():
    """The comparison principle and the max-norm contraction on the 2-D tanh problem
    (state-dependent velocities), and the minimum over the arrival box is exact: a
    terminal cost that is piecewise linear on the grid with its kinks at grid lines is
    propagated without error (bias problem, kinks at vertices)."""
    model = tanh_model()
    lo, hi = box_around(model, V0, T, 0.5)
    Phi = tanh_cost(model)

    def bump(v):
        return 0.05 * np.exp(-4.0 * np.sum((v - 0.3) ** 2, axis=0))

    s1 = HJBSolver(model, Phi, lo, hi, 12, T, comm=MPI.COMM_SELF, scheme="semi_lagrangian")
    s2 = HJBSolver(model, lambda v: Phi(v) - bump(v), lo, hi, 12, T, comm=MPI.COMM_SELF, scheme="semi_lagrangian")
    s1.solve(), s2.solve()
    assert np.all(s1.levels >= s2.levels - 1e-15) and np.all(s1.levels - s2.levels <= 0.05 + 1e-15)
    s1.destroy(), s2.destroy()
    m1 = ReducedModel(1, "identity", a=(-0.5, 1.0))  # box [-4, 4], 32 cells: h = 0.25; kinks at 0 -> -1 and 0.5
    s = HJBSolver(m1, lambda v: np.abs(v[0]), [-4.0], [4.0], 32, 1.0, comm=MPI.COMM_SELF, scheme="semi_lagrangian",
                  courant=2.0)
    s.solve()
    exact = lambda x: np.maximum(0.0, np.maximum(x[0] - 0.5, -x[0] - 1.0))  # noqa: E731
    assert s.errors(exact, 0.0, ([-2.0], [2.0]))["max"] <= 1e-14
    s.destroy()


@pytest.mark.parametrize("scheme", ["lax_friedrichs", "semi_lagrangian"])
def test_feedback_with_every_scheme(scheme):
    """The feedback of either scheme steers the 1-D bias problem to the target (within
    0.5 h) from reachable starts; the closed loop takes 80 Euler steps whatever the
    scheme's depth step."""
    s = bias_problem(MPI.COMM_SELF, 80, scheme=scheme)
    starts = np.linspace(VT - AHI * T + 0.01, VT - ALO * T - 0.01, 5)
    miss = max(abs(closed_loop(s, [v0], steps=80).v[-1, 0] - VT) for v0 in starts)
    assert miss <= 0.5 * s.h, miss
    s.destroy()


# --------------------------------------------------------------------------- more levels than steps
#: cells a side of the min_steps tests: h = 6/512 in 1-D, 6/128 in 2-D
LEVEL_CELLS = {1: 512, 2: 128}


def bias_l1(n, activation):
    """The bias-only L1 problem on [-3, 3]^n: b = 0, a_i in [ALO, AHI], Phi = sum_i |v_i - VT|,
    with its exact value ``F(v, t) = sum_i dist(VT, [v_i + s sigma(a-), v_i + s sigma(a+)])``,
    s = T - t (:func:`bias_value`, the coordinates separate)."""
    model = ReducedModel(n, activation, a=(ALO, AHI))

    def Phi(v):
        return np.sum(np.abs(v - VT), axis=0)

    def exact(t):
        return lambda x: np.sum(bias_value(x, t, T, ALO, AHI, VT, "l1", activation), axis=0)

    return model, Phi, exact


def level_errors(s, exact, signed=False):
    """Max error of every stored level against the exact value at its t_k, on the vertices
    of [-1.5, 1.5]^n; with ``signed`` also the smallest ``F_h - F`` there."""
    n = s.model.n
    x = s.x[:, : s.n_owned]
    sel = np.all(np.abs(x) <= 1.5 + 1e-12, axis=0)
    diff = np.array([(s.levels[k] - exact(k * s.dt)(x))[sel] for k in range(s.steps + 1)])
    assert s.errors(exact(0.0), 0.0, ([-1.5] * n, [1.5] * n))["max"] == np.abs(diff[0]).max()
    return (np.abs(diff).max(), diff.min()) if signed else np.abs(diff).max()


@pytest.mark.parametrize("activation", ["identity", "tanh"])
@pytest.mark.parametrize("n", [1, 2])
def test_semi_lagrangian_min_steps_keep_the_own_error(n, activation):
    """Asking the semi-Lagrangian scheme for ``min_steps`` = 2 and 8 times its own step
    count S (the feedback of a deeper network) does not raise the error: the scheme still
    marches S steps and the levels in between are fractional steps from the march level
    above (linear in depth between them), so the max error over every stored level is at
    most 1.5 times that of the own solve (measured 1.00-1.15; marching T/min_steps, as
    before, gave 1.47-6.3x). Bias-only L1 problem (exact value), 1-D with 512 cells and 2-D
    with 128^2, on [-1.5, 1.5]^n.

    The bounds, derived for this problem (constant velocities in the box sigma([a-, a+])^n,
    so the one-step reachable set is the arrival box and the minimum over it is exact):

    - ``F_h >= F`` at every level: the value is convex and separable, so its Q1 interpolant
      is not below it, and the scheme's minimum runs over a subset of the exact arrival box
      (points beyond the state box are moved onto it);
    - ``F_h - F <= n h sqrt(S) / 2`` at the own levels: following the exact optimal constant
      velocity c* at every step is a candidate, and Q1 interpolation at x + dt c* is the mean
      over a random step to the cell's corners with variance <= h^2 / 4 a coordinate; after
      m <= S steps the mean of the 1-Lipschitz (l1) Phi exceeds Phi(x + m dt c*) = F by at
      most E|noise|_1 <= n h sqrt(m) / 2 (the walk moves toward VT, within one cell a step:
      it stays inside the box; measured 0.53-1.31 h against bounds of 2.9-3.3 h);
    - the levels in between: the same with one fractional step, plus the linear
      interpolation in depth between sub-levels ``march_dt / substeps`` apart of a value
      convex in t whose t-derivative jumps by at most ``speed`` a coordinate:
      ``n speed march_dt / (4 substeps) <= n courant h / (4 substeps)``.

    The stored levels keep their contract (``steps + 1`` levels at ``t_k = k dt``) and
    those on the march grid are the own solve's levels."""
    model, Phi, exact = bias_l1(n, activation)
    cells = LEVEL_CELLS[n]

    def solver(min_steps, **kw):
        return HJBSolver(model, Phi, [-3.0] * n, [3.0] * n, cells, T, comm=MPI.COMM_SELF, scheme="semi_lagrangian",
                         min_steps=min_steps, hamiltonian="numpy", **kw)

    own = solver(1)
    own.solve()
    S, h = own.steps, own.h
    assert own.march_steps == S and own.substeps == 1 and own.march_dt == own.dt
    e_own, low = level_errors(own, exact, signed=True)
    assert low >= -1e-12 and e_own <= n * h * np.sqrt(S) / 2, (e_own / h, S)
    fewer = solver(S - 1, keep_levels=False)  # min_steps below the own count changes nothing
    assert (fewer.steps, fewer.march_steps, fewer.substeps) == (S, S, 1)
    fewer.destroy()
    for factor in (2, 8):
        s = solver(factor * S)
        s.solve()
        q = min(factor, 4)
        assert (s.steps, s.march_steps, s.substeps) == (factor * S, S, q)
        assert s.levels.shape == (factor * S + 1, s.n_owned) and s.dt == T / (factor * S)
        assert np.max(np.abs(s.levels[::factor] - own.levels)) <= 1e-14
        e, low = level_errors(s, exact, signed=True)
        assert low >= -1e-12 and e <= n * h * (np.sqrt(S) / 2 + 2.0 / (4 * q)), (factor, e / h)
        assert e <= 1.5 * e_own, (factor, e, e_own)
        s.destroy()
    own.destroy()


def test_lax_friedrichs_min_steps_are_smaller_steps():
    """Lax-Friedrichs marches ``min_steps`` steps when they are more than its CFL count:
    smaller steps under the same graph viscosity (whose rate does not depend on dt) lose
    only the explicit step's anti-diffusion, so the error over every stored level grows
    little: at most 1.5 times the own solve's at 8 times its steps on the 1-D L1 bias
    problem (measured 1.05)."""
    model, Phi, exact = bias_l1(1, "identity")
    out = []
    for factor in (1, 8):
        s = HJBSolver(model, Phi, [-3.0], [3.0], LEVEL_CELLS[1], T, comm=MPI.COMM_SELF,
                      min_steps=factor * (out[0][1] if out else 1))
        s.solve()
        assert s.march_steps == s.steps and s.substeps == 1
        out.append((level_errors(s, exact), s.steps))
        s.destroy()
    (e_own, S), (e8, S8) = out
    assert S8 == 8 * S and e8 <= 1.5 * e_own, out


# --------------------------------------------------------------------------- parallel
@pytest.mark.mpi
@pytest.mark.parametrize("kw", [{"hamiltonian": "ufl"}, {"hamiltonian": "numpy"}, {"scheme": "semi_lagrangian"},
                                {"scheme": "semi_lagrangian", "min_steps": 40}], ids=["ufl", "numpy", "sl", "sl-levels"])
def test_parallel_bias_problem(comm, kw):
    """The 1-D value function at every stored level, its errors and the closed loop on all
    ranks equal the serial ones (computed in-process on COMM_SELF), with either
    Hamiltonian of the Lax-Friedrichs scheme and with the semi-Lagrangian scheme (whose
    arrival points reach into other ranks' vertices), also with 8 times its own 5 steps
    as stored levels (fractional steps between the march levels)."""
    out = []
    for c in (MPI.COMM_SELF, comm):
        s = bias_problem(c, 60, **kw)
        x = s.natural(0)[0]
        f = np.array([s.natural(k)[1] for k in range(s.steps + 1)])
        e = s.errors(lambda x: bias_value(x[0], 0.0, T, ALO, AHI, VT), 0.0, INNER1)
        cl = closed_loop(s, [-0.4])
        out.append((x, f, e, cl.v, cl.cost))
        if "min_steps" in kw:
            assert (s.steps, s.march_steps, s.substeps) == (40, 5, 4)
        s.destroy()
    (x0, f0, e0, v0, c0), (x1, f1, e1, v1, c1) = out
    assert np.allclose(x0, x1, rtol=0, atol=1e-13) and np.max(np.abs(f0 - f1)) <= 1e-13
    assert all(abs(e0[k] - e1[k]) <= 1e-12 for k in e0)
    assert np.max(np.abs(v0 - v1)) <= 1e-12 and abs(c0 - c1) <= 1e-12


@pytest.mark.mpi
@pytest.mark.parametrize("scheme", ["lax_friedrichs", "semi_lagrangian"])
def test_parallel_tanh_problem(comm, scheme):
    """n = 2 (triangles partitioned over the ranks): the value function at every vertex,
    F_h(v0), the closed loop and the open-loop optimum equal the serial ones."""
    out = []
    for c in (MPI.COMM_SELF, comm):
        s = tanh_problem(c, 16, 8, scheme=scheme)
        x, f = s.natural(0)
        cl = closed_loop(s, V0, steps=8)
        ol = open_loop(s.model, s.Phi, V0, 8, T)
        out.append((x, f, s.value(V0), cl.v, cl.cost, ol.J))
        s.destroy()
    a, b = out
    assert np.allclose(a[0], b[0], rtol=0, atol=1e-13) and np.max(np.abs(a[1] - b[1])) <= 1e-13
    assert abs(a[2] - b[2]) <= 1e-13
    assert np.max(np.abs(a[3] - b[3])) <= 1e-12 and abs(a[4] - b[4]) <= 1e-12
    assert abs(a[5] - b[5]) <= 1e-12 * a[5]
