"""The HJB value function of a reduced network on a box of state space (docs/model.md §6.3-6.5).

:class:`HJBSolver` solves ``d/dt F + H(v, D_v F) = 0``, ``F(., T) = Phi`` for a
:class:`~fem_dnn.hjb.model.ReducedModel` backward in depth on P1 finite elements with lumped
mass on a DOLFINx mesh of a box ``[v-, v+]^n`` (interval, triangles/quadrilaterals,
tetrahedra/hexahedra). It builds the grid, the lumped L2 projection ``G = M^-1 C F`` of
grad F and the speeds, and marches one of the monotone schemes of
:mod:`fem_dnn.hjb.schemes` (:data:`~fem_dnn.hjb.schemes.HJB_SCHEMES`): the
Lax-Friedrichs P1 scheme with graph viscosity under a CFL condition (docs/model.md §6.3,
any Hamiltonian of the model) or the semi-Lagrangian scheme with no CFL limit
(docs/model.md §6.8, no running cost). No boundary condition is imposed: the box must hold
the reachable set (docs/model.md §6.4, :func:`~fem_dnn.hjb.model.box_around`). The stored
depth levels give the value, its projected gradient and the optimal feedback at any
state (docs/model.md §6.5).

Parallel: the state-space mesh is partitioned by DOLFINx; the operators are distributed
PETSc matrices, ghosts are updated by DOLFINx scatters. Results agree with the serial
ones to round-off (compare with :meth:`HJBSolver.natural`, in coordinate order).
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx.fem.petsc
import dolfinx.geometry
import ufl
from dolfinx import fem, mesh as dmesh

from fem_dnn._mpi import all_finite
from fem_dnn.core import forms
from fem_dnn.core.meshes import lexicographic_order, locate_points
from fem_dnn.errors import InputError, NonFiniteError
from fem_dnn.hjb.model import ReducedModel
from fem_dnn.hjb.schemes import HJB_SCHEMES, HJBScheme, graph_viscosity

__all__ = ["HJBSolver"]

_SHAPES = {1: "interval", 2: "rectangle", 3: "box"}


class HJBSolver:
    """The value function F(v, t) on a box of state space, by a monotone scheme of
    :data:`~fem_dnn.hjb.schemes.HJB_SCHEMES`, backward in depth from ``F(., T) = Phi``.

    Args:
        model: the reduced network (dynamics, box of controls, running cost).
        terminal: ``Phi``, a callable of v with shape (n, P) returning (P,).
        lower, upper: the state box ``[v-, v+]`` (arrays of length n; see
            :func:`~fem_dnn.hjb.model.box_around` and docs/model.md §6.4).
        cells: cells per direction (int or n ints).
        T: final depth.
        comm: communicator of the state-space mesh.
        cfl: fraction (0, 1] of the monotonicity limit of the Lax-Friedrichs depth step.
        min_steps: at least this many stored depth levels after t = 0 (e.g. the network's
            N, or a multiple of it): ``steps = max(own, min_steps)`` with ``own`` the
            scheme's own step count. Lax-Friedrichs marches ``steps`` steps; the
            semi-Lagrangian scheme always marches its own count and computes the levels
            in between (see Attributes and docs/model.md §6.8).
        cell: ``"simplex"`` (interval/triangle/tetrahedron) or ``"tensor"``
            (quadrilateral/hexahedron, n >= 2).
        hamiltonian: ``"auto"`` (UFL closed form when there is one, else numpy),
            ``"ufl"`` or ``"numpy"`` (the Lax-Friedrichs scheme's H).
        keep_levels: keep F at every depth step (needed by the feedback).
        scheme: a name of :data:`~fem_dnn.hjb.schemes.HJB_SCHEMES`:
            ``"lax_friedrichs"`` (:class:`~fem_dnn.hjb.schemes.LaxFriedrichs`, the
            monotone P1 scheme with graph viscosity, the default) or
            ``"semi_lagrangian"`` (:class:`~fem_dnn.hjb.schemes.SemiLagrangian`, the
            Falcone-Ferretti scheme, no CFL limit, no running cost).
        courant: semi-Lagrangian only: the depth step as ``dt = courant h / speed``
            (how many cells the characteristics cross a step; > 0).

    Attributes:
        steps, dt: the stored depth levels: ``steps + 1`` levels at ``t_k = k dt``,
            ``dt = T / steps``, ``steps = max(own, min_steps)`` (:attr:`levels`,
            :meth:`level_of`, the feedback and the closed loop's default layers).
        march_steps, march_dt: the steps the scheme takes, ``march_dt = T / march_steps``.
            Lax-Friedrichs: ``march_steps = steps`` (more steps than its own are smaller
            CFL steps under the same viscosity; measured on the bias problems, its max
            error over the levels grows by 1-11% at 8x its own count, docs/model.md §6.3).
            Semi-Lagrangian: ``march_steps = own = ceil(T speed / (courant h))`` whatever
            ``min_steps``: every step re-interpolates (Q1) and smears a kink, so more,
            smaller steps would raise the error (measured 2-6x at 2-8x the own count on
            kinked values; docs/model.md §6.8).
        substeps: semi-Lagrangian with ``steps > march_steps``: each march step is split
            into ``substeps = min(ceil(steps / march_steps), MAX_SUBSTEPS)`` equal parts;
            the level at each interior point is one fractional semi-Lagrangian step of
            ``i march_dt / substeps`` (i = 1 .. substeps - 1) from the march level above
            (not chained), and a stored level between two such points is their linear
            interpolation in depth (a convex combination: monotone, exact where the
            points coincide, e.g. for ``min_steps`` a multiple of the own count up to
            ``MAX_SUBSTEPS`` times). 1 otherwise (every stored level is a march level).
        dt_max: the monotonicity limit of the Lax-Friedrichs step (``cfl = 1``; computed
            for either scheme).
        h: the largest cell size; speed: the largest speed lambda over the box;
            speeds: ``(n, n_owned)`` the speeds ``lambda_ik = max_A |sigma(u_k)|`` at the
            owned vertices.
        scheme: the scheme's name; hamiltonian: the ``hamiltonian`` option; stepper: the scheme (an
            :class:`~fem_dnn.hjb.schemes.HJBScheme`) that makes the march steps.
        C: the projected gradient matrices ``M^-1 C_k`` (``G_k = C[k] F``); G: the
            functions G_k of the last :meth:`project_gradient`; m: the owned lumped
            mass.
        levels: ``(steps + 1, n_owned)`` owned values of F at ``t_k = k dt`` after
            :meth:`solve`.
        MAX_SUBSTEPS: (class attribute, 4) the most parts of a semi-Lagrangian march step,
            i.e. at most 3 fractional-step matrices besides the march step's. Measured
            (docs/model.md §6.8): 8 parts give the same max errors as 4 on the test
            problems at 2.5 times the matrices' memory in 2-D.
    """

    MAX_SUBSTEPS = 4

    def __init__(
        self,
        model: ReducedModel,
        terminal,
        lower,
        upper,
        cells,
        T: float = 1.0,
        comm: MPI.Comm = MPI.COMM_WORLD,
        cfl: float = 0.9,
        min_steps: int = 1,
        cell: str = "simplex",
        hamiltonian: str = "auto",
        keep_levels: bool = True,
        scheme: str = "lax_friedrichs",
        courant: float = 2.0,
    ):
        n = model.n
        if scheme not in HJB_SCHEMES:
            raise InputError(f"unknown HJB scheme {scheme!r}; choose one of {list(HJB_SCHEMES)}")
        scheme_class: type[HJBScheme] = HJB_SCHEMES[scheme]
        self.model, self.cfl, self.courant = model, cfl, courant
        scheme_class.check(self)
        if n not in _SHAPES:
            raise InputError(f"the HJB solver works on state spaces of dimension 1 to 3, not {n}")
        if not (0.0 < cfl <= 1.0):
            raise InputError(f"cfl must lie in (0, 1], got {cfl!r}")
        if not (np.isfinite(T) and T > 0):
            raise InputError(f"final depth T must be positive, got {T!r}")
        lower = np.broadcast_to(np.asarray(lower, dtype=float), (n,)).copy()
        upper = np.broadcast_to(np.asarray(upper, dtype=float), (n,)).copy()
        if np.any(upper <= lower):
            raise InputError(f"state box needs lower < upper, got {lower}, {upper}")
        nn = [int(cells)] * n if np.isscalar(cells) else [int(c) for c in cells]
        if len(nn) != n or min(nn) < 1:
            raise InputError(f"cells must be {n} positive integers, got {cells!r}")
        if cell not in ("simplex", "tensor"):
            raise InputError(f"cell must be 'simplex' or 'tensor', not {cell!r}")
        if hamiltonian not in ("auto", "ufl", "numpy"):
            raise InputError(f"hamiltonian must be 'auto', 'ufl' or 'numpy', not {hamiltonian!r}")
        self.Phi, self.T, self.comm = terminal, float(T), comm
        self.lower, self.upper, self.cells = lower, upper, nn
        if n == 1:
            msh = dmesh.create_interval(comm, nn[0], [lower[0], upper[0]])
        elif n == 2:
            ct = dmesh.CellType.triangle if cell == "simplex" else dmesh.CellType.quadrilateral
            msh = dmesh.create_rectangle(comm, [list(lower), list(upper)], nn, ct)
        else:
            ct = dmesh.CellType.tetrahedron if cell == "simplex" else dmesh.CellType.hexahedron
            msh = dmesh.create_box(comm, [list(lower), list(upper)], nn, ct)
        self.mesh = msh
        self.V = V = fem.functionspace(msh, ("Lagrange", 1))
        imap = V.dofmap.index_map
        self.n_owned = nl = imap.size_local
        self.x = V.tabulate_dof_coordinates()[:, :n].T.copy()  # (n, owned + ghosts)
        self.h = float(np.max((upper - lower) / np.array(nn)))

        # ---- operators, assembled once from the UFL forms
        u, vt = ufl.TrialFunction(V), ufl.TestFunction(V)
        m = dolfinx.fem.petsc.assemble_vector(fem.form(forms.lumped_mass(vt)))
        m.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        self.m = m.array[:nl].copy()
        minv = m.duplicate()
        minv.array[:] = 1.0 / m.array_r
        m.destroy()
        C = []
        for k in range(n):
            e_k = ufl.as_vector([1.0 if j == k else 0.0 for j in range(msh.geometry.dim)])
            A = dolfinx.fem.petsc.assemble_matrix(fem.form(ufl.inner(ufl.grad(u), e_k) * vt * ufl.dx))
            A.assemble()
            C.append(A)
        self.speeds = lam_k = model.speeds(self.x[:, :nl])  # (n, owned)
        rate = graph_viscosity(C, lam_k)[3] / self.m  # the Lax-Friedrichs CFL limit
        rmax = comm.allreduce(float(rate.max()) if nl else 0.0, op=MPI.MAX)
        self.dt_max = 1.0 / rmax if rmax > 0 else np.inf
        for A in C:
            A.diagonalScale(L=minv)  # M^-1 C_k: the lumped projection of d/dv_k
        minv.destroy()
        self.C = C
        self.speed = comm.allreduce(float(lam_k.max()) if nl else 0.0, op=MPI.MAX)
        self.F = fem.Function(V, name="F")
        self.G = [fem.Function(V, name=f"G{k}") for k in range(n)]

        # ---- the depth steps and the scheme
        self.scheme, self.hamiltonian = scheme, hamiltonian
        own = scheme_class.own_steps(self)
        self.steps = max(own, int(min_steps))
        self.dt = self.T / self.steps
        self.march_steps = self.steps if scheme_class.marches_levels else own
        self.march_dt = self.T / self.march_steps
        self.substeps = 1
        if self.steps > self.march_steps:
            self.substeps = min(-(-self.steps // self.march_steps), self.MAX_SUBSTEPS)
        self.stepper: HJBScheme = scheme_class(self)
        self._fractional = None  # the fractional steps, built by the first solve that keeps levels
        self.keep_levels = keep_levels
        self.levels = None  # (steps + 1, n_owned): F at t_k = k dt
        self._tree = None
        self._grad_level = None

    @property
    def D(self):
        """The Lax-Friedrichs scheme's graph viscosity ``M^-1 (d_ij)`` (its ``stepper.D``)."""
        return self.stepper.D

    # ---- the march
    def project_gradient(self, Fvec):
        """``G = M^-1 C F``: the lumped L2 projection of grad F into the functions
        :attr:`G` (owned and ghost values; collective)."""
        for A, g in zip(self.C, self.G):
            A.mult(Fvec, g.x.petsc_vec)
            g.x.scatter_forward()

    def _fractional_steps(self):
        """The fractional steps ``i march_dt / substeps``, i = 1 .. substeps - 1, of a
        scheme that does not march the stored levels (collective; built once)."""
        if self._fractional is None:
            q = self.substeps
            self._fractional = [self.stepper.fractional(i * self.march_dt / q) for i in range(1, q)]
        return self._fractional

    def _store_between(self, j, top, subs, bottom):
        """Store the levels k with ``t_j <= t_k < t_{j+1}`` (march levels j, j + 1) from the
        march step's sub-levels: ``top`` at t_{j+1}, ``subs[i-1]`` at ``t_{j+1} - i
        march_dt / q``, ``bottom`` at t_j; linear in depth between neighbouring ones.
        Integer arithmetic: a level on a sub-level is copied, not interpolated."""
        S, M, q = self.march_steps, self.steps, self.substeps

        def sub(b):  # the sub-level b march_dt / q above t_j
            return bottom if b == 0 else (top if b == q else subs[q - b - 1])

        for k in range(-(-j * M // S), ((j + 1) * M - 1) // S + 1):
            b, r = divmod((k * S - j * M) * q, M)  # t_k = t_j + (b + r / M) march_dt / q
            self.levels[k] = sub(b) if r == 0 else (1.0 - r / M) * sub(b) + (r / M) * sub(b + 1)

    def solve(self, monitor=False):
        """March backward from ``F(T) = Phi`` to t = 0; returns F(., 0) (owned values).

        With ``keep_levels`` F is kept at every stored level t_k = k dt (:attr:`levels`;
        the levels between the march levels of a scheme that does not march them, the
        semi-Lagrangian one, as described under ``substeps`` in the class doc)."""
        nl, dt = self.n_owned, self.march_dt
        S = self.march_steps
        F = self.F
        F.interpolate(lambda x: self.Phi(x[: self.model.n]))
        Fa = F.x.array
        keep = self.keep_levels
        between = keep and self.steps != S  # stored levels between the march levels
        if keep:
            self.levels = np.empty((self.steps + 1, nl))
            self.levels[self.steps] = Fa[:nl]
        subs = self._fractional_steps() if between else []
        Fvec = F.x.petsc_vec
        for j in range(S - 1, -1, -1):
            if between:
                top = Fa[:nl].copy()
                fractions = [op.step(Fvec) for op in subs]
            Fa[:nl] = self.stepper.step(Fvec)
            F.x.scatter_forward()
            if between:
                self._store_between(j, top, fractions, Fa[:nl])
            elif keep:
                self.levels[j] = Fa[:nl]
            if monitor and self.comm.rank == 0 and j % max(S // 10, 1) == 0:
                print(f"hjb step t = {j * dt:.4f}", flush=True)
        if not all_finite(self.comm, Fa[:nl]):
            raise NonFiniteError("the HJB value function is not finite", 0)
        self._grad_level = None
        return Fa[:nl].copy()

    # ---- evaluation
    def level_of(self, t: float) -> int:
        """Index of the stored depth level nearest t."""
        if not (-1e-12 <= t <= self.T + 1e-12):
            raise InputError(f"depth t={t} is outside [0, {self.T}]")
        return int(min(max(round(t / self.dt), 0), self.steps))

    def _set_level(self, k):
        if self.levels is None:
            raise InputError("solve() with keep_levels=True first")
        self.F.x.array[: self.n_owned] = self.levels[k]
        self.F.x.scatter_forward()

    def function(self, k: int) -> fem.Function:
        """F_h at depth level k as a DOLFINx function (e.g. for XDMF output). It is the
        solver's own work function: the next evaluation overwrites it."""
        self._set_level(k)
        self._grad_level = None
        return self.F

    def _locate(self, pts):
        """Owned cell of each point on the rank that evaluates it (lowest rank owning a
        cell that contains it), -1 elsewhere. Collective."""
        msh = self.mesh
        tdim = msh.topology.dim
        if self._tree is None:
            self._tree = dolfinx.geometry.bb_tree(msh, tdim, padding=1e-10)
        found, bad = locate_points(msh, self._tree, pts)
        if bad is not None:
            raise InputError(
                f"state {pts[bad, : self.model.n]} is outside the HJB box [{self.lower}, {self.upper}]; enlarge the box"
            )
        return found

    def _eval(self, fns, v):
        pts = np.zeros((1, 3))
        pts[0, : self.model.n] = np.asarray(v, dtype=float).reshape(self.model.n)
        cells = self._locate(pts)
        out = np.zeros(len(fns))
        if cells[0] >= 0:
            for i, fn in enumerate(fns):
                out[i] = fn.eval(pts, cells).ravel()[0]
        self.comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
        return out

    def value(self, v, t: float = 0.0) -> float:
        """F_h(v, t) at any state in the box (collective; level nearest t)."""
        self._set_level(self.level_of(t))
        self._grad_level = None
        return float(self._eval([self.F], v)[0])

    def gradient(self, v, t: float = 0.0) -> np.ndarray:
        """``p = G_h(v, t)``: the lumped L2 projection of D_v F, the gradient the scheme
        uses, evaluated at v (collective)."""
        k = self.level_of(t)
        if self._grad_level != k:
            self._set_level(k)
            self.project_gradient(self.F.x.petsc_vec)
            self._grad_level = k
        return self._eval(self.G, v)

    def feedback(self, v, t: float):
        """The optimal feedback ``c*(v, t) = argmin_A {G_h(v,t) . sigma(a - B_b v) + L}``:
        returns (a (n,), b (n, n), p (n,))."""
        p = self.gradient(v, t)
        a, b = self.model.controls(np.asarray(v, dtype=float)[:, None], p[:, None])
        return a[:, 0], b[:, :, 0], p

    def natural(self, k: int = 0, gradient: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(coordinates (n, V), values)`` of depth level k on every rank, sorted by
        coordinate (x first): the same arrays on any number of ranks. Values are F_h
        (V,) or, with ``gradient=True``, the projected gradient G_h (n, V)."""
        if self.levels is None:
            raise InputError("solve() with keep_levels=True first")
        if gradient:
            self._set_level(k)
            self.project_gradient(self.F.x.petsc_vec)
            self._grad_level = k
            vals = np.array([g.x.array[: self.n_owned] for g in self.G]).T
        else:
            vals = self.levels[k]
        x = np.concatenate(self.comm.allgather(self.x[:, : self.n_owned].T), axis=0).T
        f = np.concatenate(self.comm.allgather(vals), axis=0)
        order = lexicographic_order(x)
        return x[:, order], (f[order].T if gradient else f[order])

    def errors(self, exact, t: float = 0.0, inner=None) -> dict:
        """Max and lumped-L1/L2 errors of F_h(., t) against a callable ``exact(v)``
        ((n, P) -> (P,)) on the vertices inside the box ``inner = (lo, hi)``."""
        k = self.level_of(t)
        nl = self.n_owned
        x = self.x[:, :nl]
        e = np.abs(self.levels[k] - exact(x))
        sel = np.ones(nl, dtype=bool)
        if inner is not None:
            lo, hi = (np.asarray(z, dtype=float).reshape(-1, 1) for z in inner)
            sel = np.all((x >= lo - 1e-12) & (x <= hi + 1e-12), axis=0)
        emax = self.comm.allreduce(float(e[sel].max()) if sel.any() else 0.0, op=MPI.MAX)
        l1 = self.comm.allreduce(float(np.sum(self.m[sel] * e[sel])))
        l2 = np.sqrt(self.comm.allreduce(float(np.sum(self.m[sel] * e[sel] ** 2))))
        return {"max": emax, "l1": l1, "l2": l2}

    def destroy(self):
        """Destroy the PETSc objects (collective)."""
        for A in self.C:
            A.destroy()
        for op in (self.stepper, *(self._fractional or ())):
            op.destroy()
