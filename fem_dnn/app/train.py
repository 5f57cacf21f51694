"""A training run from a config: data -> node mesh and space -> network -> reduced
functional -> optimiser -> run folder.

The run folder (``output.folder``) receives:

- ``config.toml``: the resolved config (every key, documented);
- ``metrics.csv``: one row per iteration (epoch for sgd/adam): J, gradient norm, step,
  train loss and accuracy, test loss and accuracy (every ``output.test_every``
  iterations; the test set is evaluated outside the timed training), solves so far, and
  in the last row why training stopped (``stop``);
- ``summary.json``: final training and test loss (and accuracy), iterations, the stop
  reason (code and words; ``at_resolution``: a line search stopped because J reached the
  resolution of the network's precision, a normal end, :meth:`fem_dnn.optimize.tao.Optimizer.resolution`),
  the final gradient norm ``gnorm`` (in the optimiser's L2 coordinates), solves, seconds (training, test evaluation, all), ranks;
- ``checkpoint/checkpoint.npz``: the controls (atomic, checksummed; ``--resume``);
- ``fields.xdmf``/``fields.bp`` (1D and 2D node domains): state f and costate r of a
  few test samples, and the controls a and b (diagonal and row integral) over the
  (depth, node) mesh, for ParaView;
- ``training.png``, ``states.png``, ``weights.png``.

The checkpoint, ``config.toml``, ``metrics.csv``, ``summary.json`` and the figures are
written atomically (a temporary file renamed over the old one), so a run killed at any
moment leaves each of them complete, old or new. The field files (XDMF + HDF5 / VTX) are
written in place at the end of a run and are not protected that way.

A folder holds one run (:mod:`fem_dnn.app.runfolder`): a new run into a folder that holds a
result is refused unless it continues it (``resume``) or replaces it (``overwrite``), and
nothing is written before every check has passed. SIGINT/SIGTERM (with the handlers of
:mod:`fem_dnn.interrupt` installed, as ``fem-dnn train`` does) stop training at the next
accepted iterate with its checkpoint written: :class:`~fem_dnn.interrupt.Interrupted`.
"""

import contextlib
import copy
import csv
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

import dolfinx.io

from fem_dnn.app import data as datasets
from fem_dnn import interrupt
from fem_dnn.app import runfolder
from fem_dnn.app.config import to_toml
from fem_dnn.core.depth import Depth, ProductMesh
from fem_dnn.core.layout import split_comm
from fem_dnn.core.meshes import create_node_mesh, read_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.core.images import create_image_mesh
from fem_dnn.core.kernel import KERNELS
from fem_dnn.errors import InputError, describe_os_error, one_line
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.learning.losses import get_loss
from fem_dnn.network import Network
from fem_dnn.optimize.methods import MINIBATCH

__all__ = ["EVALUATE_KEYS", "Run", "evaluate", "train", "verify"]


