"""The reduced functional of the learning problem, its gradient and Hessian action.

MODEL.md §2-3 (LM 2.2, §4): for controls ``m = (a, b, W, mu)``

    J(m) = 1/S sum_s loss_s(h(O_s)) + lambda R(m) + gamma/2 (||d_t a||^2 + ||d_t b||^2),
    R(m) = 1/2 (||a||^2 + ||b||^2 + ||W||^2 + ||mu||^2),

where ``O_s = int_Y W f_s(T) + mu`` is the readout of the state f_s solved from the input
of sample s. Two learning problems:

- ``"function"`` (the paper's): Y_out = Y, h logistic, ``loss = 1/2 int |h(O) - C|^2``;
- ``"classes"``: Y_out = {1..K}, h = softmax, ``loss = -sum_k C_k log h(O)_k``.

Everything is discretise-then-optimise: J is the discrete functional, the costate is
the exact transpose of the discrete forward scheme, so the derivatives are exact. Two
objects must never be confused:

- the **derivative** ``dJ`` (:meth:`ReducedFunctional.derivative`): a dual vector,
  ``dJ[dm] = dJ . dm`` in the Euclidean pairing of coefficient vectors;
- the **gradient** (:meth:`ReducedFunctional.gradient`): its Riesz representer in the
  controls' inner product, ``(g, dm)_M = dJ . dm``. In L2 it converges to the formulas
  of MODEL.md §3 (``D_a J = sigma'(u) r + lambda a``, ...) as h, tau -> 0.

The inner products (:class:`ControlSpace`): ``a`` in L2(Y x (0,T)) (node mass times the
layer lengths tau_k), ``b`` in L2(Y x Y x (0,T)) (M (x) M times tau_k), ``W`` in
L2(Y_out x Y), ``mu`` in L2(Y_out) (counting measure for classes). With ``riesz="h1"``
the depth part of a and b gets an H1 term, ``(c, c~) + l^2 (d_t c, d_t c~)`` with the
difference quotients between layer midpoints, l^2 = gamma/lambda by default. The depth
parts are tridiagonal (:class:`DepthOperator`: two diagonals, O(N) storage and work).
"""

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cholesky_banded, lapack

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI
from petsc4py import PETSc

from fem_dnn.errors import InputError, NonFiniteError
from fem_dnn.network import Controls, Network, Readout, logistic, softmax

__all__ = ["ControlSpace", "ClassesLoss", "DepthOperator", "FunctionLoss", "ReducedFunctional"]


