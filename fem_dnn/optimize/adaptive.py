"""The adaptive loop: train, estimate, mark, refine, transfer, retrain.

Every cycle trains the learning problem on the current (depth, node) discretisation
(TAO, from the controls transferred from the previous cycle), estimates the error of the
trained cost by each chosen estimator (:class:`fem_dnn.learning.dwr.Estimator`): per layer
(:class:`~fem_dnn.learning.dwr.DepthEstimator`) and per node cell
(:class:`~fem_dnn.learning.dwr.WidthEstimator`), marks layers and cells
together by Dörfler's rule over *all* indicators (so depth and width are balanced by
their indicators: the larger contributions are refined, wherever they are), splits the
marked layers and refines the marked cells (``dolfinx.mesh.refine``), and moves the
controls onto the new discretisation
(:func:`fem_dnn.learning.transfer.transfer_controls`). It stops when the estimate is
below the tolerance, after the maximum number of cycles, before a discretisation with
more controls than allowed, or when the estimate is not reliable: it changed sign or
did not decrease in size from the previous cycle's. See docs/model.md §4.11-4.12.
:func:`adaptive_cycles` bounds the cycles' discretisations and costs before the loop runs
(``fem-dnn train --dry-run``).
"""

from dataclasses import dataclass, field

import numpy as np

from fem_dnn.errors import InputError

__all__ = ["Cycle", "GOALS", "adapt", "adaptive_cycles", "estimators", "goal_functional"]

#: the goal functionals the estimators support: the trained cost J, or the mean loss on
#: held-out validation data (the discretisation's ``J_val``: the application's run with
#: ``data.validation_fraction > 0``), estimated with its own dual problem
GOALS = ("cost", "validation")
REFINE = ("depth", "width")

#: children of a node cell with every edge bisected (``dolfinx.mesh.refine``, Plaza: a
#: triangle splits into at most 4, a tetrahedron into at most 8, with conforming closure)
REFINED_CHILDREN = {"interval": 2, "triangle": 4, "tetrahedron": 8}
#: Gauss-Newton Hessian products the width estimator's CG takes at most (the default of
#: :func:`adapt`'s ``newton_its``)
NEWTON_ITS = 100


def adaptive_cycles(ad: dict, N: int, n: int, cells: int, cell: str, family: str, degree: int, max_it: int,
                    controls) -> tuple[list, str]:
    """Upper bounds of an adaptive run's discretisations, one dict a cycle, and a note on
    what they assume (``fem-dnn train --dry-run`` with ``adapt.cycles > 0``).

    The worst case marks every layer and every cell each cycle: splitting every layer
    doubles N (``refine_depth``), refining every node cell multiplies the cells by
    :data:`REFINED_CHILDREN` (DG0: the neurons too). Dörfler's rule marks at most all of
    them, so cycle k has at most ``N 2^k`` layers and ``cells c^k`` cells, and at most
    ``adapt.max_controls`` controls (the loop stops before a larger discretisation).
    There is no time model: the costs are relative, in gradients of the first cycle's
    size, a gradient's cost taken proportional to the controls (to leading order for the
    dense kernel the width refinement needs: N n^2 S of both). ``training``: at most
    ``training.max_it`` iterations (line-search evaluations not counted); ``estimation``:
    the depth indicators about two gradients (costate and half steps), the width
    indicators about ``2 + 2 newton_its`` (a Gauss-Newton product about two gradients) on
    the uniformly refined node mesh, at most ``c^2`` times the controls (they are at most
    quadratic in the neurons). The goal ``"validation"`` solves its dual problem too
    (:func:`fem_dnn.learning.dwr.goal_dual`: the Newton step and the dual solve, about
    ``4 + 4 newton_its`` gradients), on the refined node mesh and, for the depth, on
    every layer split (twice the controls).

    Args:
        ad: the config's ``[adapt]`` (``cycles``, ``max_controls``, ``refine``: ``"depth"``,
            ``"width"`` or ``"both"``; ``goal``, default ``"cost"``; ``newton_its``,
            default :data:`NEWTON_ITS`).
        N, n, cells, cell, family, degree: the first discretisation.
        max_it: ``training.max_it``.
        controls: ``controls(N, n, cells)`` the control vector's size.
    """
    refine = ("depth", "width") if ad["refine"] == "both" else (ad["refine"],)
    notes = []
    c = REFINED_CHILDREN.get(cell)
    dg0 = (family, degree) == ("DG", 0)
    width = "width" in refine and c is not None and dg0
    if "width" in refine and not width:
        notes.append(f"no width refinement: it needs DG0 simplices, not {family}{degree} {cell}s (the run refuses it)")
    grow = (["N x 2 (every layer split)"] if "depth" in refine else []) + (
        [f"cells x {c} (every {cell} refined)"] if width else [])
    notes.insert(0, "every layer and cell marked: " + ", ".join(grow) + " a cycle")
    goal, its = ad.get("goal", "cost") != "cost", int(ad.get("newton_its", NEWTON_ITS))
    solves = 2 * its if goal else its  # the goal's Newton step and dual solve
    notes.append("costs relative, in gradients of cycle 0 (no time model; a gradient's cost taken proportional to "
                 f"the controls); training: <= training.max_it = {max_it} iterations; estimate: the indicators "
                 f"(width: <= {solves} Gauss-Newton products on the refined node mesh"
                 + (f"; depth: <= {solves} on every layer split, for the goal's dual problem"
                    if goal and "depth" in refine else "") + ")")
    cap = int(ad["max_controls"])
    first = controls(N, n, cells)
    out, N_k, cells_k = [], N, cells
    for k in range(int(ad["cycles"])):
        n_k = cells_k if width else n
        worst = controls(N_k, n_k, cells_k)
        bound = min(worst, cap) if k else worst  # the first is the config's (refused above the cap)
        gradient = bound / first
        estimation = 0.0
        if "depth" in refine:
            estimation += 2 * gradient
            if goal:  # the dual problem on every layer split
                estimation += (4 + 2 * solves) * min(controls(2 * N_k, n_k, cells_k), 2 * bound) / first
        if width:
            # the uniformly refined problem: at most c^2 times the controls (they are at most quadratic in n)
            refined = min(controls(N_k, cells_k * c, cells_k * c), c * c * bound)
            estimation += (2 + 2 * solves + (2 if goal else 0)) * refined / first
        out.append({"cycle": k, "layers": N_k, "cells": cells_k, "neurons": n_k, "controls": bound, "worst_case": worst,
                    "capped": worst > cap, "gradient": gradient, "training": gradient * max_it,
                    "estimation": estimation})
        if "depth" in refine:
            N_k *= 2
        if width:
            cells_k *= c
    return out, "; ".join(notes)


