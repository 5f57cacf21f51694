"""The coordinates every optimiser steps in: *L2-orthonormal coordinates* ``x = T m`` of the
controls m of the learning problem ``min_m J(m)``, with

    T = C^T (x) D^{1/2},   C C^T = the depth part of the inner product (diag(tau_k) for
                           L2, plus l^2 D_t^T D_t for H1 in depth),
                           D = node weights omega (lumped mass; diag(M) for P2),

applied to a (N x nodes), b (the kernel family's diagonal, :meth:`fem_dnn.core.kernel.Kernel.diagonal`:
D on both node indices of a dense b, kappa's lumped weights for a local one), W and mu, the
a and b blocks times the square roots of the control space's ``block_weights``. In
these coordinates the Euclidean geometry *is* the L2 (or H1-in-depth) geometry
of the controls up to constants independent of h and tau: the gradient in them is
``T^{-T} dJ`` (its 2-norm is the L2 norm of the Riesz gradient for lumped mass), its
Hessian ``T^{-T} H T^{-1}``: a method stepping in them (TAO's, :mod:`fem_dnn.optimize.tao`;
SGD and Adam, :mod:`fem_dnn.optimize.stochastic`) is mesh-independent. ``riesz=False``
gives the raw coefficients instead (the negative control of the mesh-independence
study).
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from petsc4py import PETSc

from fem_dnn.learning import ControlSpace

__all__ = ["Coordinates"]


class Coordinates:
    """The map ``x = T m`` between controls m and TAO's coordinates x (see module doc).

    The depth factor C (``C C^T`` = the depth inner product) is its banded Cholesky
    factor (:meth:`fem_dnn.learning.controls.DepthOperator.cholesky`): O(N) storage, and
    ``C^T``, ``C^{-T}``, ``C^{-1}`` act by bidiagonal products and banded triangular
    solves; for the L2 depth product it is ``diag(sqrt(tau_k))``, an elementwise scaling.

    Args:
        controls: the control space.
        riesz: False for the identity (raw coefficients).
    """

    def __init__(self, controls: ControlSpace, riesz: bool = True):
        self.controls, self.riesz = controls, riesz
        w, w_all = controls.space.diagonal_weights()  # the readout's (the last slab's) node space
        self.s, self.s_all = np.sqrt(w), np.sqrt(w_all)
        #: per slab: a's node factors, b's diagonal (as factors), the depth operator C C^T
        #: and, for the L2 depth product, C = diag(sqrt(tau_k)) and its inverse (else None)
        self.layers = []
        for net, (_, _, depth) in zip(controls.layers, controls.depths):
            if depth.is_diagonal:
                c = np.sqrt(depth.diagonal)
                factors = (c, 1.0 / c)
            else:
                depth.cholesky()  # factor once (cached)
                factors = None
            wa, wb = controls.block_weights["a"], controls.block_weights["b"]  # the blocks' weights
            self.layers.append((np.sqrt(wa * net.space.diagonal_weights()[0]),
                                [np.sqrt(f) for f in net.kernel.diagonal()] + ([np.sqrt(wb)] if wb != 1.0 else []),
                                depth, factors))

    @property
    def diagonal_depth(self) -> bool:
        """Every slab's depth operator is diagonal (the L2 depth product): boxes stay boxes."""
        return all(factors is not None for *_, factors in self.layers)

    @staticmethod
    def _depth(depth, factors, X, transpose, inverse):
        """``C^T X``, ``C^{-T} X`` or ``C^{-1} X`` across layers (first axis of X)."""
        if factors is not None:
            c = factors[1] if inverse else factors[0]
            return c.reshape((-1,) + (1,) * (X.ndim - 1)) * X
        return depth.cholesky_apply(X, transpose=transpose, inverse=inverse)

    def _map(self, x, out, transpose, inverse, power):
        """Blockwise ``depth (x) D^{power/2}`` (power = +1 or -1), depth one of C^T,
        C^{-T}, C^{-1}."""
        cs = self.controls
        s, s_all = self.s**power, self.s_all**power
        layers, W, mu = cs.layer_blocks(cs.blocks(x.array_r))
        olayers, oW, omu = cs.layer_blocks(cs.blocks(out))
        for (_, a, b), (_, oa, ob), (sa, s_b, depth, factors) in zip(layers, olayers, self.layers):
            oa[:] = self._depth(depth, factors, a * sa**power, transpose, inverse)
            if b.size:
                sb = b.copy()
                for f in s_b:
                    sb *= f**power
                ob[:] = self._depth(depth, factors, sb.reshape(b.shape[0], -1), transpose, inverse).reshape(b.shape)
        if cs.kind == "classes":
            oW[:] = W * s
            omu[:] = mu
        else:
            oW[:] = W * s[:, None] * s_all
            omu[:] = mu * s
        return out

    def to_coordinates(self, m: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """``x = T m``."""
        out = out or m.duplicate()
        return self._map(m, out, True, False, 1) if self.riesz else _copy(m, out)

    def from_coordinates(self, x: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """``m = T^{-1} x``."""
        out = out or x.duplicate()
        return self._map(x, out, True, True, -1) if self.riesz else _copy(x, out)

    def dual_to_coordinates(self, g: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """``T^{-T} g`` for a dual vector g (a derivative or a Hessian action)."""
        out = out or g.duplicate()
        return self._map(g, out, False, True, -1) if self.riesz else _copy(g, out)


def _copy(x, out):
    x.copy(out)
    return out
