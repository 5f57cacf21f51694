"""Image x channels node meshes partitioned by pixel blocks (fem_dnn.core.images): the
same cells as the built-in box mesh, every channel of a pixel on one rank, rectangular
blocks, a local kernel's halo only the support's border of the block, and the same
network on any partition."""

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.core.images import create_image_mesh, processor_grid
from fem_dnn.core.kernel import LocalKernel
from fem_dnn.errors import InputError


@pytest.mark.parametrize("ranks, pixels, grid", [
    (1, (14, 14), (1, 1)), (2, (14, 14), (1, 2)), (3, (14, 14), (1, 3)), (4, (14, 14), (2, 2)),
    (6, (28, 28), (2, 3)), (2, (8, 32), (1, 2)), (2, (32, 8), (2, 1)), (3, 7, (3,)),
])
def test_processor_grid_has_the_least_cut(ranks, pixels, grid):
    assert processor_grid(ranks, pixels) == grid


def test_bad_image_meshes():
    with pytest.raises(InputError, match="5 ranks cannot share 2 x 2 pixels"):
        processor_grid(5, (2, 2))
    with pytest.raises(InputError, match="at least one channel"):
        create_image_mesh(MPI.COMM_SELF, (4, 4), 0)
    with pytest.raises(InputError, match="1 or 2 positive pixel counts"):
        create_image_mesh(MPI.COMM_SELF, (4, 4, 4), 2)


def _pixel_and_channel(sp, pixels, C):
    """Owned dofs' integer pixel index per axis and channel."""
    d = len(pixels)
    x = sp.x_owned[: d + 1]
    ij = np.floor(x[:d] * np.array(pixels)[:, None]).astype(int)
    c = np.floor(x[d] * C).astype(int)
    return ij, c


@pytest.mark.mpi
@pytest.mark.parametrize("pixels, C", [((6, 7), 3), (9, 2)])
def test_blocks_hold_every_channel_of_their_pixels(pixels, C):
    """The same cells as ``create_node_mesh`` (natural-order centres and weights equal),
    each rank's pixels a full rectangle (its block of ``processor_grid``) with all C
    channels of each."""
    comm = MPI.COMM_WORLD
    pix = list(np.atleast_1d(pixels))
    sp = NodeSpace(create_image_mesh(comm, pixels, C), "DG", 0)
    ref = NodeSpace(create_node_mesh(comm, "box" if len(pix) == 2 else "rectangle", (*pix, C),
                                     cell="hexahedron" if len(pix) == 2 else "quadrilateral"), "DG", 0)
    assert sp.n == ref.n == C * int(np.prod(pix))
    for a, b in ((sp.x_all, ref.x_all), (sp.weights_all, ref.weights_all)):
        assert np.allclose(sp.to_natural(a[..., sp.offset:sp.offset + sp.n_local], axis=-1),
                           ref.to_natural(b[..., ref.offset:ref.offset + ref.n_local], axis=-1), atol=1e-14)
    ij, c = _pixel_and_channel(sp, pix, C)
    key = np.ravel_multi_index(tuple(ij), pix)
    owned_pixels = np.unique(key)
    assert sp.n_local == C * owned_pixels.size  # every channel of every owned pixel
    assert all(np.array_equal(np.sort(c[key == p]), np.arange(C)) for p in owned_pixels[:50])
    lo, hi = ij.min(axis=1), ij.max(axis=1)
    assert owned_pixels.size == np.prod(hi - lo + 1)  # a full rectangle
    grid = processor_grid(comm.size, pix)
    assert np.array_equal(hi - lo + 1 <= -(-np.array(pix) // np.array(grid)), np.ones(len(pix), bool))
    sizes = comm.allgather(owned_pixels.size)
    assert sum(sizes) == np.prod(pix)


@pytest.mark.mpi
def test_local_kernel_halo_is_the_support_border():
    """On 2 or 3 ranks (strips of rows of pixels), a local kernel of half-width R pixels
    receives exactly R rows of pixels in all C channels from each neighbouring strip: the
    halo is the support's border, and B is the same operator as on one rank (apply to
    round-off, in natural order)."""
    comm = MPI.COMM_WORLD
    n, C, R = 12, 3, 2
    sp = NodeSpace(create_image_mesh(comm, (n, n), C), "DG", 0)
    kern = LocalKernel(sp, radius=R / n, cells=4, channels=C)
    ij, _ = _pixel_and_channel(sp, (n, n), C)
    rows = np.unique(ij[1])
    neighbours = int(rows.min() > 0) + int(rows.max() < n - 1)
    assert kern.halo.ghosts.size == neighbours * min(R, n) * n * C
    rng = np.random.default_rng(1)
    kappa = rng.normal(size=kern.M)
    F = rng.normal(size=(3, sp.n))
    out = sp.to_natural(kern.apply(kappa, sp.from_natural(F, axis=1).T.copy(order="F")).T, axis=1)
    serial = NodeSpace(create_image_mesh(MPI.COMM_SELF, (n, n), C), "DG", 0)
    ks = LocalKernel(serial, radius=R / n, cells=4, channels=C)
    ref = serial.to_natural(ks.apply(kappa, serial.from_natural(F, axis=1).T.copy(order="F")).T, axis=1)
    assert np.abs(out - ref).max() <= 1e-13 * np.abs(ref).max()