class DepthOperator:
    """A symmetric tridiagonal N x N matrix across the layers, stored as its two diagonals.

    The depth parts of the controls' inner products are of this form: the L2 product
    ``diag(tau_k)`` and the H1 term ``D_t^T diag(1/dt) D_t`` of the difference quotients
    between layer midpoints. Storage and every operation are O(N) per column (no N x N
    array is ever formed, so N = 10^5 layers cost megabytes, not 75 GiB). Operators act
    on arrays of shape ``(N, ...)`` along their first axis.

    Args:
        diagonal: ``(N,)`` main diagonal.
        off: ``(N-1,)`` off-diagonal ``A[k, k+1] = A[k+1, k]`` (default: zero, a diagonal
            operator).
    """

    def __init__(self, diagonal, off=None):
        self.diagonal = np.asarray(diagonal, dtype=float)
        N = self.diagonal.shape[0]
        self.off = np.zeros(max(N - 1, 0)) if off is None else np.asarray(off, dtype=float)
        if self.diagonal.ndim != 1 or self.off.shape != (max(N - 1, 0),):
            raise InputError(f"a depth operator needs N diagonal and N-1 off-diagonal entries, got "
                             f"{self.diagonal.shape} and {self.off.shape}")
        #: True when the off-diagonal is exactly zero (then every map is an elementwise scaling).
        self.is_diagonal = not np.any(self.off)
        self._factor = None

    @classmethod
    def difference(cls, mid) -> "DepthOperator":
        """``D_t^T diag(1/dt) D_t``: the squared difference quotients between the layer
        midpoints ``mid`` (zero for one layer)."""
        mid = np.asarray(mid, dtype=float)
        diag = np.zeros(mid.shape[0])
        if mid.shape[0] < 2:
            return cls(diag)
        q = 1.0 / np.diff(mid)
        diag[:-1] += q
        diag[1:] += q
        return cls(diag, -q)

    @staticmethod
    def combine(alpha: float, A: "DepthOperator", beta: float, B: "DepthOperator") -> "DepthOperator":
        """``alpha A + beta B``."""
        return DepthOperator(alpha * A.diagonal + beta * B.diagonal, alpha * A.off + beta * B.off)

    @property
    def N(self) -> int:
        return self.diagonal.shape[0]

    def dense(self) -> np.ndarray:
        """The N x N matrix (for tests and small N only)."""
        return np.diag(self.diagonal) + np.diag(self.off, 1) + np.diag(self.off, -1)

    def apply(self, X: np.ndarray) -> np.ndarray:
        """``A X`` (a new array of X's shape)."""
        X = np.asarray(X)
        shape = (-1,) + (1,) * (X.ndim - 1)
        Y = self.diagonal.reshape(shape) * X
        if not self.is_diagonal:
            e = self.off.reshape(shape)
            Y[:-1] += e * X[1:]
            Y[1:] += e * X[:-1]
        return Y

    def cholesky(self) -> np.ndarray:
        """The lower banded Cholesky factor ``A = L L^T`` (LAPACK band storage, shape
        (2, N): ``[0]`` the diagonal of L, ``[1, :-1]`` its subdiagonal); cached.

        Raises:
            InputError: if A is not positive definite.
        """
        if self._factor is None:
            ab = np.zeros((2, self.N))
            ab[0], ab[1, :-1] = self.diagonal, self.off
            try:
                self._factor = cholesky_banded(ab, lower=True, check_finite=False)
            except np.linalg.LinAlgError:
                raise InputError("the depth inner product is not positive definite") from None
        return self._factor

    def solve(self, X: np.ndarray) -> np.ndarray:
        """``A^{-1} X`` (a new array of X's shape): ``X / diagonal`` by the reciprocal for
        a diagonal A, else a banded Cholesky solve (LAPACK pbtrs)."""
        X = np.asarray(X)
        if self.is_diagonal:
            return (1.0 / self.diagonal).reshape((-1,) + (1,) * (X.ndim - 1)) * X
        Y, info = lapack.dpbtrs(self.cholesky(), _fortran_copy(X, self.N), lower=1, overwrite_b=1)
        _lapack_info("pbtrs", info)
        return Y.reshape(X.shape)

    def cholesky_apply(self, X: np.ndarray, transpose: bool = False, inverse: bool = False) -> np.ndarray:
        """``L X``, ``L^T X``, ``L^{-1} X`` or ``L^{-T} X`` with the banded Cholesky factor
        L (:meth:`cholesky`), a new array of X's shape (banded triangular solves: LAPACK
        tbtrs)."""
        X = np.asarray(X)
        L = self.cholesky()
        if inverse:
            Y, info = lapack.dtbtrs(L, _fortran_copy(X, self.N), uplo="L", trans="T" if transpose else "N", overwrite_b=1)
            _lapack_info("tbtrs", info)
            return Y.reshape(X.shape)
        shape = (-1,) + (1,) * (X.ndim - 1)
        Y = L[0].reshape(shape) * X
        sub = L[1, :-1].reshape(shape)
        if transpose:  # (L^T x)_k = L_kk x_k + L_{k+1,k} x_{k+1}
            Y[:-1] += sub * X[1:]
        else:  # (L x)_k = L_kk x_k + L_{k,k-1} x_{k-1}
            Y[1:] += sub * X[:-1]
        return Y


