"""Reading files safely: the package's one loader of .npz archives.

Object arrays are refused, never unpickled (``allow_pickle=False``, and the refusal is
reported with the array's name); a file that is not a zip archive, or a damaged one, is
reported as such. Callers turn :class:`NpzError` into their own one-line message.
"""

from pathlib import Path

import numpy as np

__all__ = ["NpzError", "ZIP_MAGIC", "read_npz"]

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
