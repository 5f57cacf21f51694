"""Transfer of controls between (depth, node) discretisations: interpolation matrices
(exactness, rank independence, non-nested and curved meshes), the depth transfer, and
the network output under grid sequencing (coarse controls on a finer network)."""

from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.core.depth import Depth
from fem_dnn.core.meshes import create_node_mesh, read_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.errors import InputError
from fem_dnn.learning.controls import ControlSpace
from fem_dnn.network import Network
from fem_dnn.learning.transfer import depth_matrix, interpolation_matrix, transfer_controls

from conftest import observed_orders

MESHES = Path(__file__).parents[1] / "meshes"

# (shape, coarse n, fine n, cell): nested and non-nested pairs, 1D and 2D
MESH_PAIRS = [
    ("interval", 16, 32, None),
    ("interval", 10, 15, None),  # non-nested; fine DG0 midpoints on coarse vertices
    ("rectangle", (4, 3), (7, 5), "triangle"),
    ("rectangle", (3, 2), (6, 4), "quadrilateral"),
]
SPACES = [("DG", 0, "lumped"), ("P", 1, "lumped"), ("P", 2, "consistent")]
#: Two computations of one entry of an interpolation matrix (on different ranks, where a
#: cell's geometry may come in another order; or a node of the space itself) agree to
#: this. An entry is a coarse basis function at the pull-back X of a fine dof: rounding
#: moves X by a few ulp times the condition number of the cell's Jacobian (at most 3.1
#: on these meshes), about 1.4e-15, and the P1 and P2 reference basis functions have
#: gradients of at most 4, so entries differ by up to about 8e-15 (measured: 4.3e-15,
#: P2 on the disks on 2 ranks; 1.6e-15 against the identity). 1e-14, the bound these
#: tests had, was within 1.3 times that; an entry of a wrong cell differs by O(1).
ENTRY_ROUNDING = 1e-13


def exact_in_space(degree, x):
    """A function the coarse space holds exactly: constant (DG0), linear (P1), quadratic (P2)."""
    if degree == 0:
        return np.full(x.shape[1], 0.7)
    v = 1.0 + 2.0 * x[0] - 3.0 * x[1]
    return v + (0.5 * x[0] * x[1] - x[0] ** 2 + 0.25 * x[1] ** 2 if degree == 2 else 0.0)


def natural_coordinates(space):
    return space.to_natural(space.x_owned, axis=1)


def pair(comm, shape, nc, nf, cell, family, degree, mass):
    coarse = NodeSpace(create_node_mesh(comm, shape, nc, cell=cell), family, degree, mass)
    fine = NodeSpace(create_node_mesh(comm, shape, nf, cell=cell), family, degree, mass)
    return coarse, fine


# --------------------------------------------------------------------------- node interpolation
@pytest.mark.mpi
@pytest.mark.parametrize("family,degree,mass", SPACES)
@pytest.mark.parametrize("shape,nc,nf,cell", MESH_PAIRS)
def test_interpolation_exact_and_rank_independent(comm, shape, nc, nf, cell, family, degree, mass):
    coarse, fine = pair(comm, shape, nc, nf, cell, family, degree, mass)
    I = interpolation_matrix(coarse, fine)
    assert I.shape == (fine.n, coarse.n)
    g = exact_in_space(degree, natural_coordinates(coarse))
    assert np.abs(I @ g - exact_in_space(degree, natural_coordinates(fine))).max() < 1e-13
    assert np.abs(I.sum(axis=1) - 1.0).max() < 1e-13  # partition of unity
    serial = interpolation_matrix(*pair(MPI.COMM_SELF, shape, nc, nf, cell, family, degree, mass))
    assert np.abs(I - serial).max() <= ENTRY_ROUNDING


@pytest.mark.mpi
def test_interpolation_dg0_ties_pick_one_cell(comm):
    """Fine DG0 midpoints 0.1, 0.3, ... on coarse vertices (n=10 -> 5/3 ratio): the dof
    takes one coarse cell's value (the left one), never an average."""
    coarse, fine = pair(comm, "interval", 10, 15, None, "DG", 0, "lumped")
    I = interpolation_matrix(coarse, fine)
    assert np.all((I == 0.0) | (I == 1.0)) and np.all(I.sum(axis=1) == 1.0)
    assert I[1, 0] == 1.0  # fine cell 1 has midpoint 0.1, between coarse cells 0 and 1


