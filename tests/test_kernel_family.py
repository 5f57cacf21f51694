"""A new kernel family is one class and its entry of KERNELS: a diagonal kernel defined in
this file alone, registered, trains from a config through the command line (its own
config key, the memory model, the checkpoint, the fields and figures, evaluate), and its
gradient and Hessian action pass the Taylor test on 1, 2 and 3 ranks."""

import csv
import json

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.app.config import defaults, load_config, to_toml
from fem_dnn.core.kernel import KERNELS, Kernel, KernelMemory, register
from fem_dnn.errors import InputError
from fem_dnn.learning.verify import taylor_test


class DiagonalKernel(Kernel):
    """``b(y, z, t) = gain beta(y, t) delta(y - z)``: ``B_b f = gain beta f``, one
    coefficient a node dof (owned rows), L2 in y times the depth operator."""

    name = "diagonal"
    summary = "gain beta(y) delta(y - z), a test family"
    config = {"kernel_gain": (1.0, float, (lambda v: v > 0, "> 0"), "diagonal kernel: the factor of beta")}

    def __init__(self, space, gain=1.0):
        super().__init__(space)
        self.gain = float(gain)

    @classmethod
    def memory(cls, network, node, *, N, n, n_local, cells, gdim):
        return KernelMemory(N * n, N * n_local, gathered=n_local, image=n)

    # ---- the operator
    def apply(self, b, F):
        return np.asfortranarray(self.gain * (b[:, None] * F if np.ndim(F) == 2 else b * F))

    def apply_transpose(self, b, V, scale=1.0):
        return self.apply(scale * b, V)

    def outer(self, Z, F, b=None, scale=1.0):
        return scale * self.gain * (Z * F).sum(axis=1)

    # ---- the control block
    def shape(self):
        return (self.space.n_local,)

    def natural_shape(self, N):
        return (N, self.space.n)

    def from_natural(self, b_nat):
        return np.asarray(b_nat, dtype=float)[:, self.space.nat_owned]

    def to_natural(self, block):
        return self.space.to_natural(block, axis=1)

    def weigh(self, block, out, depth, inverse):
        w = self.space.weights[: self.space.n_local]
        out[:] = depth.solve(block / w) if inverse else depth.apply(block * w)
        return out

    def diagonal(self):
        return (self.space.diagonal_weights()[0],)

    def describe(self):
        return {"kernel": self.name, "kernel_gain": self.gain}


@pytest.fixture
def diagonal():
    """The family registered for one test (the registry is the only place that names it)."""
    register(DiagonalKernel)
    try:
        yield DiagonalKernel
    finally:
        KERNELS.pop(DiagonalKernel.name)


SETS = ["network.kernel='diagonal'", "network.kernel_gain=0.5", "data.samples=120", "network.N=2",
        "output.plot_samples=1", "training.lam=1e-3"]


def test_the_config_reads_the_registry(diagonal):
    """While registered the family is a choice of network.kernel with its key documented;
    unregistered, both are refused again."""
    cfg = load_config(None, SETS)
    assert cfg["network"]["kernel"] == "diagonal" and cfg["network"]["kernel_gain"] == 0.5
    text = to_toml(defaults())
    assert "diagonal (gain beta(y) delta(y - z), a test family)" in text and "kernel_gain = 1.0" in text
    with pytest.raises(InputError, match="network.kernel_gain = -1.0 must be > 0"):
        load_config(None, ["network.kernel_gain=-1"])
    KERNELS.pop("diagonal")
    try:
        with pytest.raises(InputError, match=r"network.kernel = 'diagonal' must be one of \['dense', 'local', 'lowrank'\]"):
            load_config(None, SETS[:1])
        with pytest.raises(InputError, match="unknown key network.kernel_gain"):
            load_config(None, SETS[1:2])
    finally:
        register(DiagonalKernel)


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="runs the command line in-process, serially")
def test_a_new_family_trains_from_a_config(diagonal, tmp_path, monkeypatch, capsys):
    """``fem-dnn train`` (the dry run's memory model, then training with the fields and
    figures) and ``fem-dnn evaluate`` with the family: the checkpoint records it and its
    parameter, J decreases."""
    from fem_dnn.app.cli import main

    monkeypatch.chdir(tmp_path)
    sets = sum((["--set", s] for s in SETS + ["training.max_it=8", "output.folder='out'"]), [])
    assert main(["train", "--dry-run"] + sets) == 0
    assert "peak per rank" in capsys.readouterr().out
    assert main(["train"] + sets) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    with open(tmp_path / "out" / "metrics.csv", newline="") as fh:
        J = [float(row["J"]) for row in csv.DictReader(fh)]
    assert summary["iterations"] == 8 and J[-1] < 0.9 * J[0], J
    assert (tmp_path / "out" / "weights.png").is_file()
    capsys.readouterr()
    assert main(["evaluate", "out"]) == 0
    assert "test" in capsys.readouterr().out
    with np.load(tmp_path / "out" / "checkpoint" / "checkpoint.npz") as f:
        meta = json.loads(f["meta"].tobytes().decode())
    assert (meta["kernel"], meta["kernel_gain"]) == ("diagonal", 0.5)


@pytest.mark.mpi
def test_a_new_family_passes_the_taylor_test(diagonal, comm):
    """The reduced functional that a config builds with the family: gradient rate 2 and
    Hessian action rate 3 (a family linear in b: the default tangents), on 1, 2 and 3
    ranks; B^T and the outer product are exact adjoints."""
    from fem_dnn.app.run import Run

    run = Run(load_config(None, SETS), comm, out=lambda *a: None)
    J, kern = run.J, run.net.kernel
    assert isinstance(kern, DiagonalKernel) and kern.gain == 0.5
    rng = np.random.default_rng(comm.rank)
    F, V, b = (np.asfortranarray(rng.normal(size=(run.space.n_local, 3))) for _ in range(3))
    b = b[:, 0]
    pairing = comm.allreduce(float(np.vdot(V, kern.apply(b, F))))
    assert np.isclose(pairing, comm.allreduce(float(np.vdot(kern.apply_transpose(b, V), F))), rtol=1e-14)
    assert np.isclose(pairing, comm.allreduce(float(kern.reduce(kern.outer(V, F)) @ b)), rtol=1e-14)
    m, dm = J.controls.random(1, 0.5), J.controls.random(2)
    res = taylor_test(J, m, dm, J.derivative(m), J.hessian(m, dm), step=1e-2, n_steps=4)
    assert res.min_rate(1) > 1.9, str(res)
    assert res.min_rate(2) > 2.85, str(res)
    for v in (m, dm):
        v.destroy()
    run.destroy()
