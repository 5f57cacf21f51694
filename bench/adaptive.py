"""Where the error estimators pay off: adaptive against uniform refinement, in one run.

``--part function``: the function-to-function problem of tests/test_estimate.py with a
sharper bump (width ``--width`` at y = 0.3, 16 samples, lambda = 1e-2, cell-average
data, Euler): uniform refinement of depth and width together from (2 layers, 8 cells),
against :func:`fem_dnn.optimize.adaptive.adapt` (Dörfler 0.5 over the depth and width
indicators) from the same start. The error is ``J_ref - J`` with ``J_ref`` the optimum
on RK4 64 layers x 4 x the finest uniform cells, trained from the finest uniform optimum.

``--part images``: the 8x8 digits (``--samples`` of them, stratified split) on a coarse
mesh of 4 x 4 squares cut into triangles over the image (32 neurons), the data as cell
averages of the pixels; uniform refinement (32, 128, 512 neurons) against the adaptive
loop in width (fraction ``--fraction``): test accuracy against neurons.

Prints one table per part and writes ``bench_adaptive_<part>.json`` in the working folder.

    python bench/adaptive.py --part function
    python bench/adaptive.py --part images [--samples 1797]
"""

import argparse
import json
import time

from fem_dnn.process import configure

configure()  # the job's process settings: BLAS threads per rank (fem_dnn.process)

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from fem_dnn.core.depth import Depth  # noqa: E402
from fem_dnn.core.meshes import create_node_mesh  # noqa: E402
from fem_dnn.core.nodes import NodeSpace  # noqa: E402
from fem_dnn.learning.transfer import refine_nodes  # noqa: E402
from fem_dnn.learning.functional import ReducedFunctional  # noqa: E402
from fem_dnn.network import Network  # noqa: E402
from fem_dnn.learning.transfer import transfer_controls  # noqa: E402
from fem_dnn.optimize import Optimizer  # noqa: E402
from fem_dnn.optimize.adaptive import adapt  # noqa: E402


def train(J, m0=None, gttol=1e-9, max_it=5000):
    opt = Optimizer(J, "lbfgs", gttol=gttol, max_it=max_it, monitor=False)
    res = opt.solve(m0 if m0 is not None else J.controls.create_vec())
    opt.destroy()
    return res.m, res.iterations


def size(J):
    return int(J.controls.comm.allreduce(J.controls.n_local))


def function_part(args, comm, say):
    rng = np.random.default_rng(1)
    C, D = rng.normal(size=(2, 16))
    w = args.width

    def bump(x):
        return np.exp(-(((x[0] - 0.3) / w) ** 2))[None]

    def problem(space, depth, scheme="euler"):
        f_in = lambda x: C[:, None] * bump(x) + D[:, None] * x[0][None]  # noqa: E731
        f_out = lambda x: np.tanh(2 * C[:, None] * bump(x)) + 0.5 * D[:, None] * np.sin(3 * x[0])[None]  # noqa: E731
        return ReducedFunctional(Network(space, depth, "tanh", scheme), space.cell_averages(f_in), space.cell_averages(f_out),
                                 "function", lam=1e-2)

    start = NodeSpace(create_node_mesh(comm, "interval", 8), "DG", 0)
    uniform, Jc, m, sp = [], None, None, start
    t = time.perf_counter()
    for level in range(args.levels):
        depth = Depth(T=1.0, N=2 * 2**level)
        J = problem(sp, depth)
        m, its = train(J, None if Jc is None else transfer_controls(Jc.controls, m, J.controls))
        uniform.append({"layers": depth.N, "neurons": sp.n, "controls": size(J), "J": J(m), "iterations": its})
        say(f"uniform {depth.N:3d} layers x {sp.n:4d} cells: {size(J)} controls, J {J(m):.8e}")
        Jc, sp = J, refine_nodes(sp)
    t_uniform = time.perf_counter() - t
    ref_space = sp
    for _ in range(1):
        ref_space = refine_nodes(ref_space)
    Jr = problem(ref_space, Depth(T=1.0, N=64), "rk4")
    mr, _ = train(Jr, transfer_controls(Jc.controls, m, Jr.controls))
    J_ref = Jr(mr)
    say(f"reference: RK4 64 layers x {ref_space.n} cells, J {J_ref:.8e}")
    limit = uniform[-1]["controls"]
    t = time.perf_counter()
    cycles = adapt(problem, start, Depth(T=1.0, N=2), fraction=0.5, cycles=args.cycles, max_controls=limit,
                   gttol=1e-9, max_it=5000)
    t_adapt = time.perf_counter() - t
    adaptive = [{"layers": c.J.network.depth.N, "neurons": c.J.network.space.n, "controls": c.controls, "J": c.value,
                 "estimate": c.estimate, "eta_depth": float(c.depth.sum()), "eta_width": float(c.width.sum())}
                for c in cycles]
    for row in uniform + adaptive:
        row["error"] = J_ref - row["J"]
    say(f"\n{'':9s} {'layers':>6s} {'cells':>6s} {'controls':>9s} {'J_ref - J':>11s} {'estimate':>11s} {'effectivity':>11s}")
    for name, rows in (("uniform", uniform), ("adaptive", adaptive)):
        for r in rows:
            est = r.get("estimate")
            say(f"{name:9s} {r['layers']:6d} {r['neurons']:6d} {r['controls']:9d} {r['error']:+11.3e} "
                + (f"{est:+11.3e} {est / r['error']:11.3f}" if est is not None else ""))
    target = abs(uniform[-1]["error"])
    reached = [r for r in adaptive if abs(r["error"]) <= target]
    if reached:
        say(f"\nadaptive reaches the finest uniform error {target:.3e} with {reached[0]['controls']} controls: "
            f"{reached[0]['controls'] / limit:.2f} of the uniform {limit} (goal <= 0.5)")
    else:
        say(f"\nadaptive does not reach the finest uniform error {target:.3e} within {limit} controls "
            f"(best {min(abs(r['error']) for r in adaptive):.3e})")
    say(f"time: uniform {t_uniform:.1f} s, adaptive {t_adapt:.1f} s (with its estimates)")
    return {"uniform": uniform, "adaptive": adaptive, "J_ref": J_ref, "seconds": {"uniform": t_uniform, "adaptive": t_adapt}}


