"""The (depth, node) mesh: trajectories as functions on it, output, and the space-time
residual of the state equation (an independent check of the depth schemes)."""

from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.core.depth import Depth, ProductMesh
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.app.output import write_trajectory
from fem_dnn.network import ORDER, SCHEMES, Network
from fem_dnn.learning.verify import state_residual_norm

from conftest import observed_orders, on_ranks


def problem(net):
    # depth-dependent bias: the controls are sampled at layer midpoints
    c = net.make_controls(
        a=lambda y, t: 0.5 * np.sin(np.pi * y[0]) + 0.2 + t,
        b=lambda y, z, t: 1.5 * np.cos(np.pi * (y[0][:, None] - z[0][None, :])) - 0.3,
    )
    return (lambda y: np.cos(2 * np.pi * y[0])), c


@pytest.mark.mpi(ranks=(2,))
@pytest.mark.parametrize("eps,decay", [(0.0, 0.0), (0.02, 0.0), (0.0, 0.8)])
@pytest.mark.parametrize("scheme", on_ranks(SCHEMES, ["heun"]))
@pytest.mark.parametrize("family,degree,mass", [("DG", 0, "lumped"), ("P", 1, "consistent")])
def test_residual_vanishes_at_scheme_rate(comm, family, degree, mass, scheme, eps, decay):
    space = NodeSpace(create_node_mesh(comm, "interval", 12), family, degree, mass)
    res = []
    for N in (8, 16, 32):
        net = Network(space, Depth(1.0, N), "tanh", scheme, eps=eps, decay=decay)
        f0, c = problem(net)
        res.append(state_residual_norm(net, net.forward(f0, c)))
        net.destroy()
    expected = min(ORDER[scheme], 2)
    if eps > 0 and scheme != "midpoint":
        expected = min(expected, 2)  # splitting
    rates = observed_orders(res)
    assert abs(rates[-1] - expected) < 0.15, (res, rates)


@pytest.mark.mpi
def test_residual_same_on_all_ranks(comm):
    def run(c_):
        space = NodeSpace(create_node_mesh(c_, "interval", 12), "P", 1, "consistent")
        net = Network(space, Depth(1.0, 6), "tanh", "heun", eps=0.01)
        f0, c = problem(net)
        return state_residual_norm(net, net.forward(f0, c))

    assert abs(run(comm) - run(MPI.COMM_SELF)) <= 1e-12 * run(MPI.COMM_SELF)


@pytest.mark.mpi
@pytest.mark.parametrize("family,degree", [("DG", 0), ("P", 1)])
def test_product_function_values(comm, family, degree):
    """f(y, t_k) on the product mesh equals the node state at depth level k."""
    space = NodeSpace(create_node_mesh(comm, "interval", 7), family, degree)
    depth = Depth(points=[0.0, 0.1, 0.5, 1.2])
    pm = ProductMesh(space, depth)
    levels = np.array([space.x_owned[0] * (k + 1) + k for k in range(depth.N + 1)])
    f = pm.function(levels)
    X = pm.W.tabulate_dof_coordinates()
    k = np.searchsorted(depth.points, X[:, 1] - 1e-12)
    if family == "P":
        assert np.allclose(f.x.array, X[:, 0] * (k + 1) + k, atol=1e-14)
    ncell = comm.allreduce(pm.mesh.topology.index_map(2).size_local)
    assert ncell == 7 * depth.N


@pytest.mark.mpi
def test_write_trajectory(comm, tmp_shared):
    space = NodeSpace(create_node_mesh(comm, "rectangle", 4, cell="triangle"), "P", 1)
    net = Network(space, Depth(1.0, 3), "tanh", "euler")
    traj = net.forward(lambda y: y[0] * y[1], net.make_controls(a=0.1, b=0.5))
    paths = write_trajectory(tmp_shared, ProductMesh(space, net.depth), {"f": traj.states[:, 0, :]}, {"a": traj.controls.a})
    comm.barrier()
    for p in paths:
        assert Path(p).exists()
    import dolfinx.io

    with dolfinx.io.XDMFFile(comm, str(Path(tmp_shared) / "trajectory.xdmf"), "r") as xf:
        m = xf.read_mesh(name="mesh")
    assert comm.allreduce(m.topology.index_map(3).size_local) == 32 * 3  # prisms
