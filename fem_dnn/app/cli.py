"""The ``fem-dnn`` command line.

    fem-dnn train [CONFIG] [--set section.key=value ...] [--resume | --overwrite] [-petsc_option value ...]
    fem-dnn evaluate RUN_FOLDER
    fem-dnn verify [CONFIG] [--set ...]
    fem-dnn forward [options]
    fem-dnn config                      # the documented default config (TOML)

``train`` trains a continuum ResNet as the config says (default: the digits) and writes
the run folder; ``evaluate`` reports a run folder's metrics from its checkpoint;
``verify`` runs Taylor tests of the configured functional; ``forward`` solves the state
equation alone. Everything runs the same under ``mpirun -n N``. Arguments starting with a
single dash are PETSc options (``-fem_dnn_tao_monitor``, ``-fem_dnn_tao_type nls``).
Bad input stops with one message (printed by rank 0) and exit status 2: wrong
arguments, configs, data, meshes, checkpoints and ``forward`` expressions alike.
Any other failure of a rank (see :func:`guarded`) ends every rank within a bounded time
with a message naming the rank: nothing waits forever in a collective call.
Training that diverges (a state, costate or gradient that is not finite at a new
iterate) stops with one message naming the layer and the iteration and exit status 3;
the run folder's checkpoint then holds the last good controls (``--resume``).
Ctrl-C (SIGINT) or SIGTERM during ``train`` stops at the next accepted iterate on every
rank, writes its checkpoint, prints one line and exits with status 130 (143); a second
Ctrl-C ends at once.
"""

import argparse
import ast
import sys

from fem_dnn.core.activation import ACTIVATIONS
from fem_dnn.network.schemes import SCHEMES

