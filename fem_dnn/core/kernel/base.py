"""The interface of a kernel family (:class:`Kernel`), the registry :data:`KERNELS`,
:func:`register` and :func:`make_kernel`.

A family's work falls into three jobs, each a base class that lists its abstract
methods (the ones a new family must write; the others have defaults):

- :class:`KernelOperator`, the operator and its tangents: :meth:`~KernelOperator.apply`,
  :meth:`~KernelOperator.apply_transpose`, :meth:`~KernelOperator.outer` (abstract);
  :meth:`~KernelOperator.tangent`, :meth:`~KernelOperator.transpose_tangent`,
  :meth:`~KernelOperator.outer_tangent` (defaults: b enters linearly).
- :class:`ControlBlock`, the b block of the control Vec, its layout and inner product:
  :meth:`~ControlBlock.shape`, :meth:`~ControlBlock.natural_shape`,
  :meth:`~ControlBlock.from_natural`, :meth:`~ControlBlock.to_natural`,
  :meth:`~ControlBlock.weigh`, :meth:`~ControlBlock.diagonal` (abstract);
  :meth:`~ControlBlock.block_shape`, :meth:`~ControlBlock.zeros`,
  :meth:`~ControlBlock.share`, :meth:`~ControlBlock.reduce`, :meth:`~ControlBlock.random`
  (defaults: every rank holds its whole layer, nothing to exchange).
- :class:`KernelApplication`, what the application asks of a family (all with
  defaults): how a config builds it (:attr:`~KernelApplication.config`,
  :meth:`~KernelApplication.from_config`), its memory (:meth:`~KernelApplication.memory`,
  needed by ``fem-dnn train``), what a checkpoint records
  (:meth:`~KernelApplication.describe`), the field files and figures
  (:meth:`~KernelApplication.layer_fields`, :meth:`~KernelApplication.image`),
  :meth:`~KernelApplication.sample` and :meth:`~KernelApplication.transfer`.

:class:`Kernel` is the three together, with the family's name and the capability
attributes the rest of the code reads instead of asking for a family by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fem_dnn.errors import InputError

if TYPE_CHECKING:  # the registry is read by the config without importing MPI or DOLFINx
    from fem_dnn.core.nodes import NodeSpace

__all__ = ["KERNELS", "ControlBlock", "Kernel", "KernelApplication", "KernelMemory", "KernelOperator", "make_kernel",
           "register"]


def _mpi():
    from fem_dnn import _dolfinx  # noqa: F401
    from mpi4py import MPI

    return MPI


#: the checks of the config keys a family declares (as those of ``fem_dnn.app.config.SPEC``)
POSITIVE = (lambda v: v > 0, "> 0")


def one_of(*options):
    return lambda v: v in options, f"one of {list(options)}"


class KernelOperator(ABC):
    """The operator ``B_b`` on batches (Fortran ``(n_local, S)``, or one ``(n_local,)``
    function) and its derivatives in b. ``b`` is one layer's coefficients as the network
    uses them (``Controls.b[k]``, :meth:`ControlBlock.shape`)."""

    @abstractmethod
    def apply(self, b, F: np.ndarray) -> np.ndarray:
        """``B_b f`` (a fresh Fortran array the caller may overwrite)."""

    @abstractmethod
    def apply_transpose(self, b, V: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """``scale B_b^T v``: the adjoint of :meth:`apply` in the Euclidean pairing of
        coefficient vectors (a fresh Fortran array). The costate step passes its scalar
        factors (the step size, the sign) as ``scale`` so that a family can fold them into
        its coefficients instead of a pass over the batch."""

    @abstractmethod
    def outer(self, Z: np.ndarray, F: np.ndarray, b=None, scale: float = 1.0) -> np.ndarray:
        """``scale`` times the derivative of ``<Z, B_b F>`` with respect to b (at ``b``; a
        family linear in b does not need it), in b's layout: this rank's part (summed over
        the node ranks by :meth:`ControlBlock.reduce`)."""

    # ---- inputs constant on groups of channels (a slab's first stage): the same values
    def apply_grouped(self, b, F: np.ndarray, groups: int, keep: bool = False) -> np.ndarray:
        """:meth:`apply` for F constant on consecutive groups of ``groups`` channels (the
        state a slab boundary copies to more channels). A family whose product can use
        the structure overrides it; the values are :meth:`apply`'s. ``keep``: a gradient
        will follow (:meth:`outer_grouped` on the same F), so the product may keep what
        that reads again."""
        return self.apply(b, F)

    def outer_grouped(self, Z: np.ndarray, F: np.ndarray, b, groups: int, scale: float = 1.0) -> np.ndarray:
        """:meth:`outer` for F constant on groups of channels (:meth:`apply_grouped`)."""
        return self.outer(Z, F, b, scale)

    def apply_transpose_grouped(self, b, V: np.ndarray, groups: int, scale: float = 1.0) -> np.ndarray:
        """``scale B_b^T v`` up to its sums over each group of ``groups`` consecutive
        channels: an array whose group sums are those of :meth:`apply_transpose` (the dual
        that a transfer which copied the groups reads back, its transpose summing them;
        the entries themselves may differ). Here: :meth:`apply_transpose` itself."""
        return self.apply_transpose(b, V, scale)

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


class ControlBlock(ABC):
    """The b block of the control Vec: a *block* is all N layers' coefficients as this
    rank holds them there; natural order is the same on any number of ranks (checkpoints,
    ``Controls.natural``)."""

    @abstractmethod
    def shape(self) -> tuple:
        """One layer's coefficients as the network uses them (every rank)."""

    @abstractmethod
    def natural_shape(self, N: int) -> tuple:
        """The b block in natural order (the same on any number of ranks)."""

    @abstractmethod
    def from_natural(self, b_nat: np.ndarray) -> np.ndarray:
        """This rank's block from the natural-order array ``(N, ...)``."""

    @abstractmethod
    def to_natural(self, block: np.ndarray) -> np.ndarray:
        """The natural-order array from every rank's block (collective; on every rank)."""

    @abstractmethod
    def weigh(self, block: np.ndarray, out: np.ndarray, depth, inverse: bool) -> np.ndarray:
        """``out = (depth (x) M_b) block`` (or the inverse): the inner product of the b
        block, ``depth`` a :class:`~fem_dnn.learning.controls.DepthOperator` across layers."""

    @abstractmethod
    def diagonal(self) -> tuple:
        """Factors whose product (broadcast against one layer's block) is a positive
        diagonal spectrally equivalent to ``M_b``: the scaling of TAO's coordinates."""

    def block_shape(self, N: int) -> tuple:
        """This rank's part of the b block of the control Vec (N layers)."""
        return (N,) + self.shape()

    def zeros(self, N: int) -> np.ndarray:
        return np.zeros((N,) + self.shape())

    def share(self, block: np.ndarray) -> np.ndarray:
        """The coefficients every rank needs (``(N,) + shape()``) from its block (collective)."""
        return block

    def reduce(self, g: np.ndarray) -> np.ndarray:
        """Sum the ranks' parts of a derivative (from :meth:`KernelOperator.outer`) in
        place (collective)."""
        return g

    def random(self, rng: np.random.Generator, N: int) -> np.ndarray:
        """A standard normal natural-order b block."""
        return rng.standard_normal(self.natural_shape(N))

    def unit_gain(self, rng: np.random.Generator, N: int) -> np.ndarray:
        """A natural-order b block whose operators B have unit gain at the start (the
        ``training.init = "unit_gain"`` start, PyTorch's default layer initialisation in
        the continuum): families that define it override this."""
        raise InputError(f"training.init = 'unit_gain' is defined for the local kernel, not the {self.name} kernel")


