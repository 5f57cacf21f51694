"""Build the bad-input corpus in a work folder: ``python tests/bad_inputs/make.py DEST``.

The text cases (configs, CSV files, gmsh and XDMF meshes) are committed next to this
script and copied as they are. The binary cases are generated here, deterministically:

- ``config/binary.toml``: bytes that are not UTF-8;
- ``data/*.npz``: NumPy archives of the wrong shape, with NaN/Inf, empty, with bad
  labels, missing arrays, truncated, and one holding a pickled object array whose
  unpickling would create the folder ``UNPICKLED`` (it must never appear);
- ``mesh/degenerate.xdmf`` (+ ``.h5``): a triangle mesh with a zero-area cell;
  ``mesh/truncated_h5.xdmf``: a valid XDMF file whose ``.h5`` is cut in half;
  ``mesh/second_order.msh``: a valid gmsh mesh of the unit square with second-order
  (curved) triangles, on which no (depth, node) mesh for the field files exists;
  ``mesh/square_100.msh``: a valid mesh of [0, 100]^2 (not the images' unit square);
- run folders: ``out_train`` (a valid run of ``base.toml``, the default output folder
  that every failing ``train`` case must leave untouched), ``run_adam`` (the same with
  Adam), and copies of ``out_train`` with a damaged checkpoint or config
  (``run_truncated``, ``run_checksum``, ...);
- ``sentinel.txt``: an existing file that no failed run may touch.

``tests/test_bad_inputs.py`` runs every case of ``cases.toml`` in such a folder.
"""

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COMMITTED = ("base.toml", "config", "data", "mesh")

#: The valid reference runs (arguments of ``fem-dnn``).
RUNS = {
    "out_train": ["train", "base.toml"],
    "run_adam": ["train", "base.toml", "--set", "training.method='adam'", "--set", "training.epochs=1",
                 "--set", "training.batch_size=16", "--set", "output.folder='run_adam'"],
}


class Unpickled:
    """Unpickling this creates the folder ``UNPICKLED`` in the working directory."""

    def __reduce__(self):
        return (os.mkdir, ("UNPICKLED",))


def _npz(path: Path, **arrays):
    with open(path, "wb") as f:  # np.savez(str) would append .npz to other suffixes
        np.savez(f, **arrays)


