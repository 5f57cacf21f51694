"""Refinement of a (depth, node) discretisation and transfer of controls between two.

Refinement (:func:`refine_depth`, :func:`refine_nodes`) makes the finer discretisation
that the a posteriori estimators (:mod:`fem_dnn.learning.dwr`) and the adaptive
loop (:mod:`fem_dnn.optimize.adaptive`) ask for; the transfer moves controls onto it.
Multilevel training solves the learning problem on a coarse discretisation of the
(depth, node) domain first and starts the next finer level from the coarse optimum. The
controls are functions (docs/model.md §4): ``a(y,t)`` and ``b(y,z,t)`` are node-space
functions in y (and z), piecewise constant in depth; the readout ``W`` and ``mu`` are
node-space functions too (in z, and in y' for a function readout). The transfer is the
fine discretisation's interpolant of the coarse functions:

- in the node variables, ``I`` (:func:`interpolation_matrix`) evaluates the coarse basis
  functions at the fine dof coordinates (cell midpoints for DG0), so fine node values are
  ``I @ coarse node values``;
- in depth, ``D`` (:func:`depth_matrix`) gives a fine layer the value of the coarse layer
  containing its midpoint.

Then (:func:`transfer_controls`) ``a_f = D a_c I^T``, ``b_f^k = I b_c^{k'} I^T`` (the
kernel is a function of (y, z)), ``W_f = W_c I^T`` (classes) or ``I W_c I^T``
(function), ``mu_f = mu_c`` (classes) or ``I mu_c`` (function).

All matrices are dense and in *natural* node order, so they (and the transferred
controls) do not depend on the number of ranks. The meshes need not be nested; they
should cover the same domain (fine dofs outside the coarse mesh, e.g. on a curved
boundary, take the value extrapolated from the nearest coarse cell).
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx.geometry
from dolfinx import mesh as dmesh

from fem_dnn.core.depth import Depth
from fem_dnn.core.meshes import natural_ranks
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.errors import InputError

__all__ = ["interpolation_matrix", "depth_matrix", "transfer_controls", "refine_depth", "refine_nodes"]


def _cell_keys(msh: dmesh.Mesh) -> np.ndarray:
    """Rank-independent index of every owned cell: its midpoint's rank in natural
    (lexicographic coordinate) order over all cells of the mesh."""
    tdim = msh.topology.dim
    ncell = msh.topology.index_map(tdim).size_local
    mids = dmesh.compute_midpoints(msh, tdim, np.arange(ncell, dtype=np.int32))
    all_mids = np.concatenate(msh.comm.allgather(mids), axis=0).T
    offset = msh.comm.exscan(ncell) or 0
    return natural_ranks(all_mids)[offset : offset + ncell]


def _locate(msh: dmesh.Mesh, pts: np.ndarray) -> np.ndarray:
    """For every point (rows of ``pts``, shape (p, 3)) the owned cell of this rank that
    evaluates it, or -1: among all cells (of all ranks) containing the point, the one
    with the smallest natural key; points in no cell go to the nearest cell."""
    comm = msh.comm
    tdim = msh.topology.dim
    ncell = msh.topology.index_map(tdim).size_local
    owned = np.arange(ncell, dtype=np.int32)
    keys = _cell_keys(msh)
    big = np.iinfo(np.int64).max
    p = len(pts)
    best = np.full(p, big, dtype=np.int64)
    cell = np.full(p, -1, dtype=np.int32)
    if ncell:
        tree = dolfinx.geometry.bb_tree(msh, tdim, entities=owned)
        cand = dolfinx.geometry.compute_collisions_points(tree, pts)
        coll = dolfinx.geometry.compute_colliding_cells(msh, cand, pts)
        for i in range(p):
            cells = coll.links(i)
            cells = cells[cells < ncell]
            if len(cells):
                j = int(np.argmin(keys[cells]))
                best[i], cell[i] = keys[cells[j]], cells[j]
    gbest = np.empty_like(best)
    comm.Allreduce(best, gbest, op=MPI.MIN)
    cell[best != gbest] = -1
    missing = np.flatnonzero(gbest == big)
    if len(missing):  # outside the coarse mesh: the nearest cell (ties: smallest key)
        q = pts[missing]
        d2 = np.full(len(missing), np.inf)
        near = np.full(len(missing), -1, dtype=np.int32)
        if ncell:
            mid_tree = dolfinx.geometry.create_midpoint_tree(msh, tdim, owned)
            near = dolfinx.geometry.compute_closest_entity(tree, mid_tree, msh, q).astype(np.int32)
            d2 = dolfinx.geometry.squared_distance(msh, tdim, near, q)
        d2r = np.round(d2, 14)
        gd2 = np.empty_like(d2r)
        comm.Allreduce(d2r, gd2, op=MPI.MIN)
        k = np.where((d2r == gd2) & (near >= 0), keys[np.maximum(near, 0)] if ncell else big, big).astype(np.int64)
        gk = np.empty_like(k)
        comm.Allreduce(k, gk, op=MPI.MIN)
        cell[missing] = np.where(k == gk, near, -1)
    return cell


def interpolation_matrix(coarse: NodeSpace, fine: NodeSpace) -> np.ndarray:
    """Interpolation from a coarse node space to a fine one, in natural node order.

    Row i holds the values of the coarse basis functions at the fine dof i (natural
    order), so ``fine_values = I @ coarse_values`` is the fine space's interpolant of the
    coarse function. For DG0 the dof coordinates are the cell midpoints; a fine dof on a
    face shared by coarse cells is evaluated in the cell with the lexicographically
    smallest midpoint (for continuous coarse spaces all choices agree), whatever the
    number of ranks.

    Args:
        coarse: the node space interpolated from (DG0, P1 or P2).
        fine: the node space interpolated to, on a mesh of the same domain (nested or
            not); its communicator may differ from the coarse one.

    Returns:
        Dense ``(fine.n, coarse.n)`` array, the same on every rank of ``coarse.comm``.

    Raises:
        InputError: the meshes have different geometric dimensions.
    """
    msh = coarse.mesh
    gdim = msh.geometry.dim
    if fine.mesh.geometry.dim != gdim:
        raise InputError(
            f"cannot interpolate between node meshes of geometric dimension {gdim} and {fine.mesh.geometry.dim}"
        )
    pts = np.empty((fine.n, 3))
    pts[fine.nat_of_global] = fine.x_all.T  # fine dof coordinates in natural order
    cell = _locate(msh, pts)
    I = np.zeros((fine.n, coarse.n))
    V = coarse.V
    if V.element.needs_dof_transformations:  # pragma: no cover - not for DG0/P1/P2
        raise InputError("interpolation needs an element without dof transformations")
    basix_el = V.element.basix_element
    cmap = msh.geometry.cmaps[0]
    xg, gdofs = msh.geometry.x, msh.geometry.dofmaps[0]
    imap = V.dofmap.index_map
    rows = np.flatnonzero(cell >= 0)
    for c in np.unique(cell[rows]):
        sel = rows[cell[rows] == c]
        X = cmap.pull_back(pts[sel, :gdim], xg[gdofs[c], :gdim])
        phi = basix_el.tabulate(0, X)[0, :, :, 0]  # (points, cell dofs)
        cols = coarse.nat_of_global[imap.local_to_global(V.dofmap.cell_dofs(c))]
        I[np.ix_(sel, cols)] += phi
    coarse.comm.Allreduce(MPI.IN_PLACE, I, op=MPI.SUM)
    I[np.abs(I) < 1e-14] = 0.0  # round-off of the basis at nodes: keep the pattern clean
    return I


def depth_matrix(coarse: Depth, fine: Depth) -> np.ndarray:
    """Transfer of piecewise constant layer data: fine layer k takes the value of the
    coarse layer containing its midpoint.

    Args:
        coarse: the depth mesh transferred from.
        fine: the depth mesh transferred to (the same final depth T).

    Returns:
        ``(fine.N, coarse.N)`` 0/1 array with one 1 per row.

    Raises:
        InputError: the depth meshes end at different T.
    """
    if abs(coarse.T - fine.T) > 1e-12 * max(coarse.T, fine.T):
        raise InputError(f"depth meshes end at different depths T={coarse.T} and T={fine.T}")
    D = np.zeros((fine.N, coarse.N))
    for k, t in enumerate(fine.mid):
        D[k, coarse.layer_of(min(float(t), coarse.T))] = 1.0
    return D


def transfer_controls(coarse_space, m_coarse: PETSc.Vec, fine_space) -> PETSc.Vec:
    """Controls of a coarse discretisation as controls of a finer one.

    The coarse controls are gathered in natural order and interpolated: ``a_f = D a_c
    I^T``, ``b_f^k = I b_c^{k'} I^T`` (k' the coarse layer of fine layer k; a local kernel's
    kappa is kept, or interpolated onto another offset box: :meth:`fem_dnn.core.kernel.Kernel.transfer`), ``W_f = W_c
    I^T`` and ``mu_f = mu_c`` (classes) or ``W_f = I W_c I^T`` and ``mu_f = I mu_c``
    (function), with I from :func:`interpolation_matrix` and D from
    :func:`depth_matrix`. Transfer to the same discretisation is the identity. A slab
    network's controls move slab by slab (each slab's I and D; the readout with the last
    slab's I).

    Args:
        coarse_space: :class:`fem_dnn.learning.controls.ControlSpace` of the coarse network.
        m_coarse: coarse controls (a Vec of ``coarse_space``).
        fine_space: :class:`fem_dnn.learning.controls.ControlSpace` of the fine network.

    Returns:
        A new Vec of ``fine_space`` (collective on the fine node communicator).

    Raises:
        InputError: the two control spaces have a different kind or number of classes,
            kernel families, or depth meshes of different T.
    """
    if coarse_space.kind != fine_space.kind:
        raise InputError(f"cannot transfer {coarse_space.kind!r} controls to a {fine_space.kind!r} control space")
    if coarse_space.kind == "classes" and coarse_space.K != fine_space.K:
        raise InputError(f"cannot transfer controls of K={coarse_space.K} classes to K={fine_space.K} classes")
    if coarse_space.slabs != fine_space.slabs or len(coarse_space.layers) != len(fine_space.layers):
        raise InputError(f"cannot transfer the controls of {len(coarse_space.layers)} depth slab(s) to "
                         f"{len(fine_space.layers)}: the slabs move one by one")
    c = coarse_space.natural(m_coarse)
    a_c, b_c = (c["a"], c["b"]) if coarse_space.slabs else ([c["a"]], [c["b"]])
    a, b = [], []
    for cnet, fnet, ai, bi in zip(coarse_space.layers, fine_space.layers, a_c, b_c):  # slab by slab
        I = interpolation_matrix(cnet.space, fnet.space)
        D = depth_matrix(cnet.depth, fnet.depth)
        layer = np.argmax(D, axis=1)  # D has one 1 per row: the coarse layer of each fine layer
        a.append((ai @ I.T)[layer])
        b.append(fnet.kernel.transfer(cnet.kernel, bi, I)[layer])
    if not coarse_space.slabs:
        a, b = a[0], b[0]
    if coarse_space.space is not coarse_space.layers[-1].space:  # a pooled readout: W on its own space
        I = interpolation_matrix(coarse_space.space, fine_space.space)
    if coarse_space.kind == "classes":
        W, mu = c["W"] @ I.T, c["mu"]
    else:
        W, mu = I @ c["W"] @ I.T, I @ c["mu"]
    return fine_space.from_natural(a, b, W, mu)


def refine_depth(depth: Depth, marked) -> Depth:
    """The depth mesh with the ``marked`` layers split at their midpoints (a graded
    :class:`fem_dnn.core.depth.Depth`; controls move onto it with
    :func:`transfer_controls`, each new layer taking its parent's)."""
    return Depth(points=np.sort(np.concatenate([depth.points, depth.mid[np.asarray(marked, dtype=np.int64)]])))


def refine_nodes(space: NodeSpace, marked=None) -> NodeSpace:
    """The node space on the node mesh with the ``marked`` cells (natural DG0 indices, the
    same on every rank; None: all) refined by ``dolfinx.mesh.refine`` (bisection of the
    marked cells' edges, neighbours closed conformingly), repartitioned with shared-facet
    ghosts; same family, degree and mass.

    Raises:
        InputError: a mesh DOLFINx cannot refine (quadrilaterals, hexahedra).
    """
    msh = space.mesh
    if msh.topology.cell_type not in (dmesh.CellType.interval, dmesh.CellType.triangle, dmesh.CellType.tetrahedron):
        raise InputError(f"the node mesh cannot be refined: dolfinx.mesh.refine takes simplices, not {msh.topology.cell_type.name}s"
                         " (use triangle or tetrahedron cells)")
    tdim = msh.topology.dim
    msh.topology.create_entities(1)  # refinement splits edges
    edges = None
    if marked is not None:
        if (space.family, space.degree) != ("DG", 0):
            raise InputError("marking node cells needs a DG0 node space (a neuron per cell)")
        mine = np.flatnonzero(np.isin(space.nat_owned, np.asarray(marked, dtype=np.int64))).astype(np.int32)
        edges = mine if tdim == 1 else dmesh.compute_incident_entities(msh.topology, mine, tdim, 1)
    fine = dmesh.refine(msh, edges, partitioner=dmesh.create_cell_partitioner(dmesh.GhostMode.shared_facet, 2))[0]
    return NodeSpace(fine, space.family, space.degree, space.mass, space.qdeg, space.prefix)
