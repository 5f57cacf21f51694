"""The resource estimate against the measured peak memory of real trainings.

Each case is one ``fem_dnn.app.train.train`` run of the digits (or bumps) in a fresh process
(under ``mpirun -n 2`` for the 2-rank cases), with a few iterations: the estimate of
:func:`fem_dnn.app.memory.estimate_memory` is made in that process just before training, as
``fem-dnn train`` makes it, and the peak resident set of every rank (Linux ``VmHWM``) is
read at the end. Prints one table: the case, its sizes, the estimated and the measured
peak per rank (the largest rank), and their ratio; it fails if a ratio leaves
[0.7, 1.3]. Cases run one at a time, the largest last (about 10 GiB per rank); Newton
methods take at most 2 Krylov steps per iteration (their vectors exist from the first).

    python bench/memory_estimate.py [--quick] [--only SUBSTRING]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "MEMORY_ESTIMATE "

#: (label, ranks, --set overrides); the quick cases are the first ones.
CASES = [
    ("digits DG0 8x8 N=4 lbfgs", 1, []),
    ("digits DG0 8x8 N=4 lbfgs", 2, []),
    ("digits P1 9x9 N=4 rk4 lbfgs", 1, ['node.space="P1"', 'network.scheme="rk4"']),
    ("bumps DG0 N=8 newton", 1, ['data.name="bumps"', "node.refine=4", "network.N=8", 'training.method="newton"']),
    ("digits DG0 32x32 N=4 adam", 1, ["node.refine=4", 'training.method="adam"', "training.epochs=1"]),
    ("digits DG0 32x32 N=8 rk4 lbfgs", 2, ["node.refine=4", "network.N=8", 'network.scheme="rk4"']),
    ("digits P1 33x33 N=4 newton", 1, ["node.refine=4", 'node.space="P1"', 'training.method="newton"']),
    ("digits DG0 32x32 N=4 heun trust", 2, ["node.refine=4", 'network.scheme="heun"', 'training.method="trust"']),
    ("digits DG0 32x32 N=16 lbfgs", 1, ["node.refine=4", "network.N=16"]),
    ("digits DG0 40x40 N=4 newton", 2, ["node.refine=5", 'training.method="newton"']),
    ("digits DG0 48x48 N=4 lbfgs", 2, ["node.refine=6"]),
    ("digits DG0 48x48 N=8 adam", 1, ["node.refine=6", "network.N=8", 'training.method="adam"', "training.epochs=1"]),
    ("digits DG0 48x48 N=5 lbfgs", 1, ["node.refine=6", "network.N=5"]),
]
QUICK = 4


def worker(overrides: list[str]):
    import fem_dnn  # noqa: F401  (DOLFINx import order)
    from mpi4py import MPI

    from fem_dnn.app.config import load_config
    from fem_dnn.app.memory import estimate_memory
    from fem_dnn.app.system import resident_memory
    from fem_dnn.app.train import train

    from petsc4py import PETSc

    for tao in ("nls", "ntr", "bnls", "bntr"):  # Newton methods: the memory is there at the first Krylov step
        PETSc.Options()[f"fem_dnn_tao_{tao}_ksp_max_it"] = 2
    comm = MPI.COMM_WORLD
    folder = comm.bcast(tempfile.mkdtemp(prefix="memory_estimate_") if comm.rank == 0 else None)
    cfg = load_config(None, ["training.max_it=3", f'output.folder="{folder}/run"'] + overrides)
    est = estimate_memory(cfg, comm)
    t0 = time.perf_counter()
    train(cfg, comm, out=lambda *a: None)
    peaks = comm.gather(resident_memory(peak=True))
    if comm.rank == 0:
        row = {"neurons": est.neurons, "layers": est.layers, "samples": est.samples, "controls": est.controls,
               "estimate": est.peak_bytes, "measured": max(peaks), "ranks": peaks, "phase": est.peak_phase,
               "seconds": time.perf_counter() - t0, "describe": est.describe()}
        print(MARK + json.dumps(row), flush=True)


def run_case(ranks: int, overrides: list[str]) -> dict:
    exe = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(overrides)]
    if ranks > 1:
        exe = [str(Path(sys.executable).with_name("mpirun")), "-n", str(ranks)] + exe
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MPIR_CVAR_CH4_PROGRESS_THROTTLE="1")
    res = subprocess.run(exe, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    for line in res.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    sys.exit(f"case failed ({' '.join(overrides)}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"only the first {QUICK} (small) cases")
    p.add_argument("--only", default="", help="only the cases whose label contains this")
    p.add_argument("--skip", type=int, default=0, help="skip the first cases")
    p.add_argument("--verbose", action="store_true", help="print each estimate's table")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        return worker(json.loads(args.worker))
    cases = CASES[:QUICK] if args.quick else CASES
    cases = [c for c in cases[args.skip:] if args.only in c[0]]
    print("peak resident memory per rank of a training run (3 iterations / 1 epoch): estimate against measured")
    print("| case | ranks | neurons | layers | samples | controls | peak phase | estimate MiB | measured MiB | measured / estimate |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    bad = []
    for label, ranks, overrides in cases:
        r = run_case(ranks, overrides)
        ratio = r["measured"] / r["estimate"]
        phase = r["phase"].split(" (")[0]
        print(f"| {label} | {ranks} | {r['neurons']} | {r['layers']} | {r['samples']} | {r['controls']:,} | {phase} | "
              f"{r['estimate'] / 2**20:,.0f} | {r['measured'] / 2**20:,.0f} | {ratio:.2f} |", flush=True)
        if args.verbose:
            print(r["describe"], flush=True)
        if not 0.7 <= ratio <= 1.3:
            bad.append(label)
    if bad:
        sys.exit(f"estimate off by more than 30%: {bad}")


if __name__ == "__main__":
    main()