def _fortran_copy(X: np.ndarray, N: int) -> np.ndarray:
    """X as a new Fortran-ordered ``(N, columns)`` array (LAPACK overwrites it)."""
    B = np.asfortranarray(X.reshape(N, -1), dtype=float)
    return B.copy(order="F") if np.may_share_memory(B, X) else B


def _lapack_info(name: str, info: int):
    if info != 0:  # only for invalid arguments: a programming error
        raise RuntimeError(f"LAPACK {name} failed with info = {info}")


class ControlSpace:
    """Controls as one distributed PETSc Vec whose layout follows the node partition.

    Each rank owns, in this order: ``a`` (N, n_local), ``b`` (N, n_local, n) (owned
    rows, all columns in global dof order), ``W`` ((K, n_local) for classes, (n_local,
    n) for functions) and ``mu`` (K values on node rank 0 for classes, (n_local,) for
    functions). With sample groups every group holds the same controls on its node
    communicator.

    Args:
        network: the network (its node space and depth mesh).
        kind: ``"classes"`` or ``"function"``.
        K: number of classes.
        riesz: ``"l2"`` or ``"h1"`` (H1 in depth for a and b).
        h1_length: the length l of the H1 term (default: T).
    """

    def __init__(self, network: Network, kind: str = "classes", K: int | None = None, riesz: str = "l2", h1_length: float | None = None):
        if kind not in ("classes", "function"):
            raise InputError(f"learning problem must be 'classes' or 'function', not {kind!r}")
        if kind == "classes" and (K is None or int(K) < 2):
            raise InputError(f"a classes readout needs K >= 2 classes, got {K!r}")
        if riesz not in ("l2", "h1"):
            raise InputError(f"riesz must be 'l2' or 'h1', not {riesz!r}")
        self.network, self.kind, self.riesz_name = network, kind, riesz
        sp, d = network.space, network.depth
        self.space, self.comm = sp, sp.comm
        N, nl, n = d.N, sp.n_local, sp.n
        self.K = int(K) if kind == "classes" else n
        if kind == "classes":
            mu_local = self.K if self.comm.rank == 0 else 0
            shapes = [(N, nl), (N, nl, n), (self.K, nl), (mu_local,)]
        else:
            shapes = [(N, nl), (N, nl, n), (nl, n), (nl,)]
        self.shapes = shapes
        sizes = [int(np.prod(s)) for s in shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.n_local = int(self.offsets[-1])
        # depth operators (O(N), never N x N): L2 = diag(tau); D_t^T D_t with the
        # difference quotients between layer midpoints (tridiagonal)
        self.depth_l2 = DepthOperator(d.tau)
        self.depth_dt = DepthOperator.difference(d.mid)
        self.h1_length = float(d.T if h1_length is None else h1_length)
        if riesz == "h1":
            self.depth_riesz = DepthOperator.combine(1.0, self.depth_l2, self.h1_length**2, self.depth_dt)
        else:
            self.depth_riesz = self.depth_l2

    # ---- Vecs and blocks
    def create_vec(self) -> PETSc.Vec:
        """A zero control Vec on the node communicator."""
        v = PETSc.Vec().createMPI((self.n_local, PETSc.DECIDE), comm=self.comm)
        v.set(0.0)
        return v

    def blocks(self, vec: PETSc.Vec | np.ndarray) -> list[np.ndarray]:
        """Views ``[a, b, W, mu]`` into a Vec's (or array's) owned values."""
        arr = vec.array if isinstance(vec, PETSc.Vec) else vec
        o = self.offsets
        return [arr[o[i] : o[i + 1]].reshape(s) for i, s in enumerate(self.shapes)]

    def split(self, vec: PETSc.Vec) -> tuple[Controls, Readout]:
        """Copies of the controls held by a Vec, as the network uses them."""
        a, b, W, mu = (np.array(x) for x in self.blocks(vec.array_r))
        if self.kind == "classes":
            mu = self.comm.bcast(mu, root=0)
        return Controls(a, b), Readout(self.kind, W, mu)

    def join(self, c: Controls, r: Readout, vec: PETSc.Vec | None = None) -> PETSc.Vec:
        """A Vec holding the given controls (mu of a classes readout: node rank 0's)."""
        vec = vec or self.create_vec()
        a, b, W, mu = self.blocks(vec)
        a[:], b[:], W[:] = c.a, c.b, r.W
        if mu.size:
            mu[:] = r.mu
        return vec

    def from_natural(self, a, b, W, mu, vec: PETSc.Vec | None = None) -> PETSc.Vec:
        """A Vec from arrays in natural node order: a (N, n), b (N, n, n), W ((K, n) or
        (n, n)), mu ((K,) or (n,)). The same arrays give the same controls on any number
        of ranks."""
        sp = self.space
        vec = vec or self.create_vec()
        A, B, Wl, M = self.blocks(vec)
        A[:] = np.asarray(a)[:, sp.nat_owned]
        B[:] = np.asarray(b)[:, sp.nat_owned][:, :, sp.nat_of_global]
        W = np.asarray(W)
        Wl[:] = W[:, sp.nat_owned] if self.kind == "classes" else W[sp.nat_owned][:, sp.nat_of_global]
        if M.size:
            M[:] = np.asarray(mu) if self.kind == "classes" else np.asarray(mu)[sp.nat_owned]
        return vec

    def natural(self, vec: PETSc.Vec) -> dict[str, np.ndarray]:
        """The controls of a Vec in natural node order, on every rank."""
        sp = self.space
        a, b, W, mu = self.blocks(vec.array_r)

        def cols(x):
            out = np.empty_like(x)
            out[..., sp.nat_of_global] = x
            return out

        out = {"a": sp.to_natural(a, axis=1), "b": cols(sp.to_natural(b, axis=1))}
        if self.kind == "classes":
            out["W"] = sp.to_natural(W, axis=1)
            out["mu"] = self.comm.bcast(np.array(mu), root=0)
        else:
            out["W"] = cols(sp.to_natural(W, axis=0))
            out["mu"] = sp.to_natural(mu, axis=0)
        return out

    def random(self, seed: int = 0, scale: float = 1.0) -> PETSc.Vec:
        """A random direction, standard normal in natural order from ``seed``: the same
        direction whatever the number of ranks."""
        sp, N, n = self.space, self.network.depth.N, self.space.n
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((N, n))
        b = rng.standard_normal((N, n, n))
        W = rng.standard_normal((self.K, n) if self.kind == "classes" else (n, n))
        mu = rng.standard_normal(self.K if self.kind == "classes" else n)
        vec = self.from_natural(a, b, W, mu)
        vec.scale(scale)
        return vec

    # ---- inner products
    def _apply(self, x, out, depth: "DepthOperator", readout_scale: float, inverse: bool):
        """``out = (depth (x) M_Y) x`` blockwise (or its inverse ``(depth^{-1} (x)
        M_Y^{-1}) x``): mass in the node variables, ``depth`` across layers,
        ``readout_scale`` for W and mu."""
        sp = self.space
        a, b, W, mu = self.blocks(x.array_r)
        oa, ob, oW, omu = self.blocks(out)
        if sp.mass == "lumped" and depth.is_diagonal:
            # diagonal in depth and nodes: an elementwise scaling, no copies of b
            w, w_all, dd = sp.weights[: sp.n_local], sp.weights_all, depth.diagonal
            if inverse:
                w, w_all, dd = 1.0 / w, 1.0 / w_all, 1.0 / dd
            np.multiply(a, dd[:, None] * w, out=oa)
            np.multiply(b, dd[:, None, None] * w[None, :, None], out=ob)
            ob *= w_all
            if self.kind == "classes":
                np.multiply(W, readout_scale * w, out=oW)
                if mu.size:
                    omu[:] = readout_scale * mu
            else:
                np.multiply(W, readout_scale * w[:, None], out=oW)
                oW *= w_all
                np.multiply(mu, readout_scale * w, out=omu)
            return out
        rows = (lambda X: sp.solve_mass(np.asfortranarray(X))) if inverse else (lambda X: sp.apply_mass(np.asfortranarray(X)))
        across = depth.solve if inverse else depth.apply
        N, nl, n = b.shape
        oa[:] = across(rows(a.T).T)
        mb = rows(b.transpose(1, 0, 2).reshape(nl, N * n)).reshape(nl, N, n).transpose(1, 0, 2)
        mb = sp.mass_columns(mb, inverse=inverse)
        ob[:] = across(mb.reshape(N, nl * n)).reshape(N, nl, n)
        if self.kind == "classes":
            oW[:] = readout_scale * rows(W.T).T
            if mu.size:
                omu[:] = readout_scale * mu
        else:
            oW[:] = readout_scale * sp.mass_columns(rows(W), inverse=inverse)
            omu[:] = readout_scale * rows(mu[:, None])[:, 0]
        return out

    def mass(self, x: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """The inner product's matrix applied to x (primal -> dual)."""
        return self._apply(x, out or x.duplicate(), self.depth_riesz, 1.0, False)

    def riesz(self, dual: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """Riesz map: the representer g of a dual vector, ``(g, v) = dual . v`` (dual -> primal)."""
        return self._apply(dual, out or dual.duplicate(), self.depth_riesz, 1.0, True)

    def inner(self, x: PETSc.Vec, y: PETSc.Vec) -> float:
        """``(x, y)`` in the controls' inner product."""
        my = self.mass(y)
        val = x.dot(my)
        my.destroy()
        return val

    def norm(self, x: PETSc.Vec) -> float:
        return float(np.sqrt(max(self.inner(x, x), 0.0)))

    def regularisation_operator(self, lam: float, gamma: float, x: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """``(lambda L2 + gamma D_t^T D_t) x``: derivative (and Hessian) of the regulariser."""
        depth = DepthOperator.combine(lam, self.depth_l2, gamma, self.depth_dt)
        return self._apply(x, out or x.duplicate(), depth, lam, False)


# --------------------------------------------------------------------------- losses
class ClassesLoss:
    """Softmax cross-entropy on Y_out = {1..K}; targets are one-hot ``(K, S_local)``.
    Values and derivatives are for the *sum* over this rank's samples (the functional
    divides by S)."""

    kind = "classes"

    def value(self, O, C, space):
        m = O.max(axis=0)
        lse = m + np.log(np.exp(O - m).sum(axis=0))
        val = float(np.sum(lse - (C * O).sum(axis=0)))
        return val if space.comm.rank == 0 else 0.0  # O is replicated over node ranks

    def grad(self, O, C, space):
        return softmax(O, axis=0) - C

    def hess(self, O, C, dO, space, gauss_newton=False):
        p = softmax(O, axis=0)
        return p * dO - p * (p * dO).sum(axis=0)

    def predict(self, O):
        return softmax(O, axis=0)


class FunctionLoss:
    """The paper's ``1/2 int_Y |h(O) - C|^2`` with h logistic; O, C are node values
    ``(n_local, S_local)`` and the integral uses the node space's mass."""

    kind = "function"

    def value(self, O, C, space):
        e = logistic(O) - C
        return 0.5 * float(np.sum(e * space.apply_mass(e)))

    def grad(self, O, C, space):
        h = logistic(O)
        return h * (1.0 - h) * space.apply_mass(np.asfortranarray(h - C))

    def hess(self, O, C, dO, space, gauss_newton=False):
        h = logistic(O)
        d1 = h * (1.0 - h)
        H = d1 * space.apply_mass(np.asfortranarray(d1 * dO))
        if not gauss_newton:
            d2 = d1 * (1.0 - 2.0 * h)
            H = H + d2 * dO * space.apply_mass(np.asfortranarray(h - C))
        return H

    def predict(self, O):
        return logistic(O)


# --------------------------------------------------------------------------- J(m)
@dataclass
class _Point:
    m: np.ndarray
    traj: object
    readout: Readout
    O: np.ndarray
    gO: np.ndarray
    J: float
    costate: object = None
    dual: PETSc.Vec | None = None
    Rm: PETSc.Vec | None = None
    full: tuple | None = None  # (trajectory, costate) with the whole tape (checkpointing)


class ReducedFunctional:
    """``J(m)`` with exact derivatives: one forward solve per value, plus one costate
    solve per gradient, plus one incremental forward and one incremental costate solve
    per Hessian action (hIPPYlib style; see :attr:`counts`).

    Args:
        network: the network (node space, depth mesh, activation, scheme, eps, layout).
        inputs: network inputs f_I: callable or ``(S, n)`` natural-order array.
        targets: ``(S,)`` integer labels in 0..K-1 (classes) or ``(S, n)`` natural-order
            values / callable (function).
        kind: ``"classes"`` or ``"function"``.
        K: number of classes (default: max label + 1).
        lam: regularisation weight lambda >= 0.
        gamma: depth-smoothness weight gamma >= 0.
        riesz: ``"l2"`` or ``"h1"`` (default: h1 when gamma > 0).
        h1_length: length of the H1 term (default sqrt(gamma/lambda) when both > 0, else T).
        checkpoint_every: depth checkpointing for gradients (keep the states every k
            levels, recompute the rest in the costate solve; the same gradients, one
            extra forward solve). Hessian actions then rebuild the full tape once per
            point.
    """

    def __init__(
        self,
        network: Network,
        inputs,
        targets,
        kind: str = "classes",
        K: int | None = None,
        lam: float = 0.0,
        gamma: float = 0.0,
        riesz: str | None = None,
        h1_length: float | None = None,
        checkpoint_every: int | None = None,
    ):
        if not (np.isfinite(lam) and lam >= 0 and np.isfinite(gamma) and gamma >= 0):
            raise InputError(f"lambda and gamma must be finite and >= 0, got {lam!r}, {gamma!r}")
        self.network, self.lam, self.gamma = network, float(lam), float(gamma)
        self.checkpoint_every = checkpoint_every
        self._point = None
        # every sample group keeps all samples (node-local); the active ones (all, or a
        # mini-batch) are split between the groups, so results do not depend on the layout
        self._F0_all = network.inputs(inputs, split=False)
        S = self._F0_all.shape[1]
        if kind == "classes":
            labels = np.asarray(targets)
            if labels.ndim != 1 or labels.shape[0] != S or not np.issubdtype(labels.dtype, np.integer):
                raise InputError(f"class labels must be {S} integers, got an array of shape {labels.shape} ({labels.dtype})")
            K = int(labels.max()) + 1 if K is None else int(K)
            if labels.min() < 0 or labels.max() >= K:
                raise InputError(f"class labels must lie in 0..{K - 1}, got {labels.min()}..{labels.max()}")
            self._labels_all = labels.astype(np.int64)
            self._C_all = np.zeros((K, S))
            self._C_all[labels, np.arange(S)] = 1.0
            self.loss = ClassesLoss()
        elif kind == "function":
            self._C_all = network.inputs(targets, split=False)
            if self._C_all.shape != self._F0_all.shape:
                raise InputError(f"targets have {self._C_all.shape[1]} samples for {S} inputs")
            self._labels_all = None
            self.loss = FunctionLoss()
        else:
            raise InputError(f"learning problem must be 'classes' or 'function', not {kind!r}")
        self.n_samples = S
        self.set_batch(None)
        if riesz is None:
            riesz = "h1" if gamma > 0 else "l2"
        if h1_length is None and gamma > 0 and lam > 0:
            h1_length = float(np.sqrt(gamma / lam))
        self.controls = ControlSpace(network, kind, K, riesz, h1_length)
        self.kind = kind
        self.counts = {"forward": 0, "costate": 0, "incremental_forward": 0, "incremental_costate": 0}
        self._point = None

    def set_batch(self, indices=None):
        """Restrict J to the samples ``indices`` (a mini-batch; None: all samples). The
        indices are global and must be the same on every rank; each sample group takes
        its contiguous share of them."""
        S = self.n_samples
        idx = np.arange(S) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= S:
            raise InputError(f"a batch must be a non-empty list of sample indices in 0..{S - 1}")
        s0, s1 = self.network.layout.sample_range(idx.size)
        mine = idx[s0:s1]
        self.S = int(idx.size)
        self.F0 = np.asfortranarray(self._F0_all[:, mine])
        self.C = np.asfortranarray(self._C_all[:, mine])
        self.labels = None if self._labels_all is None else self._labels_all[mine]
        self.destroy()

    # ---- the point of linearisation
    def _at(self, m: PETSc.Vec, costate: bool = False) -> _Point:
        p = self._point
        arr = m.array_r
        same = p is not None and p.m.shape == arr.shape and np.array_equal(p.m, arr)
        same = self.network.layout.world.allreduce(same, op=MPI.LAND)
        if not same:
            self.destroy()  # the previous point's Vecs
            p = None  # and its trajectory and tape: not alive during the new forward solve
            c, r = self.controls.split(m)
            net = self.network
            ck = self.checkpoint_every
            traj = net.forward(self.F0, c, tape=ck is None, checkpoint_every=ck)
            self.counts["forward"] += 1
            O = net.readout(traj.final, r)
            J = self.network.layout.world.allreduce(self.loss.value(O, self.C, net.space)) / self.S
            Rm = self._reg(m)
            J += 0.5 * (m.dot(Rm) if Rm is not None else 0.0)
            p = self._point = _Point(arr.copy(), traj, r, O, self.loss.grad(O, self.C, net.space) / self.S, J)
            p.Rm = Rm
        if costate == "full" and p.costate is None or costate and p.dual is None:
            self._costate(m, p, keep=costate == "full")
        return p

    def _reg(self, m):
        """``(lambda L2 + gamma D_t^T D_t) m`` (None without regularisation)."""
        if self.lam == 0 and self.gamma == 0:
            return None
        return self.controls.regularisation_operator(self.lam, self.gamma, m)

    def _reg_dot(self, m):
        Rm = self._reg(m)
        if Rm is None:
            return 0.0
        val = m.dot(Rm)
        Rm.destroy()
        return val

    def _reduce(self, c: Controls, r: Readout, out: PETSc.Vec) -> PETSc.Vec:
        """Sum over sample groups and pack into a Vec."""
        comm = self.network.layout.sample_comm
        if comm.size > 1:
            for arr in (c.a, c.b, r.W, r.mu):
                comm.Allreduce(MPI.IN_PLACE, arr, op=MPI.SUM)
        return self.controls.join(c, r, out)

    def _costate(self, m, p, keep):
        """The costate solve and the derivative. A gradient keeps only the current
        layer's costate (``keep=False``); the Hessian and :meth:`costate` need all of
        it, and solve again if the gradient came first."""
        net = self.network
        lam_T, dr = net.readout_adjoint(p.traj.final, p.readout, p.gO)
        costate, dc = net.costate(p.traj, lam_T, keep=keep)
        self.counts["costate"] += 1
        p.costate = costate
        if p.dual is None:
            dual = self._reduce(dc, dr, self.controls.create_vec())
            if p.Rm is not None:
                dual.axpy(1.0, p.Rm)
            _finite(dual, "gradient")
            p.dual = dual

    # ---- public API
    def __call__(self, m: PETSc.Vec) -> float:
        """J(m) (one forward solve unless m is the last point)."""
        return self._at(m).J

    def derivative(self, m: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """The derivative dJ(m) as a dual vector (Euclidean pairing with coefficients)."""
        p = self._at(m, costate=True)
        out = out or p.dual.duplicate()
        p.dual.copy(out)
        return out

    def gradient(self, m: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """The gradient: the Riesz representer of dJ(m) in the controls' inner product."""
        p = self._at(m, costate=True)
        return self.controls.riesz(p.dual, out)

    def hessian(self, m: PETSc.Vec, dm: PETSc.Vec, out: PETSc.Vec | None = None, gauss_newton: bool = False) -> PETSc.Vec:
        """The Hessian action ``d^2J(m)[dm, .]`` as a dual vector, by second-order adjoints
        (one incremental forward and one incremental costate solve). ``gauss_newton=True``
        gives the Gauss-Newton approximation (no second derivatives of the network or of
        the bilinear readout; the loss Hessian is kept)."""
        net = self.network
        p = self._at(m)
        dc, dr = self.controls.split(dm)
        r = p.readout
        if p.traj.tape is not None:
            p = self._at(m, costate="full")
            traj, costate = p.traj, p.costate
        else:  # depth checkpointing: the Hessian needs the whole tape
            if p.full is None:
                full = net.forward(self.F0, p.traj.controls, tape=True)
                lam_T, _ = net.readout_adjoint(full.final, r, p.gO)
                p.full = (full, net.costate(full, lam_T)[0])
            traj, costate = p.full
        tan = net.tangent(traj, dc)
        self.counts["incremental_forward"] += 1
        FT, dFT = traj.final, tan.final
        dO = net.readout_tangent(FT, dFT, r, dr)
        HdO = self.loss.hess(p.O, self.C, dO, net.space, gauss_newton) / self.S
        dlam_T, hr = net.readout_adjoint(FT, r, HdO)
        if not gauss_newton:
            eta_F, eta_W = net.readout_second(FT, dFT, r, dr, p.gO)
            dlam_T = dlam_T + eta_F
            hr.W = hr.W + eta_W
        _, hc = net.costate_incremental(traj, costate, tan, dlam_T, gauss_newton)
        self.counts["incremental_costate"] += 1
        out = self._reduce(hc, hr, out or self.controls.create_vec())
        if self.lam or self.gamma:
            R = self.controls.regularisation_operator(self.lam, self.gamma, dm)
            out.axpy(1.0, R)
            R.destroy()
        _finite(out, "Hessian action")
        return out

    # ---- what the point holds
    def trajectory(self, m: PETSc.Vec):
        """The state trajectory at m."""
        return self._at(m).traj

    def costate(self, m: PETSc.Vec):
        """The costate at m (:class:`fem_dnn.network.Costate`; ``.r()`` gives r)."""
        return self._at(m, costate="full").costate

    def loss_value(self, m: PETSc.Vec) -> float:
        """Mean loss without the regularisation."""
        return self._at(m).J - 0.5 * self._reg_dot(m)

    def accuracy(self, m: PETSc.Vec) -> float:
        """Fraction of samples classified correctly (classes only)."""
        if self.kind != "classes":
            raise InputError("accuracy is defined for the classes learning problem")
        p = self._at(m)
        right = int(np.sum(np.argmax(p.O, axis=0) == self.labels))
        return self.network.layout.sample_comm.allreduce(right) / self.S

    def destroy(self):
        if self._point is not None:
            for v in (self._point.dual, self._point.Rm):
                if v is not None:
                    v.destroy()
        self._point = None


def _finite(vec, what):
    ok = vec.comm.tompi4py().allreduce(bool(np.isfinite(vec.array_r).all()), op=MPI.LAND)
    if not ok:
        raise NonFiniteError(f"the {what} is not finite")
