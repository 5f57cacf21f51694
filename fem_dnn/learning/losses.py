"""Losses of the learning problem: one class each, chosen by name (:data:`LOSSES`).

A loss compares the readout ``O`` of a batch with its targets ``C``. The readout space is
the loss's :attr:`Loss.readout`: ``"classes"`` (Y_out = {1..K}: O and C are ``(K,
S_local)``, replicated over the node ranks) or ``"function"`` (Y_out = Y: O and C are node
values ``(n_local, S_local)``, Fortran order, integrated with the node space's mass).
Values and derivatives are for the *sum* over this rank's samples; the reduced
functional divides by the batch size S (docs/model.md §2).

A new loss is one subclass with a ``name`` (the key of :data:`LOSSES`, the value of
``ReducedFunctional(loss=...)``, ``training.loss`` in the config): :meth:`value`, :meth:`gradient` (dloss/dO) and
:meth:`hessian` (d^2loss/dO^2 applied to dO); :meth:`targets` turns the user's targets
into C (one-hot classes are provided). The Taylor tests of ``tests/test_gradient.py`` run
over every registered loss.
"""

from abc import ABC, abstractmethod

import numpy as np

from fem_dnn.errors import InputError
from fem_dnn.network import logistic, softmax

__all__ = ["DEFAULT", "LOSSES", "Loss", "get_loss", "LogisticSquared", "OneHotSquared", "SoftmaxCrossEntropy", "register"]

#: loss name -> Loss subclass (filled by :func:`register`)
LOSSES: dict[str, type["Loss"]] = {}


def register(cls: type["Loss"]) -> type["Loss"]:
    """Class decorator: make a loss available by its ``name``."""
    if cls.readout not in ("classes", "function"):
        raise ValueError(f"{cls.__name__}.readout must be 'classes' or 'function', not {cls.readout!r}")
    LOSSES[cls.name] = cls
    return cls


#: the loss a readout space gets by default (``ReducedFunctional(..., "classes")``)
DEFAULT = {"classes": "cross_entropy", "function": "logistic_l2"}


def get_loss(loss: "str | Loss", readout: str | None = None) -> "Loss":
    """A loss object from its registry name, or the default loss of a readout space
    (``"classes"``, ``"function"``), or the object itself. With ``readout`` the loss must
    be one for that readout space (the data's kind)."""
    if not isinstance(loss, Loss):
        name = DEFAULT.get(loss, loss)
        if name not in LOSSES:
            raise InputError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} (or 'classes', 'function': "
                             "the default loss of that readout)")
        loss = LOSSES[name]()
    if readout is not None and loss.readout != readout:
        fits = sorted(n for n, c in LOSSES.items() if c.readout == readout)
        raise InputError(f"the loss {loss.name!r} is for {loss.readout} targets, but the data have {readout} targets; "
                         f"choose one of {fits}")
    return loss


class Loss(ABC):
    """``loss(O, C)`` summed over a rank's samples, with its first and second derivative."""

    #: registry name
    name: str = ""
    #: ``"classes"`` (integer labels, readout onto K classes) or ``"function"`` (target
    #: functions on Y, readout onto Y)
    readout: str = "classes"

    def targets(self, targets, network, S: int, K: int | None):
        """``(C, labels, K)`` for all S samples: C ``(K, S)`` one-hot with integer labels
        (classes) or node values ``(n_local, S)`` with ``labels = None`` (function)."""
        if self.readout == "function":
            C = network.inputs(targets, split=False)
            if C.shape[1] != S:
                raise InputError(f"targets have {C.shape[1]} samples for {S} inputs")
            return C, None, None
        labels = np.asarray(targets)
        if labels.ndim != 1 or labels.shape[0] != S or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"class labels must be {S} integers, got an array of shape {labels.shape} ({labels.dtype})")
        K = int(labels.max()) + 1 if K is None else int(K)
        if labels.min() < 0 or labels.max() >= K:
            raise InputError(f"class labels must lie in 0..{K - 1}, got {labels.min()}..{labels.max()}")
        C = np.zeros((K, S))
        C[labels, np.arange(S)] = 1.0
        return C, labels.astype(np.int64), K

    @abstractmethod
    def value(self, O: np.ndarray, C: np.ndarray, space) -> float:
        """The loss summed over this rank's samples (0 on ranks that hold a replica)."""

    @abstractmethod
    def gradient(self, O: np.ndarray, C: np.ndarray, space) -> np.ndarray:
        """dloss/dO, the shape of O (a dual vector: the mass is applied)."""

    @abstractmethod
    def hessian(self, O: np.ndarray, C: np.ndarray, dO: np.ndarray, space, gauss_newton: bool = False) -> np.ndarray:
        """d^2loss/dO^2 [dO]; ``gauss_newton`` drops the terms that vanish at a perfect fit
        (the loss Hessian of a convex loss is kept)."""


def _replicated(val: float, space) -> float:
    """A classes loss: O is replicated over the node ranks, so rank 0 counts it."""
    return val if space.comm.rank == 0 else 0.0


@register
class SoftmaxCrossEntropy(Loss):
    """``-sum_k C_k log softmax(O)_k`` on one-hot classes."""

    name, readout = "cross_entropy", "classes"

    def value(self, O, C, space):
        m = O.max(axis=0)
        lse = m + np.log(np.exp(O - m).sum(axis=0))
        return _replicated(float(np.sum(lse - (C * O).sum(axis=0))), space)

    def gradient(self, O, C, space):
        return softmax(O, axis=0) - C

    def hessian(self, O, C, dO, space, gauss_newton=False):
        p = softmax(O, axis=0)
        return p * dO - p * (p * dO).sum(axis=0)


@register
class LogisticSquared(Loss):
    """The paper's ``1/2 int_Y |h(O) - C|^2`` with h logistic, on target functions."""

    name, readout = "logistic_l2", "function"

    def value(self, O, C, space):
        e = logistic(O) - C
        return 0.5 * float(np.sum(e * space.apply_mass(e)))

    def gradient(self, O, C, space):
        h = logistic(O)
        return h * (1.0 - h) * space.apply_mass(np.asfortranarray(h - C))

    def hessian(self, O, C, dO, space, gauss_newton=False):
        h = logistic(O)
        d1 = h * (1.0 - h)
        H = d1 * space.apply_mass(np.asfortranarray(d1 * dO))
        if not gauss_newton:
            d2 = d1 * (1.0 - 2.0 * h)
            H = H + d2 * dO * space.apply_mass(np.asfortranarray(h - C))
        return H


@register
class OneHotSquared(Loss):
    """Mean squared error on one-hot classes: ``1/2 sum_k (O_k - C_k)^2`` (the readout
    itself is compared with the one-hot target; quadratic, so Gauss-Newton is exact)."""

    name, readout = "mse", "classes"

    def value(self, O, C, space):
        return _replicated(0.5 * float(np.sum((O - C) ** 2)), space)

    def gradient(self, O, C, space):
        return O - C

    def hessian(self, O, C, dO, space, gauss_newton=False):
        return np.array(dO, copy=True)
