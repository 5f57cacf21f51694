"""MNIST-5k: fem_dnn's kernels against PyTorch on the same split, same threads, one run.

The split is the one ``fem-dnn train demos/mnist.toml`` uses (stratified 4000/1000,
``--seed``: data.seed, 0 the demos' default). fem_dnn trains each configuration of
``--configs`` with ``mpirun -n 2 fem-dnn train demos/mnist.toml --set ...`` (L-BFGS,
float64, one BLAS thread per rank; conv-slabs: demos/mnist_conv.toml as shipped, Adam,
float32) and reports the run folder's test accuracy and training time; the time to the
target accuracy is read from metrics.csv (test accuracy every ``output.test_every``
iterations, every epoch for Adam), interpolated linearly in the iterations (epochs).
``--runs`` adds fem_dnn run folders trained before (their metrics.csv and summary.json)
instead. PyTorch (``bench/torch_mnist.py`` in the interpreter given by
``--torch-python``, float32, ``--torch-threads`` 2: what a PyTorch user runs) trains for
``--epochs`` epochs the networks of ``--torch-networks``: a small CNN, the exact ResNet
of the dense kernel, and the exact twin of demos/mnist_conv.toml's depth-slab network
(bench/torch_slabs.py, built from that config's network section; Adam at each constant
learning rate of ``--twin-lr`` from each start of ``--twin-init``: fem_dnn's
``init_scale = 0.1`` one in distribution, PyTorch's default initialisation; the config's
batch size). ``--configs`` with nothing runs PyTorch only. ``--png`` draws the test
accuracy against the seconds of training, one curve a network (fem_dnn's: its
metrics.csv rows with a test accuracy, at the training seconds interpolated linearly in
the iterations; PyTorch's: every epoch). The table: test accuracy (PyTorch: its best
epoch's; fem_dnn: the final one), the final test and train accuracies, the seconds of
training (PyTorch: to its best epoch; fem_dnn: all) and to the target.

    python bench/mnist_vs_pytorch.py --torch-python PATH [--epochs 30] [--target 0.97]
        [--configs dense-14 local-14 lowrank-14 conv-slabs ...] [--max-it 300] [--seed 0]
        [--torch-networks cnn,resnet,slabs] [--twin-lr 0.0005 0.001] [--twin-init fem_dnn torch]
        [--torch-threads 2] [--runs FOLDER ...] [--png PATH]
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
    # demos/mnist_conv.toml as shipped: depth slabs 28x28x16 -> 14x14x32, relu, decay, max pooling, Adam, float32
    "conv-slabs": [],
}
#: the configurations that run another demo config than demos/mnist.toml
BASE = {"conv-slabs": HERE.parent / "demos" / "mnist_conv.toml"}


def twin_config() -> dict:
    """The slab twin's settings: demos/mnist_conv.toml's network section (resolved)."""
    from fem_dnn.app.config import load_config

    cfg = load_config(BASE["conv-slabs"])
    nw = cfg["network"]
    if nw["slab_kernel_cells"]:
        sys.exit("mnist_vs_pytorch: the twin (bench/torch_slabs.py) has one kappa node a pixel; demos/mnist_conv.toml "
                 "sets network.slab_kernel_cells")
    return {"slab_pixels": nw["slab_pixels"], "slab_channels": nw["slab_channels"], "slab_layers": nw["slab_layers"],
            "slab_support": nw["slab_support"], "slab_T": nw["T"], "slab_scheme": nw["scheme"],
            "slab_activation": nw["activation"], "slab_pooling": nw["slab_pooling"],
            "slab_readout_pixels": nw["slab_readout_pixels"], "slab_readout_pooling": nw["slab_readout_pooling"],
            "slab_decay": nw["decay"], "slab_batch": cfg["training"]["batch_size"]}


def split_problem(path: Path, target: float, seed: int = 0, twin_lr=(), twin_init=("fem_dnn",)):
    from fem_dnn.app import data as datasets

    ds = datasets.mnist(28)
    train, test = datasets.split(ds.size, 0.2, seed, labels=ds.targets)
    X = ds.inputs.values.reshape(ds.size, -1)
    np.savez(path, Xtrain=X[train], ytrain=ds.targets[train], Xtest=X[test], ytest=ds.targets[test], target=target,
             slab_lr=np.asarray(twin_lr, dtype=float), slab_init=np.asarray(twin_init), **twin_config())
    return len(train), len(test)


def curve(folder: Path, seconds: float):
    """``[(iteration or epoch, seconds, test accuracy)]`` of the metrics.csv rows with a
    test accuracy, the seconds interpolated linearly in the iterations (L-BFGS) or epochs
    (Adam) from the run's training seconds."""
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    key = "iteration" if "iteration" in rows[-1] else "epoch"
    last = int(rows[-1][key]) or 1
    return [(int(r[key]), seconds * int(r[key]) / last, float(r["test_accuracy"])) for r in rows if r["test_accuracy"]]


