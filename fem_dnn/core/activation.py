"""Activation functions sigma of the Liu-Markowich model (LM 2.1), in numpy and UFL.

Each activation provides ``sigma``, ``dsigma`` (sigma') and ``d2sigma`` (sigma'') on numpy
arrays (used by the batched solves) and ``ufl(s)`` returning the UFL expression (used by
the weak forms). The numpy derivatives are checked against UFL differentiation of
``ufl(s)`` in the tests, so the weak forms remain the single definition.
"""

from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import ufl

from fem_dnn.errors import InputError

__all__ = ["Activation", "ACTIVATIONS", "get_activation"]

_LEAK = 0.1  # leaky ReLU slope: max(0.1 s, s)


@dataclass(frozen=True)
class Activation:
    """An activation function sigma with its first two derivatives.

    Attributes:
        name: registry name.
        sigma: numpy sigma(s).
        dsigma: numpy sigma'(s).
        d2sigma: numpy sigma''(s) (zero almost everywhere for piecewise-linear sigma).
        ufl: UFL expression sigma(s) for a UFL operand s.
        lipschitz: Lipschitz constant of sigma (LM Thm 3.1).
        dsigma_from: optional ``(s, sigma(s)) -> sigma'(s)`` that reuses sigma(s) (tanh:
            ``1 - sigma^2``, logistic: ``sigma (1 - sigma)``), so the forward solve can
            keep sigma' for the costate at the price of a multiplication.
        from_sigma: optional ``sigma(s) -> (sigma'(s), sigma''(s))``: when present the
            forward tape keeps sigma(u) alone (tanh and logistic).
        sigma_out: optional ``(s, out) -> out`` computing sigma(s) into ``out`` (which
            may be s itself) without temporaries of the batch's size.
    """

    name: str
    sigma: Callable[[np.ndarray], np.ndarray]
    dsigma: Callable[[np.ndarray], np.ndarray]
    d2sigma: Callable[[np.ndarray], np.ndarray]
    ufl: Callable
    lipschitz: float
    dsigma_from: Callable | None = None
    from_sigma: Callable | None = None
    sigma_out: Callable | None = None

    def evaluate(self, s: np.ndarray, out: np.ndarray) -> np.ndarray:
        """sigma(s) written into ``out`` (may be ``s``); returns ``out``."""
        if self.sigma_out is not None:
            return self.sigma_out(s, out)
        out[...] = self.sigma(s)
        return out

    def both(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(sigma(s), sigma'(s))``, sharing work where the activation allows it."""
        val = self.sigma(s)
        return val, (self.dsigma(s) if self.dsigma_from is None else self.dsigma_from(s, val))


def _tanh(s, out=None):
    """tanh as ``2 / (1 + exp(-2 s)) - 1``, in place on one temporary.

    numpy's exp is vectorised (SIMD) and its tanh is not: this form costs about 40% of
    ``np.tanh`` on large batches, where tanh would otherwise cost as much as the layer's
    GEMM. The absolute error is at most a few ulp of 1 (about 4e-16, the tests check
    it), which is what the state update ``f + tau sigma(u)`` resolves anyway; relative
    accuracy for tiny |s| is not kept. exp(-2s) overflows to inf for s < -354 and
    gives exactly -1; the form is exactly 0 at 0 and +-1 in the tails.
    """
    t = np.multiply(s, -2.0, out=out)
    if not isinstance(t, np.ndarray):  # a scalar
        with np.errstate(over="ignore"):
            return 2.0 / (1.0 + np.exp(t)) - 1.0
    with np.errstate(over="ignore"):
        np.exp(t, out=t)
    t += 1.0
    np.divide(2.0, t, out=t)
    t -= 1.0
    return t


def _one_minus_square(v):
    """``1 - v^2`` (tanh' from tanh) on one fresh array, in place."""
    t = np.multiply(v, v)
    return np.subtract(1.0, t, out=t)


def _logistic(s):
    return 0.5 * (1.0 + _tanh(0.5 * s))  # overflow-free form of 1/(1+exp(-s))


def _dlogistic(s):
    p = _logistic(s)
    return p * (1.0 - p)


def _d2logistic(s):
    p = _logistic(s)
    return p * (1.0 - p) * (1.0 - 2.0 * p)


def _real(s):
    """The floating type a derivative of s comes back in: s's own (float32 stays float32)."""
    return np.result_type(s, np.float32)


def _drelu(s):
    """relu' = [s > 0] written straight into an array of s's precision and memory order
    (one pass; ``(s > 0).astype`` makes a boolean array and converts it: measured 1.6 ms
    against 0.13 ms on a 12544 x 32 float32 batch in a training run)."""
    s = np.asarray(s)
    return np.greater(s, 0, out=np.empty_like(s, dtype=_real(s)), casting="unsafe")


def _elu(s):
    return np.where(s > 0, s, np.expm1(np.minimum(s, 0.0)))


def _delu(s):
    return np.where(s > 0, 1.0, np.exp(np.minimum(s, 0.0)))


def _d2elu(s):
    return np.where(s > 0, 0.0, np.exp(np.minimum(s, 0.0)))


ACTIVATIONS: dict[str, Activation] = {
    "tanh": Activation(
        "tanh",
        _tanh,
        lambda s: 1.0 - _tanh(s) ** 2,
        lambda s: -2.0 * _tanh(s) * (1.0 - _tanh(s) ** 2),
        ufl.tanh,
        1.0,
        lambda s, v: _one_minus_square(v),
        lambda v: (1.0 - v * v, -2.0 * v * (1.0 - v * v)),
        _tanh,
    ),
    "arctan": Activation(
        "arctan",
        np.arctan,
        lambda s: 1.0 / (1.0 + s * s),
        lambda s: -2.0 * s / (1.0 + s * s) ** 2,
        ufl.atan,
        1.0,
    ),
    "sigmoid": Activation(
        "sigmoid", _logistic, _dlogistic, _d2logistic, lambda s: 1.0 / (1.0 + ufl.exp(-s)), 0.25,
        lambda s, v: v * (1.0 - v),
        lambda v: (v * (1.0 - v), v * (1.0 - v) * (1.0 - 2.0 * v)),
    ),
    "relu": Activation(
        "relu",
        lambda s: np.maximum(s, 0.0),
        _drelu,
        np.zeros_like,
        lambda s: ufl.max_value(s, 0.0),
        1.0,
    ),
    "leaky_relu": Activation(
        "leaky_relu",
        lambda s: np.maximum(_LEAK * s, s),
        lambda s: np.where(np.asarray(s) > 0, 1.0, _LEAK).astype(_real(s)),
        np.zeros_like,
        lambda s: ufl.max_value(_LEAK * s, s),
        1.0,
    ),
    "elu": Activation(
        "elu", _elu, _delu, _d2elu, lambda s: ufl.conditional(ufl.gt(s, 0), s, ufl.exp(s) - 1.0), 1.0
    ),
}
ACTIVATIONS["logistic"] = ACTIVATIONS["sigmoid"]
ACTIVATIONS["identity"] = Activation(
    "identity", lambda s: np.array(s, dtype=_real(s)), np.ones_like, np.zeros_like, lambda s: s, 1.0
)


def get_activation(name: str | Activation) -> Activation:
    """Look up an activation by name.

    Raises:
        InputError: for an unknown name, listing the known ones.
    """
    if isinstance(name, Activation):
        return name
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise InputError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None
