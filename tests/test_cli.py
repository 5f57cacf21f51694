"""The fem-dnn command line: a forward run writes its output; bad input exits 2."""

import subprocess
import sys

import pytest
from mpi4py import MPI

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="subprocesses from the serial session")


def run(args, cwd):
    return subprocess.run([sys.executable, "-m", "fem_dnn.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_forward_writes_output(tmp_path):
    r = run(["forward", "--scheme", "midpoint", "--N", "4", "--n", "8", "-fem_dnn_midpoint_snes_max_it", "20", "--out", "o"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "||f(T)||_L2" in r.stdout
    assert (tmp_path / "o" / "trajectory.xdmf").exists()


@pytest.mark.parametrize(
    "args,msg",
    [
        (["forward", "--activation", "swish"], "unknown activation"),
        (["forward", "--scheme", "leapfrog"], "unknown depth scheme"),
        (["forward", "--T", "-1"], "positive"),
        (["forward", "--N", "0"], "layers"),
        (["forward", "--mesh", "missing.msh"], "does not exist"),
    ],
)
def test_bad_input_exit_2(tmp_path, args, msg):
    r = run(args, tmp_path)
    assert r.returncode == 2
    assert msg in r.stderr and "Traceback" not in r.stderr
