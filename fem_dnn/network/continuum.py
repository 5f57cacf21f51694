"""The continuum residual network: controls, construction and the solves.

State equation (LM 2.1, docs/model.md §1), semi-discretised in the node space V_h:

    M df/dt = Q sigma(P u) - eps K f - gamma M f,     u = a^k - B_{b^k} f   on layer k,

with M, Q, P, K from :class:`fem_dnn.core.nodes.NodeSpace` (lumped: M = Q = diag(omega),
P = I) and B from a kernel family of :mod:`fem_dnn.core.kernel`. The depth scheme (each one a
different network architecture built from the same PDE) comes from the registry of
:mod:`fem_dnn.network.schemes`; it is built from the stage function :meth:`Network.g`
and its derivatives (:meth:`Network.g_tangent`, :meth:`Network.g_adjoint`,
:meth:`Network.g_second`) and the diffusion sub-step :meth:`Network.diffuse`
(:mod:`fem_dnn.network.stage`). This module runs the scheme through the layers: forward
(with the tape, or with depth checkpointing), tangent, costate and second-order costate
solves (docs/model.md §3-4). The evaluation between layers and nodes is
:mod:`fem_dnn.network.evaluation`, the readout :mod:`fem_dnn.network.readout`.
"""

from dataclasses import dataclass, field

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn._mpi import all_finite, finite
from fem_dnn.core.activation import Activation, get_activation
from fem_dnn.core.depth import Depth
from fem_dnn.core.layout import Layout
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.core.kernel import DenseKernel, Kernel, make_kernel
from fem_dnn.errors import InputError, NonFiniteError
from fem_dnn.network.evaluation import PointEvaluation
from fem_dnn.network.readout import ReadoutMethods
from fem_dnn.network.schemes import DTYPES, SCHEMES, float32_unsupported, make_scheme
from fem_dnn.network.stage import StageFunction

__all__ = ["Controls", "Costate", "Network", "Trajectory"]


@dataclass
class Controls:
    """Layer-wise controls of the state equation (the network's parameters).

    Attributes:
        a: bias, ``(N, n_local)`` owned node values per layer.
        b: selection weight, ``(N,) + kernel.shape()``: dense ``(N, n_local, n)`` (owned
            rows, columns in global dof order); local ``(N, M)`` (kappa, every rank); lowrank
            ``(N, 2, n_local, R)`` (psi, phi).
    """

    a: np.ndarray
    b: np.ndarray


@dataclass
class Trajectory:
    """States at the N+1 depth points for a batch of S samples.

    ``states[k]`` is ``(S, n_local)`` so that ``state(k)`` is a Fortran ``(n_local, S)``
    view. Use :meth:`Network.state_at` / :meth:`Network.evaluate` for depths between
    layers and points of Y, :meth:`natural` for gathered arrays.
    """

    network: "Network"
    controls: Controls
    states: np.ndarray
    tape: list | None = None
    extra: dict = field(default_factory=dict)
    levels: list | None = None  # depth checkpointing: the levels of ``states``

    def state(self, k: int) -> np.ndarray:
        return self.states[k].T

    @property
    def final(self) -> np.ndarray:
        return self.states[-1].T

    @property
    def nbytes(self) -> int:
        """Memory this rank holds for the trajectory: the stored states and the tape's
        arrays (views of the states, such as Euler's stage inputs, counted once)."""
        seen, total = set(), self.states.nbytes
        for layer in self.tape or []:
            for st in layer:
                for arr in (st.Uq, st.X, st.dsig, st.sig):
                    if arr is None or id(arr) in seen or np.shares_memory(arr, self.states):
                        continue
                    seen.add(id(arr))
                    total += arr.nbytes
        return total

    def natural(self, k: int = -1) -> np.ndarray:
        """``(S_total, n)`` state at depth level k in natural node order, all samples."""
        net = self.network
        local = net.space.to_natural(self.states[k], axis=1)
        return np.concatenate(net.layout.sample_comm.allgather(local), axis=0)


