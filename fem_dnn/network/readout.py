"""The readout: from the final state to the output space, and its link functions.

The classes readout ``O = int W f + mu`` on a node space, with its tangent, transpose
and second derivative (:func:`classes_output` ...), is written here once for the
networks that use it: :class:`~fem_dnn.network.Network` on its own node space, and a
slab network on the last slab's (or, with a pooled readout, on the pooled state's).
:class:`ReadoutMethods` is a network's readout, classes or function (``O = int W(., z)
f(z) dz + mu`` with a dense kernel W), with its derivatives.
"""

from dataclasses import dataclass

import numpy as np

from fem_dnn.errors import InputError

__all__ = ["Readout", "ReadoutMethods", "logistic", "softmax"]


@dataclass
class Readout:
    """The readout ``O = int_Y W(., z) f(z,T) dz + mu`` and prediction ``h(O)`` (LM 2.2, docs/model.md §2).

    The readout of a network is applied by :meth:`ReadoutMethods.readout` (with
    its tangent, transpose and second derivative there).

    Attributes:
        kind: ``"classes"`` (Y_out = {1..K}, h = softmax) or ``"function"``
            (Y_out = Y, h = logistic).
        W: ``(K, n_local)`` (classes) or ``(n_local, n)`` kernel rows (function).
        mu: ``(K,)`` (classes) or ``(n_local,)`` (function).
    """

    kind: str
    W: np.ndarray
    mu: np.ndarray


def logistic(O):
    """``h(O) = 1 / (1 + exp(-O))`` (written with tanh: no overflow)."""
    return 0.5 * (1.0 + np.tanh(0.5 * O))


