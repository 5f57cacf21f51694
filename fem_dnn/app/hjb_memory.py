"""The memory model of an HJB solver: its sizes and memory per rank, before it is built.

:func:`estimate_hjb_memory` counts the state-space grid, its operators, the
semi-Lagrangian interpolation matrix and the stored levels of an
:class:`fem_dnn.hjb.HJBSolver` from its constructor arguments (the depth step from a
solver on a coarse grid), with the mesh constants of the run's model
(:mod:`fem_dnn.app.memory`).
"""

from dataclasses import dataclass

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn.app.memory import _F8, MESH_BUILD_BYTES_PER_CELL, MESH_BYTES_PER_CELL, GiB, MiB, _cdiv
from fem_dnn.app.system import resident_memory

__all__ = ["HJBMemoryEstimate", "estimate_hjb_memory"]


@dataclass
class HJBMemoryEstimate:
    """Sizes and memory per rank of an :class:`fem_dnn.hjb.HJBSolver`.

    Attributes:
        vertices, vertices_local: P1 dofs of the state-space mesh.
        cells: its cells.
        steps: depth steps (CFL or ``min_steps``).
        parts: bytes per rank by part (mesh, operators, functions, stored levels).
        peak_bytes: their sum plus the process now.
    """

    vertices: int
    vertices_local: int
    cells: int
    steps: int
    parts: dict
    peak_bytes: int

    def describe(self) -> str:
        lines = [f"HJB: {self.vertices} vertices ({self.vertices_local} per rank), {self.cells} cells, {self.steps} steps"]
        lines += [f"    {k:46s} {v / MiB:9.1f} MiB" for k, v in self.parts.items()]
        lines.append(f"  peak per rank: {self.peak_bytes / GiB:.2f} GiB")
        return "\n".join(lines)


#: Non-zeros per row of the P1 matrices on the structured meshes, by (dimension, cell).
_P1_NNZ = {(1, "simplex"): 3, (2, "simplex"): 7, (2, "tensor"): 9, (3, "simplex"): 15, (3, "tensor"): 27}
#: Bytes per non-zero of an assembled AIJ matrix (value, column index and assembly slack).
AIJ_BYTES_PER_NONZERO = 24


def estimate_hjb_memory(model, lower, upper, cells, T: float = 1.0, comm: MPI.Comm = MPI.COMM_WORLD, cfl: float = 0.9,
                        min_steps: int = 1, cell: str = "simplex", keep_levels: bool = True,
                        scheme: str = "lax_friedrichs", courant: float = 2.0) -> HJBMemoryEstimate:
    """Sizes and memory per rank of ``HJBSolver(model, Phi, lower, upper, cells, T, comm,
    cfl, min_steps, cell, keep_levels, scheme, courant)`` and its
    :meth:`~fem_dnn.hjb.HJBSolver.solve` (collective). The grid is counted; the depth step
    is that of a solver on a grid of at most 8 cells per direction, scaled with the cell
    size (the CFL limit is proportional to h on these structured meshes). The stored
    levels are ``steps = max(own, min_steps)`` for either scheme. The semi-Lagrangian
    scheme marches its own ``ceil(T speed / (courant h))`` steps and its interpolation
    matrix holds at most ``(ceil(courant) + 3)^n`` candidate points a vertex, 2^n
    non-zeros each; with ``steps`` above its own count (and ``keep_levels``) it adds the
    ``q - 1`` fractional steps ``i/q`` of a march step (``q = HJBSolver.substeps``), each
    with at most ``(ceil(i courant / q) + 3)^n`` candidates a vertex, and ``q`` vertex
    arrays of the sub-levels."""
    from fem_dnn.hjb import HJBSolver

    n = model.n
    nn = [int(cells)] * n if np.isscalar(cells) else [int(c) for c in cells]
    coarse = [min(c, 8) for c in nn]
    probe = HJBSolver(model, lambda v: np.zeros(v.shape[1]), lower, upper, coarse, T, MPI.COMM_SELF, cfl, 1, cell,
                      keep_levels=False)
    dt_max = probe.dt_max * min(c / f for c, f in zip(coarse, nn))
    for A in probe.C:
        A.destroy()
    probe.D.destroy()
    h = float(np.max((np.broadcast_to(np.asarray(upper, dtype=float), (n,)) - np.broadcast_to(
        np.asarray(lower, dtype=float), (n,))) / np.array(nn)))
    if scheme == "semi_lagrangian":
        own = int(np.ceil(T * probe.speed / (courant * h))) if probe.speed > 0 else 1
    else:
        own = int(np.ceil(T / (cfl * dt_max))) if np.isfinite(dt_max) else 1
    steps = max(own, int(min_steps))
    q = 1  # the solver's substeps: parts of a semi-Lagrangian march step with stored levels between
    if scheme == "semi_lagrangian" and keep_levels and steps > own:
        q = min(-(-steps // own), HJBSolver.MAX_SUBSTEPS)
    sl_row = 2**n * AIJ_BYTES_PER_NONZERO + 2 * _F8  # a candidate point: its Q1 row and its value
    verts = int(np.prod([c + 1 for c in nn]))
    ncell = int(np.prod(nn)) * ({1: 1, 2: 2, 3: 6}[n] if cell == "simplex" else 1)
    vl = _cdiv(verts, comm.size)
    cl = _cdiv(ncell, comm.size)
    nnz = _P1_NNZ[(n, cell if n > 1 else "simplex")]
    parts = {"process now": resident_memory(),
             f"state-space mesh ({ncell} cells)": MESH_BYTES_PER_CELL * cl + MESH_BUILD_BYTES_PER_CELL * (ncell - cl),
             f"operators (C_1..C_{n}, D)": (n + 1) * AIJ_BYTES_PER_NONZERO * nnz * vl,
             "functions and vertex arrays": (2 * n + 8) * _F8 * vl,
             "semi-Lagrangian interpolation matrix": (int(np.ceil(courant)) + 3) ** n * sl_row * vl
             if scheme == "semi_lagrangian" else 0,
             f"semi-Lagrangian fractional steps ({q - 1})": (sum(
                 (int(np.ceil(i * courant / q)) + 3) ** n for i in range(1, q)) * sl_row + q * _F8) * vl if q > 1 else 0,
             f"stored levels ({steps + 1} x {vl})": (steps + 1) * _F8 * vl if keep_levels else 0}
    vals = np.array(list(parts.values()), dtype=float)
    comm.Allreduce(MPI.IN_PLACE, vals, op=MPI.MAX)
    parts = {k: int(v) for k, v in zip(parts, vals)}
    return HJBMemoryEstimate(verts, vl, ncell, steps, parts, sum(parts.values()))
