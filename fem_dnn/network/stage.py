"""The stage function of a layer and its derivatives, from which every depth scheme of
:mod:`fem_dnn.network.schemes` is built (docs/model.md §4.5, §4.8):

    g(X) = M^{-1} [ Q sigma(P u) - c_K K X ] - gamma X,   u = a^k - B_{b^k} X

(c_K = eps for the implicit midpoint rule, 0 when diffusion is split off; gamma the
state's relaxation rate ``decay``, docs/model.md §1), so its
tangent, transpose and second derivative give every scheme's linearised, costate and
second-order costate solve (discretise-then-optimise); and the diffusion sub-step of a
split scheme. :class:`StageFunction` holds them for :class:`fem_dnn.network.Network`,
whose solves (:mod:`fem_dnn.network.continuum`) run the scheme through the layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fem_dnn.network.continuum import Controls

__all__ = ["Stage", "StageFunction"]


@dataclass
class Stage:
    """Linearisation data of one stage X of a layer: ``Uq``, the pre-activation
    ``u = a - B_b X`` at the sigma-term quadrature points (nodes when lumped), and
    ``X`` (the stage input itself: for Euler a view of the stored state), and
    ``dsig = sigma'(Uq)``. For a tangent, ``Uq`` and ``X`` hold their increments."""

    Uq: np.ndarray | None
    X: np.ndarray
    dsig: np.ndarray | None = None
    sig: np.ndarray | None = None  # kept instead of Uq and dsig when sigma' follows from sigma
    groups: int = 1  # X is constant on consecutive groups of this many channels (KernelOperator.apply_grouped)