@dataclass
class Cycle:
    """One cycle of :func:`adapt`: the functional of its discretisation, the training's
    :class:`~fem_dnn.optimize.tao.Result` (the trained controls ``m``, ``iterations``,
    ``history``), the trained cost, the indicators of every estimator by its name and
    which of them were marked (``depth``/``width`` and ``marked_layers``/``marked_cells``:
    those of the depth and width estimators, empty when not refined)."""

    index: int
    J: object  # the reduced functional of this discretisation
    result: object  # its training's Result
    value: float
    controls: int
    indicators: dict  # estimator name -> its indicators (depth: per layer; width: per node cell, natural order)
    marked: dict = field(default_factory=dict)  # estimator name -> the indices of its marked indicators
    stop: str = ""
    #: what ``problem`` returned for this discretisation: the functional itself, or the
    #: caller's object that owns it (its ``J``; e.g. the application's run, with its test
    #: data); the cycle's ``node_space`` and ``depth_mesh`` are its functional's
    discretisation: object = None

    @property
    def node_space(self):
        """The node space of this cycle's discretisation."""
        return self.J.network.space

    @property
    def depth_mesh(self):
        """The depth mesh of this cycle's discretisation."""
        return self.J.network.depth

    @property
    def m(self):
        """The trained controls (PETSc Vec)."""
        return self.result.m

    @property
    def iterations(self) -> int:
        return self.result.iterations

    @property
    def history(self) -> list:
        """The training's rows (one per iteration)."""
        return self.result.history

    @property
    def depth(self) -> np.ndarray:
        return self.indicators.get("depth", np.zeros(0))

    @property
    def width(self) -> np.ndarray:
        return self.indicators.get("width", np.zeros(0))

    @property
    def marked_layers(self) -> np.ndarray:
        return self.marked.get("depth", np.zeros(0, dtype=np.int64))

    @property
    def marked_cells(self) -> np.ndarray:
        return self.marked.get("width", np.zeros(0, dtype=np.int64))

    @property
    def estimate(self) -> float:
        """The estimated error of the goal (the trained cost, or :func:`adapt`'s other
        goal functional), ``sum eta`` over every estimator."""
        return float(sum((eta.sum() for eta in self.indicators.values()), 0.0))


def goal_functional(goal):
    """How to get the goal functional of a discretisation (what ``problem`` made): None
    for the trained cost; ``"validation"``: its ``J_val``; a callable: itself."""
    if callable(goal):
        return goal
    if goal == "cost":
        return None

    def validation(made):
        G = getattr(made, "J_val", None)
        if G is None:
            raise InputError("the goal 'validation' is the loss on held-out validation data: the learning problem holds "
                             "none (data.validation_fraction > 0 gives it)")
        return G

    return validation