def time_to(folder: Path, target: float, seconds: float):
    """Seconds to the first row at ``target`` test accuracy (:func:`curve`)."""
    return next((t for _, t, acc in curve(folder, seconds) if acc >= target), None)


def fem_dnn_row(name: str, folder: Path, target: float) -> dict:
    """A table row (and curve) from a fem_dnn run folder."""
    s = json.loads((folder / "summary.json").read_text())
    return {"network": f"fem_dnn {name}", "best_test_accuracy": s["test_accuracy"], "train_accuracy": s["train_accuracy"],
            "seconds": s["training_seconds"], "seconds_to_target": time_to(folder, target, s["training_seconds"]),
            "iterations": s["iterations"], "curve": curve(folder, s["training_seconds"])}


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
    return fem_dnn_row(name, folder, target)


def plot(rows: list, path: Path, title: str, target: float):
    """Test accuracy against the seconds of training, one curve a network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r.get("curve"):
            t, acc = [c[1] for c in r["curve"]], [c[2] for c in r["curve"]]
            ax.plot(t, acc, marker=".", ms=3, label=r["network"])
    ax.axhline(target, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("seconds of training")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(max(0.0, min((c[2] for r in rows for c in r.get("curve", [])), default=0.0) - 0.01), 1.0)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torch-python", help="a Python with torch (e.g. a 3.11 venv with torch==2.13.0)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--max-it", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="data.seed of the split (0: the demos' default split)")
    ap.add_argument("--configs", nargs="*", default=["dense-14", "local-14", "lowrank-14"], choices=sorted(CONFIGS))
    ap.add_argument("--torch-threads", type=int, default=2,
                    help="PyTorch's threads (2: both cores; on a machine loaded by other jobs 1 thread is faster)")
    ap.add_argument("--torch-networks", default="cnn,resnet,slabs",
                    help="PyTorch's networks, comma-separated: cnn, resnet, slabs (the slab network's twin)")
    ap.add_argument("--twin-lr", nargs="+", type=float, default=[5e-4, 1e-3],
                    help="the slab twin's Adam learning rates (one run each; 5e-4: about the recipe's step, "
                         "its lr 0.02 being half the 0.04 that matches PyTorch's 1e-3, docs/model.md 5.2)")
    ap.add_argument("--twin-init", nargs="+", choices=("torch", "fem_dnn"), default=["fem_dnn", "torch"],
                    help="the slab twin's starts (one run each with each learning rate): fem_dnn's init_scale 0.1 "
                         "start, PyTorch's default initialisation")
    ap.add_argument("--runs", nargs="*", default=[], type=Path,
                    help="fem_dnn run folders trained before (on the same split), added to the table and figure")
    ap.add_argument("--png", type=Path, help="draw test accuracy against seconds of training here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        S, St = split_problem(tmp / "mnist.npz", args.target, args.seed, args.twin_lr, args.twin_init)
        if args.torch_python:
            out = subprocess.run([args.torch_python, str(HERE / "torch_mnist.py"), str(tmp / "mnist.npz"), str(args.torch_threads),
                                  str(args.epochs), args.torch_networks], check=True, capture_output=True, text=True)
            rows += [dict(json.loads(line), network=f"PyTorch {json.loads(line)['network']}") for line in out.stdout.splitlines()]
        for name in args.configs:
            rows.append(fem_dnn_run(name, CONFIGS[name], tmp, args.max_it, args.target, args.seed))
    rows += [fem_dnn_row(f"run {folder.name}", folder, args.target) for folder in args.runs]
    title = f"MNIST-5k, {S} training / {St} test images (data.seed {args.seed}); time to {args.target:.0%} test accuracy"
    print(title)
    print(f"{'network':<40} {'params':>7} {'test acc':>8} {'final':>6} {'train acc':>9} {'seconds':>8} {'to target':>9}")
    for r in rows:
        tt, final = r["seconds_to_target"], r["curve"][-1][2] if r.get("curve") else float("nan")
        print(f"{r['network']:<40} {r.get('parameters', ''):>7} {r['best_test_accuracy']:>8.4f} {final:>6.3f} "
              f"{r.get('train_accuracy', float('nan')):>9.4f} {r.get('seconds_to_best', r['seconds']):>8.1f} "
              f"{'never' if tt is None else f'{tt:.1f}':>9}")
    if args.png:
        plot(rows, args.png, title, args.target)


if __name__ == "__main__":
    main()
