"""Time and iterations to 97% test accuracy on the digits: fem_dnn against PyTorch Adam.

The network is the default config's (``fem-dnn config``): DG0 on the 8x8 pixels (64
neurons), 4 explicit Euler layers, tanh, softmax readout, lambda = 3e-4, zero initial
controls, the same 80/20 split. fem_dnn trains with its TAO methods in the L2
coordinates (default: L-BFGS) and with its own mini-batch Adam over a grid of learning
rates and batch sizes (steps in the same coordinates); PyTorch trains the identical
network (same J, regulariser included) with Adam over a grid of learning rates and batch
sizes (full batch and mini-batches), from the same zero controls. The test accuracy is
checked after every iteration (fem_dnn) or epoch (PyTorch), outside the timed part.
Prints one table; J of both codes is cross-checked at a random point first.

PyTorch runs in its own interpreter (``--torch-python``, default $FEM_DNN_TORCH_PYTHON):

    OPENBLAS_NUM_THREADS=1 python bench/time_to_accuracy.py --torch-python /path/to/python3.11
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

from fem_dnn.app.config import load_config
from fem_dnn.optimize import Optimizer, minibatch
from fem_dnn.app.run import Run

configure()  # the job's process settings: BLAS threads per rank, malloc (fem_dnn.process)


def fem_dnn_run(run, method, target, max_it):
    """Train from zero with ``method``; returns iterations, solves and training seconds
    (test-accuracy checks excluded) when the test accuracy first reaches ``target``."""
    J, Jt = run.J, run.J_test
    J.counts.update({k: 0 for k in J.counts})
    state = {"eval": 0.0, "reached": None, "acc": 0.0}

    def monitor(row):
        t0 = time.perf_counter()
        training = t0 - state["start"] - state["eval"]
        acc = state["acc"] = Jt.accuracy(opt._point(opt.tao.getSolution()))
        state["eval"] += time.perf_counter() - t0
        if state["reached"] is None and acc >= target:
            state["reached"] = {"iterations": row["iteration"], "seconds": training, "forward": row["forward"],
                                "costate": row["costate"]}
            opt.tao.setConvergedReason(8)  # user-defined stop (TAO_CONVERGED_USER)

    opt = Optimizer(J, method, gttol=1e-12, max_it=max_it, monitor=monitor)
    m0 = J.controls.create_vec()
    state["start"] = time.perf_counter()
    res = opt.solve(m0)
    out = {"method": method, "reached": state["reached"], "accuracy": state["acc"], "iterations": res.iterations}
    res.m.destroy(), m0.destroy(), opt.destroy()
    return out


class _Reached(Exception):
    pass


def fem_dnn_minibatch(run, method, lr, batch_size, target, max_epochs):
    """fem_dnn's own mini-batch Adam/SGD (steps in the L2 coordinates), timed the same
    way: the test accuracy after every epoch, outside the timed part."""
    J, Jt = run.J, run.J_test
    J.counts.update({k: 0 for k in J.counts})
    state = {"eval": 0.0, "reached": None, "acc": 0.0, "epoch": 0, "step": 0}

    def on_epoch(epoch, m, opt_state, row):
        t0 = time.perf_counter()
        training = t0 - state["start"] - state["eval"]
        acc = state["acc"] = Jt.accuracy(m)
        state.update(epoch=epoch, step=row["step"], seconds=training)
        state["eval"] += time.perf_counter() - t0
        if acc >= target:
            state["reached"] = {"iterations": row["step"], "epochs": epoch, "seconds": training,
                                "forward": J.counts["forward"], "costate": J.counts["costate"]}
            raise _Reached

    state["start"] = time.perf_counter()
    m0 = J.controls.create_vec()
    try:
        res = minibatch(J, m0, method, lr=lr, batch_size=batch_size, epochs=max_epochs, monitor=False,
                        on_epoch=on_epoch, evaluate=False)
        res.m.destroy()
    except _Reached:
        pass
    J.set_batch(None)
    m0.destroy()
    return {"method": f"{method} lr {lr:g}, batch {batch_size}", "reached": state["reached"], "accuracy": state["acc"],
            "iterations": state["step"], "epochs": state["epoch"], "seconds": state.get("seconds", 0.0)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-python", default=os.environ.get("FEM_DNN_TORCH_PYTHON", ""))
    p.add_argument("--threads", type=int, default=int(os.environ.get("OPENBLAS_NUM_THREADS", "1")))
    p.add_argument("--target", type=float, default=0.97)
    p.add_argument("--methods", default="lbfgs", help="fem_dnn TAO methods, comma-separated")
    p.add_argument("--max-it", type=int, default=300)
    p.add_argument("--lrs", default="0.01,0.03,0.1,0.3,1")
    p.add_argument("--batch-sizes", default="0,256,64", help="0: full batch")
    p.add_argument("--max-epochs", type=int, default=300)
    p.add_argument("--fem-lrs", default="0.003,0.01,0.03,0.1,0.3", help="learning rates of fem_dnn's Adam (L2 coordinates)")
    p.add_argument("--fem-batch-sizes", default="0,256,64", help="0: full batch")
    args = p.parse_args()
    if not args.torch_python:
        sys.exit("time_to_accuracy: give --torch-python (an interpreter with torch) or set FEM_DNN_TORCH_PYTHON")
    comm = MPI.COMM_WORLD
    if comm.size != 1:
        sys.exit("time_to_accuracy: run it serially (the comparison is one core against one core)")
    run = Run(load_config(None), comm, out=lambda *a: None)
    J, Jt, sp, cs = run.J, run.J_test, run.space, run.J.controls
    N = run.net.depth.N

    # the problem in natural node order, and fem_dnn's L2 weights of the controls
    ones = cs.create_vec()
    ones.set(1.0)
    w = cs.natural(cs.regularisation_operator(1.0, 0.0, ones))
    check = cs.random(3, 0.5)
    check_nat, J_check = cs.natural(check), J(check)
    zero = cs.natural(cs.create_vec())
    problem = dict(tau=run.net.depth.T / N, lam=J.lam, target=args.target, max_epochs=args.max_epochs,
                   Xtrain=sp.to_natural(J._F0_all).T.copy(), ytrain=J._labels_all,
                   Xtest=sp.to_natural(Jt._F0_all).T.copy(), ytest=Jt._labels_all,
                   lrs=np.array([float(v) for v in args.lrs.split(",")]),
                   batch_sizes=np.array([int(v) for v in args.batch_sizes.split(",")]),
                   **{f"w{k}": w[k] for k in w}, **{f"check_{k}": check_nat[k] for k in w}, **{f"{k}0": zero[k] for k in w})
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "problem.npz"
        np.savez(src, **problem)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        res = subprocess.run([args.torch_python, str(Path(__file__).with_name("torch_digits.py")), str(src), str(args.threads)],
                             capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"time_to_accuracy: the PyTorch run failed:\n{res.stderr[-2000:]}")
    lines = [json.loads(s) for s in res.stdout.strip().splitlines()]
    head, torch_runs = lines[0], lines[1:]
    err = abs(head["check_J"] - J_check) / abs(J_check)
    if err > 1e-10:
        sys.exit(f"time_to_accuracy: J differs between fem_dnn ({J_check}) and PyTorch ({head['check_J']}): not the same network")
    mine = [fem_dnn_run(run, m, args.target, args.max_it) for m in args.methods.split(",")]
    mine += [fem_dnn_minibatch(run, "adam", float(lr), int(bs) or J.n_samples, args.target, args.max_epochs)
             for lr in args.fem_lrs.split(",") if lr for bs in args.fem_batch_sizes.split(",")]

    print(f"Time to {args.target:.0%} test accuracy on the digits ({J.n_samples} training / {Jt.n_samples} test samples; "
          f"{sp.n} neurons, {N} Euler layers, lambda = {J.lam:g}), float64, {args.threads} thread(s); "
          f"PyTorch {head['torch']}; J agrees to {err:.1e}")
    print("| code | method | iterations (steps) | epochs | forward + costate solves | seconds | final test accuracy |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in sorted(mine, key=lambda r: (r["reached"] is None, (r["reached"] or {}).get("seconds", 0.0))):
        q, epochs = r["reached"], r.get("epochs", "")
        name = r["method"] if "epochs" in r else f"{r['method']} (TAO)"
        if q is None:
            print(f"| fem_dnn | {name} | not reached in {r['iterations']} | {epochs} | | {r.get('seconds', 0.0):.3f} | "
                  f"{r['accuracy']:.4f} |")
        else:
            print(f"| fem_dnn | {name} | {q['iterations']} | {q.get('epochs', '')} | {q['forward']} + {q['costate']} | "
                  f"{q['seconds']:.3f} | {r['accuracy']:.4f} |")
    for r in sorted(torch_runs, key=lambda r: (r["reached"] is None, (r["reached"] or {}).get("seconds", 0.0))):
        q, name = r["reached"], f"Adam lr {r['lr']:g}, batch {r['batch_size']}"
        if q is None:
            print(f"| PyTorch | {name} | not reached in {r['steps']} | {r['epochs']} | | {r['seconds']:.3f} | {r['accuracy']:.4f} |")
        else:
            print(f"| PyTorch | {name} | {q['steps']} | {q['epochs']} | {q['steps']} gradients | {q['seconds']:.3f} | "
                  f"{r['accuracy']:.4f} |")
    ones.destroy(), check.destroy()
    run.destroy()


if __name__ == "__main__":
    main()
