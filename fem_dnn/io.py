"""Output: trajectories over the (depth, node) mesh for ParaView, and figures.

:func:`write_trajectory` writes state (and costate, controls, ...) fields on the
:class:`fem_dnn.domain.ProductMesh`:

- VTX (``.bp``, ADIOS2): every field exactly, in its own space (continuous P1 for P1
  node spaces, discontinuous P1 for DG0 states and layer-wise controls);
- XDMF (``.xdmf`` + ``.h5``): continuous fields as point data; discontinuous fields as
  cell data (their value at each (depth, node) cell's centre), since XDMF cannot hold
  discontinuous P1.

For 3D node domains (no product mesh) the state is written as a depth series on the
node mesh instead (:func:`write_depth_series`).
"""

from pathlib import Path

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

import dolfinx.io
from dolfinx import fem

from fem_dnn.domain import NodeSpace, ProductMesh

__all__ = ["write_trajectory", "write_depth_series", "plot_trajectory"]


def write_trajectory(
    folder, product: ProductMesh, states: dict | None = None, layers: dict | None = None, stem: str = "trajectory"
) -> list[Path]:
    """Write fields over the (depth, node) mesh to ``folder/stem.bp`` and ``folder/stem.xdmf``.

    Args:
        folder: output folder (created; the same path on every rank).
        product: the (depth, node) mesh.
        states: name -> ``(N+1, n_local)`` node values at the depth points (e.g. one
            sample's state f and costate r).
        layers: name -> ``(N, n_local)`` layer-wise values (e.g. the bias a).
        stem: file stem.

    Returns:
        The paths written.
    """
    comm = product.mesh.comm
    folder = Path(folder)
    if comm.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    comm.barrier()
    fns = [product.function(v, name) for name, v in (states or {}).items()]
    fns += [product.layer_function(v, name) for name, v in (layers or {}).items()]
    bp, xd = folder / f"{stem}.bp", folder / f"{stem}.xdmf"
    # VTX writes all fields of one space per file: group by space
    groups: dict = {}
    for fn in fns:
        groups.setdefault(id(fn.function_space), []).append(fn)
    written = []
    for i, group in enumerate(groups.values()):
        path = bp if i == 0 else folder / f"{stem}_{i}.bp"
        with dolfinx.io.VTXWriter(comm, str(path), group) as w:
            w.write(0.0)
        written.append(path)
    V0 = fem.functionspace(product.mesh, ("DG", 0))
    with dolfinx.io.XDMFFile(comm, str(xd), "w") as xf:
        xf.write_mesh(product.mesh)
        for fn in fns:
            if fn.function_space.ufl_element().discontinuous:
                c = fem.Function(V0, name=fn.name)
                c.interpolate(fn)
                xf.write_function(c)
            else:
                xf.write_function(fn)
    written.append(xd)
    return written


def write_depth_series(folder, space: NodeSpace, depth_points, states: np.ndarray, name: str = "f", stem: str = "trajectory") -> Path:
    """Write ``(N+1, n_local)`` states as a time series (time = depth) on the node mesh."""
    comm = space.comm
    folder = Path(folder)
    if comm.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    comm.barrier()
    fn = space.function(name=name)
    path = folder / f"{stem}.bp"
    with dolfinx.io.VTXWriter(comm, str(path), [fn]) as w:
        for t, row in zip(depth_points, states):
            fn.x.array[: space.n_local] = row
            fn.x.scatter_forward()
            w.write(float(t))
    return path


def plot_trajectory(path, space: NodeSpace, depth_points, natural_states: np.ndarray, title: str = "", label: str = "f(y, t)"):
    """PNG of one sample's state over the (depth, node) domain of a 1D node domain.

    ``natural_states``: ``(N+1, n)`` values in natural (left-to-right) node order, as
    returned by :meth:`Trajectory.natural` per depth level. Rank 0 draws.
    """
    if space.comm.rank != 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.sort(space.x_all[0])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    Z = np.asarray(natural_states)
    lim = np.abs(Z).max() or 1.0
    shading = "nearest" if space.family == "DG" else "gouraud"
    pc = ax.pcolormesh(y, np.asarray(depth_points), Z, cmap="RdBu_r", vmin=-lim, vmax=lim, shading=shading)
    fig.colorbar(pc, ax=ax, label=label)
    ax.set_xlabel("node y (width)")
    ax.set_ylabel("depth t (layers)")
    ax.set_title(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
