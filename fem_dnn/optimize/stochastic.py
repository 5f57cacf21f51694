"""Mini-batch training: SGD and Adam in the controls' inner product (Riesz-mapped
steps), with epochs regenerable from the seed (restart mid-epoch)."""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from petsc4py import PETSc

from fem_dnn import interrupt
from fem_dnn.errors import DivergenceError, InputError, NonFiniteError
from fem_dnn.learning import ReducedFunctional

from fem_dnn.optimize.callbacks import StateStore, accuracy_columns, state_store
from fem_dnn.optimize.methods import LR_SCHEDULES
from fem_dnn.optimize.coordinates import Coordinates
from fem_dnn.optimize.tao import Result, stop_reason

__all__ = ["batches", "minibatch"]

#: Control-sized Vecs of :func:`minibatch` (the memory model's count, :mod:`fem_dnn.app.memory`):
#: x, m, g, gx and Adam's two moments; the update's temporaries; Adam's bias-corrected
#: moments of the last step, alive until the epoch's checkpoint.
MINIBATCH_VECTORS = 6
MINIBATCH_WORK_VECTORS = 4
MINIBATCH_KEPT_VECTORS = 2


def batches(n_samples: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The mini-batches of one epoch: a permutation drawn from ``(seed, epoch)``, so any
    epoch can be regenerated (on restart) and every rank draws the same."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_samples)
    return [perm[i : i + batch_size] for i in range(0, n_samples, batch_size)]


def minibatch(
    J: ReducedFunctional,
    m0: PETSc.Vec,
    method: str = "adam",
    lr: float = 1e-2,
    batch_size: int = 32,
    epochs: int = 10,
    seed: int = 0,
    riesz: bool = True,
    betas: tuple = (0.9, 0.999),
    adam_eps: float = 1e-8,
    monitor=True,
    start_epoch: int = 0,
    state: dict | None = None,
    on_epoch=None,
    checkpoint: StateStore | None = None,
    resume: bool = False,
    evaluate: bool = True,
    metrics=None,
    lr_schedule: str = "constant",
) -> Result:
    """Stochastic gradient descent or Adam on mini-batches of the same reduced gradient.

    Each epoch shuffles the samples by ``(seed, epoch)`` (:func:`batches`); a step uses
    ``J`` restricted to one batch (:meth:`ReducedFunctional.set_batch`: mean loss over the
    batch plus the regulariser). Steps are taken in the coordinates of
    :class:`Coordinates` (L2-orthonormal with ``riesz=True``), so the step size means the
    same on every discretisation. The result is the same on any number of ranks.

    Args:
        J: the reduced functional (its batch is reset to all samples at the end).
        m0: initial controls.
        method: ``"sgd"`` or ``"adam"``.
        lr: step size (learning rate).
        betas, adam_eps: Adam's moment decay rates and the constant added to the root of
            the second moment (PyTorch's ``betas`` and ``eps``).
        batch_size, epochs, seed: mini-batching.
        start_epoch, state: resume with the optimiser state of a checkpoint
            (``{"x": Vec, "m1": Vec, "m2": Vec, "step": int, "batch": int}``: the
            coordinates, Adam's moments, the step count and the batches of epoch
            ``start_epoch`` already done); m0 is then ignored.
        on_epoch: callable ``(epoch, m, state, row)`` after each epoch.
        checkpoint: a :class:`~fem_dnn.optimize.callbacks.StateStore` (the application's:
            :class:`fem_dnn.app.checkpoint.CheckpointFile`): after every epoch the
            controls, the optimiser state (the coordinates and Adam's moments, in natural
            order) and the history go to its ``save``; with ``resume=True`` training
            continues from its ``load``, bitwise as if it had not been interrupted. After a step at
            which SIGINT/SIGTERM was recorded (:mod:`fem_dnn.interrupt`) the checkpoint
            is written mid-epoch and training stops (``Result.interrupted``).
        monitor: print one line per epoch on rank 0 (full-batch J, gradient norm,
            accuracy, solves), or a callable(dict).
        evaluate: compute the full-batch J, gradient norm and accuracy after every epoch
            for the history and the monitor (one more forward and costate solve over all
            samples per epoch); ``False`` records the epoch and step count alone, and the
            Result's J is NaN (no full-batch solve at the end either).
        lr_schedule: ``"constant"``, or ``"cosine"``: step k of the K = epochs x batches
            steps of the run takes ``lr (1 + cos(pi (k - 1) / K)) / 2`` (a function of the
            step count, which the checkpoint holds: a resumed run takes the same steps).
        metrics: optional callable ``(m, epoch) -> dict``: more columns of an epoch's row
            (e.g. the test loss and accuracy). A ``"stop"`` entry (a reason in words)
            ends training after that epoch (early stopping): the Result's reason is 1
            and its ``stop`` those words.
    """
    if method not in ("sgd", "adam"):
        raise InputError(f"mini-batch method must be 'sgd' or 'adam', not {method!r}")
    if not (lr > 0 and batch_size >= 1 and epochs >= 0):
        raise InputError(f"need lr > 0, batch_size >= 1, epochs >= 0; got {lr}, {batch_size}, {epochs}")
    if lr_schedule not in LR_SCHEDULES:
        raise InputError(f"unknown learning-rate schedule {lr_schedule!r}; choose one of {list(LR_SCHEDULES)}")
    total = max(epochs * len(batches(J.n_samples, batch_size, seed, 0)), 1)
    coords = Coordinates(J.controls, riesz)
    cs = J.controls
    checkpoint = state_store(checkpoint)
    ckpt = None if checkpoint is None else checkpoint.path  # (named in messages)
    history, loaded, own_m0 = [], None, False
    if resume and checkpoint is not None:
        loaded = checkpoint.load()
    if loaded is not None:
        m_ckpt, saved, arrays = loaded
        if saved.get("method") != method or saved.get("seed") != seed or saved.get("batch_size") != batch_size:
            m_ckpt.destroy()
            raise InputError(f"checkpoint {ckpt} is from another mini-batch run ({saved.get('method')}, seed "
                             f"{saved.get('seed')}, batch size {saved.get('batch_size')})")
        if saved.get("initial"):  # the initial controls of a run: start afresh from them
            m0, state, loaded, own_m0 = m_ckpt, {}, None, True
        else:
            m_ckpt.destroy()  # the coordinates x of the checkpoint are the exact state
            state = {"step": saved["step"], "batch": int(saved.get("batch", 0))}
            for key in ("x", "m1", "m2"):
                state[key] = cs.from_natural_blocks({k: arrays[f"{key}_{k}"] for k in cs.names})
            start_epoch, history = int(saved["epoch"]), list(saved["history"])
    state = state or {}
    x = state["x"].copy() if "x" in state else coords.to_coordinates(m0)  # exact resume
    if loaded is not None:
        state["x"].destroy()
    if own_m0:
        m0.destroy()
    m, g, gx = x.duplicate(), x.duplicate(), x.duplicate()
    m1 = state.get("m1") or x.duplicate()
    m2 = state.get("m2") or x.duplicate()
    if "m1" not in state:
        m1.set(0.0), m2.set(0.0)
    step, skip = int(state.get("step", 0)), int(state.get("batch", 0))
    b1, b2 = betas
    world = J.network.layout.world

    def save(epoch_done, batch_done):
        arrays = {f"{key}_{k}": v for key, vec in (("x", x), ("m1", m1), ("m2", m2)) for k, v in cs.natural_blocks(vec).items()}
        meta = {"method": method, "seed": seed, "batch_size": batch_size, "epoch": epoch_done, "batch": batch_done,
                "step": step, "history": history}
        checkpoint.save(m, meta, arrays)

    request = None  # a metrics callback's request to stop (early stopping)
    for epoch in range(start_epoch, epochs):
        for b, idx in enumerate(batches(J.n_samples, batch_size, seed, epoch)):
            if epoch == start_epoch and b < skip:
                continue  # done before the interruption this run resumes from
            J.set_batch(idx)
            coords.from_coordinates(x, m)
            try:
                coords.dual_to_coordinates(J.derivative(m, g), gx)
            except NonFiniteError as err:
                J.set_batch(None)
                where = f"; the controls of epoch {epoch} are in {ckpt}" if checkpoint is not None and epoch > 0 else ""
                raise DivergenceError(
                    f"training diverged at step {step + 1} (epoch {epoch + 1}, {method}): {err}{where}. "
                    "Resume with a smaller step (training.lr)", err.layer, step + 1, ckpt) from err
            step += 1
            rate = lr if lr_schedule == "constant" else 0.5 * lr * (1.0 + np.cos(np.pi * min(step - 1, total) / total))
            if method == "sgd":
                x.axpy(-rate, gx)
            else:
                m1.scale(b1), m1.axpy(1.0 - b1, gx)
                m2.scale(b2)
                m2.array[:] += (1.0 - b2) * gx.array_r**2
                mh = m1.array_r / (1.0 - b1**step)
                vh = m2.array_r / (1.0 - b2**step)
                x.array[:] -= rate * mh / (np.sqrt(vh) + adam_eps)
            sig = interrupt.requested(world)
            if sig:  # a safe point: the step is done; keep it (mid-epoch) and stop
                J.set_batch(None)
                coords.from_coordinates(x, m)
                if checkpoint is not None:
                    save(epoch, b + 1)
                out = coords.from_coordinates(x, J.controls.create_vec())
                for v in (x, m, g, gx, m1, m2):
                    v.destroy()
                last = history[-1].get("gnorm", float("nan")) if history else float("nan")
                return Result(out, step, 0, float("nan"), last, history, dict(J.counts), sig, "interrupted")
        J.set_batch(None)
        coords.from_coordinates(x, m)
        row = {"epoch": epoch + 1, "step": step}
        if evaluate:
            f = J(m)
            coords.dual_to_coordinates(J.derivative(m, g), gx)
            row = {"epoch": epoch + 1, "J": f, "gnorm": gx.norm(), "step": step, **J.counts}
            if J.kind == "classes":
                row["train_accuracy"] = J.accuracy(m)
        if metrics is not None:
            row.update(metrics(m, epoch + 1))
            request = row.pop("stop", None)  # the callback asks to stop here (early stopping)
        history.append(row)
        if callable(monitor):
            monitor(row)
        elif monitor and world.rank == 0:
            head = f"J {f:.10e}  |g| {row['gnorm']:.3e}" if evaluate else f"step {step}"
            print(f"epoch {epoch + 1:4d}  {head}{accuracy_columns(row)}  "
                  f"solves fwd {J.counts['forward']} adj {J.counts['costate']}", flush=True)
        if on_epoch is not None:
            on_epoch(epoch + 1, m, {"x": x, "m1": m1, "m2": m2, "step": step}, row)
        if checkpoint is not None:
            save(epoch + 1, 0)
        if request:
            break
    J.set_batch(None)
    out = coords.from_coordinates(x, J.controls.create_vec())
    # the final full-batch J: a solve over every sample, skipped with the epochs' evaluation
    # (the caller evaluates what it reports, outside the training's time)
    f = J(out) if evaluate else float("nan")
    for v in (x, m, g, gx, m1, m2):
        v.destroy()
    last = history[-1].get("gnorm", float("nan")) if history else float("nan")
    if request:  # reason 1: stopped on the callback's request, a normal end
        return Result(out, step, 1, f, last, history, dict(J.counts), 0, str(request))
    return Result(out, step, 0, f, last, history, dict(J.counts), 0, stop_reason(method, 0))  # reason 0: ran its epochs
