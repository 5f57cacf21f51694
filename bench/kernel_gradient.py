"""Gradient time per kernel family against the number of neurons (issue: width that scales).

A k x k pixel grid (DG0, n = k^2 neurons), N = 4 Euler layers, S images, a classes
readout with K = 10: the time of one reduced gradient J'(m) (forward, costate, the
derivative) at a random m, best of ``--repeat``, for

- dense: the n x n kernel per layer (skipped above ``--dense-max`` neurons: its control
  vector alone needs N n^2 8 bytes, and the functional keeps several);
- local-5x5: the local kernel with a support of 5 x 5 pixels at every resolution
  (rho = 2 pixels, kappa on 4 x 4 Q1 cells: a convolution's cost);
- local-fixed: the local kernel with the support of 5 x 5 pixels *at k = 28* kept in
  the unit square's units (rho = 2/28): the resolution-independent continuum kernel,
  whose pairs per row grow like (rho/h)^2.

Ratios are to the same kernel at the smallest size, in one run. With ``--speedup`` the
script also runs itself on 2 ranks (``mpirun -n 2``) at the largest size and prints the
node-parallel speed-up of each local kernel (serial time / 2-rank time).

    python bench/kernel_gradient.py [--sizes 28 56 112 224] [--S 256] [--speedup]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from fem_dnn.process import configure

configure()  # the job's process settings: BLAS threads per rank (fem_dnn.process)

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from fem_dnn.core.depth import Depth  # noqa: E402
from fem_dnn.core.meshes import create_node_mesh  # noqa: E402
from fem_dnn.core.nodes import NodeSpace  # noqa: E402
from fem_dnn.core.kernel import DenseKernel, LocalKernel  # noqa: E402
from fem_dnn.learning.functional import ReducedFunctional  # noqa: E402
from fem_dnn.network import Network  # noqa: E402

KERNELS = ("dense", "local-5x5", "local-fixed")


def kernel_of(name, space, k):
    if name == "dense":
        return DenseKernel(space)
    rho = 2.0 / k if name == "local-5x5" else 2.0 / 28
    return LocalKernel(space, radius=rho, cells=4)


def gradient_time(comm, name, k, S, repeat):
    sp = NodeSpace(create_node_mesh(comm, "rectangle", (k, k), cell="quadrilateral"), "DG", 0)
    net = Network(sp, Depth(T=1.0, N=4), "tanh", "euler", kernel=kernel_of(name, sp, k))
    rng = np.random.default_rng(0)
    X, y = rng.random((S, sp.n)), rng.integers(0, 10, S)
    y[:10] = np.arange(10)
    J = ReducedFunctional(net, X, y, "classes", lam=1e-4)
    m = J.controls.random(1, 0.1)
    best = np.inf
    for i in range(repeat):
        m.shift(1e-3 * (i + 1))  # a new point each time: no cached derivative
        comm.Barrier()
        t = time.perf_counter()
        g = J.derivative(m)
        best = min(best, comm.allreduce(time.perf_counter() - t, op=MPI.MAX))
        g.destroy()
    controls = J.controls.create_vec().getSize()
    J.destroy(), net.destroy(), sp.destroy()
    return best, controls


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[28, 56, 112, 224])
    ap.add_argument("--S", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dense-max", type=int, default=56 * 56)
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    ap.add_argument("--speedup", action="store_true", help="also the 2-rank speed-up at the largest size")
    ap.add_argument("--json", action="store_true", help="print one JSON line (used by --speedup)")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rows = {}
    for name in args.kernels:
        for k in args.sizes:
            if name == "dense" and k * k > args.dense_max:
                continue
            rows[(name, k)] = gradient_time(comm, name, k, args.S, args.repeat)
    if args.json:
        if comm.rank == 0:
            print(json.dumps({f"{n}@{k}": t for (n, k), (t, _) in rows.items()}))
        return
    if comm.rank:
        return
    k0 = min(args.sizes)
    print(f"gradient time, N = 4 Euler layers, S = {args.S}, K = 10, {comm.size} rank(s); "
          f"ratio to the same kernel at {k0}x{k0}")
    print(f"{'kernel':<12} {'k':>4} {'n':>7} {'controls':>11} {'seconds':>9} {'ratio':>7}")
    for (name, k), (t, ctrl) in rows.items():
        ref = rows.get((name, k0), (None,))[0]
        print(f"{name:<12} {k:>4} {k * k:>7} {ctrl:>11,} {t:>9.4f} {t / ref if ref else float('nan'):>7.1f}")
    if args.speedup:
        kmax = max(args.sizes)
        local = [n for n in args.kernels if n != "dense"]
        mpirun = shutil.which("mpirun", path=os.path.dirname(sys.executable)) or "mpirun"
        out = subprocess.run([mpirun, "-n", "2", sys.executable, __file__, "--json", "--sizes", str(kmax), "--S",
                              str(args.S), "--repeat", str(args.repeat), "--kernels", *local],
                             capture_output=True, text=True, check=True)
        par = json.loads(out.stdout.strip().splitlines()[-1])
        for name in local:
            t1, t2 = rows[(name, kmax)][0], par[f"{name}@{kmax}"]
            print(f"speed-up on 2 ranks, {name} at {kmax}x{kmax}: {t1:.4f} s / {t2:.4f} s = {t1 / t2:.2f}")


if __name__ == "__main__":
    main()
