"""The interface of a kernel family (:class:`Kernel`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the registry is read by the config without importing MPI or DOLFINx
    from fem_dnn.core.domain import NodeSpace

__all__ = ["Kernel"]


def _mpi():
    from fem_dnn import _dolfinx  # noqa: F401
    from mpi4py import MPI

    return MPI


class Kernel:
    """The interface of a kernel family (see the module doc). ``b`` below is one layer's
    coefficients as the network uses them (``Controls.b[k]``); a *block* is all layers'
    coefficients as this rank holds them in the control Vec.

    Args:
        space: the node space.
    """

    name = "?"

    def __init__(self, space: NodeSpace):
        self.space = space

    # ---- the operator on batches (Fortran (n_local, S), or one (n_local,) function)
    def apply(self, b, F: np.ndarray) -> np.ndarray:
        """``B_b f`` (a fresh Fortran array the caller may overwrite)."""
        raise NotImplementedError

    def apply_transpose(self, b, V: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """``scale B_b^T v``: the adjoint of :meth:`apply` in the Euclidean pairing of
        coefficient vectors (a fresh Fortran array). The costate step passes its scalar
        factors (the step size, the sign) as ``scale`` so that a family can fold them into
        its coefficients instead of a pass over the batch."""
        raise NotImplementedError

    def outer(self, Z: np.ndarray, F: np.ndarray, b=None, scale: float = 1.0) -> np.ndarray:
        """``scale`` times the derivative of ``<Z, B_b F>`` with respect to b (at ``b``; a
        family linear in b does not need it), in b's layout: this rank's part (summed over
        the node ranks by :meth:`reduce`)."""
        raise NotImplementedError

    # ---- derivatives in b: for a family linear in b they are the three above
    def tangent(self, b, db, F: np.ndarray) -> np.ndarray:
        """``(dB_b[db]) f``, the derivative of :meth:`apply` in b along db."""
        return self.apply(db, F)

    def transpose_tangent(self, b, db, V: np.ndarray) -> np.ndarray:
        """``(dB_b[db])^T v``."""
        return self.apply_transpose(db, V)

    def outer_tangent(self, Z: np.ndarray, F: np.ndarray, b, db) -> np.ndarray | None:
        """The derivative of :meth:`outer` in b along db (None: zero, b enters linearly)."""
        return None

    # ---- the control block
    def shape(self) -> tuple:
        """One layer's coefficients as the network uses them (every rank)."""
        raise NotImplementedError

    def block_shape(self, N: int) -> tuple:
        """This rank's part of the b block of the control Vec (N layers)."""
        return (N,) + self.shape()

    def natural_shape(self, N: int) -> tuple:
        """The b block in natural order (the same on any number of ranks)."""
        raise NotImplementedError

    def zeros(self, N: int) -> np.ndarray:
        return np.zeros((N,) + self.shape())

    def from_natural(self, b_nat: np.ndarray) -> np.ndarray:
        """This rank's block from the natural-order array ``(N, ...)``."""
        raise NotImplementedError

    def to_natural(self, block: np.ndarray) -> np.ndarray:
        """The natural-order array from every rank's block (collective; on every rank)."""
        raise NotImplementedError

    def share(self, block: np.ndarray) -> np.ndarray:
        """The coefficients every rank needs (``(N,) + shape()``) from its block (collective)."""
        return block

    def reduce(self, g: np.ndarray) -> np.ndarray:
        """Sum the ranks' parts of a derivative (from :meth:`outer`) in place (collective)."""
        return g

    def weigh(self, block: np.ndarray, out: np.ndarray, depth, inverse: bool) -> np.ndarray:
        """``out = (depth (x) M_b) block`` (or the inverse): the inner product of the b
        block, ``depth`` a :class:`~fem_dnn.learning.controls.DepthOperator` across layers."""
        raise NotImplementedError

    def diagonal(self) -> tuple:
        """Factors whose product (broadcast against one layer's block) is a positive
        diagonal spectrally equivalent to ``M_b``: the scaling of TAO's coordinates."""
        raise NotImplementedError

    def sample(self, b, t: float) -> np.ndarray:
        """One layer's coefficients (network layout) from a scalar, a callable or an
        array in natural order (see :meth:`fem_dnn.network.Network.make_controls`)."""
        raise NotImplementedError

    def random(self, rng: np.random.Generator, N: int) -> np.ndarray:
        """A standard normal natural-order b block."""
        return rng.standard_normal(self.natural_shape(N))

    def describe(self) -> dict:
        """What a checkpoint records and must match: the family and its parameters."""
        return {"kernel": self.name}

    def layer_fields(self, b: np.ndarray) -> dict:
        """Node fields ``(N, n_local)`` that show the layers' kernels in the field files:
        the row integral ``int b(y, z) dz`` (``B_b 1``) for every family."""
        ones = np.ones((self.space.n_local, 1), order="F")
        return {"b_row_integral": np.stack([self.apply(bk, ones)[:, 0] for bk in b])}

    def image(self, b_nat_layer: np.ndarray) -> tuple:
        """``(2-d array, extent or None, x label, y label)`` showing one layer's natural b."""
        raise NotImplementedError

    def transfer(self, source: Kernel, b_nat: np.ndarray, I: np.ndarray) -> np.ndarray:
        """Natural-order b of this kernel from a natural-order b of ``source`` (another
        discretisation's kernel), I the node interpolation matrix (fine x coarse)."""
        raise NotImplementedError

