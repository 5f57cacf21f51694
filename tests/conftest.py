"""Shared fixtures and the two test tiers.

Tests are MPI-agnostic: the serial run executes all of them, the MPI runs
(``mpirun -n 2|3 python -m pytest -m mpi``) the ones marked ``mpi``, which compare the
parallel result with a serial one computed in-process on COMM_SELF.

Every test whose result depends on the partition (the ``*_matches_serial``,
``*_same_on_all_ranks`` and ``*_same_iterates`` tests, I/O, meshes, forms) runs on 2 and
3 ranks. A test of a property that holds on any partition once the ranks agree with the
serial run (a Hessian's symmetry, a box, a saving of iterations, no leaks, an order)
says ``mpi(ranks=(2,))``: it runs on 2 ranks, where the parallel code paths are the
same as on 3, and the 3-rank run (three ranks on two cores, about 3 times slower per
test) is left to the partition tests. The slow tier, whose time is not budgeted, runs
its tests on 2 and 3 ranks whatever they say.

Tiers: the default tier is every test not marked ``slow``; ``--slow`` runs the soak
tests marked ``slow`` (long random-kill loops, leak checks over a thousand solves) and
nothing else. ``./run test`` and ``./run test --slow`` run a tier serially and on 2 and 3
ranks."""

import fem_dnn  # noqa: F401  (DOLFINx import order)
import numpy as np
import pytest
from mpi4py import MPI


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="run the slow tier (the soak tests marked 'slow') instead of the default tier")
    parser.addoption("--launchers", choices=("all", "only", "none"), default="all",
                     help="the tests that launch mpirun: with the others (all), alone (only) or not (none)")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Keep the tests of the chosen tier; report the others as deselected.

    Tests that launch ``mpirun`` (marked ``mpirun``, or parametrized with ``ranks`` > 1)
    share one pytest-xdist worker (``--dist loadgroup``) if they run with the others: two
    MPI jobs at once on two cores slow each other down several times (their ranks
    busy-poll). ``./run test`` runs them after the others instead (``--launchers only``):
    a 2-rank job beside a serial test took 2.6 times as long as alone (a quick demo, 28 s
    against 10.7 s), more than the serial tests gain from running beside it."""
    launchers = config.getoption("--launchers")
    keep, drop = [], []
    for item in items:
        ranks = getattr(getattr(item, "callspec", None), "params", {}).get("ranks", 1)
        launches = item.get_closest_marker("mpirun") is not None or ranks > 1
        if launches:
            item.add_marker(pytest.mark.xdist_group("mpirun"))
        wanted = {"all": True, "only": launches, "none": not launches}[launchers]
        (keep if wanted else drop).append(item)
    items[:] = keep
    size, slow, keep = MPI.COMM_WORLD.size, config.getoption("--slow"), []
    for item in items:  # under mpirun: the tests marked for this number of ranks (the slow tier: all)
        mark = item.get_closest_marker("mpi")
        wanted = size == 1 or mark is None or slow or size in mark.kwargs.get("ranks", (2, 3))
        (keep if wanted else drop).append(item)
    items[:] = keep
    slow = config.getoption("--slow")
    keep = []
    for item in items:
        (keep if (item.get_closest_marker("slow") is not None) == slow else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def comm():
    return MPI.COMM_WORLD


#: a test that compares a run on several ranks with the serial run: on one rank it would
#: compare the serial run with itself, so it runs in the 2- and 3-rank tiers only
ranks_vs_serial = pytest.mark.skipif(MPI.COMM_WORLD.size == 1, reason="compares 2 or 3 ranks with 1: runs under mpirun")



def on_ranks(serial: list, parallel: list) -> list:
    """The cases of a parametrised test of a mathematical property (an order, a Taylor
    remainder): every case of ``serial`` on one rank, the ``parallel`` ones under mpirun.
    Its parallel path is the same for every case, and the rank agreement of each case is
    tested on its own (the ``*_matches_serial`` and ``*_same_on_all_ranks`` tests), so
    repeating every case on 2 and 3 ranks would test nothing new."""
    return serial if MPI.COMM_WORLD.size == 1 else parallel


#: the small function-to-function learning problem of the optimiser tests: 8 Gaussian
#: bumps on the unit interval mapped to shifted, squashed bumps
BUMP_CENTRES = np.linspace(0.15, 0.85, 8)


def bump_inputs(y):
    return np.exp(-20.0 * (y[0][None, :] - BUMP_CENTRES[:, None]) ** 2)


def bump_targets(y):
    return 1.0 / (1.0 + np.exp(-2.0 * np.exp(-20.0 * (y[0][None, :] - BUMP_CENTRES[:, None] - 0.1) ** 2) + 0.5))


def bumps_problem(comm, n, N, family="DG", scheme="heun", lam=1e-2, gamma=0.0, sample_groups=1, block_weights=None):
    """``(network, J)``: n cells of the interval, N layers, the bumps problem."""
    from fem_dnn.core.depth import Depth
    from fem_dnn.core.layout import split_comm
    from fem_dnn.core.meshes import create_node_mesh
    from fem_dnn.core.nodes import NodeSpace
    from fem_dnn.learning.functional import ReducedFunctional
    from fem_dnn.network import Network

    layout = split_comm(comm, sample_groups)
    space = NodeSpace(create_node_mesh(layout.node_comm, "interval", n), family, 0 if family == "DG" else 1, "lumped")
    net = Network(space, Depth(T=1.0, N=N), "tanh", scheme, layout=layout)
    return net, ReducedFunctional(net, bump_inputs, bump_targets, "function", lam=lam, gamma=gamma,
                                  block_weights=block_weights)


def observed_orders(errors):
    e = np.asarray(errors)
    return np.log2(e[:-1] / e[1:])


@pytest.fixture
def tmp_shared(tmp_path_factory):
    """A temporary folder with the same path on every rank."""
    path = None
    if MPI.COMM_WORLD.rank == 0:
        path = str(tmp_path_factory.mktemp("shared"))
    return MPI.COMM_WORLD.bcast(path, root=0)
