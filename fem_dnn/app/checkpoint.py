"""Checkpoint and restart files for training runs.

A checkpoint is one ``.npz`` archive (``numpy.savez``, plain numeric arrays only, read
with ``allow_pickle=False``) holding the controls ``m = (a, b, W, mu)`` in *natural node
order*, so that a run written on P ranks restarts on any other number of ranks, plus
everything needed to refuse a checkpoint that belongs to another discretisation:

- ``meta``: JSON (UTF-8 bytes stored as uint8): format name and version; kind, K, n, N,
  node space family/degree/mass and geometric dimension, the kernel family and its
  parameters (``kernel``, ``kernel_radius``, ...; a file without them holds a dense
  kernel) (checked on load, with the two arrays below); the optimiser array names; for information only inner_product, h1_length, block_weights,
  activation, scheme, eps, the numbers of ranks, the fem_dnn version and ``saved_at``
  (ns, what :func:`latest_checkpoint` orders by).
- ``state``: the caller's JSON-serialisable ``state`` dict (iteration, history, method,
  RNG state as ints, ...) as UTF-8 JSON.
- ``controls/a``, ``controls/b``, ``controls/W``, ``controls/mu``: float64 controls in
  natural order, a (N, n), b (the kernel's natural shape: dense (N, n, n), local (N, M)),
  W (K, n) or (n, n), mu (K,) or (n,).
- ``discretisation/depth_points``: the depth mesh t_0 < ... < t_N, shape (N + 1,).
- ``discretisation/node_coordinates``: the node dofs' coordinates in natural order,
  shape (n, gdim).
- ``arrays/<name>``: optional optimiser arrays (e.g. Adam moments in natural order),
  any numeric dtype and shape.
- ``checksum``: SHA-256 (hex digits as uint8) over every other entry: for each name in
  sorted order, the name, the dtype string, the shape and the C-order bytes.

Writing is atomic: rank 0 writes a hidden temporary file ``.<name>.<random>.tmp`` in the
target folder, flushes and fsyncs it, then ``os.replace``-s it onto the final name and
fsyncs the folder. A run killed at any moment therefore leaves the previous complete
checkpoint or the new one, never a half-written file under the checkpoint's name (a stale
hidden temporary may remain; :func:`latest_checkpoint` ignores it and the next successful
save removes it).

The previous checkpoint is kept as ``<stem>.prev.npz`` (``keep_previous=True``, the
default): it is a hard link to the old file made before the new one replaces it, so the
main name never disappears. On a filesystem without hard links the old file is renamed
instead, leaving a short window in which only ``<stem>.prev.npz`` exists; a crash in that
window is still safe because :func:`latest_checkpoint` then returns the ``.prev`` file.
Keeping one generation costs one file of disk space and protects a restart against a
checkpoint that is complete but unusable (a bad disk block, an interrupted copy).
:func:`recover_checkpoint` (called by ``fem-dnn train --resume``) puts ``<stem>.prev.npz``
back under the checkpoint's name when a crash in that window left only the ``.prev``.

``fem_dnn._files.atomic_write`` writes any other file of a run the same way (temporary
file, fsync, ``os.replace``): ``fem-dnn train`` writes ``config.toml``, ``metrics.csv``
and ``summary.json`` with it.

:func:`save_checkpoint` and :func:`load_checkpoint` are collective over the world
communicator of the network's layout (``controls.network.layout.world``, which covers
sample groups too), :func:`latest_checkpoint` and :func:`recover_checkpoint` over the
communicator they are given. Only
rank 0 touches the file system; its outcome is broadcast, so no rank returns before the
file is in place, and a failure makes every rank raise the same one-line
:class:`~fem_dnn.errors.InputError` (no rank is left waiting in a collective call).
"""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

from fem_dnn import _files
from fem_dnn._files import NpzError, read_npz
from fem_dnn._mpi import bcast_arrays, on_root
from fem_dnn.core.kernel import KERNELS
from fem_dnn.errors import InputError, describe_exception, one_line
from fem_dnn.learning.controls import BLOCKS, ControlSpace

