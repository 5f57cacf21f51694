"""The nonlocal operator B_b of the state equation, its transpose, and its control block.

On layer k the selection weight b^k(y, z) enters the state equation through

    (B_b f)(y) = int_Y b^k(y, z) f(z) dz,

and a kernel family says how b^k is discretised, i.e. what the controls of the ``b`` block
are (docs/model.md §4.3, docs/kernels.md). A family linear in its coefficients (dense,
local) has the tangent and the second-order terms of the optimality system for free: they
are :meth:`Kernel.apply`, :meth:`Kernel.apply_transpose` and :meth:`Kernel.outer` again; a
bilinear family (low-rank) defines its own.

- :class:`DenseKernel` (``"dense"``, :mod:`.dense`): ``b_h(y,z) = sum_ij b_ij phi_i(y)
  phi_j(z)`` in V_h (x) V_h, so ``B_b f = b M_w f`` (``M_w = diag(omega)`` lumped or M
  consistent): a dense n x n matrix per layer. Rows live on the rank that owns the node
  dof (``(n_local, n)``, columns in global dof order); a batch is applied with one
  Allgatherv and one GEMM per rank block.
- :class:`LocalKernel` (``"local"``, :mod:`.local`): translation-invariant kernels of
  compact support, ``b(y, z, t) = kappa(y - z, t)`` for ``|y - z|_inf <= rho``, with kappa
  a Q1 function on the offset box ``[-rho, rho]^d`` (``cells`` cells a side). Its controls
  are kappa's ``(cells+1)^d`` nodal values per layer, whatever the node mesh; B is a
  sparse matrix over the pairs of node dofs in the support (found once by a k-d tree,
  :mod:`.basis`), applied with a halo exchange of the ghost columns only (:mod:`.halo`),
  or on a structured image grid as dense GEMMs (:mod:`.grid`).
- :class:`LowRankKernel` (``"lowrank"``, :mod:`.lowrank`): ``b = sum_r psi_r(y) phi_r(z)``,
  bilinear in (psi, phi): its own tangents.

The interface (:mod:`.base`) is split by job: :class:`KernelOperator` (the operator and
its tangents), :class:`ControlBlock` (the b block's layout in the control Vec, natural
order, how the ranks share and reduce it, its inner product and TAO's diagonal) and
:class:`KernelApplication` (how a config builds the family, its memory model, what a
checkpoint records, fields, figures, transfer); :class:`Kernel` joins them with the
capability attributes (``float32``, ``rows_separate``, ``node_pairs``,
``needs_random_start``, ``takes_channels``) that the rest of the code reads instead of a
family's name. A new family is one class in one module of this package, decorated with
:func:`register` (its entry of :data:`KERNELS`), and its import below: the config, the
command line, the memory model and the training then know it.
"""

from fem_dnn.core.kernel.base import (KERNELS, ControlBlock, Kernel, KernelApplication, KernelMemory, KernelOperator,
                                      make_kernel, register)
from fem_dnn.core.kernel.basis import box_basis, box_widths, cell_extent, q1_basis
from fem_dnn.core.kernel.dense import DenseKernel
from fem_dnn.core.kernel.grid import PixelGrid
from fem_dnn.core.kernel.halo import Halo
from fem_dnn.core.kernel.local import LocalKernel
from fem_dnn.core.kernel.lowrank import LowRankKernel

__all__ = ["KERNELS", "ControlBlock", "DenseKernel", "Halo", "Kernel", "KernelApplication", "KernelMemory", "KernelOperator",
           "LocalKernel", "LowRankKernel", "PixelGrid", "box_basis", "box_widths", "cell_extent", "make_kernel", "q1_basis",
           "register"]