class Run:
    """Everything a config builds: layout, data split, node space, network, and the
    training and test functionals."""

    def __init__(self, cfg: dict, comm: MPI.Comm = MPI.COMM_WORLD, out=print):
        self.cfg, self.comm = cfg, comm
        self.say = (lambda *a: out(*a)) if comm.rank == 0 else (lambda *a: None)
        d, nd, nw, tr = cfg["data"], cfg["node"], cfg["network"], cfg["training"]
        self.layout = split_comm(comm, tr["sample_groups"])
        if d["resolution"] and d["name"] != "mnist":
            raise InputError(f"data.resolution applies to data.name = 'mnist' only, not {d['name']!r}")
        family = KERNELS[nw["kernel"]]
        if family.needs_random_start and tr["init_scale"] == 0:
            raise InputError(f"network.kernel = {nw['kernel']!r} needs training.init_scale > 0: {family.needs_random_start}")
        if nd["channels"] > 1 and (nd["mesh"] or nd["space"] != "DG0"):
            raise InputError(f"node.channels = {nd['channels']} builds an image x channels mesh of DG0 cells: it takes "
                             f"no node.mesh and needs node.space = 'DG0'" + (f", not {nd['space']!r}" if not nd["mesh"] else ""))
        with_channels = [name for name, fam in KERNELS.items() if fam.takes_channels]
        if nd["channels"] > 1 and not family.takes_channels:
            raise InputError(f"node.channels = {nd['channels']} makes the node domain image x channels for a kernel that "
                             f"is local in the image and dense across channels ({', '.join(with_channels)}); "
                             f"network.kernel = {nw['kernel']!r} takes no channels (each of its neurons already sees "
                             "every pixel: for more neurons refine the pixels, node.refine)")
        if nd["channels"] > 1 and tr["init_scale"] == 0:
            raise InputError(f"node.channels = {nd['channels']}: at zero controls every channel is the same and stays so "
                             "(the derivative is symmetric in the channels); start from training.init_scale > 0")
        if d["name"] == "digits":
            ds = datasets.digits()
        elif d["name"] == "mnist":
            ds = datasets.mnist(d["resolution"])
        elif d["name"] == "bumps":
            ds = datasets.bumps()
        else:
            if not d["path"]:
                raise InputError("data.name = 'file' needs data.path (an .npz or .csv file)")
            ds = datasets.load(d["path"])
        if d["samples"]:
            ds = ds.subset(np.arange(min(d["samples"], ds.size)))
        fam, deg = nd["space"][:-1], int(nd["space"][-1])
        if fam != "DG":
            ds = ds.with_mode("bilinear")
        self.data = ds
        self.train_idx, self.test_idx = datasets.split(ds.size, d["test_fraction"], d["seed"],
                                                       labels=ds.targets if ds.stratified else None)
        self.val_idx = np.zeros(0, dtype=np.int64)
        if d["validation_fraction"] > 0:  # from the training samples only: the test set stays unseen
            part = ds.subset(self.train_idx)
            keep, val = datasets.split(part.size, d["validation_fraction"], d["seed"] + 1,
                                       labels=part.targets if ds.stratified else None)
            if not len(val):
                raise InputError(f"data.validation_fraction = {d['validation_fraction']} of {part.size} training samples "
                                 "holds no validation sample; raise it or use more samples")
            self.train_idx, self.val_idx = self.train_idx[keep], self.train_idx[val]
        if tr["patience"] and not len(self.val_idx):
            raise InputError(f"training.patience = {tr['patience']} stops on the validation metric: it needs "
                             "data.validation_fraction > 0")
        if nw["slab_pixels"] or nw["slab_channels"] or nw["slab_layers"]:
            self._build_slabs()
            return
        node_comm = self.layout.node_comm
        if nd["mesh"]:
            mesh = read_node_mesh(nd["mesh"], node_comm)
            dim = {"interval": 1, "rectangle": 2}[ds.domain["shape"]]
            if mesh.topology.dim != dim:
                raise InputError(f"node mesh {nd['mesh']} is {mesh.topology.dim}D, but the {ds.name} data are functions "
                                 f"on a {dim}D domain (the unit {'interval' if dim == 1 else 'square'})")
            fit_to_unit_box(mesh, nd["fit"], f"node mesh {nd['mesh']}", f"the {ds.name} data")
        elif nd["channels"] > 1:  # image x channels: C layers of cells along a last axis, pixel blocks
            shape, k, C = ds.domain["shape"], ds.domain["n"] * nd["refine"], nd["channels"]
            mesh = create_image_mesh(node_comm, k if shape == "interval" else (k, k), C)
        else:
            shape, k = ds.domain["shape"], ds.domain["n"] * nd["refine"]
            mesh = create_node_mesh(node_comm, shape, k, cell=nd["cell"] if shape == "rectangle" else None)
        depth = Depth(points=np.array(nw["depth_points"])) if nw["depth_points"] else Depth(nw["T"], nw["N"])
        self._build(NodeSpace(mesh, fam, deg, nd["mass"]), depth)

    def _build(self, space: NodeSpace, depth: Depth):
        """The network and the functionals on the discretisation (space, depth)."""
        nd, nw = self.cfg["node"], self.cfg["network"]
        self.space, self.spaces = space, [space]
        kernel = KERNELS[nw["kernel"]].from_config(self.space, nw, nd)
        self.net = Network(self.space, depth, nw["activation"], nw["scheme"], nw["eps"], layout=self.layout, kernel=kernel,
                           dtype=nw["dtype"])
        self._functionals()

    def _build_slabs(self):
        """Depth slabs (``network.slab_pixels``, ``slab_channels``, ``slab_layers``): one
        image x channels mesh, local kernel and uniform network a slab, joined by the L2
        projection (:class:`~fem_dnn.network.slabs.SlabNetwork`); checks first."""
        from fem_dnn.core.kernel import LocalKernel
        from fem_dnn.network.slabs import SlabNetwork

        cfg, ds = self.cfg, self.data
        nd, nw, ad = cfg["node"], cfg["network"], cfg["adapt"]
        pixels, chans, layers = ([int(v) for v in nw[k]] for k in ("slab_pixels", "slab_channels", "slab_layers"))
        if not (len(pixels) == len(chans) == len(layers)):
            raise InputError(f"network.slab_pixels, slab_channels and slab_layers give {len(pixels)}, {len(chans)} and "
                             f"{len(layers)} slabs: one entry each a slab")
        if nw["kernel"] != "local":
            raise InputError(f"depth slabs need network.kernel = 'local' (each slab's kernel is the convolution of "
                             f"its image x channels mesh), not {nw['kernel']!r}")
        if nd["mesh"] or nd["channels"] != 1 or nd["space"] != "DG0" or nd["refine"] != 1:
            raise InputError("depth slabs build their own image x channels meshes of DG0 cells: they take no "
                             "node.mesh, node.channels = 1, node.refine = 1 and node.space = 'DG0'")
        if ds.domain["shape"] != "rectangle" or ds.kind != "classes":
            raise InputError(f"depth slabs need images and a classes readout (the last slab is coarser than the "
                             f"data); the {ds.name} data are {ds.kind} on the unit "
                             f"{'interval' if ds.domain['shape'] == 'interval' else 'square'}")
        if nw["depth_points"]:
            raise InputError("network.depth_points gives one depth mesh; depth slabs have slab_layers layers of "
                             "length T/N each")
        if ad["cycles"]:
            raise InputError("adapt.cycles > 0: the adaptive loop refines one uniform network, not depth slabs")
        if pixels[0] != ds.domain["n"]:
            raise InputError(f"network.slab_pixels[0] = {pixels[0]} must be the data's image, {ds.domain['n']} pixels a "
                             "side (the input is the first slab's initial state)")
        for a, b in zip(pixels, pixels[1:]):
            if a % b:
                raise InputError(f"network.slab_pixels = {pixels}: {b} does not divide {a} (a slab's pixels must be "
                                 "nested in the ones of the slab before)")
        if max(chans) > 1 and cfg["training"]["init_scale"] == 0:
            raise InputError(f"network.slab_channels = {chans}: at zero controls every channel of a slab is the same "
                             "and stays so (the derivative is symmetric in the channels); start from training.init_scale "
                             "> 0")
        R = nw["slab_support"]
        if R >= min(pixels):
            raise InputError(f"network.slab_support = {R} pixels is not smaller than the coarsest slab's "
                             f"{min(pixels)} pixels a side")
        N = sum(layers)
        self.spaces, nets = [], []
        for k, C, n_layers in zip(pixels, chans, layers):
            node = self.layout.node_comm
            mesh = create_image_mesh(node, (k, k), C) if C > 1 else create_node_mesh(node, "rectangle", k,
                                                                                     cell="quadrilateral")
            sp = NodeSpace(mesh, "DG", 0, nd["mass"])
            self.spaces.append(sp)
            kern = LocalKernel(sp, radius=R / k, cells=2 * R, channels=C, quadrature=nw["kernel_quadrature"])
            nets.append(Network(sp, Depth(nw["T"] * n_layers / N, n_layers), nw["activation"], nw["scheme"], nw["eps"],
                                layout=self.layout, kernel=kern, dtype=nw["dtype"]))
        inputs = None
        if chans[0] > 1:  # the one-channel image, copied to the first slab's channels by the projection
            inputs = NodeSpace(create_node_mesh(self.layout.node_comm, "rectangle", pixels[0], cell="quadrilateral"),
                               "DG", 0, nd["mass"])
        pooled, rp = None, nw["slab_readout_pixels"]
        if rp:  # the readout's pooled image x channels space
            if pixels[-1] % rp:
                raise InputError(f"network.slab_readout_pixels = {rp} does not divide the last slab's {pixels[-1]} "
                                 "pixels a side")
            pooled = NodeSpace(create_image_mesh(self.layout.node_comm, (rp, rp), chans[-1], spare_ranks=True), "DG", 0,
                               nd["mass"])
        self.space = inputs or self.spaces[0]  # the input's
        self.net = SlabNetwork(nets, input_space=inputs, readout_space=pooled)
        self._functionals()

    @property
    def slabs(self) -> bool:
        """The network is a :class:`~fem_dnn.network.slabs.SlabNetwork` (depth slabs)."""
        return hasattr(self.net, "slabs")

    def _functionals(self):
        """The training, test and validation functionals of :attr:`net`."""
        tr, ds = self.cfg["training"], self.data
        loss = get_loss(ds.kind if tr["loss"] == "default" else tr["loss"], readout=ds.kind)
        kw = dict(loss=loss, K=ds.K, lam=tr["lam"], gamma=tr["gamma"], block_weights={"a": tr["a_weight"], "b": tr["b_weight"]})
        self.J = self._functional(ds.subset(self.train_idx), kw)
        self.J_test = self._functional(ds.subset(self.test_idx), kw) if len(self.test_idx) else None
        self.J_val = self._functional(ds.subset(self.val_idx), kw) if len(self.val_idx) else None

    def on(self, space: NodeSpace, depth: Depth) -> "Run":
        """The same run (data, split, layout, settings) on another discretisation."""
        other = copy.copy(self)
        other._build(space, depth)
        return other

    def _functional(self, ds, kw):
        return ReducedFunctional(self.net, ds.inputs, ds.targets, **kw)

    def initial(self):
        tr = self.cfg["training"]
        if tr["init_scale"] > 0:
            return self.J.controls.random(tr["seed"], tr["init_scale"])
        return self.J.controls.create_vec()

    def metrics(self, m) -> dict:
        out = {"train_loss": self.J.loss_value(m), "J": self.J(m)}
        if self.data.kind == "classes":
            out["train_accuracy"] = self.J.accuracy(m)
        for name, F in (("validation", self.J_val), ("test", self.J_test)):
            if F is not None:
                out[f"{name}_loss"] = F.loss_value(m)
                if self.data.kind == "classes":
                    out[f"{name}_accuracy"] = F.accuracy(m)
        return out

    def destroy(self):
        for F in (self.J, self.J_test, self.J_val):
            if F is not None:
                F.destroy()
        self.net.destroy()
        for sp in self.spaces:
            sp.destroy()


