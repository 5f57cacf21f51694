"""The readout: from the final state to the output space, and its link functions.

The classes readout ``O = int W f + mu`` on a node space, with its tangent, transpose
and second derivative (:func:`classes_output` ...), is written here once for the
networks that use it: :class:`~fem_dnn.network.Network` on its own node space, and a
slab network on the last slab's (or, with a pooled readout, on the pooled state's).
"""

from dataclasses import dataclass

import numpy as np

from fem_dnn.errors import InputError

__all__ = ["Readout", "logistic", "softmax"]


@dataclass
class Readout:
    """The readout ``O = int_Y W(., z) f(z,T) dz + mu`` and prediction ``h(O)`` (LM 2.2, docs/model.md §2).

    The readout of a network is applied by :meth:`fem_dnn.network.Network.readout` (with
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
