"""Depth schemes: how a layer advances the state, and the exact derivatives of that step.

Every scheme is built from the network's stage function (docs/model.md §4.5)

    g(X) = M^{-1} [ Q sigma(P u) - c_K K X ],    u = a^k - B_{b^k} X,

with the controls of layer k held fixed over the layer, and provides the four solves the
optimality system needs (docs/model.md §4.8): :meth:`Scheme.step` (forward, recording
the stages on a tape), :meth:`Scheme.tangent` (the linearised step),
:meth:`Scheme.adjoint_step` (its transpose: one costate step, adding the control
derivative) and :meth:`Scheme.second_order_adjoint_step` (the incremental costate step
along a tangent). A scheme implements the two adjoint steps by one core,
``Scheme._transpose``, the second-order terms added when a tangent is given.

- An **explicit Runge-Kutta scheme** is one entry of :data:`TABLEAUS` (a Butcher
  tableau and its order): :class:`ExplicitRungeKutta` derives step, tangent and both
  adjoint steps from the tableau, and the registry makes it a choice of
  ``network.scheme`` in the config, the CLI and every scheme-parametrised test.
- The **implicit midpoint rule** is :class:`ImplicitMidpoint`: a PETSc SNES Newton solve
  per layer (prefix ``<prefix>midpoint_``) and a KSP for its linearisation (prefix
  ``<prefix>midpoint_linear_``), diffusion inside the implicit system.

With ``eps > 0`` an explicit scheme splits the diffusion off (docs/model.md §4.6): Lie
splitting with a backward-Euler step for first-order schemes (IMEX Euler), Strang
splitting with Crank-Nicolson half steps otherwise (second order overall).

This module imports numpy only (the config and the CLI read the registry without
loading PETSc); the midpoint rule imports petsc4py when it builds its solvers (once per
batch size).
"""

from dataclasses import dataclass

import numpy as np

from fem_dnn.errors import SolverError