def train(cfg: dict, comm: MPI.Comm = MPI.COMM_WORLD, resume: bool = False, out=print, overwrite: bool = False,
          dry_run: bool = False) -> dict:
    """Train as the config says, write the run folder, return the summary.

    Args:
        cfg: a validated config (:func:`fem_dnn.app.config.load_config`).
        comm: the communicator of the run.
        resume: continue the run in ``output.folder`` from its checkpoint.
        out: the print function (rank 0).
        overwrite: replace the run in ``output.folder`` (its files are removed first).
        dry_run: print the problem sizes and the memory estimate
            (:func:`fem_dnn.app.memory.estimate_memory`) and return it (as a dict) without
            building or writing anything; for an adaptive config, also every cycle's
            upper bounds of the sizes and relative costs (``cycles``:
            :func:`fem_dnn.optimize.adaptive.adaptive_cycles`; empty otherwise).

    Raises:
        InputError: every check fails before anything is written (the run folder rules
            of :mod:`fem_dnn.app.runfolder` among them).
        Interrupted: SIGINT/SIGTERM stopped training (handlers of
            :func:`fem_dnn.interrupt.handling` installed); the checkpoint holds the last
            accepted iterate.
    """
    from fem_dnn.app.checkpoint import CheckpointFile
    from fem_dnn.optimize import TAO, Optimizer, minibatch, msa

    from fem_dnn.app import memory

    t0 = time.perf_counter()
    est = memory.estimate_memory(cfg, comm)  # before anything of the problem's size is allocated
    if dry_run:
        if comm.rank == 0:
            out(est.describe())
        memory.check(est, comm)
        return {"neurons": est.neurons, "layers": est.layers, "samples": est.samples, "controls": est.controls,
                "peak_bytes": est.peak_bytes, "available_bytes": est.available_bytes, "cycles": est.cycles}
    memory.check(est, comm)
    run = Run(cfg, comm, out)
    tr, folder = cfg["training"], Path(cfg["output"]["folder"])
    ckpt_dir = folder / "checkpoint"
    bounds = {}
    if tr["bounds_a"]:
        bounds["a"] = tuple(tr["bounds_a"])
    if tr["bounds_b"]:
        bounds["b"] = tuple(tr["bounds_b"])
    method = tr["method"]
    ckpt = ckpt_dir / "checkpoint.npz"
    # everything that can refuse the input comes before the first write; the run folder
    # last, so that a wrong input is named even when the folder holds a run
    state = runfolder.inspect(folder, comm)
    resume_from = state.checkpoint if resume else None
    _check_training(run, bounds, resume_from)
    refine = _check_adaptive(run, resume) if cfg["adapt"]["cycles"] else None
    opt = None
    evaluator = _Evaluator(run, cfg["output"]["test_every"], ckpt_dir / "best.npz" if run.J_val is not None else None,
                           method)
    if method in TAO and refine is None:
        opt = Optimizer(run.J, method, riesz=tr["riesz"], bounds=bounds or None, gauss_newton=tr["gauss_newton"],
                        gttol=tr["gttol"], max_it=tr["max_it"], monitor=True, checkpoint=CheckpointFile(ckpt, run.J.controls),
                        checkpoint_every=tr["checkpoint_every"], metrics=evaluator)
    try:
        runfolder.prepare(folder, comm, resume=resume, overwrite=overwrite)
        sig = interrupt.requested(comm)
        if sig:  # during start-up: nothing is written yet
            raise interrupt.Interrupted(sig)
    except BaseException:
        if opt is not None:
            opt.destroy()
        run.destroy()
        raise
    if refine is not None:
        return _train_adaptive(run, refine, bounds, folder, t0)
    m0 = run.initial()
    if resume_from is None:
        # a new run's first checkpoint holds its initial controls (before config.toml,
        # so that a folder with a config always has a checkpoint to evaluate or resume)
        from fem_dnn.app.checkpoint import save_checkpoint

        initial = {"method": method, "initial": True, "history": [], "iteration": 0}
        if method in ("sgd", "adam"):
            initial.update(seed=tr["seed"], batch_size=tr["batch_size"], epoch=0, batch=0, step=0)
        save_checkpoint(ckpt, run.J.controls, m0, initial)
    runfolder.write_text(folder / "config.toml", to_toml(cfg), comm)
    if resume_from is not None and resume_from != ckpt:
        # a crash between the two renames of a checkpoint update (file systems without
        # hard links) left only the .prev: put it back under the checkpoint's name
        from fem_dnn.app.checkpoint import recover_checkpoint

        recover_checkpoint(ckpt, comm)
    if resume_from is not None and evaluator.best_path is not None and evaluator.best_path.is_file():
        evaluator.restore()  # the best iterate before the interruption
    S_train, S_test = len(run.train_idx), len(run.test_idx)
    v = run.J.controls.create_vec()
    n_controls = v.getSize()
    v.destroy()  # explicitly: a parallel Vec left to Python would wait in PETSc's garbage
    run.say(f"fem-dnn train: {run.data.name} ({run.data.kind}), {S_train} training / {S_test} test samples; "
            f"{_neurons(run)} neurons ({cfg['node']['space']}), {run.net.depth.N} layers ({run.net.scheme}), "
            f"{n_controls} controls; method {tr['method']} on {comm.size} rank(s)")
    t_train = time.perf_counter()
    if opt is not None:
        res = opt.solve(m0, resume=resume)
        opt.destroy()
    elif method in ("sgd", "adam"):
        res = minibatch(run.J, m0, method, lr=tr["lr"], lr_schedule=tr["lr_schedule"], batch_size=tr["batch_size"],
                        epochs=tr["epochs"], seed=tr["seed"],
                        riesz=tr["riesz"], checkpoint=CheckpointFile(ckpt, run.J.controls), resume=resume, metrics=evaluator)
    else:  # msa
        res = msa(run.J, m0, bounds, max_it=tr["max_it"], metrics=evaluator)
        from fem_dnn.app.checkpoint import save_checkpoint

        save_checkpoint(ckpt_dir / "checkpoint.npz", run.J.controls, res.m, {"method": "msa", "iteration": res.iterations,
                                                                             "history": res.history})
    m0.destroy()
    if res.interrupted:  # the checkpoint holds the last accepted iterate; metrics so far
        _write_metrics(res.history, folder, comm)
        res.m.destroy()
        run.destroy()
        unit = "step" if method in ("sgd", "adam") else "iteration"
        raise interrupt.Interrupted(res.interrupted, res.iterations, ckpt, resumable=method != "msa", unit=unit)
    training = time.perf_counter() - t_train - evaluator.seconds
    summary = {"data": run.data.name, "method": method, "iterations": res.iterations, "reason": res.reason,
               "stop": res.stop, "at_resolution": res.resolution, "gnorm": res.gnorm, "ranks": comm.size,
               "neurons": [sp.n for sp in run.spaces] if run.slabs else run.space.n,
               "layers": run.net.depth.N,
               **run.metrics(res.m), **evaluator.summary(), "solves": dict(run.J.counts), "training_seconds": training,
               "evaluation_seconds": evaluator.seconds, "seconds": time.perf_counter() - t0}
    if res.history:
        res.history[-1] = {**res.history[-1], "stop": res.stop}
    _write_outputs(run, res, summary, folder)
    line = f"train loss {summary['train_loss']:.6e}"
    if "train_accuracy" in summary:
        line += f", train accuracy {summary['train_accuracy']:.4f}"
    if "test_loss" in summary:
        line += f"; test loss {summary['test_loss']:.6e}"
    if "test_accuracy" in summary:
        line += f", test accuracy {summary['test_accuracy']:.4f}"
    run.say(f"fem-dnn train: {res.stop}; {line}")
    run.say(f"fem-dnn train: {training:.1f} s training, {evaluator.seconds:.1f} s test evaluation, "
            f"{summary['seconds']:.1f} s in all; run folder {folder}")
    res.m.destroy()
    run.destroy()
    sig = interrupt.requested(comm)
    if sig:  # while the outputs were written: they are complete, the run is finished
        raise interrupt.Interrupted(sig, res.iterations, ckpt, unit="the end of training, iteration")
    return summary


