"""The readout: from the final state to the output space, and its link functions."""

from dataclasses import dataclass

import numpy as np

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
