"""Every local weak form of the model, in UFL.

Plain functions returning UFL forms or expressions, with no state, so another
finite-element study can import them (``from fem_dnn.core import forms``). Arguments are UFL
objects (trial/test functions, coefficients, expressions); measures default to ``ufl.dx``
on the arguments' domain. Notation follows docs/model.md and Liu-Markowich (LM):

- f: state (node values at one depth), r: costate, u = a - B_b f: pre-activation,
- BTsr: the nonlocal term ``B_b^T(sigma'(u) r)`` of the costate equation,
- a: bias function, b: selection weight, W, mu: readout weight and bias,
- sigma: an :class:`fem_dnn.core.activation.Activation`, a registry name (``"tanh"``) or any
  callable on UFL expressions (``ufl.tanh``, ``lambda s: s / (1 + s**2)``).

The nonlocal operator ``(B_b f)(y) = int_Y b(y,z) f(z) dz`` is *not* a local form: it is
assembled once as a dense operator (:mod:`fem_dnn.core.kernel`) and enters the forms below as
a coefficient (``Bf``). Its building block is the local functional :func:`integral`.
"""

import ufl

__all__ = [
    "mass",
    "lumped_mass",
    "quadrature_mass",
    "quadrature_weights",
    "integral",
    "diffusion",
    "sigma_term",
    "state_rhs",
    "state_residual",
    "costate_residual",
    "readout",
    "logistic",
    "l2_loss",
    "softmax_cross_entropy",
    "regularisation",
    "hamiltonian",
]


def _dx(measure, degree=None):
    m = ufl.dx if measure is None else measure
    if degree is not None:
        m = m(metadata={"quadrature_degree": degree})
    return m


def mass(u, v, measure=None):
    """Consistent mass ``int_Y u v dy`` (bilinear)."""
    return u * v * _dx(measure)


def lumped_mass(v, measure=None):
    """Lumped mass ``int_Y v dy`` (linear): its vector holds the node weights omega_j.

    For DG0 these are the cell volumes; for P1 the row sums of the mass matrix, i.e.
    vertex quadrature.
    """
    return v * _dx(measure)


def quadrature_mass(q, v, degree, measure=None):
    """``int_Y q v dy`` with q a trial function of a quadrature space of the given degree.

    Assembled with the same rule as the quadrature space, the matrix is
    ``Q_iq = phi_i(x_q) w_q |J_q|``: applied to values at quadrature points it computes
    ``int_Y s phi_i`` for any function s known only at those points (e.g. sigma(u_h)).
    """
    return q * v * _dx(measure, degree)


def quadrature_weights(q_test, degree, measure=None):
    """``int_Y q dy`` for q a test function of a quadrature space: the weights w_q |J_q|."""
    return q_test * _dx(measure, degree)


def integral(f, psi, measure=None):
    """``int_Y f psi dz``: the building block of B_b for a separable kernel
    ``b(y,z) = phi(y) psi(z)`` (LM §3.3) and of the readout."""
    return f * psi * _dx(measure)


def diffusion(u, v, eps, centres=None, measure=None):
    """Node interaction ``eps int_Y grad u . grad v dy`` (homogeneous Neumann).

    For a piecewise-constant (DG0) node space gradients vanish; pass ``centres``, a DG0
    vector coefficient holding the cell midpoints, to get the two-point flux form
    ``eps int_F [u][v] / |[x_c]| dS`` (the finite-volume Laplacian, consistent on meshes
    whose facets are orthogonal to the lines joining cell centres). On a (depth, node)
    mesh only facets parallel to depth should carry the flux: pass ``measure`` and
    multiply accordingly (see :func:`state_residual`).
    """
    if centres is None:
        return eps * ufl.inner(ufl.grad(u), ufl.grad(v)) * _dx(measure)
    d = ufl.sqrt(ufl.inner(ufl.jump(centres), ufl.jump(centres)))
    dS = ufl.dS if measure is None else measure
    return eps * ufl.jump(u) * ufl.jump(v) / d * dS


def _sigma(sigma):
    """The UFL function of an activation: an Activation, a registry name or a callable."""
    if isinstance(sigma, str):
        from fem_dnn.core.activation import get_activation

        sigma = get_activation(sigma)
    return getattr(sigma, "ufl", sigma)


def sigma_term(u, v, sigma, degree=None, measure=None):
    """``int_Y sigma(u) v dy``: the activation term of the state equation."""
    return _sigma(sigma)(u) * v * _dx(measure, degree)


def state_rhs(a, Bf, v, sigma, degree=None, measure=None):
    """Right-hand side of the state equation at one depth, ``int_Y sigma(a - Bf) v``."""
    return sigma_term(a - Bf, v, sigma, degree, measure)