def _check_training(run: Run, bounds: dict, resume_from: Path | None):
    """Refuse a training setup that cannot run, before anything is written (collective):
    MSA without its box or scheme, and a checkpoint to resume from that is damaged, of
    another discretisation, or of an optimiser it cannot continue."""
    from fem_dnn.optimize import TAO

    tr = run.cfg["training"]
    method = tr["method"]
    if _writes_fields(run):
        reason = ProductMesh.unsupported(run.space.mesh)
        if reason:
            raise InputError(f"output.fields = true writes f and r over the (depth, node) mesh, but {reason}; "
                             "set output.fields = false to train on this mesh")
    if method == "msa":
        if set(bounds) != {"a", "b"}:
            raise InputError("training.method = 'msa' needs a box: training.bounds_a and training.bounds_b")
        if run.net.scheme != "euler" or run.space.mass != "lumped" or run.net.eps != 0:
            raise InputError("training.method = 'msa' needs the ResNet scheme: network.scheme = 'euler', "
                             "lumped node mass and network.eps = 0")
        if not run.net.kernel.rows_separate:
            raise InputError(f"training.method = 'msa' separates over the rows of a dense kernel; network.kernel = "
                             f"{run.net.kernel.name!r} couples them (use a gradient or Newton method)")
    if bounds and method in ("sgd", "adam"):
        raise InputError(f"training.method = {method!r} does not take a box (training.bounds_a, training.bounds_b); "
                         "use a bounded TAO method or msa")
    if resume_from is None or not resume_from.exists():
        return  # nothing to resume: training starts from the initial controls
    if method == "msa":
        raise InputError(f"training.method = 'msa' cannot resume (from {resume_from}); train without --resume")
    from fem_dnn.app.checkpoint import load_checkpoint

    m, state, arrays = load_checkpoint(resume_from, run.J.controls)  # integrity and discretisation
    m.destroy()
    saved = state.get("method")
    if saved != method and not (saved in TAO and method in TAO):
        raise InputError(f"checkpoint {resume_from} was written by method {saved!r}; it cannot resume method {method!r}")
    if state.get("initial"):
        return  # the initial controls of a run that stopped before its first iteration
    if method in TAO:
        need, have = ("iteration", "g0", "history"), state
    else:
        need = ("epoch", "step", "history") + tuple(f"{v}_{k}" for v in ("x", "m1", "m2") for k in run.J.controls.names)
        have = {**state, **arrays}
        if (state.get("seed"), state.get("batch_size")) != (tr["seed"], tr["batch_size"]):
            raise InputError(f"checkpoint {resume_from} is from a {saved} run with seed {state.get('seed')}, batch size "
                             f"{state.get('batch_size')}; this run has seed {tr['seed']}, batch size {tr['batch_size']}")
    missing = [k for k in need if k not in have]
    if missing:
        raise InputError(f"checkpoint {resume_from} lacks the training state {missing} that method {method!r} resumes from")


