"""The bad-input corpus (``tests/bad_inputs/cases.toml``): every malformed config, mesh,
data file and checkpoint stops the command line with exit status 2 and one line naming
the problem, no traceback, and nothing written over existing output; on 2 ranks too.
Also: no user file is unpickled, and a run writes only inside its run folder."""

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from conftest import mpirun

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = tomllib.loads((CORPUS / "cases.toml").read_text())["case"]
IDS = [c["id"] for c in CASES]

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="launches its own processes from the serial session")

_spec = importlib.util.spec_from_file_location("bad_inputs_make", CORPUS / "make.py")
make = importlib.util.module_from_spec(_spec)  # the corpus builder next to the cases
_spec.loader.exec_module(make)


_spec = importlib.util.spec_from_file_location("bad_inputs_run_cases", CORPUS / "run_cases.py")
run_cases = importlib.util.module_from_spec(_spec)  # the batch runner of the 2-rank cases
_spec.loader.exec_module(run_cases)
snapshot = run_cases.snapshot  # every file and folder under a folder: SHA-256 of files, None for folders


def changes(before: dict, after: dict) -> list[str]:
    return sorted(set(before) ^ set(after) | {k for k in before.keys() & after.keys() if before[k] != after[k]})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The corpus with its generated files and valid and damaged run folders."""
    return make.build(tmp_path_factory.mktemp("bad_inputs"))


def check(case, code, out, err, before, after):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit status {code}\nstdout: {out[-2000:]}\nstderr: {err[-3000:]}"
    assert "Traceback" not in out + err, err
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("fem-dnn: error: "), lines[0]
    for part in case["message"]:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert not changes(before, after), f"the failed run changed {changes(before, after)}"
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_case(work, case, capfd, monkeypatch):
    """In-process: ``fem_dnn.app.cli.main(args)`` from the work folder."""
    from fem_dnn.app.cli import main

    before = snapshot(work)
    monkeypatch.chdir(work)
    capfd.readouterr()
    try:
        code = main(list(case["args"]))
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capfd.readouterr()
    check(case, code, out, err, before, snapshot(work))
    assert not (work / "UNPICKLED").exists()


def _cli(args, cwd, ranks=1, timeout=120):
    exe = [sys.executable, "-m", "fem_dnn.app.cli"]
    cmd = exe + list(args) if ranks == 1 else [mpirun(), "-n", str(ranks)] + exe + list(args)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


SUBPROCESS = [c for c in CASES if "subprocess" in c.get("flags", [])]
MPI_CASES = [c for c in CASES if "mpi" in c.get("flags", [])]


@pytest.mark.parametrize("case", SUBPROCESS, ids=[c["id"] for c in SUBPROCESS])
def test_case_subprocess(work, case):
    """A real ``python -m fem_dnn.app.cli`` process."""
    before = snapshot(work)
    res = _cli(case["args"], work)
    check(case, res.returncode, res.stdout, res.stderr, before, snapshot(work))


@pytest.fixture(scope="module")
def two_ranks(work):
    """Every "mpi" case under ``mpirun -n 2``, in one job (tests/bad_inputs/run_cases.py:
    each case through ``fem_dnn.app.cli.main`` on both ranks in turn): id -> result."""
    cmd = [mpirun(), "-n", "2", sys.executable, str(CORPUS / "run_cases.py"), str(work)] + [c["id"] for c in MPI_CASES]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    import json

    return {r["id"]: r for r in map(json.loads, res.stdout.splitlines())}


@pytest.mark.mpirun
@pytest.mark.skipif(mpirun() is None, reason="no mpirun")
@pytest.mark.parametrize("case", MPI_CASES, ids=[c["id"] for c in MPI_CASES])
def test_case_two_ranks(two_ranks, case):
    """Under ``mpirun -n 2``: both ranks stop (no hang: the job's timeout) with status 2,
    and the message is printed once (by rank 0: the other rank's stderr is empty)."""
    r = two_ranks[case["id"]]
    assert r["codes"] == [2, 2], r
    assert r["stderr"][1] == "", r["stderr"]
    check(case, r["codes"][0], "", r["stderr"][0], r["before"], r["after"])


@pytest.mark.mpirun
@pytest.mark.skipif(mpirun() is None, reason="no mpirun")
def test_case_two_ranks_as_processes(work):
    """One case as a real 2-rank job (process exit statuses, the launcher's output)."""
    case = next(c for c in MPI_CASES if c["id"] == "run-folder-holds-a-run")
    before = snapshot(work)
    res = _cli(case["args"], work, ranks=2)
    check(case, res.returncode, res.stdout, res.stderr, before, snapshot(work))


def test_corpus_size():
    """At least 30 cases, ids unique, every kind of input covered."""
    assert len(CASES) >= 30 and len(set(IDS)) == len(IDS)
    for kind in ("config", "data", "mesh", "checkpoint", "resume"):
        assert sum(i.startswith(kind) for i in IDS) >= 4, kind
    assert len(SUBPROCESS) >= 3 and len(MPI_CASES) >= 4


# --------------------------------------------------------------------------- safe loading
def test_no_pickle_in_the_package():
    """Every ``np.load`` of the package refuses pickles; nothing imports pickle, and the
    only ``eval`` is the forward command's checked arithmetic expressions."""
    src = Path(__file__).resolve().parents[1] / "fem_dnn"
    paths = sorted(src.rglob("*.py"))
    assert len(paths) > 30, "the package sources were not found"
    for path in paths:
        text = path.read_text()
        for call in re.findall(r"np\.load\(([^)]*)\)", text):
            assert "allow_pickle=False" in call, f"{path.name}: np.load({call})"
        assert not re.search(r"^\s*(import|from)\s+(pickle|cPickle|dill|shelve|yaml)\b", text, re.M), path.name
        assert "pickle.load" not in text and "yaml" not in text, path.name
        if path.name != "cli.py":
            assert not re.search(r"(?<![.\w])(eval|exec)\(", text), path.name
    assert "tomllib.loads" in (src / "app" / "config.py").read_text()


def test_pickled_files_are_not_unpickled(tmp_path, work):
    """The object arrays of the corpus would create ``UNPICKLED`` when unpickled: the
    data loader and the checkpoint loader refuse them (the library calls too)."""
    from fem_dnn.app import data
    from fem_dnn.app.checkpoint import _read_verified
    from fem_dnn.errors import InputError

    with contextlib.chdir(tmp_path):
        with pytest.raises(InputError, match="object array 'X'"):
            data.load(work / "data" / "object.npz")
        with pytest.raises(InputError, match="object array 'arrays/extra'"):
            _read_verified(work / "run_pickle" / "checkpoint" / "checkpoint.npz")
    assert not (tmp_path / "UNPICKLED").exists()
    # the canary works: unpickling does create the folder
    with contextlib.chdir(tmp_path), np.load(work / "data" / "object.npz", allow_pickle=True) as z:
        z["X"]
    assert (tmp_path / "UNPICKLED").is_dir()


def test_forward_expressions_are_arithmetic(capfd):
    """``--input``/``--bias``/``--weight`` are arithmetic in the documented names only."""
    from fem_dnn.app.cli import _expr
    from fem_dnn.errors import InputError

    f = _expr("sin(pi*x) + 2*y**2 - abs(z)/3", "--input", ("x", "y", "z"))
    assert np.isclose(f(x=np.array([0.5]), y=np.array([1.0]), z=np.array([3.0]))[0], 2.0)
    for text, words in [("().__class__", "not allowed"), ("__import__('os')", "unknown name"),
                        ("[x for x in y]", "not allowed"), ("x if x else y", "not allowed"),
                        ("open('f')", "unknown name 'open'"), ("t", "unknown name 't'"), ("x +", "not an expression"),
                        ("sin", "sin is a function"), ("sin(x, y=1)", "only plain calls"), ("1j * x", "the constant 1j")]:
        with pytest.raises(InputError, match=re.escape(words)):
            _expr(text, "--input", ("x", "y", "z"))


# --------------------------------------------------------------------------- confined output
def test_run_writes_only_its_folder(tmp_path):
    """A run creates files only in its run folder; data and mesh paths of a config file
    are relative to the config file, stored absolute in the run folder's config.toml,
    so ``fem-dnn evaluate`` finds them from anywhere."""
    from fem_dnn.app.cli import main

    rng = np.random.default_rng(0)
    (tmp_path / "project").mkdir()
    np.savez(tmp_path / "project" / "mydata.npz", X=rng.random((30, 16)), y=np.arange(30) % 3)
    (tmp_path / "project" / "my.toml").write_text(
        '[data]\nname = "file"\npath = "mydata.npz"\n\n[node]\nmesh = "../meshes/square.xdmf"\n\n'
        '[network]\nN = 2\n\n[training]\nmax_it = 2\n\n[output]\nfolder = "runs/first"\nfigures = false\n'
    )
    (tmp_path / "meshes").mkdir()
    import dolfinx.io
    from dolfinx import mesh as dmesh

    with dolfinx.io.XDMFFile(MPI.COMM_SELF, str(tmp_path / "meshes" / "square.xdmf"), "w") as xf:
        xf.write_mesh(dmesh.create_unit_square(MPI.COMM_SELF, 4, 4, dmesh.CellType.quadrilateral))
    before = snapshot(tmp_path)
    with contextlib.chdir(tmp_path), contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "project/my.toml"]) == 0
    new = changes(before, snapshot(tmp_path))
    assert new and all(p == "runs" or p.startswith(os.path.join("runs", "first")) for p in new), new
    saved = tomllib.loads((tmp_path / "runs" / "first" / "config.toml").read_text())
    assert saved["data"]["path"] == str(tmp_path / "project" / "mydata.npz")
    assert saved["node"]["mesh"] == str(tmp_path / "meshes" / "square.xdmf")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = io.StringIO()
    with contextlib.chdir(elsewhere), contextlib.redirect_stdout(out):
        assert main(["evaluate", str(tmp_path / "runs" / "first")]) == 0
    assert "train_accuracy" in out.getvalue()