__all__ = ["AGREE_SECONDS", "guarded", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (on rank 0 only) and exit status 2."""

    def error(self, message):
        _say_error(f"{' '.join(message.split())} (see {self.prog} --help)")
        sys.exit(2)


def _say_error(message: str):
    from mpi4py import MPI  # after fem_dnn (the package imports _dolfinx first)

    if MPI.COMM_WORLD.rank == 0:
        print(f"fem-dnn: error: {message}", file=sys.stderr, flush=True)


_DESCRIPTION = """fem-dnn: continuum residual networks (the Liu-Markowich PDE model) with DOLFINx and PETSc.

  fem-dnn train [CONFIG] [--set section.key=value ...] [--resume | --overwrite] [--dry-run]
  fem-dnn evaluate RUN_FOLDER
  fem-dnn verify [CONFIG] [--set ...]
  fem-dnn forward [options]
  fem-dnn config           the documented default config (TOML)

Arguments starting with a single dash are PETSc options (-fem_dnn_tao_monitor,
-fem_dnn_tao_type nls). Everything runs the same under mpirun -n N (use the mpirun of the
environment: .venv/bin/mpirun). Exit status: 0 done, 2 bad input, 3 training diverged,
130/143 interrupted (the checkpoint holds the last accepted iterate), 1 internal error."""


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows every option's default."""


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fem-dnn", description=_DESCRIPTION, formatter_class=_Help)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train on a config (default: digits) and write the run folder", formatter_class=_Help)
    t.add_argument("config", nargs="?", help="TOML config file (default: the built-in defaults)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    t.add_argument("--resume", action="store_true", help="continue the run in the run folder from its checkpoint, with the folder's own "
                   "config.toml (a config given too may change only [training] and [output]; "
                   "training.max_it and epochs count the whole run)")
    t.add_argument("--dry-run", action="store_true",
                   help="print the problem sizes and the estimated peak memory per rank (an adaptive config: "
                        "every cycle's size bounds and relative cost), check that they fit, and stop (nothing is "
                        "built or written)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run in the run folder (its files are removed first); without it a folder "
                        "that holds a run is refused")
    e = sub.add_parser("evaluate", help="metrics of a run folder's trained controls", formatter_class=_Help)
    e.add_argument("folder", help="run folder written by fem-dnn train")
    e.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="evaluate on another discretisation of the same network (data.resolution, node.*, "
                        "network.N): the controls are transferred, not retrained")
    e.add_argument("--best", action="store_true",
                   help="the best-validation controls (checkpoint/best.npz: data.validation_fraction > 0)")
    v = sub.add_parser("verify", help="Taylor tests (gradient rate 2, Hessian rate 3) of a config's functional",
                       formatter_class=_Help)
    v.add_argument("config", nargs="?", help="TOML config file")
    v.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    v.add_argument("--samples", type=int, default=16, help="training samples used")
    sub.add_parser("config", help="print the default config, every key documented")
    f = sub.add_parser("forward", help="solve the state equation and write the trajectory", formatter_class=_Help,
                       description="Solve the state equation df/dt = sigma(a - int b f dz) + eps Lap f - decay f for one input "
                                   "and write f over depth (XDMF/VTX over the (depth, node) mesh; for 3D node domains "
                                   "a VTX time series on the node mesh, time = depth). Expressions: numbers, the "
                                   "coordinates named below, pi, + - * / ** %, and sin cos exp tanh sqrt abs "
                                   "ones_like, with or without the prefix np. (np.sin(pi*x)).")
    f.add_argument("--mesh", help="node mesh file (.msh or .xdmf); default: built-in --shape")
    f.add_argument("--shape", default="interval", choices=["interval", "rectangle", "box"])
    f.add_argument("--n", type=int, default=32, help="cells per direction of the built-in mesh")
    f.add_argument("--space", default="DG0", choices=["DG0", "P1", "P2"], help="node space")
    f.add_argument("--mass", default="lumped", choices=["lumped", "consistent"])
    f.add_argument("--activation", default="tanh", choices=list(ACTIVATIONS))
    f.add_argument("--scheme", default="euler", choices=SCHEMES, help="depth scheme")
    f.add_argument("--T", type=float, default=1.0, help="final depth")
    f.add_argument("--N", type=int, default=16, help="number of layers")
    f.add_argument("--eps", type=float, default=0.0, help="node diffusion")
    f.add_argument("--decay", type=float, default=0.0, help="the state's relaxation rate gamma (the term -gamma f)")
    f.add_argument("--input", default="sin(pi*x)", help="f_I(y): an expression in x, y, z (the coordinates of y)")
    f.add_argument("--bias", default="0", help="a(y,t): an expression in x, y, z, t")
    f.add_argument("--weight", default="1", help="b(y,z,t): an expression in x, y (of node y), xz, yz (of node z) and t")
    f.add_argument("--out", default="out_forward_cli", help="output folder")
    return p


_FUNCTIONS = ("sin", "cos", "exp", "tanh", "sqrt", "abs", "ones_like")
_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Call, ast.Name, ast.Constant, ast.Load,
          ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod, ast.USub, ast.UAdd)


