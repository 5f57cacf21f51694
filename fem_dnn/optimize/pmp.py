"""Pontryagin's maximum principle as a training method: the pointwise minimiser of the
discrete Hamiltonian (the PMP step) and the method of successive approximations built on
it (LM section 5, algorithm 2; docs/model.md §3.5, §5.9)."""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

from fem_dnn import interrupt
from fem_dnn.errors import InputError
from fem_dnn.learning import ReducedFunctional
from fem_dnn.network import Controls

from fem_dnn.optimize.callbacks import report
from fem_dnn.optimize.tao import Result, stop_reason

__all__ = ["hamiltonian_minimiser", "msa"]

#: Control-sized Vecs of :func:`msa` (the memory model's count, :mod:`fem_dnn.app.memory`):
#: m, the Hamiltonian minimiser's copies of (a, b), its result, the step and the trial
#: point; the functional keeps the whole costate.
MSA_VECTORS = 5


def hamiltonian_minimiser(J: ReducedFunctional, m: PETSc.Vec, box: dict, inner_its: int = 30) -> PETSc.Vec:
    """Pointwise minimisation of the discrete Hamiltonian over the box A (LM 4.11).

    For the ResNet scheme (explicit Euler, lumped mass) the discrete Hamiltonian of layer
    k is ``H_k(a, b) = tau_k sum_s lam_{k+1,s} . sigma(a - B_b f_{k,s})`` (plus
    ``lambda/2 tau_k (|a|^2 + |b|^2)`` weighted by the node weights): its derivative is
    the layer's gradient, so minimising it is the PMP step. It separates over layers and
    node rows i (a_i and the row b_i.). With one sample and no regulariser the minimiser
    is bang-bang: where r_i > 0, ``a_i = a-`` and ``b_ij = b+`` where ``f_j > 0``,
    ``b-`` where ``f_j < 0``; where r_i < 0 the opposite (sigma' > 0). Otherwise it is
    found by projected gradient with backtracking on H (state and costate frozen: no PDE
    solves). W and mu are kept.
    """
    net = J.network
    if net.scheme != "euler" or net.space.mass != "lumped" or net.eps != 0:
        raise InputError("the PMP/MSA step is implemented for the ResNet scheme: euler, lumped mass, eps = 0")
    if not net.kernel.rows_separate:
        raise InputError(f"the PMP/MSA step separates over the rows of a dense kernel; a {net.kernel.name} "
                         f"kernel couples them (train it with a gradient or Newton method)")
    cs = J.controls
    (alo, ahi), (blo, bhi) = box["a"], box["b"]
    traj, costate = J.trajectory(m), J.costate(m)
    c, r = cs.split(m)
    sp, kern, sig = net.space, net.kernel, net.sigma
    w = sp.weights[: sp.n_local]
    lam_reg = J.lam
    A, B = c.a.copy(), c.b.copy()
    one_sample = J.S == 1 and lam_reg == 0.0
    for k in range(net.depth.N):
        tau = net.depth.tau[k]
        F = np.asfortranarray(traj.state(k))  # (n_local, S)
        L = np.asfortranarray(costate.dual[k + 1].T)
        if one_sample:
            rs = L[:, 0]  # lam = M r: the sign of r
            f_all = np.concatenate(sp.gather(F), axis=1)[0]  # f_k in global dof order
            up = rs > 0  # make u small: a low, b_ij f_j large
            dn = rs < 0
            A[k][up], A[k][dn] = alo, ahi
            big = np.where(f_all > 0, bhi, blo)
            small = np.where(f_all > 0, blo, bhi)
            B[k][up] = big
            B[k][dn] = small
            continue

        def H_and_grad(a, b):
            U = a[:, None] - kern.apply(b, F)
            s, ds = sig.both(U)
            val = tau * float(np.sum(L * s)) + 0.5 * lam_reg * tau * float(np.sum(w * a * a) + np.sum(w[:, None] * b * b * sp.weights_all))
            Z = tau * ds * L
            ga = Z.sum(axis=1) + lam_reg * tau * w * a
            gb = -kern.outer(Z, F) + lam_reg * tau * w[:, None] * b * sp.weights_all
            return sp.comm.allreduce(val), ga, gb

        a, b = A[k], B[k]
        val, ga, gb = H_and_grad(a, b)
        step = 1.0
        for _ in range(inner_its):
            while True:
                a_new = np.clip(a - step * ga / (tau * w), alo, ahi)
                b_new = np.clip(b - step * gb / (tau * w[:, None] * sp.weights_all), blo, bhi)
                new, ga_n, gb_n = H_and_grad(a_new, b_new)
                dec = float(np.sum(ga * (a - a_new)) + np.sum(gb * (b - b_new)))
                dec = sp.comm.allreduce(dec)
                if new <= val - 1e-4 * dec or step < 1e-12:
                    break
                step *= 0.5
            if new >= val:
                break
            a, b, val, ga, gb = a_new, b_new, new, ga_n, gb_n
            step *= 2.0
        A[k], B[k] = a, b
    return cs.join(Controls(A, B), r)


