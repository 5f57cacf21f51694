"""The node space V_h on the node mesh, with node weights and mass operators (docs/model.md §4.2).

V_h is DG0 (a cell is a neuron) or P1/P2 (a dof is a neuron) with node weights omega_j
(lumped mass) or the consistent mass matrix. Owned dofs of rank r are the global indices
``offsets[r]:offsets[r+1]``; a batch of S samples is a Fortran-ordered ``(n_local, S)``
array (one PETSc dense matrix without copy). Data move in and out in *natural order*
(dofs sorted by coordinate, :func:`fem_dnn.core.meshes.natural_ranks`).
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

import basix.ufl
import dolfinx.fem.petsc
import ufl
from dolfinx import fem, mesh as dmesh

from fem_dnn._petsc import mat_mult, mat_solve
from fem_dnn.core import forms
from fem_dnn.core.meshes import natural_ranks
from fem_dnn.errors import InputError

__all__ = ["NodeSpace"]


class NodeSpace:
    """The node space V_h on the node mesh, with node weights and mass operators.

    Args:
        mesh: node mesh (its communicator is the node communicator).
        family: ``"DG"`` (degree 0: cells are neurons) or ``"P"`` (degree 1 or 2).
        degree: polynomial degree.
        mass: ``"lumped"`` (node weights omega_j, vertex quadrature; the ResNet form) or
            ``"consistent"`` (mass matrix, sigma term by Gauss quadrature: the
            higher-accuracy Galerkin scheme).
        quadrature_degree: quadrature degree of the sigma term (consistent mass);
            default ``2*degree + 2``.
        petsc_options_prefix: prefix of the mass and diffusion solvers' options.

    The kernel and the readout integrate against :meth:`apply_mass` (``W f`` lumped,
    ``M f`` consistent); the sigma term of the state equation is
    ``quad_load(sigma(quad_values(u)))`` (``W sigma(u)`` lumped, ``Q sigma(P u)``
    consistent; :meth:`quad_values_T` and :meth:`quad_load_T` are the transposes).
    """

    def __init__(
        self,
        mesh: dmesh.Mesh,
        family: str = "DG",
        degree: int = 0,
        mass: str = "lumped",
        quadrature_degree: int | None = None,
        petsc_options_prefix: str = "fem_dnn_",
    ):
        family = {"DG": "DG", "P": "P", "Lagrange": "P", "CG": "P"}.get(family)
        if family is None or (family, degree) not in (("DG", 0), ("P", 1), ("P", 2)):
            raise InputError(f"node space must be DG0, P1 or P2, got {family}{degree}")
        if mass not in ("lumped", "consistent"):
            raise InputError(f"mass must be 'lumped' or 'consistent', not {mass!r}")
        if family == "DG":
            mass = "lumped"  # DG0: the mass matrix is diagonal, both options coincide
        if degree == 2 and mass == "lumped":
            raise InputError("P2 has no positive lumped mass; use mass='consistent'")
        self.mesh, self.family, self.degree, self.mass = mesh, family, degree, mass
        self.comm = mesh.comm
        self.prefix = petsc_options_prefix
        self.V = fem.functionspace(mesh, (family, degree))
        imap = self.V.dofmap.index_map
        self.n_local, self.n = imap.size_local, imap.size_global
        self.offset = imap.local_range[0]
        self.counts = np.array(self.comm.allgather(self.n_local))
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        x = self.V.tabulate_dof_coordinates()
        self.x_owned = np.ascontiguousarray(x[: self.n_local].T)  # (3, n_local)
        self.x_all = np.concatenate(self.comm.allgather(x[: self.n_local]), axis=0).T
        self.nat_of_global = natural_ranks(self.x_all)  # global dof -> natural index
        self.nat_owned = self.nat_of_global[self.offset : self.offset + self.n_local]

        v = ufl.TestFunction(self.V)
        w = dolfinx.fem.petsc.assemble_vector(fem.form(forms.lumped_mass(v)))
        w.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        self.weights = w.array.copy()
        w.destroy()
        self.volume = self.comm.allreduce(self.weights.sum())
        self.qdeg = quadrature_degree if quadrature_degree else 2 * degree + 2
        self._M = self._Q = self._P = self._K = None
        self._diagonal = None
        self._Qt = self._Pt = None
        self._M_all = self._cols_ksp = None
        self.weights_all = np.concatenate(self.comm.allgather(self.weights[: self.n_local]))
        self._mass_ksp = None
        self._diff = {}
        if mass == "consistent":
            self._build_consistent()

    # ---- assembled operators (once)
    def _build_consistent(self):
        u, v = ufl.TrialFunction(self.V), ufl.TestFunction(self.V)
        self._M = dolfinx.fem.petsc.assemble_matrix(fem.form(forms.mass(u, v)))
        self._M.assemble()
        qe = basix.ufl.quadrature_element(self.mesh.basix_cell(), value_shape=(), degree=self.qdeg)
        self.Vq = fem.functionspace(self.mesh, qe)
        q, qt = ufl.TrialFunction(self.Vq), ufl.TestFunction(self.Vq)
        self._Q = dolfinx.fem.petsc.assemble_matrix(
            fem.form(forms.quadrature_mass(q, v, self.qdeg))
        )
        self._Q.assemble()
        d = dolfinx.fem.petsc.assemble_vector(fem.form(forms.quadrature_weights(qt, self.qdeg)))
        d.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        d.reciprocal()
        self._P = self._Q.transpose(PETSc.Mat())  # P = D^-1 Q^T: values at quadrature points
        self._P.diagonalScale(L=d)
        d.destroy()
        self._mass_ksp = self._direct_solver(self._M, "mass_")
        self._Qt = self._Q.transpose(PETSc.Mat())
        self._Pt = self._P.transpose(PETSc.Mat())

    def _direct_solver(self, A: PETSc.Mat, name: str) -> PETSc.KSP:
        ksp = PETSc.KSP().create(self.comm)
        ksp.setOptionsPrefix(self.prefix + name)
        ksp.setOperators(A)
        ksp.setType("preonly")
        pc = ksp.getPC()
        pc.setType("cholesky")
        if self.comm.size > 1:
            pc.setFactorSolverType("mumps")
        ksp.setFromOptions()
        return ksp

    @property
    def M(self) -> PETSc.Mat:
        """Mass matrix used for time derivatives: consistent, or diag(omega) when lumped."""
        if self._M is None:
            A = PETSc.Mat().createAIJ(((self.n_local, self.n), (self.n_local, self.n)), nnz=1, comm=self.comm)
            A.setDiagonal(PETSc.Vec().createWithArray(self.weights, size=(self.n_local, self.n), comm=self.comm))
            A.assemble()
            self._M = A
        return self._M

    @property
    def K(self) -> PETSc.Mat:
        """Stiffness of the node diffusion (eps = 1), assembled from :func:`forms.diffusion`."""
        if self._K is None:
            u, v = ufl.TrialFunction(self.V), ufl.TestFunction(self.V)
            centres = None
            if self.family == "DG":
                centres = fem.Function(fem.functionspace(self.mesh, ("DG", 0, (self.mesh.geometry.dim,))))
                centres.interpolate(lambda x: x[: self.mesh.geometry.dim])
            self._K = dolfinx.fem.petsc.assemble_matrix(fem.form(forms.diffusion(u, v, 1.0, centres)))
            self._K.assemble()
        return self._K

    # ---- batched operators on (n_local, S) Fortran arrays (products and solves: fem_dnn._petsc)
    def apply_mass(self, F: np.ndarray) -> np.ndarray:
        """``(omega_j f_j)`` (lumped) or ``M f`` (consistent): the measure the kernel and
        readout integrate against."""
        if self.mass == "lumped":
            return self.weights[:, None] * F
        return mat_mult(self._M, F)

    def solve_mass(self, R: np.ndarray) -> np.ndarray:
        """``M^{-1} r`` (a direct solve, prefix ``<prefix>mass_``) or ``r / omega``."""
        if self.mass == "lumped":
            return R / self.weights[:, None]
        return mat_solve(self._mass_ksp, R)

    def quad_values(self, U: np.ndarray) -> np.ndarray:
        """Values of u_h at the sigma-term quadrature points (consistent) or nodes (lumped)."""
        if self.mass == "lumped":
            return U
        return mat_mult(self._P, U)

    def quad_load(self, Sq: np.ndarray) -> np.ndarray:
        """``int_Y s phi_i`` for s given at quadrature points (consistent) or nodes (lumped)."""
        if self.mass == "lumped":
            return self.weights[:, None] * Sq
        return mat_mult(self._Q, Sq)

    def quad_values_T(self, Zq: np.ndarray) -> np.ndarray:
        """``P^T z``: the transpose of :meth:`quad_values` (quadrature points -> nodes)."""
        if self.mass == "lumped":
            return Zq
        return mat_mult(self._Pt, Zq)

    def quad_load_T(self, Y: np.ndarray) -> np.ndarray:
        """``Q^T y``: the transpose of :meth:`quad_load` (nodes -> quadrature points)."""
        if self.mass == "lumped":
            return self.weights[:, None] * Y
        return mat_mult(self._Qt, Y)

    def diagonal_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """A positive diagonal spectrally equivalent to the mass: the node weights (lumped,
        P1), the diagonal of the consistent mass (P2, whose lumped weights are not all
        positive). ``(owned, all in global dof order)``; collective the first time."""
        if self._diagonal is None:
            if self.mass == "lumped" or self.degree == 1:
                w = np.asarray(self.weights[: self.n_local])
            else:
                w = self.M.getDiagonal().array_r.copy()
            self._diagonal = (w, np.concatenate(self.comm.allgather(w)))
        return self._diagonal

    def mass_columns(self, X: np.ndarray, inverse: bool = False, scale: float = 1.0) -> np.ndarray:
        """``X M`` (or ``X M^{-1}``) for X indexed by *global* dofs along the last axis
        (kernel coefficients b_ij: owned rows i, all columns j), times ``scale`` (``X M^{-1}``
        divided by it; a scalar factor of a batch folded into these n^2 coefficients). The consistent mass is
        kept as a sequential copy on every rank for this (it is sparse)."""
        if self.mass == "lumped":
            w = self.weights_all if scale == 1.0 else scale * self.weights_all
            if X.dtype == np.float32:
                w = w.astype(np.float32)  # keep the precision
            return X / w if inverse else X * w
        if self._M_all is None:
            rows = PETSc.IS().createStride(self.n, 0, 1, comm=PETSc.COMM_SELF)
            self._M_all = self._M.createSubMatrices(rows, rows)[0]
            rows.destroy()
            ksp = PETSc.KSP().create(PETSc.COMM_SELF)
            ksp.setOptionsPrefix(self.prefix + "mass_columns_")
            ksp.setOperators(self._M_all)
            ksp.setType("preonly")
            ksp.getPC().setType("cholesky")
            ksp.setFromOptions()
            self._cols_ksp = ksp
        Xt = np.asarray(X).reshape(-1, self.n).T
        out = mat_solve(self._cols_ksp, Xt) if inverse else mat_mult(self._M_all, Xt)
        if scale != 1.0:
            out *= 1.0 / scale if inverse else scale
        return out.T.reshape(X.shape)

    def diffusion_solver(self, theta_tau_eps: float) -> tuple[PETSc.KSP, PETSc.Mat]:
        """Cached direct solver of ``M + c K`` (prefix ``<prefix>diffusion_``)."""
        key = float(theta_tau_eps)
        if key not in self._diff:
            A = self.M.duplicate(copy=True)
            A.axpy(key, self.K, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
            self._diff[key] = (self._direct_solver(A, "diffusion_"), A)
        return self._diff[key]

    def mat_solve(self, ksp: PETSc.KSP, R: np.ndarray) -> np.ndarray:
        """``A^{-1} R`` for a batch, with a direct solver of a node-space matrix A."""
        return mat_solve(ksp, R)

    def apply(self, A: PETSc.Mat, F: np.ndarray) -> np.ndarray:
        """Apply an assembled node-space matrix (e.g. K) to a batch."""
        return mat_mult(A, F)

    # ---- data in and out
    def interpolate(self, fn) -> np.ndarray:
        """Owned node values of a vectorised callable ``fn(y)``, y of shape (3, p).

        ``fn`` may return shape (p,) (one function) or (S, p) (a batch); returns
        ``(n_local,)`` or a Fortran ``(n_local, S)`` array.
        """
        vals = np.asarray(fn(self.x_owned), dtype=float)
        if vals.ndim == 1 and vals.shape == (self.n_local,):
            return vals
        if vals.ndim == 2 and vals.shape[1] == self.n_local:
            return np.asfortranarray(vals.T)
        raise InputError(
            f"callable returned shape {vals.shape}; expected ({self.n_local},) or (S, {self.n_local})"
        )

    def cell_averages(self, f, degree: int = 8) -> np.ndarray:
        """The DG0 data of functions ``f(x)`` (``(p,)`` or ``(S, p)`` values at points ``x``
        of shape ``(3, p)``): their mean over every cell, by a Gauss rule of ``degree`` on
        each cell (the L2 projection onto DG0). Cell averages are consistent across nested
        meshes (a coarse cell's value is the weighted mean of its children's), as pixel
        data are. Returns ``(S, n)`` in natural order, on every rank (collective).

        Raises:
            InputError: the space is not DG0.
        """
        import basix
        import ufl

        if (self.family, self.degree) != ("DG", 0):
            raise InputError(f"cell averages are the data of DG0 node spaces, not {self.family}{self.degree}")
        msh = self.mesh
        cells = np.arange(self.n_local, dtype=np.int32)  # DG0: dof i is owned cell i
        X, w = basix.make_quadrature(msh.basix_cell(), degree)
        expr = fem.Expression(ufl.as_vector([*ufl.SpatialCoordinate(msh), abs(ufl.JacobianDeterminant(msh))]), X)
        vals = expr.eval(msh, cells).reshape(len(cells), len(w), -1)
        gdim = msh.geometry.dim
        pts = np.zeros((3, len(cells) * len(w)))
        pts[:gdim] = vals[:, :, :gdim].reshape(-1, gdim).T
        dx = vals[:, :, gdim] * w  # (cells, q)
        F = np.asarray(f(pts), dtype=float)
        F = F.reshape(-1, len(cells), len(w))
        own = np.einsum("scq,cq->sc", F, dx) / dx.sum(axis=1)
        dofs = np.array([self.V.dofmap.cell_dofs(c)[0] for c in cells], dtype=np.int64)
        local = np.empty_like(own)
        local[:, dofs] = own
        return self.to_natural(local, axis=1)

    def from_natural(self, arr, axis: int = 0) -> np.ndarray:
        """Owned part of an array indexed by node in *natural order* along ``axis``.

        Natural order sorts the dofs by coordinate (x first, then y, z), so it does not
        depend on the number of ranks: DG0 on an interval is left to right.
        """
        arr = np.asarray(arr, dtype=float)
        if arr.shape[axis] != self.n:
            raise InputError(
                f"array has {arr.shape[axis]} node values along axis {axis}; the node space has {self.n}"
            )
        return np.take(arr, self.nat_owned, axis=axis)

    def to_natural(self, local: np.ndarray, axis: int = 0) -> np.ndarray:
        """Gather owned values (along ``axis``) on every rank, in natural order."""
        local = np.moveaxis(np.asarray(local), axis, 0)
        full = np.concatenate(self.comm.allgather(np.ascontiguousarray(local)), axis=0)
        out = np.empty_like(full)
        out[self.nat_of_global] = full
        return np.moveaxis(out, 0, axis)

    def gather(self, G: np.ndarray) -> list[np.ndarray]:
        """All ranks' owned blocks of a Fortran ``(n_local, S)`` batch, as ``(S, n_r)``
        C arrays in rank order (one Allgatherv)."""
        S = G.shape[1]
        if self.comm.size == 1:
            return [np.ascontiguousarray(G.T)]
        buf = np.empty(self.n * S, dtype=G.dtype)
        send = np.ascontiguousarray(G.T)
        self.comm.Allgatherv(send, [buf, self.counts * S, self.offsets[:-1] * S, MPI.FLOAT if G.dtype == np.float32 else MPI.DOUBLE])
        return [buf[self.offsets[r] * S : self.offsets[r + 1] * S].reshape(S, -1) for r in range(self.comm.size)]

    def function(self, values: np.ndarray | None = None, name: str = "f") -> fem.Function:
        """A DOLFINx function of V_h with the given owned values (ghosts updated)."""
        fn = fem.Function(self.V, name=name)
        if values is not None:
            fn.x.array[: self.n_local] = values
            fn.x.scatter_forward()
        return fn

    def destroy(self):
        """Destroy PETSc objects (collective)."""
        for obj in (self._M, self._Q, self._P, self._K, self._mass_ksp, self._Qt, self._Pt, self._M_all, self._cols_ksp):
            if obj is not None:
                obj.destroy()
        for ksp, A in self._diff.values():
            ksp.destroy(), A.destroy()
        self._diff = {}