def _check_adaptive(run: Run, resume: bool) -> tuple:
    """Refuse an adaptive run that cannot run (before anything is written); its refine tuple."""
    from dolfinx import mesh as dmesh

    from fem_dnn.optimize import TAO
    from fem_dnn.optimize.adaptive import check

    ad, tr = run.cfg["adapt"], run.cfg["training"]
    refine = ("depth", "width") if ad["refine"] == "both" else (ad["refine"],)
    check(ad["goal"], ad["tolerance"], ad["fraction"], ad["cycles"], ad["max_controls"], refine)
    if tr["method"] not in TAO:
        raise InputError(f"adapt.cycles > 0 trains every cycle with a TAO method; training.method = {tr['method']!r} "
                         f"is not one ({', '.join(TAO)})")
    if resume:
        raise InputError("an adaptive run (adapt.cycles > 0) cannot resume: its cycles are not checkpointed; train again")
    if "width" in refine:
        sp, cell = run.space, run.space.mesh.topology.cell_type
        if cell not in (dmesh.CellType.interval, dmesh.CellType.triangle, dmesh.CellType.tetrahedron):
            raise InputError(f"adapt.refine = {ad['refine']!r} refines node cells with dolfinx.mesh.refine, which takes "
                             f"intervals, triangles and tetrahedra, not {cell.name}s (set node.cell = 'triangle', or "
                             "adapt.refine = 'depth')")
        if (sp.family, sp.degree) != ("DG", 0) or not run.net.kernel.node_pairs:
            pairs = " or ".join(repr(name) for name, fam in KERNELS.items() if fam.node_pairs)
            raise InputError(f"adapt.refine = {ad['refine']!r}: the width estimator needs node.space = 'DG0' and "
                             f"network.kernel = {pairs}, not {sp.family}{sp.degree} with {run.net.kernel.name!r}")
    size = run.J.controls.comm.allreduce(run.J.controls.n_local)
    if size > ad["max_controls"]:
        raise InputError(f"the initial discretisation has {size} controls > adapt.max_controls = {ad['max_controls']}: "
                         "the adaptive loop could not train a single cycle; start coarser or raise adapt.max_controls")
    return refine


def _train_adaptive(run: Run, refine: tuple, bounds: dict, folder: Path, t0: float) -> dict:
    """The adaptive loop of :func:`fem_dnn.optimize.adaptive.adapt` on the config's problem.

    The run folder gets, besides the usual files for the last cycle's discretisation
    (checkpoint, metrics.csv with a ``cycle`` column, summary.json with the cycles, the
    figures and fields): ``adapt/cycles.csv`` (one row per cycle), ``adapt/cycle_<k>.json``
    (depth points, indicators, marked layers and cells), ``adapt/cycle_<k>_mesh.xdmf`` (the
    node mesh with the width indicators), ``adapt/final.toml`` (the config of the last
    discretisation: ``fem-dnn evaluate`` reads it) and ``adapt.png``."""
    import types

    from fem_dnn.app.checkpoint import save_checkpoint
    from fem_dnn.app.config import validate
    from fem_dnn.app.output import cell_polygons, plot_adapt, write_indicator_mesh
    from fem_dnn.optimize.adaptive import adapt

    cfg, comm = run.cfg, run.comm
    ad, tr = cfg["adapt"], cfg["training"]
    records = folder / "adapt"
    if comm.rank == 0:
        records.mkdir(parents=True, exist_ok=True)
    comm.Barrier()
    runfolder.write_text(folder / "config.toml", to_toml(cfg), comm)
    made = {}

    def problem(space, depth):
        other = run.on(space, depth)
        made[id(other.J)] = other
        return other.J

    rows = []

    def record(cycle):
        r = made[id(cycle.J)]
        sp, depth = r.space, r.net.depth
        metrics = r.metrics(cycle.m)
        row = {"cycle": cycle.index, "layers": depth.N, "neurons": sp.n, "controls": cycle.controls,
               "iterations": cycle.iterations, "J": cycle.value, "estimate": cycle.estimate,
               "eta_depth": float(cycle.depth.sum()), "eta_width": float(cycle.width.sum()),
               "marked_layers": int(cycle.marked_layers.size), "marked_cells": int(cycle.marked_cells.size),
               **{k: v for k, v in metrics.items() if k != "J"}, "stop": cycle.stop}
        rows.append(row)
        detail = {"depth_points": depth.points.tolist(), "depth_indicators": cycle.depth.tolist(),
                  "width_indicators": cycle.width.tolist(), "marked_layers": cycle.marked_layers.tolist(),
                  "marked_cells": cycle.marked_cells.tolist(), **row}
        runfolder.write_text(records / f"cycle_{cycle.index}.json", json.dumps(detail, indent=1), comm)
        with _agreed(comm, f"cannot write {records / f'cycle_{cycle.index}_mesh.xdmf'}"):
            write_indicator_mesh(records / f"cycle_{cycle.index}_mesh.xdmf", sp,
                                 cycle.width if cycle.width.size else np.zeros(sp.n))
        acc = f", test accuracy {metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics else ""
        run.say(f"fem-dnn train: adapt cycle {cycle.index}: {depth.N} layers, {sp.n} neurons, {cycle.controls} controls, "
                f"{cycle.iterations} iterations, J {cycle.value:.6e}, estimate {cycle.estimate:+.3e} "
                f"(depth {row['eta_depth']:+.3e}, width {row['eta_width']:+.3e}){acc}"
                + (f"; {cycle.stop}" if cycle.stop else f"; refine {row['marked_layers']} layers, {row['marked_cells']} cells"))

    evaluators = []

    def metrics(J):  # every cycle's rows get the train, validation and test curves of a plain run
        ev = _Evaluator(made[id(J)], cfg["output"]["test_every"], None, tr["method"], patience=0)
        evaluators.append(ev)
        return ev

    t_train = time.perf_counter()
    cycles = adapt(problem, run.space, run.net.depth, goal=ad["goal"], tolerance=ad["tolerance"], fraction=ad["fraction"],
                   cycles=ad["cycles"], max_controls=ad["max_controls"], refine=refine, method=tr["method"],
                   gttol=tr["gttol"], max_it=tr["max_it"], callback=record, metrics=metrics, riesz=tr["riesz"],
                   bounds=bounds or None, gauss_newton=tr["gauss_newton"])
    evaluation = sum(ev.seconds for ev in evaluators)
    training = time.perf_counter() - t_train - evaluation
    last = cycles[-1]
    final = made[id(last.J)]
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    runfolder.write_text(records / "cycles.csv", text.getvalue(), comm)
    # the last discretisation as a config (fem-dnn evaluate rebuilds the run from it)
    final_cfg = copy.deepcopy(cfg)
    final_cfg["adapt"]["cycles"] = 0
    final_cfg["network"]["depth_points"] = final.net.depth.points.tolist()
    if "width" in refine:
        mesh_file = records / "final_mesh.xdmf"
        with _agreed(comm, f"cannot write {mesh_file}"), dolfinx.io.XDMFFile(comm, str(mesh_file), "w") as xf:
            xf.write_mesh(final.space.mesh)
        # relative to final.toml (load_config resolves it from there): the run folder can move
        final_cfg["node"]["mesh"], final_cfg["node"]["fit"] = os.path.relpath(mesh_file, records), "none"
    runfolder.write_text(records / "final.toml", to_toml(validate(final_cfg, "adapt/final.toml")), comm)
    save_checkpoint(folder / "checkpoint" / "checkpoint.npz", final.J.controls, last.m,
                    {"method": tr["method"], "iteration": last.iterations, "history": [], "adapt_cycles": len(cycles)})
    history = [{"cycle": c.index, **h} for c in cycles for h in c.history]
    summary = {"data": run.data.name, "method": tr["method"], "iterations": sum(c.iterations for c in cycles),
               "stop": last.stop, "ranks": comm.size, "neurons": final.space.n, "layers": final.net.depth.N,
               **final.metrics(last.m), "solves": dict(final.J.counts), "training_seconds": training,
               "evaluation_seconds": evaluation, "seconds": time.perf_counter() - t0, "adapt": rows}
    _write_outputs(final, types.SimpleNamespace(m=last.m, history=history), summary, folder)
    if cfg["output"]["figures"]:
        polygons = cell_polygons(final.space)
        with _atomic_figure(folder / "adapt.png", comm) as path:
            if comm.rank == 0:
                plot_adapt(path, polygons, last.width, [made[id(c.J)].net.depth.points for c in cycles],
                           [c.controls for c in cycles], [c.estimate for c in cycles], f"{run.data.name}: adaptive")
    run.say(f"fem-dnn train: adaptive run stopped ({last.stop}); {training:.1f} s training in {len(cycles)} cycles; "
            f"run folder {folder}")
    for c in cycles:
        c.m.destroy()
    for r in list(made.values())[::-1]:
        r.destroy()
    run.destroy()
    return summary


