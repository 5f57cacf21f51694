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

import time
from pathlib import Path

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn import interrupt
from fem_dnn.app import runfolder
from fem_dnn.app.adaptive_run import check_adaptive, train_adaptive
from fem_dnn.app.config import to_toml
from fem_dnn.app.metrics import Evaluator
from fem_dnn.app.results import write_metrics, write_results, writes_fields
from fem_dnn.app.run import Run
from fem_dnn.core.depth import ProductMesh
from fem_dnn.errors import InputError
from fem_dnn.optimize.methods import MINIBATCH

__all__ = ["train"]


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
    refine = check_adaptive(run, resume) if cfg["adapt"]["cycles"] else None
    opt = None
    evaluator = Evaluator(run, cfg["output"]["test_every"], ckpt_dir / "best.npz" if run.J_val is not None else None,
                          method, train_loss=method not in MINIBATCH or tr["epoch_evaluation"])
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
        return train_adaptive(run, refine, bounds, folder, t0)
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
                        riesz=tr["riesz"], checkpoint=CheckpointFile(ckpt, run.J.controls), resume=resume, metrics=evaluator,
                        evaluate=tr["epoch_evaluation"])
    else:  # msa
        res = msa(run.J, m0, bounds, max_it=tr["max_it"], metrics=evaluator)
        from fem_dnn.app.checkpoint import save_checkpoint

        save_checkpoint(ckpt_dir / "checkpoint.npz", run.J.controls, res.m, {"method": "msa", "iteration": res.iterations,
                                                                             "history": res.history})
    m0.destroy()
    if res.interrupted:  # the checkpoint holds the last accepted iterate; metrics so far
        write_metrics(res.history, folder, comm)
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
    write_results(run, res, summary, folder)
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
    if writes_fields(run):
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


def _neurons(run: Run) -> str:
    """The neurons of the run's node space, or of every slab (``784 -> 1568 -> 784``)."""
    return " -> ".join(str(sp.n) for sp in run.spaces)
