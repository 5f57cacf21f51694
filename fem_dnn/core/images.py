"""Image x channels node meshes, partitioned by pixel blocks.

The node domain of an image with C channels is ``Y = Omega x {1..C}`` (docs/model.md
§4.3): a structured mesh of the unit square (or interval) of pixels, times a last axis
[0, 1] of C cells, one layer of cells a channel (quadrilaterals over an interval,
hexahedra over a square). The local kernel is translation-invariant in the pixel axes
and dense across channels, so a neuron's support is its pixel's neighbourhood in every
channel.

DOLFINx's default partitioner (a graph partitioner of the dual graph) cuts this mesh
anywhere, across channels too: a rank then holds part of a pixel's channels and its halo
is a ragged surface. :func:`create_image_mesh` partitions by *pixel blocks* instead: the
ranks form a processor grid over the pixel axes, and each rank owns every channel of
the pixels of its block. A local kernel of support radius R pixels then needs from its
neighbours only the border of its block R pixels wide (all channels), and the block is
a rectangle, which the local kernel's grid path (dense GEMMs per offset) requires.
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

import basix.ufl
import dolfinx.graph
from dolfinx import mesh as dmesh

from fem_dnn.errors import InputError

__all__ = ["create_image_mesh", "processor_grid"]


def processor_grid(ranks: int, pixels) -> tuple[int, ...]:
    """The ranks as a grid over the pixel axes: ``p_a`` blocks along axis a with
    ``prod p_a = ranks``, ``p_a <= pixels_a``, the blocks as close to squares as the
    factorisation allows (the smallest halo: the sum of the cuts' lengths, ``sum_a
    (p_a - 1) prod_{b != a} pixels_b``, is the least). Among equal halos the last axis
    is cut first (rows of pixels: contiguous blocks in the C-ordered image)."""
    pixels = [int(k) for k in np.atleast_1d(pixels)]
    best, best_cost = None, None

    def factorisations(n, k):
        if k == 1:
            yield (n,)
            return
        for p in range(1, n + 1):
            if n % p == 0:
                for rest in factorisations(n // p, k - 1):
                    yield (p, *rest)

    for grid in factorisations(int(ranks), len(pixels)):
        if any(p > k for p, k in zip(grid, pixels)):
            continue
        total = float(np.prod(pixels))
        cost = sum((p - 1) * total / k for p, k in zip(grid, pixels))
        key = (cost, tuple(-p for p in reversed(grid)))  # ties: cut the last axis
        if best_cost is None or key < best_cost:
            best, best_cost = grid, key
    if best is None:
        raise InputError(f"{ranks} ranks cannot share {' x '.join(map(str, pixels))} pixels in blocks "
                         f"of at least one pixel; use at most {int(np.prod(pixels))} ranks")
    return best


def create_image_mesh(comm: MPI.Comm, pixels, channels: int, spare_ranks: bool = False) -> dmesh.Mesh:
    """The image x channels node mesh on ``[0, 1]^(d+1)``, partitioned by pixel blocks.

    Args:
        comm: communicator of the node partition.
        pixels: pixels per image axis (an int for an interval, or d ints, d = 1, 2).
        channels: C >= 1, the cells of the last axis.
        spare_ranks: with more ranks than pixels, rank r < pixels owns pixel r (all its
            channels) and the other ranks none (a pooled readout's few pixels); False:
            one line instead.

    Returns:
        A quadrilateral (d = 1) or hexahedral (d = 2) mesh of ``pixels... x C`` cells
        with shared-facet ghosts, the same cells and geometry as
        ``create_node_mesh(comm, "rectangle"/"box", (*pixels, C), cell=...)``; on
        several ranks rank r owns every channel of the pixels of block r of
        :func:`processor_grid`.
    """
    pixels = [int(k) for k in np.atleast_1d(pixels)]
    C = int(channels)
    if len(pixels) not in (1, 2) or min(pixels) < 1:
        raise InputError(f"an image mesh needs 1 or 2 positive pixel counts, got {pixels!r}")
    if C < 1:
        raise InputError(f"an image mesh needs at least one channel, got {channels!r}")
    shape = (*pixels, C)
    D = len(shape)
    vshape = tuple(k + 1 for k in shape)
    corners = np.array(np.meshgrid(*[[0, 1]] * D, indexing="ij")).reshape(D, -1, order="F")  # x fastest
    if comm.rank == 0:  # rank 0 makes the cells; the partitioner sends them to their blocks
        grid = np.meshgrid(*[np.arange(k) for k in vshape], indexing="ij")
        x = np.stack([g.ravel(order="F") / (k - 1) for g, k in zip(grid, vshape)], axis=1)
        cell = np.stack(np.meshgrid(*[np.arange(k) for k in shape], indexing="ij")).reshape(D, -1, order="F")
        cells = np.stack([np.ravel_multi_index(tuple(cell + corners[:, [c]]), vshape, order="F")
                          for c in range(corners.shape[1])], axis=1).astype(np.int64)
    else:
        x, cells = np.zeros((0, D)), np.zeros((0, 2**D), dtype=np.int64)
    spare = spare_ranks and comm.size > int(np.prod(pixels))
    blocks = tuple(pixels) if spare else processor_grid(comm.size, pixels)  # spare: a pixel a rank

    def owner(ijk):
        """The rank of the block of each cell's pixel (its channel does not matter)."""
        r = np.zeros(ijk.shape[1], dtype=np.int64)
        for a, (p, k) in enumerate(zip(blocks, pixels)):
            r = r * p + ijk[a] * p // k
        return r.astype(np.int32)

    def partition(_comm, nparts, cell_types, cell_lists):
        """DOLFINx cell partitioner: the owner of each cell, then the ranks that hold it
        as a ghost (the owners of its facet neighbours, shared-facet ghosts)."""
        c = np.asarray(cell_lists[0]).reshape(-1, 2**D)
        ijk = np.array(np.unravel_index(c.min(axis=1), vshape, order="F"))
        own = owner(ijk)
        hi = np.array(shape)[:, None] - 1
        near = []
        for a in range(D - 1):  # facet neighbours across pixels (channels share a block)
            for s in (-1, 1):
                q = ijk.copy()
                q[a] += s
                inside = (q[a] >= 0) & (q[a] <= hi[a])
                near.append(np.where(inside, owner(np.clip(q, 0, hi)), own))
        near = np.array(near).T if near else np.zeros((own.size, 0), dtype=np.int32)
        data, offsets = [], [0]
        for i in range(own.size):
            ghosts = np.setdiff1d(near[i], own[i])
            data.append(own[i])
            data.extend(ghosts)
            offsets.append(len(data))
        adj = dolfinx.graph.adjacencylist(np.array(data, dtype=np.int32), np.array(offsets, dtype=np.int32))
        return getattr(adj, "_cpp_object", adj)

    element = basix.ufl.element("Lagrange", "quadrilateral" if D == 2 else "hexahedron", 1, shape=(D,))
    return dmesh.create_mesh(comm, cells, element, x, partitioner=partition if comm.size > 1 else None)
