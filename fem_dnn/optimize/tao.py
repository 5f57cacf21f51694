"""Training: reduced-space gradient, quasi-Newton and Newton methods on PETSc TAO.

The learning problem ``min_m J(m)`` (:class:`fem_dnn.learning.functional.ReducedFunctional`) is
handed to TAO in the L2-orthonormal coordinates ``x = T m`` of
:class:`~fem_dnn.optimize.coordinates.Coordinates`, in which the Euclidean geometry TAO
uses is the L2 (or H1-in-depth) geometry of the controls: TAO's gradient is
``T^{-T} dJ``, its Hessian ``T^{-T} H T^{-1}``. So every TAO method (steepest descent,
nonlinear CG, L-BFGS, Newton-CG with line search or trust region, and their
bound-constrained versions) is mesh-independent, with nothing method-specific to set up.
``riesz=False`` gives TAO the raw coefficients instead (the negative control of the
mesh-independence study).

Every setting is reachable through the options database with the solver's prefix
(default ``fem_dnn_``): ``-fem_dnn_tao_type nls -fem_dnn_tao_monitor
-fem_dnn_tao_nls_ksp_type stcg ...``.
"""

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from petsc4py import PETSc

from fem_dnn import interrupt
from fem_dnn.errors import DivergenceError, InputError, NonFiniteError
from fem_dnn.learning import ReducedFunctional, ReducedHessian, transfer_controls

from fem_dnn.optimize.callbacks import StateStore, accuracy_columns, state_store
from fem_dnn.optimize.coordinates import Coordinates
from fem_dnn.optimize.methods import BOUNDED, TAO

__all__ = ["RESOLUTION_FACTOR", "Optimizer", "Resolution", "Result", "multilevel", "stop_reason"]

#: TAO's stop reasons in words (``TaoConvergedReason``).
_TAO_REASONS = {
    3: "converged: the gradient norm is below the absolute tolerance (gatol)",
    4: "converged: the gradient norm relative to |J| is below grtol",
    5: "converged: the gradient norm dropped by the factor training.gttol",
    6: "converged: the step is below the step tolerance",
    7: "converged: J is below the minimum fmin",
    8: "stopped on request (a user test or a signal)",
    -2: "stopped: the iteration limit (training.max_it) was reached",
    -4: "failed: J or its gradient is not a number",
    -5: "stopped: the limit of function evaluations was reached",
    -6: "failed: the line search found no decrease of J",
    -7: "failed: the trust region shrank to nothing",
    -8: "failed: a user test",
}
#: TAO's reasons that :meth:`Optimizer.resolution` examines: the line search found no
#: decrease, the trust region shrank to nothing.
_FLOOR_REASONS = (-6, -7)
#: A decrease within this factor of J's measured rounding noise is below J's resolution
#: (:meth:`Optimizer.resolution`).
RESOLUTION_FACTOR = 10.0
#: The Optimizer's own control-sized Vecs (the memory model's count, :mod:`fem_dnn.app.memory`):
#: _x, _m, _g, _tmp, the two gradient Vecs it hands to TAO, and _prev (Newton methods add
#: the Hessian's point, a box _lb and _ub).
OPTIMIZER_VECTORS = 7
#: MSA's stop reasons (:func:`msa`).
_MSA_REASONS = {
    1: "converged: the relative decrease of J is below rtol",
    2: "converged: a PMP point (the Hamiltonian step gives no decrease)",
    -1: "stopped: the iteration limit (training.max_it) was reached",
}


def stop_reason(method: str, reason: int) -> str:
    """Why training stopped, in words, for a method of :data:`~fem_dnn.optimize.methods.TAO`, ``sgd``/``adam``
    or ``msa`` and the reason code of its :class:`Result`."""
    if method in ("sgd", "adam"):
        return "ran its epochs (training.epochs)"
    table = _MSA_REASONS if method == "msa" else _TAO_REASONS
    return table.get(int(reason), f"{'converged' if reason > 0 else 'stopped'} (reason code {reason})")


