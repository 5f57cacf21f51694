"""Domains of the model: node mesh and node space, depth mesh, (depth, node) mesh.

- The **node domain** Y (the width of the network) is a DOLFINx mesh: built-in
  interval/rectangle/box, or read from gmsh ``.msh`` or XDMF. The **node space** V_h on it
  is DG0 (a cell is a neuron) or P1/P2 (a dof is a neuron) with node weights omega_j
  (lumped mass) or the consistent mass matrix (docs/model.md §4).
- The **depth** [0,T] is an interval mesh with N cells; depth cell k is layer k and the
  controls are constant on it.
- The **(depth, node) mesh** [0,T] x Y is a real DOLFINx mesh (quadrilaterals over an
  interval, prisms over triangles, hexahedra over quadrilaterals) with depth as the last
  coordinate, partitioned like the node mesh; trajectories live on it for output and
  for the space-time residual of :func:`fem_dnn.core.forms.state_residual`.

Parallel layout: the node mesh is partitioned by DOLFINx over ``node_comm``; owned dofs
of rank r are the global indices ``offsets[r]:offsets[r+1]``. A batch of S samples is a
Fortran-ordered ``(n_local, S)`` array (one PETSc dense matrix without copy). Samples may
in addition be split across groups of ranks (:func:`split_comm`).
"""

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

import basix.ufl
import dolfinx.fem.petsc
import dolfinx.graph
import dolfinx.io
import dolfinx.la
import ufl
from dolfinx import fem, mesh as dmesh

from fem_dnn._mpi import all_finite
from fem_dnn._petsc import mat_mult, mat_solve
from fem_dnn.core import forms
from fem_dnn.errors import InputError

__all__ = [
    "Layout",
    "split_comm",
    "create_node_mesh",
    "read_node_mesh",
    "NodeSpace",
    "Depth",
    "ProductMesh",
    "locate_points",
    "lexicographic_order",
    "natural_ranks",
]


