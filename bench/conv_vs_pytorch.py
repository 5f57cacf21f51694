"""fem_dnn's local kernel against PyTorch conv2d on the identical convolutional ResNet.

An H x W pixel image x C channels node mesh (DG0, the box [0,1]^3 with C cells along the
last axis), explicit Euler, tau = T/N, the local kernel with a (2R+1) x (2R+1) pixel
support (rho = R/H, kappa on 2R Q1 cells a side: its nodes are the pixel offsets): the
network is ``x + tau tanh(a_k - B_k x)`` with ``(B_k x)(p, c) = sum_o sum_c' K_o[c, c']
x(p - o, c')``, ``K_o = omega kappa_k(o h)`` (the kernel's exact rule: kappa averaged over
the pixel pair, docs/kernels.md), a softmax readout ``W M_w x + mu`` and mean
cross-entropy. PyTorch runs the same ResNet with ``conv2d(x, w_k, padding=R)`` (a
cross-correlation: ``w_k[c, c', u, v] = K_(R-u, R-v)[c, c']``, the kernel flipped), a
(C, H, W) bias field a_k and the readout weights ``W M_w`` (bench/torch_conv.py). Same
weights, same data, one thread each; each precision of fem_dnn against PyTorch in the
same precision. Prints one table: gradient times (forward + costate + derivative),
their ratio fem_dnn / PyTorch, and the useful rate of each (3 N products with the
kernel's 2 nnz S flops each, nnz the kernel's pairs: the boundary pixels' missing
offsets not counted). J and the gradient are cross-checked against PyTorch float64
(max relative difference over J and the blocks a, b, W, mu: ~1e-15 in float64, ~1e-6 in
float32). ``--csr`` adds fem_dnn's CSR path (``LocalKernel(method="csr")``).

PyTorch runs in its own interpreter (``--torch-python``, default $FEM_DNN_TORCH_PYTHON):

    OPENBLAS_NUM_THREADS=1 python bench/conv_vs_pytorch.py --torch-python /path/to/python3.11 \\
        --channels 4,8,16 --pixels 14 --N 4 --S 256
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
from fem_dnn.core.kernel import LocalKernel, box_basis, q1_basis
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.network import Network

from _timing import best  # noqa: E402  (bench/, this script's folder)

configure()  # the job's process settings: BLAS threads per rank, malloc (fem_dnn.process)

K = 10




def torch_run(args, src, dst, dtype):
    """PyTorch's best forward and gradient times in ``dtype``, its J and gradient."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    res = subprocess.run([args.torch_python, str(Path(__file__).with_name("torch_conv.py")), str(src), str(dst),
                          str(args.threads), str(args.repeat), dtype], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"conv_vs_pytorch: the PyTorch run failed:\n{res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    ref = np.load(dst)
    out["J"], out["grad"] = float(ref["J"]), {k: ref[f"d{k}"] for k in ("a", "w", "Wr", "mu")}
    return out


