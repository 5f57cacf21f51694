"""Exceptions raised by fem_dnn for bad input and failed solves."""

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