@pytest.mark.mpi
@pytest.mark.parametrize("family,degree,mass", SPACES)
def test_interpolation_same_space_is_identity(comm, family, degree, mass):
    sp = NodeSpace(create_node_mesh(comm, "rectangle", (3, 4)), family, degree, mass)
    I = interpolation_matrix(sp, sp)
    assert np.abs(I - np.eye(sp.n)).max() <= ENTRY_ROUNDING


@pytest.mark.mpi
@pytest.mark.parametrize("family,degree,mass", SPACES)
def test_interpolation_curved_non_nested(comm, tmp_shared, family, degree, mass):
    """A coarse gmsh disk and the 42-gon disk of ``meshes/disk.msh``: fine dofs outside
    the coarse polygon are extrapolated from the nearest coarse cell, which is still
    exact for functions of the coarse space, and rank independent."""
    import gmsh

    path = Path(tmp_shared) / "coarse_disk.msh"
    if comm.rank == 0:
        gmsh.initialize(interruptible=False)
        try:
            gmsh.option.setNumber("General.Terminal", 0)
            gmsh.model.add("coarse_disk")
            d = gmsh.model.occ.addDisk(0, 0, 0, 1, 1)
            gmsh.model.occ.synchronize()
            gmsh.model.addPhysicalGroup(2, [d], 1)
            gmsh.option.setNumber("Mesh.MeshSizeMax", 0.6)
            gmsh.model.mesh.generate(2)
            gmsh.write(str(path))
        finally:
            gmsh.finalize()
    comm.barrier()

    def spaces(c):
        return (NodeSpace(read_node_mesh(path, c), family, degree, mass),
                NodeSpace(read_node_mesh(MESHES / "disk.msh", c), family, degree, mass))

    coarse, fine = spaces(comm)
    I = interpolation_matrix(coarse, fine)
    g = exact_in_space(degree, natural_coordinates(coarse))
    assert np.abs(I @ g - exact_in_space(degree, natural_coordinates(fine))).max() < 1e-12
    assert np.abs(I - interpolation_matrix(*spaces(MPI.COMM_SELF))).max() <= ENTRY_ROUNDING


@pytest.mark.mpi
def test_interpolation_dimension_mismatch(comm):
    a = NodeSpace(create_node_mesh(comm, "interval", 4))
    b = NodeSpace(create_node_mesh(comm, "rectangle", 2))
    with pytest.raises(InputError, match="geometric dimension"):
        interpolation_matrix(a, b)


# --------------------------------------------------------------------------- depth
def test_depth_matrix():
    D = depth_matrix(Depth(T=2.0, N=3), Depth(T=2.0, N=5))  # non-nested layers
    # fine midpoints 0.2 0.6 1.0 1.4 1.8 in coarse layers [0,2/3), [2/3,4/3), [4/3,2]
    assert np.array_equal(np.argmax(D, axis=1), [0, 0, 1, 2, 2]) and np.all(D.sum(axis=1) == 1)
    graded = Depth(points=[0.0, 0.1, 0.3, 1.0])
    assert np.array_equal(depth_matrix(graded, graded), np.eye(3))
    assert np.array_equal(np.argmax(depth_matrix(graded, Depth(T=1.0, N=4)), axis=1), [1, 2, 2, 2])
    with pytest.raises(InputError, match="different depths"):
        depth_matrix(Depth(T=1.0, N=2), Depth(T=2.0, N=4))


# --------------------------------------------------------------------------- controls
A = lambda y, t: 0.5 * np.sin(np.pi * y[0]) * np.cos(np.pi * t) + 0.2  # noqa: E731


def B(y, z, t):
    return (1.5 * np.cos(np.pi * (y[0][:, None] - z[0][None, :])) - 0.3) * (1.0 + 0.5 * t)


def W_function(y, z):
    return np.exp(-((y[0][:, None] - z[0][None, :]) ** 2))


def W_classes(z):
    return 2.0 * np.vstack([np.cos(np.pi * z[0]), np.sin(np.pi * z[0]), 2.0 * z[0] - 1.0])


def inputs(y):
    return np.vstack([np.cos(2 * np.pi * y[0]), 0.3 + y[0] ** 2, np.sin(np.pi * y[0]) - 0.5])


def setup(comm, n, N, kind, family="DG", degree=0, mass="lumped", scheme="euler"):
    net = Network(NodeSpace(create_node_mesh(comm, "interval", n), family, degree, mass), Depth(T=1.0, N=N), "tanh", scheme)
    cs = ControlSpace(net, kind, K=3)
    if kind == "classes":
        r = net.make_readout("classes", W=W_classes, mu=np.array([0.1, 0.0, -0.1]))
    else:
        r = net.make_readout("function", W=W_function, mu=lambda y: 0.1 * y[0])
    return net, cs, cs.join(net.make_controls(a=A, b=B), r)


