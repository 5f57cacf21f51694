"""The run folder of ``fem-dnn train``: one folder, one run, no result ever lost.

A run folder (``output.folder``) holds exactly one run. Its files have fixed names
(:data:`RUN_FILES`): ``config.toml``, ``metrics.csv``, ``summary.json``, the checkpoint
folder ``checkpoint/``, the field files ``fields.xdmf``/``fields.h5``/``fields*.bp`` and
the figures ``training.png``, ``states.png``, ``weights.png`` (and the hidden
temporaries of atomic writes).

The rules (checked by :func:`prepare` before anything is written):

- A **new run** (no ``--resume``, no ``--overwrite``) goes into a folder that does not
  exist, is empty, or holds no result yet: a folder holds a result when it has a
  checkpoint, ``metrics.csv`` or ``summary.json``. A run that died before its first
  checkpoint leaves no result; its leftovers are removed when the next run starts there.
  Otherwise the run is refused with one line saying how to continue (``--resume``),
  where else to go (``--set output.folder=...``), or how to replace it
  (``--overwrite``).
- ``--resume`` needs a checkpoint in the folder (``checkpoint/checkpoint.npz``, or the
  ``.prev`` a crash between two renames leaves); without one it is an error. The old
  run's files are kept (the resumed run rewrites them).
- ``--overwrite`` removes the old run's files first (only the files of :data:`RUN_FILES`:
  files of other names in the folder are never touched).

Files that are not a run's are left alone in every case. All of this is collective:
rank 0 looks at the file system and every rank gets the same answer (or the same
:class:`~fem_dnn.errors.InputError`).
"""

import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn._files import atomic_write
from fem_dnn._mpi import on_root
from fem_dnn.errors import InputError

__all__ = ["RUN_FILES", "RESULTS", "FolderState", "inspect", "prepare", "write_text"]

#: Names (glob patterns) of the files and folders a training run writes.
RUN_FILES = ("config.toml", "metrics.csv", "summary.json", "checkpoint", "fields.xdmf", "fields.h5", "fields.bp",
             "fields_*.bp", "training.png", "states.png", "weights.png", ".*.tmp", ".*.partial.png")
#: The names whose presence means the folder holds a result of a run.
RESULTS = ("checkpoint/checkpoint.npz", "checkpoint/checkpoint.prev.npz", "metrics.csv", "summary.json")


@dataclass
class FolderState:
    """What a folder holds (on every rank).

    Attributes:
        exists: the folder exists (and is a folder).
        results: the result files found (names of :data:`RESULTS`), empty if none.
        run_files: every file or folder of a run found (names relative to the folder).
        checkpoint: the checkpoint a resumed run would start from, or None.
    """

    exists: bool
    results: list
    run_files: list
    checkpoint: Path | None


def _is_run_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_FILES)


def _inspect_local(folder: Path) -> FolderState:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output.folder {str(folder)!r} exists and is not a folder")
    if not folder.is_dir():
        return FolderState(False, [], [], None)
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as e:
        raise InputError(f"cannot read the run folder {str(folder)!r}: {e.strerror or e}") from None
    results = [r for r in RESULTS if (folder / r).is_file()]
    ckpt = folder / "checkpoint" / "checkpoint.npz"
    prev = folder / "checkpoint" / "checkpoint.prev.npz"
    checkpoint = ckpt if ckpt.is_file() else prev if prev.is_file() else None
    return FolderState(True, results, [n for n in names if _is_run_file(n)], checkpoint)


def inspect(folder, comm: MPI.Comm = MPI.COMM_WORLD) -> FolderState:
    """The state of a run folder (collective: rank 0 looks, every rank gets the answer).

    Raises:
        InputError: on every rank, if the path exists and is not a folder, or cannot be
            read.
    """
    folder = Path(folder)
    state = err = None
    if comm.rank == 0:
        try:
            state = _inspect_local(folder)
        except InputError as e:
            err = str(e)
    state, err = comm.bcast((state, err), root=0)
    if err is not None:
        raise InputError(err)
    return state


def prepare(folder, comm: MPI.Comm = MPI.COMM_WORLD, resume: bool = False, overwrite: bool = False) -> FolderState:
    """Decide whether a run may use ``folder``, and clear an old run's files when it may
    replace them (collective). Call it after every other check of the run, just before
    its first write.

    Args:
        folder: the run folder.
        comm: the communicator of the run.
        resume: the run continues the folder's run (needs its checkpoint).
        overwrite: the run replaces the folder's run (its files are removed here).

    Returns:
        The folder's state before any change.

    Raises:
        InputError: on every rank, with one line: the folder holds a result and neither
            ``resume`` nor ``overwrite`` is set; ``resume`` without a checkpoint; both
            options; a path that is not a folder; a removal that fails.
    """
    folder = Path(folder)
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other: continue the run in the folder, or replace it")
    state = inspect(folder, comm)
    if resume:
        if state.checkpoint is None:
            what = "does not exist" if not state.exists else "has no checkpoint (checkpoint/checkpoint.npz)"
            raise InputError(f"nothing to resume: the run folder {str(folder)!r} {what}; start a new run without --resume")
        return state
    if state.results and not overwrite:
        raise InputError(
            f"the run folder {str(folder)!r} holds a run ({', '.join(state.results)}): continue it with --resume, "
            f"choose another folder (--set output.folder='...'), or replace it with --overwrite")
    if state.run_files:  # replaced (--overwrite) or the leftovers of a run that died before its first checkpoint
        on_root(comm, lambda: _remove(folder, state.run_files), f"cannot clear the run folder {str(folder)!r}")
    return state


def _remove(folder: Path, names):
    for name in names:
        p = folder / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def write_text(path, text: str, comm: MPI.Comm = MPI.COMM_WORLD) -> Path:
    """Write one file of a run atomically on rank 0 (collective): every rank raises the
    same one-line InputError if it fails, naming the file (a full disk says so; the
    file's previous version is left as it was)."""
    path = Path(path)
    on_root(comm, lambda: atomic_write(path, text), f"cannot write {path}")
    return path
