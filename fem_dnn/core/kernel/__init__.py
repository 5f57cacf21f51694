"""The nonlocal operator B_b of the state equation, its transpose, and its control block.

On layer k the selection weight b^k(y, z) enters the state equation through

    (B_b f)(y) = int_Y b^k(y, z) f(z) dz,

and a kernel family says how b^k is discretised, i.e. what the controls of the ``b`` block
are (docs/model.md §4, docs/kernels.md). Every family is linear in its coefficients, so
the tangent and the second-order terms of the optimality system are :meth:`Kernel.apply`,
:meth:`Kernel.apply_transpose` and :meth:`Kernel.outer` again.

- :class:`DenseKernel` (``"dense"``): ``b_h(y,z) = sum_ij b_ij phi_i(y) phi_j(z)`` in
  V_h (x) V_h, so ``B_b f = b M_w f`` (``M_w = diag(omega)`` lumped or M consistent): a
  dense n x n matrix per layer. Rows live on the rank that owns the node dof (``(n_local,
  n)``, columns in global dof order); a batch is applied with one Allgatherv and one GEMM
  per rank block.
- :class:`LocalKernel` (``"local"``): translation-invariant kernels of compact support,
  ``b(y, z, t) = kappa(y - z, t)`` for ``|y - z|_inf <= rho``, with kappa a Q1 function on
  the offset box ``[-rho, rho]^d`` (``cells`` cells a side). Its controls are kappa's
  ``(cells+1)^d`` nodal values per layer, whatever the node mesh; B is a sparse matrix
  over the pairs of node dofs in the support (found once by a k-d tree), applied with a
  halo exchange of the ghost columns only.

A family owns the layout of its block in the control Vec: :meth:`Kernel.block_shape`,
natural order (:meth:`Kernel.from_natural`, :meth:`Kernel.to_natural`), the inner product
(:meth:`Kernel.weigh`, :meth:`Kernel.diagonal`), how the ranks share and reduce it
(:meth:`Kernel.share`, :meth:`Kernel.reduce`) and what a checkpoint records
(:meth:`Kernel.describe`). A new family is one class here and one entry of :data:`KERNELS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fem_dnn.core.kernel.base import Kernel
from fem_dnn.core.kernel.basis import box_basis, box_widths, cell_extent, q1_basis
from fem_dnn.core.kernel.dense import DenseKernel
from fem_dnn.core.kernel.grid import PixelGrid
from fem_dnn.core.kernel.halo import Halo
from fem_dnn.core.kernel.local import LocalKernel
from fem_dnn.core.kernel.lowrank import LowRankKernel
from fem_dnn.errors import InputError

if TYPE_CHECKING:
    from fem_dnn.core.domain import NodeSpace

__all__ = ["KERNELS", "DenseKernel", "Halo", "Kernel", "LocalKernel", "LowRankKernel", "PixelGrid", "box_basis", "box_widths",
           "cell_extent", "make_kernel", "q1_basis"]


#: The kernel families by name (``[network] kernel``).
KERNELS = {"dense": DenseKernel, "local": LocalKernel, "lowrank": LowRankKernel}


def make_kernel(space: NodeSpace, name: str = "dense", **params) -> Kernel:
    """A kernel family by name with its parameters (dense: none; local: radius, cells,
    channels; lowrank: rank)."""
    if name not in KERNELS:
        raise InputError(f"unknown kernel {name!r}; choose one of {list(KERNELS)}")
    return KERNELS[name](space, **params)
