"""MPI speed-up of a gradient on 2 ranks over 1: node-parallel and sample-parallel.

Prints one table. Launches itself under mpirun with 1 and 2 ranks (the ``--worker``
mode times one configuration and prints JSON):

    python bench/parallel.py [--mpirun .venv/bin/mpirun]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from fem_dnn.process import configure

configure()  # the job's process settings: BLAS threads per rank, malloc (fem_dnn.process)

CASES = [("node-parallel", 1024, 16, 512, "node"), ("sample-parallel", 256, 16, 1797, "sample")]


def worker(n, N, S, mode, repeat):
    import fem_dnn  # noqa: F401
    import numpy as np
    from mpi4py import MPI

    from fem_dnn.core.depth import Depth
    from fem_dnn.core.layout import split_comm
    from fem_dnn.core.meshes import create_node_mesh
    from fem_dnn.core.nodes import NodeSpace
    from fem_dnn.learning.functional import ReducedFunctional
    from fem_dnn.network import Network

    comm = MPI.COMM_WORLD
    layout = split_comm(comm, comm.size if mode == "sample" else 1)
    space = NodeSpace(create_node_mesh(layout.node_comm, "interval", n), "DG", 0)
    net = Network(space, Depth(1.0, N), "tanh", "euler", layout=layout)
    rng = np.random.default_rng(0)
    J = ReducedFunctional(net, rng.standard_normal((S, n)), rng.integers(0, 10, S), "classes", K=10)
    m = J.controls.random(0, 0.3)
    times = []
    for _ in range(repeat + 1):
        J._point = None
        comm.Barrier()
        t0 = time.perf_counter()
        J.derivative(m)
        comm.Barrier()
        times.append(time.perf_counter() - t0)
    if comm.rank == 0:
        print(json.dumps({"time": min(times[1:])}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mpirun", default=shutil.which("mpirun") or os.path.join(os.path.dirname(sys.executable), "mpirun"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--worker", nargs=4)
    args = p.parse_args()
    if args.worker:
        n, N, S, mode = args.worker
        return worker(int(n), int(N), int(S), mode, args.repeat)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    print("| case | n | N | S | 1 rank s | 2 ranks s | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, n, N, S, mode in CASES:
        t = {}
        for ranks in (1, 2):
            cmd = [args.mpirun, "-n", str(ranks), sys.executable, __file__, "--repeat", str(args.repeat),
                   "--worker", str(n), str(N), str(S), mode]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                sys.exit(res.stderr[-2000:])
            t[ranks] = json.loads(res.stdout.strip().splitlines()[-1])["time"]
        print(f"| {name} | {n} | {N} | {S} | {t[1]:.3f} | {t[2]:.3f} | {t[1] / t[2]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
