"""Exceptions raised by fem_dnn for bad input and failed solves, and how any exception
is put into the one line a user sees (:func:`one_line`, :func:`describe_exception`)."""

import errno

__all__ = ["DivergenceError", "FemDnnError", "InputError", "NonFiniteError", "SolverError"]


class FemDnnError(Exception):
    """Base class of every error fem_dnn raises on purpose."""


class InputError(FemDnnError, ValueError):
    """Invalid user input: unknown option, wrong shape, non-finite data, bad mesh file."""


class NonFiniteError(FemDnnError, FloatingPointError):
    """A state, costate or gradient stopped being finite during a solve.

    Attributes:
        layer: depth layer (0-based) where the first non-finite value appeared (the
            state: at the layer's end; the costate: at its start), or None.
    """

    def __init__(self, message: str, layer: int | None = None):
        super().__init__(message)
        self.layer = layer


class DivergenceError(NonFiniteError):
    """Training stopped because a solve at a new iterate was not finite.

    Attributes:
        iteration: the iteration (TAO) or step (mini-batch) that produced it.
        checkpoint: the checkpoint file holding the last good controls, or None.
    """

    def __init__(self, message: str, layer: int | None, iteration: int, checkpoint=None):
        super().__init__(message, layer)
        self.iteration, self.checkpoint = iteration, checkpoint


class SolverError(FemDnnError, RuntimeError):
    """A PETSc solver (SNES, KSP) did not converge."""


def one_line(e: BaseException) -> str:
    """The exception's message with every run of white space (newlines too) one blank."""
    return " ".join(str(e).split())


def describe_os_error(e: OSError) -> str:
    """A failed file operation in words; a full disk (ENOSPC, EDQUOT) says what to do."""
    text = e.strerror or one_line(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        text += " (the disk is full: free space or choose another output.folder; the files written before are intact)"
    return text


def describe_exception(e: BaseException) -> str:
    """``"<Type>: <message>"`` on one line (an OSError: its reason in words)."""
    if isinstance(e, OSError) and e.strerror:
        return describe_os_error(e)
    text = one_line(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
