"""The depth schemes of the HJB solver: one backward step ``F^{k+1} -> F^k`` each (docs/model.md §6.3, §6.8).

Every scheme is a class behind the interface :class:`HJBScheme` and one entry of
:data:`HJB_SCHEMES` (its name is the ``scheme`` of :class:`~fem_dnn.hjb.solver.HJBSolver`):

- :class:`LaxFriedrichs` (``"lax_friedrichs"``): the explicit P1 scheme, the Hamiltonian at
  the vertices with the lumped L2 projection G of grad F plus a Lax-Friedrichs graph
  viscosity; monotone under a CFL condition, first order at best (docs/model.md §6.3);
  every Hamiltonian of :class:`~fem_dnn.hjb.model.ReducedModel` (running cost included).
- :class:`SemiLagrangian` (``"semi_lagrangian"``): the Falcone-Ferretti scheme, one Euler
  step of the characteristics and the exact minimum of the Q1 interpolant over the
  arrival box; monotone with no CFL limit, no running cost (docs/model.md §6.8).
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

import ufl
from dolfinx import fem

from fem_dnn.errors import InputError

__all__ = ["HJB_SCHEMES", "HJBScheme", "LaxFriedrichs", "SemiLagrangian", "graph_viscosity"]


class HJBScheme:
    """The interface of a depth scheme of :class:`~fem_dnn.hjb.solver.HJBSolver`.

    The solver builds the state-space mesh, the lumped mass ``m``, the projected gradient
    matrices ``C`` (``M^-1 C_k``), the speeds and the step counts, then the scheme
    ``cls(solver)``; :meth:`~fem_dnn.hjb.solver.HJBSolver.solve` calls :meth:`step` once a
    march step, from ``t = T`` down to 0. A new scheme is one subclass and one entry of
    :data:`HJB_SCHEMES`.

    Class attributes:
        name: the solver's ``scheme`` that selects it.
        marches_levels: True when the scheme marches every stored level
            (``march_steps = steps = max(own, min_steps)``); False when it marches its own
            count whatever ``min_steps`` and the solver fills the stored levels between
            its march levels by :meth:`fractional` steps (``substeps``).
    """

    name = ""
    marches_levels = True

    @classmethod
    def check(cls, solver) -> None:
        """Raise :class:`~fem_dnn.errors.InputError` when the scheme does not take the
        solver's model or options (called before anything is built; the solver has its
        ``model``, ``cfl`` and ``courant``)."""

    @classmethod
    def own_steps(cls, solver) -> int:
        """The scheme's own number of depth steps over ``[0, T]`` on the solver's grid."""
        raise NotImplementedError

    def __init__(self, solver, dt: float | None = None):
        self.solver = solver
        self.dt = solver.march_dt if dt is None else float(dt)

    def step(self, Fvec) -> np.ndarray:
        """One backward step of length :attr:`dt`: the owned values of F^k from the
        vector (owned and ghost values up to date) of F^{k+1}."""
        raise NotImplementedError

    def fractional(self, dt: float) -> "HJBScheme":
        """The same step with a shorter depth step dt (schemes with ``marches_levels``
        False; collective)."""
        raise NotImplementedError(f"the {self.name} scheme marches every stored level")

    def destroy(self):
        """Destroy the PETSc objects (collective)."""


def graph_viscosity(C, speeds):
    """The Lax-Friedrichs graph viscosity of the owned rows of the matrices ``C`` (one
    sparsity pattern): ``(indptr, cols, d, total)`` with, in CSR, ``d_ij = sum_k
    speeds_ik |C^k_ij|`` (j != i) and ``d_ii = -sum_{j != i} d_ij``, and ``total_i =
    sum_j sum_k speeds_ik |C^k_ij|`` (diagonal included: the rate of the CFL limit,
    docs/model.md §6.3)."""
    r0, r1 = C[0].getOwnershipRange()
    nl = r1 - r0
    indptr, cols, _ = C[0].getValuesCSR()
    absc = np.zeros(len(cols))
    rows = np.repeat(np.arange(nl), np.diff(indptr))
    is_diag = cols == rows + r0
    for k, A in enumerate(C):
        ip, cc, vals = A.getValuesCSR()
        if not (np.array_equal(ip, indptr) and np.array_equal(cc, cols)):
            raise RuntimeError("gradient matrices have different sparsity patterns")
        absc += speeds[k][rows] * np.abs(vals)
    diag_c = np.bincount(rows[is_diag], weights=absc[is_diag], minlength=nl)
    d = np.where(is_diag, 0.0, absc)
    dsum = np.bincount(rows, weights=d, minlength=nl)
    d[is_diag] = -dsum[rows[is_diag]]
    return indptr, cols, d, dsum + diag_c


class LaxFriedrichs(HJBScheme):
    """The monotone P1 scheme with graph viscosity (docs/model.md §6.3): with ``s = T - t``,

        F_i <- F_i + dt [ H(x_i, G_i) + 1/m_i sum_{j != i} d_ij (F_j - F_i) ],
        G_i = 1/m_i sum_j c_ij F_j,   c_ij = int phi_i grad phi_j dx,

    the Hamiltonian at the vertices with the lumped L2 projection G of grad F
    (:meth:`~fem_dnn.hjb.solver.HJBSolver.project_gradient`) plus the Lax-Friedrichs
    (Guermond-Popov) graph viscosity ``d_ij = sum_k lambda_ik |c_ij^k|`` of
    :func:`graph_viscosity`, ``lambda_ik = max_A |sigma(u_k)|`` at x_i (the solver's
    ``speeds``). Monotone, consistent and stable under ``dt <= cfl dt_max``; boundary
    vertices take the same update (docs/model.md §6.4). H is the UFL closed form of
    :meth:`~fem_dnn.hjb.model.ReducedModel.hamiltonian_ufl`, interpolated at the vertices
    with a compiled :class:`dolfinx.fem.Expression`, or numpy on the owned vertices (the
    solver's ``hamiltonian``: ``"auto"``, ``"ufl"`` or ``"numpy"``).

    Attributes:
        D: ``M^-1 (d_ij)``, the viscosity applied to F (PETSc matrix).
        dt: the depth step (the solver's ``march_dt``).
    """

    name = "lax_friedrichs"
    marches_levels = True

    @classmethod
    def own_steps(cls, solver) -> int:
        """``ceil(T / (cfl dt_max))``: the CFL condition."""
        return int(np.ceil(solver.T / (solver.cfl * solver.dt_max))) if np.isfinite(solver.dt_max) else 1

    def __init__(self, solver, dt: float | None = None):
        super().__init__(solver, dt)
        sv = solver
        indptr, cols, d, _ = graph_viscosity(sv.C, sv.speeds)
        nl, N = sv.n_owned, sv.V.dofmap.index_map.size_global
        self.D = PETSc.Mat().createAIJ(((nl, N), (nl, N)), csr=(indptr.astype(PETSc.IntType),
                                                                cols.astype(PETSc.IntType), d), comm=sv.comm)
        self.D.assemble()
        self._DF = self.D.createVecLeft()
        self._H = fem.Function(sv.V, name="H")
        self._expr = None
        if sv.hamiltonian in ("auto", "ufl"):
            Hu = sv.model.hamiltonian_ufl(ufl.SpatialCoordinate(sv.mesh), ufl.as_vector(list(sv.G)))
            if Hu is None and sv.hamiltonian == "ufl":
                raise InputError("this Hamiltonian has no closed form in UFL; use hamiltonian='numpy'")
            if Hu is not None:
                self._expr = fem.Expression(Hu, sv.V.element.interpolation_points)

    def _hamiltonian(self):
        """H(x_i, G_i) at the owned vertices (G projected)."""
        sv, nl = self.solver, self.solver.n_owned
        if self._expr is not None:
            self._H.interpolate(self._expr)
            return self._H.x.array[:nl]
        p = np.array([g.x.array[:nl] for g in sv.G])
        return sv.model.hamiltonian(sv.x[:, :nl], p)

    def step(self, Fvec) -> np.ndarray:
        self.solver.project_gradient(Fvec)
        H = self._hamiltonian()
        self.D.mult(Fvec, self._DF)
        return Fvec.array_r + self.dt * (H + self._DF.array_r)

    def destroy(self):
        self.D.destroy()
        self._DF.destroy()


class SemiLagrangian(HJBScheme):
    """The semi-Lagrangian (Falcone-Ferretti) step of :class:`~fem_dnn.hjb.solver.HJBSolver`,
    without running cost (docs/model.md §6.8):

        F^k(x_i) = min_{c in A} I[F^{k+1}](x_i + dt sigma(a - B_b x_i)),

    one explicit Euler step of the characteristics from each vertex, ``I`` the
    multilinear (Q1) interpolant on the box's grid of vertices (the DOLFINx P1 dofs of
    either cell type), points beyond the box moved onto it. The arrival points of the
    control box form an axis-aligned box, so the minimum is taken exactly on the finite
    set of its corners and the grid lines crossing it (no control sampling); monotone,
    commutes with constants, no CFL limit (docs/model.md §6.8). The solver's march step
    is ``dt = T / march_steps`` (at most ``courant h / speed``); its fractional steps
    (``substeps``, :meth:`fractional`) are the same operator with a shorter dt.

    The arrival points do not move between steps, so the interpolation is one sparse
    PETSc matrix :attr:`I` (rows: each owned vertex's ``per_vertex`` candidate points;
    columns: global dofs, any rank's), assembled once; a step is one MatMult and a
    segmented minimum.

    Args:
        solver: the :class:`~fem_dnn.hjb.solver.HJBSolver` (its mesh, model and box).
        dt: the depth step of this operator (default the solver's ``march_dt``).
        grid: the global dof of every grid vertex (default: computed, collective; the
            fractional steps share the march step's).
    """

    name = "semi_lagrangian"
    marches_levels = False

    @classmethod
    def check(cls, solver) -> None:
        courant = solver.courant
        if not (np.isfinite(courant) and courant > 0):
            raise InputError(f"courant (the semi-Lagrangian depth step in cells) must be > 0, got {courant!r}")
        if solver.model.lam != 0.0:
            raise InputError("the semi-Lagrangian scheme takes no running cost (lam = 0); use scheme='lax_friedrichs'")

    @classmethod
    def own_steps(cls, solver) -> int:
        """``ceil(T speed / (courant h))``: no monotonicity limit, the step is a number of cells."""
        return int(np.ceil(solver.T * solver.speed / (solver.courant * solver.h))) if solver.speed > 0 else 1

    def __init__(self, solver, dt: float | None = None, grid: np.ndarray | None = None):
        super().__init__(solver, dt)
        sv, dt = solver, self.dt
        n, nl, comm = sv.model.n, sv.n_owned, sv.comm
        lower, cells = sv.lower, np.asarray(sv.cells)
        hd = (sv.upper - lower) / cells
        imap = sv.V.dofmap.index_map
        self.grid = grid = self._grid(sv, hd) if grid is None else grid
        # the arrival box of each owned vertex and its candidate coordinates per direction
        x = sv.x[:, :nl]
        umin, umax = sv.model.u_range(x)
        s = sv.model.sigma.sigma
        lo = np.clip(x + dt * s(umin), lower[:, None], sv.upper[:, None])
        hi = np.clip(x + dt * s(umax), lower[:, None], sv.upper[:, None])
        axes = []
        for d in range(n):
            g_lo, g_hi = (lo[d] - lower[d]) / hd[d], (hi[d] - lower[d]) / hd[d]
            first = np.floor(g_lo).astype(np.int64) + 1  # grid lines strictly inside (g_lo, g_hi)
            inside = np.maximum(np.ceil(g_hi).astype(np.int64) - first, 0)
            K = int(comm.allreduce(int(inside.max()) if nl else 0, op=MPI.MAX)) + 2
            c = np.empty((nl, K))
            c[:, 0], c[:, -1] = lo[d], hi[d]
            for j in range(K - 2):  # padding repeats hi: duplicates do not change a minimum
                c[:, j + 1] = np.where(j < inside, lower[d] + (first + j) * hd[d], hi[d])
            axes.append(c)
        K = [a.shape[1] for a in axes]
        self.per_vertex = int(np.prod(K))
        # every combination of the directions' candidates: (n, nl * prod K) arrival points
        mesh = np.meshgrid(*[np.arange(k) for k in K], indexing="ij")
        pts = np.stack([axes[d][:, mesh[d].ravel()] for d in range(n)]).reshape(n, -1)
        cols, vals = self._weights(pts, lower, hd, cells, grid)
        R = pts.shape[1]
        N = imap.size_global
        indptr = np.arange(0, len(cols) + 1, 2**n, dtype=PETSc.IntType)  # 2^n non-zeros a row
        self.I = PETSc.Mat().createAIJ(((R, PETSc.DETERMINE), (nl, N)), csr=(indptr, cols.astype(PETSc.IntType), vals),
                                       comm=comm)
        self.I.assemble()
        self._Y = self.I.createVecLeft()

    @staticmethod
    def _grid(sv, hd):
        """The global dof of every grid vertex (the P1 dofs are the vertices of the box
        mesh), lexicographic in the grid's indices (collective)."""
        nl, comm, cells = sv.n_owned, sv.comm, np.asarray(sv.cells)
        imap = sv.V.dofmap.index_map
        owned = np.arange(imap.local_range[0], imap.local_range[1])
        ijk = np.rint((sv.x[:, :nl] - sv.lower[:, None]) / hd[:, None]).astype(np.int64)
        flat = np.ravel_multi_index(tuple(ijk), tuple(cells + 1))
        grid = np.full(int(np.prod(cells + 1)), -1, dtype=np.int64)
        for f_r, g_r in zip(comm.allgather(flat), comm.allgather(owned)):
            grid[f_r] = g_r
        if np.any(grid < 0):
            raise RuntimeError("the state mesh's vertices are not the box's grid")
        return grid

    @staticmethod
    def _weights(pts, lower, hd, cells, grid):
        """Q1 weights of points on the grid: 2^n (global dof, weight) per point, point by point."""
        n, P = pts.shape
        g = (pts - lower[:, None]) / hd[:, None]
        i0 = np.clip(np.floor(g).astype(np.int64), 0, cells[:, None] - 1)
        t = np.clip(g - i0, 0.0, 1.0)
        corners = np.array(np.meshgrid(*[[0, 1]] * n, indexing="ij")).reshape(n, -1)  # (n, 2^n)
        idx = i0[:, :, None] + corners[:, None, :]  # (n, P, 2^n)
        w = np.prod(np.where(corners[:, None, :] == 1, t[:, :, None], 1.0 - t[:, :, None]), axis=0)  # (P, 2^n)
        flat = np.ravel_multi_index(tuple(idx), tuple(cells + 1))
        return grid[flat].ravel(), w.ravel()

    def step(self, Fvec) -> np.ndarray:
        """One backward step: the owned values of F^k from the vector of F^{k+1}."""
        self.I.mult(Fvec, self._Y)
        return self._Y.array_r.reshape(-1, self.per_vertex).min(axis=1)

    def fractional(self, dt: float) -> "SemiLagrangian":
        return SemiLagrangian(self.solver, dt, self.grid)

    def destroy(self):
        self.I.destroy()
        self._Y.destroy()


#: The depth schemes of :class:`~fem_dnn.hjb.solver.HJBSolver` by name (its ``scheme``).
HJB_SCHEMES = {cls.name: cls for cls in (LaxFriedrichs, SemiLagrangian)}
