"""fem_dnn's depth-slab network against its PyTorch twin (bench/torch_slabs.py): the same
network, J and gradient equal.

Builds a small :class:`~fem_dnn.network.slabs.SlabNetwork` the way ``fem-dnn train``
builds one from ``network.slab_*`` (fem_dnn/app/train.py: per slab an image x channels
DG0 mesh, ``LocalKernel(radius=R/H, cells=2R)``, ``Depth(T N_i/N, N_i)``, explicit Euler,
tanh; default 8x8 x 1 -> 4x4 x 2 -> 2x2 x 4 channels, layers 1/2/2, R = 1), random
controls and data, the classes readout and mean cross-entropy (lam = 0). Every control is
mapped to the twin's weights (bench/conv_vs_pytorch.py's ``Layout``: natural order ->
(C, H, W) images, kappa -> conv2d weights with the cell volume omega and the kernel's
quadrature rule), PyTorch computes J and the gradient by autograd in float64 and its
gradient is mapped back by the chain rule. Prints the largest relative differences (J;
every slab's a and kappa blocks; W and mu), per slab transfer (``--poolings``: the L2
projection against ``avg_pool2d``, the max pooling against ``max_pool2d``), kernel rule
(``--quadratures``) and fem_dnn precision (``--dtypes``; each against PyTorch float64);
exits non-zero when a float64 one exceeds ``--tol``.

PyTorch runs in its own interpreter (``--torch-python``, default $FEM_DNN_TORCH_PYTHON):

    python bench/slabs_vs_pytorch.py --torch-python /path/to/python3.11 \\
        [--pixels 8,4,2] [--channels 1,2,4] [--layers 1,2,2] [--support 1] [--T 4]
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
from fem_dnn.core.images import create_image_mesh
from fem_dnn.core.kernel import LocalKernel
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.network import Network
from fem_dnn.network.slabs import SlabNetwork

from conv_vs_pytorch import Layout  # noqa: E402  (bench/, this script's folder)

configure()

K = 10


def ints(s):
    return [int(v) for v in s.split(",")]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-python", default=os.environ.get("FEM_DNN_TORCH_PYTHON", ""))
    p.add_argument("--pixels", type=ints, default=[8, 4, 2])
    p.add_argument("--channels", type=ints, default=[1, 2, 4])
    p.add_argument("--layers", type=ints, default=[1, 2, 2])
    p.add_argument("--support", type=int, default=1, help="R: a (2R+1) x (2R+1) pixel support in every slab")
    p.add_argument("--T", type=float, default=4.0)
    p.add_argument("--S", type=int, default=32, help="samples")
    p.add_argument("--quadratures", default="nodal,exact")
    p.add_argument("--poolings", default="average,max")
    p.add_argument("--dtypes", default="float64,float32")
    p.add_argument("--activation", default="tanh")
    p.add_argument("--decay", type=float, default=0.0, help="network.decay gamma: df/dt = sigma(.) - gamma f")
    p.add_argument("--readout-pixels", type=int, default=0, help="network.slab_readout_pixels (0: the last state)")
    p.add_argument("--readout-pooling", default="average", help="network.slab_readout_pooling: average or max")
    p.add_argument("--tol", type=float, default=1e-12, help="the largest float64 relative difference accepted")
    args = p.parse_args()
    if not args.torch_python:
        sys.exit("slabs_vs_pytorch: give --torch-python (an interpreter with torch) or set FEM_DNN_TORCH_PYTHON")
    comm, R, N = MPI.COMM_SELF, args.support, sum(args.layers)
    spaces = []
    for H, C in zip(args.pixels, args.channels):
        mesh = create_image_mesh(comm, (H, H), C) if C > 1 else create_node_mesh(comm, "rectangle", H,
                                                                                 cell="quadrilateral")
        spaces.append(NodeSpace(mesh, "DG", 0))
    H0, C0, Hr, Cr = args.pixels[0], args.channels[0], args.readout_pixels, args.channels[-1]
    # a first slab of C0 > 1 channels: the one-channel image, copied by the input projection
    inputs = NodeSpace(create_node_mesh(comm, "rectangle", H0, cell="quadrilateral"), "DG", 0) if C0 > 1 else None
    pooled = None
    if Hr:  # the readout's pooled image x channels space
        pooled = NodeSpace(create_image_mesh(comm, (Hr, Hr), Cr) if Cr > 1 else
                           create_node_mesh(comm, "rectangle", Hr, cell="quadrilateral"), "DG", 0)
    data_space, readout_space = inputs or spaces[0], pooled or spaces[-1]
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((args.S, data_space.n)), rng.integers(0, K, args.S)
    rows, fails = [], []
    for pooling, quad in ((pl, q) for pl in args.poolings.split(",") for q in args.quadratures.split(",")):
        kerns = [LocalKernel(sp, radius=R / H, cells=2 * R, channels=C, quadrature=quad)
                 for sp, H, C in zip(spaces, args.pixels, args.channels)]
        lays = [Layout(sp, kern, H, H, C, R) for sp, kern, H, C in zip(spaces, kerns, args.pixels, args.channels)]
        a = [0.5 * rng.standard_normal((n, sp.n)) for n, sp in zip(args.layers, spaces)]
        b = [rng.standard_normal((n, kern.M)) / (np.sqrt((2 * R + 1) ** 2 * C) * lay.w0)  # conv weights ~ 1/sqrt(fan-in)
             for n, kern, lay, C in zip(args.layers, kerns, lays, args.channels)]
        first = Layout(inputs, kerns[0], H0, H0, 1, R) if inputs else lays[0]
        last = Layout(pooled, kerns[-1], Hr, Hr, Cr, R) if pooled else lays[-1]
        Wn, mu = rng.standard_normal((K, readout_space.n)) / (np.sqrt(readout_space.n) * last.w0), 0.1 * rng.standard_normal(K)
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "p.npz", Path(tmp) / "r.npz"
            np.savez(src, pixels=args.pixels, channels=args.channels, layers=args.layers, support=R, T=args.T, pooling=pooling,
                     activation=args.activation, decay=args.decay, readout_pixels=Hr, readout_pooling=args.readout_pooling,
                     X=first.image(X), y=y, Wr=last.image(Wn * last.omega), mu=mu,
                     **{f"a{i}": lay.image(ai) for i, (lay, ai) in enumerate(zip(lays, a))},
                     **{f"w{i}": lay.conv_weights(bi) for i, (lay, bi) in enumerate(zip(lays, b))})
            res = subprocess.run([args.torch_python, str(Path(__file__).with_name("torch_slabs.py")), str(src), str(dst)],
                                 capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if res.returncode != 0:
                sys.exit(f"slabs_vs_pytorch: the PyTorch run failed:\n{res.stderr[-2000:]}")
            info = json.loads(res.stdout.strip().splitlines()[-1])
            ref = dict(np.load(dst))
        # PyTorch's gradient in fem_dnn's natural-order controls (the chain rule back)
        ref_nat = {f"a{i}": lay.natural(ref[f"da{i}"]) for i, lay in enumerate(lays)}
        ref_nat.update({f"b{i}": lay.kappa_gradient(ref[f"dw{i}"]) for i, lay in enumerate(lays)})
        ref_nat.update(W=last.natural(ref["dWr"]) * last.omega, mu=ref["dmu"])
        for dt in args.dtypes.split(","):
            nets = [Network(sp, Depth(args.T * n / N, n), args.activation, "euler", kernel=kern, dtype=dt, decay=args.decay)
                    for sp, kern, n in zip(spaces, kerns, args.layers)]
            net = SlabNetwork(nets, input_space=inputs, readout_space=pooled, pooling=pooling,
                              readout_pooling=args.readout_pooling)
            J = ReducedFunctional(net, X, y, "classes", K=K, lam=0.0)
            m = J.controls.from_natural(a, b, Wn, mu)
            val = J(m)
            g = J.controls.natural(J.derivative(m))
            mine = {**{f"a{i}": gi for i, gi in enumerate(g["a"])}, **{f"b{i}": gi for i, gi in enumerate(g["b"])},
                    "W": g["W"], "mu": g["mu"]}
            err = {"J": abs(val - float(ref["J"])) / abs(float(ref["J"]))}
            err.update({k: np.abs(mine[k] - ref_nat[k]).max() / np.abs(ref_nat[k]).max() for k in ref_nat})
            rows.append((pooling, quad, dt, float(ref["J"]), val, err))
            if dt == "float64" and max(err.values()) > args.tol:
                fails.append(f"{pooling} {quad} {dt}: {max(err.values()):.1e}")
            J.destroy(), net.destroy()
    for sp in spaces + [inputs, pooled]:
        if sp is not None:
            sp.destroy()
    slabs = " -> ".join(f"{H}x{H} x {C}" for H, C in zip(args.pixels, args.channels))
    readout = f"readout {args.readout_pooling}-pooled to {Hr}x{Hr}" if Hr else "readout on the last state"
    print(f"fem_dnn slab network vs its PyTorch twin (torch {info['torch']}, float64 autograd): {slabs}, layers "
          f"{'/'.join(map(str, args.layers))}, {2 * R + 1}x{2 * R + 1} support, T = {args.T:g}, Euler, "
          f"{args.activation}, decay {args.decay:g}, {readout}, S = {args.S}, K = {K}")
    keys = list(rows[0][5])
    print("| pooling | kernel rule | fem_dnn dtype | J (PyTorch) | " + " | ".join(f"rel. diff {k}" for k in keys) + " |")
    print("| --- | --- | --- | ---: | " + " | ".join("---:" for _ in keys) + " |")
    for pooling, quad, dt, Jt, _, err in rows:
        print(f"| {pooling} | {quad} | {dt} | {Jt:.15g} | " + " | ".join(f"{err[k]:.1e}" for k in keys) + " |")
    if fails:
        sys.exit(f"slabs_vs_pytorch: float64 differences above {args.tol:g}: {', '.join(fails)}")


if __name__ == "__main__":
    main()
