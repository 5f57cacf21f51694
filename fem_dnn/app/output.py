"""Output: trajectories over the (depth, node) mesh for ParaView, and figures.

:func:`write_trajectory` writes state (and costate, controls, ...) fields on the
:class:`fem_dnn.core.depth.ProductMesh`:

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

import dolfinx.io
from dolfinx import fem
from dolfinx.mesh import CellType

from fem_dnn.core.depth import ProductMesh
from fem_dnn.core.nodes import NodeSpace

__all__ = ["write_trajectory", "write_depth_series", "plot_trajectory", "plot_training", "plot_states", "plot_weights",
           "pixel_images", "plot_slab_states", "plot_slab_kernels"]


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


def write_depth_series(folder, space: NodeSpace, depth_points, states, name: str = "f", stem: str = "trajectory") -> Path:
    """Write ``(N+1, n_local)`` states as a time series (time = depth) on the node mesh
    (``states`` may be a dict ``{name: (N+1, n_local)}``: several fields in one file)."""
    comm = space.comm
    folder = Path(folder)
    if comm.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    comm.barrier()
    fields = states if isinstance(states, dict) else {name: states}
    fns = {key: space.function(name=key) for key in fields}
    path = folder / f"{stem}.bp"
    with dolfinx.io.VTXWriter(comm, str(path), list(fns.values())) as w:
        for j, t in enumerate(depth_points):
            for key, fn in fns.items():
                fn.x.array[: space.n_local] = fields[key][j]
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
    y = np.sort(space.x_all[0])
    fig = _figure((6.4, 4.2))
    ax = fig.subplots()
    Z = np.asarray(natural_states)
    lim = np.abs(Z).max() or 1.0
    shading = "nearest" if space.family == "DG" else "gouraud"
    pc = ax.pcolormesh(y, np.asarray(depth_points), Z, cmap="RdBu_r", vmin=-lim, vmax=lim, shading=shading)
    fig.colorbar(pc, ax=ax, label=label)
    ax.set_xlabel("node y (width)")
    ax.set_ylabel("depth t (layers)")
    ax.set_title(title)
    _save(fig, path, dpi=120)
    return Path(path)


# --------------------------------------------------------------------------- run figures
def _figure(figsize):
    """A matplotlib Figure drawn on its own Agg canvas: no pyplot, so no backend is
    chosen or switched for the process (a notebook's stays as it is)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _layout(fig):
    """Lay the figure out once more before it is saved. Constrained layout sizes a colour
    bar's margin by its tick labels as they are before the layout, and placing the bar
    (shorter, next to equal-aspect panels) changes them ("-5" becomes "-5.0"): from one
    pass a bar's label could end outside the figure (the dense ``weights.png`` clipped
    "bias a"). A second pass starts from the final ticks."""
    fig.draw_without_rendering()


def _save(fig, path, dpi):
    _layout(fig)
    fig.savefig(path, dpi=dpi)


def _natural_coordinates(space: NodeSpace) -> np.ndarray:
    """``(n, gdim)`` dof coordinates in natural order."""
    gd = space.mesh.geometry.dim
    out = np.empty((space.n, gd))
    out[space.nat_of_global] = space.x_all[:gd].T
    return out


def _dg0_cells(space: NodeSpace):
    """The cells of a DG0 node space of a 1D or 2D node domain in natural order (their
    vertex coordinates, :func:`cell_polygons`), to draw a cell function as what it is:
    one value a cell. None for other spaces (collective)."""
    if (space.family, space.degree) != ("DG", 0) or space.mesh.geometry.dim > 2:
        return None
    return cell_polygons(space)


def _uniform_grid(coords: np.ndarray):
    """``(xs, ys)`` if the 2D points are the centres (nodes) of a uniform tensor grid in
    natural order (x major, y minor), else None."""
    xs, ys = np.unique(np.round(coords[:, 0], 9)), np.unique(np.round(coords[:, 1], 9))
    if len(xs) * len(ys) != len(coords):
        return None
    for v in (xs, ys):
        if len(v) > 2 and not np.allclose(np.diff(v), v[1] - v[0], rtol=1e-6, atol=1e-12):
            return None
    return xs, ys


def _draw_nodes(ax, coords, values, cmap, vmin, vmax, cells=None):
    """One node function. 1D: a curve, or for a cell function (``cells``, from
    :func:`_dg0_cells`) its steps. 2D: on a uniform grid an image (a pixel a cell or
    node); a cell function otherwise one filled polygon a cell, coloured by its value (a
    smooth interpolation between cell centres would show values the function does not
    take and ragged edges at the boundary); a continuous function a Gouraud-shaded
    tripcolor."""
    values = np.asarray(values)
    if coords.shape[1] == 1:
        if cells is not None:
            lo = np.array([c[:, 0].min() for c in cells])
            hi = np.array([c[:, 0].max() for c in cells])
            order = np.argsort(lo)
            return ax.stairs(values[order], np.append(lo[order], hi[order][-1]), baseline=None, color="C0")
        return ax.plot(coords[:, 0], values, color="C0")[0]
    grid = _uniform_grid(coords)
    if grid is not None:
        xs, ys = grid
        img = values.reshape(len(xs), len(ys)).T[::-1]
        ext = (xs[0] - 0.5 * (xs[1] - xs[0] if len(xs) > 1 else 1), xs[-1] + 0.5 * (xs[1] - xs[0] if len(xs) > 1 else 1),
               ys[0] - 0.5 * (ys[1] - ys[0] if len(ys) > 1 else 1), ys[-1] + 0.5 * (ys[1] - ys[0] if len(ys) > 1 else 1))
        return ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, extent=ext, interpolation="nearest")
    if cells is not None:
        from matplotlib.collections import PolyCollection

        coll = PolyCollection([c[:, :2] for c in cells], array=values, cmap=cmap, edgecolors="face", linewidths=0.4)
        coll.set_clim(vmin, vmax)
        ax.add_collection(coll)
        ax.autoscale_view()
        ax.set_aspect("equal")
        return coll
    return ax.tripcolor(coords[:, 0], coords[:, 1], values, cmap=cmap, vmin=vmin, vmax=vmax, shading="gouraud")


