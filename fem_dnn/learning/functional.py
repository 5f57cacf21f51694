"""The reduced functional of the learning problem, its gradient and Hessian action, and the
reduced Hessian as an operator (:class:`ReducedHessian`).

docs/model.md §2-3 (LM 2.2 and LM §4): for controls ``m = (a, b, W, mu)``

    J(m) = 1/S sum_s loss_s(h(O_s)) + lambda R(m) + gamma/2 (||d_t a||^2 + ||d_t b||^2),
    R(m) = 1/2 (||a||^2 + ||b||^2 + ||W||^2 + ||mu||^2),

where ``O_s = int_Y W f_s(T) + mu`` is the readout of the state f_s solved from the input
of sample s. The loss is one of :data:`fem_dnn.learning.losses.LOSSES`, e.g.:

- ``"logistic_l2"`` (the paper's, targets on Y_out = Y): ``loss = 1/2 int |h(O) - C|^2``, h logistic;
- ``"cross_entropy"`` (classes, Y_out = {1..K}): ``loss = -sum_k C_k log softmax(O)_k``;
- ``"mse"`` (classes): ``loss = 1/2 sum_k (O_k - C_k)^2`` on one-hot C.

Everything is discretise-then-optimise: J is the discrete functional, the costate is
the exact transpose of the discrete forward scheme, so the derivatives are exact. Two
objects must never be confused:

- the **derivative** ``dJ`` (:meth:`ReducedFunctional.derivative`): a dual vector,
  ``dJ[dm] = dJ . dm`` in the Euclidean pairing of coefficient vectors;
- the **gradient** (:meth:`ReducedFunctional.gradient`): its Riesz representer in the
  controls' inner product, ``(g, dm)_M = dJ . dm``. In L2 it converges to the formulas
  of docs/model.md §3 (``D_a J = sigma'(u) r + lambda a``, ...) as h, tau -> 0.

The controls and their inner products are :class:`fem_dnn.learning.controls.ControlSpace`;
the losses :mod:`fem_dnn.learning.losses`. Every functional here implements
:class:`AbstractReducedFunctional`; the wrappers (:class:`FixedReadout`,
:class:`Proximal`) extend :class:`WrappedFunctional` instead of copying attributes.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

from fem_dnn._mpi import all_finite
from fem_dnn.errors import InputError, NonFiniteError
from fem_dnn.learning.controls import ControlSpace
from fem_dnn.learning.losses import Loss, get_loss
from fem_dnn.network import Controls, Network, Readout

__all__ = ["AbstractReducedFunctional", "FixedReadout", "Proximal", "ReducedFunctional", "ReducedHessian",
           "WrappedFunctional"]

#: Control-sized Vecs a :class:`ReducedFunctional` holds at its point (the memory model's
#: count, :mod:`fem_dnn.app.memory`): the point m, the network's copy of the controls,
#: lambda R m (when lambda or gamma > 0) and the derivative; a functional that is only
#: evaluated (the test set's) holds the first three.
FUNCTIONAL_VECTORS = 4
EVALUATION_VECTORS = 3


class AbstractReducedFunctional(ABC):
    """The interface every optimiser, Taylor test and checkpoint uses (pyadjoint's
    ``ReducedFunctional``, hIPPYlib's ``Model``): a value, the derivative as a dual vector,
    the Hessian action, and the objects they live on.

    Attributes a subclass sets: ``controls`` (:class:`ControlSpace`), ``network``,
    ``kind`` (the readout space, ``"classes"`` or ``"function"``) and ``counts`` (PDE
    solves by kind)."""

    controls: ControlSpace
    network: Network
    kind: str
    counts: dict

    @abstractmethod
    def __call__(self, m: PETSc.Vec) -> float:
        """J(m)."""

    @abstractmethod
    def derivative(self, m: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """dJ(m), a dual vector (Euclidean pairing with the coefficients)."""

    @abstractmethod
    def hessian(self, m: PETSc.Vec, dm: PETSc.Vec, out: PETSc.Vec | None = None, gauss_newton: bool = False) -> PETSc.Vec:
        """``d^2J(m)[dm, .]``, a dual vector."""

    def gradient(self, m: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """The Riesz representer of dJ(m) in the controls' inner product."""
        d = self.derivative(m)
        out = self.controls.riesz(d, out)
        d.destroy()
        return out

    def accuracy(self, m: PETSc.Vec) -> float:
        """Fraction of samples classified correctly (classes only)."""
        raise InputError(f"{type(self).__name__} has no accuracy")


class WrappedFunctional(AbstractReducedFunctional):
    """A functional built on another one, ``J``: everything not overridden (the value,
    the derivatives, the controls, the counters, mini-batches, accuracy) is J's."""

    def __init__(self, J: AbstractReducedFunctional):
        self.J = J

    def __getattr__(self, name):  # controls, network, kind, counts, set_batch, n_samples, ...
        if name == "J":
            raise AttributeError(name)
        return getattr(self.J, name)

    def __call__(self, m):
        return self.J(m)

    def derivative(self, m, out=None):
        return self.J.derivative(m, out)

    def hessian(self, m, dm, out=None, gauss_newton=False):
        return self.J.hessian(m, dm, out, gauss_newton)

    def accuracy(self, m):
        return self.J.accuracy(m)


class FixedReadout(WrappedFunctional):
    """J restricted to the layer controls a and b: the W and mu parts of the derivative
    and of the Hessian action are zeroed, so an optimiser never moves the readout (it
    stays where the initial controls put it). Use it in place of J:
    ``Optimizer(FixedReadout(J), "lbfgs", bounds=box)``."""

    def _zero_readout(self, v):
        blocks = self.controls.block_dict(v)
        blocks["W"][:], blocks["mu"][:] = 0.0, 0.0
        return v

    def derivative(self, m, out=None):
        return self._zero_readout(self.J.derivative(m, out))

    def hessian(self, m, dm, out=None, gauss_newton=False):
        d = self._zero_readout(dm.copy())
        out = self._zero_readout(self.J.hessian(m, d, out, gauss_newton))
        d.destroy()
        return out


class Proximal(WrappedFunctional):
    """``J_h(m) = J(m) + 1/(2h) ||m - c||^2`` in the controls' inner product (H1 in depth
    when the controls use it): the subproblem of one proximal-point step."""

    def __init__(self, J, centre: PETSc.Vec, h: float):
        super().__init__(J)
        self.c, self.h = centre, h

    def _shift(self, m):
        d = m.copy()
        d.axpy(-1.0, self.c)
        return d

    def __call__(self, m):
        d = self._shift(m)
        val = self.J(m) + 0.5 / self.h * self.controls.inner(d, d)
        d.destroy()
        return val

    def derivative(self, m, out=None):
        out = self.J.derivative(m, out)
        d = self._shift(m)
        Md = self.controls.mass(d)
        out.axpy(1.0 / self.h, Md)
        d.destroy(), Md.destroy()
        return out

    def hessian(self, m, dm, out=None, gauss_newton=False):
        out = self.J.hessian(m, dm, out, gauss_newton)
        Md = self.controls.mass(dm)
        out.axpy(1.0 / self.h, Md)
        Md.destroy()
        return out

@dataclass
class _Point:
    m: np.ndarray
    traj: object
    readout: Readout
    O: np.ndarray
    gO: np.ndarray
    J: float
    costate: object = None
    dual: PETSc.Vec | None = None
    Rm: PETSc.Vec | None = None
    full: tuple | None = None  # (trajectory, costate) with the whole tape (checkpointing)


class ReducedFunctional(AbstractReducedFunctional):
    """``J(m)`` with exact derivatives: one forward solve per value, plus one costate
    solve per gradient, plus one incremental forward and one incremental costate solve
    per Hessian action (hIPPYlib style; see :attr:`counts`).

    Args:
        network: the network (node space, depth mesh, activation, scheme, eps, layout).
        inputs: network inputs f_I: callable or ``(S, n)`` natural-order array.
        targets: ``(S,)`` integer labels in 0..K-1 (classes) or ``(S, n)`` natural-order
            values / callable (function).
        loss: a loss of :data:`fem_dnn.learning.losses.LOSSES` by name
            (``"cross_entropy"``: softmax cross-entropy; ``"logistic_l2"``: the paper's
            logistic L2 loss; ``"mse"``: squared error on one-hot classes), a readout space
            (``"classes"``, ``"function"``: its default loss) or a
            :class:`~fem_dnn.learning.losses.Loss`. Its ``readout`` sets :attr:`kind`.
        K: number of classes (default: max label + 1).
        lam: regularisation weight lambda >= 0.
        gamma: depth-smoothness weight gamma >= 0.
        inner_product: ``"l2"`` or ``"h1"`` (default: h1 when gamma > 0).
        h1_length: length of the H1 term (default sqrt(gamma/lambda) when both > 0, else T).
        block_weights: ``{"a": w_a, "b": w_b}``, the blocks' weights in the controls' inner
            product (:class:`~fem_dnn.learning.controls.ControlSpace`; default 1).
        store_every: depth checkpointing for gradients (keep the states every k
            levels, recompute the rest in the costate solve; the same gradients, one
            extra forward solve). Hessian actions then rebuild the full tape once per
            point.
    """

    def __init__(
        self,
        network: Network,
        inputs,
        targets,
        loss: "str | Loss" = "classes",
        K: int | None = None,
        lam: float = 0.0,
        gamma: float = 0.0,
        inner_product: str | None = None,
        h1_length: float | None = None,
        block_weights: dict | None = None,
        store_every: int | None = None,
    ):
        if not (np.isfinite(lam) and lam >= 0 and np.isfinite(gamma) and gamma >= 0):
            raise InputError(f"lambda and gamma must be finite and >= 0, got {lam!r}, {gamma!r}")
        self.network, self.lam, self.gamma = network, float(lam), float(gamma)
        self.store_every = store_every
        self._point = None
        # every sample group keeps all samples (node-local); the active ones (all, or a
        # mini-batch) are split between the groups, so results do not depend on the layout
        self._F0_all = network.inputs(inputs, split=False)
        S = self._F0_all.shape[1]
        self.loss = get_loss(loss)
        kind = self.loss.readout
        self._C_all, self._labels_all, K = self.loss.targets(targets, network, S, K)
        self.n_samples = S
        self.set_batch(None)
        if inner_product is None:
            inner_product = "h1" if gamma > 0 else "l2"
        if h1_length is None and gamma > 0 and lam > 0:
            h1_length = float(np.sqrt(gamma / lam))
        self.controls = ControlSpace(network, kind, K, inner_product, h1_length, block_weights)
        self.kind = kind
        self.counts = {"forward": 0, "costate": 0, "incremental_forward": 0, "incremental_costate": 0}
        self._point = None

    @property
    def inputs_all(self) -> np.ndarray:
        """The node-space inputs of all samples, ``(n_local, n_samples)`` (every sample
        group keeps them all; ``F0`` holds the active ones)."""
        return self._F0_all

    @property
    def targets_all(self) -> np.ndarray:
        """The targets of all samples (``C`` holds the active ones): one-hot ``(K,
        n_samples)`` (classes) or node values ``(n_local, n_samples)`` (function)."""
        return self._C_all

    def set_batch(self, indices=None):
        """Restrict J to the samples ``indices`` (a mini-batch; None: all samples). The
        indices are global and must be the same on every rank; each sample group takes
        its contiguous share of them."""
        S = self.n_samples
        idx = np.arange(S) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= S:
            raise InputError(f"a batch must be a non-empty list of sample indices in 0..{S - 1}")
        s0, s1 = self.network.layout.sample_range(idx.size)
        mine = idx[s0:s1]
        self.S = int(idx.size)
        self.F0 = np.asfortranarray(self._F0_all[:, mine])
        self.C = np.asfortranarray(self._C_all[:, mine])
        self.labels = None if self._labels_all is None else self._labels_all[mine]
        self.destroy()

    # ---- the point of linearisation
    def _at(self, m: PETSc.Vec, costate: bool = False) -> _Point:
        p = self._point
        arr = m.array_r
        same = p is not None and p.m.shape == arr.shape and np.array_equal(p.m, arr)
        same = self.network.layout.world.allreduce(same, op=MPI.LAND)
        if not same:
            self.destroy()  # the previous point's Vecs
            p = None  # and its trajectory and tape: not alive during the new forward solve
            c, r = self.controls.split(m)
            net = self.network
            ck = self.store_every
            traj = net.forward(self.F0, c, tape=ck is None, store_every=ck)
            self.counts["forward"] += 1
            O = net.readout(traj.final, r)
            J = self.network.layout.world.allreduce(self.loss.value(O, self.C, net.space)) / self.S
            Rm = self._reg(m)
            J += 0.5 * (m.dot(Rm) if Rm is not None else 0.0)
            p = self._point = _Point(arr.copy(), traj, r, O, self.loss.gradient(O, self.C, net.space) / self.S, J)
            p.Rm = Rm
        if costate == "full" and p.costate is None or costate and p.dual is None:
            self._costate(m, p, keep=costate == "full")
        return p

    def _reg(self, m):
        """``(lambda L2 + gamma D_t^T D_t) m`` (None without regularisation)."""
        if self.lam == 0 and self.gamma == 0:
            return None
        return self.controls.regularisation_operator(self.lam, self.gamma, m)

    def _reg_dot(self, m):
        Rm = self._reg(m)
        if Rm is None:
            return 0.0
        val = m.dot(Rm)
        Rm.destroy()
        return val

    def _reduce(self, c: Controls, r: Readout, out: PETSc.Vec) -> PETSc.Vec:
        """Sum over sample groups (and node ranks, for a shared kernel) and pack into a Vec."""
        comm = self.network.layout.sample_comm
        if comm.size > 1:
            for arr in [x for ci in (c if isinstance(c, list) else [c]) for x in (ci.a, ci.b)] + [r.W, r.mu]:
                comm.Allreduce(MPI.IN_PLACE, arr, op=MPI.SUM)
        self.network.reduce(c)  # and over node ranks, for kernels shared by all of them
        return self.controls.join(c, r, out)

    def _costate(self, m, p, keep):
        """The costate solve and the derivative. A gradient keeps only the current
        layer's costate (``keep=False``); the Hessian and :meth:`costate` need all of
        it, and solve again if the gradient came first."""
        net = self.network
        dual_T, dr = net.readout_adjoint(p.traj.final, p.readout, p.gO)
        costate, dc = net.costate(p.traj, dual_T, keep=keep)
        self.counts["costate"] += 1
        p.costate = costate
        if p.dual is None:
            dual = self._reduce(dc, dr, self.controls.create_vec())
            if p.Rm is not None:
                dual.axpy(1.0, p.Rm)
            _finite(dual, "gradient")
            p.dual = dual

    # ---- public API
    def __call__(self, m: PETSc.Vec) -> float:
        """J(m) (one forward solve unless m is the last point)."""
        return self._at(m).J

    def derivative(self, m: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """The derivative dJ(m) as a dual vector (Euclidean pairing with coefficients)."""
        p = self._at(m, costate=True)
        out = out or p.dual.duplicate()
        p.dual.copy(out)
        return out

    def gradient(self, m: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """The gradient: the Riesz representer of dJ(m) in the controls' inner product."""
        p = self._at(m, costate=True)
        return self.controls.riesz(p.dual, out)

    def hessian(self, m: PETSc.Vec, dm: PETSc.Vec, out: PETSc.Vec | None = None, gauss_newton: bool = False) -> PETSc.Vec:
        """The Hessian action ``d^2J(m)[dm, .]`` as a dual vector, by second-order adjoints
        (one incremental forward and one incremental costate solve). ``gauss_newton=True``
        gives the Gauss-Newton approximation (no second derivatives of the network or of
        the bilinear readout; the loss Hessian is kept)."""
        net = self.network
        p = self._at(m)
        dc, dr = self.controls.split(dm)
        r = p.readout
        if p.traj.tape is not None:
            p = self._at(m, costate="full")
            traj, costate = p.traj, p.costate
        else:  # depth checkpointing: the Hessian needs the whole tape
            if p.full is None:
                full = net.forward(self.F0, p.traj.controls, tape=True)
                dual_T, _ = net.readout_adjoint(full.final, r, p.gO)
                p.full = (full, net.costate(full, dual_T)[0])
            traj, costate = p.full
        tan = net.tangent(traj, dc)
        self.counts["incremental_forward"] += 1
        FT, dFT = traj.final, tan.final
        dO = net.readout_tangent(FT, dFT, r, dr)
        HdO = self.loss.hessian(p.O, self.C, dO, net.space, gauss_newton) / self.S
        d_dual_T, hr = net.readout_adjoint(FT, r, HdO)
        if not gauss_newton:
            eta_F, eta_W = net.readout_second(FT, dFT, r, dr, p.gO)
            d_dual_T = d_dual_T + eta_F
            hr.W = hr.W + eta_W
        _, hc = net.costate_incremental(traj, costate, tan, d_dual_T, gauss_newton)
        self.counts["incremental_costate"] += 1
        out = self._reduce(hc, hr, out or self.controls.create_vec())
        if self.lam or self.gamma:
            R = self.controls.regularisation_operator(self.lam, self.gamma, dm)
            out.axpy(1.0, R)
            R.destroy()
        _finite(out, "Hessian action")
        return out

    # ---- what the point holds
    def trajectory(self, m: PETSc.Vec):
        """The state trajectory at m."""
        return self._at(m).traj

    def costate(self, m: PETSc.Vec):
        """The costate at m (:class:`fem_dnn.network.Costate`; ``.r()`` gives r)."""
        return self._at(m, costate="full").costate

    def loss_value(self, m: PETSc.Vec) -> float:
        """Mean loss without the regularisation."""
        return self._at(m).J - 0.5 * self._reg_dot(m)

    def loss_derivative(self, m: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """The derivative of the mean loss alone (:meth:`loss_value`, no regulariser), a
        dual vector: what a goal functional on held-out data contributes to the dual
        problem of the goal-oriented estimate (:mod:`fem_dnn.learning.dwr`)."""
        p = self._at(m, costate=True)
        out = out or p.dual.duplicate()
        p.dual.copy(out)
        if p.Rm is not None:
            out.axpy(-1.0, p.Rm)
        return out

    def accuracy(self, m: PETSc.Vec) -> float:
        """Fraction of samples classified correctly (classes only)."""
        if self.kind != "classes":
            raise InputError("accuracy is defined for the classes learning problem")
        p = self._at(m)
        right = int(np.sum(np.argmax(p.O, axis=0) == self.labels))
        return self.network.layout.sample_comm.allreduce(right) / self.S

    def destroy(self):
        if self._point is not None:
            for v in (self._point.dual, self._point.Rm):
                if v is not None:
                    v.destroy()
        self._point = None


class ReducedHessian:
    """The reduced Hessian of a functional at a point as an operator, ``dm -> d^2J(m)[dm, .]``
    (a dual vector, :meth:`AbstractReducedFunctional.hessian`; the Gauss-Newton
    approximation with ``gauss_newton``): the one Hessian operator of the width estimator's
    Newton step (:func:`fem_dnn.learning.dwr.newton_correction`) and of TAO's Newton
    methods (:class:`fem_dnn.optimize.tao.Optimizer`).

    With ``coordinates`` it acts in the coordinates ``x = T m`` of a map the caller gives,
    an object with ``from_coordinates(x)`` (``T^{-1} x``, a new Vec) and
    ``dual_to_coordinates(g, out)`` (``T^{-T} g``), such as
    :class:`fem_dnn.optimize.coordinates.Coordinates`: ``x -> T^{-T} H T^{-1} x``.
    :meth:`create_mat` makes a PETSc shell Mat of it, ``H + shift I`` (TAO's Newton methods
    may shift it: the Mat's ``shift`` adds to the shift, ``zeroEntries`` and :meth:`at`
    drop it).

    Args:
        J: the functional (:class:`AbstractReducedFunctional`).
        m: the point (a control Vec the caller owns; not copied), or None until :meth:`at`.
        gauss_newton: the Gauss-Newton Hessian.
        coordinates: the coordinate map (None: the controls' coefficients).
    """

    def __init__(self, J: AbstractReducedFunctional, m: PETSc.Vec | None = None, gauss_newton: bool = False,
                 coordinates=None):
        self.J, self.m, self.gauss_newton, self.coordinates = J, m, gauss_newton, coordinates
        self.shift_value = 0.0

    def at(self, m: PETSc.Vec) -> "ReducedHessian":
        """The Hessian at ``m`` from now on (not copied; a shift is dropped)."""
        self.m, self.shift_value = m, 0.0
        return self

    def apply(self, v: PETSc.Vec, out: PETSc.Vec) -> PETSc.Vec:
        """``out = H v`` (without the shift), in the coordinates when given."""
        if self.coordinates is None:
            return self.J.hessian(self.m, v, out, gauss_newton=self.gauss_newton)
        dm = self.coordinates.from_coordinates(v)
        Hd = self.J.hessian(self.m, dm, gauss_newton=self.gauss_newton)
        self.coordinates.dual_to_coordinates(Hd, out)
        dm.destroy(), Hd.destroy()
        return out

    def create_mat(self) -> PETSc.Mat:
        """A PETSc shell Mat of the operator (its python context), sized as the controls'
        Vecs; the caller destroys it."""
        cs = self.J.controls
        A = PETSc.Mat().createPython(((cs.n_local, PETSc.DECIDE), (cs.n_local, PETSc.DECIDE)), self, comm=cs.comm)
        A.setUp()
        return A

    # ---- the PETSc python Mat context
    def mult(self, mat, v, out):
        self.apply(v, out)
        if self.shift_value:
            out.axpy(self.shift_value, v)

    def shift(self, mat, s):
        self.shift_value += s

    def zeroEntries(self, mat):
        self.shift_value = 0.0


def _finite(vec, what):
    if not all_finite(vec.comm.tompi4py(), vec.array_r):
        raise NonFiniteError(f"the {what} is not finite")
