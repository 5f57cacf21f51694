"""The fem-dnn command line: a forward run writes its output; bad input exits 2."""

import subprocess
import sys

import pytest
from mpi4py import MPI

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="subprocesses from the serial session")


def run(args, cwd):
    return subprocess.run([sys.executable, "-m", "fem_dnn.app.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_forward_writes_output(tmp_path):
    r = run(["forward", "--scheme", "midpoint", "--N", "4", "--n", "8", "--decay", "0.5", "-fem_dnn_midpoint_snes_max_it", "20",
             "--out", "o"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "||f(T)||_L2" in r.stdout
    assert (tmp_path / "o" / "trajectory.xdmf").exists()


@pytest.mark.parametrize(
    "args,msg",
    [
        (["forward", "--activation", "swish"], "argument --activation: invalid choice: 'swish'"),
        (["forward", "--scheme", "leapfrog"], "argument --scheme: invalid choice: 'leapfrog'"),
        (["forward", "--T", "-1"], "positive"),
        (["forward", "--N", "0"], "layers"),
        (["forward", "--mesh", "missing.msh"], "does not exist"),
        (["forward", "--decay", "-1"], "the relaxation rate decay must be >= 0"),
    ],
)
def test_bad_input_exit_2(tmp_path, args, msg):
    r = run(args, tmp_path)
    assert r.returncode == 2
    assert msg in r.stderr and "Traceback" not in r.stderr


def test_forward_takes_numpy_names_and_writes_3d_domains(tmp_path):
    """``np.sin(np.pi*x)`` is the documented "numpy expression"; a box node domain gets
    its depth series on the node mesh (no (depth, node) mesh over 3D cells)."""
    r = run(["forward", "--shape", "box", "--n", "2", "--N", "3", "--input", "np.sin(np.pi*x) * numpy.cos(y)", "--out", "o"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "trajectory.bp").is_dir() and "wrote" in r.stdout and "nothing" not in r.stdout
    r = run(["forward", "--input", "np.linalg.norm(x)"], tmp_path)
    assert r.returncode == 2 and "only plain calls" in r.stderr


def test_help_texts_show_defaults_and_no_markup(tmp_path):
    top = run(["--help"], tmp_path).stdout
    assert "``" not in top and ":func:" not in top and "fem-dnn train" in top
    fwd = run(["forward", "--help"], tmp_path).stdout
    assert "(default: sin(pi*x))" in fwd and "(default: 16)" in fwd and "np.sin" in fwd
    assert "(default: False)" in run(["train", "--help"], tmp_path).stdout
