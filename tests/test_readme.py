"""The README's "Command line and configs" commands run as written, in order, in a fresh
folder: the only changes are the environment's own paths for ``.venv/bin/`` and a small
iteration limit (``--set training.max_it=3``) on the training commands, so that the
block runs in seconds. ``mydata.npz`` (the user's data of the example) is 120 digits."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from test_demos import mpirun

pytestmark = [pytest.mark.skipif(MPI.COMM_WORLD.size > 1 or mpirun() is None,
                                 reason="launches its own processes from the serial session"), pytest.mark.mpirun]
README = Path(__file__).resolve().parents[1] / "README.md"


def commands() -> list[str]:
    text = README.read_text()
    section = text.split("### Command line and configs", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_command_line_block_runs(tmp_path):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "mydata.npz", X=X[:120] / 16.0, y=y[:120])
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmds = commands()
    assert len(cmds) == 8 and cmds[0].startswith("./run fem-dnn config > my.toml"), cmds
    for cmd in cmds:
        if cmd.startswith("./run fem-dnn config"):  # ./run's job: the environment's fem-dnn
            cmd = cmd.replace("./run fem-dnn", ".venv/bin/fem-dnn")
        words = [w.replace(".venv/bin", bindir) for w in shlex.split(cmd)]
        out = None
        if ">" in words:
            words, out = words[: words.index(">")], tmp_path / words[words.index(">") + 1]
        if "train" in words:
            words += ["--set", "training.max_it=3", "--set", "output.figures=false"]
            if "data.name" not in cmd:
                words += ["--set", "data.samples=200"]
        res = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        if out is not None:
            out.write_text(res.stdout)
    assert (tmp_path / "out_train" / "summary.json").exists() and (tmp_path / "out_mydata" / "summary.json").exists()
