"""The costate equation on the (depth, node) mesh: the discrete costate (the exact
transpose of each depth scheme) is consistent with

    d/dt r = B_b^T(sigma'(u) r) + gamma r - eps Lap_y r,   r(T) = f(T) - target   (docs/model.md §3),

checked by its space-time residual, and it can be written for ParaView."""

from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.core import forms
from fem_dnn.core.depth import Depth, ProductMesh
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.app.output import write_trajectory
from fem_dnn.network import ORDER, SCHEMES, Network
from fem_dnn.learning.verify import costate_residual_norm, state_residual_norm

from conftest import observed_orders, on_ranks

#: smallest accepted observed order of the residual (theory: min(p, 2), 10% below it)
MIN_ORDER = {s: 0.9 * min(p, 2) for s, p in ORDER.items()}


def problem(net):
    """Smooth data: depth-dependent bias and selection weight, input, and the target of
    the terminal cost Phi = 1/2 ||f(T) - target||^2."""
    c = net.make_controls(
        a=lambda y, t: 0.5 * np.sin(np.pi * y[0]) + 0.2 + t,
        b=lambda y, z, t: (1.5 + 0.5 * t) * np.cos(np.pi * (y[0][:, None] - z[0][None, :])) - 0.3,
    )
    return (lambda y: np.cos(2 * np.pi * y[0])), c, (lambda y: 0.3 * np.sin(np.pi * y[0]))


def solve(net):
    """Forward and costate solves; lam_T = dPhi/df(T) = M (f(T) - target)."""
    f0, c, target = problem(net)
    traj = net.forward(f0, c, tape=True)
    sp = net.space
    lam_T = sp.apply_mass(np.asfortranarray(traj.final - sp.interpolate(target)[:, None]))
    costate, _ = net.costate(traj, lam_T)
    return traj, costate


def residuals(space, scheme, eps, Ns=(4, 8, 16, 32), decay=0.0):
    res = []
    for N in Ns:
        net = Network(space, Depth(1.0, N), "tanh", scheme, eps=eps, decay=decay)
        traj, costate = solve(net)
        res.append(costate_residual_norm(net, traj, costate))
        net.destroy()
    return res


@pytest.mark.mpi(ranks=(2,))
@pytest.mark.parametrize("eps,decay", [(0.0, 0.0), (0.02, 0.0), (0.0, 0.8)])
@pytest.mark.parametrize("scheme", on_ranks(SCHEMES, ["heun"]))
@pytest.mark.parametrize("family,degree,mass", [("DG", 0, "lumped"), ("P", 1, "consistent")])
def test_costate_residual_vanishes_at_scheme_rate(comm, family, degree, mass, scheme, eps, decay):
    space = NodeSpace(create_node_mesh(comm, "interval", 12), family, degree, mass)
    # Euler's costate error has a large O(tau^2) part: refine further to see order 1
    res = residuals(space, scheme, eps, Ns=(8, 16, 32, 64) if scheme == "euler" else (4, 8, 16, 32), decay=decay)
    rates = observed_orders(res)
    expected = min(ORDER[scheme], 2)  # the linear-in-depth representation caps it at 2
    assert np.all(np.diff(res) < 0), (res, rates)
    assert MIN_ORDER[scheme] <= rates[-1] < expected + 0.3, (res, rates)


@pytest.mark.parametrize("family,degree,mass", [("DG", 0, "lumped"), ("P", 1, "consistent")])
def test_costate_residual_detects_wrong_diffusion_sign(monkeypatch, comm, family, degree, mass):
    """The check is sharp: with the state equation's diffusion sign (i.e. r solving a
    backward heat equation forward) the residual does not vanish under refinement."""
    space = NodeSpace(create_node_mesh(comm, "interval", 12), family, degree, mass)
    right = residuals(space, "midpoint", 0.02, Ns=(8, 16))
    orig = forms.costate_residual
    monkeypatch.setattr(forms, "costate_residual", lambda r, BTsr, v, eps=0.0, *a, **k: orig(r, BTsr, v, -eps, *a, **k))
    wrong = residuals(space, "midpoint", 0.02, Ns=(8, 16))
    assert right[1] < 0.3 * right[0]
    assert wrong[1] > 0.9 * wrong[0] and wrong[1] > 1e3 * right[1], (right, wrong)


@pytest.mark.parametrize("family,degree,mass", [("DG", 0, "lumped"), ("P", 1, "consistent")])
def test_residuals_detect_a_wrong_decay_sign(monkeypatch, comm, family, degree, mass):
    """The residual checks see the relaxation term: with its sign flipped in the state's or
    the costate's form the residual of the decaying network stays put under refinement."""
    space = NodeSpace(create_node_mesh(comm, "interval", 12), family, degree, mass)
    right = residuals(space, "midpoint", 0.0, Ns=(8, 16), decay=0.8)

    def states(Ns):
        out = []
        for N in Ns:
            net = Network(space, Depth(1.0, N), "tanh", "midpoint", decay=0.8)
            f0, c, _ = problem(net)
            out.append(state_residual_norm(net, net.forward(f0, c)))
            net.destroy()
        return out

    state_right = states((8, 16))
    for name in ("state_residual", "costate_residual"):
        orig = getattr(forms, name)
        monkeypatch.setattr(forms, name, lambda *a, decay=0.0, _f=orig, **k: _f(*a, decay=-decay, **k))
        wrong = states((8, 16)) if name == "state_residual" else residuals(space, "midpoint", 0.0, Ns=(8, 16), decay=0.8)
        good = state_right if name == "state_residual" else right
        monkeypatch.setattr(forms, name, orig)
        assert good[1] < 0.3 * good[0], (name, good)
        assert wrong[1] > 0.9 * wrong[0] and wrong[1] > 100 * good[1], (name, good, wrong)


@pytest.mark.mpi
@pytest.mark.parametrize("family,degree,mass", [("DG", 0, "lumped"), ("P", 1, "consistent")])
def test_costate_residual_same_on_all_ranks(comm, family, degree, mass):
    def run(c_):
        space = NodeSpace(create_node_mesh(c_, "interval", 12), family, degree, mass)
        net = Network(space, Depth(1.0, 6), "tanh", "heun", eps=0.01)
        traj, costate = solve(net)
        out = costate_residual_norm(net, traj, costate)
        net.destroy()
        return out

    ref = run(MPI.COMM_SELF)
    assert abs(run(comm) - ref) <= 1e-12 * ref


@pytest.mark.mpi
@pytest.mark.parametrize("family,degree", [("DG", 0), ("P", 1)])
def test_write_costate(comm, tmp_shared, family, degree):
    space = NodeSpace(create_node_mesh(comm, "interval", 8), family, degree)
    net = Network(space, Depth(1.0, 4), "tanh", "rk4", eps=0.01)
    traj, costate = solve(net)
    r = costate.r()[:, 0, :]
    assert np.allclose(r[-1], traj.states[-1, 0] - space.interpolate(problem(net)[2]))  # r(T) = f(T) - target
    paths = write_trajectory(
        tmp_shared, ProductMesh(space, net.depth), {"f": traj.states[:, 0, :], "r": r}, {"a": traj.controls.a}, stem="costate"
    )
    comm.barrier()
    for p in paths:
        assert Path(p).exists()
    folder = Path(tmp_shared)
    assert (folder / "costate.xdmf").exists() and (folder / "costate.h5").exists()
    assert (folder / "costate.bp").is_dir()
    if comm.rank == 0:
        text = (folder / "costate.xdmf").read_text()
        for name in ("f", "r", "a"):
            assert f'Name="{name}"' in text
    net.destroy()
