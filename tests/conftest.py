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
ranks.

What several test files share lives here, not in a test module that another imports:
the bumps learning problem (:func:`bumps_problem`; the fixture ``bumps`` destroys what it
built when the test ends, passed or failed, as ``cleanup`` does for any object and
:func:`destroying` for a block), ``mpirun``, and the background ``fem-dnn`` runs and run
folders of test_faults and test_interrupt (:class:`Job`, :func:`run`, :func:`reference`,
:func:`check_checkpoint`)."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def destroying(*objects):
    """The block's ``objects`` (each with a ``destroy()``), destroyed when the block ends,
    the last first, also when an assert in it fails: ``with destroying(*bumps_problem(...))
    as (net, J):``. PETSc objects left to the garbage collector are destroyed at different
    moments on different ranks."""
    try:
        yield objects
    finally:
        for obj in reversed(objects):
            obj.destroy()


@pytest.fixture
def cleanup():
    """``cleanup(*objects)``: the objects (one: itself) destroyed when the test ends,
    passed or failed, the last registered first."""
    kept = []

    def keep(*objects):
        kept.extend(objects)
        return objects[0] if len(objects) == 1 else objects

    yield keep
    for obj in reversed(kept):
        obj.destroy()


@pytest.fixture
def bumps(cleanup):
    """``bumps(comm, n, N, **kw)``: the ``(network, J)`` of :func:`bumps_problem`,
    destroyed when the test ends."""
    return lambda *args, **kw: cleanup(*bumps_problem(*args, **kw))


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


# --------------------------------------------------------------------------- command-line runs
def mpirun():
    """The mpirun of this Python's environment, else the one on PATH (None: none)."""
    local = Path(sys.executable).parent / "mpirun"
    return str(local) if local.exists() else shutil.which("mpirun") or shutil.which("mpiexec")


# ``fem-dnn`` runs in the background and their run folders (test_faults, test_interrupt)
HERE = Path(__file__).resolve().parent
serial_only = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="launches its own processes from the serial session")
needs_mpirun = pytest.mark.skipif(mpirun() is None, reason="no mpirun")


#: Every rank must be gone this long after a fault (measured: well under a second).
EXIT_BOUND = 30.0

#: Small digits runs (160 training / 40 test images, 64 neurons, 2 layers) checkpointing
#: every iteration. L-BFGS with lambda = 0.05 converges (|g| reduced by 1e-5) in 68
#: iterations; Adam runs 10 epochs of 10 steps. The tolerance keeps the run clear of
#: J's float64 resolution (J = 2.2): a decrease is there to be found only while it
#: exceeds J's rounding noise (:meth:`fem_dnn.optimize.Optimizer.resolution`). At 1e-5
#: the last line searches see decreases 1100-4200 times the noise (measured on 1, 2 and
#: 3 ranks); at 1e-6 (the default, which this config had) only 3.4-16 times, which is
#: where the Optimizer declares float32 runs at their resolution: whether they still
#: converged was rounding luck. (At 1e-8 a resumed run once stopped on a line-search
#: failure.)
BASE = ["data.samples=200", "network.N=2", "training.checkpoint_every=1", "output.figures=false",
        "output.fields=false", "output.plot_samples=0"]
LBFGS = BASE + ["training.method='lbfgs'", "training.lam=5e-2", "training.gttol=1e-5", "training.max_it=1000"]
ADAM = BASE + ["training.method='adam'", "training.epochs=10", "training.batch_size=16", "training.lr=1e-2"]
#: L-BFGS stopped after 30 iterations, before round-off differences grow (see
#: test_same_results_on_1_2_3_ranks).
LBFGS30 = LBFGS + ["training.max_it=30"]
CONFIGS = {"lbfgs": LBFGS, "adam": ADAM, "lbfgs30": LBFGS30}
#: metrics.csv columns that count solves in the current process: a resumed run starts
#: them again, so they are not part of the result.
COUNTERS = ("forward", "costate", "incremental_forward", "incremental_costate")
PROGRESS = re.compile(r"^(it|epoch)\s+(\d+)\s")
#: summary.json's wall-clock times: the only entries that differ between identical runs.
TIMES = ("seconds", "training_seconds", "evaluation_seconds")


# --------------------------------------------------------------------------- processes
def _command(args, ranks):
    exe = [sys.executable, "-m", "fem_dnn.app.cli"] if args[:1] != ["inject"] else [sys.executable, str(HERE / "inject_fault.py")]
    args = args if args[:1] != ["inject"] else args[1:]
    return exe + list(args) if ranks == 1 else [mpirun(), "-n", str(ranks)] + exe + list(args)


