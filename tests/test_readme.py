"""The README's shell commands run as a new user runs them: every ```bash block, in the
README's order, one after another in ONE fresh folder (the clone's root), so that a run
folder one block leaves behind and a later block writes into again is caught (issue 32:
the local-kernel command stopped with "the run folder out_mnist holds a run" after the
MNIST command).

What is changed, and only that: the environment's own paths for ``.venv/bin/``; ``./run
main`` and ``./run fem-dnn`` become what ``./run`` executes after its setup (checked
against the script); small limits on the training commands (``training.max_it=3``, ``training.epochs=1``,
``data.samples=200``, no figures) and ``--quick`` on the demos, so that all of it runs in
seconds. ``mydata.npz`` (the user's data of the example) is 120 digits. What does not run
is listed with its reason (:data:`BLOCKS`, :data:`SKIPPED_COMMANDS`), and a new block in
the README fails :func:`test_every_block_is_run_or_skipped` until it is listed."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from conftest import mpirun

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: Every ```bash block of the README in order, by the heading it sits under: None (it
#: runs) or why it does not.
BLOCKS = [
    ("Quick start (fresh Linux machine)", None),
    ("Command line and configs", None),
    ("MNIST (`demos/mnist.toml`)", None),
    ("MNIST (`demos/mnist.toml`)", None),
    ("Kernel families (`[network] kernel`, [docs/kernels.md](docs/kernels.md))", None),
    ("Depth slabs: a continuum CNN (`demos/mnist_conv.toml`, docs/model.md §4.14)", None),
    ("Docker", "needs a Docker engine and builds an image (the runs inside it are the commands above)"),
    ("Tests", "the test suite itself, this test included (minutes)"),
]
#: Commands of the blocks that run, skipped: the start of the command and why.
SKIPPED_COMMANDS = {
    "./run test": "the test suite itself, this test included (minutes)",
    ".venv/bin/pip install": "installs a package (the test extra already holds mlxtend; no network in the suite)",
}
#: The run folders the blocks leave, each with a finished run.
RUN_FOLDERS = ("out_train", "out_newton", "out_mydata", "out_mnist", "out_mnist_local", "out_mnist_demo", "out_mnist_conv")


def blocks() -> list[tuple[str, list[str]]]:
    """``(heading, commands)`` of every ```bash block: continuation lines joined,
    comments and blank lines dropped."""
    out, heading = [], None
    for part in re.split(r"(```bash\n.*?```)", README.read_text(), flags=re.S):
        if part.startswith("```bash"):
            text = part[len("```bash\n"):-3].replace("\\\n", " ")
            out.append((heading, [line.strip() for line in text.splitlines() if shlex.split(line, comments=True)]))
        else:
            titles = re.findall(r"^#{2,4} (.+)$", part, flags=re.M)
            heading = titles[-1].strip() if titles else heading
    return out


def skipped(cmd: str) -> str | None:
    return next((why for start, why in SKIPPED_COMMANDS.items() if cmd.startswith(start)), None)


def test_every_block_is_run_or_skipped():
    """A new block (or a moved one) must be listed in BLOCKS: run here, or skipped with a
    reason; every listed skip still matches a command."""
    assert [h for h, _ in blocks()] == [h for h, _ in BLOCKS], "list the README's bash blocks in BLOCKS"
    running = [c for (_, cmds), (_, why) in zip(blocks(), BLOCKS) if why is None for c in cmds]
    for start in SKIPPED_COMMANDS:
        assert any(c.startswith(start) for c in running), f"SKIPPED_COMMANDS lists {start!r}, which no block has"
    # ./run main and ./run fem-dnn are replaced by what ./run executes after its setup
    script = (ROOT / "run").read_text()
    assert 'exec "$(mpirun_cmd)" -n 2 "$VENV/bin/fem-dnn" train "$@"' in script
    assert 'fem-dnn) setup; exec "$VENV/bin/fem-dnn" "$@"' in script


def _words(cmd: str, bindir: str) -> list[str]:
    """The command as it runs here: ``./run`` replaced, the environment's paths, small limits."""
    cmd = cmd.replace("./run main", ".venv/bin/mpirun -n 2 .venv/bin/fem-dnn train", 1)
    cmd = cmd.replace("./run fem-dnn", ".venv/bin/fem-dnn", 1)
    words = [w.replace(".venv/bin", bindir) if w.startswith(".venv/bin") else w for w in shlex.split(cmd, comments=True)]
    if "train" in words:
        words += ["--set", "training.max_it=3", "--set", "training.epochs=1", "--set", "output.figures=false"]
        if "data.name" not in cmd:  # the user's file holds 120 samples
            words += ["--set", "data.samples=200"]
    if any(w.endswith(".py") and "demos/" in w for w in words):
        words.append("--quick")
    return words


@pytest.mark.mpirun
@pytest.mark.skipif(MPI.COMM_WORLD.size > 1 or mpirun() is None, reason="launches its own processes from the serial session")
def test_readme_blocks_run_in_order(tmp_path):
    """All blocks, in order, in one fresh folder: each command exits 0."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "mydata.npz", X=X[:120] / 16.0, y=y[:120])
    (tmp_path / "demos").mkdir()
    for f in (ROOT / "demos").iterdir():  # the clone's demos and configs
        if f.suffix in (".py", ".toml"):
            shutil.copy(f, tmp_path / "demos" / f.name)
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    ran = 0
    for (heading, cmds), (_, why) in zip(blocks(), BLOCKS):
        if why is not None:
            continue
        for cmd in cmds:
            if skipped(cmd):
                continue
            words, out = _words(cmd, bindir), None
            if ">" in words:
                words, out = words[: words.index(">")], tmp_path / words[words.index(">") + 1]
            res = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, f"[{heading}] {cmd}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            if out is not None:
                out.write_text(res.stdout)
            ran += 1
    assert ran == 14, ran
    for folder in RUN_FOLDERS:
        assert (tmp_path / folder / "checkpoint" / "checkpoint.npz").is_file(), folder