class StageFunction:
    """The stage function g of a layer, its tangent, transpose and second derivative, and
    the diffusion sub-step, on the network's node space ``space``, kernel family
    ``kernel``, activation ``sigma``, diffusion ``eps`` and relaxation rate ``decay`` (a base of
    :class:`~fem_dnn.network.Network`, which sets them)."""

    def preactivation(self, k: int, F: np.ndarray, c: Controls) -> np.ndarray:
        """``u = a^k - B_{b^k} f`` for a batch."""
        return c.a[k][:, None] - self.kernel.apply(c.b[k], F)

    def rhs(self, k: int, F: np.ndarray, c: Controls) -> np.ndarray:
        """Activation part of df/dt: ``M^{-1} Q sigma(P u)`` (lumped: ``sigma(u)``)."""
        return self.g(k, F, c, linearise=False)[0]

    def g(self, k, X, c, cK=0.0, linearise=True, groups=1):
        """Stage value g(X) and its linearisation data (u at the quadrature points, M_w X,
        sigma'(u)); without ``linearise`` sigma' is not computed. ``groups`` > 1: X is
        constant on consecutive groups of that many channels (a slab's initial state),
        which the kernel's product and the gradient's outer product may use."""
        sp = self.space
        U = self.kernel.apply(c.b[k], X) if groups == 1 else self.kernel.apply_grouped(c.b[k], X, groups, keep=linearise)
        np.subtract(c.a[k][:, None], U, out=U)
        Uq = sp.quad_values(U)
        compact = linearise and self.sigma.from_sigma is not None
        if linearise and not compact:
            sig, dsig = self.sigma.both(Uq)
        else:  # u is not kept: sigma(u) overwrites it
            sig, dsig = self.sigma.evaluate(Uq, out=Uq), None
        if sp.mass == "lumped" and not cK:
            G = np.asfortranarray(sig)
        else:
            L = sp.quad_load(sig)
            if cK:
                L -= cK * sp.apply(sp.K, X)
            G = sp.solve_mass(L)
        if self.decay:  # in place, unless G is the sigma(u) a compact tape keeps
            G = G - self.decay * X if compact else np.subtract(G, self.decay * X, out=G)
        if compact:  # tanh, logistic: sigma(u) alone gives sigma' and sigma''
            return G, Stage(None, X, None, sig, groups)
        return G, Stage(Uq, X, dsig, groups=groups)

    def dsigma(self, st):
        return st.dsig if st.sig is None else self.sigma.dsigma_from(None, st.sig)

    def d2sigma(self, st):
        return self.sigma.d2sigma(st.Uq) if st.sig is None else self.sigma.from_sigma(st.sig)[1]

    def g_tangent(self, k, st, dX, c, dc, cK=0.0):
        """``g'(X)[dX, dm]`` at a stage; returns it and the stage's incremental data."""
        sp = self.space
        dU = -self.kernel.apply(c.b[k], dX)
        if dc is not None:
            dU += dc.a[k][:, None] - self.kernel.tangent(c.b[k], dc.b[k], st.X)
        dUq = sp.quad_values(dU)
        if sp.mass == "lumped" and not cK:
            dG = np.asfortranarray(self.dsigma(st) * dUq)
        else:
            L = sp.quad_load(self.dsigma(st) * dUq)
            if cK:
                L -= cK * sp.apply(sp.K, dX)
            dG = sp.solve_mass(L)
        if self.decay:
            dG -= self.decay * dX
        return dG, Stage(dUq, dX)

    def g_adjoint(self, k, st, kappa, c, grad, cK=0.0, scale=1.0, keep=True, dual=True):
        """Transpose of g'(X) applied to ``scale kappa``: returns ``g_X^T (scale kappa)`` and
        ``z = Q^T M^{-1} (scale kappa)`` (kept for second-order solves; None without
        ``keep``) and adds ``g_m^T (scale kappa)`` to ``grad`` (dual, Euclidean). Without
        ``dual`` the first value is None and its B^T product is skipped (the control part
        alone); with ``dual="groups"`` (at a stage whose X has channel groups) it is exact
        in its sums over the groups only (:meth:`KernelOperator.apply_transpose_grouped`).

        This is the costate half of the fused layer (docs/model.md §4.13): with the
        lumped mass and nothing to keep, one in-place product ``sigma'(u) kappa`` is the
        only pass over the batch besides the kernel's two GEMMs; the stage's scalar
        factor ``scale`` (and the sign) are folded into the n^2-sized operands (the
        weighted kernel, the outer product, the bias sum), and the bias gradient's sum
        over the samples is a GEMV."""
        sp = self.space
        if scale != 1.0 and (keep or cK or sp.mass != "lumped"):
            kappa, scale = scale * kappa, 1.0
        if sp.mass == "lumped":
            y, z = None, kappa
        else:
            y = sp.solve_mass(kappa)
            z = sp.quad_load_T(y)
        if st.sig is None:
            dz = st.dsig * z
        else:  # sigma' from sigma(u): a fresh array
            dz = self.sigma.dsigma_from(None, st.sig)
            dz *= z
        zeta = sp.quad_values_T(dz)
        xi = None
        if dual:
            if dual == "groups" and st.groups > 1:  # -scale B_b^T zeta's group sums
                xi = self.kernel.apply_transpose_grouped(c.b[k], zeta, st.groups, -scale)
            else:
                xi = self.kernel.apply_transpose(c.b[k], zeta, -scale)  # -scale B_b^T zeta
            if cK:
                xi -= cK * sp.apply(sp.K, kappa / sp.weights[:, None] if y is None else y)
            if self.decay:  # (-gamma I)^T
                xi -= (self.decay * scale) * kappa
        grad.a[k] += scale * (zeta @ np.ones(zeta.shape[1], dtype=zeta.dtype))
        grad.b[k] -= (self.kernel.outer(zeta, st.X, c.b[k], scale) if st.groups == 1 else
                      self.kernel.outer_grouped(zeta, st.X, c.b[k], st.groups, scale))
        return xi, (z if keep else None)

    def g_second(self, k, st, z, dst, c, dc, hess):
        """Second-order term: the derivative of ``g_X^T kappa`` and ``g_m^T kappa`` (kappa
        fixed, given through z) along the tangent (dX, dm); adds the m part to ``hess``."""
        sp = self.space
        dsig, d2sig = (self.dsigma(st), self.d2sigma(st)) if st.sig is None else self.sigma.from_sigma(st.sig)
        zeta = sp.quad_values_T(dsig * z)
        zeta2 = sp.quad_values_T(d2sig * dst.Uq * z)
        kern, b = self.kernel, c.b[k]
        eta = -kern.apply_transpose(b, zeta2)
        if dc is not None:
            eta -= kern.transpose_tangent(b, dc.b[k], zeta)
        hess.a[k] += zeta2.sum(axis=1)
        hess.b[k] -= kern.outer(zeta2, st.X, b) + kern.outer(zeta, dst.X, b)
        if dc is not None:
            second = kern.outer_tangent(zeta, st.X, b, dc.b[k])  # a kernel bilinear in its coefficients
            if second is not None:
                hess.b[k] -= second
        return eta

    def diffuse(self, F: np.ndarray, h: float, theta: float, transpose: bool = False) -> np.ndarray:
        """``D = (M + theta h eps K)^{-1} (M - (1-theta) h eps K)`` applied to f, or its
        transpose ``(M - (1-theta) h eps K)(M + theta h eps K)^{-1}`` (M, K symmetric)."""
        sp = self.space
        ksp, _ = sp.diffusion_solver(theta * h * self.eps)

        def explicit(V):
            R = sp.apply_mass(V)
            if theta != 1.0:
                R = R - (1.0 - theta) * h * self.eps * sp.apply(sp.K, V)
            return R

        if transpose:
            return explicit(sp.mat_solve(ksp, F))
        return sp.mat_solve(ksp, explicit(F))
