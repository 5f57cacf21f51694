"""Test helper (not a test module): ``fem-dnn`` with a fault injected on one rank.

    mpirun -n 2 python tests/inject_fault.py --rank 1 --iteration 5 --kind exception -- train [fem-dnn args]

runs ``fem_dnn.app.cli.main`` (so the command line's own error handling,
:func:`fem_dnn.app.cli.guarded`) with the TAO monitor of :class:`fem_dnn.optimize.Optimizer`
wrapped: on rank ``--rank`` at iteration ``--iteration`` it raises before the iteration's
collective work (the checkpoint write), leaving the other ranks inside a collective call.

``--kind exception`` raises a RuntimeError (an internal error); ``--kind input`` raises
an InputError on that rank alone (a fem_dnn error that, unlike every real one, the other
ranks do not share). ``--agree`` sets :data:`fem_dnn.app.cli.AGREE_SECONDS`.

Just before raising, the failing rank prints ``inject: raising at <wall-clock seconds>``
on stderr, so a test can time what follows from the fault itself (not from when a pipe
delivered the last output line).

Slow phases, for signals that must arrive at a known moment (rank 0 prints
``inject: <phase> at <wall-clock seconds>`` on stderr when the phase begins, then
sleeps ``--seconds``):

- ``--kind slow-start``: in the start-up, before the run folder is written (in
  ``Run.__init__``, after the signal handlers of ``fem-dnn train`` are installed);
- ``--kind slow-checkpoint``: inside the checkpoint write of iteration ``--iteration``
  (rank 0 holds the temporary file, before it replaces the checkpoint).
"""

import argparse
import sys
import time

import fem_dnn  # noqa: F401  (DOLFINx import order)
from mpi4py import MPI

import fem_dnn.app.checkpoint
import fem_dnn.app.cli
import fem_dnn.app.run
from fem_dnn.errors import InputError
from fem_dnn.optimize import Optimizer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, default=1)
    p.add_argument("--iteration", type=int, default=5)
    p.add_argument("--kind", choices=["exception", "input", "slow-start", "slow-checkpoint"], default="exception")
    p.add_argument("--agree", type=float, default=None)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("cli", nargs=argparse.REMAINDER)
    args = p.parse_args()
    cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    if args.agree is not None:
        fem_dnn.app.cli.AGREE_SECONDS = args.agree
    monitor = Optimizer._monitor

    def faulty(self, tao):
        its = tao.getSolutionStatus()[0] + self._offset
        if its == args.iteration and MPI.COMM_WORLD.rank == args.rank:
            what = f"injected fault on rank {args.rank} at iteration {its}"
            print(f"inject: raising at {time.time():.6f}", file=sys.stderr, flush=True)
            raise InputError(what) if args.kind == "input" else RuntimeError(what)
        return monitor(self, tao)

    if args.kind == "slow-start":
        _slow(fem_dnn.app.run.Run, "__init__", "start-up", args.seconds, lambda *a, **k: True)
    elif args.kind == "slow-checkpoint":
        _slow(fem_dnn.app.checkpoint, "_write_atomic", "checkpoint write", args.seconds,
              lambda path, entries, keep: _iteration(entries) == args.iteration)
    else:
        Optimizer._monitor = faulty
    sys.exit(fem_dnn.app.cli.main(cli))


def _slow(owner, name, phase, seconds, when):
    """Wrap ``owner.name``: where ``when(*args)`` holds, rank 0 announces ``phase`` and
    sleeps ``seconds`` before the real call."""
    real = getattr(owner, name)

    def slow(*a, **k):
        if when(*a, **k) and MPI.COMM_WORLD.rank == 0:
            print(f"inject: {phase} at {time.time():.6f}", file=sys.stderr, flush=True)
            time.sleep(seconds)
        return real(*a, **k)

    setattr(owner, name, slow)


def _iteration(entries):
    import json

    return json.loads(bytes(entries["state"]).decode()).get("iteration")


if __name__ == "__main__":
    main()