def _training_curves(history: list[dict], name: str) -> list[tuple]:
    """The curves of one metric of ``history``: ``[(cycle, x, y), ...]``, one per cycle of
    an adaptive run (rows with a ``cycle`` entry; ``cycle`` None for a plain run) on one
    cumulative axis: cycle k's iterations (epochs) are offset by the sum of the earlier
    cycles' counts, so its first point (the transferred controls, iteration 0 of its
    training) sits where the previous cycle ended. Rows without the metric (a test
    evaluation every ``output.test_every`` iterations) are left out."""
    key = _iteration_key(history)
    out = []
    for cycle, offset, rows in _cycles(history):
        pts = [(offset + float(h[key]), float(h[name])) for h in rows if h.get(name) not in (None, "")]
        if pts:
            x, y = (np.array(v) for v in zip(*pts))
            out.append((cycle, x, y))
    return out


def _iteration_key(history: list[dict]) -> str:
    return "iteration" if history and "iteration" in history[0] else "epoch"


def _cycles(history: list[dict]) -> list[tuple]:
    """``[(cycle, offset, rows), ...]``: the rows of every cycle (cycle None: a run
    without cycles) in order, and where its iterations start on the cumulative axis."""
    key, groups = _iteration_key(history), {}
    for h in history:
        groups.setdefault(h.get("cycle"), []).append(h)
    out, offset = [], 0.0
    for cycle, rows in groups.items():
        out.append((cycle, offset, rows))
        offset += max(float(h[key]) for h in rows)
    return out


def plot_training(path, history: list[dict], title: str = ""):
    """Training curves per iteration (epoch): J, the train, validation and test losses
    (log scale, left) and, for classes, the train, validation and test accuracy (right). Rows without a test
    evaluation (``output.test_every``) are skipped in the test curves. An adaptive run's
    cycles (rows with a ``cycle`` entry) are drawn one after another on one cumulative
    axis, a curve each, their starts marked and labelled (:func:`_training_curves`)."""
    _save(_training_figure(history, title), path, dpi=120)
    return Path(path)