class Layout:
    """The map between fem_dnn's natural order and PyTorch's (C, H, W) images, and between
    kappa's nodal values and conv2d's weights."""

    def __init__(self, space, kern, H, W, C, R):
        self.shape = (C, H, W)
        x = np.empty_like(space.x_all)
        x[:, space.nat_of_global] = space.x_all  # natural order
        k0, k1 = np.floor(x[0] * H).astype(int), np.floor(x[1] * W).astype(int)
        c = np.floor(x[2] * C).astype(int) if C > 1 else np.zeros_like(k0)
        #: the flat (c, i, j) index of every natural dof
        self.t = (c * H + k0) * W + k1
        self.omega = np.empty(space.n)
        self.omega[space.nat_of_global] = space.weights_all
        # kappa's Q1 basis at the offsets o = (R - u, R - v) of conv2d's taps (u, v), by the
        # kernel's own rule: sampled (nodal) or averaged over the pixel pairs (exact)
        u, v = np.meshgrid(np.arange(2 * R + 1), np.arange(2 * R + 1), indexing="ij")
        offs = np.stack([(R - u).ravel() / H, (R - v).ravel() / W], axis=1)
        if kern.quadrature == "exact":
            h = np.tile([1.0 / H, 1.0 / W], (offs.shape[0], 1))
            r, m, val = box_basis(offs, h, h, kern.radius, kern.cells)
        else:
            r, m, val = q1_basis(offs, kern.radius, kern.cells)
        self.Q = np.zeros((offs.shape[0], kern.Ms))
        np.add.at(self.Q, (r, m), val)
        self.C, self.R, self.Ms, self.w0 = C, R, kern.Ms, float(np.mean(space.weights_all))

    def image(self, F):
        """``(rows, n)`` natural order -> ``(rows, C, H, W)``."""
        out = np.zeros((F.shape[0], self.t.size))
        out[:, self.t] = F
        return out.reshape((F.shape[0],) + self.shape)

    def natural(self, T):
        """``(rows, C, H, W)`` -> ``(rows, n)`` natural order."""
        return T.reshape(T.shape[0], -1)[:, self.t]

    def conv_weights(self, kappa):
        """``(N, M)`` kappa -> ``(N, C, C, 2R+1, 2R+1)`` conv2d weights."""
        N, C, s = kappa.shape[0], self.C, 2 * self.R + 1
        return self.w0 * (kappa.reshape(N, C, C, self.Ms) @ self.Q.T).reshape(N, C, C, s, s)

    def kappa_gradient(self, dw):
        """The chain rule back: ``(N, C, C, 2R+1, 2R+1)`` -> ``(N, M)``."""
        N = dw.shape[0]
        return self.w0 * (dw.reshape(N, self.C, self.C, -1) @ self.Q).reshape(N, -1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-python", default=os.environ.get("FEM_DNN_TORCH_PYTHON", ""))
    p.add_argument("--threads", type=int, default=int(os.environ.get("OPENBLAS_NUM_THREADS", "1")))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--channels", default="4,8,16")
    p.add_argument("--pixels", type=int, default=14)
    p.add_argument("--support", type=int, default=2, help="R: a (2R+1) x (2R+1) pixel support")
    p.add_argument("--N", type=int, default=4)
    p.add_argument("--S", type=int, default=256)
    p.add_argument("--dtypes", default="float64,float32")
    p.add_argument("--csr", action="store_true", help="also time fem_dnn's CSR path")
    args = p.parse_args()
    if not args.torch_python:
        sys.exit("conv_vs_pytorch: give --torch-python (an interpreter with torch) or set FEM_DNN_TORCH_PYTHON")
    comm = MPI.COMM_SELF
    dtypes = args.dtypes.split(",")
    H = W = args.pixels
    N, S, R = args.N, args.S, args.support
    rows = []
    for C in (int(c) for c in args.channels.split(",")):
        if C > 1:
            space = NodeSpace(create_node_mesh(comm, "box", (H, W, C), cell="hexahedron"), "DG", 0)
        else:
            space = NodeSpace(create_node_mesh(comm, "rectangle", (H, W), cell="quadrilateral"), "DG", 0)
        make = lambda method: LocalKernel(space, radius=R / H, cells=2 * R, channels=C, method=method)  # noqa: E731
        kern = make("auto")
        assert kern.method == "grid", kern.method
        lay = Layout(space, kern, H, W, C, R)
        n = space.n
        rng = np.random.default_rng(0)
        a = 0.5 * rng.standard_normal((N, n))
        b = rng.standard_normal((N, kern.M)) / (np.sqrt((2 * R + 1) ** 2 * C) * lay.w0)  # conv weights ~ 1/sqrt(fan-in)
        Wn, mu = rng.standard_normal((K, n)) / (np.sqrt(n) * lay.w0), 0.1 * rng.standard_normal(K)
        X, y = rng.standard_normal((S, n)), rng.integers(0, K, S)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "p.npz"
            np.savez(src, a=lay.image(a), w=lay.conv_weights(b), Wr=lay.image(Wn * lay.omega), mu=mu, X=lay.image(X),
                     y=y, tau=1.0 / N, R=R)
            torch = {dt: torch_run(args, src, Path(tmp) / f"r_{dt}.npz", dt) for dt in dict.fromkeys(dtypes + ["float64"])}
        ref = torch["float64"]
        ref_nat = {"a": lay.natural(ref["grad"]["a"]), "b": lay.kappa_gradient(ref["grad"]["w"]),
                   "W": lay.natural(ref["grad"]["Wr"]) * lay.omega, "mu": ref["grad"]["mu"]}
        flops = 3 * N * 2.0 * kern.nnz * S
        for dt in dtypes:
            times = {}
            for method in ("grid", "csr") if args.csr else ("grid",):
                net = Network(space, Depth(1.0, N), "tanh", "euler", kernel=kern if method == "grid" else make("csr"),
                              dtype=dt)
                J = ReducedFunctional(net, X, y, "classes", K=K, lam=0.0)
                m = J.controls.from_natural(a, b, Wn, mu)

                def gradient():
                    J._point = None  # a new point: forward with tape + costate
                    return J.derivative(m)

                times[method] = best(gradient, args.repeat)
                if method == "grid":
                    mine = J.controls.natural(J.derivative(m))
                    err = max(abs(ref["J"] - J(m)) / abs(ref["J"]),
                              *(np.abs(ref_nat[k] - mine[k]).max() / np.abs(ref_nat[k]).max() for k in ("a", "b", "W", "mu")))
                J.destroy(), net.destroy()
            pt = torch[dt]["gradient"]
            rows.append((C, dt, times["grid"], pt, times.get("csr"), flops, err))
        space.destroy()
    info = torch[dtypes[0]]
    print(f"fem_dnn local kernel (grid path) vs PyTorch {info['torch']} conv2d ({info['threads']} thread(s)): "
          f"{H} x {W} pixels, {2 * R + 1} x {2 * R + 1} support, N = {N} Euler layers, S = {S}, one gradient "
          f"(forward + costate + derivative), best of {args.repeat}")
    csr = " | CSR path s | grid speed-up" if args.csr else ""
    print(f"| C | dtype | fem_dnn s | torch s | ratio fem_dnn / torch | fem_dnn GFlop/s | torch GFlop/s{csr} | "
          "max rel. difference to torch float64 |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if args.csr else "") + " ---: |")
    for C, dt, tg, pt, tc, fl, err in rows:
        extra = f" | {tc:.4f} | {tc / tg:.2f}" if tc is not None else ""
        print(f"| {C} | {dt} | {tg:.4f} | {pt:.4f} | {tg / pt:.2f} | {fl / tg / 1e9:.1f} | {fl / pt / 1e9:.1f}{extra} | "
              f"{err:.1e} |")


if __name__ == "__main__":
    main()