def softmax(O, axis=0):
    """``exp(O_k) / sum_j exp(O_j)`` along ``axis`` (shifted by the maximum)."""
    e = np.exp(O - O.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---------------------------------------------------------------------- the classes readout
def classes_output(space, F, W, mu) -> np.ndarray:
    """``O = W M f + mu`` ``(K, S)`` on every rank (``W`` this rank's columns)."""
    from mpi4py import MPI

    O = W @ space.apply_mass(F)
    space.comm.Allreduce(MPI.IN_PLACE, O, op=MPI.SUM)
    return O + mu[:, None]


def classes_tangent(space, F, dF, readout: Readout, d_readout: Readout | None) -> np.ndarray:
    """The derivative of :func:`classes_output` along ``(dF, dW, dmu)``."""
    from mpi4py import MPI

    dO = readout.W @ space.apply_mass(dF)
    if d_readout is not None:
        dO += d_readout.W @ space.apply_mass(F)
    space.comm.Allreduce(MPI.IN_PLACE, dO, op=MPI.SUM)
    return dO if d_readout is None else dO + d_readout.mu[:, None]


def classes_adjoint(space, F, readout: Readout, gO) -> tuple[np.ndarray, Readout]:
    """The transpose of the derivative applied to ``gO = dloss/dO``: the terminal dual
    ``M W^T gO`` and the readout's part of the derivative (this rank's samples)."""
    dual = space.apply_mass((gO.T @ readout.W).T)  # Fortran (n_local, S) without a copy
    return dual, Readout("classes", gO @ space.apply_mass(F).T, gO.sum(axis=1))


def classes_second(space, dF, d_readout: Readout, gO) -> tuple[np.ndarray, np.ndarray]:
    """The bilinear readout's cross terms with ``gO`` fixed: the terminal dual's and W's."""
    return space.apply_mass((gO.T @ d_readout.W).T), gO @ space.apply_mass(dF).T


def classes_readout(space, W=0.0, mu=0.0, K: int | None = None) -> Readout:
    """A classes readout on ``space`` from ``W`` ``(K, n)`` in natural order, a callable
    ``W(z)`` returning ``(K, p)``, or a scalar (with ``K``); ``mu`` ``(K,)``."""
    if callable(W):
        Wl = np.asarray(W(space.x_owned), dtype=float)
    else:
        Wa = np.asarray(W, dtype=float)
        if Wa.ndim == 0:
            if K is None:
                raise InputError("classes readout needs K or a (K, n) weight array")
            Wa = np.full((K, space.n), float(Wa))
        if Wa.ndim != 2 or Wa.shape[1] != space.n:
            raise InputError(f"readout W has shape {Wa.shape}; expected (K, {space.n})")
        Wl = space.from_natural(Wa, axis=1)
    mu_a = np.broadcast_to(np.asarray(mu, dtype=float), (Wl.shape[0],)).copy()
    return Readout("classes", np.ascontiguousarray(Wl), mu_a)


# ---------------------------------------------------------------------- a network's readout
class ReadoutMethods:
    """The readout of a network on its node space ``space``: the classes readout
    (:func:`classes_output` ...) or the function readout, whose W is a dense kernel
    ``readout_kernel`` (a base of :class:`~fem_dnn.network.Network`, which sets them)."""

    def readout(self, F: np.ndarray, readout: Readout) -> np.ndarray:
        """``O = int W f(T) + mu``: ``(K, S)`` (classes, on every rank) or
        ``(n_local, S)`` (function)."""
        if readout.kind == "classes":
            return classes_output(self.space, F, readout.W, readout.mu)
        return np.asfortranarray(self.readout_kernel.apply(readout.W, F) + readout.mu[:, None])

    def readout_tangent(self, F, dF, readout: Readout, d_readout: Readout | None) -> np.ndarray:
        """Derivative of the readout O along (dF, dW, dmu)."""
        if readout.kind == "classes":
            return classes_tangent(self.space, F, dF, readout, d_readout)
        dO = self.readout_kernel.apply(readout.W, dF)
        if d_readout is not None:
            dO = dO + self.readout_kernel.apply(d_readout.W, F) + d_readout.mu[:, None]
        return np.asfortranarray(dO)

    def readout_adjoint(self, F, readout: Readout, gO) -> tuple[np.ndarray, Readout]:
        """Transpose of the readout's derivative applied to ``gO = dloss/dO`` (dual): the
        terminal costate ``dual_T = M r(T)`` (docs/model.md §3: ``r(z,T) = int gO W(., z)``)
        and the readout part of the derivative (sums over this rank's samples)."""
        if readout.kind == "classes":
            return classes_adjoint(self.space, F, readout, gO)
        dual = self.readout_kernel.apply_transpose(readout.W, gO)
        return np.asfortranarray(dual), Readout("function", self.readout_kernel.outer(gO, F), gO.sum(axis=1))

    def readout_second(self, F, dF, readout: Readout, d_readout: Readout, gO) -> tuple[np.ndarray, np.ndarray]:
        """Second-order cross terms of the bilinear readout (W, f) -> int W f, with gO
        fixed: the derivative of :meth:`readout_adjoint` along (dF, dW). Returns the
        terminal incremental-costate term and the W term."""
        if readout.kind == "classes":
            return classes_second(self.space, dF, d_readout, gO)
        return np.asfortranarray(self.readout_kernel.apply_transpose(d_readout.W, gO)), self.readout_kernel.outer(gO, dF)

    def predict(self, F: np.ndarray, readout: Readout) -> np.ndarray:
        """``C_pre = h(O)``: softmax over classes, or logistic for function outputs."""
        O = self.readout(F, readout)
        return softmax(O, axis=0) if readout.kind == "classes" else logistic(O)

    def make_readout(self, kind: str = "classes", W=0.0, mu=0.0, K: int | None = None) -> Readout:
        """Readout from natural-order arrays or callables.

        classes: ``W`` of shape (K, n) or callable ``W(z)`` returning (K, p); ``mu`` (K,).
        function: ``W`` of shape (n, n) or callable ``W(y, z)``; ``mu`` (n,) or callable.
        """
        sp = self.space
        if kind == "classes":
            return classes_readout(sp, W, mu, K)
        if kind != "function":
            raise InputError(f"readout kind must be 'classes' or 'function', not {kind!r}")
        if callable(W):
            Wl = np.asarray(W(sp.x_owned, sp.x_all), dtype=float)
        else:
            Wa = np.asarray(W, dtype=float)
            Wl = np.full((sp.n_local, sp.n), float(Wa)) if Wa.ndim == 0 else Wa[sp.nat_owned][:, sp.nat_of_global]
        mu_l = sp.interpolate(mu) if callable(mu) else (
            np.full(sp.n_local, float(mu)) if np.ndim(mu) == 0 else sp.from_natural(mu)
        )
        return Readout("function", Wl, mu_l)