__all__ = ["DTYPES", "IMPLICIT", "ORDER", "SCHEMES", "STAGES", "TABLEAUS", "ExplicitRungeKutta", "ImplicitMidpoint",
           "Scheme", "Tableau", "float32_unsupported", "make_scheme"]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta scheme's Butcher tableau (strictly lower ``A``, weights
    ``b``) and its classical order. The nodes c are not needed: the controls are
    constant over a layer."""

    A: tuple
    b: tuple
    order: int


#: name -> Butcher tableau of an explicit scheme (adding an entry adds a scheme).
TABLEAUS = {
    "euler": Tableau(((0.0,),), (1.0,), 1),  # the ResNet f + tau sigma(a - B f)
    "heun": Tableau(((0.0, 0.0), (1.0, 0.0)), (0.5, 0.5), 2),
    "rk4": Tableau(((0, 0, 0, 0), (0.5, 0, 0, 0), (0, 0.5, 0, 0), (0, 0, 1.0, 0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), 4),
    # Shu-Osher's three-stage strong-stability-preserving scheme
    "ssprk3": Tableau(((0, 0, 0), (1.0, 0, 0), (0.25, 0.25, 0)), (1 / 6, 1 / 6, 2 / 3), 3),
}


class Scheme:
    """A depth scheme bound to a network (``net``): the interface the forward, tangent
    and costate solves call, layer by layer.

    Attributes:
        name: the registry name; ``order``: the classical order (eps = 0);
        ``stages``: stages recorded per layer on the tape; ``implicit``.
    """

    name: str
    order: int
    stages: int
    implicit: bool = False

    def __init__(self, net):
        self.net = net

    def splitting(self, h: float):
        """Diffusion sub-steps ``(h', theta)`` before and after the activation stages
        (None: none)."""
        return None, None

    def step(self, k, F, c, h, tape=None, out=None, groups=1):
        """The state after layer k from F (a Fortran ``(n_local, S)`` batch); appends the
        stages' linearisation data to ``tape`` when given; writes into ``out`` if given.
        ``groups`` > 1: F is constant on consecutive groups of that many channels
        (:meth:`StageFunction.g`; a scheme may ignore it)."""
        raise NotImplementedError

    def tangent(self, k, stages, dF, c, dc):
        """The linearised step along (dF, dc) at the taped stages; returns dF after the
        layer and the stages' increments."""
        raise NotImplementedError

    def adjoint_step(self, k, stages, r, c, grad, keep=True, dual=True):
        """One costate step: the transposed linearised step applied to the costate r after
        layer k. Returns r before the layer and the stages' z (None for each without
        ``keep``: a gradient does not need them; a second-order step does); adds the
        control part ``dPhi_k/dm^T r`` to ``grad``. Without ``dual`` r before the layer is
        not formed (None is returned for it): the first layer's step of a gradient, whose
        costate at depth 0 nobody reads, skips the stage's B^T product that only feeds it.
        With ``dual="groups"`` r before the layer is exact in its sums over the first
        stage's channel groups only (what a slab transfer that copied them reads back;
        :meth:`StageFunction.g_adjoint`)."""
        return self._transpose(k, stages, r, c, grad, keep, None, dual)

    def second_order_adjoint_step(self, k, stages, r, c, grad, dstages, zs, dc):
        """One second-order (incremental) costate step along the tangent of the layer (its
        stages' increments ``dstages`` and control increment ``dc``) with the costate's
        stage values ``zs`` (:meth:`adjoint_step` with ``keep``): the transposed step
        applied to the incremental costate r after layer k plus the derivative of the
        first-order step along the tangent. Returns r before the layer; adds the control
        part of the Hessian action to ``grad``. (Gauss-Newton drops the second term: the
        :meth:`adjoint_step` of the incremental costate.)"""
        return self._transpose(k, stages, r, c, grad, False, (dstages, zs, dc))[0]

    def _transpose(self, k, stages, r, c, grad, keep, second, dual=True):
        """The core of both adjoint steps: the transposed step of r with ``keep`` (the
        stages' z returned, else None for each), and with ``second = (dstages, zs, dc)``
        the second-order terms added. Returns (r before the layer, the stages' z); r is
        None without ``dual`` (:meth:`adjoint_step`)."""
        raise NotImplementedError

    def destroy(self):
        """Free the PETSc objects the scheme made."""


class ExplicitRungeKutta(Scheme):
    """An explicit Runge-Kutta scheme from its Butcher tableau (:data:`TABLEAUS`)."""

    def __init__(self, net, name: str, tableau: Tableau):
        super().__init__(net)
        self.name, self.A, self.b, self.order = name, tableau.A, tableau.b, tableau.order
        self.stages = len(tableau.b)

    def splitting(self, h):
        if self.net.eps == 0:
            return None, None
        if self.order == 1:
            return None, (h, 1.0)  # Lie: backward Euler after the stages
        return (0.5 * h, 0.5), (0.5 * h, 0.5)  # Strang with Crank-Nicolson half steps

    def step(self, k, F, c, h, tape=None, out=None, groups=1):
        net, A, bw = self.net, self.A, self.b
        before, after = self.splitting(h)
        if before:
            F, groups = net.diffuse(F, *before), 1
        G = []
        for i in range(len(bw)):
            X = F
            for j in range(i):
                if A[i][j]:
                    X = X + (h * A[i][j]) * G[j]
            # the first stage reads F itself: its channel groups, if any
            Gi, st = net.g(k, X, c, linearise=tape is not None, groups=groups if i == 0 else 1)
            G.append(Gi)
            if tape is not None:
                tape.append(st)
        new = out if (out is not None and not after) else np.empty_like(F, order="F")
        np.multiply(G[0], h * bw[0], out=new)
        for i in range(1, len(bw)):
            if bw[i]:
                new += (h * bw[i]) * G[i]
        new += F
        return net.diffuse(new, *after) if after else new

    def tangent(self, k, stages, dF, c, dc):
        net, A, bw = self.net, self.A, self.b
        h = float(net.depth.tau[k])
        before, after = self.splitting(h)
        if before:
            dF = net.diffuse(dF, *before)
        dG, dstages = [], []
        for i in range(len(bw)):
            dX = dF
            for j in range(i):
                if A[i][j]:
                    dX = dX + (h * A[i][j]) * dG[j]
            dGi, dst = net.g_tangent(k, stages[i], dX, c, dc)
            dG.append(dGi)
            dstages.append(dst)
        for i in range(len(bw)):
            if bw[i]:
                dF = dF + (h * bw[i]) * dG[i]
        if after:
            dF = net.diffuse(dF, *after)
        return np.asfortranarray(dF), dstages

    def _transpose(self, k, stages, r, c, grad, keep, second, dual=True):
        net, A, bw = self.net, self.A, self.b
        h = float(net.depth.tau[k])
        before, after = self.splitting(h)
        if after:
            r = net.diffuse(r, *after, transpose=True)
        s = len(bw)
        dstages, zs, dc = second or (None, None, None)
        out_z, xis = [None] * s, [None] * s
        for i in reversed(range(s)):
            later = [l for l in range(i + 1, s) if A[l][i]]
            if bw[i] and not later:  # kappa = (h b_i) r: the factor goes to g_adjoint, not the batch
                kappa, scale = r, h * bw[i]
            else:
                kappa, scale = (h * bw[i]) * r if bw[i] else np.zeros_like(r), 1.0
                for l in later:
                    kappa = kappa + (h * A[l][i]) * xis[l]
            # the first stage's xi feeds only r before the layer (no later stage reads it)
            xi, out_z[i] = net.g_adjoint(k, stages[i], kappa, c, grad, scale=scale, keep=keep,
                                         dual=dual if i == 0 else True)
            if second is not None:
                xi = xi + net.g_second(k, stages[i], zs[i], dstages[i], c, dc, grad)
            xis[i] = xi
        if not dual:
            return None, out_z
        for xi in xis[1:]:
            xis[0] += xi
        xis[0] += r  # the xi are fresh arrays
        r = xis[0]
        if before:
            r = net.diffuse(r, *before, transpose=True)
        return np.asfortranarray(r), out_z


class ImplicitMidpoint(Scheme):
    """The implicit midpoint rule ``M(f1 - f0) = h [Q sigma(P u(fm)) - eps K fm - gamma M fm]``,
    ``fm = (f0 + f1)/2``: one Newton solve per layer (PETSc SNES, matrix-free Jacobian,
    GMRES preconditioned by the mass matrix), order 2 with or without diffusion."""

    name, order, stages, implicit = "midpoint", 2, 1, True

    def __init__(self, net):
        super().__init__(net)
        self._snes = None  # (snes, S, objects to destroy)
        self._lin = None  # (ksp, S)

    def step(self, k, F, c, h, tape=None, out=None, groups=1):
        net = self.net
        F1 = self._solve(k, F, c, h)
        if tape is not None:
            tape.append(net.g(k, np.asfortranarray(0.5 * (F + F1)), c, net.eps)[1])
        return F1

    def tangent(self, k, stages, dF, c, dc):
        net = self.net
        h = float(net.depth.tau[k])
        st = stages[0]
        # J dX = M dF + h/2 M g_m dm,  J = M - h/2 M g_X (the Newton matrix)
        src = dF if dc is None else dF + 0.5 * h * net.g_tangent(k, st, np.zeros_like(dF), c, dc, net.eps)[0]
        dX = self._linear(k, st, c, h, net.space.apply_mass(src), transpose=False)
        dG, dst = net.g_tangent(k, st, dX, c, dc, net.eps)
        return np.asfortranarray(dF + h * dG), [dst]

    def _transpose(self, k, stages, r, c, grad, keep, second, dual=True):
        net = self.net
        h = float(net.depth.tau[k])
        st = stages[0]
        rhs = h * r
        eta = None
        if second is not None:
            dstages, zs, dc = second
            eta = net.g_second(k, st, zs[0], dstages[0], c, dc, grad)
            rhs = rhs + 0.5 * h * eta
        # (I - h/2 g_X^T) kappa = rhs  <=>  J^T (M^{-1} kappa) = rhs
        kappa = net.space.apply_mass(self._linear(k, st, c, h, rhs, transpose=True))
        xi, z = net.g_adjoint(k, st, kappa, c, grad, net.eps, keep=keep, dual=dual)
        if not dual:
            return None, [z]
        if eta is not None:
            xi = xi + eta
        return np.asfortranarray(r + xi), [z]

    def _linear_terms(self, X):
        """``eps K X + gamma M X``, the linear part of ``-M g(X)`` (node diffusion and the
        relaxation term) that the Newton residual and both Newton matrices carry; None
        when both are zero."""
        net, sp = self.net, self.net.space
        out = net.eps * sp.apply(sp.K, X) if net.eps > 0 else None
        if net.decay:
            out = net.decay * sp.apply_mass(X) + (0.0 if out is None else out)
        return out

    # ---- the Newton solve of one layer
    def _solve(self, k, F0, c, h):
        net, sp = self.net, self.net.space
        S = F0.shape[1]
        snes = self._newton(S)
        ctx = snes.getApplicationContext()
        ctx.update(k=k, F0=F0, c=c, h=h)
        x = ctx["x"]
        X = x.array.reshape(S, sp.n_local).T
        X[:] = F0 + h * net.rhs(k, F0, c)  # explicit Euler predictor
        scale = np.sqrt(sp.comm.allreduce(float(np.sum(sp.apply_mass(F0) ** 2)))) + 1e-300
        snes.setTolerances(atol=1e-14 * scale)
        snes.solve(None, x)
        reason = snes.getConvergedReason()
        if reason <= 0:
            raise SolverError(
                f"implicit midpoint Newton solve failed in layer {k} (SNES reason {reason}); "
                f"try a smaller depth step or -{net.prefix}midpoint_snes_monitor"
            )
        return np.asfortranarray(x.array.reshape(S, sp.n_local).T.copy())

    def _newton(self, S):
        from petsc4py import PETSc  # here, not at import: the registry is read without PETSc

        if self._snes is not None and self._snes[1] == S:
            return self._snes[0]
        self._destroy_newton()
        net = self.net
        sp, comm = net.space, net.space.comm
        sizes = (sp.n_local * S, sp.n * S)
        x = PETSc.Vec().createMPI(sizes, comm=comm)
        r = x.duplicate()
        ctx = {"x": x}

        scheme = self

        def batch(v):
            return v.array_r.reshape(S, sp.n_local).T

        def residual(snes, xv, rv):
            F1 = batch(xv)
            Fm = np.asfortranarray(0.5 * (ctx["F0"] + F1))
            U = net.preactivation(ctx["k"], Fm, ctx["c"])
            Uq = sp.quad_values(U)
            ctx["dsig"] = net.sigma.dsigma(Uq)
            R = sp.apply_mass(F1 - ctx["F0"]) - ctx["h"] * sp.quad_load(net.sigma.sigma(Uq))
            linear = scheme._linear_terms(Fm)
            if linear is not None:
                R = R + ctx["h"] * linear
            rv.array.reshape(S, sp.n_local).T[:] = R

        class Jacobian:
            def mult(self, mat, dv, yv):
                D = np.asfortranarray(batch(dv))
                BD = net.kernel.apply(ctx["c"].b[ctx["k"]], D)
                Y = sp.apply_mass(D) + 0.5 * ctx["h"] * sp.quad_load(ctx["dsig"] * sp.quad_values(BD))
                linear = scheme._linear_terms(D)
                if linear is not None:
                    Y = Y + 0.5 * ctx["h"] * linear
                yv.array.reshape(S, sp.n_local).T[:] = Y

        J = PETSc.Mat().createPython((sizes, sizes), Jacobian(), comm=comm)
        J.setUp()
        snes = PETSc.SNES().create(comm)
        snes.setOptionsPrefix(net.prefix + "midpoint_")
        snes.setFunction(residual, r)
        snes.setJacobian(lambda *args: None, J, J)
        snes.setApplicationContext(ctx)
        snes.setTolerances(rtol=1e-12, stol=0.0, max_it=50)
        snes.getLineSearch().setType("basic")
        ksp = snes.getKSP()
        ksp.setType("gmres")
        ksp.setTolerances(rtol=1e-13, atol=0.0)
        pc = ksp.getPC()
        pc.setType("python")
        pc.setPythonContext(_MassPC(sp, S))
        snes.setFromOptions()
        self._snes = (snes, S, (snes, J, x, r))
        return snes

    # ---- its linearisation (tangent and costate)
    def _linear(self, k, st, c, h, rhs, transpose):
        """Solve ``J x = rhs`` or ``J^T x = rhs`` with the Newton matrix
        ``J = M + h/2 (Q sigma'(u) P B_b + eps K + gamma M)`` at a taped stage (KSP prefix
        ``<prefix>midpoint_linear_``, GMRES preconditioned by the mass matrix)."""
        net, sp = self.net, self.net.space
        S = rhs.shape[1]
        if self._lin is None or self._lin[1] != S:
            self._destroy_linear()
            self._lin = (self._linear_ksp(S), S)
        ksp = self._lin[0]
        ctx = ksp.getOperators()[0].getPythonContext().ctx
        ctx.update(k=k, dsig=net.dsigma(st), c=c, h=h, transpose=transpose)
        b, x = ksp.getOperators()[0].createVecs()
        b.array.reshape(S, sp.n_local).T[:] = rhs
        scale = b.norm()
        ksp.setTolerances(rtol=1e-14, atol=1e-300)
        if scale > 0:
            ksp.solve(b, x)
            if ksp.getConvergedReason() <= 0:
                raise SolverError(
                    f"midpoint {'costate' if transpose else 'tangent'} solve failed in layer {k} "
                    f"(KSP reason {ksp.getConvergedReason()}); see -{net.prefix}midpoint_linear_ksp_monitor"
                )
        out = np.asfortranarray(x.array.reshape(S, sp.n_local).T.copy())
        b.destroy(), x.destroy()
        return out

    def _linear_ksp(self, S):
        from petsc4py import PETSc

        net, scheme = self.net, self
        sp = net.space
        sizes = (sp.n_local * S, sp.n * S)

        class Newton:
            def __init__(self):
                self.ctx = {}

            def mult(self, mat, dv, yv):
                c, k, h, dsig = self.ctx["c"], self.ctx["k"], self.ctx["h"], self.ctx["dsig"]
                D = np.asfortranarray(dv.array_r.reshape(S, sp.n_local).T)
                if self.ctx["transpose"]:
                    Z = sp.quad_values_T(dsig * sp.quad_load_T(D))
                    Y = sp.apply_mass(D) + 0.5 * h * net.kernel.apply_transpose(c.b[k], Z)
                else:
                    BD = net.kernel.apply(c.b[k], D)
                    Y = sp.apply_mass(D) + 0.5 * h * sp.quad_load(dsig * sp.quad_values(BD))
                linear = scheme._linear_terms(D)
                if linear is not None:
                    Y = Y + 0.5 * h * linear
                yv.array.reshape(S, sp.n_local).T[:] = Y

        J = PETSc.Mat().createPython((sizes, sizes), Newton(), comm=sp.comm)
        J.setUp()
        ksp = PETSc.KSP().create(sp.comm)
        ksp.setOptionsPrefix(net.prefix + "midpoint_linear_")
        ksp.setOperators(J)
        ksp.setType("gmres")
        ksp.getPC().setType("python")
        ksp.getPC().setPythonContext(_MassPC(sp, S))
        ksp.setFromOptions()
        J.destroy()
        return ksp

    def _destroy_newton(self):
        if self._snes is not None:
            for obj in self._snes[2]:
                obj.destroy()
            self._snes = None

    def _destroy_linear(self):
        if self._lin is not None:
            self._lin[0].destroy()
            self._lin = None

    def destroy(self):
        self._destroy_linear()
        self._destroy_newton()


class _MassPC:
    """PETSc python preconditioner: the inverse node mass matrix on a batch."""

    def __init__(self, space, S):
        self.space, self.S = space, S

    def apply(self, pc, xv, yv):
        sp = self.space
        X = np.asfortranarray(xv.array_r.reshape(self.S, sp.n_local).T)
        yv.array.reshape(self.S, sp.n_local).T[:] = sp.solve_mass(X)


#: name -> class of an implicit scheme (its own solvers; not derived from a tableau)
IMPLICIT = {"midpoint": ImplicitMidpoint}
#: every scheme name, as the config, the CLI and the tests offer them
SCHEMES = tuple(TABLEAUS) + tuple(IMPLICIT)
#: classical order of each scheme (with eps > 0 the explicit ones are capped at 2)
ORDER = {**{n: t.order for n, t in TABLEAUS.items()}, **{n: cls.order for n, cls in IMPLICIT.items()}}
#: stages recorded on the tape per layer
STAGES = {**{n: len(t.b) for n, t in TABLEAUS.items()}, **{n: cls.stages for n, cls in IMPLICIT.items()}}


#: The precisions of the states, the tape and the costate (``Network(dtype=...)``); the
#: controls, gradients and what the optimisers see are float64 in both.
DTYPES = ("float64", "float32")


def float32_unsupported(scheme: str, eps: float, mass: str, kernel) -> str:
    """Why a float32 network cannot run with these settings ("" when it can): the parts
    solved by PETSc (float64 only here) and the kernel families not ported (``kernel``, a
    :class:`~fem_dnn.core.kernel.Kernel` or its class, without ``float32``)."""
    if scheme == "midpoint":
        return "cannot run the implicit midpoint rule: its PETSc SNES and KSP solve in float64"
    if eps:
        return "cannot take node diffusion (eps > 0): its PETSc solves are float64"
    if mass != "lumped":
        return "needs the lumped node mass: the consistent mass is applied by PETSc in float64"
    if not kernel.float32:
        return f"runs the kernel families with float32 products only, not the {kernel.name} kernel"
    return ""


def make_scheme(name: str, net) -> Scheme:
    """The scheme ``name`` bound to the network ``net``."""
    if name in TABLEAUS:
        return ExplicitRungeKutta(net, name, TABLEAUS[name])
    return IMPLICIT[name](net)