def estimators(refine, problem, newton_its: int = NEWTON_ITS, goal=None) -> list:
    """The estimators of ``refine``: its names (:data:`REFINE`: the
    :class:`~fem_dnn.learning.dwr.DepthEstimator`, the
    :class:`~fem_dnn.learning.dwr.WidthEstimator` of ``problem`` with ``newton_its`` CG
    iterations; both of the goal functional ``goal(made)``, None: the cost), in that
    order, then its :class:`~fem_dnn.learning.dwr.Estimator` objects, in its order."""
    from fem_dnn.learning.dwr import DepthEstimator, WidthEstimator

    make = {"depth": lambda: DepthEstimator(problem, goal, newton_its) if goal else DepthEstimator(),
            "width": lambda: WidthEstimator(problem, newton_its, goal)}
    out = [make[name]() for name in REFINE if name in refine] + [e for e in refine if not isinstance(e, str)]
    names = [e.name for e in out]
    if len(set(names)) < len(names):
        raise InputError(f"the estimators' names must differ, got {names}")
    return out


def _size(J) -> int:
    """The number of controls of a learning problem."""
    return int(J.controls.comm.allreduce(J.controls.n_local))


def _unreliable(previous: float, current: float) -> str:
    """Why the estimate ``current`` after ``previous`` is not a reliable estimate of the
    error ("" if it may be). In the asymptotic regime, where the indicators' neglected
    terms are of higher order (docs/model.md §4.11-4.12), the error of the trained cost
    keeps its sign and decreases under refinement, and so does an estimate that tracks it."""
    why = ("the estimate is outside the asymptotic regime in which it estimates the error of the goal "
           "(a different local minimum, a remaining optimisation gap, or unresolved data): stopped, since "
           "|estimate| is no bound of the error and the marking rests on it")
    if previous * current < 0:
        return f"the estimate changed sign ({previous:+.3e} -> {current:+.3e}): {why}"
    if abs(current) >= abs(previous):
        return f"the estimate did not decrease (|{previous:+.3e}| -> |{current:+.3e}|): {why}"
    return ""