@contextmanager
def _plain_mdot():
    """Vecs created in this context use PETSc's plain ``VecMDot`` kernel.

    Since PETSc 3.21, ``VecMDot`` (option ``-vec_mdot_use_gemv``, on by default) calls
    BLAS gemv when the Vecs happen to lie at one stride in memory, and ``VecDot`` /
    ``VecMDot_Seq`` otherwise, which round differently. The L-BFGS update
    (``MatUpdate_LMVMSymBrdn``) takes ``s^T s`` and ``y^T s`` with one ``VecMDot`` on the
    LMVM matrix's Xprev and Fprev, two Vecs allocated one after the other: whether malloc
    put them next to each other varies from run to run, so the L-BFGS iterates did too
    (in the last bits, on several ranks). A ``-vec_mdot_use_gemv`` of the user wins."""
    opts, key = PETSc.Options(), "vec_mdot_use_gemv"
    mine = not opts.hasName(key)
    if mine:
        opts[key] = False
    try:
        yield
    finally:
        if mine:
            opts.delValue(key)


@dataclass
class Result:
    """Outcome of a training run.

    ``interrupted`` is the signal (SIGINT, SIGTERM) at which training stopped at a safe
    point (:mod:`fem_dnn.interrupt`), or 0; ``m`` is then the last accepted iterate,
    already in the checkpoint when there is one."""

    m: PETSc.Vec
    iterations: int
    reason: int
    J: float
    gnorm: float
    history: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    interrupted: int = 0
    stop: str = ""  # why training stopped, in words (:func:`stop_reason`)
    resolution: bool = False  # the line search found no decrease because J reached its precision's resolution

    @property
    def converged(self) -> bool:
        """True when the method converged, or stopped at the resolution of the
        network's precision (:meth:`Optimizer.resolution`)."""
        return self.reason > 0 or self.resolution


@dataclass
class Resolution:
    """What :meth:`Optimizer.resolution` measured: whether a decrease of J is beyond
    its rounding noise, the decrease a step along the gradient could make, the noise,
    the gradient norm and the curvature along it (in TAO's coordinates)."""

    reached: bool
    decrease: float
    noise: float
    gnorm: float
    curvature: float


