"""What a finished run writes to its folder (:mod:`fem_dnn.app.train`, the adaptive run of
:mod:`fem_dnn.app.adaptive_run`): ``metrics.csv``, ``summary.json``, the field files
over the (depth, node) mesh (or a depth series a slab) and the figures, drawn and written
by the primitives of :mod:`fem_dnn.app.output`. Every write is collective and a failed
one raises the same one-line InputError on every rank (:func:`agreed`); the figures are
drawn into a temporary file and renamed (:func:`atomic_figure`).
"""

import contextlib
import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn.app import runfolder
from fem_dnn.app.run import Run
from fem_dnn.core.depth import ProductMesh
from fem_dnn.errors import InputError, describe_os_error, one_line

__all__ = ["agreed", "atomic_figure", "write_metrics", "write_results", "writes_fields"]


def _shown_samples(run: Run) -> int:
    """The samples shown in the figures and field files."""
    return min(run.cfg["output"]["plot_samples"], len(run.test_idx) if run.J_test else len(run.train_idx))


def writes_fields(run: Run) -> bool:
    """Whether the run writes field files over the (depth, node) mesh at its end."""
    return (run.cfg["output"]["fields"] and _shown_samples(run) > 0 and run.space.mesh.topology.dim <= 2
            and run.layout.sample_comm.size == 1)


def write_metrics(rows: list, folder: Path, comm: MPI.Comm):
    """``metrics.csv``: one row per iteration (collective; nothing without rows)."""
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    runfolder.write_text(folder / "metrics.csv", text.getvalue(), comm)


def write_results(run: Run, res, summary: dict, folder: Path):
    cfg, comm = run.cfg, run.comm
    write_metrics(res.history, folder, comm)
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
        with agreed(comm, f"cannot write the field files {folder / 'fields'}.*"):
            write_trajectory(folder, ProductMesh(sp, run.net.depth), states, layers, "fields")
    if cfg["output"]["figures"]:
        from fem_dnn.app.output import plot_states, plot_training, plot_weights

        if res.history:
            with atomic_figure(folder / "training.png", comm) as path:
                if comm.rank == 0:
                    plot_training(path, res.history, f"{run.data.name}: {summary['method']}")
        nat_states = [np.stack([sp.to_natural(traj.states[j, s, :]) for j in range(traj.states.shape[0])]) for s in range(k)]
        labels = Jv.labels if Jv.labels is not None else [None] * k
        titles = [f"sample {s}" + (f" (class {labels[s]})" if labels[s] is not None else "") for s in range(k)]
        with atomic_figure(folder / "states.png", comm) as path:
            plot_states(path, sp, run.net.depth.points, nat_states, titles)
        with atomic_figure(folder / "weights.png", comm) as path:
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
    with agreed(run.comm, f"cannot write the field files {folder / 'fields'}/slab*.bp"):
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
        with atomic_figure(folder / "training.png", comm) as path:
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
        with atomic_figure(folder / "states.png", comm) as path:
            plot_slab_states(path, run.spaces, finals, titles)
        Jv.set_batch(None)
    kappas = run.J.controls.natural(res.m)["b"]  # collective
    with atomic_figure(folder / "weights.png", comm) as path:
        if comm.rank == 0:
            plot_slab_kernels(path, [net.kernel for net in run.net.slabs], kappas)


@contextlib.contextmanager
def atomic_figure(path: Path, comm: MPI.Comm):
    """A hidden temporary name (same suffix, so matplotlib keeps the format) to draw
    into; rank 0 renames it onto ``path`` afterwards. A failed write (a full disk)
    raises the same InputError on every rank, naming the file."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    with agreed(comm, f"cannot write {path}"):
        try:
            yield tmp
            if comm.rank == 0 and tmp.exists():
                os.replace(tmp, path)
        finally:
            if comm.rank == 0 and tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def agreed(comm: MPI.Comm, context: str):
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
