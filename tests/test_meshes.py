"""Node domains: gmsh and XDMF files, built-in meshes, bad files, forward solves and
(depth, node) meshes on unstructured node meshes."""

from pathlib import Path

import numpy as np
import pytest
import ufl
from dolfinx import fem
from mpi4py import MPI

import dolfinx.io

from fem_dnn.core.depth import Depth, ProductMesh
from fem_dnn.core.meshes import create_node_mesh, read_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.errors import InputError
from fem_dnn.network import Network

MESHES = Path(__file__).parents[1] / "meshes"
DISK_AREA = 21.0 * np.sin(2.0 * np.pi / 42.0)  # the inscribed 42-gon, 3.12989...


def measure(mesh):
    """Global volume of a mesh."""
    one = fem.Constant(mesh, 1.0)
    return mesh.comm.allreduce(fem.assemble_scalar(fem.form(one * ufl.dx(domain=mesh))), op=MPI.SUM)


def num_cells(mesh):
    return mesh.topology.index_map(mesh.topology.dim).size_global


def write_on_rank0(comm, path, text):
    if comm.rank == 0:
        Path(path).write_text(text)
    comm.barrier()


# --------------------------------------------------------------------------- gmsh files
@pytest.mark.mpi
@pytest.mark.parametrize(
    "name,area,cells", [("disk.msh", DISK_AREA, 340), ("lshape.msh", 3.0, 190)]
)
def test_read_msh(comm, name, area, cells):
    mesh = read_node_mesh(MESHES / name, comm)
    assert mesh.comm.size == comm.size
    assert mesh.topology.cell_name() == "triangle"
    assert mesh.geometry.dim == 2
    assert num_cells(mesh) == cells
    assert abs(measure(mesh) - area) < 1e-6  # disk: 3.1299 (polygon), L-shape: 3


@pytest.mark.mpi
@pytest.mark.parametrize("cell", ["triangle", "quadrilateral"])
def test_xdmf_round_trip(comm, tmp_shared, cell):
    mesh = create_node_mesh(comm, "rectangle", (5, 3), bounds=[[0.0, 0.0], [2.0, 1.0]], cell=cell)
    path = Path(tmp_shared) / f"rect_{cell}.xdmf"
    with dolfinx.io.XDMFFile(comm, str(path), "w") as xf:
        xf.write_mesh(mesh)
    back = read_node_mesh(path, comm)
    assert num_cells(back) == num_cells(mesh) == (30 if cell == "triangle" else 15)
    assert back.topology.cell_name() == cell
    assert abs(measure(back) - 2.0) < 1e-13
    with pytest.raises(InputError, match="grid 'nope'"):
        read_node_mesh(path, comm, name="nope")
    # the DG0 two-point flux across facets shared between ranks equals the serial one
    results = []
    for c in (comm, MPI.COMM_SELF):
        space = NodeSpace(read_node_mesh(path, c), "DG", 0)
        f = space.interpolate(lambda y: np.sin(3 * y[0]) + y[1] ** 2)
        results.append(space.to_natural(space.apply(space.K, f[:, None])[:, 0]))
        space.destroy()
    assert np.linalg.norm(results[0] - results[1]) <= 1e-12 * np.linalg.norm(results[1])


# --------------------------------------------------------------------------- bad files
@pytest.mark.mpi
def test_missing_file(comm, tmp_shared):
    with pytest.raises(InputError, match="does not exist"):
        read_node_mesh(Path(tmp_shared) / "nothing_here.msh", comm)
    with pytest.raises(InputError, match="does not exist"):
        read_node_mesh(Path(tmp_shared), comm)  # a folder is not a mesh file


@pytest.mark.mpi
def test_wrong_suffix(comm, tmp_shared):
    path = Path(tmp_shared) / "mesh.txt"
    write_on_rank0(comm, path, (MESHES / "disk.msh").read_text())
    with pytest.raises(InputError, match=r"expected \.msh or \.xdmf"):
        read_node_mesh(path, comm)


@pytest.mark.mpi
def test_empty_msh(comm, tmp_shared):
    path = Path(tmp_shared) / "empty.msh"
    write_on_rank0(comm, path, "")
    with pytest.raises(InputError, match="empty.msh"):
        read_node_mesh(path, comm)


