"""fem_dnn's HJB schemes against hj_reachability on the same problems and grids.

The problems have exact values in any dimension: n neurons with identity sigma, b = 0 and
a_i in [a-, a+] (each state moves at its own controlled speed), a separable terminal cost
Phi(v) = sum_i phi(v_i) on the box [-3, 3]^n, depth T = 1:

    F(v, 0) = sum_i min { phi(y) : y in [v_i + a- T, v_i + a+ T] },

smooth (phi = (y - y*)^2 / 2) and kinked (phi = |y - y*|, the value keeps two kinks a
coordinate). Errors are max-norm at the grid vertices of [-1.5, 1.5]^n (whose reachable
sets stay 0.5 inside the box), at equal grid spacing: fem_dnn's P1 vertices of ``c``
cells a side are hj_reachability's lattice of ``c + 1`` points. fem_dnn: the
Lax-Friedrichs graph-viscosity scheme (``lax_friedrichs``, CFL 0.9) and the
semi-Lagrangian scheme (``semi_lagrangian``, ``courant`` cells a step); hj_reachability
0.7 (JAX, float64 enabled, one thread): WENO5 upwinding, global Lax-Friedrichs
dissipation, TVD-RK3 in time, CFL 0.75 (``SolverSettings.with_accuracy("very_high")``).
Times are the best of ``--repeat`` solves after a first (JIT-compiling) one.

A second table, fem_dnn only, asks for more depth levels than a scheme's own step count
(``min_steps`` = 1, 2x and 8x the own count, as the feedback of an N-layer network
does; docs/model.md §6.8): its max errors at t = 0 and over every stored level t_k
(against the exact value at t_k, ``F(v, t) = sum_i min phi`` over the reachable interval
of depth T - t), with the steps stored, the steps marched and the seconds per solve
(construction included: the fractional-step matrices are built there).

    pip install jax hj-reachability      # optional: the benchmark's reference
    OMP_NUM_THREADS=1 python bench/hjb_vs_hj_reachability.py [--courant 2] [--no-hj] [--levels-cells 512,128]
"""

import argparse
import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import fem_dnn  # noqa: F401,E402  (DOLFINx import order)
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from fem_dnn.hjb import HJBSolver, ReducedModel  # noqa: E402

ALO, AHI, YT, T, L = -0.5, 1.0, 0.3, 1.0, 3.0
INNER = 1.5
GRIDS = {1: (64, 128, 256, 512, 1024), 2: (32, 64, 128, 256)}
#: multiples of the own step count asked for as min_steps in the levels table
FACTORS = (1, 2, 8)


def phi(kind, y):
    return 0.5 * (y - YT) ** 2 if kind == "smooth" else np.abs(y - YT)


def exact(kind, v, t=0.0):
    """v: (n, P) -> (P,), at depth t."""
    s = T - t
    d = np.maximum(0.0, np.maximum(v + ALO * s - YT, YT - v - AHI * s))  # distance to the reachable interval
    return np.sum(0.5 * d * d if kind == "smooth" else d, axis=0)


def best(fn, repeat):
    out = fn()
    times = []
    for _ in range(repeat):
        if hasattr(out, "destroy"):
            out.destroy()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def fem(n, kind, cells, scheme, courant, repeat):
    model = ReducedModel(n, "identity", a=(ALO, AHI))

    def run():
        s = HJBSolver(model, lambda v: np.sum(phi(kind, v), axis=0), [-L] * n, [L] * n, cells, T, comm=MPI.COMM_SELF,
                      scheme=scheme, courant=courant)
        s.solve()
        e = s.errors(lambda x: exact(kind, x), 0.0, ([-INNER] * n, [INNER] * n))["max"]
        steps = s.steps
        s.destroy()
        return e, steps

    t, (e, steps) = best(run, repeat)
    return e, t, steps


def fem_levels(n, kind, cells, scheme, courant, factor, repeat):
    """Errors at t = 0 and over every stored level with ``min_steps = factor x`` the
    scheme's own step count; returns (e0, e_levels, seconds, steps, march_steps)."""
    model = ReducedModel(n, "identity", a=(ALO, AHI))
    inner = ([-INNER] * n, [INNER] * n)

    def solver(min_steps):
        return HJBSolver(model, lambda v: np.sum(phi(kind, v), axis=0), [-L] * n, [L] * n, cells, T,
                         comm=MPI.COMM_SELF, scheme=scheme, courant=courant, min_steps=min_steps,
                         hamiltonian="numpy" if scheme == "semi_lagrangian" else "auto")

    probe = solver(1)
    own = probe.steps
    probe.destroy()

    def run():
        s = solver(factor * own)
        s.solve()
        return s

    t, s = best(run, repeat)
    e0 = s.errors(lambda x: exact(kind, x), 0.0, inner)["max"]
    e = max(s.errors(lambda x: exact(kind, x, k * s.dt), k * s.dt, inner)["max"] for k in range(s.steps + 1))
    out = (e0, e, t, s.steps, s.march_steps)
    s.destroy()
    return out


