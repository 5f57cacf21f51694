"""The node mesh: built-in node domains, reading gmsh and XDMF files, points on a mesh.

The **node domain** Y (the width of the network) is a DOLFINx mesh: built-in
interval/rectangle/box (:func:`create_node_mesh`), or read from gmsh ``.msh`` or XDMF
(:func:`read_node_mesh`, with checks that name the file). :func:`locate_points` finds the
owned cell of points on a distributed mesh; :func:`lexicographic_order` and
:func:`natural_ranks` order points by coordinate, independently of the number of ranks
(the *natural order* of dofs and cells).
"""

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

import dolfinx.io
import ufl
from dolfinx import fem, mesh as dmesh

from fem_dnn._mpi import all_finite
from fem_dnn.errors import InputError

__all__ = ["create_node_mesh", "read_node_mesh", "locate_points", "lexicographic_order", "natural_ranks"]


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
