"""Every demo runs as a test case on 2 ranks, as users run it (``./run demo NAME``).

Demos assert their own claims; ``--quick`` shrinks their sizes. Run from the serial test
session only (a demo under mpirun is launched from here). Not serially as well: the
claims are the same on 1 and 2 ranks, every numerical path of a demo is tested serially
and against the serial result on 2 and 3 ranks by the unit tests, and the serial runs
of all nine took 81 s of test time (about 40 s of the suite's wall time on two workers)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mpi4py import MPI

from conftest import mpirun

DEMOS = sorted((Path(__file__).resolve().parents[1] / "demos").glob("demo_*.py"))


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="demos are launched from the serial session")
@pytest.mark.parametrize("ranks", [2])
@pytest.mark.parametrize("demo", DEMOS, ids=[d.stem for d in DEMOS])
def test_demo(demo, ranks, tmp_path):
    cmd = [sys.executable, str(demo), "--quick"]
    if ranks > 1:
        cmd = [mpirun(), "-n", str(ranks)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "All claims verified." in res.stdout