def images_part(args, comm, say):
    from fem_dnn.app import data as datasets

    ds = datasets.digits()
    if args.samples < ds.size:
        ds = ds.subset(np.arange(args.samples))
    tr, te = datasets.split(ds.size, 0.2, 0, labels=ds.targets)
    train_ds, test_ds = ds.subset(tr), ds.subset(te)
    tests = {}

    def problem(space, depth):
        net = Network(space, depth, "tanh", "euler")
        J = ReducedFunctional(net, space.cell_averages(train_ds.inputs, 12), train_ds.targets, "classes", K=10, lam=args.lam)
        tests[id(J)] = lambda: ReducedFunctional(net, space.cell_averages(test_ds.inputs, 12), test_ds.targets, "classes",
                                                 K=10, lam=args.lam)
        return J

    depth = Depth(T=1.0, N=2)
    start = NodeSpace(create_node_mesh(comm, "rectangle", 4, cell="triangle"), "DG", 0)
    uniform, sp, Jc, m = [], start, None, None
    t = time.perf_counter()
    for _ in range(3):
        J = problem(sp, depth)
        m, its = train(J, None if Jc is None else transfer_controls(Jc.controls, m, J.controls), gttol=1e-7,
                       max_it=args.its)
        acc = tests[id(J)]().accuracy(m)
        uniform.append({"neurons": sp.n, "controls": size(J), "J": J(m), "test_accuracy": acc, "iterations": its})
        say(f"uniform {sp.n:4d} neurons: {size(J)} controls, J {J(m):.5e}, test accuracy {acc:.4f}")
        Jc, sp = J, refine_nodes(sp)
    t_uniform = time.perf_counter() - t
    adaptive = []

    def record(c):
        acc = tests[id(c.J)]().accuracy(c.m)
        adaptive.append({"neurons": c.J.network.space.n, "controls": c.controls, "J": c.value, "estimate": c.estimate,
                         "test_accuracy": acc, "iterations": c.iterations})
        say(f"adaptive {c.J.network.space.n:4d} neurons: {c.controls} controls, J {c.value:.5e}, estimate "
            f"{c.estimate:+.3e}, test accuracy {acc:.4f}")

    t = time.perf_counter()
    adapt(problem, start, depth, refine=("width",), fraction=args.fraction, cycles=args.cycles,
          max_controls=uniform[1]["controls"], gttol=1e-7, max_it=args.its, newton_its=args.newton_its, callback=record)
    t_adapt = time.perf_counter() - t
    goal = uniform[1]
    reached = [r for r in adaptive if r["test_accuracy"] >= goal["test_accuracy"]]
    if reached:
        say(f"\nadaptive reaches the uniform {goal['neurons']}-neuron test accuracy {goal['test_accuracy']:.4f} with "
            f"{reached[0]['neurons']} neurons: {reached[0]['neurons'] / goal['neurons']:.2f} of them (goal <= 0.6)")
    else:
        say(f"\nadaptive does not reach the uniform {goal['neurons']}-neuron test accuracy {goal['test_accuracy']:.4f} "
            f"(best {max(r['test_accuracy'] for r in adaptive):.4f})")
    say(f"time: uniform {t_uniform:.1f} s, adaptive {t_adapt:.1f} s (with its estimates)")
    return {"uniform": uniform, "adaptive": adaptive, "seconds": {"uniform": t_uniform, "adaptive": t_adapt}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["function", "images"], default="function")
    ap.add_argument("--width", type=float, default=0.04, help="function: the bump's width")
    ap.add_argument("--levels", type=int, default=4, help="function: uniform levels")
    ap.add_argument("--cycles", type=int, default=12)
    ap.add_argument("--samples", type=int, default=1797, help="images: digits used")
    ap.add_argument("--its", type=int, default=300, help="images: L-BFGS iterations a level")
    ap.add_argument("--lam", type=float, default=1e-4, help="images: lambda")
    ap.add_argument("--fraction", type=float, default=0.3, help="images: marking fraction")
    ap.add_argument("--newton-its", type=int, default=50, help="images: CG iterations of the width estimate")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    say = (lambda *a: print(*a, flush=True)) if comm.rank == 0 else (lambda *a: None)
    out = (function_part if args.part == "function" else images_part)(args, comm, say)
    if comm.rank == 0:
        with open(f"bench_adaptive_{args.part}.json", "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