#: How far (relative to the domain's size) a node mesh's bounding box may be from the
#: data's domain: a polygon inscribed in the unit disk spans 0.9972 of it in y.
FIT_TOLERANCE = 0.02


def fit_to_unit_box(mesh, fit: str, what: str, data: str):
    """Make sure the node mesh lies on the data's domain, the unit interval or square
    (collective): a mesh whose bounding box is that domain (to :data:`FIT_TOLERANCE`)
    is kept; otherwise ``fit = "bbox"`` maps its bounding box onto the domain, axis by
    axis (the geometry is changed in place), and ``fit = "none"`` refuses it: data
    sampled on a mesh elsewhere would be silently misplaced.

    Raises:
        InputError: on every rank, naming the mesh's box and what to do.
    """
    d = mesh.geometry.dim
    x = mesh.geometry.x
    lo = x[:, :d].min(axis=0) if len(x) else np.full(d, np.inf)
    hi = x[:, :d].max(axis=0) if len(x) else np.full(d, -np.inf)
    mesh.comm.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
    mesh.comm.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
    if np.all(np.abs(lo) <= FIT_TOLERANCE) and np.all(np.abs(hi - 1.0) <= FIT_TOLERANCE):
        return
    box = " x ".join(f"[{a:.4g}, {b:.4g}]" for a, b in zip(lo, hi))
    unit = "[0, 1]" if d == 1 else "[0, 1] x [0, 1]"
    if fit != "bbox":
        raise InputError(f"{what} spans {box}, but {data} are functions on {unit}: set node.fit = 'bbox' to map "
                         f"the mesh's bounding box onto {unit}, or use a mesh of that domain")
    if np.any(hi - lo <= 0):
        raise InputError(f"{what} spans {box}: a flat bounding box cannot be mapped onto {unit}")
    x[:, :d] = (x[:, :d] - lo) / (hi - lo)


class _Evaluator:
    """The metrics of an iteration's row besides the optimiser's own: the train loss, the
    validation loss and accuracy (every iteration, with ``data.validation_fraction``),
    and every ``every`` iterations (0: never) the test loss and accuracy; its time is kept
    apart from the training time (``seconds``).

    With validation data it keeps the best iterate (the highest validation accuracy for
    classes, ties to the lower validation loss; the lowest validation loss otherwise) in
    ``checkpoint/best.npz`` (``evaluate --best``), and with ``training.patience = p``
    asks the optimiser to stop (a ``"stop"`` entry) when p iterations have passed
    without a better one (``patience``: None takes ``training.patience``; the cycles of
    an adaptive run pass 0: they end as the adaptive loop says)."""

    def __init__(self, run: Run, every: int, best=None, method: str = "", patience: int | None = None):
        self.run, self.every, self.seconds = run, int(every), 0.0
        self.best_path, self.method = best, method
        self.patience = int(run.cfg["training"]["patience"] if patience is None else patience)
        self.best = None  # (score, iteration, validation metrics)

    def restore(self):
        """The best so far of a resumed run, from its ``best.npz``."""
        from fem_dnn.app.checkpoint import load_checkpoint

        m, state, _ = load_checkpoint(self.best_path, self.run.J.controls)
        m.destroy()
        self._consider(state["best"], int(state["iteration"]), None)

    def _consider(self, row, iteration, m):
        classes = self.run.data.kind == "classes"
        score = (row["validation_accuracy"], -row["validation_loss"]) if classes else (-row["validation_loss"],)
        if self.best is None or score > self.best[0]:
            keep = {k: row[k] for k in ("validation_loss", "validation_accuracy") if k in row}
            self.best = (score, iteration, keep)
            if m is not None and self.best_path is not None:
                from fem_dnn.app.checkpoint import save_checkpoint

                save_checkpoint(self.best_path, self.run.J.controls, m,
                                {"method": self.method, "iteration": iteration, "history": [], "best": keep})

    def summary(self) -> dict:
        """``best_iteration`` and the best validation metrics (nothing without validation)."""
        if self.best is None:
            return {}
        return {"best_iteration": self.best[1], **{f"best_{k}": v for k, v in self.best[2].items()}}

    def __call__(self, m, iteration: int) -> dict:
        t = time.perf_counter()
        run = self.run
        out = {"train_loss": run.J.loss_value(m)}
        if run.J_val is not None:
            out["validation_loss"] = run.J_val.loss_value(m)
            if run.data.kind == "classes":
                out["validation_accuracy"] = run.J_val.accuracy(m)
            self._consider(out, iteration, m)
            waited = iteration - self.best[1]
            if self.patience and waited >= self.patience:
                metric = "accuracy" if run.data.kind == "classes" else "loss"
                unit = "epoch" if self.method in MINIBATCH else "iteration"
                out["stop"] = (f"early stopping: the validation {metric} has not improved for {waited} {unit}s "
                               f"(training.patience); the best, {unit} {self.best[1]}, is in checkpoint/best.npz")
        J_test = run.J_test
        if J_test is not None and self.every and iteration % self.every == 0:
            out["test_loss"] = J_test.loss_value(m)
            if run.data.kind == "classes":
                out["test_accuracy"] = J_test.accuracy(m)
        self.seconds += time.perf_counter() - t
        return out


def _neurons(run: Run) -> str:
    """The neurons of the run's node space, or of every slab (``784 -> 1568 -> 784``)."""
    return " -> ".join(str(sp.n) for sp in run.spaces)


def _shown_samples(run: Run) -> int:
    """The samples shown in the figures and field files."""
    return min(run.cfg["output"]["plot_samples"], len(run.test_idx) if run.J_test else len(run.train_idx))