class Network(StageFunction, PointEvaluation, ReadoutMethods):
    """Continuum ResNet on a node space and a depth mesh.

    Args:
        space: node space V_h.
        depth: depth mesh of [0,T].
        activation: name or :class:`Activation` (tanh, arctan, sigmoid, relu,
            leaky_relu, elu, identity).
        scheme: a name of :data:`fem_dnn.network.schemes.SCHEMES` (euler, heun, rk4, ssprk3, midpoint).
        eps: node diffusion coefficient (>= 0, default 0: exactly LM 2.1).
        decay: the state's relaxation rate gamma (>= 0, default 0: exactly LM 2.1): the
            term ``-gamma f`` of df/dt, the leak of a neural field (docs/model.md §1).
        layout: rank layout (default: node-parallel over the space's communicator).
        petsc_options_prefix: prefix of every PETSc solver the network creates.
        kernel: the family of the layers' kernels b: a name of
            :data:`fem_dnn.core.kernel.KERNELS` with default parameters, or a
            :class:`~fem_dnn.core.kernel.Kernel` on ``space`` (default: dense).
    """

    def __init__(
        self,
        space: NodeSpace,
        depth: Depth,
        activation: str | Activation = "tanh",
        scheme: str = "euler",
        eps: float = 0.0,
        layout: Layout | None = None,
        petsc_options_prefix: str = "fem_dnn_",
        kernel: str | Kernel = "dense",
        dtype: str = "float64",
        decay: float = 0.0,
    ):
        if dtype not in DTYPES:
            raise InputError(f"unknown precision {dtype!r}; choose one of {list(DTYPES)}")
        if scheme not in SCHEMES:
            raise InputError(f"unknown depth scheme {scheme!r}; choose one of {list(SCHEMES)}")
        if not (np.isfinite(eps) and eps >= 0):
            raise InputError(f"diffusion eps must be >= 0, got {eps!r}")
        if not (np.isfinite(decay) and decay >= 0):
            raise InputError(f"the relaxation rate decay must be >= 0, got {decay!r}")
        self.space, self.depth = space, depth
        self.sigma = get_activation(activation)
        self.scheme, self.eps, self.decay = scheme, float(eps), float(decay)
        self.kernel = make_kernel(space, kernel) if isinstance(kernel, str) else kernel
        if self.kernel.space is not space:
            raise InputError("the network's kernel must be built on the network's node space")
        self.readout_kernel = DenseKernel(space)  # a function readout's W is a dense kernel
        self.layout = layout or Layout(space.comm, space.comm, MPI.COMM_SELF)
        self.prefix = petsc_options_prefix
        self.dtype = np.dtype(dtype)
        if self.dtype == np.float32:
            why = float32_unsupported(scheme, self.eps, space.mass, self.kernel)
            if why:
                raise InputError(f"dtype = 'float32' {why}; use dtype = 'float64'")
        self._scheme = make_scheme(scheme, self)

    def cast(self, c: "Controls | None") -> "Controls | None":
        """The controls in the network's precision (the states', tape's and costate's);
        the controls, gradients and everything the optimisers see stay float64."""
        if c is None or self.dtype == np.float64:
            return c
        with np.errstate(over="ignore"):
            out = Controls(np.asarray(c.a, dtype=self.dtype), np.asarray(c.b, dtype=self.dtype))
        if not (all_finite(self.layout.world, out.a) and all_finite(self.layout.world, out.b)):
            raise NonFiniteError(f"the controls exceed the {self.dtype} range (|value| > {np.finfo(self.dtype).max:.3g}) "
                                 "or are not finite; use dtype = 'float64'")
        return out

    # ------------------------------------------------------------------ parameters
    def make_controls(self, a=0.0, b=0.0) -> Controls:
        """Controls from scalars, callables or natural-order arrays.

        ``a``: scalar, callable ``a(y, t)`` (y of shape (3, p), returns (p,)), array
        ``(n,)`` (all layers) or ``(N, n)``. ``b`` (dense kernel): scalar, callable
        ``b(y, z, t)`` (returns (p, q)), array ``(n, n)`` or ``(N, n, n)``; for another
        kernel family what its :meth:`~fem_dnn.core.kernel.Kernel.sample` takes (local:
        ``kappa(d, t)`` or ``(M,)``/``(N, M)`` nodal values), per layer or for all layers.
        Callables are sampled at the dofs and at the layer midpoints t_{k+1/2}.
        """
        sp, d = self.space, self.depth
        N, nl = d.N, sp.n_local
        A = np.empty((N, nl))
        B = self.kernel.zeros(N)
        for k in range(N):
            t = d.mid[k]
            if callable(a):
                A[k] = np.broadcast_to(np.asarray(a(sp.x_owned, t), dtype=float), (nl,))
            else:
                arr = np.asarray(a, dtype=float)
                A[k] = arr if arr.ndim == 0 else sp.from_natural(arr if arr.ndim == 1 else _layer(arr, k, N, "a"))
            if callable(b):
                B[k] = self.kernel.sample(b, t)
            else:
                arr = np.asarray(b, dtype=float)
                B[k] = self.kernel.sample(arr if arr.ndim == len(B.shape) - 1 or arr.ndim == 0 else _layer(arr, k, N, "b"), t)
        _check_finite(self.layout.world, "controls a", A)
        _check_finite(self.layout.world, "controls b", B)
        return Controls(A, B)

    def inputs(self, f_I, split: bool = True) -> np.ndarray:
        """Initial data (the network input) as a Fortran ``(n_local, S_local)`` batch
        (:func:`batch_inputs` on the network's node space)."""
        return batch_inputs(self.space, self.layout, self.dtype, f_I, split)

    # ------------------------------------------------------------------ the scheme
    def step(self, k: int, F: np.ndarray, c: Controls, tau: float | None = None, tape: list | None = None,
             out: np.ndarray | None = None, groups: int = 1) -> np.ndarray:
        """Advance a batch over (part of) layer k with the network's scheme
        (:mod:`fem_dnn.network.schemes`).

        If ``tape`` is a list, the stages' linearisation data are appended to it. The
        result is written to ``out`` (a Fortran ``(n_local, S)`` array not aliasing F)
        when given. ``groups``: F is constant on consecutive groups of that many channels
        (:meth:`forward`).
        """
        h = float(self.depth.tau[k] if tau is None else tau)  # a Python float: keeps a float32 batch float32
        F = self._scheme.step(k, F, c, h, tape, out, groups)
        if out is not None and F is not out:
            out[...] = F
            return out
        return np.asfortranarray(F)

    # ------------------------------------------------------------------ forward solve
    def forward(self, f_I, controls: Controls, tape: bool = False, store_every: int | None = None,
                groups: int = 1) -> Trajectory:
        """Solve the state equation from the input f_I through all N layers.

        With ``tape=True`` the stages' linearisation data are kept (``traj.tape[k]``), as
        the costate and incremental solves need them.

        ``groups`` = m > 1 states that f_I is constant on consecutive groups of m channels
        (what a slab boundary or the input's copy to every channel makes,
        :class:`~fem_dnn.network.SlabNetwork`): the first stage's kernel product and its
        gradient part then use the groups' summed kernel (1/m of the multiply-adds, the
        same values; :meth:`KernelOperator.apply_grouped`). Not checked here: the caller
        states it.

        With ``store_every=k`` (depth checkpointing, a memory budget) only the states
        at the depth levels 0, k, 2k, ..., N are kept (``traj.levels``) and no tape: the
        costate solve recomputes each segment's states and tape from its checkpoint
        (one extra forward solve in all), with results identical to the stored ones.

        Raises:
            NonFiniteError: on every rank, naming the first layer whose output is not
                finite (e.g. ReLU growing exponentially). An explicit scheme tests the
                final state only (one summation and one collective per solve): a NaN or
                an Inf never leaves the state again (``f + tau g`` is not finite if f is
                not), so the final state is finite iff every layer's is; the first bad
                layer is then looked up in the stored states (or recomputed, when
                checkpointed). An implicit scheme tests every layer (its solver needs
                finite data).
        """
        F = f_I if is_batch(f_I, self.space) else self.inputs(f_I)
        F = np.asfortranarray(F, dtype=self.dtype)
        controls = self.cast(controls)
        N = self.depth.N
        if store_every is not None:
            return self._forward_checkpointed(F, controls, int(store_every))
        states = np.empty((N + 1, F.shape[1], F.shape[0]), dtype=self.dtype)
        states[0] = F.T
        F = states[0].T  # each layer writes into the trajectory: the tape's X are views of it
        stages = [] if tape else None
        each = self._scheme.implicit
        for k in range(N):
            layer = [] if tape else None
            with np.errstate(over="ignore", invalid="ignore"):  # checked below
                F = self.step(k, F, controls, tape=layer, out=states[k + 1].T, groups=groups if k == 0 else 1)
            if tape:
                stages.append(layer)
            if each:
                self._check_layer(k, F)
        if not each and not all_finite(self.layout.world, F):
            local = next((k for k in range(N) if not finite(states[k + 1])), N)
            self._check_layer(self.layout.world.allreduce(local, op=MPI.MIN), None)
        return Trajectory(self, controls, states, stages)

    def _check_layer(self, k, F):
        """Raise if F (the output of layer k) is not finite on some rank (collective); with
        ``F=None`` layer k is known to be the first bad one."""
        if F is None or not all_finite(self.layout.world, F):
            raise NonFiniteError(
                f"the state is not finite after layer {k} (depth t={self.depth.points[k + 1]:g}); "
                f"activation {self.sigma.name} may grow exponentially: reduce T, the controls or the data",
                layer=k,
            )

    def _forward_checkpointed(self, F, controls, every):
        N = self.depth.N
        if every < 1:
            raise InputError(f"store_every (depth checkpointing) must be >= 1, got {every}")
        levels = sorted(set(range(0, N + 1, every)) | {N})
        store = np.empty((len(levels), F.shape[1], F.shape[0]), dtype=self.dtype)
        work = np.empty((2, F.shape[1], F.shape[0]), dtype=self.dtype)
        store[0] = F.T
        F = store[0].T
        each = self._scheme.implicit
        for k in range(N):
            with np.errstate(over="ignore", invalid="ignore"):
                F = self.step(k, F, controls, out=work[k % 2].T)
            if each:
                self._check_layer(k, F)
            if k + 1 in levels:
                store[levels.index(k + 1)] = F.T
        if not each and not all_finite(self.layout.world, F):  # find the first bad layer: the solve again, tested
            F = store[0].T
            for k in range(N):
                with np.errstate(over="ignore", invalid="ignore"):
                    F = self.step(k, F, controls, out=work[k % 2].T)
                self._check_layer(k, F)
        traj = Trajectory(self, controls, store, None)
        traj.levels = levels
        return traj

    def _segment(self, traj, s0, s1):
        """States and tape of layers s0..s1-1 recomputed from the checkpoint at level s0."""
        c = traj.controls
        states = np.empty((s1 - s0 + 1,) + traj.states.shape[1:], dtype=self.dtype)
        states[0] = traj.states[traj.levels.index(s0)]
        F = states[0].T
        tapes = []
        for k in range(s0, s1):
            layer = []
            F = self.step(k, F, c, tape=layer, out=states[k - s0 + 1].T)
            tapes.append(layer)
        return tapes

    # ------------------------------------------------------------------ derivatives
    def zero_controls(self) -> Controls:
        sp, N = self.space, self.depth.N
        return Controls(np.zeros((N, sp.n_local)), self.kernel.zeros(N))

    def tangent(self, traj: Trajectory, dc: Controls | None, dF0: np.ndarray | None = None) -> Trajectory:
        """Linearised (incremental) forward solve: the derivative of the trajectory in the
        control direction ``dc`` (and input direction ``dF0``), about ``traj`` (which must
        carry a tape). ``result.tape`` holds the stages' increments."""
        _need_tape(traj)
        c, N = traj.controls, self.depth.N
        dc = self.cast(dc)
        S, nl = traj.states.shape[1], traj.states.shape[2]
        dF = np.zeros((nl, S), order="F", dtype=self.dtype) if dF0 is None else np.asfortranarray(dF0, dtype=self.dtype)
        states = np.empty_like(traj.states)
        states[0] = dF.T
        dtape = []
        for k in range(N):
            dF, dst = self._scheme.tangent(k, traj.tape[k], dF, c, dc)
            states[k + 1] = dF.T
            dtape.append(dst)
        return Trajectory(self, dc, states, dtape)

    def costate(self, traj: Trajectory, dual_T: np.ndarray, keep: bool = True, initial: bool = False):
        """Costate (discrete adjoint) solve backward in depth from ``dual_T = dPhi/df(T)``
        (a dual vector: ``M r(T)``), the exact transpose of the forward scheme.

        Returns the costate and ``dPhi/dm`` for the layer controls (dual, Euclidean
        coefficients; sums over this rank's samples). With ``keep=False`` only the
        current layer's costate is held (a gradient needs no more) and None is returned
        in place of the costate. With ``initial`` a third value: ``dPhi/df(0)``, the dual
        at depth 0 (what a slab before this one receives, :mod:`fem_dnn.network.slabs`);
        ``initial="groups"`` (without ``keep``): that dual exact in its sums over the
        channel groups of the forward's ``groups`` only, which is all that the transpose
        of a transfer that copied them reads.
        """
        each = self._scheme.implicit  # explicit: the last costate formed is tested (as the forward's final state)
        # without keep or initial the costate at depth 0 is not formed: the first layer's
        # step adds its control part only (Scheme.adjoint_step), and the tested values
        # are the costate after the first layer and that layer's bias gradient
        skip = not keep and not initial
        first = False if skip else ("groups" if initial == "groups" and not keep else True)  # the first layer's dual
        costate, grad, dual, bad = self._costate(traj, dual_T, keep, each, first)
        ok = finite(dual) and (not skip or finite(grad.a[0]))
        if not each and not self.layout.world.allreduce(ok, op=MPI.LAND):
            if costate is not None and costate.levels is None:
                bad = next((k for k in reversed(range(self.depth.N)) if not finite(costate.dual[k])), -1)
            else:  # nothing kept to look in: the solve again, every layer tested
                bad = self._costate(traj, dual_T, False, True, first)[3]
        self._check_costate(bad)
        return (costate, grad, dual) if initial else (costate, grad)

    def reduce(self, c: Controls):
        """Sum the parts of a kernel shared by the node ranks (:meth:`Kernel.reduce`)."""
        self.kernel.reduce(c.b)

    def _costate(self, traj, dual_T, keep, each, first=True):
        """The costate solve; with ``each`` it records the first layer (going backward)
        whose costate is not finite on this rank (-1: none). Returns the costate (None
        without ``keep``), the gradient, the dual at depth 0 and that layer. ``first``:
        the first layer's step's ``dual`` (:meth:`Scheme.adjoint_step`; False: the dual
        returned is the one after the first layer)."""
        c, N = traj.controls, self.depth.N
        grad = self.zero_controls()
        dual = np.asfortranarray(dual_T, dtype=self.dtype)
        duals = zs = None
        bad = -1
        if keep:
            duals = np.empty((len(traj.levels) if traj.levels is not None else N + 1,) + traj.states.shape[1:], dtype=self.dtype)
            duals[-1] = dual.T
        if traj.levels is not None:  # depth checkpointing: recompute segment by segment
            for i in reversed(range(len(traj.levels) - 1)):
                s0, s1 = traj.levels[i], traj.levels[i + 1]
                tapes = self._segment(traj, s0, s1)
                for k in reversed(range(s0, s1)):
                    with np.errstate(over="ignore", invalid="ignore"):
                        new, _ = self._scheme.adjoint_step(k, tapes[k - s0], dual, c, grad, keep=False,
                                                           dual=first if k == 0 else True)
                    dual, bad = self._tested(k, new, dual, grad, each, bad)
                if keep:
                    duals[i] = dual.T
            return (Costate(self, duals, None, traj.levels) if keep else None), grad, dual, bad
        _need_tape(traj)
        if keep:
            zs = [None] * N
        for k in reversed(range(N)):
            with np.errstate(over="ignore", invalid="ignore"):
                new, z = self._scheme.adjoint_step(k, traj.tape[k], dual, c, grad, keep=keep, dual=first if k == 0 else True)
            dual, bad = self._tested(k, new, dual, grad, each, bad)
            if keep:
                duals[k], zs[k] = dual.T, z
        return (Costate(self, duals, zs) if keep else None), grad, dual, bad

    @staticmethod
    def _tested(k, new, dual, grad, each, bad):
        """After the costate step of layer k: the costate to go on with (``new``; the one
        after the layer when the step formed none) and, with ``each``, the first layer whose
        costate (or, when none was formed, bias gradient) is not finite."""
        if new is None:
            if each and bad < 0 and not finite(grad.a[k]):
                bad = k
            return dual, bad
        if each and bad < 0 and not finite(new):
            bad = k
        return new, bad

    def _check_costate(self, bad):
        bad = self.layout.world.allreduce(bad, op=MPI.MAX)
        if bad >= 0:
            raise NonFiniteError(
                f"the costate is not finite at the start of layer {bad} (depth t={self.depth.points[bad]:g}), "
                "going backward from t=T", layer=bad)

    def costate_incremental(
        self, traj: Trajectory, costate: "Costate", tangent: Trajectory, d_dual_T: np.ndarray, gauss_newton: bool = False
    ) -> tuple[np.ndarray, Controls]:
        """Second-order (incremental) costate solve for the direction of ``tangent``.

        ``d_dual_T`` is the terminal incremental costate (the loss Hessian part). Returns
        the incremental costate at depth 0 and the control part of the Hessian action
        (dual). ``gauss_newton=True`` drops the second derivatives of the scheme.
        """
        c, N = traj.controls, self.depth.N
        hess = self.zero_controls()
        d_dual = np.asfortranarray(d_dual_T, dtype=self.dtype)
        scheme = self._scheme
        for k in reversed(range(N)):
            if gauss_newton:  # the scheme's second derivatives dropped: the first-order step of the increment
                d_dual, _ = scheme.adjoint_step(k, traj.tape[k], d_dual, c, hess, keep=False)
            else:
                d_dual = scheme.second_order_adjoint_step(
                    k, traj.tape[k], d_dual, c, hess, tangent.tape[k], costate.z[k], tangent.controls)
        return d_dual, hess

    def destroy(self):
        """Destroy the network's PETSc objects (collective)."""
        self._scheme.destroy()