__all__ = ["FORMAT", "VERSION", "CheckpointFile", "latest_checkpoint", "load_checkpoint", "recover_checkpoint",
           "save_checkpoint"]

#: The ``format`` field of a checkpoint's metadata.
FORMAT = "fem_dnn.checkpoint"
#: The newest format version this module writes and reads.
VERSION = 1

_CONTROLS = BLOCKS  # the control blocks, as every Vec lays them out
_REQUIRED = ("meta", "state", "checksum", "discretisation/depth_points", "discretisation/node_coordinates") + tuple(
    f"controls/{k}" for k in _CONTROLS
)


# --------------------------------------------------------------------------- public API
def save_checkpoint(
    path,
    controls: ControlSpace,
    m: PETSc.Vec,
    state: dict,
    arrays: dict[str, np.ndarray] | None = None,
    *,
    keep_previous: bool = True,
) -> Path:
    """Write a restart file (collective).

    Args:
        path: the checkpoint file; ``.npz`` is appended when the name has another
            suffix. Missing folders are created.
        controls: the control space of ``m``.
        m: the controls.
        state: a JSON-serialisable dict (numpy scalars are accepted and stored as Python
            numbers; tuples come back as lists). Rank 0's is written.
        arrays: optional optimiser arrays by name (letters, digits, ``_ . -``), numeric
            dtype, e.g. Adam moments in natural order. Rank 0's are written.
        keep_previous: keep the checkpoint being replaced as ``<stem>.prev.npz``.

    Returns:
        The path written, on every rank.

    Raises:
        InputError: on every rank, for a state that is not JSON-serialisable, bad array
            names or dtypes, non-finite controls (the old checkpoint is left untouched)
            or a failed write (the message names the file and the cause).
    """
    comm = _world(controls)
    path = _npz_path(path)
    nat = controls.natural_blocks(m)  # collective on each node communicator
    desc, desc_arrays = _describe(controls)

    def write():
        try:
            _write(path, nat, desc, desc_arrays, controls, comm.size, state, arrays, keep_previous)
        except InputError as e:
            raise InputError(f"cannot write checkpoint {path}: {e}") from e

    on_root(comm, write, f"cannot write checkpoint {path}")
    return path


