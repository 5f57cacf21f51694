"""Evaluate a trained run from its folder (:func:`evaluate`: its checkpoint, possibly on
another discretisation of the same continuum network) and verify a config's derivatives
by Taylor tests (:func:`verify`).
"""

from pathlib import Path

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn.app import runfolder
from fem_dnn.app.run import Run
from fem_dnn.errors import InputError

__all__ = ["EVALUATE_KEYS", "evaluate", "verify"]


#: The keys ``fem-dnn evaluate --set`` may change: the discretisation of the same continuum
#: network (data resolution, node mesh and space, depth grid), never the network itself.
EVALUATE_KEYS = ("data.resolution", "node.mesh", "node.refine", "node.fit", "node.space", "node.mass", "network.N",
                 "network.slab_pixels")


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
        _slabs_at(cfg, target_cfg, moved, "slab_pixels" in changed.get("network", ()))
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


def _slabs_at(cfg: dict, target: dict, moved: list, pixels_given: bool = False):
    """A slab network evaluated at another data.resolution: by default every slab's image
    scaled by the same factor; with ``network.slab_pixels`` given too (``pixels_given``),
    the slabs' pixels given (the first the new resolution; e.g. ``[28, 7]`` refines the first slab only and
    keeps the later slabs' meshes, the pooling's scales). Each slab's kernel keeps its
    support in length (``slab_supports``: the trained support in the new pixels), so that
    each slab is the same continuum operator on its mesh (``target`` changed in place; a
    pooled readout's cells are cells of the image, the same at every resolution);
    anything else is refused with one line."""
    other = [m for m in moved if not m.startswith(("data.resolution=", "network.slab_pixels="))]
    if other:
        raise InputError(f"fem-dnn evaluate --set {other[0]}: a network of depth slabs moves to another "
                         "data.resolution (and slab_pixels) only (its slabs' meshes follow the image)")
    nw, tw = cfg["network"], target["network"]
    pixels, new = [int(p) for p in nw["slab_pixels"]], target["data"]["resolution"]
    old = pixels[0]  # the first slab is the data's image (checked when the run was built)
    supports = [int(v) for v in nw["slab_supports"]] or [nw["slab_support"]] * len(pixels)
    if new == 0:
        raise InputError("fem-dnn evaluate --set data.resolution=0: give the pixels a side to move the slabs to "
                         "(e.g. data.resolution=28)")
    given = [float(p) for p in tw["slab_pixels"]] if pixels_given else None
    if given is not None and (len(given) != len(pixels) or given[0] != new):
        raise InputError(f"fem-dnn evaluate --set network.slab_pixels={[int(p) for p in given]}: one entry a slab "
                         f"({len(pixels)}), the first the data's resolution {new}")
    scaled = given or [p * new / old for p in pixels]
    sup = [R * q / p for R, q, p in zip(supports, scaled, pixels)]
    if any(abs(v - round(v)) > 1e-9 or round(v) < 1 for v in scaled + sup):
        raise InputError(f"fem-dnn evaluate --set data.resolution={new}: the slabs' pixels {pixels} and the "
                         f"supports {supports} moved to {[round(v, 3) for v in scaled]} pixels are not whole numbers")
    tw["slab_pixels"] = [int(round(v)) for v in scaled]
    tw["slab_supports"] = [int(round(v)) for v in sup]


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