def _expr(text: str, option: str, names):
    """The ``forward`` expression ``text`` of command-line ``option`` as a function of
    the keyword arrays ``names``: arithmetic (+ - * / ** %), numbers, ``pi`` and the
    functions sin, cos, exp, tanh, sqrt, abs, ones_like only; nothing else is evaluated.

    Raises:
        InputError: naming the option, for anything else, or an evaluation that fails.
    """
    import numpy as np

    from fem_dnn.errors import InputError

    allowed = f"use numbers, {', '.join(names)}, pi, + - * / ** % and {', '.join(_FUNCTIONS)} (np.sin or sin)"
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise InputError(f"{option} {text!r} is not an expression ({e.msg}); {allowed}") from None
    tree = _NumpyPrefix().visit(tree)  # np.sin(...) and numpy.pi mean sin(...) and pi
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in _FUNCTIONS and id(node) not in called:
            raise InputError(f"{option} {text!r}: {node.id} is a function, write {node.id}(...); {allowed}")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.keywords:
                raise InputError(f"{option} {text!r}: only plain calls f(...) are allowed; {allowed}")
            if node.func.id not in _FUNCTIONS:
                raise InputError(f"{option} {text!r}: unknown name {node.func.id!r}; {allowed}")
        elif isinstance(node, ast.Name) and node.id not in (*names, "pi", *_FUNCTIONS):
            raise InputError(f"{option} {text!r}: unknown name {node.id!r}; {allowed}")
        elif isinstance(node, ast.Constant) and (isinstance(node.value, bool) or not isinstance(node.value, (int, float))):
            raise InputError(f"{option} {text!r}: the constant {node.value!r} is not allowed; {allowed}")
        elif not isinstance(node, _NODES):
            raise InputError(f"{option} {text!r}: {type(node).__name__} is not allowed; {allowed}")
    code = compile(tree, f"<{option}>", "eval")
    env = {k: getattr(np, k) for k in (*_FUNCTIONS, "pi")}

    def fn(**kw):
        try:
            with np.errstate(all="ignore"):
                return np.asarray(eval(code, {"__builtins__": {}}, {**env, **kw}), dtype=float)
        except Exception as e:  # ZeroDivisionError, OverflowError, ... : the same on every rank
            raise InputError(f"{option} {text!r}: {' '.join(str(e).split()) or type(e).__name__}") from None

    return fn


class _NumpyPrefix(ast.NodeTransformer):
    """``np.<name>`` / ``numpy.<name>`` -> ``<name>`` for the allowed names (anything else
    stays an attribute, which is refused)."""

    def visit_Attribute(self, node):
        if (isinstance(node.value, ast.Name) and node.value.id in ("np", "numpy")
                and node.attr in (*_FUNCTIONS, "pi")):
            return ast.copy_location(ast.Name(id=node.attr, ctx=ast.Load()), node)
        return self.generic_visit(node)


def _finite(comm, option: str, text: str, values):
    """Every rank raises if ``values`` is not finite on some rank."""
    from fem_dnn._mpi import all_finite
    from fem_dnn.errors import InputError

    if not all_finite(comm, values):
        raise InputError(f"{option} {text!r} is not finite (NaN or Inf) at some node")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    known, petsc, i = [], [], 0
    while i < len(argv):  # single-dash long options (and their values) belong to PETSc
        a = argv[i]
        if a.startswith("-") and not a.startswith("--") and len(a) > 2:
            petsc.append(a)
            if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                petsc.append(argv[i + 1])
                i += 1
        else:
            known.append(a)
        i += 1
    args = _parser().parse_args(known)
    if args.command == "train":  # from the start: a signal during start-up is not lost
        from fem_dnn import interrupt

        with interrupt.handling():
            return _start(args, petsc)
    return _start(args, petsc)


def _start(args, petsc) -> int:
    import petsc4py

    petsc4py.init([sys.argv[0]] + petsc)
    from fem_dnn import _dolfinx  # noqa: F401
    from mpi4py import MPI
    from petsc4py import PETSc  # noqa: F401  (initialises PETSc, which catches SIGTERM: take it back)

    from fem_dnn import interrupt
    from fem_dnn.process import configure

    interrupt.reinstall()
    comm = MPI.COMM_WORLD
    configure(comm)  # BLAS threads per rank when ranks share cores, malloc (a job's settings)
    if args.command == "forward":
        return guarded(lambda: _forward(args, comm))
    return guarded(lambda: _run(args, comm))