class Optimizer:
    """A TAO solver on a reduced functional.

    Args:
        J: the reduced functional.
        method: a TAO method of :data:`fem_dnn.optimize.methods.TAO` (``gd``, ``cg``,
            ``lbfgs``, ``newton``, ``trust``, ``bnewton``, ``btrust``; with ``bounds`` one
            of ``BOUNDED``); ``-<prefix>tao_type`` overrides it.
        riesz: True: TAO works in L2 (H1 in depth) orthonormal coordinates; False: raw
            coefficients.
        bounds: optional box ``{"a": (lo, hi), "b": (lo, hi)}`` of admissible controls
            (pointwise; W and mu stay free). Needs a bounded method and the L2 depth
            inner product.
        gauss_newton: Newton methods use the Gauss-Newton Hessian.
        gttol: stop when the gradient norm has dropped by this factor.
        gatol: or when it is below this absolute value.
        max_it: iteration limit of the whole run: a resumed run stops at the same total
            iteration as the uninterrupted one would.
        monitor: print one line per iteration on rank 0 (or a callable(dict)).
        petsc_options_prefix: options prefix of the TAO solver.
        checkpoint: a :class:`~fem_dnn.optimize.callbacks.StateStore` (the application's:
            :class:`fem_dnn.app.checkpoint.CheckpointFile`): every ``checkpoint_every``
            iterations, after a divergence and at the end the controls, the iteration, the
            history and the initial gradient norm go to its ``save``;
            ``solve(m0, resume=True)`` continues from its ``load``. TAO's internal state (the
            L-BFGS memory) is not restorable: a resumed run rebuilds it, and stops at the
            same absolute gradient norm as the uninterrupted run would.
        metrics: optional callable ``(m, iteration) -> dict``: more columns of an
            iteration's row (e.g. the test loss and accuracy), after the row's own J,
            gradient norm, step, train accuracy and solve counts. A ``"stop"`` entry (a
            reason in words) stops training at that iterate (early stopping: TAO's
            reason 8, the Result's ``stop`` those words).
    """

    def __init__(
        self,
        J: ReducedFunctional,
        method: str = "lbfgs",
        riesz: bool = True,
        bounds: dict | None = None,
        gauss_newton: bool = False,
        gttol: float = 1e-6,
        gatol: float = 0.0,
        max_it: int = 500,
        monitor=True,
        petsc_options_prefix: str = "fem_dnn_",
        checkpoint: StateStore | None = None,
        checkpoint_every: int = 1,
        metrics=None,
    ):
        if method not in TAO:
            raise InputError(f"unknown training method {method!r}; choose one of {list(TAO)}")
        if bounds and method not in BOUNDED:
            raise InputError(f"method {method!r} does not take bounds; use one of {list(BOUNDED)}")
        self.J, self.method, self.gauss_newton = J, method, gauss_newton
        self.coords = Coordinates(J.controls, riesz)
        if bounds and riesz and not self.coords.diagonal_depth:
            raise InputError("a box of controls needs the L2 depth inner product (gamma = 0 or inner_product='l2')")
        self.comm = J.controls.comm
        self.world = J.network.layout.world
        self.monitor, self.metrics = monitor, metrics
        self.history = []
        self.checkpoint = state_store(checkpoint)
        self.checkpoint_every = max(int(checkpoint_every), 1)
        self._offset, self._g0, self._gttol = 0, None, gttol
        self._failure = None  # (NonFiniteError, iteration) of the first non-finite trial point
        self._interrupted = 0  # the signal that stopped training at an accepted iterate
        self._error = None  # an exception of the monitor, raised again by solve()
        self._requested = None  # the reason in words a metrics callback gave to stop (early stopping)
        cs = J.controls
        self._x = cs.create_vec()
        self._m = cs.create_vec()
        self._g = cs.create_vec()
        self._tmp = cs.create_vec()
        self._prev = None
        tao = PETSc.TAO().create(self.comm)
        tao.setOptionsPrefix(petsc_options_prefix)
        tao_type, extra = TAO[method]
        tao.setType(tao_type)
        opts = PETSc.Options()
        if tao_type == "bqnls":
            # PETSc gives the L-BFGS matrix the fixed prefix "tao_lmvm_": put it under ours.
            # Its default J0 is a per-coordinate (diagonal) rescaling, which is not
            # mesh-independent; in L2 coordinates the scalar (Barzilai-Borwein) one is.
            tao.getLMVMMat().setOptionsPrefix(petsc_options_prefix + "tao_bqnls_")
            extra = {"tao_bqnls_mat_lmvm_scale_type": "scalar", **extra}
        # the method's defaults go into the options database only for this solver's
        # setFromOptions (user options win), then out again: a default left there would
        # change every later solver with the same prefix
        inserted = [petsc_options_prefix + key for key in extra if not opts.hasName(petsc_options_prefix + key)]
        for key, val in extra.items():
            if petsc_options_prefix + key in inserted:
                opts[petsc_options_prefix + key] = val
        tao.setObjective(self._objective)
        tao.setGradient(self._gradient, self._g.duplicate())
        tao.setObjectiveGradient(self._objective_gradient, self._g.duplicate())
        #: the Hessian in coordinates, ``T^{-T} H T^{-1}`` at the point TAO's Hessian callback gives
        self._hess = ReducedHessian(J, None, gauss_newton, self.coords)
        self._H = self._hess.create_mat()
        tao.setHessian(self._hessian, self._H)
        tao.setTolerances(gatol=gatol, grtol=0.0, gttol=gttol)
        tao.setMaximumIterations(max_it)
        tao.setMonitor(self._monitor)
        if bounds:
            lb, ub = cs.create_vec(), cs.create_vec()
            lb.set(PETSc.NINFINITY), ub.set(PETSc.INFINITY)
            for (_, la, lbb), (_, ua, ubb) in zip(cs.layer_blocks(cs.blocks(lb))[0], cs.layer_blocks(cs.blocks(ub))[0]):
                for key, lo_v, hi_v in (("a", la, ua), ("b", lbb, ubb)):
                    if key in bounds:
                        lo, hi = bounds[key]
                        if not lo < hi:
                            raise InputError(f"bounds on {key} must satisfy lo < hi, got {bounds[key]}")
                        lo_v[:], hi_v[:] = lo, hi
            # the map is a positive diagonal scaling for the L2 depth product: boxes stay boxes
            self._lb = self._scale_bounds(lb)
            self._ub = self._scale_bounds(ub)
            tao.setVariableBounds(self._lb, self._ub)
            lb.destroy(), ub.destroy()
        if tao_type in ("nls", "ntr", "bnls", "bntr"):
            ksp = tao.getKSP()
            if ksp is not None:
                ksp.setType("stcg" if tao_type in ("ntr", "bntr") else "cg")
                ksp.getPC().setType("none")  # the coordinates are the L2 preconditioner
                # a singular Hessian (lambda = 0) must not run CG forever: cap the inner
                # iterations (-<prefix>tao_<type>_ksp_max_it overrides)
                ksp.setTolerances(max_it=100)
        tao.setFromOptions()
        self._max_it = tao.getMaximumIterations()  # (a -<prefix>tao_max_it of the user wins)
        for key in inserted:
            opts.delValue(key)
        self.tao = tao

    def _scale_bounds(self, v):
        """The box in coordinates (a positive diagonal scaling; infinite entries kept)."""
        out = v.duplicate()
        vals = v.array_r.copy()
        inf = np.abs(vals) >= 1e300
        v.array[inf] = 0.0
        self.coords.to_coordinates(v, out)
        out.array[inf] = vals[inf]
        return out

    # ---- TAO callbacks (in coordinates x)
    def _point(self, x):
        return self.coords.from_coordinates(x, self._m)

    def _nonfinite(self, err, g=None):
        """A trial point whose state, costate or gradient is not finite: J = +inf for
        TAO. Its line search may reject the point and go on; if TAO stops there instead,
        :meth:`solve` reports the error (the first since the last accepted iterate)."""
        if self._failure is None:  # a trial point for the iteration after the last accepted one
            self._failure = (err, self.history[-1]["iteration"] + 1 if self.history else self._offset)
        if g is not None:
            g.set(0.0)
        return float("inf")

    def _objective(self, tao, x):
        try:
            return self.J(self._point(x))
        except NonFiniteError as err:
            return self._nonfinite(err)

    def _gradient(self, tao, x, g):
        try:
            self.coords.dual_to_coordinates(self.J.derivative(self._point(x), self._tmp), g)
        except NonFiniteError as err:
            self._nonfinite(err, g)

    def _objective_gradient(self, tao, x, g):
        m = self._point(x)
        try:
            f = self.J(m)
            self.coords.dual_to_coordinates(self.J.derivative(m, self._tmp), g)
        except NonFiniteError as err:
            return self._nonfinite(err, g)
        return f

    def _hessian(self, tao, x, H, P):
        self._hess.at(self.coords.from_coordinates(x, self._hess.m))

    def _monitor(self, tao):
        """TAO's monitor: records the accepted iterate (:meth:`_record`). An exception
        there (a checkpoint that cannot be written, an error in a ``metrics`` callback)
        stops TAO and is raised again by :meth:`solve`, outside PETSc's C stack, so it
        reaches the caller as it was raised."""
        try:
            self._record(tao)
        except Exception as err:  # noqa: BLE001  (re-raised by solve)
            self._error = err
            tao.setConvergedReason(PETSc.TAO.ConvergedReason.DIVERGED_USER)

    def _record(self, tao):
        its, f, gnorm, _, _, reason = tao.getSolutionStatus()
        x = tao.getSolution()
        step = 0.0
        if self._prev is not None:
            self._tmp.waxpy(-1.0, self._prev, x)
            step = self._tmp.norm()
        else:
            self._prev = x.duplicate()
        x.copy(self._prev)
        its += self._offset
        if self._g0 is None:
            self._g0 = gnorm
        self._failure = None  # a non-finite trial point before this iterate was rejected: TAO went on
        row = {"iteration": its, "J": f, "gnorm": gnorm, "step": step, **self.J.counts}
        m = self._point(x)
        if self.J.kind == "classes":
            row["train_accuracy"] = self.J.accuracy(m)
        if self.metrics is not None:
            row.update(self.metrics(m, its))
            request = row.pop("stop", None)  # the callback asks to stop at this iterate (early stopping)
            if request:
                self._requested = str(request)
                tao.setConvergedReason(PETSc.TAO.ConvergedReason.CONVERGED_USER)
        self.history.append(row)
        if self.checkpoint is not None and its % self.checkpoint_every == 0:
            self._save(self._point(x), its)
        if callable(self.monitor):
            self.monitor(row)
        elif self.monitor and self.world.rank == 0:
            print(f"it {its:4d}  J {f:.10e}  |g| {gnorm:.3e}  step {step:.3e}{accuracy_columns(row)}  "
                  f"solves fwd {row['forward']} adj {row['costate']} inc {row['incremental_forward']}", flush=True)
        if its >= self._max_it:  # the whole run's limit (a resumed run may start at it)
            tao.setConvergedReason(PETSc.TAO.ConvergedReason.DIVERGED_MAXITS)
        # a safe point: the iterate is accepted (and in the history); solve() writes it
        # to the checkpoint and reports the signal
        self._interrupted = interrupt.requested(self.world)
        if self._interrupted:
            tao.setConvergedReason(PETSc.TAO.ConvergedReason.CONVERGED_USER)

    def _diverged(self, err, its):
        """Stop training after a non-finite trial point: the last accepted iterate goes
        to the checkpoint (when there is one), and a DivergenceError names the layer and
        the iteration on every rank."""
        if not self.history:
            raise NonFiniteError(f"at the initial controls: {err}", err.layer) from err
        good = self.history[-1]["iteration"]
        where = ""
        if self.checkpoint is not None:
            m = self.coords.from_coordinates(self._prev, self.J.controls.create_vec())
            self._save(m, good)
            m.destroy()
            where = f"; the last good controls (iteration {good}) are in {self.checkpoint.path}"
        raise DivergenceError(
            f"training diverged at iteration {its} ({self.method}): {err}{where}. Resume with a smaller step "
            f"(-{self.tao.getOptionsPrefix()}tao_ls_stepmax 0.1, a larger lambda) or another method "
            "(training.method = 'gd')", err.layer, its, None if self.checkpoint is None else self.checkpoint.path) from err

    def _save(self, m, iteration):
        """The controls m of ``iteration`` and the run's state to the checkpoint store."""
        state = {"method": self.method, "iteration": iteration, "g0": self._g0, "history": self.history}
        self.checkpoint.save(m, state)

    # ---- public
    def solve(self, m0: PETSc.Vec, resume: bool = False) -> Result:
        """Train from m0 (not modified); returns the result with the trained controls.

        With ``resume=True`` and a checkpoint store that holds a state, continue from it
        instead (m0 is then ignored)."""
        loaded = None
        if resume and self.checkpoint is not None:
            loaded = self.checkpoint.load()
        if loaded is not None:
            m0, state, _ = loaded
            if not state.get("initial"):  # (the initial controls of a run: start afresh from them)
                self._offset, self._g0 = int(state["iteration"]), float(state["g0"])
                self.history = list(state["history"])[:-1]  # its last row is recomputed now
                # stop where the uninterrupted run would: the same absolute gradient norm,
                # and the same total iteration (max_it counts the whole run, not this part)
                gatol = max(self.tao.getTolerances()[0], self._gttol * self._g0)
                self.tao.setTolerances(gatol=gatol, gttol=0.0)
                # (TAO takes no limit of 0: a run resumed at its limit stops in the monitor)
                self.tao.setMaximumIterations(max(self._max_it - self._offset, 1))
        x = self.coords.to_coordinates(m0, self._x)
        if loaded is not None:
            m0.destroy()
        self.tao.setSolution(x)
        with _plain_mdot():  # TAO and its L-BFGS matrix create their work vectors here
            self.tao.setUp()
        self._failure, self._interrupted, self._error, self._requested = None, 0, None, None
        try:
            self.tao.solve(x)
        except PETSc.Error:  # TAO refuses an infinite J at the first point (error 83)
            if self._failure is None:
                raise
            self._diverged(*self._failure)
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        its, f, gnorm, _, _, reason = self.tao.getSolutionStatus()
        its += self._offset
        if self._failure is not None:  # TAO stopped at a non-finite trial point
            self._diverged(*self._failure)
        m = self.coords.from_coordinates(x, self.J.controls.create_vec())
        if self.checkpoint is not None:  # the final controls, whatever checkpoint_every is
            self._save(m, its)
        stop = self._requested or stop_reason(self.method, reason)
        floor = None
        if reason in _FLOOR_REASONS:  # no decrease found: is there one to find, above J's rounding?
            floor = self.resolution(x)
            if floor.reached:
                dtype = np.dtype(self.J.network.dtype).name
                stop = (f"converged: J reached {dtype}'s resolution (|g|/|g0| = {gnorm / self._g0:.2e}; a step along "
                        f"the gradient would change J by {floor.decrease:.1e}, within its {dtype} noise "
                        f"{floor.noise:.1e})" + ("; use network.dtype = 'float64' for a tighter training.gttol"
                                                 if dtype == "float32" else "; training.gttol is below what J resolves"))
        if self.world.rank == 0 and self.monitor is True and not self._interrupted:
            c = self.J.counts
            print(f"{self.method} ({self.tao.getType()}): {its} iterations; {stop} (TAO reason {reason}); J {f:.10e}, "
                  f"|g| {gnorm:.3e}; solves fwd {c['forward']} adj {c['costate']} "
                  f"inc {c['incremental_forward']}/{c['incremental_costate']}", flush=True)
        return Result(m, its, reason, f, gnorm, list(self.history), dict(self.J.counts), self._interrupted, stop,
                      floor is not None and floor.reached)

    def resolution(self, x: PETSc.Vec, points: int = 4) -> "Resolution":
        """Can J still resolve a decrease at x (in coordinates)? Compares the decrease
        a step along the gradient can make with the rounding noise of J there.

        Along ``x - s e``, ``e = g/|g|``, J is ``J(x) - |g| s + c s^2/2 + noise(s)``
        with ``c = e^T H e`` (one Hessian action). The best step ``s* = |g|/c`` decreases
        J by ``|g|^2/(2c)``. The noise is measured: J at ``x - s e`` for ``s = s* i/points``,
        ``i = -points..points``, the largest residual of the least-squares quadratic
        through them (the smooth part of J is a quadratic to O(s*^3) there, so what is
        left is rounding). The line search compares differences of two noisy values
        (twice the noise), at up to ~30 trial points where the 2 points + 1 samples here
        see only part of the noise's range, and its sufficient-decrease test asks for a
        fraction of the model's decrease: a decrease within a factor 10 of the measured
        noise cannot be told from it, and J has reached the resolution of the network's
        precision. A larger decrease (or negative curvature, ``c <= 0``) is there to be
        found: a line search that misses it has failed. Costs ``2 points + 1`` forward
        solves, one gradient and one Hessian action."""
        g = self._g.duplicate()
        self._gradient(self.tao, x, g)
        gnorm = g.norm()
        if not (np.isfinite(gnorm) and gnorm > 0):
            g.destroy()
            return Resolution(gnorm == 0, 0.0, 0.0, gnorm, 0.0)
        g.scale(1.0 / gnorm)
        self._hess.at(self.coords.from_coordinates(x, self._hess.m))
        Hg = g.duplicate()
        self._hess.apply(g, Hg)
        c = g.dot(Hg)
        Hg.destroy()
        if not c > 0:
            g.destroy()
            return Resolution(False, np.inf, 0.0, gnorm, c)
        step = gnorm / c
        s = step * np.arange(-points, points + 1) / points
        y = x.duplicate()
        vals = []
        for si in s:
            x.copy(y)
            y.axpy(-si, g)
            vals.append(self._objective(self.tao, y))
        y.destroy(), g.destroy()
        self._failure = None  # (a non-finite probe is reported below, not as a divergence)
        vals = np.array(vals)
        if not np.all(np.isfinite(vals)):
            return Resolution(False, 0.5 * gnorm * step, np.inf, gnorm, c)
        fit = np.polynomial.Polynomial.fit(s, vals, 2)
        noise = float(np.abs(vals - fit(s)).max())
        decrease = 0.5 * gnorm * step
        return Resolution(decrease <= RESOLUTION_FACTOR * noise, decrease, noise, gnorm, c)

    def destroy(self):
        for obj in (self.tao, self._H, self._x, self._m, self._g, self._tmp, self._prev, getattr(self, "_lb", None), getattr(self, "_ub", None)):
            if obj is not None:
                obj.destroy()
        if self._hess.m is not None:
            self._hess.m.destroy()


def multilevel(levels: list, method: str = "lbfgs", m0: PETSc.Vec | None = None, gttol: float = 1e-6, monitor=True, **kw) -> list:
    """Grid sequencing: train on ``levels[0]`` (the coarsest (depth, node)
    discretisation), transfer the controls to the next level by interpolation in the
    node and depth spaces (:func:`fem_dnn.learning.transfer.transfer_controls`), continue training
    there, and so on. The stopping tolerance is the absolute gradient norm
    ``gttol * |g_0|`` of the coarsest level on every level (the L2 norms are comparable
    across levels). Returns one :class:`Result` per level."""
    results, m = [], m0
    gatol = None
    for i, J in enumerate(levels):
        if m is None:
            m = J.controls.create_vec()
        elif i > 0:
            m = transfer_controls(levels[i - 1].controls, m, J.controls)
        if gatol is None:
            x = Coordinates(J.controls, kw.get("riesz", True)).dual_to_coordinates(J.derivative(m))
            gatol = gttol * x.norm()
            x.destroy()
        opt = Optimizer(J, method, gttol=0.0, gatol=gatol, monitor=monitor, **kw)
        res = opt.solve(m)
        opt.destroy()
        results.append(res)
        m = res.m
    return results