def check(goal="cost", tolerance=None, fraction=0.5, cycles=5, max_controls=None, refine=REFINE):
    """Refuse bad adaptive settings (InputError, one line)."""
    if not callable(goal) and goal not in GOALS:
        raise InputError(f"the error estimators support the goal {list(GOALS)}, not {goal!r}")
    if tolerance is not None and not (np.isfinite(tolerance) and tolerance > 0):
        raise InputError(f"the adaptive tolerance must be > 0, got {tolerance!r}")
    if not (np.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise InputError(f"the marking fraction must be in (0, 1], got {fraction!r}")
    if int(cycles) != cycles or cycles < 1:
        raise InputError(f"the number of adaptive cycles must be an integer >= 1, got {cycles!r}")
    if max_controls is not None and (int(max_controls) != max_controls or max_controls < 1):
        raise InputError(f"the maximum number of controls must be an integer >= 1, got {max_controls!r}")
    refine = tuple(refine)
    if not refine or any(r not in REFINE if isinstance(r, str) else not hasattr(r, "indicators") for r in refine):
        raise InputError(f"refine must name some of {list(REFINE)} (or hold Estimators), got {list(refine)!r}")


def adapt(problem, space, depth, goal: str = "cost", tolerance: float | None = None, fraction: float = 0.5,
          cycles: int = 5, max_controls: int | None = None, refine=REFINE, method: str = "lbfgs",
          gttol: float = 1e-8, max_it: int = 2000, newton_its: int = NEWTON_ITS, callback=None, metrics=None,
          **optimizer) -> list[Cycle]:
    """Adaptive training from the discretisation ``(space, depth)``.

    Args:
        problem: ``problem(space, depth)``: the learning problem on any discretisation
            (its data resolved on the node mesh, e.g. by
            :meth:`fem_dnn.core.nodes.NodeSpace.cell_averages`), a ReducedFunctional or
            an object that owns one as ``.J`` (:func:`~fem_dnn.learning.dwr.owned`);
            the cycle trained on it keeps it as ``Cycle.discretisation``, and the
            caller destroys the cycles' discretisations and the node spaces the loop
            refined (``Cycle.node_space``; a discretisation built but not trained is
            destroyed here, with its space). ``problem`` does not own the space it is
            given: the goal's depth estimate builds a problem on the same space.
        space, depth: the first node space and depth mesh.
        goal: the goal functional whose error the estimators estimate and the marking
            follows: ``"cost"``, the trained cost; ``"validation"``, the mean loss on the
            held-out data each discretisation holds as ``J_val`` (docs/model.md §4.15); or
            a callable ``goal(made)`` giving the goal functional (its ``loss_value``) of
            what ``problem`` made, on the same network.
        tolerance: stop when ``|sum eta|`` is below it (None: run the cycles). Whatever
            the tolerance, the loop stops at a cycle whose ``sum eta`` has the other sign
            than the previous cycle's or is not smaller in size (the estimate is then not
            a reliable estimate of the error; the stop says so).
        fraction: Dörfler's marking fraction, in (0, 1].
        cycles: the maximum number of cycles (trainings).
        max_controls: stop before training a discretisation with more controls.
        refine: ``("depth", "width")`` or one of them, or
            :class:`~fem_dnn.learning.dwr.Estimator` objects besides (:func:`estimators`):
            the loop marks over all their indicators together.
        method, gttol, max_it, optimizer: the TAO training (:class:`Optimizer`) of every cycle.
        newton_its: CG iterations of the width estimator's Gauss-Newton step.
        callback: ``callback(cycle)`` after every cycle (the run folder's records).
        metrics: ``metrics(discretisation)`` gives the per-iteration metrics callback of
            the cycle that trains it (:class:`Optimizer`'s ``metrics``: the run folder's
            test and validation curves); None: none.

    Returns:
        The cycles, in order; the last one's ``stop`` says why the loop ended.
    """
    from fem_dnn.learning.dwr import mark, owned
    from fem_dnn.learning.transfer import transfer_controls
    from fem_dnn.optimize.tao import Optimizer

    check(goal, tolerance, fraction, cycles, max_controls, refine)
    of = goal_functional(goal)
    chosen = estimators(refine, problem, newton_its, of)
    out, previous = [], None
    disc, J = owned(problem(space, depth))
    if of is not None:
        try:
            of(disc)
        except InputError:
            disc.destroy()
            raise
    if max_controls is not None and _size(J) > max_controls:
        size = _size(J)
        disc.destroy()
        raise InputError(f"the first discretisation already has {size} controls > the maximum {max_controls} "
                         "(adapt.max_controls): start coarser or allow more")
    for index in range(int(cycles)):
        m0 = J.controls.create_vec() if previous is None else transfer_controls(previous.J.controls, previous.m, J.controls)
        opt = Optimizer(J, method, gttol=gttol, max_it=max_it, monitor=False,
                        metrics=None if metrics is None else metrics(disc), **optimizer)
        res = opt.solve(m0)
        opt.destroy()
        etas = {e.name: e.indicators(disc, res.m) for e in chosen}
        cycle = Cycle(index, J, res, J(res.m), _size(J), etas, discretisation=disc)
        out.append(cycle)
        unreliable = None if previous is None else _unreliable(previous.estimate, cycle.estimate)
        if unreliable:
            cycle.stop = unreliable
            if tolerance is not None and abs(cycle.estimate) <= tolerance:
                cycle.stop += f"; |estimate| {abs(cycle.estimate):.3e} <= tolerance {tolerance:g} does not bound it"
        elif tolerance is not None and abs(cycle.estimate) <= tolerance:
            cycle.stop = f"estimate {cycle.estimate:+.3e}: |estimate| {abs(cycle.estimate):.3e} <= tolerance {tolerance:g}"
        elif index == cycles - 1:
            cycle.stop = f"{cycles} cycles"
        else:
            marked = mark(np.concatenate([etas[e.name] for e in chosen]), fraction)
            new = (J.network.space, J.network.depth)
            start = 0
            for e in chosen:  # each estimator's marked indicators, and its refinement
                end = start + etas[e.name].size
                cycle.marked[e.name] = marked[(marked >= start) & (marked < end)] - start
                if cycle.marked[e.name].size:
                    new = e.refine(*new, cycle.marked[e.name])
                start = end
            disc_next, J_next = owned(problem(*new))
            size = _size(J_next)
            if max_controls is not None and size > max_controls:
                cycle.stop = f"the next discretisation has {size} controls > {max_controls}"
                disc_next.destroy()  # never trained: nobody else holds it, nor its refined node space
                if new[0] is not J.network.space:
                    new[0].destroy()
        if cycle.stop and tolerance is not None and out[0].estimate < 0:
            cycle.stop += (f" (the first cycle's estimate was negative, {out[0].estimate:+.3e}: the estimate is signed, "
                           "the limit's goal minus this discretisation's, and the tolerance is on its "
                           "size; a large negative estimate can be the training's remaining optimisation gap)")
        if callback is not None:
            callback(cycle)
        if cycle.stop:
            return out
        previous, disc, J = cycle, disc_next, J_next
    return out

