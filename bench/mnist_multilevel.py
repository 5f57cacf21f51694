"""Multilevel width training on MNIST-5k: 7x7 -> 14x14 -> 28x28 pixels against 28x28 alone.

The network of ``demos/mnist.toml`` with the local kernel (kappa on 4 x 4 Q1 cells of the
offset box of half-width ``--radius``, the same continuum kernel at every resolution):
:func:`fem_dnn.optimize.multilevel` trains ``--its`` L-BFGS iterations on each level and
moves the controls up with ``transfer_controls`` (kappa kept, biases and readout
interpolated); the reference trains ``3 x --its`` iterations at 28x28 from zero. Prints
the test accuracy after each level, the time and the iterations at 28x28, in one run.

    mpirun -n 2 python bench/mnist_multilevel.py [--its 100] [--radius 0.143]
"""

import argparse
import time
from pathlib import Path

from fem_dnn.process import configure

configure()  # the job's process settings: BLAS threads per rank (fem_dnn.process)

from mpi4py import MPI  # noqa: E402

from fem_dnn.app.config import load_config  # noqa: E402
from fem_dnn.app.run import Run  # noqa: E402
from fem_dnn.optimize import Optimizer, multilevel  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "demos" / "mnist.toml"


def run_at(res, radius, comm):
    sets = [f"data.resolution={res}", "network.kernel='local'", f"network.kernel_radius={radius}", "training.lam=1e-6"]
    return Run(load_config(CONFIG, sets), comm, out=lambda *a: None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--its", type=int, default=100)
    ap.add_argument("--radius", type=float, default=0.143)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    say = (lambda *a: print(*a, flush=True)) if comm.rank == 0 else (lambda *a: None)
    runs = [run_at(r, args.radius, comm) for r in (7, 14, 28)]
    t = time.perf_counter()
    results = multilevel([r.J for r in runs], "lbfgs", gttol=1e-12, monitor=False, max_it=args.its)
    t_ml = time.perf_counter() - t
    for r, res in zip(runs, results):
        say(f"multilevel, {r.space.n} neurons: {res.iterations} iterations, test accuracy {r.J_test.accuracy(res.m):.4f}")
    fine = runs[-1]
    t = time.perf_counter()
    opt = Optimizer(fine.J, "lbfgs", gttol=1e-12, monitor=False, max_it=3 * args.its)
    ref = opt.solve(fine.J.controls.create_vec())
    t_ref = time.perf_counter() - t
    say(f"multilevel 7 -> 14 -> 28: {t_ml:.1f} s, {results[-1].iterations} iterations at 28x28, "
        f"test accuracy {fine.J_test.accuracy(results[-1].m):.4f}")
    say(f"28x28 alone:             {t_ref:.1f} s, {ref.iterations} iterations, test accuracy {fine.J_test.accuracy(ref.m):.4f}")
    opt.destroy()


if __name__ == "__main__":
    main()
