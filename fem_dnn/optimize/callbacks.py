"""What an optimiser takes from its caller besides J and m0, and the monitor line's columns.

An optimiser of this package keeps its state in a :class:`StateStore` that the caller
supplies (``checkpoint=``): the optimiser knows *what* it keeps (the controls, a
JSON-serialisable dict, optional arrays), not where or in which format, so the checkpoint
format changes without touching ``fem_dnn/optimize`` (as pyadjoint's ``ReducedFunctional``
takes its callbacks from the caller). The application's store is
:class:`fem_dnn.app.checkpoint.CheckpointFile` (an atomic, checksummed ``.npz`` file in
natural order). The iterate callbacks are arguments of each optimiser: ``monitor(row)``
(a row of the history), ``metrics(m, iteration) -> dict`` (more columns; ``"stop"``
stops) and, for :func:`~fem_dnn.optimize.stochastic.minibatch`, ``on_epoch``.

No PETSc import.
"""

import os
from typing import Protocol

from fem_dnn.errors import InputError

__all__ = ["StateStore", "accuracy_columns", "report", "state_store"]


class StateStore(Protocol):
    """Where an optimiser keeps its state between runs (:meth:`save` and :meth:`load` are
    collective over the functional's world communicator).

    Attributes:
        path: where the state is kept, named in messages and as a
            :class:`~fem_dnn.errors.DivergenceError`'s ``checkpoint``.
    """

    path: object

    def save(self, m, state: dict, arrays: dict | None = None) -> None:
        """Keep the controls ``m`` (a Vec of the functional's control space), the
        optimiser's ``state`` (JSON-serialisable: method, iteration, history, ...) and
        its ``arrays`` by name (numeric, e.g. Adam's moments in natural order),
        replacing what was kept."""

    def load(self) -> tuple | None:
        """``(m, state, arrays)`` as last saved (``m`` a new Vec), or None when nothing
        is kept."""


def state_store(checkpoint) -> "StateStore | None":
    """``checkpoint`` as an optimiser's state store (None: none).

    Raises:
        InputError: a path (a folder or file name) instead of a store: the optimisers do
            not write files themselves.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        raise InputError(f"checkpoint={str(checkpoint)!r}: an optimiser takes a state store, not a path; use "
                         "fem_dnn.app.checkpoint.CheckpointFile(path, J.controls)")
    if checkpoint is not None and not all(callable(getattr(checkpoint, f, None)) for f in ("save", "load")):
        raise InputError(f"checkpoint={checkpoint!r} is not a state store (it needs save and load methods)")
    return checkpoint


def accuracy_columns(row: dict) -> str:
    """The accuracy columns of a monitor line (labelled, each after two blanks), or ''."""
    parts = [f"{label} {row[key]:.4f}" for key, label in (("train_accuracy", "train acc"), ("test_accuracy", "test acc"))
             if key in row and row[key] is not None]
    return "".join("  " + p for p in parts)


def report(monitor, world, line: str, row: dict):
    """Pass a history row to ``monitor`` if it is a callable, else print ``line`` on rank 0
    of ``world`` if ``monitor`` is true."""
    if callable(monitor):
        monitor(row)
    elif monitor and world.rank == 0:
        print(line, flush=True)
