"""fem_dnn against PyTorch autograd on the identical discrete ResNet (exact-ResNet case).

DG0 on n equal cells of (0,1), explicit Euler, tau = T/N: fem_dnn's network is the
ResNet ``x + tau tanh(a - b x / n)`` with a softmax readout ``W x / n + mu`` and mean
cross-entropy. Same weights, same data, float64, same number of threads. Prints one
table: forward and gradient times, their ratios fem_dnn / PyTorch, and the fraction of
the machine's measured float64 GEMM rate each reaches (forward: 2 n^2 S N flops;
gradient: 3 times that). J and the gradients are cross-checked to 1e-10.

PyTorch runs in its own interpreter (``--torch-python``, default $FEM_DNN_TORCH_PYTHON):

    OPENBLAS_NUM_THREADS=1 python bench/vs_pytorch.py --torch-python /path/to/python3.11 --threads 1
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fem_dnn  # noqa: F401  (DOLFINx import order)
from fem_dnn.process import configure
import numpy as np
from mpi4py import MPI

from fem_dnn.core.domain import Depth, NodeSpace, create_node_mesh
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.network import Network

configure()  # the job's process settings: BLAS threads per rank, malloc (fem_dnn.process)

SIZES = [(64, 16, 1797), (256, 32, 1797), (1024, 16, 512)]
K = 10


def best(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_rate(n, S, repeat):
    A, B = np.random.rand(n, n), np.asfortranarray(np.random.rand(n, S))
    return 2.0 * n * n * S / best(lambda: A @ B, repeat)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-python", default=os.environ.get("FEM_DNN_TORCH_PYTHON", ""))
    p.add_argument("--threads", type=int, default=int(os.environ.get("OPENBLAS_NUM_THREADS", "1")))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sizes", default=",".join(f"{n}x{N}x{S}" for n, N, S in SIZES))
    args = p.parse_args()
    if not args.torch_python:
        sys.exit("vs_pytorch: give --torch-python (an interpreter with torch) or set FEM_DNN_TORCH_PYTHON")
    comm = MPI.COMM_WORLD
    rows = []
    for spec in args.sizes.split(","):
        n, N, S = (int(v) for v in spec.split("x"))
        rng = np.random.default_rng(0)
        a, b = 0.5 * rng.standard_normal((N, n)), rng.standard_normal((N, n, n))
        W, mu = rng.standard_normal((K, n)), 0.1 * rng.standard_normal(K)
        X, y = rng.standard_normal((S, n)), rng.integers(0, K, S)
        space = NodeSpace(create_node_mesh(comm, "interval", n), "DG", 0)
        net = Network(space, Depth(1.0, N), "tanh", "euler")
        J = ReducedFunctional(net, X, y, "classes", K=K, lam=0.0)
        m = J.controls.from_natural(a, b, W, mu)
        c, r = J.controls.split(m)

        def forward():
            traj = net.forward(J.F0, c)
            O = net.readout(traj.final, r)
            return comm.allreduce(J.loss.value(O, J.C, space)) / J.S

        def gradient():
            J._point = None  # a new point: forward with tape + costate
            return J.derivative(m)

        tf, tg = best(forward, args.repeat), best(gradient, args.repeat)
        mine = J.controls.natural(J.derivative(m))
        Jval = J(m)
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "p.npz", Path(tmp) / "r.npz"
            if comm.rank == 0:
                np.savez(src, a=a, b=b, W=W, mu=mu, X=X, y=y, tau=1.0 / N)
            comm.barrier()
            out = None
            if comm.rank == 0:
                env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
                res = subprocess.run([args.torch_python, str(Path(__file__).with_name("torch_resnet.py")), str(src), str(dst),
                                      str(args.threads), str(args.repeat)], capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    sys.exit(f"vs_pytorch: the PyTorch run failed:\n{res.stderr[-2000:]}")
                out = json.loads(res.stdout.strip().splitlines()[-1])
                ref = np.load(dst)
                err = max(abs(float(ref["J"]) - Jval) / abs(Jval),
                          *(np.abs(ref[f"d{k}"] - mine[k]).max() / np.abs(ref[f"d{k}"]).max() for k in ("a", "b", "W", "mu")))
                out["err"] = err
            out = comm.bcast(out, root=0)
        rate = gemm_rate(n, S, args.repeat)
        fl = 2.0 * n * n * S * N
        rows.append((n, N, S, tf, out["forward"], tg, out["gradient"], fl / tf / rate, 3 * fl / tg / rate, rate, out["err"]))
        J.destroy(), net.destroy(), space.destroy()
    if comm.rank == 0:
        print(f"fem_dnn vs PyTorch {out['torch']} ({out['threads']} thread(s)), float64, DG0 + Euler = ResNet, {comm.size} fem_dnn rank(s)")
        print("| n | N | S | forward fem_dnn s | forward torch s | ratio | gradient fem_dnn s | gradient torch s | ratio | "
              "GEMM fraction fwd / grad (fem_dnn) | max rel. difference |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
        for n, N, S, tf, pf, tg, pg, ff, fg, rate, err in rows:
            print(f"| {n} | {N} | {S} | {tf:.4f} | {pf:.4f} | {tf / pf:.2f} | {tg:.4f} | {pg:.4f} | {tg / pg:.2f} | "
                  f"{ff:.2f} / {fg:.2f} (of {rate / 1e9:.1f} GFlop/s) | {err:.1e} |")


if __name__ == "__main__":
    main()
