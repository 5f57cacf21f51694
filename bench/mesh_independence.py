"""Mesh independence of training: iterations to reduce the gradient norm by 1e-6.

Prints one table: for width n and depth N refined together, the iterations (and
forward + costate solves, and Hessian actions) that L-BFGS in L2 coordinates, Newton-CG
(line search) and trust-region Newton in L2 coordinates, steepest descent in L2, and
L-BFGS on raw coefficients (the negative control) need to reduce the gradient norm by
``--gttol`` on the function-to-function problem of the paper (logistic readout, L2
loss, lambda = 1e-2).

    python bench/mesh_independence.py [--sizes 16x8,32x16,64x32,128x64] [--scheme heun]
    mpirun -n 2 python bench/mesh_independence.py
"""

import argparse

import fem_dnn  # noqa: F401  (DOLFINx import order)
from fem_dnn.process import configure
import numpy as np
from mpi4py import MPI

from fem_dnn.core.depth import Depth
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.network import Network
from fem_dnn.optimize import Optimizer

configure()  # the job's process settings: BLAS threads per rank, malloc (fem_dnn.process)

S = 8
CENTRES = np.linspace(0.15, 0.85, S)


def inputs(y):
    return np.exp(-20.0 * (y[0][None, :] - CENTRES[:, None]) ** 2)


def targets(y):
    return 1.0 / (1.0 + np.exp(-2.0 * np.exp(-20.0 * (y[0][None, :] - CENTRES[:, None] - 0.1) ** 2) + 0.5))


RUNS = [("lbfgs", True, "L-BFGS, L2"), ("newton", True, "Newton-CG, L2"), ("trust", True, "trust-region Newton, L2"),
        ("gd", True, "steepest descent, L2"), ("lbfgs", False, "L-BFGS, raw coefficients")]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="16x8,32x16,64x32,128x64")
    p.add_argument("--scheme", default="heun")
    p.add_argument("--space", default="DG0", choices=["DG0", "P1"])
    p.add_argument("--gttol", type=float, default=1e-6)
    p.add_argument("--max-it", type=int, default=3000)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    fam, deg = ("DG", 0) if args.space == "DG0" else ("P", 1)
    table = {}
    for n, N in sizes:
        space = NodeSpace(create_node_mesh(comm, "interval", n), fam, deg, "lumped")
        net = Network(space, Depth(T=1.0, N=N), "tanh", args.scheme)
        for method, riesz, label in RUNS:
            J = ReducedFunctional(net, inputs, targets, "function", lam=1e-2)
            opt = Optimizer(J, method, riesz=riesz, gttol=args.gttol, max_it=args.max_it, monitor=False)
            res = opt.solve(J.controls.create_vec())
            c = res.counts
            table[(label, n)] = (res.iterations if res.converged else f">{res.iterations}", c["forward"] + c["costate"],
                                 c["incremental_forward"], res.J)
            opt.destroy(), J.destroy()
        net.destroy(), space.destroy()
    if comm.rank == 0:
        print(f"iterations to reduce the gradient norm by {args.gttol:g}; {args.space}, {args.scheme}, "
              f"function-to-function (S={S}, lambda=1e-2), {comm.size} rank(s)")
        print("| method | " + " | ".join(f"n={n}, N={N}" for n, N in sizes) + " |")
        print("| --- |" + " ---: |" * len(sizes))
        for _, _, label in RUNS:
            cells = []
            for n, _ in sizes:
                its, solves, hess, _ = table[(label, n)]
                cells.append(f"{its} ({solves} solves" + (f", {hess} Hv)" if hess else ")"))
            print(f"| {label} | " + " | ".join(cells) + " |")
        print("final J: " + ", ".join(f"n={n}: {table[(RUNS[0][2], n)][3]:.8e}" for n, _ in sizes))


if __name__ == "__main__":
    main()