def _forward(args, comm) -> int:
    import numpy as np

    from fem_dnn.core.depth import Depth, ProductMesh
    from fem_dnn.core.meshes import create_node_mesh, read_node_mesh
    from fem_dnn.core.nodes import NodeSpace
    from fem_dnn.errors import InputError
    from fem_dnn.app.output import write_depth_series, write_trajectory
    from fem_dnn.network import Network

    fI = _expr(args.input, "--input", ("x", "y", "z"))
    fa = _expr(args.bias, "--bias", ("x", "y", "z", "t"))
    fb = _expr(args.weight, "--weight", ("x", "y", "xz", "yz", "t"))
    mesh = read_node_mesh(args.mesh, comm) if args.mesh else create_node_mesh(comm, args.shape, args.n)
    fam, deg = args.space[:-1], int(args.space[-1])
    space = NodeSpace(mesh, fam, deg, args.mass)
    net = Network(space, Depth(args.T, args.N), args.activation, args.scheme, args.eps, decay=args.decay)
    ones = lambda y: np.ones(y.shape[1])  # noqa: E731
    try:  # net.controls refuses non-finite a (the bias) or b (the weight) on every rank
        c = net.make_controls(
            a=lambda y, t: fa(x=y[0], y=y[1], z=y[2], t=t) * ones(y),
            b=lambda y, z, t: np.broadcast_to(
                fb(x=y[0][:, None], y=y[1][:, None], xz=z[0][None, :], yz=z[1][None, :], t=t),
                (y.shape[1], z.shape[1]),
            ),
        )
    except InputError as e:
        if str(e).startswith("--"):
            raise
        raise InputError(f"--bias {args.bias!r} (controls a), --weight {args.weight!r} (controls b): {e}") from None
    f_I = lambda y: fI(x=y[0], y=y[1], z=y[2]) * ones(y)  # noqa: E731
    _finite(comm, "--input", args.input, space.interpolate(f_I))
    traj = net.forward(f_I, c)
    if mesh.topology.dim < 3:
        written = write_trajectory(args.out, ProductMesh(space, net.depth), {"f": traj.states[:, 0, :]}, {"a": c.a})
    else:  # no (depth, node) mesh over 3D cells: f over depth as a time series on the node mesh
        written = [write_depth_series(args.out, space, net.depth.points, traj.states[:, 0, :], "f", "trajectory")]
    nrm = np.sqrt(comm.allreduce(float(np.sum(space.weights * traj.final[:, 0] ** 2))))
    if comm.rank == 0:
        print(f"fem-dnn forward: {space.n} neurons, {net.depth.N} layers, scheme {args.scheme}: "
              f"||f(T)||_L2 = {nrm:.6e}; wrote {', '.join(map(str, written))}")
    net.destroy(), space.destroy()
    return 0


def _run(args, comm) -> int:
    from fem_dnn.app.config import defaults, load_config, to_toml

    if args.command == "config":
        if comm.rank == 0:
            print(to_toml(defaults()))
        return 0
    if args.command == "train":
        from fem_dnn.app.config import load_resume_config
        from fem_dnn.app.train import train

        cfg = load_resume_config(args.config, args.set) if args.resume else load_config(args.config, args.set)
        train(cfg, comm, resume=args.resume, overwrite=args.overwrite, dry_run=args.dry_run)
        return 0
    if args.command == "evaluate":
        from fem_dnn.app.evaluate import evaluate

        evaluate(args.folder, comm, overrides=args.set, best=args.best)
        return 0
    from fem_dnn.app.evaluate import verify

    return 0 if verify(load_config(args.config, args.set), comm, args.samples) else 1


#: Seconds the ranks wait for each other after an error before a rank that failed alone
#: stops the job (fem_dnn raises its errors on every rank together, within milliseconds).
AGREE_SECONDS = 10.0


