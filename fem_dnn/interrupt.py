"""Stopping a training run cleanly on SIGINT (Ctrl-C) and SIGTERM.

Signals arrive in the middle of anything: a PETSc callback, an MPI collective, a
checkpoint write. Acting there would leave a traceback through petsc4py, a half-written
file, or (under MPI) one rank gone while the others wait in a collective call. So the
handler only records the signal; the training loops look at the record at their safe
points (after an accepted iterate, after a mini-batch step, before the run folder is
first written) with :func:`requested`, which is collective: every rank stops at the same
point, writes the checkpoint of the last accepted iterate together, and raises
:class:`Interrupted`. ``fem-dnn`` then prints one line and exits with status 130
(SIGINT) or 143 (SIGTERM). A second signal ends the process at once.

The handlers are installed by the code that runs a job (``fem-dnn train``, through
:func:`handling`), never by importing a module; without them :func:`requested` returns 0
at once and communicates nothing (so API users keep Python's own Ctrl-C).
"""

import contextlib
import os
import signal

__all__ = ["Interrupted", "handling", "reinstall", "requested"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"installed": False, "signum": 0}


class Interrupted(Exception):
    """Training stopped at a safe point after SIGINT or SIGTERM.

    Attributes:
        signum: the signal (``signal.SIGINT`` or ``signal.SIGTERM``).
        iteration: the last accepted iteration (TAO methods, msa) or the mini-batch step
            whose result the checkpoint holds; None before training started.
        checkpoint: the checkpoint written, or None.
        resumable: whether ``--resume`` can continue from it.
    """

    def __init__(self, signum: int, iteration=None, checkpoint=None, resumable: bool = True, unit: str = "iteration"):
        self.signum, self.iteration, self.checkpoint, self.resumable, self.unit = signum, iteration, checkpoint, resumable, unit
        super().__init__(self.line())

    @property
    def status(self) -> int:
        """The exit status: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.signum)

    def line(self) -> str:
        name = signal.Signals(self.signum).name
        if self.iteration is None:
            return f"interrupted ({name}) before training started; nothing was written"
        where = f"checkpoint in {self.checkpoint}" if self.checkpoint else "no checkpoint was written"
        go_on = "; continue with --resume" if self.checkpoint and self.resumable else ""
        return f"interrupted ({name}) at {self.unit} {self.iteration}; {where}{go_on}"


def _handler(signum, frame):
    if _state["signum"]:  # the second signal: stop now
        os._exit(128 + signum)
    _state["signum"] = signum


@contextlib.contextmanager
def handling():
    """Record SIGINT and SIGTERM for :func:`requested` while the block runs (main
    thread only); the previous handlers are restored afterwards. PETSc's initialisation
    installs its own SIGTERM handler (it aborts): call :func:`reinstall` after it."""
    old = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, _handler)
    _state.update(installed=True, signum=0)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state.update(installed=False, signum=0)


def reinstall():
    """Put the handlers back in place after a library replaced them (PETSc's
    initialisation catches SIGTERM); a no-op outside :func:`handling`."""
    if _state["installed"]:
        for s in _SIGNALS:
            signal.signal(s, _handler)


def requested(comm) -> int:
    """The signal some rank of the MPI communicator ``comm`` received since
    :func:`handling` began, or 0 (collective when the handlers are installed: call it on
    every rank at the same point; without them it returns 0 and communicates nothing)."""
    if not _state["installed"]:
        return 0
    from mpi4py import MPI

    return int(comm.allreduce(_state["signum"], op=MPI.MAX))
