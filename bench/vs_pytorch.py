"""fem_dnn against PyTorch autograd on the identical discrete ResNet, float64 and float32.

DG0 on n equal cells of (0,1), explicit Euler, tau = T/N: fem_dnn's network is the
ResNet ``x + tau tanh(a - b x / n)`` with a softmax readout ``W x / n + mu`` and mean
cross-entropy. Same weights, same data, same number of threads; each precision of
fem_dnn (``Network(dtype=...)``) against PyTorch in the same precision. Prints one
table: forward and gradient times, their ratios fem_dnn / PyTorch, and the fraction of
the machine's measured GEMM rate in that precision each reaches (forward: 2 n^2 S N
flops; gradient: 3 times that). J and the gradients are cross-checked against PyTorch
float64 (to 1e-10 in float64; float32 to its rounding, ~1e-6).

PyTorch runs in its own interpreter (``--torch-python``, default $FEM_DNN_TORCH_PYTHON):

    OPENBLAS_NUM_THREADS=1 python bench/vs_pytorch.py --torch-python /path/to/python3.11 --threads 1
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import fem_dnn  # noqa: F401  (DOLFINx import order)
from fem_dnn.process import configure
import numpy as np
from mpi4py import MPI

from fem_dnn.core.depth import Depth
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.network import Network

from _timing import best  # noqa: E402  (bench/, this script's folder)

configure()  # the job's process settings: BLAS threads per rank, malloc (fem_dnn.process)

SIZES = [(64, 16, 1797), (256, 32, 1797), (1024, 16, 512)]
K = 10




def gemm_rate(n, S, repeat, dtype):
    A, B = np.random.rand(n, n).astype(dtype), np.asfortranarray(np.random.rand(n, S).astype(dtype))
    return 2.0 * n * n * S / best(lambda: A @ B, repeat)


def torch_run(args, src, dst, dtype):
    """PyTorch's best forward and gradient times in ``dtype`` and its J and gradient."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    res = subprocess.run([args.torch_python, str(Path(__file__).with_name("torch_resnet.py")), str(src), str(dst),
                          str(args.threads), str(args.repeat), dtype], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"vs_pytorch: the PyTorch run failed:\n{res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    ref = np.load(dst)
    out["J"], out["grad"] = float(ref["J"]), {k: ref[f"d{k}"] for k in ("a", "b", "W", "mu")}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-python", default=os.environ.get("FEM_DNN_TORCH_PYTHON", ""))
    p.add_argument("--threads", type=int, default=int(os.environ.get("OPENBLAS_NUM_THREADS", "1")))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sizes", default=",".join(f"{n}x{N}x{S}" for n, N, S in SIZES))
    p.add_argument("--dtypes", default="float64,float32")
    args = p.parse_args()
    if not args.torch_python:
        sys.exit("vs_pytorch: give --torch-python (an interpreter with torch) or set FEM_DNN_TORCH_PYTHON")
    comm = MPI.COMM_WORLD
    dtypes = args.dtypes.split(",")
    rows = []
    for spec in args.sizes.split(","):
        n, N, S = (int(v) for v in spec.split("x"))
        rng = np.random.default_rng(0)
        a, b = 0.5 * rng.standard_normal((N, n)), rng.standard_normal((N, n, n))
        W, mu = rng.standard_normal((K, n)), 0.1 * rng.standard_normal(K)
        X, y = rng.standard_normal((S, n)), rng.integers(0, K, S)
        space = NodeSpace(create_node_mesh(comm, "interval", n), "DG", 0)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "p.npz"
            torch = {}
            if comm.rank == 0:
                np.savez(src, a=a, b=b, W=W, mu=mu, X=X, y=y, tau=1.0 / N)
                for dt in dict.fromkeys(dtypes + ["float64"]):  # float64 is the reference of the cross-check
                    torch[dt] = torch_run(args, src, Path(tmp) / f"r_{dt}.npz", dt)
            torch = comm.bcast(torch, root=0)
        for dt in dtypes:
            net = Network(space, Depth(1.0, N), "tanh", "euler", dtype=dt)
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
            ref = torch["float64"]
            err = max(abs(ref["J"] - J(m)) / abs(ref["J"]),
                      *(np.abs(ref["grad"][k] - mine[k]).max() / np.abs(ref["grad"][k]).max() for k in ("a", "b", "W", "mu")))
            rate = gemm_rate(n, S, args.repeat, dt)
            fl = 2.0 * n * n * S * N
            pt = torch[dt]
            rows.append((n, N, S, dt, tf, pt["forward"], tg, pt["gradient"], fl / tf / rate, 3 * fl / tg / rate,
                         fl / pt["forward"] / rate, 3 * fl / pt["gradient"] / rate, rate, err))
            J.destroy(), net.destroy()
        space.destroy()
    if comm.rank == 0:
        info = torch[dtypes[0]]
        print(f"fem_dnn vs PyTorch {info['torch']} ({info['threads']} thread(s)), DG0 + Euler = ResNet, "
              f"{comm.size} fem_dnn rank(s); both in the row's precision")
        print("| n | N | S | dtype | forward fem_dnn s | forward torch s | ratio | gradient fem_dnn s | gradient torch s | "
              "ratio | GEMM fraction fwd / grad fem_dnn | torch | max rel. difference to torch float64 |")
        print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |")
        for n, N, S, dt, tf, pf, tg, pg, ff, fg, qf, qg, rate, err in rows:
            print(f"| {n} | {N} | {S} | {dt} | {tf:.4f} | {pf:.4f} | {tf / pf:.2f} | {tg:.4f} | {pg:.4f} | {tg / pg:.2f} | "
                  f"{ff:.2f} / {fg:.2f} (of {rate / 1e9:.1f} GFlop/s) | {qf:.2f} / {qg:.2f} | {err:.1e} |")


if __name__ == "__main__":
    main()