def guarded(fn) -> int:
    """Run ``fn()`` on every rank of ``MPI.COMM_WORLD`` with the command line's error
    handling, so that no failure leaves a rank waiting forever in a collective call;
    return the exit status.

    - ``fn()`` returns: its value (None: 0).
    - A :class:`~fem_dnn.errors.FemDnnError` (bad input, divergence, a failed solve;
      fem_dnn raises these on every rank together): rank 0 prints ``fem-dnn: error:
      <message>`` on one line; the status is 2, or 3 for a
      :class:`~fem_dnn.errors.DivergenceError`. If not every rank raises within
      :data:`AGREE_SECONDS`, the rank that did prints ``fem-dnn: error on rank r of P:
      <message>`` and ends all ranks with ``MPI_Abort`` (status 2 or 3).
    - :class:`~fem_dnn.interrupt.Interrupted` (training stopped by SIGINT/SIGTERM at a
      safe point, on every rank together): rank 0 prints ``fem-dnn: interrupted ...``
      on one line; the status is 130 (SIGINT) or 143 (SIGTERM). A KeyboardInterrupt
      (Ctrl-C where no safe point is waited for): one line, status 130.
    - Any other exception (a bug, ``MemoryError``, an error in a callback): the rank
      prints the traceback and ``fem-dnn: internal error on rank r of P: <Type>:
      <message>`` on its stderr and ends all ranks with ``MPI_Abort(1)``, mpi4py's
      documented way (``python -m mpi4py`` does the same). Serially: status 1.

    A rank killed by a signal is the MPI launcher's to handle: MPICH's ``mpirun`` (hydra)
    ends the other ranks at once. Scripts that train under ``mpirun`` can use this the
    same way: ``sys.exit(guarded(my_main))``.
    """
    from mpi4py import MPI

    from fem_dnn.interrupt import Interrupted

    world = MPI.COMM_WORLD
    try:
        status = fn()
        return 0 if status is None else int(status)
    except Interrupted as stop:
        if world.rank == 0:
            print(f"fem-dnn: {stop.line()}", file=sys.stderr, flush=True)
        return stop.status
    except KeyboardInterrupt:
        print("fem-dnn: interrupted (SIGINT)", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # noqa: BLE001  (every failure must end every rank)
        from fem_dnn.errors import DivergenceError, describe_exception, one_line

        err = _fem_dnn_error(exc)
        if err is None:
            import traceback

            traceback.print_exc(file=sys.stderr)
            where = f" on rank {world.rank} of {world.size}" if world.size > 1 else ""
            print(f"fem-dnn: internal error{where}: {describe_exception(_root_cause(exc))}"
                  + ("; stopping all ranks (MPI_Abort)" if world.size > 1 else ""), file=sys.stderr, flush=True)
            if world.size > 1:
                _abort(world, 1)
            return 1
        status = 3 if isinstance(err, DivergenceError) else 2
        if not _all_ranks_arrive(world, AGREE_SECONDS):
            print(f"fem-dnn: error on rank {world.rank} of {world.size}: {one_line(err)} (the other ranks did not "
                  f"stop within {AGREE_SECONDS:g} s; stopping all ranks with MPI_Abort)", file=sys.stderr, flush=True)
            _abort(world, status)
        if world.rank == 0:
            print(f"fem-dnn: error: {one_line(err)}", file=sys.stderr, flush=True)
        return status


#: Seconds a rank waits, after printing why it stops the job, before ``MPI_Abort``: the
#: launcher forwards a rank's output through a pipe, and an abort tears the job down at
#: once (seen: 1 run in 4 lost the last line of a traceback and the message after it).
ABORT_DELAY = 0.25


def _abort(comm, status: int):
    """``MPI_Abort`` on ``comm``, and this process ends too: MPICH's MPI_Abort may return
    before the launcher's signal arrives."""
    import os
    import time

    sys.stdout.flush(), sys.stderr.flush()
    time.sleep(ABORT_DELAY)
    comm.Abort(status)
    os._exit(status)


def _all_ranks_arrive(comm, seconds: float) -> bool:
    """Whether every rank of ``comm`` reaches this call within ``seconds`` (a
    non-blocking barrier, polled)."""
    import time

    if comm.size == 1:
        return True
    req = comm.Ibarrier()
    deadline = time.monotonic() + seconds
    while not req.Test():
        if time.monotonic() > deadline:
            return False
        time.sleep(1e-3)
    return True


def _fem_dnn_error(exc: BaseException):
    """The FemDnnError behind ``exc`` (itself, or the cause of an error that PETSc raised
    from a callback), or None."""
    from fem_dnn.errors import FemDnnError

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, FemDnnError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__
    return None


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc




if __name__ == "__main__":
    sys.exit(main())
