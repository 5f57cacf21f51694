"""Depth: the depth mesh [0,T] and the (depth, node) mesh [0,T] x Y.

- The **depth** [0,T] is an interval mesh with N cells (:class:`Depth`); depth cell k is
  layer k and the controls are constant on it (docs/model.md §4.4).
- The **(depth, node) mesh** [0,T] x Y is a real DOLFINx mesh (:class:`ProductMesh`:
  quadrilaterals over an interval, prisms over triangles, hexahedra over quadrilaterals)
  with depth as the last coordinate, partitioned like the node mesh; trajectories live on
  it for output and for the space-time residual of
  :func:`fem_dnn.core.forms.state_residual`.
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

import basix.ufl
import dolfinx.graph
import dolfinx.la
from dolfinx import fem, mesh as dmesh

from fem_dnn.core.nodes import NodeSpace
from fem_dnn.errors import InputError

__all__ = ["Depth", "ProductMesh"]


# --------------------------------------------------------------------------- depth
class Depth:
    """The depth interval [0,T] with N cells (layers); controls are constant per layer.

    Args:
        T: final depth (> 0), with ``N`` uniform layers; or
        points: strictly increasing depth points starting at 0 (graded layers).
    """

    def __init__(self, T: float = 1.0, N: int | None = None, points=None):
        if points is None:
            if N is None or int(N) != N or N < 1:
                raise InputError(f"number of layers N must be a positive integer, got {N!r}")
            if not (np.isfinite(T) and T > 0):
                raise InputError(f"final depth T must be positive, got {T!r}")
            points = np.linspace(0.0, float(T), int(N) + 1)
        points = np.asarray(points, dtype=float)
        if points.ndim != 1 or len(points) < 2:
            raise InputError("depth points must be a 1D array with at least 2 points (one layer)")
        if not np.all(np.isfinite(points)) or points[0] != 0.0 or np.any(np.diff(points) <= 0):
            raise InputError("depth points must be finite, start at 0 and increase strictly")
        self.points = points
        self.T = float(points[-1])
        self.N = len(points) - 1
        self.tau = np.diff(points)
        self.mid = 0.5 * (points[1:] + points[:-1])

    def layer_of(self, t: float) -> int:
        """Index of the layer containing depth t (the last layer for t = T)."""
        if not (0.0 <= t <= self.T):
            raise InputError(f"depth t={t} is outside [0, {self.T}]")
        return int(min(np.searchsorted(self.points, t, side="right") - 1, self.N - 1))

    def mesh(self, comm: MPI.Comm = MPI.COMM_SELF) -> dmesh.Mesh:
        """The depth mesh as a DOLFINx interval mesh."""
        cells = np.array([[k, k + 1] for k in range(self.N)], dtype=np.int64)
        el = basix.ufl.element("Lagrange", "interval", 1, shape=(1,))
        x = self.points[:, None] if comm.rank == 0 else np.zeros((0, 1))
        return dmesh.create_mesh(comm, cells if comm.rank == 0 else cells[:0], el, x)


# --------------------------------------------------------------------------- (depth, node)
_PRODUCT = {"interval": "quadrilateral", "triangle": "prism", "quadrilateral": "hexahedron"}


class ProductMesh:
    """The (depth, node) mesh [0,T] x Y as a DOLFINx mesh; depth is the last coordinate.

    Each node cell c times each layer k is one product cell, kept on the rank that owns
    c (so the product mesh is partitioned like the node mesh). Node-space trajectories
    (N+1 depth levels) are transferred to functions on it by :meth:`function`:
    continuous P1 (Q1 / prism P1) for P1 node spaces; discontinuous P1 for DG0 (constant
    in y on each node cell, linear in depth); P2 states are written at vertices.
    Layer-wise controls (constant in depth) use :meth:`layer_function`.
    """

    @staticmethod
    def unsupported(mesh: dmesh.Mesh) -> str | None:
        """Why no (depth, node) mesh can be built over this node mesh, or None."""
        cname = mesh.topology.cell_name()
        if cname not in _PRODUCT:
            return f"no (depth, node) mesh over {cname} node cells (3D node domains)"
        if mesh.geometry.dofmaps[0].shape[1] != {"interval": 2, "triangle": 3, "quadrilateral": 4}[cname]:
            return "the (depth, node) mesh needs a first-order node mesh geometry (this mesh is curved, of higher order)"
        return None

    def __init__(self, space: NodeSpace, depth: Depth):
        msh = space.mesh
        reason = self.unsupported(msh)
        if reason:
            raise InputError(reason)
        cname = msh.topology.cell_name()
        self.space, self.depth = space, depth
        comm = msh.comm
        gdim = msh.geometry.dim
        N = depth.N
        tdim = msh.topology.dim
        ncell = msh.topology.index_map(tdim).size_local
        gmap = msh.geometry.index_map()
        nown = gmap.size_local
        gx = msh.geometry.x
        cg = msh.geometry.dofmaps[0][:ncell]  # node cell -> local geometry nodes
        nv = cg.shape[1]
        # product geometry node (k, g) on its owner o: off_o*(N+1) + k*nown_o + (g - off_o)
        own_counts = np.array(comm.allgather(nown))
        own_offsets = np.concatenate([[0], np.cumsum(own_counts)])
        glob = gmap.local_to_global(np.arange(nown + gmap.num_ghosts, dtype=np.int32))
        owner = np.concatenate([np.full(nown, comm.rank), gmap.owners]).astype(np.int64)
        base = own_offsets[owner] * (N + 1) + (glob - own_offsets[owner])
        stride = own_counts[owner]

        def pid(k, g):  # local geometry node g at depth level k
            return base[g] + k * stride[g]

        cells = np.empty((ncell * N, 2 * nv), dtype=np.int64)
        for k in range(N):
            cells[k::N, :nv] = pid(k, cg)
            cells[k::N, nv:] = pid(k + 1, cg)
        xs = np.zeros(((N + 1) * nown, gdim + 1))
        for k in range(N + 1):
            xs[k * nown : (k + 1) * nown, :gdim] = gx[:nown, :gdim]
            xs[k * nown : (k + 1) * nown, gdim] = depth.points[k]
        el = basix.ufl.element("Lagrange", _PRODUCT[cname], 1, shape=(gdim + 1,))

        # product cells stay with their node cell's owner and are ghosted where the
        # node cell is (shared-facet ghosting: facet integrals across ranks work)
        dest = msh.topology.index_map(tdim).index_to_dest_ranks(0)
        links = [np.concatenate([[comm.rank], dest.links(c)]).astype(np.int32) for c in range(ncell)]
        offs = np.concatenate([[0], np.cumsum([len(lk) for lk in links])])
        data = np.concatenate(links) if links else np.zeros(0, dtype=np.int32)
        pdata = np.concatenate([data[offs[c] : offs[c + 1]] for c in range(ncell) for _ in range(N)]) if ncell else data
        poffs = np.concatenate([[0], np.cumsum(np.repeat(np.diff(offs), N))]).astype(np.int32)

        def keep_local(comm_, nparts, cell_types, cells_):
            return dolfinx.graph.adjacencylist(pdata.astype(np.int32), poffs)._cpp_object

        self.mesh = dmesh.create_mesh(comm, cells, el, xs, partitioner=keep_local)
        ptdim = self.mesh.topology.dim
        npc = self.mesh.topology.index_map(ptdim).size_local
        cell_offset = comm.exscan(ncell * N) or 0
        orig = self.mesh.topology.original_cell_index[:npc] - cell_offset
        self.node_cell, self.layer = orig // N, orig % N  # product cell -> (c, k)
        if np.any(self.node_cell >= ncell) or np.any(self.node_cell < 0):
            raise RuntimeError("product mesh cells left their rank; partitioner not respected")
        self.nv = nv
        self.gdim = gdim
        self.continuous = space.family == "P"
        fam = "Lagrange" if self.continuous else "DG"
        self.W = fem.functionspace(self.mesh, (fam, 1))
        # node dof of (node cell c, reference vertex j): node DOF at that vertex (P),
        # or the cell dof (DG0)
        nd = space.V.dofmap.list[self.node_cell]
        pd = self.W.dofmap.list[:npc]
        self._pdofs = pd  # (npc, 2 nv)
        jj = np.arange(2 * nv) % nv
        self._ndofs = nd[:, jj] if self.continuous else np.repeat(nd[:, :1], 2 * nv, axis=1)
        self._level = self.layer[:, None] + (np.arange(2 * nv) >= nv)[None, :]

    def _node_values(self, level_values: np.ndarray) -> np.ndarray:
        """(L, n_local) owned node values per level -> (L, n_local + ghosts)."""
        fn = self.space.function()
        out = np.empty((level_values.shape[0], fn.x.array.size))
        for i, row in enumerate(level_values):
            fn.x.array[: self.space.n_local] = row
            fn.x.scatter_forward()
            out[i] = fn.x.array
        return out

    def function(self, trajectory: np.ndarray, name: str = "f") -> fem.Function:
        """Function on the (depth, node) mesh from ``(N+1, n_local)`` node values."""
        vals = self._node_values(np.asarray(trajectory))
        fn = fem.Function(self.W, name=name)
        fn.x.array[self._pdofs] = vals[self._level, self._ndofs]
        fn.x.scatter_forward()
        return fn

    def layer_function(self, layers: np.ndarray, name: str = "a") -> fem.Function:
        """Discontinuous-in-depth function from per-layer node values: ``(N, n_local)``
        (constant in depth on each layer) or ``(N, 2, n_local)`` (values at the bottom
        and top of each layer, linear in between)."""
        layers = np.asarray(layers)
        if layers.ndim == 2:
            layers = np.stack([layers, layers], axis=1)
        N = self.depth.N
        vals = self._node_values(layers.reshape(2 * N, -1)).reshape(N, 2, -1)
        fn = fem.Function(self.layer_space, name=name)
        pd = self.layer_space.dofmap.list[: len(self.layer)]
        top = (np.arange(2 * self.nv) >= self.nv)[None, :].astype(int)
        fn.x.array[pd] = vals[self.layer[:, None], top, self._ndofs]
        fn.x.scatter_forward()
        return fn

    @property
    def layer_space(self) -> fem.FunctionSpace:
        """Discontinuous P1 on the (depth, node) mesh: holds layer-wise data exactly."""
        if getattr(self, "_layer_space", None) is None:
            self._layer_space = fem.functionspace(self.mesh, ("DG", 1))
        return self._layer_space

    def layer_sums(self, values: np.ndarray) -> np.ndarray:
        """Sum a vector on :attr:`layer_space` (e.g. an assembled residual) per (layer,
        node dof): the test function ``phi_i(y) chi_k(t)`` is the sum of the
        discontinuous P1 basis functions at node dof i in layer k. Returns ``(N, n_local)``."""
        sp = self.space
        fn = sp.function()
        nloc = fn.x.array.size
        acc = np.zeros((self.depth.N, nloc))
        pd = self.layer_space.dofmap.list[: len(self.layer)]
        np.add.at(acc, (np.broadcast_to(self.layer[:, None], pd.shape), self._ndofs), values[pd])
        out = np.empty((self.depth.N, sp.n_local))
        for k in range(self.depth.N):
            fn.x.array[:] = acc[k]
            fn.x.scatter_reverse(dolfinx.la.InsertMode.add)
            out[k] = fn.x.array[: sp.n_local]
        return out