def msa(
    J: ReducedFunctional, m0: PETSc.Vec, box: dict, max_it: int = 50, rtol: float = 1e-10, monitor=True, metrics=None,
) -> Result:
    """Method of successive approximations (LM §5 algorithm 2), with a safeguard.

    Each iteration: forward solve, costate solve, pointwise Hamiltonian minimisation over
    the box (:func:`hamiltonian_minimiser`, no parameter gradients), then the safeguard:
    the step ``m + theta (m_H - m)`` with theta = 1, 1/2, 1/4, ... until J decreases
    (plain MSA can increase J). Stops when no theta >= 2^-10 decreases J, or when the
    relative decrease falls below ``rtol`` (reason 1); reason 2 when the PMP step gives
    no descent or returns m itself (a PMP point). ``iterations`` counts accepted steps.
    W and mu are not updated by the PMP step. ``metrics``: optional callable ``(m,
    iteration) -> dict`` of more columns per row.
    """
    cs, world = J.controls, J.network.layout.world
    m = m0.copy()
    f = J(m)
    history, reason, its = [{"iteration": 0, "J": f, "theta": 0.0, **J.counts}], -1, 0
    for its in range(1, max_it + 1):
        mH = hamiltonian_minimiser(J, m, box)
        d = mH.copy()
        d.axpy(-1.0, m)
        da, db, dW, dmu = cs.blocks(d)
        dW[:], dmu[:] = 0.0, 0.0  # the PMP step changes a and b only
        moved = world.allreduce(bool(np.any(da != 0) or np.any(db != 0)), op=MPI.LOR)
        mH.destroy()
        if not moved:  # m minimises the Hamiltonian: a PMP point
            d.destroy()
            reason, its = 2, its - 1
            break
        theta, trial = 1.0, m.duplicate()
        while theta >= 2.0**-10:
            m.copy(trial)
            trial.axpy(theta, d)
            ft = J(trial)
            if ft < f:
                break
            theta *= 0.5
        d.destroy()
        if theta < 2.0**-10:
            trial.destroy()
            reason, its = 2, its - 1  # no descent along the PMP direction (to the safeguard)
            break
        decrease = (f - ft) / max(abs(f), 1e-300)
        trial.copy(m)
        trial.destroy()
        f = ft
        row = {"iteration": its, "J": f, "theta": theta, **J.counts}
        if metrics is not None:
            row.update(metrics(m, its))
        history.append(row)
        report(monitor, world, f"msa {its:4d}  J {f:.10e}  theta {theta:.3g}  solves fwd {J.counts['forward']}", row)
        if decrease < rtol:
            reason = 1
            break
        sig = interrupt.requested(world)
        if sig:  # a safe point: the step is accepted
            return Result(m, its, reason, f, float("nan"), history, dict(J.counts), sig, "interrupted")
    return Result(m, its, reason, f, float("nan"), history, dict(J.counts), 0, stop_reason("msa", reason))