class Job:
    """A ``fem-dnn`` run in the background (own session), its output read as it comes."""

    def __init__(self, args, cwd, ranks=1):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.p = subprocess.Popen(_command(args, ranks), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True)
        self.lines, self.err = [], []
        self._readers = [threading.Thread(target=self._read, args=(s, out), daemon=True)
                         for s, out in ((self.p.stdout, self.lines), (self.p.stderr, self.err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, out):
        for line in stream:
            out.append((time.monotonic(), line.rstrip("\n")))

    @property
    def stdout(self):
        return "\n".join(text for _, text in self.lines)

    @property
    def stderr(self):
        return "\n".join(text for _, text in self.err)

    def progress(self):
        """The iterations (epochs) printed so far."""
        return [int(m.group(2)) for _, text in self.lines if (m := PROGRESS.match(text))]

    def wait_for_progress(self, timeout=120.0) -> bool:
        """Wait until training prints its first iteration line; False if the run ended first."""
        deadline = time.monotonic() + timeout
        while not self.progress():
            if self.p.poll() is not None:
                return False
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"no training progress within {timeout} s:\n{self.stdout[-2000:]}\n{self.stderr[-2000:]}")
            time.sleep(0.01)
        return True

    def rank_pids(self) -> dict:
        """{rank: pid} of the MPI processes under this job's mpirun (from /proc)."""
        children = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(d))
        ranks, todo = {}, [self.p.pid]
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"PMI_RANK="):
                    ranks[int(item.split(b"=", 1)[1])] = pid
        return ranks

    def wait(self, timeout) -> float:
        """Wait for the end (stop everything and fail after ``timeout``); the seconds waited."""
        t0 = time.monotonic()
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"the run did not end within {timeout} s:\n{self.stdout[-2000:]}\n{self.stderr[-2000:]}")
        self.ended, self.ended_wall = time.monotonic(), time.time()
        for t in self._readers:
            t.join(timeout=10)
        return self.ended - t0

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)  # this job's own session
        except ProcessLookupError:
            pass
        self.p.wait()


def run(args, cwd, ranks=1, timeout=600) -> Job:
    job = Job(args, cwd, ranks)
    job.wait(timeout)
    assert job.p.returncode == 0, f"exit {job.p.returncode}\n{job.stdout[-3000:]}\n{job.stderr[-3000:]}"
    return job


def sets(items, folder):
    return sum((["--set", s] for s in items + [f"output.folder='{folder}'"]), [])


def read_metrics(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def read_summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def result(folder: Path) -> dict:
    """What a run computed (strings exactly as written): metrics.csv without the solve
    counters, and summary.json without the wall time and solve counts."""
    rows = [{k: v for k, v in r.items() if k not in COUNTERS} for r in read_metrics(folder)]
    summary = {k: v for k, v in read_summary(folder).items() if k not in TIMES + ("solves",)}
    return {"metrics": rows, "summary": summary}


def check_checkpoint(folder: Path) -> dict:
    """The run folder's checkpoint after a kill: the newest complete checkpoint is
    ``checkpoint.npz`` itself (atomic replace with a hard-linked .prev), its SHA-256
    checksum matches, and it loads into the run's control space. Returns its state."""
    from fem_dnn.app.checkpoint import _read_verified, latest_checkpoint

    ckpt = folder / "checkpoint"
    latest = latest_checkpoint(ckpt, comm=MPI.COMM_SELF)
    assert latest == ckpt / "checkpoint.npz", sorted(p.name for p in ckpt.iterdir())
    _read_verified(latest)  # checksum, format, every entry present
    names = sorted(p.name for p in ckpt.iterdir() if not p.name.endswith(".tmp"))
    assert names in (["checkpoint.npz"], ["checkpoint.npz", "checkpoint.prev.npz"]), names
    for leftover in ckpt.glob(".*.tmp"):  # a temporary of the interrupted write: never under the real name
        assert leftover.name.startswith(".checkpoint.")
    return _load_state(folder, latest)


def _load_state(folder: Path, path: Path) -> dict:
    from fem_dnn.app.checkpoint import load_checkpoint
    from fem_dnn.app.config import load_config
    from fem_dnn.app.run import Run

    run_ = _runs.get(folder)
    if run_ is None:
        run_ = _runs[folder] = Run(load_config(folder / "config.toml"), MPI.COMM_SELF, out=lambda *a: None)
    m, state, _ = load_checkpoint(path, run_.J.controls)
    m.destroy()
    return state


_runs = {}


@pytest.fixture(autouse=True)
def _destroy_runs():
    yield
    for r in _runs.values():
        r.destroy()
    _runs.clear()


# --------------------------------------------------------------------------- references
_REFERENCE = {}


def reference(name, ranks, tmp_path_factory):
    """The uninterrupted run of config ``name`` on ``ranks`` ranks (once per process: a
    pytest-xdist worker computes the references its tests need): its folder and the
    seconds its training printed progress for."""
    key = (name, ranks)
    if key not in _REFERENCE:
        cwd = tmp_path_factory.mktemp(f"ref_{name}_{ranks}")
        job = run(["train"] + sets(CONFIGS[name], "out"), cwd, ranks)
        times = [t for t, text in job.lines if PROGRESS.match(text)]
        _REFERENCE[key] = (cwd / "out", times[-1] - times[0])
    return _REFERENCE[key]
