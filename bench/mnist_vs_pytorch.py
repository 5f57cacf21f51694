"""MNIST-5k: fem_dnn's kernels against PyTorch on the same split, same threads, one run.

The split is the one ``fem-dnn train demos/mnist.toml`` uses (stratified 4000/1000, seed
0). fem_dnn trains each configuration below with ``mpirun -n 2 fem-dnn train
demos/mnist.toml --set ...`` (L-BFGS, float64, one BLAS thread per rank) and reports the
run folder's test accuracy and training time; the time to the target accuracy is read
from metrics.csv (test accuracy every ``output.test_every`` iterations), interpolated
linearly in the iterations. PyTorch (``bench/torch_mnist.py`` in the interpreter given by
``--torch-python``, float32, 2 threads: what a PyTorch user runs) trains a small CNN and
the exact ResNet of the dense kernel with Adam for ``--epochs`` epochs.

    python bench/mnist_vs_pytorch.py --torch-python PATH [--epochs 30] [--target 0.97]
        [--configs dense-14 local-14 lowrank-14 ...] [--max-it 300]
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "demos" / "mnist.toml"

#: fem_dnn configurations: name -> --set overrides of demos/mnist.toml
CONFIGS = {
    "dense-14": [],
    "dense-7": ["data.resolution=7"],
    "local-14": ["network.kernel='local'", "network.kernel_radius=0.143", "training.lam=1e-6"],
    "local-14-c4": ["network.kernel='local'", "network.kernel_radius=0.143", "node.channels=4", "training.lam=1e-6",
                   "training.init_scale=0.1"],
    "lowrank-14": ["network.kernel='lowrank'", "network.kernel_rank=16", "training.init_scale=0.1"],
    # demos/mnist_conv.toml as shipped: depth slabs 28x28x1 -> 14x14x8 -> 7x7x16, Adam, float32
    "conv-slabs": [],
}
#: the configurations that run another demo config than demos/mnist.toml
BASE = {"conv-slabs": HERE.parent / "demos" / "mnist_conv.toml"}


def split_problem(path: Path, target: float, seed: int = 0):
    from fem_dnn.app import data as datasets

    ds = datasets.mnist(28)
    train, test = datasets.split(ds.size, 0.2, seed, labels=ds.targets)
    X = ds.inputs.values.reshape(ds.size, -1)
    np.savez(path, Xtrain=X[train], ytrain=ds.targets[train], Xtest=X[test], ytest=ds.targets[test], target=target)
    return len(train), len(test)


def time_to(folder: Path, target: float, seconds: float):
    """Seconds to the first row at ``target`` test accuracy, interpolated linearly in the
    iterations (L-BFGS) or epochs (Adam)."""
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    key = "iteration" if "iteration" in rows[-1] else "epoch"
    last = int(rows[-1][key]) or 1
    for r in rows:
        if r["test_accuracy"] and float(r["test_accuracy"]) >= target:
            return seconds * int(r[key]) / last
    return None


def fem_dnn_run(name, overrides, workdir: Path, max_it: int, target: float, seed: int = 0):
    folder = workdir / f"out_{name}"
    mpirun = shutil.which("mpirun", path=os.path.dirname(sys.executable)) or "mpirun"
    cmd = [mpirun, "-n", "2", sys.executable, "-m", "fem_dnn", "train", str(BASE.get(name, CONFIG)), "--set",
           f"output.folder='{folder}'", "--set", f"data.seed={seed}", "--set", "output.figures=false"]
    # L-BFGS: the iteration limit and the test set every 10 iterations; Adam: every epoch
    cmd += ["--set", "output.test_every=1"] if name in BASE else ["--set", f"training.max_it={max_it}", "--set",
                                                                  "output.test_every=10"]
    for o in overrides:
        cmd += ["--set", o]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=workdir)
    s = json.loads((folder / "summary.json").read_text())
    return {"network": f"fem_dnn {name}", "best_test_accuracy": s["test_accuracy"], "train_accuracy": s["train_accuracy"],
            "seconds": s["training_seconds"], "seconds_to_target": time_to(folder, target, s["training_seconds"]),
            "iterations": s["iterations"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torch-python", help="a Python with torch (e.g. a 3.11 venv with torch==2.13.0)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--max-it", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="data.seed of the split (0: the demos' default split)")
    ap.add_argument("--configs", nargs="*", default=["dense-14", "local-14", "lowrank-14"], choices=sorted(CONFIGS))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        S, St = split_problem(tmp / "mnist.npz", args.target, args.seed)
        if args.torch_python:
            out = subprocess.run([args.torch_python, str(HERE / "torch_mnist.py"), str(tmp / "mnist.npz"), "2", str(args.epochs)],
                                 check=True, capture_output=True, text=True)
            rows += [dict(json.loads(line), network=f"PyTorch {json.loads(line)['network']}") for line in out.stdout.splitlines()]
        for name in args.configs:
            rows.append(fem_dnn_run(name, CONFIGS[name], tmp, args.max_it, args.target, args.seed))
    print(f"MNIST-5k, {S} training / {St} test images (data.seed {args.seed}); time to {args.target:.0%} test accuracy")
    print(f"{'network':<28} {'test acc':>8} {'seconds':>8} {'to target':>9}")
    for r in rows:
        tt = r["seconds_to_target"]
        print(f"{r['network']:<28} {r['best_test_accuracy']:>8.4f} {r.get('seconds_to_best', r['seconds']):>8.1f} "
              f"{'never' if tt is None else f'{tt:.1f}':>9}")


if __name__ == "__main__":
    main()