def _writes_fields(run: Run) -> bool:
    """Whether the run writes field files over the (depth, node) mesh at its end."""
    return (run.cfg["output"]["fields"] and _shown_samples(run) > 0 and run.space.mesh.topology.dim <= 2
            and run.layout.sample_comm.size == 1)


def _write_metrics(rows: list, folder: Path, comm: MPI.Comm):
    """``metrics.csv``: one row per iteration (collective; nothing without rows)."""
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    runfolder.write_text(folder / "metrics.csv", text.getvalue(), comm)


def _write_outputs(run: Run, res, summary: dict, folder: Path):
    cfg, comm = run.cfg, run.comm
    _write_metrics(res.history, folder, comm)
    runfolder.write_text(folder / "summary.json", json.dumps(summary, indent=2), comm)
    k = _shown_samples(run)
    if run.slabs:  # depth slabs: a depth series of node fields a slab, and the figures
        if cfg["output"]["fields"] and k and run.layout.sample_comm.size == 1:
            _slab_fields(run, res, folder, k)
        if cfg["output"]["figures"]:
            _slab_figures(run, res, summary, folder, k)
        return
    if k == 0 or run.space.mesh.topology.dim > 2 or run.layout.sample_comm.size > 1:
        return  # nothing to show (or 3D node domains / data-parallel runs: no field output)
    Jv = run.J_test or run.J
    Jv.set_batch(np.arange(k))
    traj, costate = Jv.trajectory(res.m), Jv.costate(res.m)
    c, _ = Jv.controls.split(res.m)
    nat = Jv.controls.natural(res.m)
    sp = run.space
    if cfg["output"]["fields"]:
        from fem_dnn.app.output import write_trajectory

        states = {}
        r = costate.r()
        for s in range(k):
            states[f"f_{s}"] = traj.states[:, s, :]
            states[f"r_{s}"] = r[:, s, :]
        layers = {"a": c.a, **run.net.kernel.layer_fields(c.b)}
        with _agreed(comm, f"cannot write the field files {folder / 'fields'}.*"):
            write_trajectory(folder, ProductMesh(sp, run.net.depth), states, layers, "fields")
    if cfg["output"]["figures"]:
        from fem_dnn.app.output import plot_states, plot_training, plot_weights

        if res.history:
            with _atomic_figure(folder / "training.png", comm) as path:
                if comm.rank == 0:
                    plot_training(path, res.history, f"{run.data.name}: {summary['method']}")
        nat_states = [np.stack([sp.to_natural(traj.states[j, s, :]) for j in range(traj.states.shape[0])]) for s in range(k)]
        labels = Jv.labels if Jv.labels is not None else [None] * k
        titles = [f"sample {s}" + (f" (class {labels[s]})" if labels[s] is not None else "") for s in range(k)]
        with _atomic_figure(folder / "states.png", comm) as path:
            plot_states(path, sp, run.net.depth.points, nat_states, titles)
        with _atomic_figure(folder / "weights.png", comm) as path:
            plot_weights(path, sp, run.net.depth.points, nat["a"], nat["b"], run.net.kernel)
    Jv.set_batch(None)


def _slab_fields(run: Run, res, folder: Path, k: int):
    """``fields/slab<i>.bp`` (VTX, ParaView): slab i's node mesh (image x channels) with
    the states ``f_s`` and costates ``r_s`` of the first k test samples as a series in
    depth (time = t, from the slab's first depth point to its last)."""
    from fem_dnn.app.output import write_depth_series

    Jv = run.J_test or run.J
    Jv.set_batch(np.arange(k))
    traj, costates = Jv.trajectory(res.m), Jv.costate(res.m)
    starts = np.cumsum([0.0] + [net.depth.T for net in run.net.slabs])
    with _agreed(run.comm, f"cannot write the field files {folder / 'fields'}/slab*.bp"):
        for i, (net, t, r) in enumerate(zip(run.net.slabs, traj.slabs, costates)):
            rr = r.r()
            fields = {**{f"f_{s}": t.states[:, s, :] for s in range(k)}, **{f"r_{s}": rr[:, s, :] for s in range(k)}}
            write_depth_series(folder / "fields", net.space, starts[i] + net.depth.points, fields, stem=f"slab{i}")
    Jv.set_batch(None)


def _slab_figures(run: Run, res, summary: dict, folder: Path, k: int):
    """A slab network's figures: training.png, states.png (a few samples' input and
    state at the end of every slab, channel by channel) and weights.png (kappa of each
    slab's first and last layer)."""
    from fem_dnn.app.output import plot_slab_kernels, plot_slab_states, plot_training

    comm = run.comm
    if res.history:
        with _atomic_figure(folder / "training.png", comm) as path:
            if comm.rank == 0:
                plot_training(path, res.history, f"{run.data.name}: {summary['method']}")
    if k and run.layout.sample_comm.size == 1:
        Jv = run.J_test or run.J
        Jv.set_batch(np.arange(k))
        traj = Jv.trajectory(res.m)
        first = run.spaces[0]
        finals = [[first.to_natural(traj.slabs[0].states[0, s, :])] +
                  [sp.to_natural(t.states[-1, s, :]) for sp, t in zip(run.spaces, traj.slabs)] for s in range(k)]
        labels = Jv.labels if Jv.labels is not None else [None] * k
        titles = [f"sample {s}" + (f" ({labels[s]})" if labels[s] is not None else "") for s in range(k)]
        with _atomic_figure(folder / "states.png", comm) as path:
            plot_slab_states(path, run.spaces, finals, titles)
        Jv.set_batch(None)
    kappas = run.J.controls.natural(res.m)["b"]  # collective
    with _atomic_figure(folder / "weights.png", comm) as path:
        if comm.rank == 0:
            plot_slab_kernels(path, [net.kernel for net in run.net.slabs], kappas)