def output(net, cs, m, f_I):
    c, r = cs.split(m)
    O = net.readout(net.forward(f_I, c).final, r)
    return O if cs.kind == "classes" else net.space.to_natural(O, axis=0)


@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["function", "classes"])
def test_transfer_to_same_discretisation_is_identity(comm, kind):
    net, cs, m = setup(comm, 8, 3, kind, "P", 1, "lumped")
    net2, cs2, _ = setup(comm, 8, 3, kind, "P", 1, "lumped")
    mt = transfer_controls(cs, m, cs2)
    before, after = cs.natural(m), cs2.natural(mt)
    for key in before:
        assert np.abs(after[key] - before[key]).max() <= 1e-14, key


@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["function", "classes"])
def test_transfer_parallel_matches_serial(comm, kind):
    """Non-nested widths and depths (6 -> 9 nodes, 4 -> 6 layers), P1."""

    def run(c):
        _, cs, m = setup(c, 6, 4, kind, "P", 1, "lumped")
        _, csf, _ = setup(c, 9, 6, kind, "P", 1, "lumped")
        return csf.natural(transfer_controls(cs, m, csf))

    par, ser = run(comm), run(MPI.COMM_SELF)
    for key in ser:
        assert np.abs(par[key] - ser[key]).max() <= 1e-14 * max(1.0, np.abs(ser[key]).max()), key


@pytest.mark.mpi
@pytest.mark.parametrize(
    "family,degree,mass,scheme,order",
    [("DG", 0, "lumped", "euler", 1), ("P", 1, "lumped", "heun", 2)],
)
def test_transfer_keeps_output(comm, family, degree, mass, scheme, order):
    """Coarse network (n, N) and the network on (2n, 2N) with the transferred controls:
    the readout outputs differ by the coarse level's discretisation error, which
    decreases with the order of the scheme under refinement of the coarse level."""
    diffs, rel = [], []
    for n, N in [(8, 4), (16, 8), (32, 16), (64, 32)]:
        net, cs, m = setup(comm, n, N, "function", family, degree, mass, scheme)
        fnet, fcs, _ = setup(comm, 2 * n, 2 * N, "function", family, degree, mass, scheme)
        mf = transfer_controls(cs, m, fcs)
        Oc, Of = output(net, cs, m, inputs), output(fnet, fcs, mf, inputs)
        I = interpolation_matrix(net.space, fnet.space)
        w = fnet.space.weights_all[np.argsort(fnet.space.nat_of_global)]  # natural order
        l2 = np.sqrt(w @ (Of - I @ Oc) ** 2)  # per input
        diffs.append(l2.mean())
        rel.append((l2 / np.sqrt(w @ Of**2)).max())
    rates = observed_orders(diffs)
    assert np.all(np.abs(rates - order) < 0.2), (diffs, rates)
    assert rel[0] < 0.05 and rel[-1] < 0.05 / 2 ** (3 * order - 1), rel


@pytest.mark.mpi
def test_transfer_keeps_predicted_class(comm):
    def f_I(y):
        c, s = np.cos(np.pi * y[0]), np.sin(np.pi * y[0])
        return np.vstack([c, -c, s, -s, 1 - 2 * y[0], s - 0.3 * c, 2 * c, 2 * s, -2 * s, 0.5 - 2 * y[0]])

    for n, N in [(8, 4), (16, 8)]:
        net, cs, m = setup(comm, n, N, "classes")
        fnet, fcs, _ = setup(comm, 2 * n, 2 * N, "classes")
        Oc, Of = output(net, cs, m, f_I), output(fnet, fcs, transfer_controls(cs, m, fcs), f_I)
        top = np.sort(Oc, axis=0)
        assert np.all(top[-1] - top[-2] > 2 * np.abs(Of - Oc).max())  # a meaningful margin
        assert np.array_equal(Oc.argmax(axis=0), Of.argmax(axis=0))
        assert set(Oc.argmax(axis=0)) == {0, 1, 2}


@pytest.mark.mpi
def test_transfer_kind_mismatch(comm):
    _, cs, m = setup(comm, 4, 2, "classes")
    _, fcs, _ = setup(comm, 8, 4, "function")
    with pytest.raises(InputError, match="cannot transfer 'classes'"):
        transfer_controls(cs, m, fcs)
    net4 = Network(NodeSpace(create_node_mesh(comm, "interval", 8)), Depth(T=1.0, N=4))
    with pytest.raises(InputError, match="K=3 classes to K=4"):
        transfer_controls(cs, m, ControlSpace(net4, "classes", K=4))