# --------------------------------------------------------------------------- layout
@dataclass
class Layout:
    """How ranks are used: ``node_comm`` partitions the node mesh, ``sample_comm``
    connects the groups that split the samples (rank i of each node group)."""

    world: MPI.Comm
    node_comm: MPI.Comm
    sample_comm: MPI.Comm

    def sample_range(self, S: int) -> tuple[int, int]:
        """Half-open range of the global samples handled by this rank's group."""
        g, G = self.sample_comm.rank, self.sample_comm.size
        counts = np.full(G, S // G) + (np.arange(G) < S % G)
        start = int(counts[:g].sum())
        return start, start + int(counts[g])


def split_comm(comm: MPI.Comm = MPI.COMM_WORLD, sample_groups: int = 1) -> Layout:
    """Split ``comm`` into ``sample_groups`` groups of ranks.

    Each group holds the whole node mesh (partitioned over its ``comm.size //
    sample_groups`` ranks) and a contiguous share of the samples. ``sample_groups=1``
    is pure node parallelism, ``sample_groups=comm.size`` pure data parallelism.
    """
    if sample_groups < 1 or comm.size % sample_groups:
        raise InputError(
            f"sample_groups={sample_groups} must divide the number of ranks {comm.size}"
        )
    per = comm.size // sample_groups
    node_comm = comm.Split(color=comm.rank // per, key=comm.rank)
    sample_comm = comm.Split(color=comm.rank % per, key=comm.rank)
    return Layout(comm, node_comm, sample_comm)


# --------------------------------------------------------------------------- node meshes
_CELLS = {
    "triangle": dmesh.CellType.triangle,
    "quadrilateral": dmesh.CellType.quadrilateral,
    "tetrahedron": dmesh.CellType.tetrahedron,
    "hexahedron": dmesh.CellType.hexahedron,
}


def create_node_mesh(
    comm: MPI.Comm, shape: str = "interval", n=16, bounds=None, cell: str | None = None
) -> dmesh.Mesh:
    """Built-in node domain.

    Args:
        comm: communicator of the node partition (``Layout.node_comm``).
        shape: ``"interval"``, ``"rectangle"`` or ``"box"``.
        n: number of cells per direction (int or a tuple, one per direction).
        bounds: ``[lo, hi]`` corners; default the unit interval/square/cube.
        cell: ``"triangle"``/``"quadrilateral"`` (rectangle), ``"tetrahedron"``/
            ``"hexahedron"`` (box).
    """
    dims = {"interval": 1, "rectangle": 2, "box": 3}
    if shape not in dims:
        raise InputError(f"unknown node domain shape {shape!r}; choose one of {list(dims)}")
    d = dims[shape]
    nn = [int(n)] * d if np.isscalar(n) else [int(k) for k in n]
    if len(nn) != d or min(nn) < 1:
        raise InputError(f"node mesh needs {d} positive cell counts, got n={n!r}")
    lo, hi = (np.zeros(d), np.ones(d)) if bounds is None else map(np.atleast_1d, bounds)
    if len(lo) != d or len(hi) != d or np.any(np.asarray(hi) <= np.asarray(lo)):
        raise InputError(f"bounds {bounds!r} must be [lo, hi] with lo < hi in {d}D")
    if d == 1:
        return dmesh.create_interval(comm, nn[0], [float(lo[0]), float(hi[0])])
    if d == 2:
        ct = _CELLS.get(cell or "triangle")
        if ct not in (dmesh.CellType.triangle, dmesh.CellType.quadrilateral):
            raise InputError(f"rectangle cells must be triangle or quadrilateral, not {cell!r}")
        return dmesh.create_rectangle(comm, [list(lo), list(hi)], nn, ct)
    ct = _CELLS.get(cell or "tetrahedron")
    if ct not in (dmesh.CellType.tetrahedron, dmesh.CellType.hexahedron):
        raise InputError(f"box cells must be tetrahedron or hexahedron, not {cell!r}")
    return dmesh.create_box(comm, [list(lo), list(hi)], nn, ct)


def read_node_mesh(path, comm: MPI.Comm, name: str = "mesh") -> dmesh.Mesh:
    """Read a node domain from a gmsh ``.msh`` file or an XDMF file.

    The gmsh model must have a physical group on its cells (of the highest dimension);
    its geometric dimension is that dimension (2D meshes drop z).

    The mesh read must have cells, finite coordinates and no degenerate cell (zero
    length, area or volume: its node weight would be zero).

    Raises:
        InputError: on every rank, naming the file: missing or empty file, a folder,
            unknown suffix, a file that cannot be read as a mesh, no cells, non-finite
            coordinates or degenerate cells.
    """
    path = Path(path)
    state = None
    if comm.rank == 0:
        state = "folder" if path.is_dir() else "missing" if not path.is_file() else "empty" if path.stat().st_size == 0 else "ok"
    state = comm.bcast(state, root=0)
    if state == "folder":
        raise InputError(f"node mesh file {str(path)!r} does not exist: it is a folder")
    if state == "missing":
        raise InputError(f"node mesh file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".msh", ".xdmf", ".xmf"):
        raise InputError(f"node mesh file {str(path)!r}: expected .msh or .xdmf")
    if state == "empty":
        raise InputError(f"node mesh file {str(path)!r} is empty")
    if suffix == ".msh":
        mesh = _read_msh(path, comm)
    else:
        _check_xml(path)
        try:
            with _quiet_stderr(), dolfinx.io.XDMFFile(comm, str(path), "r") as xf:  # no HDF5 error stack
                mesh = xf.read_mesh(name=name, ghost_mode=dmesh.GhostMode.shared_facet)
        except Exception as e:  # HDF5/XML errors surface as RuntimeError
            reason = " ".join(str(e).split()).rstrip(".")
            raise InputError(f"cannot read XDMF mesh {str(path)!r} (grid {name!r}): {reason}"
                             + ("" if ".h5" in reason else _hdf5_files(path))) from None
    mesh = _drop_zero_coordinates(mesh)
    _check_cells(mesh, path)
    return mesh


def _drop_zero_coordinates(mesh: dmesh.Mesh) -> dmesh.Mesh:
    """A mesh whose geometry has more coordinates than its cells have dimensions, the
    extra ones zero everywhere (DOLFINx writes an interval mesh to XDMF with two), as the
    same mesh with ``tdim`` coordinates (collective; the cells are redistributed)."""
    import basix.ufl

    tdim, gdim = mesh.topology.dim, mesh.geometry.dim
    ncell = mesh.topology.index_map(tdim).size_local
    if gdim == tdim or mesh.comm.allreduce(float(np.abs(mesh.geometry.x[:, tdim:]).max(initial=0.0)), op=MPI.MAX) > 0:
        return mesh
    dofs = mesh.geometry.dofmaps[0]
    mine = mesh.geometry.x[dofs[:ncell], :tdim]  # (cells, vertices, tdim)
    parts = mesh.comm.gather(mine, root=0)
    cells, x = np.zeros((0, dofs.shape[1]), dtype=np.int64), np.zeros((0, tdim))
    if mesh.comm.rank == 0:
        allv = np.concatenate(parts, axis=0)
        x, inverse = np.unique(np.round(allv.reshape(-1, tdim), 12), axis=0, return_inverse=True)
        cells = inverse.reshape(allv.shape[:2]).astype(np.int64)
    element = basix.ufl.element("Lagrange", mesh.topology.cell_name(), 1, shape=(tdim,))
    part = dmesh.create_cell_partitioner(dmesh.GhostMode.shared_facet, 2)
    return dmesh.create_mesh(mesh.comm, cells, element, x, part)


def _check_xml(path: Path):
    """An XDMF file is XML (every rank parses it: the same outcome everywhere)."""
    import xml.etree.ElementTree as ET

    try:
        ET.parse(path)
    except ET.ParseError as e:
        raise InputError(f"cannot read XDMF mesh {str(path)!r}: not XML ({e})") from None
    except OSError as e:
        raise InputError(f"cannot read XDMF mesh {str(path)!r}: {e.strerror or e}") from None


def _hdf5_files(path: Path) -> str:
    """' (its data: a.h5, ...)' for the HDF5 files an XDMF file refers to, or ''."""
    import re

    try:
        names = sorted(set(re.findall(r"([^\s<>\"']+\.h5):", path.read_text(errors="replace"))))
    except OSError:
        return ""
    return f" (its data: {', '.join(str(path.parent / n) for n in names)})" if names else ""


@contextlib.contextmanager
def _quiet_stderr():
    """Send the process's stderr (file descriptor 2: HDF5 prints its error stack there)
    to /dev/null for the duration; the exception raised carries the reason."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_cells(mesh: dmesh.Mesh, path: Path):
    """Cells exist, coordinates are finite, no cell has zero volume (collective)."""
    comm, tdim = mesh.comm, mesh.topology.dim
    imap = mesh.topology.index_map(tdim)
    n_local, n_global = imap.size_local, imap.size_global
    if n_global == 0:
        raise InputError(f"node mesh file {str(path)!r} has no cells")
    if not all_finite(comm, mesh.geometry.x):
        raise InputError(f"node mesh file {str(path)!r} has non-finite (NaN or Inf) node coordinates")
    V0 = fem.functionspace(mesh, ("DG", 0))
    vol = fem.assemble_vector(fem.form(ufl.TestFunction(V0) * ufl.dx)).array[:n_local]
    mean = comm.allreduce(float(vol.sum()), op=MPI.SUM) / n_global
    bad = np.flatnonzero(~(vol > 1e-12 * mean))
    where = [float(c) for c in V0.tabulate_dof_coordinates()[bad[0], : mesh.geometry.dim]] if len(bad) else None
    found = [(n, w) for n, w in comm.allgather((len(bad), where)) if n]
    if found:
        count = sum(n for n, _ in found)
        size = {1: "length", 2: "area", 3: "volume"}[tdim]
        first = "(" + ", ".join(f"{c:.6g}" for c in found[0][1]) + ")"
        raise InputError(f"node mesh file {str(path)!r}: {count} of {n_global} cells {'has' if count == 1 else 'have'} "
                         f"zero {size} (degenerate), the first at {first}")


def _read_msh(path: Path, comm: MPI.Comm) -> dmesh.Mesh:
    import gmsh
    import dolfinx.io.gmsh as dgmsh

    err, dim = None, 0
    if comm.rank == 0:
        gmsh.initialize(interruptible=False)
        gmsh.option.setNumber("General.Terminal", 0)
        try:
            gmsh.open(str(path))
            dim = gmsh.model.getDimension()
            if dim < 1 or not any(len(tags) for tags in gmsh.model.mesh.getElements(dim)[1]):
                err = f"gmsh file {str(path)!r} has no cells" + (" (only points)" if dim == 0 else "")
            elif not gmsh.model.getPhysicalGroups(dim):
                err = f"gmsh file {str(path)!r} has no physical group of cells (dimension {dim})"
            elif len(gmsh.model.mesh.getElementTypes(dim)) > 1:
                names = [gmsh.model.mesh.getElementProperties(t)[0] for t in gmsh.model.mesh.getElementTypes(dim)]
                err = f"gmsh file {str(path)!r} mixes cell types {names}; use one cell type"
        except Exception as e:
            err = f"cannot read gmsh file {str(path)!r}: {' '.join(str(e).split())}"
    err, dim = comm.bcast((err, dim), root=0)
    try:
        if err is not None:
            raise InputError(err)
        part = dmesh.create_cell_partitioner(dmesh.GhostMode.shared_facet, 2)
        data = dgmsh.model_to_mesh(gmsh.model if comm.rank == 0 else None, comm, 0, gdim=dim, partitioner=part)
    finally:
        if comm.rank == 0:
            gmsh.finalize()
    return data.mesh


# --------------------------------------------------------------------------- node space
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

    The kernel and the readout integrate against ``apply_mass`` (``W f`` lumped,
    ``M f`` consistent); the sigma term of the state equation is ``sigma_load``
    (``W sigma(u)`` lumped, ``Q sigma(P u)`` consistent).
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


def locate_points(mesh: dmesh.Mesh, tree, pts: np.ndarray) -> tuple[np.ndarray, int | None]:
    """The owned cell holding each point ``pts[i]`` (shape (p, 3)) on the lowest rank that
    owns one, -1 on the other ranks; and the index of the first point no rank holds
    (None when every point is found). ``tree`` is a ``dolfinx.geometry.bb_tree`` of the
    mesh's cells. Collective."""
    import dolfinx.geometry

    tdim = mesh.topology.dim
    cand = dolfinx.geometry.compute_collisions_points(tree, pts)
    coll = dolfinx.geometry.compute_colliding_cells(mesh, cand, pts)
    ncell = mesh.topology.index_map(tdim).size_local
    found = np.full(len(pts), -1, dtype=np.int32)
    for i in range(len(pts)):
        cells = [c for c in coll.links(i) if c < ncell]
        if cells:
            found[i] = cells[0]
    comm = mesh.comm
    mine = np.where(found >= 0, comm.rank, comm.size)
    owner = np.empty_like(mine)
    comm.Allreduce(mine, owner, op=MPI.MIN)
    missing = np.flatnonzero(owner == comm.size)
    return np.where(owner == comm.rank, found, -1), (int(missing[0]) if missing.size else None)


def lexicographic_order(x: np.ndarray) -> np.ndarray:
    """The permutation that sorts points (the columns of ``x``, shape ``(dim, P)``) by
    coordinate, x primary: rank independent, and robust to coordinate round-off (the
    coordinates are compared to 9 digits of the largest one)."""
    scale = max(float(np.abs(x).max()), 1.0) if x.size else 1.0
    return np.lexsort(np.round(x / scale, 9)[::-1])  # lexsort's last key is primary: x


def natural_ranks(x: np.ndarray) -> np.ndarray:
    """The position of every point in :func:`lexicographic_order` (its inverse): the
    natural index of a dof (``NodeSpace.nat_of_global``) or of a cell."""
    order = lexicographic_order(x)
    nat = np.empty_like(order)
    nat[order] = np.arange(len(order))
    return nat


# --------------------------------------------------------------------------- depth
class Depth:
    """The depth interval [0,T] with N cells (layers); controls are constant per layer.

    Args:
        T: final depth (> 0), with ``N`` uniform layers; or
        points: strictly increasing depth points starting at 0 (graded layers).
    """

    def __init__(self, T: float = 1.0, N: int | None = None, points=None):
        if points is None:
            if N is None or int(N) != N or N < 1:
                raise InputError(f"number of layers N must be a positive integer, got {N!r}")
            if not (np.isfinite(T) and T > 0):
                raise InputError(f"final depth T must be positive, got {T!r}")
            points = np.linspace(0.0, float(T), int(N) + 1)
        points = np.asarray(points, dtype=float)
        if points.ndim != 1 or len(points) < 2:
            raise InputError("depth points must be a 1D array with at least 2 points (one layer)")
        if not np.all(np.isfinite(points)) or points[0] != 0.0 or np.any(np.diff(points) <= 0):
            raise InputError("depth points must be finite, start at 0 and increase strictly")
        self.points = points
        self.T = float(points[-1])
        self.N = len(points) - 1
        self.tau = np.diff(points)
        self.mid = 0.5 * (points[1:] + points[:-1])

    def layer_of(self, t: float) -> int:
        """Index of the layer containing depth t (the last layer for t = T)."""
        if not (0.0 <= t <= self.T):
            raise InputError(f"depth t={t} is outside [0, {self.T}]")
        return int(min(np.searchsorted(self.points, t, side="right") - 1, self.N - 1))

    def mesh(self, comm: MPI.Comm = MPI.COMM_SELF) -> dmesh.Mesh:
        """The depth mesh as a DOLFINx interval mesh."""
        cells = np.array([[k, k + 1] for k in range(self.N)], dtype=np.int64)
        el = basix.ufl.element("Lagrange", "interval", 1, shape=(1,))
        x = self.points[:, None] if comm.rank == 0 else np.zeros((0, 1))
        return dmesh.create_mesh(comm, cells if comm.rank == 0 else cells[:0], el, x)


# --------------------------------------------------------------------------- (depth, node)
_PRODUCT = {"interval": "quadrilateral", "triangle": "prism", "quadrilateral": "hexahedron"}


class ProductMesh:
    """The (depth, node) mesh [0,T] x Y as a DOLFINx mesh; depth is the last coordinate.

    Each node cell c times each layer k is one product cell, kept on the rank that owns
    c (so the product mesh is partitioned like the node mesh). Node-space trajectories
    (N+1 depth levels) are transferred to functions on it by :meth:`function`:
    continuous P1 (Q1 / prism P1) for P1 node spaces; discontinuous P1 for DG0 (constant
    in y on each node cell, linear in depth); P2 states are written at vertices.
    Layer-wise controls (constant in depth) use :meth:`layer_function`.
    """

    @staticmethod
    def unsupported(mesh: dmesh.Mesh) -> str | None:
        """Why no (depth, node) mesh can be built over this node mesh, or None."""
        cname = mesh.topology.cell_name()
        if cname not in _PRODUCT:
            return f"no (depth, node) mesh over {cname} node cells (3D node domains)"
        if mesh.geometry.dofmaps[0].shape[1] != {"interval": 2, "triangle": 3, "quadrilateral": 4}[cname]:
            return "the (depth, node) mesh needs a first-order node mesh geometry (this mesh is curved, of higher order)"
        return None

    def __init__(self, space: NodeSpace, depth: Depth):
        msh = space.mesh
        reason = self.unsupported(msh)
        if reason:
            raise InputError(reason)
        cname = msh.topology.cell_name()
        self.space, self.depth = space, depth
        comm = msh.comm
        gdim = msh.geometry.dim
        N = depth.N
        tdim = msh.topology.dim
        ncell = msh.topology.index_map(tdim).size_local
        gmap = msh.geometry.index_map()
        nown = gmap.size_local
        gx = msh.geometry.x
        cg = msh.geometry.dofmaps[0][:ncell]  # node cell -> local geometry nodes
        nv = cg.shape[1]
        # product geometry node (k, g) on its owner o: off_o*(N+1) + k*nown_o + (g - off_o)
        own_counts = np.array(comm.allgather(nown))
        own_offsets = np.concatenate([[0], np.cumsum(own_counts)])
        glob = gmap.local_to_global(np.arange(nown + gmap.num_ghosts, dtype=np.int32))
        owner = np.concatenate([np.full(nown, comm.rank), gmap.owners]).astype(np.int64)
        base = own_offsets[owner] * (N + 1) + (glob - own_offsets[owner])
        stride = own_counts[owner]

        def pid(k, g):  # local geometry node g at depth level k
            return base[g] + k * stride[g]

        cells = np.empty((ncell * N, 2 * nv), dtype=np.int64)
        for k in range(N):
            cells[k::N, :nv] = pid(k, cg)
            cells[k::N, nv:] = pid(k + 1, cg)
        xs = np.zeros(((N + 1) * nown, gdim + 1))
        for k in range(N + 1):
            xs[k * nown : (k + 1) * nown, :gdim] = gx[:nown, :gdim]
            xs[k * nown : (k + 1) * nown, gdim] = depth.points[k]
        el = basix.ufl.element("Lagrange", _PRODUCT[cname], 1, shape=(gdim + 1,))

        # product cells stay with their node cell's owner and are ghosted where the
        # node cell is (shared-facet ghosting: facet integrals across ranks work)
        dest = msh.topology.index_map(tdim).index_to_dest_ranks(0)
        links = [np.concatenate([[comm.rank], dest.links(c)]).astype(np.int32) for c in range(ncell)]
        offs = np.concatenate([[0], np.cumsum([len(lk) for lk in links])])
        data = np.concatenate(links) if links else np.zeros(0, dtype=np.int32)
        pdata = np.concatenate([data[offs[c] : offs[c + 1]] for c in range(ncell) for _ in range(N)]) if ncell else data
        poffs = np.concatenate([[0], np.cumsum(np.repeat(np.diff(offs), N))]).astype(np.int32)

        def keep_local(comm_, nparts, cell_types, cells_):
            return dolfinx.graph.adjacencylist(pdata.astype(np.int32), poffs)._cpp_object

        self.mesh = dmesh.create_mesh(comm, cells, el, xs, partitioner=keep_local)
        ptdim = self.mesh.topology.dim
        npc = self.mesh.topology.index_map(ptdim).size_local
        cell_offset = comm.exscan(ncell * N) or 0
        orig = self.mesh.topology.original_cell_index[:npc] - cell_offset
        self.node_cell, self.layer = orig // N, orig % N  # product cell -> (c, k)
        if np.any(self.node_cell >= ncell) or np.any(self.node_cell < 0):
            raise RuntimeError("product mesh cells left their rank; partitioner not respected")
        self.nv = nv
        self.gdim = gdim
        self.continuous = space.family == "P"
        fam = "Lagrange" if self.continuous else "DG"
        self.W = fem.functionspace(self.mesh, (fam, 1))
        # node dof of (node cell c, reference vertex j): node DOF at that vertex (P),
        # or the cell dof (DG0)
        nd = space.V.dofmap.list[self.node_cell]
        pd = self.W.dofmap.list[:npc]
        self._pdofs = pd  # (npc, 2 nv)
        jj = np.arange(2 * nv) % nv
        self._ndofs = nd[:, jj] if self.continuous else np.repeat(nd[:, :1], 2 * nv, axis=1)
        self._level = self.layer[:, None] + (np.arange(2 * nv) >= nv)[None, :]

    def _node_values(self, level_values: np.ndarray) -> np.ndarray:
        """(L, n_local) owned node values per level -> (L, n_local + ghosts)."""
        fn = self.space.function()
        out = np.empty((level_values.shape[0], fn.x.array.size))
        for i, row in enumerate(level_values):
            fn.x.array[: self.space.n_local] = row
            fn.x.scatter_forward()
            out[i] = fn.x.array
        return out

    def function(self, trajectory: np.ndarray, name: str = "f") -> fem.Function:
        """Function on the (depth, node) mesh from ``(N+1, n_local)`` node values."""
        vals = self._node_values(np.asarray(trajectory))
        fn = fem.Function(self.W, name=name)
        fn.x.array[self._pdofs] = vals[self._level, self._ndofs]
        fn.x.scatter_forward()
        return fn

    def layer_function(self, layers: np.ndarray, name: str = "a") -> fem.Function:
        """Discontinuous-in-depth function from per-layer node values: ``(N, n_local)``
        (constant in depth on each layer) or ``(N, 2, n_local)`` (values at the bottom
        and top of each layer, linear in between)."""
        layers = np.asarray(layers)
        if layers.ndim == 2:
            layers = np.stack([layers, layers], axis=1)
        N = self.depth.N
        vals = self._node_values(layers.reshape(2 * N, -1)).reshape(N, 2, -1)
        fn = fem.Function(self.layer_space, name=name)
        pd = self.layer_space.dofmap.list[: len(self.layer)]
        top = (np.arange(2 * self.nv) >= self.nv)[None, :].astype(int)
        fn.x.array[pd] = vals[self.layer[:, None], top, self._ndofs]
        fn.x.scatter_forward()
        return fn

    @property
    def layer_space(self) -> fem.FunctionSpace:
        """Discontinuous P1 on the (depth, node) mesh: holds layer-wise data exactly."""
        if getattr(self, "_layer_space", None) is None:
            self._layer_space = fem.functionspace(self.mesh, ("DG", 1))
        return self._layer_space

    def layer_sums(self, values: np.ndarray) -> np.ndarray:
        """Sum a vector on :attr:`layer_space` (e.g. an assembled residual) per (layer,
        node dof): the test function ``phi_i(y) chi_k(t)`` is the sum of the
        discontinuous P1 basis functions at node dof i in layer k. Returns ``(N, n_local)``."""
        sp = self.space
        fn = sp.function()
        nloc = fn.x.array.size
        acc = np.zeros((self.depth.N, nloc))
        pd = self.layer_space.dofmap.list[: len(self.layer)]
        np.add.at(acc, (np.broadcast_to(self.layer[:, None], pd.shape), self._ndofs), values[pd])
        out = np.empty((self.depth.N, sp.n_local))
        for k in range(self.depth.N):
            fn.x.array[:] = acc[k]
            fn.x.scatter_reverse(dolfinx.la.InsertMode.add)
            out[k] = fn.x.array[: sp.n_local]
        return out