@contextlib.contextmanager
def _atomic_figure(path: Path, comm: MPI.Comm):
    """A hidden temporary name (same suffix, so matplotlib keeps the format) to draw
    into; rank 0 renames it onto ``path`` afterwards. A failed write (a full disk)
    raises the same InputError on every rank, naming the file."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    with _agreed(comm, f"cannot write {path}"):
        try:
            yield tmp
            if comm.rank == 0 and tmp.exists():
                os.replace(tmp, path)
        finally:
            if comm.rank == 0 and tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def _agreed(comm: MPI.Comm, context: str):
    """Run the block on every rank; if it fails with an OSError (or a RuntimeError of
    the HDF5/ADIOS2 writers) on some rank, every rank raises one InputError naming the
    output. The block must not leave ranks inside a collective call when it fails."""
    message = None
    try:
        yield
    except OSError as e:
        message = f"{context}: {describe_os_error(e)}"
    except RuntimeError as e:
        message = f"{context}: {one_line(e)}"
    messages = [m for m in comm.allgather(message) if m]
    if messages:
        raise InputError(messages[0])


#: The keys ``fem-dnn evaluate --set`` may change: the discretisation of the same continuum
#: network (data resolution, node mesh and space, depth grid), never the network itself.
EVALUATE_KEYS = ("data.resolution", "node.mesh", "node.refine", "node.fit", "node.space", "node.mass", "network.N")


def evaluate(folder, comm: MPI.Comm = MPI.COMM_WORLD, out=print, overrides=(), best: bool = False) -> dict:
    """Rebuild a run from its folder (config + checkpoint) and report its metrics.

    ``best``: the best-validation controls (``checkpoint/best.npz``, a run with
    ``data.validation_fraction > 0``) instead of the last ones.

    ``overrides`` (``["data.resolution=28", "node.refine=2", ...]``, keys of
    :data:`EVALUATE_KEYS`) evaluate the same continuum network on another discretisation:
    the trained controls are moved there with
    :func:`~fem_dnn.learning.transfer.transfer_controls` (no retraining), and the same
    train/test split is used (the samples do not depend on the resolution)."""
    from fem_dnn.app.checkpoint import load_checkpoint
    from fem_dnn.app.config import load_config, parse_overrides

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"run folder {folder} " + ("is not a folder" if folder.exists() else "does not exist"))
    changed = parse_overrides(list(overrides))
    for sec, keys in changed.items():
        for key in keys:
            if f"{sec}.{key}" not in EVALUATE_KEYS:
                raise InputError(f"fem-dnn evaluate --set {sec}.{key}: only the discretisation may change "
                                 f"({', '.join(EVALUATE_KEYS)})")
    source = folder / "config.toml"
    if load_config(source)["adapt"]["cycles"] and (folder / "adapt" / "final.toml").is_file():
        source = folder / "adapt" / "final.toml"  # an adaptive run: the last cycle's discretisation
    cfg = load_config(source)
    target_cfg = load_config(source, list(overrides)) if overrides else None
    moved = [f"{sec}.{key}={target_cfg[sec][key]}" for sec, keys in changed.items() for key in keys
             if target_cfg[sec][key] != cfg[sec][key]] if target_cfg is not None else []
    if not moved:  # the trained discretisation itself: nothing to transfer
        target_cfg = None
    elif cfg["network"]["slab_pixels"]:
        _slabs_at(cfg, target_cfg, moved)
    found = runfolder.inspect(folder, comm).checkpoint  # checkpoint.npz, or the .prev a crash left
    if best:
        found = folder / "checkpoint" / "best.npz"
        if not found.is_file():
            raise InputError(f"evaluate --best: {found} does not exist (a run keeps its best-validation controls "
                             "with data.validation_fraction > 0)")
    run = Run(cfg, comm, out)
    m, state, _ = load_checkpoint(found or folder / "checkpoint" / "checkpoint.npz", run.J.controls)
    where = ("the best validation, " if best else "") + _progress(state)
    if target_cfg is not None:
        from fem_dnn.learning.transfer import transfer_controls

        target = Run(target_cfg, comm, out)
        m_target = transfer_controls(run.J.controls, m, target.J.controls)
        m.destroy()
        run.destroy()
        run, m = target, m_target
        where += " (transferred to " + ", ".join(moved) + ")"
    metrics = run.metrics(m)
    line = ", ".join(f"{k} {v:.6g}" for k, v in metrics.items())
    run.say(f"fem-dnn evaluate {folder}: {where}: {line}")
    m.destroy()
    run.destroy()
    return metrics


def _slabs_at(cfg: dict, target: dict, moved: list):
    """A slab network evaluated at another data.resolution: every slab's image scaled by
    the same factor and the kernel's support kept in length (``slab_support`` in the new
    pixels), so that each slab is the same continuum operator on a finer or coarser mesh
    (``target`` changed in place; a pooled readout's cells are cells of the image, the
    same at every resolution); anything else is refused with one line."""
    other = [m for m in moved if not m.startswith("data.resolution=")]
    if other:
        raise InputError(f"fem-dnn evaluate --set {other[0]}: a network of depth slabs moves to another "
                         "data.resolution only (its slabs' meshes follow the image)")
    nw, tw = cfg["network"], target["network"]
    pixels, new = nw["slab_pixels"], target["data"]["resolution"]
    old = pixels[0]  # the first slab is the data's image (checked when the run was built)
    if new == 0:
        raise InputError("fem-dnn evaluate --set data.resolution=0: give the pixels a side to move the slabs to "
                         "(e.g. data.resolution=28)")
    scaled = [p * new / old for p in pixels] + [nw["slab_support"] * new / old]
    if any(abs(v - round(v)) > 1e-9 or round(v) < 1 for v in scaled):
        raise InputError(f"fem-dnn evaluate --set data.resolution={new}: the slabs' pixels {list(pixels)} and the "
                         f"support {nw['slab_support']} scaled by {new}/{old} are not whole numbers")
    tw["slab_pixels"] = [int(round(v)) for v in scaled[:-1]]
    tw["slab_support"] = int(round(scaled[-1]))


def _progress(state: dict) -> str:
    """Where a checkpoint's run was: ``iteration k`` (TAO, msa) or ``epoch e`` (and the
    step, for a checkpoint written mid-epoch)."""
    if state.get("initial"):
        return "the initial controls (the run stopped before its first iteration)"
    if "iteration" in state:
        return f"iteration {state['iteration']}"
    if state.get("batch"):
        return f"epoch {state.get('epoch')} + {state['batch']} batches (step {state.get('step')})"
    return f"epoch {state.get('epoch', '?')}"


def verify(cfg: dict, comm: MPI.Comm = MPI.COMM_WORLD, samples: int = 16, out=print) -> bool:
    """Taylor tests of the configured functional (on its first ``samples`` training
    samples): gradient rate 2, Hessian rate 3. Returns whether both hold."""
    from fem_dnn.learning.verify import taylor_test

    run = Run(cfg, comm, out)
    run.J.set_batch(np.arange(min(samples, run.J.n_samples)))
    cs = run.J.controls
    m = cs.random(1, 0.3)
    dm = cs.random(2)
    res = taylor_test(run.J, m, dm, run.J.derivative(m), run.J.hessian(m, dm), n_steps=4)
    ok = res.min_rate(1) > 1.9 and res.min_rate(2) > 2.85
    run.say(f"fem-dnn verify: Taylor test on {run.J.S} samples ({cfg['network']['scheme']}, {cfg['node']['space']})\n{res}\n"
            f"gradient rate {res.rates[1][-1]:.2f} (expect 2), Hessian rate {res.rates[2][-1]:.2f} (expect 3): "
            + ("PASS" if ok else "FAIL"))
    run.destroy()
    return ok