@pytest.mark.mpi
def test_truncated_msh(comm, tmp_shared):
    text = (MESHES / "disk.msh").read_text()
    path = Path(tmp_shared) / "truncated.msh"
    write_on_rank0(comm, path, text[: len(text) // 2])
    with pytest.raises(InputError, match="cannot read gmsh file .*truncated.msh"):
        read_node_mesh(path, comm)


@pytest.mark.mpi
def test_msh_without_physical_groups(comm, tmp_shared):
    import gmsh

    path = Path(tmp_shared) / "nophys.msh"
    if comm.rank == 0:
        gmsh.initialize(interruptible=False)
        try:
            gmsh.option.setNumber("General.Terminal", 0)
            gmsh.model.add("nophys")
            gmsh.model.occ.addRectangle(0, 0, 0, 1, 1)
            gmsh.model.occ.synchronize()
            gmsh.option.setNumber("Mesh.MeshSizeMax", 0.5)
            gmsh.model.mesh.generate(2)
            gmsh.write(str(path))
        finally:
            gmsh.finalize()
    comm.barrier()
    with pytest.raises(InputError, match="no physical group"):
        read_node_mesh(path, comm)


@pytest.mark.mpi
def test_msh_mixed_cells(comm, tmp_shared):
    import gmsh

    path = Path(tmp_shared) / "mixed.msh"
    if comm.rank == 0:
        gmsh.initialize(interruptible=False)
        try:
            gmsh.option.setNumber("General.Terminal", 0)
            gmsh.model.add("mixed")
            s1 = gmsh.model.occ.addRectangle(0, 0, 0, 1, 1)
            s2 = gmsh.model.occ.addRectangle(1, 0, 0, 1, 1)
            gmsh.model.occ.fragment([(2, s1)], [(2, s2)])
            gmsh.model.occ.synchronize()
            gmsh.option.setNumber("Mesh.MeshSizeMax", 0.5)
            gmsh.model.mesh.setRecombine(2, s2)  # quadrilaterals on the right half
            gmsh.model.addPhysicalGroup(2, [s1, s2], 1)
            gmsh.model.mesh.generate(2)
            gmsh.write(str(path))
        finally:
            gmsh.finalize()
    comm.barrier()
    with pytest.raises(InputError, match="cell type"):
        NodeSpace(read_node_mesh(path, comm), "DG", 0)


@pytest.mark.mpi
@pytest.mark.parametrize("with_h5", [False, True])
def test_corrupt_xdmf(comm, tmp_shared, with_h5):
    path = Path(tmp_shared) / f"garbage_{with_h5}.xdmf"
    write_on_rank0(comm, path, "this is <not> an XDMF &file\n\x00garbage")
    if with_h5:
        write_on_rank0(comm, path.with_suffix(".h5"), "not hdf5 either")
    with pytest.raises(InputError, match="cannot read XDMF mesh"):
        read_node_mesh(path, comm)


# --------------------------------------------------------------------------- built-in meshes
@pytest.mark.mpi
@pytest.mark.parametrize(
    "shape,n,cell,name,cells,volume",
    [
        ("interval", 5, None, "interval", 5, 1.0),
        ("rectangle", (3, 2), None, "triangle", 12, 1.0),
        ("rectangle", (3, 2), "triangle", "triangle", 12, 1.0),
        ("rectangle", (3, 2), "quadrilateral", "quadrilateral", 6, 1.0),
        ("box", 2, None, "tetrahedron", 48, 1.0),
        ("box", (2, 1, 3), "hexahedron", "hexahedron", 6, 1.0),
    ],
)
def test_create_node_mesh(comm, shape, n, cell, name, cells, volume):
    mesh = create_node_mesh(comm, shape, n, cell=cell)
    assert mesh.topology.cell_name() == name
    assert num_cells(mesh) == cells
    assert abs(measure(mesh) - volume) < 1e-13


def test_create_node_mesh_bounds(comm):
    mesh = create_node_mesh(comm, "rectangle", (2, 2), bounds=[[-1.0, 0.0], [1.0, 3.0]])
    assert abs(measure(mesh) - 6.0) < 1e-13
    mesh = create_node_mesh(comm, "interval", 4, bounds=[[2.0], [2.5]])
    assert abs(measure(mesh) - 0.5) < 1e-14


def test_create_node_mesh_bad_input(comm):
    with pytest.raises(InputError, match="unknown node domain shape 'sphere'"):
        create_node_mesh(comm, "sphere", 4)
    with pytest.raises(InputError, match="positive cell counts"):
        create_node_mesh(comm, "interval", 0)
    with pytest.raises(InputError, match="positive cell counts"):
        create_node_mesh(comm, "rectangle", (3, 0))
    with pytest.raises(InputError, match="positive cell counts"):
        create_node_mesh(comm, "box", (2, 2))  # two counts for a 3D box
    with pytest.raises(InputError, match="rectangle cells"):
        create_node_mesh(comm, "rectangle", 2, cell="tetrahedron")
    with pytest.raises(InputError, match="box cells"):
        create_node_mesh(comm, "box", 2, cell="quadrilateral")
    with pytest.raises(InputError, match="bounds"):
        create_node_mesh(comm, "interval", 2, bounds=[[1.0], [0.0]])


# --------------------------------------------------------------------------- solves on the disk
def disk_forward(comm, family, degree, mass, eps):
    space = NodeSpace(read_node_mesh(MESHES / "disk.msh", comm), family, degree, mass)
    net = Network(space, Depth(1.0, 3), "tanh", "heun", eps=eps)
    c = net.make_controls(
        a=lambda y, t: 0.3 * y[0] - 0.2 * y[1] + t,
        b=lambda y, z, t: np.exp(-((y[0][:, None] - z[0][None, :]) ** 2 + (y[1][:, None] - z[1][None, :]) ** 2)),
    )
    traj = net.forward(lambda y: np.vstack([np.sin(2 * y[0]), np.cos(y[0] * y[1])]), c)
    out = traj.natural()
    net.destroy(), space.destroy()
    return out


@pytest.mark.mpi
@pytest.mark.parametrize(
    "family,degree,mass,eps",
    [("DG", 0, "lumped", 0.0), ("P", 1, "consistent", 0.0), ("DG", 0, "lumped", 0.05), ("P", 1, "consistent", 0.05)],
)
def test_forward_on_disk(comm, family, degree, mass, eps):
    """Finite on every rank count, and equal to the serial solve (with eps > 0 the DG0
    two-point flux needs the facets shared between ranks)."""
    par = disk_forward(comm, family, degree, mass, eps)
    assert par.shape == (2, 340 if family == "DG" else 192)
    assert np.all(np.isfinite(par))
    if comm.size > 1:
        serial = disk_forward(MPI.COMM_SELF, family, degree, mass, eps)
        assert np.linalg.norm(par - serial) <= 1e-12 * np.linalg.norm(serial)


@pytest.mark.mpi
@pytest.mark.parametrize(
    "node,family,prism,volume",
    [
        ("disk", "DG", "prism", DISK_AREA),
        ("disk", "P", "prism", DISK_AREA),
        ("quad", "DG", "hexahedron", 2.0),
        ("quad", "P", "hexahedron", 2.0),
        ("interval", "P", "quadrilateral", 1.0),
    ],
)
def test_product_mesh(comm, node, family, prism, volume):
    if node == "disk":
        mesh = read_node_mesh(MESHES / "disk.msh", comm)
    elif node == "quad":
        mesh = create_node_mesh(comm, "rectangle", (4, 3), bounds=[[0, 0], [2, 1]], cell="quadrilateral")
    else:
        mesh = create_node_mesh(comm, "interval", 7)
    space = NodeSpace(mesh, family, 0 if family == "DG" else 1)
    depth = Depth(1.0, 3)
    pm = ProductMesh(space, depth)
    tdim = mesh.topology.dim
    ncell_local = mesh.topology.index_map(tdim).size_local
    assert pm.mesh.topology.cell_name() == prism
    assert pm.mesh.geometry.dim == mesh.geometry.dim + 1
    # partitioned like the node mesh: node cells x N on every rank
    assert pm.mesh.topology.index_map(tdim + 1).size_local == ncell_local * depth.N
    assert num_cells(pm.mesh) == comm.allreduce(ncell_local, op=MPI.SUM) * depth.N
    assert abs(measure(pm.mesh) - volume * depth.T) < 1e-12
    # a trajectory constant in y and linear in depth is reproduced on the product mesh
    traj = np.outer(depth.points, np.ones(space.n_local))
    fn = pm.function(traj)
    t = ufl.SpatialCoordinate(pm.mesh)[tdim]
    err = comm.allreduce(fem.assemble_scalar(fem.form((fn - t) ** 2 * ufl.dx)), op=MPI.SUM)
    assert err < 1e-24