def _training_figure(history: list[dict], title: str = ""):
    key = _iteration_key(history)
    classes = any("train_accuracy" in h for h in history)
    fig = _figure((10.0 if classes else 6.4, 4.0))
    axes = fig.subplots(1, 2 if classes else 1, squeeze=False)[0]
    cycles = [(c, offset) for c, offset, _ in _cycles(history) if c is not None]

    def curve(ax, name, label, **style):
        for i, (_, x, y) in enumerate(_training_curves(history, name)):
            ax.plot(x, y, label=label if i == 0 else None, **style)

    def mark_cycles(ax):
        if len(cycles) < 2:
            return
        for _, x0 in cycles[1:]:
            ax.axvline(x0, color="0.5", lw=0.8, ls=":")
        top = ax.secondary_xaxis("top")  # the cycles' starts, labelled above the curves
        top.set_xticks([x0 for _, x0 in cycles], [f"cycle {c}" for c, _ in cycles], fontsize=7)
        top.tick_params(length=0, pad=2)

    xlabel = f"{key} (the cycles one after another)" if len(cycles) > 1 else key
    ax = axes[0]
    curve(ax, "J", "J (train loss + regulariser)", color="C0", lw=2.0)
    curve(ax, "train_loss", "train loss", color="C1", ls="--")
    curve(ax, "validation_loss", "validation loss", color="C3", ls="-.")
    curve(ax, "test_loss", "test loss", color="C2", ls=":", marker=".", ms=3)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    mark_cycles(ax)
    ax.legend(fontsize=8)
    if classes:
        ax = axes[1]
        curve(ax, "train_accuracy", "train accuracy", color="C1", ls="--")
        curve(ax, "validation_accuracy", "validation accuracy", color="C3", ls="-.")
        curve(ax, "test_accuracy", "test accuracy", color="C2", ls=":", marker=".", ms=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        mark_cycles(ax)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return fig


def plot_states(path, space: NodeSpace, depth_points, states: list[np.ndarray], titles: list[str], max_levels: int = 5):
    """f over the (depth, node) domain for a few samples: for each sample (a row) the
    state at up to ``max_levels`` depths (columns). ``states[i]`` is ``(N+1, n)`` in
    natural order. A DG0 state is drawn cell by cell (:func:`_draw_nodes`). Call on
    every rank; rank 0 draws."""
    cells = _dg0_cells(space)
    if space.comm.rank != 0 or not states:
        return None
    _save(_states_figure(_natural_coordinates(space), cells, depth_points, states, titles, max_levels), path, dpi=110)
    return Path(path)


def _states_figure(coords, cells, depth_points, states, titles, max_levels: int = 5):
    pts = np.asarray(depth_points)
    levels = np.unique(np.linspace(0, len(pts) - 1, min(max_levels, len(pts))).round().astype(int))
    fig = _figure((2.2 * len(levels) + 1, 2.2 * len(states) + 0.4))
    axes = fig.subplots(len(states), len(levels), squeeze=False)
    for i, (Z, title) in enumerate(zip(states, titles)):
        lim = np.abs(Z).max() or 1.0
        for j, k in enumerate(levels):
            ax = axes[i, j]
            art = _draw_nodes(ax, coords, Z[k], "RdBu_r", -lim, lim, cells)
            ax.set_title(f"{title}, t = {pts[k]:.2g}", fontsize=8)
            if coords.shape[1] == 2:
                ax.set_xticks([]), ax.set_yticks([])
            else:
                ax.set_xlabel("node y")
        if coords.shape[1] == 2:
            fig.colorbar(art, ax=axes[i, -1], label="f(y, t)")
    return fig


def plot_weights(path, space: NodeSpace, depth_points, a: np.ndarray, b: np.ndarray, kernel=None):
    """The learned controls: the bias a(y, t) per layer (top; a DG0 bias cell by cell,
    :func:`_draw_nodes`) and the selection weight of the first and last layers (bottom,
    as the kernel family shows it: b(y, z) in natural order for dense, kappa on the
    offset box for local), diverging colours. Call on every rank; rank 0 draws."""
    cells = _dg0_cells(space)
    if space.comm.rank != 0:
        return None
    _save(_weights_figure(_natural_coordinates(space), cells, depth_points, a, b, kernel), path, dpi=110)
    return Path(path)


def _weights_figure(coords, cells, depth_points, a, b, kernel=None):
    N = a.shape[0]
    layers = np.unique(np.linspace(0, N - 1, min(N, 4)).round().astype(int))
    fig = _figure((2.6 * max(len(layers), 2) + 1, 5.4))
    top, bottom = fig.subfigures(2, 1)  # each row lays out its own panels: no gaps from the other's colour bar
    axes = top.subplots(1, len(layers), squeeze=False)[0]
    pts = np.asarray(depth_points)
    lim = np.abs(a).max() or 1.0
    for ax, k in zip(axes, layers):
        art = _draw_nodes(ax, coords, a[k], "PuOr_r", -lim, lim, cells)
        ax.set_title(f"a(y), layer {k} (t={0.5 * (pts[k] + pts[k + 1]):.2g})", fontsize=8)
        if coords.shape[1] == 2:
            ax.set_xticks([]), ax.set_yticks([])
    if coords.shape[1] == 2:
        top.colorbar(art, ax=list(axes), label="bias a", shrink=0.9)
    shown = (0, N - 1) if N > 1 else (0,)
    images = [kernel.image(b[k]) if kernel is not None else (b[k], None, "node z (natural order)", "node y (natural order)")
              for k in shown]
    blim = max(float(np.abs(img).max(initial=0.0)) for img, *_ in images) or 1.0
    axes = bottom.subplots(1, len(shown), squeeze=False)[0]
    for ax, k, (img, extent, xlabel, ylabel) in zip(axes, shown, images):
        im = ax.imshow(img, cmap="RdBu_r", vmin=-blim, vmax=blim, interpolation="nearest", extent=extent,
                       origin="upper" if extent is None else "lower")
        ax.set_title(f"{'b(y, z)' if extent is None else 'kappa(y - z)'}, layer {k}", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    bottom.colorbar(im, ax=list(axes), label="selection weight b", shrink=0.9)
    return fig


# --------------------------------------------------------------------------- depth slabs
def pixel_images(space: NodeSpace, values: np.ndarray) -> np.ndarray:
    """A DG0 image (x channels) field in natural order as ``(C, k, k)`` pixel images (row 0
    at the top, as the data's images): the cells drawn as cells."""
    X = _natural_coordinates(space)
    k = len(np.unique(np.round(X[:, 0], 9)))
    C = len(np.unique(np.round(X[:, 2], 9))) if X.shape[1] == 3 else 1
    j, i = np.floor(X[:, 0] * k).astype(int), k - 1 - np.floor(X[:, 1] * k).astype(int)
    c = np.floor(X[:, 2] * C).astype(int) if X.shape[1] == 3 else np.zeros(len(X), dtype=int)
    out = np.zeros((C, k, k))
    out[c, i, j] = values
    return out


def plot_slab_states(path, spaces: list[NodeSpace], finals: list[list[np.ndarray]], titles: list[str],
                     channels: int = 4):
    """A slab network's states: for each sample (a row) the input and the state at the end
    of every slab, up to ``channels`` channels of each (pixel images). ``finals[s][i]`` is
    sample s's state at the end of slab i, natural order (``finals[s][0]``: the input).
    Call on every rank; rank 0 draws."""
    if spaces[0].comm.rank != 0 or not finals:
        return None
    shown = [[pixel_images(sp, f) for sp, f in zip([spaces[0]] + spaces, row)] for row in finals]
    cols = [min(channels, imgs.shape[0]) for imgs in shown[0]]
    fig = _figure((1.5 * sum(cols) + 1, 1.7 * len(finals) + 0.4))
    axes = fig.subplots(len(finals), sum(cols), squeeze=False)
    for r, (row, title) in enumerate(zip(shown, titles)):
        col = 0
        for i, (imgs, m) in enumerate(zip(row, cols)):
            lim = np.abs(imgs).max() or 1.0
            for c in range(m):
                ax = axes[r, col]
                im = ax.imshow(imgs[c], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
                where = "input" if i == 0 else f"slab {i - 1} end"
                ax.set_title(f"{title}: {where}, ch {c}" if c == 0 else f"ch {c}", fontsize=7)
                ax.set_xticks([]), ax.set_yticks([])
                col += 1
        fig.colorbar(im, ax=axes[r, -1], shrink=0.8)
    _save(fig, path, dpi=100)
    return Path(path)


def plot_slab_kernels(path, kernels: list, kappas: list[np.ndarray]):
    """kappa of the first and last layer of every slab (``kappas[i]``: slab i's ``(N_i,
    M_i)`` natural-order block), as its kernel draws it (channel pairs in blocks)."""
    rows = [(i, k) for i, K in enumerate(kappas) for k in sorted({0, K.shape[0] - 1})]
    fig = _figure((3.0 * len(rows) + 1, 3.2))
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    images = [kernels[i].image(kappas[i][k]) for i, k in rows]
    for ax, (i, k), (img, extent, xlabel, ylabel) in zip(axes, rows, images):
        lim = float(np.abs(img).max(initial=0.0)) or 1.0
        im = ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest", extent=extent, origin="lower")
        ax.set_title(f"slab {i}, layer {k}: kappa", fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.7)
    _save(fig, path, dpi=100)
    return Path(path)


# --------------------------------------------------------------------------- adaptive runs
def cell_polygons(space: NodeSpace) -> list[np.ndarray]:
    """The vertex coordinates ``(vertices, gdim)`` of every cell in natural (DG0) order,
    on every rank (collective)."""
    msh = space.mesh
    tdim, gd = msh.topology.dim, msh.geometry.dim
    ncell = msh.topology.index_map(tdim).size_local
    x, dofs = msh.geometry.x[:, :gd], msh.geometry.dofmaps[0]
    # the vertices in order around the cell (DOLFINx numbers a quadrilateral's as a
    # tensor product, (0,0) (1,0) (0,1) (1,1)); higher-order geometry nodes dropped
    cell = msh.topology.cell_type
    order = {CellType.interval: [0, 1], CellType.triangle: [0, 1, 2], CellType.quadrilateral: [0, 1, 3, 2]}.get(cell)
    mine = [x[dofs[c]] if order is None else x[dofs[c][order]] for c in range(ncell)]
    cells = [p for part in msh.comm.allgather(mine) for p in part]
    out = [None] * len(cells)
    for i, nat in enumerate(space.nat_of_global):
        out[nat] = cells[i]
    return out


def write_indicator_mesh(path, space: NodeSpace, eta_natural: np.ndarray):
    """The node mesh and the width indicators (a DG0 function ``eta``) as XDMF."""
    fn = fem.Function(fem.functionspace(space.mesh, ("DG", 0)), name="eta")
    fn.x.array[: space.n_local] = np.asarray(eta_natural)[space.nat_owned]
    fn.x.scatter_forward()
    with dolfinx.io.XDMFFile(space.comm, str(path), "w") as xf:
        xf.write_mesh(space.mesh)
        xf.write_function(fn)


def plot_adapt(path, polygons: list[np.ndarray], eta: np.ndarray, depth_points: list[np.ndarray], controls: list[int],
               estimates: list[float], title: str = ""):
    """The adapted node mesh coloured by the width indicators (1D: the cell widths), the
    depth points of every cycle, and the estimated error against the controls."""
    fig = _figure((13, 4))
    ax0, ax1, ax2 = fig.subplots(1, 3)
    if polygons and polygons[0].shape[1] == 1:
        lo = np.array([p[:, 0].min() for p in polygons])
        hi = np.array([p[:, 0].max() for p in polygons])
        ax0.bar(lo, hi - lo, width=hi - lo, align="edge", color="C0", edgecolor="k", linewidth=0.3)
        ax0.set_yscale("log")
        ax0.set_xlabel("y"), ax0.set_ylabel("cell width")
        ax0.set_title(f"node cells ({len(polygons)})")
    else:
        from matplotlib.collections import PolyCollection

        coll = PolyCollection([p[:, :2] for p in polygons], array=np.abs(eta) if len(eta) else None, cmap="viridis",
                              edgecolors="k", linewidths=0.2)
        ax0.add_collection(coll)
        ax0.autoscale_view()
        ax0.set_aspect("equal")
        if len(eta):
            fig.colorbar(coll, ax=ax0, label="|eta| (width)")
        ax0.set_title(f"node mesh ({len(polygons)} cells)")
    for k, pts in enumerate(depth_points):
        ax1.plot(pts, np.full(len(pts), k), "|", color="C1", markersize=12)
        ax1.plot([pts[0], pts[-1]], [k, k], color="C1", linewidth=0.5)
    ax1.set_xlabel("depth t"), ax1.set_ylabel("cycle")
    ax1.set_title("layers of every cycle")
    ax2.loglog(controls, np.maximum(np.abs(estimates), 1e-300), "o-")
    ax2.set_xlabel("controls"), ax2.set_ylabel("|estimated error of J|")
    ax2.set_title(title or "estimate")
    _save(fig, path, dpi=110)