@dataclass
class KernelMemory:
    """A family's part of the memory model of a run (:func:`fem_dnn.app.memory.estimate_memory`),
    from :meth:`KernelApplication.memory`.

    Attributes:
        controls: b's coefficients, all layers and ranks.
        controls_local: the largest rank's part of the b block.
        gathered: rows of a batch one layer's product reads on a rank (owned and ghost).
        operator: the operator's fixed data per rank, ``{what: bytes}``.
        work_bytes: one layer product's temporaries besides the batch arrays.
        image: entries of one layer's image in the weights figure.
    """

    controls: int
    controls_local: int
    gathered: int
    operator: dict = field(default_factory=dict)
    work_bytes: int = 0
    image: int = 0


class KernelApplication:
    """What the application (config, memory model, checkpoints, outputs, transfer between
    discretisations) asks of a family."""

    #: the family's keys of the config's ``[network]`` section, ``{key: (default, type,
    #: (check, rule), meaning)}`` as in :data:`fem_dnn.app.config.SPEC`: key
    #: ``kernel_<p>`` is the constructor's argument ``<p>`` (:meth:`from_config`)
    config: dict = {}
    #: values of :meth:`describe`'s keys that a checkpoint written before the key existed means
    checkpoint_defaults: dict = {}

    @classmethod
    def from_config(cls, space: NodeSpace, network: dict, node: dict) -> Kernel:
        """The family on ``space`` as a validated config's ``[network]`` and ``[node]``
        sections say: its :attr:`config` keys, and ``node.channels`` for a family that
        :attr:`~Kernel.takes_channels`."""
        params = {key.removeprefix("kernel_"): network[key] for key in cls.config}
        if cls.takes_channels:
            params["channels"] = node["channels"]
        return cls(space, **params)

    @classmethod
    def memory(cls, network: dict, node: dict, *, N: int, n: int, n_local: int, cells: int, gdim: int) -> KernelMemory:
        """The family's sizes for the memory model of a run, before anything is built:
        ``N`` layers, ``n`` node dofs (``n_local`` on the largest rank) of ``cells`` node
        cells in ``gdim`` dimensions."""
        raise InputError(f"the {cls.name} kernel has no memory model for fem-dnn train: define "
                         f"{cls.__name__}.memory (fem_dnn.core.kernel.KernelApplication.memory)")

    def describe(self) -> dict:
        """What a checkpoint records and must match: the family and its parameters."""
        return {"kernel": self.name}

    def sample(self, b, t: float) -> np.ndarray:
        """One layer's coefficients (network layout) from a scalar, a callable or an
        array in natural order (see :meth:`fem_dnn.network.Network.make_controls`); the
        default takes a scalar."""
        if callable(b) or np.ndim(b):
            raise InputError(f"the {self.name} kernel takes a scalar b per layer")
        return np.full(self.shape(), float(b))

    def layer_fields(self, b: np.ndarray) -> dict:
        """Node fields ``(N, n_local)`` that show the layers' kernels in the field files:
        the row integral ``int b(y, z) dz`` (``B_b 1``) for every family."""
        ones = np.ones((self.space.n_local, 1), order="F")
        return {"b_row_integral": np.stack([self.apply(bk, ones)[:, 0] for bk in b])}

    def image(self, b_nat_layer: np.ndarray) -> tuple:
        """``(2-d array, extent or None, x label, y label)`` showing one layer's natural b
        (the default: its coefficients as rows)."""
        arr = np.asarray(b_nat_layer)
        return arr.reshape(arr.shape[0] if arr.ndim > 1 else 1, -1), None, "coefficient", ""

    def transfer(self, source: Kernel, b_nat: np.ndarray, I: np.ndarray) -> np.ndarray:
        """Natural-order b of this kernel from a natural-order b of ``source`` (another
        discretisation's kernel), I the node interpolation matrix (fine x coarse)."""
        raise InputError(f"the {self.name} kernel cannot transfer its controls to another discretisation")