def state_residual(f, a, Bf, v, sigma, eps=0.0, centres=None, degree=None, decay=0.0):
    """Space-time residual of the state equation on the (depth, node) mesh (LM 2.1).

    ``R(v) = int_0^T int_Y (d_t f - sigma(a - Bf) + gamma f) v + eps grad_y f . grad_y v``
    (gamma = ``decay``, the state's relaxation rate; 0 in LM 2.1),
    where depth t is the *last* coordinate of the (depth, node) mesh. ``a`` and ``Bf``
    are coefficients on that mesh: the nonlocal term enters as data. For a DG0 node
    space pass ``centres`` (DG0 vector of cell midpoints of the product cells); the
    two-point flux then acts only across facets parallel to depth.
    """
    t_axis = len(ufl.SpatialCoordinate(f.ufl_function_space().mesh)) - 1
    dx = _dx(None, degree)
    return (f.dx(t_axis) - _sigma(sigma)(a - Bf) + decay * f) * v * dx + _node_diffusion(f, v, eps, centres, t_axis, dx)


def _node_diffusion(f, v, eps, centres, t_axis, dx):
    """``eps int grad_y f . grad_y v`` on the (depth, node) mesh (gradient in the node
    variables only), or the two-point flux across depth-parallel facets for DG0."""
    if eps == 0.0:
        return 0
    if centres is None:
        gy = ufl.as_vector([f.dx(i) for i in range(t_axis)])
        gv = ufl.as_vector([v.dx(i) for i in range(t_axis)])
        return eps * ufl.inner(gy, gv) * dx
    n = ufl.FacetNormal(f.ufl_function_space().mesh)
    across_nodes = 1.0 - n("+")[t_axis] ** 2  # 1 on facets parallel to depth, else 0
    d = ufl.sqrt(ufl.inner(ufl.jump(centres), ufl.jump(centres)))
    return eps * across_nodes * ufl.jump(f) * ufl.jump(v) / d * ufl.dS


def costate_residual(r, BTsr, v, eps=0.0, centres=None, degree=None, decay=0.0):
    """Space-time residual of the costate equation on the (depth, node) mesh (docs/model.md §3).

    The costate solves ``d_t r = B_b^T(sigma'(u) r) + gamma r - eps Lap_y r`` backward in
    depth (homogeneous Neumann; gamma = ``decay``, the state's relaxation rate), so with
    depth t the *last* coordinate

    ``R(v) = int_0^T int_Y (d_t r - BTsr - gamma r) v - eps grad_y r . grad_y v``

    (the diffusion enters with the opposite sign to :func:`state_residual`). The whole
    nonlocal term ``B_b^T(sigma'(a - B_b f) r)`` is one coefficient ``BTsr`` on the
    product mesh (data, like ``Bf`` in :func:`state_residual`), so the state, the
    controls and sigma do not enter the form. For a DG0 node space pass ``centres`` (DG0
    vector of cell midpoints of the product cells); the two-point flux then acts only
    across facets parallel to depth.
    """
    t_axis = len(ufl.SpatialCoordinate(r.ufl_function_space().mesh)) - 1
    dx = _dx(None, degree)
    return (r.dx(t_axis) - BTsr - decay * r) * v * dx - _node_diffusion(r, v, eps, centres, t_axis, dx)


def readout(W, fT, measure=None):
    """Readout integral ``int_Y W(z) f(z,T) dz`` for one output y' (LM 2.2).

    The readout is ``O = int_Y W f(T) dz + mu``: the bias mu is a number per output and
    is added to the assembled value (it is not integrated over Y). For
    Y_out = {1..K} use one form per class k with ``W = W_k``; for Y_out = Y the weight
    is a kernel and the readout has the same structure as B_b.
    """
    return W * fT * _dx(measure)


def logistic(O):
    """Prediction map h of the function-to-function setting: ``1 / (1 + exp(-O))``."""
    return 1.0 / (1.0 + ufl.exp(-O))


def l2_loss(prediction, target, measure=None):
    """Paper loss ``1/2 int_{Y_out} |C_pre - C|^2``."""
    return 0.5 * (prediction - target) ** 2 * _dx(measure)


def softmax_cross_entropy(O, C):
    """Cross-entropy of K-class classification, ``-sum_k C_k log softmax(O)_k``.

    ``O`` and ``C`` are UFL vectors of length K (counting measure on Y_out = {1..K});
    returns a scalar UFL expression (stabilised by the max of O).
    """
    K = O.ufl_shape[0]
    m = O[0]
    for k in range(1, K):
        m = ufl.max_value(m, O[k])
    lse = m + ufl.ln(sum(ufl.exp(O[k] - m) for k in range(K)))
    return sum(C[k] * (lse - O[k]) for k in range(K))


def regularisation(c, lam, measure=None):
    """``lambda/2 ||c||^2`` for one control c on its domain (LM Remark 4.2)."""
    return 0.5 * lam * c**2 * _dx(measure)


def hamiltonian(r, a, Bf, sigma, running_cost=None, measure=None):
    """Pontryagin Hamiltonian ``H = int_Y r sigma(a - B_b f) dy + running cost`` (LM 4.11)."""
    H = r * _sigma(sigma)(a - Bf) * _dx(measure)
    return H if running_cost is None else H + running_cost