def load_checkpoint(path, controls: ControlSpace, vec: PETSc.Vec | None = None) -> tuple[PETSc.Vec, dict, dict]:
    """Read a restart file written by :func:`save_checkpoint` (collective).

    Rank 0 reads the file, verifies its SHA-256 checksum and that it belongs to the
    discretisation of ``controls`` (kind, K, n, N, depth points, node space and node
    coordinates); the content is then broadcast and every rank builds its part of the
    controls from the natural-order arrays, whatever the number of ranks that wrote it.

    Args:
        path: the checkpoint file (``.npz`` is appended as in :func:`save_checkpoint`).
        controls: the control space to load into.
        vec: optional Vec of ``controls`` to fill (default: a new one).

    Returns:
        ``(m, state, arrays)``: the controls, the saved ``state`` dict and the dict of
        optimiser arrays (empty if none were saved).

    Raises:
        InputError: on every rank, one line naming the file and the problem: missing
            file, not an .npz archive, truncated or corrupt archive, checksum mismatch,
            not a fem_dnn checkpoint, a newer format, or a checkpoint of another
            discretisation (listing what differs).
    """
    comm = _world(controls)
    path = _npz_path(path)
    desc, desc_arrays = _describe(controls)

    def read():
        data, meta = _read_verified(path)
        diff = _differences(desc, desc_arrays, meta, data)
        if diff:
            raise InputError(f"checkpoint {path} is for another discretisation: {'; '.join(diff)}")
        for k in _blocks(meta):
            if not np.isfinite(data[f"controls/{k}"]).all():
                raise InputError(f"checkpoint {path} holds non-finite controls {k}")
        try:
            state = json.loads(bytes(data["state"]).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise InputError(f"checkpoint {path} has an unreadable state ({e})") from e
        nat = {k: data[f"controls/{k}"] for k in _blocks(meta)}
        extra = {name: data[f"arrays/{name}"] for name in meta.get("arrays", [])}
        return nat, state, extra

    out = on_root(comm, read, f"cannot read checkpoint {path}")
    nat, state, extra = out if comm.rank == 0 else (None, None, None)
    state = comm.bcast(state, root=0)
    nat = bcast_arrays(comm, nat)
    extra = bcast_arrays(comm, extra)
    m = controls.from_natural_blocks(nat, vec=vec)
    return m, state, extra


class CheckpointFile:
    """An optimiser's state store (:class:`fem_dnn.optimize.callbacks.StateStore`) on one
    checkpoint file: ``save`` is :func:`save_checkpoint`, ``load`` is
    :func:`load_checkpoint` (None when the file does not exist). Collective.

    Args:
        path: the checkpoint file (``.npz`` appended as in :func:`save_checkpoint`).
        controls: the control space of the controls kept.
    """

    def __init__(self, path, controls: ControlSpace):
        self.path, self.controls = _npz_path(path), controls

    def save(self, m: PETSc.Vec, state: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
        save_checkpoint(self.path, self.controls, m, state, arrays)

    def load(self) -> tuple[PETSc.Vec, dict, dict] | None:
        return load_checkpoint(self.path, self.controls) if self.path.exists() else None


def latest_checkpoint(folder, stem: str = "checkpoint", comm: MPI.Comm | None = None) -> Path | None:
    """The newest complete checkpoint of a run (collective over ``comm``).

    Candidates are the files ``<stem>.npz``, ``<stem>.prev.npz`` and any
    ``<stem>[._-]*.npz`` in ``folder``; hidden files (the temporaries of an interrupted
    write) are ignored, and so is every candidate that does not pass the checks of
    :func:`load_checkpoint` short of the discretisation (it is read in full). The newest
    is the one saved last (``saved_at`` in its metadata; ``<stem>.npz`` wins a tie with
    its hard-linked ``.prev``).

    Args:
        folder: the folder to search.
        stem: the checkpoint name without ``.npz``.
        comm: the communicator (default ``MPI.COMM_WORLD``).

    Returns:
        The path on every rank, or None when there is no complete checkpoint (or no
        folder).
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    folder = Path(folder)

    def find():
        if not folder.is_dir():
            return None
        best, best_key = None, None
        for p in sorted(folder.iterdir()):
            name = p.name
            if name.startswith(".") or not name.endswith(".npz") or not p.is_file():
                continue
            core = name[: -len(".npz")]
            if core != stem and not (core.startswith(stem) and core[len(stem)] in "._-"):
                continue
            try:
                _, meta = _read_verified(p)
            except InputError:
                continue
            key = (int(meta.get("saved_at", 0)), core == stem)
            if best_key is None or key > best_key:
                best, best_key = p, key
        return None if best is None else str(best)

    found = on_root(comm, find, f"cannot search {folder} for checkpoints")
    found = comm.bcast(found, root=0)
    return None if found is None else Path(found)


def recover_checkpoint(path, comm: MPI.Comm | None = None) -> Path | None:
    """Undo an interrupted replacement (collective over ``comm``): when ``path`` is
    missing but ``<stem>.prev.npz`` is a complete checkpoint (what a crash leaves between
    the two renames of the fallback for file systems without hard links), copy the
    ``.prev`` back to ``path`` atomically. An existing ``path`` is never touched, even if
    damaged: loading it then reports the damage.

    Args:
        path: the checkpoint file (``.npz`` is appended as in :func:`save_checkpoint`).
        comm: the communicator (default ``MPI.COMM_WORLD``).

    Returns:
        ``path`` if it exists afterwards (recovered or not), else None; on every rank.

    Raises:
        InputError: on every rank, if the copy fails.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    path = _npz_path(path)

    def recover():
        if path.exists():
            return str(path)
        prev = _prev_path(path)
        if not prev.is_file():
            return None
        try:
            _read_verified(prev)
        except InputError:
            return None  # nothing complete to recover: the run starts afresh
        _files.atomic_write(path, prev.read_bytes())
        return str(path)

    found = on_root(comm, recover, f"cannot recover checkpoint {path} from {_prev_path(path).name}")
    found = comm.bcast(found, root=0)
    return None if found is None else Path(found)


# --------------------------------------------------------------------------- description
def _world(controls: ControlSpace) -> MPI.Comm:
    layout = getattr(controls.network, "layout", None)
    return layout.world if layout is not None else controls.comm


def _npz_path(path) -> Path:
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def _describe(controls: ControlSpace) -> tuple[dict, dict]:
    """What a checkpoint must match: scalars for the metadata and the arrays of the
    depth mesh and the node coordinates (natural order); a slab network's per slab
    (``slabs``: one description each, arrays ``..._<i>``). Local: no communication."""
    layers = []
    arrays = {}
    for i, net in enumerate(controls.layers):
        sp, d = net.space, net.depth
        gdim = int(sp.mesh.geometry.dim)
        coords = np.empty((sp.n, 3))
        coords[sp.nat_of_global] = np.asarray(sp.x_all).T
        layers.append({"n": int(sp.n), "N": int(d.N), "family": sp.family, "degree": int(sp.degree), "mass": sp.mass,
                       "gdim": gdim, **net.kernel.describe()})
        tail = f"_{i}" if controls.slabs else ""
        arrays[f"discretisation/depth_points{tail}"] = np.ascontiguousarray(d.points, dtype=np.float64)
        arrays[f"discretisation/node_coordinates{tail}"] = np.ascontiguousarray(coords[:, :gdim])
    desc = {"kind": controls.kind, "K": int(controls.K)}
    if controls.slabs:
        desc.update(blocks=list(controls.names), slabs=layers, n=int(controls.space.n))
    else:
        desc.update(layers[0])
    return desc, arrays


def _blocks(meta: dict) -> tuple:
    """The control blocks a checkpoint holds (a file without ``blocks``: a, b, W, mu)."""
    return tuple(meta.get("blocks", _CONTROLS))


def _info(controls: ControlSpace) -> dict:
    """Informational metadata (not checked on load)."""
    from fem_dnn import __version__

    net = controls.network
    info = {"inner_product": controls.inner_product, "h1_length": float(controls.h1_length),
            "block_weights": dict(controls.block_weights), "fem_dnn": __version__}
    sigma = getattr(net, "sigma", None)
    info["activation"] = getattr(sigma, "name", None)
    info["scheme"] = getattr(net, "scheme", None)
    info["eps"] = float(getattr(net, "eps", 0.0))
    info["node_ranks"] = controls.comm.size
    return info


def _differences(desc: dict, desc_arrays: dict, meta: dict, data: dict) -> list[str]:
    """What differs between this discretisation and a checkpoint's, in words."""
    out = [f"{key} {meta.get(key)!r} in the file, {desc[key]!r} here" for key in ("kind", "K") if meta.get(key) != desc[key]]
    mine, theirs = desc.get("slabs"), meta.get("slabs")
    if (mine is None) != (theirs is None) or (mine is not None and len(mine) != len(theirs)):
        out.append(f"{len(theirs) if theirs else 1} depth slab(s) in the file, {len(mine) if mine else 1} here")
        return out
    pairs = [(desc, meta, "", "")] if mine is None else [
        (a, b, f"_{i}", f"slab {i}: ") for i, (a, b) in enumerate(zip(mine, theirs))]
    for here, there, _, label in pairs:
        out += [label + d for d in _layer_differences(here, there)]
    if out:  # the arrays cannot be compared (or the difference is already named)
        return out
    for _, _, tail, label in pairs:
        out += [label + d for d in _array_differences(desc_arrays, data, tail)]
    return out


def _layer_differences(desc: dict, meta: dict) -> list[str]:
    """A uniform network's (or one slab's) differences: sizes, node space, kernel."""
    out = []
    for key in ("n", "N", "family", "degree", "mass", "gdim"):
        if meta.get(key) != desc[key]:
            out.append(f"{key} {meta.get(key)!r} in the file, {desc[key]!r} here")
    # the kernel family and its parameters (a file without them: a dense kernel; one
    # without a parameter the family added later: its Kernel.checkpoint_defaults)
    family = KERNELS.get(meta.get("kernel", "dense"))
    missing = {"kernel": "dense", **(family.checkpoint_defaults if family else {})}
    for key in sorted(set(desc) | set(meta)):
        if key.startswith("kernel") and meta.get(key, missing.get(key)) != desc.get(key):
            out.append(f"{key} {meta.get(key, missing.get(key))!r} in the file, {desc.get(key)!r} here")
    return out


def _array_differences(desc_arrays: dict, data: dict, tail: str) -> list[str]:
    out = []
    t_file, t_here = data[f"discretisation/depth_points{tail}"], desc_arrays[f"discretisation/depth_points{tail}"]
    if t_file.shape != t_here.shape or not np.allclose(t_file, t_here, rtol=1e-12, atol=1e-14 * abs(t_here[-1])):
        out.append(f"depth points {_short(t_file)} in the file, {_short(t_here)} here")
    x_file, x_here = data[f"discretisation/node_coordinates{tail}"], desc_arrays[f"discretisation/node_coordinates{tail}"]
    scale = max(float(np.abs(x_here).max(initial=0.0)), 1.0)
    if x_file.shape != x_here.shape:
        out.append(f"node coordinates of shape {x_file.shape} in the file, {x_here.shape} here")
    elif not np.allclose(x_file, x_here, rtol=0.0, atol=1e-10 * scale):
        err = np.abs(x_file - x_here).max(axis=1)
        j = int(np.argmax(err))
        out.append(
            f"node coordinates differ at {int(np.sum(err > 1e-10 * scale))} of {len(err)} nodes "
            f"(node {j}: {_short(x_file[j])} in the file, {_short(x_here[j])} here)"
        )
    return out


def _short(x: np.ndarray) -> str:
    return np.array2string(np.asarray(x), precision=6, threshold=6, separator=", ").replace("\n", "")


# --------------------------------------------------------------------------- file format
def _write(path, nat, desc, desc_arrays, controls, ranks, state, arrays, keep_previous):
    """Rank 0's part of :func:`save_checkpoint`."""
    entries = {f"controls/{k}": np.ascontiguousarray(nat[k], dtype=np.float64) for k in controls.names}
    bad = [k for k in controls.names if not np.isfinite(entries[f"controls/{k}"]).all()]
    if bad:
        raise InputError(f"controls {', '.join(bad)} are not finite; the previous checkpoint is kept")
    entries.update(desc_arrays)
    if not isinstance(state, dict):
        raise InputError(f"state must be a dict, not {type(state).__name__}")
    try:
        text = json.dumps(state, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise InputError(f"state is not JSON-serialisable ({e})") from e
    entries["state"] = _text_array(text)
    names = []
    for name, arr in (arrays or {}).items():
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_.-" for c in name):
            raise InputError(f"array name {name!r} must be letters, digits, '_', '.' or '-'")
        arr = np.asarray(arr)
        if arr.dtype.kind not in "biufc":
            raise InputError(f"array {name!r} has dtype {arr.dtype}; only numeric arrays are stored")
        entries[f"arrays/{name}"] = _c_order(arr)
        names.append(name)
    meta = dict(desc, format=FORMAT, version=VERSION, arrays=names, saved_at=time.time_ns(), ranks=ranks)
    meta.update(_info(controls))
    entries["meta"] = _text_array(json.dumps(meta))
    entries["checksum"] = _text_array(_checksum(entries))
    _write_atomic(path, entries, keep_previous)


def _c_order(arr) -> np.ndarray:
    """A C-contiguous array of the same shape (``np.ascontiguousarray`` makes 0-d 1-d)."""
    arr = np.asarray(arr)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _text_array(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _checksum(entries: dict) -> str:
    """SHA-256 over every entry but ``checksum``: name, dtype, shape and C-order bytes."""
    h = hashlib.sha256()
    for name in sorted(entries):
        if name == "checksum":
            continue
        arr = _c_order(entries[name])
        h.update(name.encode("utf-8") + b"\0" + arr.dtype.str.encode() + b"\0" + repr(arr.shape).encode() + b"\0")
        h.update(arr.reshape(-1).view(np.uint8))  # no copy
    return h.hexdigest()


def _read_verified(path: Path) -> tuple[dict, dict]:
    """Every entry of a checkpoint and its metadata, after the integrity checks (rank 0)."""
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise InputError(f"checkpoint {path} is not a file")
    try:
        data = read_npz(path)
    except NpzError as e:
        if e.kind == "object-array":
            raise InputError(f"checkpoint {path} holds an object array {e.key!r}: pickled Python objects "
                             "are never unpickled") from None
        if e.kind == "corrupt":
            raise InputError(f"checkpoint {path} is truncated or corrupt ({describe_exception(e.cause)})") from e.cause
        raise InputError(f"checkpoint {path} is {'empty' if e.kind == 'empty' else 'not an .npz archive'}") from None
    missing = [k for k in ("meta", "checksum") if k not in data]
    if missing:
        ours = any(k in data for k in _REQUIRED)
        what = "is incomplete or corrupt" if ours else "is not a fem_dnn checkpoint"
        raise InputError(f"checkpoint {path} {what} (no {missing[0]!r} entry)")
    try:
        stored = bytes(data["checksum"]).decode("ascii")
    except UnicodeDecodeError:
        stored = ""
    if stored != _checksum(data):
        raise InputError(f"checkpoint {path} is corrupt: its SHA-256 checksum does not match its content")
    try:
        meta = json.loads(bytes(data["meta"]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"checkpoint {path} has unreadable metadata ({one_line(e)})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"checkpoint {path} is not a fem_dnn checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise InputError(f"checkpoint {path} has format version {meta.get('version')!r}; this fem_dnn reads versions up to {VERSION}")
    slabs = meta.get("slabs")
    need = ("meta", "state", "checksum") + tuple(f"controls/{k}" for k in _blocks(meta)) + (
        ("discretisation/depth_points", "discretisation/node_coordinates") if slabs is None else tuple(
            f"discretisation/{a}_{i}" for i in range(len(slabs)) for a in ("depth_points", "node_coordinates")))
    missing = [k for k in need + tuple(f"arrays/{a}" for a in meta.get("arrays", [])) if k not in data]
    if missing:
        raise InputError(f"checkpoint {path} is incomplete (no {missing[0]!r} entry)")
    return data, meta


def _write_atomic(path: Path, entries: dict, keep_previous: bool):
    """Temporary file, fsync, (keep the old file as .prev), replace, fsync the folder."""
    folder = path.parent

    def keep():
        if keep_previous and path.is_file():
            _keep(path, _prev_path(path))

    _files.replace_atomically(path, lambda f: np.savez(f, **entries), keep)
    for stale in folder.iterdir():  # temporaries left by interrupted writes
        if stale.name.endswith(".tmp") and stale.name.startswith((f".{path.name}.", f".{_prev_path(path).name}.")):
            try:
                stale.unlink()
            except OSError:
                pass


def _prev_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".npz")] + ".prev.npz")


def _keep(path: Path, prev: Path):
    """Make ``prev`` the current file, keeping ``path`` in place (hard link) if possible."""
    link = prev.with_name(f".{prev.name}.{os.getpid()}.{time.time_ns()}.tmp")
    try:
        os.link(path, link)
    except OSError:  # no hard links here: rename (path is briefly absent, prev complete)
        os.replace(path, prev)
        return
    try:
        os.replace(link, prev)
    except BaseException:
        try:
            os.unlink(link)
        except FileNotFoundError:
            pass
        raise