class Kernel(KernelOperator, ControlBlock, KernelApplication):
    """A kernel family: how the layers' selection weight b is discretised (the package
    doc). A new family is one subclass, registered with :func:`register`: its ``name``,
    the abstract methods of :class:`KernelOperator` and :class:`ControlBlock`, and
    whichever capabilities and :class:`KernelApplication` methods it has.

    The capability attributes say what a family can do, so that no code outside asks for
    it by name.

    Args:
        space: the node space.
    """

    #: the registry name (``[network] kernel``)
    name = "?"
    #: one line for the config's ``network.kernel`` documentation
    summary = ""
    #: its products keep a float32 batch float32 (``Network(dtype="float32")``)
    float32 = False
    #: a layer is the dense rows ``(n_local, n)``, weighed by ``omega_i omega_j``, and row
    #: i of ``B_b f`` reads row i only: the PMP/MSA step minimises the Hamiltonian row by row
    rows_separate = False
    #: natural b is one coefficient per pair of node dofs ``(N, n, n)``: the width
    #: estimator localises b(y, z) half to y's cell and half to z's
    node_pairs = False
    #: why training cannot start from zero controls ("": it can; else the config needs
    #: ``training.init_scale > 0``)
    needs_random_start = ""
    #: takes ``channels`` (``node.channels``: the node domain image x channels)
    takes_channels = False

    def __init__(self, space: NodeSpace):
        self.space = space


#: The kernel families by name (``[network] kernel``), in the order they were
#: registered (:func:`register`): what the config, the command line, the memory model
#: and the training read.
KERNELS: dict[str, type[Kernel]] = {}


def register(cls: type[Kernel]) -> type[Kernel]:
    """Class decorator: make a kernel family available by its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Kernel)) or cls.name in ("", "?"):
        raise ValueError(f"{cls!r} is no Kernel subclass with a name")
    bad = [key for key in cls.config if not key.startswith("kernel_")]
    if bad:
        raise ValueError(f"{cls.__name__}.config: the keys {bad} do not start with 'kernel_'")
    KERNELS[cls.name] = cls
    return cls


def make_kernel(space: NodeSpace, name: str = "dense", **params) -> Kernel:
    """A kernel family by name (a key of :data:`KERNELS`) with its constructor's parameters."""
    if name not in KERNELS:
        raise InputError(f"unknown kernel {name!r}; choose one of {list(KERNELS)}")
    return KERNELS[name](space, **params)