def data_files(folder: Path):
    """The binary data cases (``.npz``)."""
    rng = np.random.default_rng(7)
    X = rng.random((6, 4))
    y = np.array([0, 1, 2, 0, 1, 2])
    nan = X.copy()
    nan[2, 1] = np.nan
    inf = X.copy()
    inf[0, 3] = np.inf
    cases = {
        "nan.npz": dict(X=nan, y=y),
        "inf.npz": dict(X=inf, y=y),
        "images_3d.npz": dict(X=X.reshape(6, 2, 2), y=y),
        "labels_length.npz": dict(X=X, y=y[:5]),
        "labels_2d.npz": dict(X=X, y=np.eye(3)[y]),  # one-hot instead of class numbers
        "empty.npz": dict(X=np.zeros((0, 4)), y=np.zeros(0, dtype=np.int64)),
        "no_features.npz": dict(X=np.zeros((6, 0)), y=y),
        "labels_negative.npz": dict(X=X, y=y - 1),
        "labels_fractional.npz": dict(X=X, y=np.array([0.0, 1.0, 0.5, 0.0, 1.0, 1.0])),
        "labels_from_one.npz": dict(X=X, y=y + 1),  # classes 1..3: class 0 has no sample
        "one_class.npz": dict(X=X, y=np.zeros(6, dtype=np.int64)),
        "labels_text.npz": dict(X=X, y=np.array(["cat", "dog", "cat", "dog", "cat", "dog"])),
        "labels_nan.npz": dict(X=X, y=np.array([0.0, 1.0, np.nan, 0.0, 1.0, 1.0])),
        "features_text.npz": dict(X=np.array([["0.1", "0.2"], ["0.3", "x"]]), y=np.array([0, 1])),
        "missing_X.npz": dict(y=y),
        "both_targets.npz": dict(X=X, y=y, Y=1.0 / (1.0 + np.exp(-X))),
        "targets_range.npz": dict(X=X, Y=X + 1.0),
        "targets_shape.npz": dict(X=X, Y=0.5 * np.ones((6, 3))),
        "object.npz": dict(X=np.array([Unpickled()] * 6, dtype=object), y=y),
    }
    for name, arrays in cases.items():
        _npz(folder / name, **arrays)
    full = folder / "truncated.npz"
    _npz(full, X=rng.random((40, 16)), y=rng.integers(0, 3, 40))
    raw = full.read_bytes()
    full.write_bytes(raw[: len(raw) // 2])
    (folder / "not_a_zip.npz").write_text("X = [[0.1, 0.2], [0.3, 0.4]]\ny = [0, 1]\n")


def mesh_files(folder: Path):
    """The binary mesh cases (XDMF + HDF5, written with DOLFINx on one rank)."""
    import fem_dnn  # noqa: F401  (import order)
    from mpi4py import MPI

    import basix.ufl
    import dolfinx.io
    import ufl
    from dolfinx import mesh as dmesh

    comm = MPI.COMM_SELF
    # the square split into 4 triangles at a centre moved onto the bottom edge
    x = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.5, 0.0]])
    cells = np.array([[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]], dtype=np.int64)
    domain = ufl.Mesh(basix.ufl.element("Lagrange", "triangle", 1, shape=(2,)))
    degenerate = dmesh.create_mesh(comm, cells, domain, x)
    with dolfinx.io.XDMFFile(comm, str(folder / "degenerate.xdmf"), "w") as xf:
        xf.write_mesh(degenerate)
    square = dmesh.create_unit_square(comm, 4, 4)
    with dolfinx.io.XDMFFile(comm, str(folder / "truncated_h5.xdmf"), "w") as xf:
        xf.write_mesh(square)
    h5 = folder / "truncated_h5.h5"
    raw = h5.read_bytes()
    h5.write_bytes(raw[: len(raw) // 2])
    square_msh(folder / "second_order.msh", size=1.0, order=2)
    square_msh(folder / "square_100.msh", size=100.0, order=1)


def square_msh(path: Path, size: float, order: int):
    """The square [0, size]^2 meshed by gmsh with triangles of the given order."""
    import gmsh

    gmsh.initialize(interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("square")
        square = gmsh.model.occ.addRectangle(0, 0, 0, size, size)
        gmsh.model.occ.synchronize()
        gmsh.model.addPhysicalGroup(2, [square], 1)
        gmsh.option.setNumber("Mesh.MeshSizeMax", 0.25 * size)
        gmsh.model.mesh.generate(2)
        gmsh.model.mesh.setOrder(order)
        gmsh.write(str(path))
    finally:
        gmsh.finalize()


def _cli(args, cwd: Path):
    from fem_dnn.app.cli import main

    with contextlib.chdir(cwd), open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        code = main(list(args))
    if code != 0:
        raise RuntimeError(f"fem-dnn {' '.join(args)} failed in {cwd} (exit {code})")


def _entries(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _write_entries(path: Path, entries: dict, rechecksum: bool):
    from fem_dnn.app.checkpoint import _checksum, _text_array

    if rechecksum:
        entries["checksum"] = _text_array(_checksum(entries))
    with open(path, "wb") as f:
        np.savez(f, **entries)


def run_folders(work: Path):
    """The valid runs, then copies of ``out_train`` with damage."""
    for folder, args in RUNS.items():
        if not (work / folder).exists():
            _cli(args, work)
    ckpt = Path("checkpoint") / "checkpoint.npz"

    def copy(name):
        dst = work / name
        shutil.copytree(work / "out_train", dst)
        return dst

    raw = (work / "out_train" / ckpt).read_bytes()
    copy("run_truncated").joinpath(ckpt).write_bytes(raw[: len(raw) // 2])
    copy("run_empty_checkpoint").joinpath(ckpt).write_bytes(b"")
    no_ckpt = copy("run_no_checkpoint")
    shutil.rmtree(no_ckpt / "checkpoint")

    entries = _entries(work / "out_train" / ckpt)
    changed = dict(entries)
    changed["controls/a"] = changed["controls/a"] + 1e-3  # content changed, checksum kept
    _write_entries(copy("run_checksum") / ckpt, changed, rechecksum=False)

    nonfinite = dict(entries)
    nonfinite["controls/b"] = nonfinite["controls/b"].copy()
    nonfinite["controls/b"].flat[5] = np.nan  # a consistent checksum over NaN controls
    _write_entries(copy("run_nonfinite") / ckpt, nonfinite, rechecksum=True)

    pickled = dict(entries)  # an object array among the entries: refused, never unpickled
    pickled["arrays/extra"] = np.array([Unpickled()], dtype=object)
    with open(copy("run_pickle") / ckpt, "wb") as f:
        np.savez(f, **pickled)

    with open(copy("run_foreign") / ckpt, "wb") as f:
        np.savez(f, weights=np.zeros((3, 3)))

    # the run folder's config no longer matches its checkpoint: another depth mesh
    other = copy("run_other_layers")
    text = (other / "config.toml").read_text()
    assert "\nN = 2\n" in text
    (other / "config.toml").write_text(text.replace("\nN = 2\n", "\nN = 3\n"))

    broken = copy("run_bad_config")
    (broken / "config.toml").write_text((broken / "config.toml").read_text() + "\n[extra]\nkey = 1\n")

    meta = json.loads(bytes(entries["meta"]).decode())
    assert meta["N"] == 2 and meta["family"] == "DG", meta


def build(work, runs: bool = True) -> Path:
    """Copy the committed cases to ``work`` and generate the rest (see the docstring)."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in COMMITTED:
        src = HERE / name
        if src.is_dir():
            shutil.copytree(src, work / name, dirs_exist_ok=True)
        else:
            shutil.copy2(src, work / name)
    (work / "config" / "binary.toml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe[data]\n")
    data_files(work / "data")
    mesh_files(work / "mesh")
    (work / "sentinel.txt").write_text("an existing file that no failed run may touch\n")
    if runs:
        run_folders(work)
    return work


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/bad_inputs/make.py DEST")
    print(build(sys.argv[1]))
