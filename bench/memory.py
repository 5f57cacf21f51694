"""Peak memory of one gradient against the stored trajectory plus the controls.

Prints one table, per depth scheme: the memory a gradient adds to the process (peak
resident set during the gradient minus the resident set before it, Linux VmHWM/VmRSS)
divided by the size of the trajectory ((N+1) S n doubles) plus the controls, and divided
by what the forward solve stores (``Trajectory.nbytes``: the states, or only the
checkpointed levels, plus the tape the costate needs: one sigma(u) per stage, and the
stage inputs of Heun and RK4) plus the controls. Each case runs in a fresh process, in
float64 and in float32 (``Network(dtype=...)``: the states and the tape in float32, the
controls float64); the last column is what float32 stores against float64.

    python bench/memory.py [--n 256] [--N 32] [--S 1797] [--dtypes float64,float32]
"""

import argparse
import json
import subprocess
import sys

from fem_dnn.process import configure
from fem_dnn.network.schemes import SCHEMES

configure()  # the job's process settings: BLAS threads per rank, malloc (fem_dnn.process)


def _status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def worker(n, N, S, scheme, every=0, dtype="float64"):
    import fem_dnn  # noqa: F401
    import numpy as np
    from mpi4py import MPI

    from fem_dnn.core.depth import Depth
    from fem_dnn.core.meshes import create_node_mesh
    from fem_dnn.core.nodes import NodeSpace
    from fem_dnn.learning.functional import ReducedFunctional
    from fem_dnn.network import Network

    space = NodeSpace(create_node_mesh(MPI.COMM_SELF, "interval", n), "DG", 0)
    net = Network(space, Depth(1.0, N), "tanh", scheme, dtype=dtype)
    rng = np.random.default_rng(0)
    J = ReducedFunctional(net, rng.standard_normal((S, n)), rng.integers(0, 10, S), "classes", K=10,
                          store_every=every or None)
    m = J.controls.random(0, 0.3)
    before = _status("VmRSS")
    J.derivative(m)
    peak = _status("VmHWM")
    traj = (N + 1) * S * n * np.dtype(dtype).itemsize
    controls = m.getSize() * 8
    stored = J.trajectory(m).nbytes  # what the forward solve keeps: states (or checkpoints) + tape
    print(json.dumps({"added": peak - before, "trajectory": traj, "controls": controls, "stored": stored}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--N", type=int, default=32)
    p.add_argument("--S", type=int, default=1797)
    p.add_argument("--every", type=int, default=0, help="also with depth checkpointing every k levels (0: sqrt(N))")
    p.add_argument("--dtypes", default="float64,float32")
    p.add_argument("--worker", nargs=6)
    args = p.parse_args()
    if args.worker:
        n, N, S, scheme, every, dtype = args.worker
        return worker(int(n), int(N), int(S), scheme, int(every), dtype)
    print(f"peak memory of a gradient, DG0 n={args.n} N={args.N} S={args.S}, one rank")
    every = args.every or max(int(round(args.N**0.5)), 1)
    dtypes = args.dtypes.split(",")
    print("| scheme | storage | dtype | trajectory MB | stored (states + tape) MB | controls MB | gradient adds MB | "
          "ratio to trajectory + controls | ratio to stored + controls | stored / float64's |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for scheme in SCHEMES:
        for k in (0, every):
            stored64 = None
            for dtype in dtypes:
                if dtype == "float32" and scheme == "midpoint":
                    continue  # float32 is for the explicit schemes (the midpoint rule's SNES is float64)
                res = subprocess.run([sys.executable, __file__, "--worker", str(args.n), str(args.N), str(args.S), scheme,
                                      str(k), dtype], capture_output=True, text=True)
                if res.returncode != 0:
                    sys.exit(res.stderr[-2000:])
                r = json.loads(res.stdout.strip().splitlines()[-1])
                base = r["trajectory"] + r["controls"]
                stored64 = r["stored"] if dtype == "float64" else stored64
                label = "full tape" if k == 0 else f"checkpoint every {k}"
                rel = f"{r['stored'] / stored64:.3f}" if stored64 else "-"
                print(f"| {scheme} | {label} | {dtype} | {r['trajectory'] / 2**20:.1f} | {r['stored'] / 2**20:.1f} | "
                      f"{r['controls'] / 2**20:.1f} | {r['added'] / 2**20:.1f} | {r['added'] / base:.2f} | "
                      f"{r['added'] / (r['stored'] + r['controls']):.2f} | {rel} |", flush=True)


if __name__ == "__main__":
    main()