def hjr(n, kind, cells, repeat):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import hj_reachability as hj

    class Bias(hj.ControlAndDisturbanceAffineDynamics):
        def __init__(self):
            super().__init__("min", "max", hj.sets.Box(jnp.full(n, ALO), jnp.full(n, AHI)),
                             hj.sets.Box(jnp.zeros(1), jnp.zeros(1)))

        def open_loop_dynamics(self, state, time):
            return jnp.zeros(n)

        def control_jacobian(self, state, time):
            return jnp.eye(n)

        def disturbance_jacobian(self, state, time):
            return jnp.zeros((n, 1))

    grid = hj.Grid.from_lattice_parameters_and_boundary_conditions(hj.sets.Box(jnp.full(n, -L), jnp.full(n, L)),
                                                                    (cells + 1,) * n)
    states = np.asarray(grid.states).reshape(-1, n).T  # (n, P)
    init = jnp.asarray(np.sum(phi(kind, states), axis=0).reshape((cells + 1,) * n))
    settings = hj.SolverSettings.with_accuracy("very_high")
    dyn = Bias()
    times = jnp.array([0.0, -T])

    def run():
        return np.asarray(hj.solve(settings, dyn, grid, times, init, progress_bar=False)[-1]).ravel()

    t, V = best(run, repeat)
    sel = np.all(np.abs(states) <= INNER + 1e-12, axis=0)
    return float(np.max(np.abs(V - exact(kind, states))[sel])), t


def orders(errors):
    return ["-"] + [f"{np.log2(a / b):.2f}" for a, b in zip(errors, errors[1:])]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--courant", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--dims", default="1,2")
    p.add_argument("--no-hj", action="store_true", help="fem_dnn's schemes only")
    p.add_argument("--levels-cells", default="512,128",
                   help="cells a side of the min_steps table, per dimension of --dims (empty: no table)")
    args = p.parse_args()
    print(f"HJB max error at t = 0 on [-{INNER}, {INNER}]^n and seconds per solve; semi_lagrangian courant = "
          f"{args.courant}; hj_reachability WENO5 + TVD-RK3 (float64, one thread)")
    print("| n | Phi | cells | lax_friedrichs error | order | s | semi_lagrangian error | order | s | steps | "
          "hj_reachability error | order | s |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in (int(d) for d in args.dims.split(",")):
        for kind in ("smooth", "kinked"):
            rows = []
            for cells in GRIDS[n]:
                lf = fem(n, kind, cells, "lax_friedrichs", args.courant, args.repeat)
                sl = fem(n, kind, cells, "semi_lagrangian", args.courant, args.repeat)
                hr = (np.nan, np.nan) if args.no_hj else hjr(n, kind, cells, args.repeat)
                rows.append((cells, lf, sl, hr))
            ol, os_, oh = (orders([r[i][0] for r in rows]) for i in (1, 2, 3))
            for (cells, lf, sl, hr), a, b, c in zip(rows, ol, os_, oh):
                print(f"| {n} | {kind} | {cells} | {lf[0]:.2e} | {a} | {lf[1]:.3f} | {sl[0]:.2e} | {b} | {sl[1]:.3f} | "
                      f"{sl[2]} | {hr[0]:.2e} | {c} | {hr[1]:.3f} |", flush=True)
    if not args.levels_cells:
        return
    print()
    print(f"min_steps = 1, 2, 8 x the own step count: max error at t = 0 and over every stored level t_k; "
          f"semi_lagrangian courant = {args.courant}")
    print("| n | Phi | cells | scheme | min_steps | steps | march_steps | error t = 0 | error levels | vs own | s |")
    print("| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, cells in zip((int(d) for d in args.dims.split(",")), (int(c) for c in args.levels_cells.split(","))):
        for kind in ("smooth", "kinked"):
            for scheme in ("lax_friedrichs", "semi_lagrangian"):
                base = None
                for f in FACTORS:
                    e0, e, t, steps, march = fem_levels(n, kind, cells, scheme, args.courant, f, args.repeat)
                    base = e if base is None else base
                    print(f"| {n} | {kind} | {cells} | {scheme} | {'own' if f == 1 else f'{f}x own'} | {steps} | "
                          f"{march} | {e0:.2e} | {e:.2e} | {e / base:.2f} | {t:.3f} |", flush=True)


if __name__ == "__main__":
    main()
