"""The local kernel's node-parallel speed-up on image x channels meshes: pixel blocks
against DOLFINx's default partition.

One gradient (forward + costate + derivative) of the convolutional ResNet of
bench/conv_vs_pytorch.py (H x H pixels x C channels, DG0, explicit Euler, a (2R+1)^2
pixel support, N layers, S samples, softmax readout), the best of ``--repeat``, on 1
rank and on ``--ranks`` ranks (one BLAS thread a rank), the node mesh either
``create_image_mesh`` (each rank owns every channel of a rectangle of pixels: the halo
is the support's border, the grid path's GEMMs run on the whole block) or
``create_node_mesh`` (DOLFINx's graph partition, which cuts across channels). Prints one
table: times, speed-ups, the halo rows a rank receives and which path the kernel took.

    python bench/conv_parallel.py --pixels 28 --channels 16 --ranks 2
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fem_dnn  # noqa: F401  (DOLFINx import order)
import numpy as np
from mpi4py import MPI

from fem_dnn.core.depth import Depth
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.core.images import create_image_mesh
from fem_dnn.core.kernel import LocalKernel
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.network import Network


def one(args):
    """Under mpirun: the best gradient time of one configuration, as a JSON line."""
    comm = MPI.COMM_WORLD
    H, C, R = args.pixels, args.channels, args.support
    mesh = create_image_mesh(comm, (H, H), C) if args.mesh == "blocks" else \
        create_node_mesh(comm, "box", (H, H, C), cell="hexahedron")
    sp = NodeSpace(mesh, "DG", 0)
    kern = LocalKernel(sp, radius=R / H, cells=2 * R, channels=C)
    net = Network(sp, Depth(T=1.0, N=args.N), "tanh", "euler", kernel=kern, dtype=args.dtype)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(args.S, sp.n)), rng.integers(0, 10, args.S)
    J = ReducedFunctional(net, X, y, "classes", K=10, lam=1e-4)
    m = J.controls.random(1, 0.1)
    g = J.controls.create_vec()
    times = []
    for i in range(args.repeat + 1):
        comm.Barrier()
        m.array[:] *= 1.0 + 1e-9  # other controls: J caches the solve of the last ones
        t0 = time.perf_counter()
        J(m)
        J.derivative(m, g)
        comm.Barrier()
        if i:
            times.append(time.perf_counter() - t0)
    halo = comm.allreduce(kern.halo.ghosts.size, op=MPI.MAX)
    if comm.rank == 0:
        print(json.dumps({"seconds": min(times), "halo": halo, "path": kern.method, "n": sp.n}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pixels", type=int, default=28)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--support", type=int, default=2)
    p.add_argument("--N", type=int, default=4)
    p.add_argument("--S", type=int, default=256)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dtypes", default="float64,float32")
    p.add_argument("--mesh", default="", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float64", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mesh:
        return one(args)
    mpirun = Path(sys.executable).with_name("mpirun")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    base = [sys.executable, __file__, "--pixels", str(args.pixels), "--channels", str(args.channels), "--support",
            str(args.support), "--N", str(args.N), "--S", str(args.S), "--repeat", str(args.repeat)]

    def run(ranks, mesh, dtype):
        cmd = ([str(mpirun), "-n", str(ranks)] if ranks > 1 else []) + base + ["--mesh", mesh, "--dtype", dtype]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            sys.exit(f"conv_parallel: {' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])

    print(f"{args.pixels}x{args.pixels} pixels x {args.channels} channels, {2 * args.support + 1}^2 support, "
          f"N = {args.N}, S = {args.S}: one gradient, best of {args.repeat}, one thread a rank")
    print(f"| dtype | mesh | 1 rank s | {args.ranks} ranks s | speed-up | halo rows a rank | path |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for dtype in args.dtypes.split(","):
        for mesh in ("blocks", "dolfinx"):
            serial = run(1, mesh, dtype)
            par = run(args.ranks, mesh, dtype)
            print(f"| {dtype} | {mesh} | {serial['seconds']:.4f} | {par['seconds']:.4f} | "
                  f"{serial['seconds'] / par['seconds']:.2f} | {par['halo']} | {par['path']} |", flush=True)


if __name__ == "__main__":
    main()
