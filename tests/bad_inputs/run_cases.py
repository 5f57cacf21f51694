"""Run corpus cases through ``fem_dnn.app.cli.main`` in ONE MPI job (test helper, not a test):

    mpirun -n 2 python tests/bad_inputs/run_cases.py WORK_FOLDER CASE_ID [CASE_ID ...]

Each case runs on every rank from ``WORK_FOLDER`` in turn, with what each rank writes to
stderr captured. Rank 0 prints one JSON line per case: the exit status of every rank,
every rank's stderr, and the work folder's files before and after (SHA-256). One job for
all the 2-rank cases instead of one per case: each launch costs seconds of start-up,
and a case that hangs still hangs the job (the caller's timeout fails it).
"""

import contextlib
import hashlib
import io
import json
import os
import sys
import tomllib
from pathlib import Path

import fem_dnn  # noqa: F401  (DOLFINx import order)
from mpi4py import MPI

from fem_dnn.app.cli import main


def snapshot(folder: Path) -> dict:
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = None
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def run(args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse
            code = e.code
    return int(code), err.getvalue()


def run_all(work: Path, ids: list[str]):
    cases = {c["id"]: c for c in tomllib.loads((Path(__file__).parent / "cases.toml").read_text())["case"]}
    comm = MPI.COMM_WORLD
    os.chdir(work)
    for cid in ids:
        before = snapshot(work) if comm.rank == 0 else None
        comm.barrier()
        code, err = run(cases[cid]["args"])
        codes, errs = comm.gather(code, root=0), comm.gather(err, root=0)
        comm.barrier()
        if comm.rank == 0:
            print(json.dumps({"id": cid, "codes": codes, "stderr": errs, "before": before, "after": snapshot(work)}),
                  flush=True)


if __name__ == "__main__":
    run_all(Path(sys.argv[1]), sys.argv[2:])
