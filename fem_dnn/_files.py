"""Files, read and written safely: the package's one loader of .npz archives and its one
atomic writer.

:func:`read_npz` refuses object arrays, never unpickles them (``allow_pickle=False``,
and the refusal is reported with the array's name); a file that is not a zip archive, or
a damaged one, is reported as such. Callers turn :class:`NpzError` into their own
one-line message.

:func:`atomic_write` and :func:`replace_atomically` (temporary file in the folder, fsync,
``os.replace``, fsync of the folder) write every file of a run: checkpoints,
``config.toml``, ``metrics.csv``, ``summary.json``.
"""

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["NpzError", "ZIP_MAGIC", "atomic_write", "fsync_dir", "read_npz", "replace_atomically"]

ZIP_MAGIC = b"PK\x03\x04"


class NpzError(Exception):
    """Why an .npz archive was not read: ``kind`` is ``"empty"``, ``"not-zip"``,
    ``"object-array"`` (``key`` names it) or ``"corrupt"`` (``cause`` is the error)."""

    def __init__(self, kind: str, key: str | None = None, cause: BaseException | None = None):
        super().__init__(kind)
        self.kind, self.key, self.cause = kind, key, cause


def read_npz(path: Path) -> dict:
    """Every array of the archive at ``path`` (which must exist), as numpy arrays."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != ZIP_MAGIC:
        raise NpzError("empty" if not magic else "not-zip")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                try:
                    arrays[k] = z[k]
                except ValueError as e:
                    if "allow_pickle" not in str(e):
                        raise
                    raise NpzError("object-array", key=k) from None
    except NpzError:
        raise
    except Exception as e:  # BadZipFile, bad CRC, EOFError, a damaged .npy header, zlib.error, OSError...
        raise NpzError("corrupt", cause=e) from e
    return arrays


def atomic_write(path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically: a hidden temporary file in
    the same folder, flushed and fsynced, then ``os.replace``-d onto ``path`` and the
    folder fsynced. A process killed at any moment leaves the old file or the new one,
    never a partial file under ``path`` (at worst a stale hidden ``.<name>.*.tmp``).

    Not collective: call it on the rank that writes (rank 0).
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    replace_atomically(path, lambda f: f.write(raw))
    return path


def replace_atomically(path: Path, write, before_replace=None):
    """The one atomic-write mechanism: ``write(file)`` into a temporary file in the
    folder, fsync, ``before_replace()`` (if given), ``os.replace``, fsync the folder."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(folder)


def fsync_dir(folder: Path):
    """fsync a folder (its entries), where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