@dataclass
class Costate:
    """Discrete costate: ``dual[k]`` (``(S, n_local)`` per depth level) is the dual
    vector ``M r(t_k)``; :meth:`r` gives the costate function's node values.
    ``z[k]`` holds the stages' ``Q^T M^{-1} kappa`` for second-order solves."""

    network: "Network"
    dual: np.ndarray
    z: list | None
    levels: list | None = None  # depth checkpointing: dual is kept at these levels only

    def r(self, k: int | None = None) -> np.ndarray:
        """Node values of the costate r = M^{-1} dual: ``(N+1, S, n_local)`` or at level k."""
        sp = self.network.space
        if k is not None:
            return sp.solve_mass(np.asfortranarray(self.dual[k].T)).T
        return np.stack([self.r(j) for j in range(self.dual.shape[0])])


def is_batch(f_I, space: NodeSpace) -> bool:
    """Whether ``f_I`` is already a batch on ``space`` (a Fortran ``(n_local, S)`` array,
    what :func:`batch_inputs` makes) rather than data to bring there."""
    return isinstance(f_I, np.ndarray) and f_I.ndim == 2 and f_I.flags.f_contiguous and f_I.shape[0] == space.n_local


def batch_inputs(space: NodeSpace, layout: Layout, dtype, f_I, split: bool = True) -> np.ndarray:
    """Initial data on ``space`` as a Fortran ``(n_local, S_local)`` batch of ``dtype``.

    With ``split=False`` every sample group keeps all samples.

    ``f_I``: callable ``f_I(y)`` returning (p,) or (S, p), or an array ``(S, n)``
    (or ``(n,)``) in natural node order; with sample groups each group keeps its
    share of the S samples.
    """
    sp = space
    if callable(f_I):
        F = sp.interpolate(f_I)
    else:
        arr = np.asarray(f_I, dtype=float)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != sp.n:
            raise InputError(
                f"input data has shape {np.shape(f_I)}; expected (S, {sp.n}) for a node space of {sp.n} dofs"
            )
        F = sp.from_natural(arr, axis=1).T
    F = np.asfortranarray(F if F.ndim == 2 else F[:, None])
    if split:
        s0, s1 = layout.sample_range(F.shape[1])
        F = np.asfortranarray(F[:, s0:s1])
    _check_finite(layout.world, "input data f_I", F)
    if F.dtype != dtype:
        with np.errstate(over="ignore"):
            F = np.asfortranarray(F, dtype=dtype)
        if not all_finite(layout.world, F):
            raise InputError(f"input data f_I exceeds the {dtype} range (|value| > "
                             f"{np.finfo(dtype).max:.3g}); use dtype = 'float64'")
    return F


def _need_tape(traj):
    if traj.tape is None:
        raise InputError("this trajectory has no tape: run Network.forward(..., tape=True)")


def _layer(arr, k, N, name):
    if arr.shape[0] != N:
        raise InputError(f"{name} has {arr.shape[0]} layers; the depth mesh has N={N}")
    return arr[k]


def _check_finite(comm, what, arr):
    if not all_finite(comm, arr):
        raise InputError(f"{what} contains NaN or Inf")
