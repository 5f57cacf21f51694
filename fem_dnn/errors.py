"""Exceptions raised by fem_dnn for bad input and failed solves."""

__all__ = ["FemDnnError", "InputError", "NonFiniteError", "SolverError"]


class FemDnnError(Exception):
    """Base class of every error fem_dnn raises on purpose."""


class InputError(FemDnnError, ValueError):
    """Invalid user input: unknown option, wrong shape, non-finite data, bad mesh file."""


class NonFiniteError(FemDnnError, FloatingPointError):
    """A state or costate stopped being finite during a solve.

    Attributes:
        layer: depth layer (0-based) at the end of which the first non-finite value appeared.
    """

    def __init__(self, message: str, layer: int):
        super().__init__(message)
        self.layer = layer


class SolverError(FemDnnError, RuntimeError):
    """A PETSc solver (SNES, KSP) did not converge."""
