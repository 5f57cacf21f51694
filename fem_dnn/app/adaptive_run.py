"""The adaptive run (``adapt.cycles > 0``): the adaptive loop of
:func:`fem_dnn.optimize.adaptive.adapt` on a config's problem, each cycle's
discretisation a :meth:`fem_dnn.app.run.Run.on` of the first, and its records in the
run folder (``adapt/``).
"""

import copy
import csv
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401

import dolfinx.io

from fem_dnn.app import runfolder
from fem_dnn.app.config import to_toml
from fem_dnn.app.metrics import Evaluator
from fem_dnn.app.results import agreed, atomic_figure, write_results
from fem_dnn.app.run import Run
from fem_dnn.core.kernel import KERNELS
from fem_dnn.errors import InputError

__all__ = ["check_adaptive", "train_adaptive"]


def check_adaptive(run: Run, resume: bool) -> tuple:
    """Refuse an adaptive run that cannot run (before anything is written); its refine tuple."""
    from dolfinx import mesh as dmesh

    from fem_dnn.optimize import TAO
    from fem_dnn.optimize.adaptive import check

    ad, tr = run.cfg["adapt"], run.cfg["training"]
    refine = ("depth", "width") if ad["refine"] == "both" else (ad["refine"],)
    check(ad["goal"], ad["tolerance"], ad["fraction"], ad["cycles"], ad["max_controls"], refine)
    if ad["goal"] == "validation" and not len(run.val_idx):
        raise InputError("adapt.goal = 'validation' estimates the loss on held-out validation data: set "
                         "data.validation_fraction > 0")
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


def train_adaptive(run: Run, refine: tuple, bounds: dict, folder: Path, t0: float) -> dict:
    """The adaptive loop of :func:`fem_dnn.optimize.adaptive.adapt` on the config's problem.

    The run folder gets, besides the usual files for the last cycle's discretisation
    (checkpoint, metrics.csv with a ``cycle`` column, summary.json with the cycles, the
    figures and fields): ``adapt/cycles.csv`` (one row per cycle), ``adapt/cycle_<k>.json``
    (depth points, indicators, marked layers and cells), ``adapt/cycle_<k>_mesh.xdmf`` (the
    node mesh with the width indicators), ``adapt/final.toml`` (the config of the last
    discretisation: ``fem-dnn evaluate`` reads it) and ``adapt.png``."""
    from dataclasses import replace

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
    def problem(space, depth):  # the run on another discretisation: it owns J and the test data
        return run.on(space, depth)

    rows = []

    def record(cycle):
        r = cycle.discretisation
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
        with agreed(comm, f"cannot write {records / f'cycle_{cycle.index}_mesh.xdmf'}"):
            write_indicator_mesh(records / f"cycle_{cycle.index}_mesh.xdmf", sp,
                                 cycle.width if cycle.width.size else np.zeros(sp.n))
        acc = f", test accuracy {metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics else ""
        run.say(f"fem-dnn train: adapt cycle {cycle.index}: {depth.N} layers, {sp.n} neurons, {cycle.controls} controls, "
                f"{cycle.iterations} iterations, J {cycle.value:.6e}, estimate {cycle.estimate:+.3e} "
                f"(depth {row['eta_depth']:+.3e}, width {row['eta_width']:+.3e}){acc}"
                + (f"; {cycle.stop}" if cycle.stop else f"; refine {row['marked_layers']} layers, {row['marked_cells']} cells"))

    evaluators = []

    def metrics(r):  # every cycle's rows get the train, validation and test curves of a plain run
        ev = Evaluator(r, cfg["output"]["test_every"], None, tr["method"], patience=0)
        evaluators.append(ev)
        return ev

    t_train = time.perf_counter()
    cycles = adapt(problem, run.space, run.net.depth, goal=ad["goal"], tolerance=ad["tolerance"], fraction=ad["fraction"],
                   cycles=ad["cycles"], max_controls=ad["max_controls"], refine=refine, newton_its=ad["newton_its"],
                   method=tr["method"],
                   gttol=tr["gttol"], max_it=tr["max_it"], callback=record, metrics=metrics, riesz=tr["riesz"],
                   bounds=bounds or None, gauss_newton=tr["gauss_newton"])
    evaluation = sum(ev.seconds for ev in evaluators)
    training = time.perf_counter() - t_train - evaluation
    last = cycles[-1]
    final = last.discretisation
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
        with agreed(comm, f"cannot write {mesh_file}"), dolfinx.io.XDMFFile(comm, str(mesh_file), "w") as xf:
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
    write_results(final, replace(last.result, history=history), summary, folder)
    if cfg["output"]["figures"]:
        polygons = cell_polygons(final.space)
        with atomic_figure(folder / "adapt.png", comm) as path:
            if comm.rank == 0:
                plot_adapt(path, polygons, last.width, [c.depth_mesh.points for c in cycles],
                           [c.controls for c in cycles], [c.estimate for c in cycles], f"{run.data.name}: adaptive")
    run.say(f"fem-dnn train: adaptive run stopped ({last.stop}); {training:.1f} s training in {len(cycles)} cycles; "
            f"run folder {folder}")
    spaces = {id(c.node_space): c.node_space for c in cycles if c.node_space is not run.space}
    for c in cycles[::-1]:
        c.m.destroy()
        c.discretisation.destroy()
    for sp in spaces.values():  # the refined node spaces (a run made by Run.on does not own its space)
        sp.destroy()
    run.destroy()
    return summary
