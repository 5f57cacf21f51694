"""Cost of one gradient against one forward solve, per depth scheme.

Prints one table: time of the forward solve (no tape), of the forward with tape, of
the costate-plus-gradient part, and the ratios gradient/forward and
(costate + gradient)/forward, measured in one run (best of ``--repeat``).

    python bench/gradient_cost.py [--n 256] [--N 16] [--S 512] [--space DG0|P1]
    mpirun -n 2 python bench/gradient_cost.py
"""

import argparse
import time

import fem_dnn  # noqa: F401  (DOLFINx import order)
from fem_dnn.process import configure
import numpy as np
from mpi4py import MPI

from fem_dnn.core.depth import Depth
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.network import SCHEMES, Network

configure()  # the job's process settings: BLAS threads per rank, malloc (fem_dnn.process)


def best(fn, repeat, comm):
    times = []
    for _ in range(repeat):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        comm.Barrier()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--N", type=int, default=16)
    p.add_argument("--S", type=int, default=512)
    p.add_argument("--space", default="DG0", choices=["DG0", "P1"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--schemes", default=",".join(SCHEMES))
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    fam, deg = ("DG", 0) if args.space == "DG0" else ("P", 1)
    space = NodeSpace(create_node_mesh(comm, "interval", args.n), fam, deg, "lumped")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.S, space.n))
    y = rng.integers(0, 10, args.S)
    rows = []
    for scheme in args.schemes.split(","):
        net = Network(space, Depth(1.0, args.N), "tanh", scheme)
        J = ReducedFunctional(net, X, y, "classes", K=10, lam=1e-4)
        m = J.controls.random(0, 0.3)
        c, r = J.controls.split(m)
        fwd = best(lambda: net.forward(J.F0, c), args.repeat, comm)
        fwd_tape = best(lambda: net.forward(J.F0, c, tape=True), args.repeat, comm)

        def grad():
            J._point = None  # force a new forward + costate
            J.derivative(m)

        tot = best(grad, args.repeat, comm)
        rows.append((scheme, fwd, fwd_tape, tot - fwd_tape, tot))
        J.destroy()
        net.destroy()
    if comm.rank == 0:
        print(f"gradient cost, {args.space} n={space.n} N={args.N} S={args.S}, {comm.size} rank(s), best of {args.repeat}")
        print(f"{'scheme':9s} {'forward s':>10s} {'fwd+tape s':>11s} {'costate+grad s':>15s} {'gradient s':>11s} "
              f"{'grad/fwd':>9s} {'(costate+grad)/fwd':>19s}")
        for s, f, ft, cg, t in rows:
            print(f"{s:9s} {f:10.4f} {ft:11.4f} {cg:15.4f} {t:11.4f} {t / f:9.2f} {cg / f:19.2f}")


if __name__ == "__main__":
    main()
