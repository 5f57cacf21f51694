"""The controls m = (a, b, W, mu) as one distributed PETSc Vec, and their inner products.

One description of the blocks (:data:`BLOCKS`, :meth:`ControlSpace.blocks`) is used by
every place that lays the controls out: the functional, TAO's coordinates, the
checkpoint, the transfer between discretisations, the paper's algorithms.

The inner products: ``a`` in L2(Y x (0,T)) (node mass times the layer lengths tau_k),
``b`` as its kernel family says (:meth:`fem_dnn.core.kernel.Kernel.weigh`; dense: L2(Y x Y
x (0,T)), M (x) M times tau_k; local: kappa's L2 on the offset box times tau_k; lowrank:
L2 of psi and phi in Y times tau_k), ``W`` in L2(Y_out x Y), ``mu`` in
L2(Y_out) (counting measure for classes). With ``inner_product="h1"`` the depth part of a and b
gets an H1 term, ``(c, c~) + l^2 (d_t c, d_t c~)`` with the difference quotients between
layer midpoints. The depth parts are tridiagonal (:class:`DepthOperator`: two diagonals,
O(N) storage and work). See docs/model.md §5.
"""

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from petsc4py import PETSc

from fem_dnn.errors import InputError
from fem_dnn.network import Controls, Network, Readout
from fem_dnn.network.slabs import SlabControls

__all__ = ["BLOCKS", "ControlSpace", "DepthOperator"]

#: The control blocks, in the order every Vec, checkpoint and transfer lays them out:
#: layer biases a (N, n), layer kernels b (N, n, n), readout weight W and bias mu.
BLOCKS = ("a", "b", "W", "mu")


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
                from scipy.linalg import cholesky_banded  # on first use: the import costs 0.35 s a process

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
        from scipy.linalg import lapack

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
            from scipy.linalg import lapack

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

    Each rank owns, in this order: ``a`` (N, n_local), ``b`` (the kernel family's
    :meth:`~fem_dnn.core.kernel.Kernel.block_shape`: dense (N, n_local, n), owned rows,
    all columns in global dof order; local (N, M) on node rank 0; lowrank (N, 2, n_local, R)), ``W`` ((K, n_local) for classes, (n_local,
    n) for functions) and ``mu`` (K values on node rank 0 for classes, (n_local,) for
    functions). With sample groups every group holds the same controls on its node
    communicator.

    Args:
        network: the network (its node space and depth mesh).
        kind: ``"classes"`` or ``"function"``.
        K: number of classes.
        inner_product: ``"l2"`` or ``"h1"`` (H1 in depth for a and b): the inner product
            whose Riesz map :meth:`riesz` is.
        h1_length: the length l of the H1 term (default: T).
    """

    def __init__(self, network: Network, kind: str = "classes", K: int | None = None, inner_product: str = "l2",
                 h1_length: float | None = None, block_weights: dict | None = None):
        if kind not in ("classes", "function"):
            raise InputError(f"learning problem must be 'classes' or 'function', not {kind!r}")
        if kind == "classes" and (K is None or int(K) < 2):
            raise InputError(f"a classes readout needs K >= 2 classes, got {K!r}")
        if inner_product not in ("l2", "h1"):
            raise InputError(f"inner_product must be 'l2' or 'h1', not {inner_product!r}")
        self.network, self.kind, self.inner_product = network, kind, inner_product
        #: the weights of the a and b blocks in the inner product (``(m, m') = w_a (a, a') +
        #: w_b (b, b') + (W, W') + (mu, mu')``, each of the L2 or H1 form): the geometry the
        #: optimisers step in (:class:`fem_dnn.optimize.Coordinates`); the regulariser keeps
        #: the unweighted L2 norm
        self.block_weights = {"a": 1.0, "b": 1.0, **(block_weights or {})}
        if set(self.block_weights) != {"a", "b"} or not all(
                np.isfinite(v) and v > 0 for v in self.block_weights.values()):
            raise InputError(f"block_weights must give positive weights of 'a' and 'b', got {block_weights!r}")
        #: the layer blocks' networks: one, or a slab network's slabs (each its own node
        #: space, depth mesh and kernel; the readout on the last one's space)
        self.layers = list(getattr(network, "slabs", [network]))
        self.slabs = hasattr(network, "slabs")
        sp = network.space
        self.space, self.comm = sp, sp.comm
        nl, n = sp.n_local, sp.n
        self.K = int(K) if kind == "classes" else n
        shapes = []
        for net in self.layers:
            shapes += [(net.depth.N, net.space.n_local), net.kernel.block_shape(net.depth.N)]
        if kind == "classes":
            mu_local = self.K if self.comm.rank == 0 else 0
            shapes += [(self.K, nl), (mu_local,)]
        else:
            shapes += [(nl, n), (nl,)]
        self.shapes = shapes
        #: the blocks' names: a, b, W, mu (:data:`BLOCKS`); a slab network's a0, b0, a1, ...
        self.names = BLOCKS if not self.slabs else tuple(
            f"{x}{i}" for i in range(len(self.layers)) for x in "ab") + ("W", "mu")
        sizes = [int(np.prod(s)) for s in shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.n_local = int(self.offsets[-1])
        # depth operators per slab (O(N), never N x N): L2 = diag(tau); D_t^T D_t with the
        # difference quotients between layer midpoints (tridiagonal); the H1 term stays
        # within a slab (across a slab boundary the node spaces differ)
        T = sum(net.depth.T for net in self.layers)
        self.h1_length = float(T if h1_length is None else h1_length)
        #: per slab ``(L2, D_t^T D_t, the Riesz map's depth operator)``
        self.depths = []
        for net in self.layers:
            l2, dt = DepthOperator(net.depth.tau), DepthOperator.difference(net.depth.mid)
            riesz = DepthOperator.combine(1.0, l2, self.h1_length**2, dt) if inner_product == "h1" else l2
            self.depths.append((l2, dt, riesz))
        #: the depth operators of a uniform network (a slab network: the first slab's)
        self.depth_l2, self.depth_dt, self.depth_riesz = self.depths[0]

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

    def block_dict(self, vec: PETSc.Vec | np.ndarray) -> dict[str, np.ndarray]:
        """The views of :meth:`blocks` by name (:attr:`names`)."""
        return dict(zip(self.names, self.blocks(vec)))

    def layer_blocks(self, blocks):
        """``[(net, a, b), ...]`` per slab, and W, mu."""
        return [(net, blocks[2 * i], blocks[2 * i + 1]) for i, net in enumerate(self.layers)], blocks[-2], blocks[-1]

    def _per_slab(self, c) -> list:
        return list(c) if self.slabs else [c]

    def split(self, vec: PETSc.Vec) -> tuple[Controls, Readout]:
        """Copies of the controls held by a Vec, as the network uses them."""
        layers, W, mu = self.layer_blocks([np.array(x) for x in self.blocks(vec.array_r)])
        if self.kind == "classes":
            mu = self.comm.bcast(mu, root=0)
        cs = [Controls(a, net.kernel.share(b)) for net, a, b in layers]
        return (SlabControls(cs) if self.slabs else cs[0]), Readout(self.kind, W, mu)

    def join(self, c: Controls, r: Readout, vec: PETSc.Vec | None = None) -> PETSc.Vec:
        """A Vec holding the given controls (mu of a classes readout: node rank 0's)."""
        vec = vec or self.create_vec()
        layers, W, mu = self.layer_blocks(self.blocks(vec))
        for (_, a, b), ci in zip(layers, self._per_slab(c)):
            a[:] = ci.a
            if b.size:
                b[:] = ci.b
        W[:] = r.W
        if mu.size:
            mu[:] = r.mu
        return vec

    def from_natural(self, a, b, W, mu, vec: PETSc.Vec | None = None) -> PETSc.Vec:
        """A Vec from arrays in natural node order: a (N, n), b (the kernel's natural shape:
        dense (N, n, n)), W ((K, n) or (n, n)), mu ((K,) or (n,)); a slab network takes a
        and b as lists, one array a slab. The same arrays give the same controls on any
        number of ranks."""
        sp = self.space
        vec = vec or self.create_vec()
        layers, Wl, M = self.layer_blocks(self.blocks(vec))
        for (net, A, B), ai, bi in zip(layers, *((a, b) if self.slabs else ([a], [b]))):
            A[:] = np.asarray(ai)[:, net.space.nat_owned]
            kern = net.kernel
            if np.shape(bi) != kern.natural_shape(net.depth.N):
                raise InputError(f"b has shape {np.shape(bi)}; the {kern.name} kernel's controls have shape "
                                 f"{kern.natural_shape(net.depth.N)}")
            B[:] = kern.from_natural(bi)
        W = np.asarray(W)
        Wl[:] = W[:, sp.nat_owned] if self.kind == "classes" else W[sp.nat_owned][:, sp.nat_of_global]
        if M.size:
            M[:] = np.asarray(mu) if self.kind == "classes" else np.asarray(mu)[sp.nat_owned]
        return vec

    def natural(self, vec: PETSc.Vec) -> dict[str, np.ndarray]:
        """The controls of a Vec in natural node order, on every rank (a slab network's a
        and b: lists, one array a slab)."""
        sp = self.space
        layers, W, mu = self.layer_blocks(self.blocks(vec.array_r))

        def cols(x):
            out = np.empty_like(x)
            out[..., sp.nat_of_global] = x
            return out

        a = [net.space.to_natural(ai, axis=1) for net, ai, _ in layers]
        b = [net.kernel.to_natural(bi) for net, _, bi in layers]
        out = {"a": a, "b": b} if self.slabs else {"a": a[0], "b": b[0]}
        if self.kind == "classes":
            out["W"] = sp.to_natural(W, axis=1)
            out["mu"] = self.comm.bcast(np.array(mu), root=0)
        else:
            out["W"] = cols(sp.to_natural(W, axis=0))
            out["mu"] = sp.to_natural(mu, axis=0)
        return out

    def natural_blocks(self, vec: PETSc.Vec) -> dict[str, np.ndarray]:
        """:meth:`natural` by block name (:attr:`names`: a slab network's a0, b0, a1, ...),
        one array each: what a checkpoint stores."""
        nat = self.natural(vec)
        if not self.slabs:
            return nat
        out = {f"{x}{i}": nat[x][i] for i in range(len(self.layers)) for x in "ab"}
        return {**out, "W": nat["W"], "mu": nat["mu"]}

    def from_natural_blocks(self, blocks: dict, vec: PETSc.Vec | None = None) -> PETSc.Vec:
        """:meth:`from_natural` from arrays by block name (:meth:`natural_blocks`)."""
        if not self.slabs:
            return self.from_natural(*(blocks[k] for k in BLOCKS), vec=vec)
        n = len(self.layers)
        return self.from_natural([blocks[f"a{i}"] for i in range(n)], [blocks[f"b{i}"] for i in range(n)],
                                 blocks["W"], blocks["mu"], vec=vec)

    def random(self, seed: int = 0, scale: float = 1.0) -> PETSc.Vec:
        """A random direction, standard normal in natural order from ``seed``: the same
        direction whatever the number of ranks."""
        n = self.space.n
        rng = np.random.default_rng(seed)
        a, b = [], []
        for net in self.layers:
            a.append(rng.standard_normal((net.depth.N, net.space.n)))
            b.append(net.kernel.random(rng, net.depth.N))
        W = rng.standard_normal((self.K, n) if self.kind == "classes" else (n, n))
        mu = rng.standard_normal(self.K if self.kind == "classes" else n)
        vec = self.from_natural(a, b, W, mu) if self.slabs else self.from_natural(a[0], b[0], W, mu)
        vec.scale(scale)
        return vec

    def unit_gain(self, seed: int = 0) -> PETSc.Vec:
        """The start of ``training.init = "unit_gain"``: PyTorch's default initialisation
        of a conv net carried to the continuum, the same whatever the number of ranks.
        The biases a are zero; each layer's kernel starts with unit gain
        (:meth:`~fem_dnn.core.kernel.Kernel.unit_gain`); the readout ``O = W M f + mu``
        has ``omega W`` and ``mu`` uniform on ``+-1/sqrt(n)``, n its nodes (``nn.Linear``'s)."""
        if self.kind != "classes":
            raise InputError("training.init = 'unit_gain' starts a classes readout; this problem is a function")
        rng = np.random.default_rng(seed)
        n = self.space.n
        a = [np.zeros((net.depth.N, net.space.n)) for net in self.layers]
        b = [net.kernel.unit_gain(rng, net.depth.N) for net in self.layers]
        bound = 1.0 / np.sqrt(n)
        W = rng.uniform(-bound, bound, (self.K, n)) / float(np.mean(self.space.weights_all))
        mu = rng.uniform(-bound, bound, self.K)
        return self.from_natural(a, b, W, mu) if self.slabs else self.from_natural(a[0], b[0], W, mu)

    # ---- inner products
    def _apply(self, x, out, depths: list, readout_scale: float, inverse: bool, weighted: bool = False):
        """``out = (depth (x) M_Y) x`` blockwise (or its inverse ``(depth^{-1} (x)
        M_Y^{-1}) x``): mass in the node variables, ``depths[i]`` across slab i's layers,
        ``readout_scale`` for W and mu; ``weighted``: times the :attr:`block_weights`."""
        sp = self.space
        layers, W, mu = self.layer_blocks(self.blocks(x.array_r))
        olayers, oW, omu = self.layer_blocks(self.blocks(out))
        for (net, a, b), (_, oa, ob), depth in zip(layers, olayers, depths):
            spi = net.space
            if spi.mass == "lumped" and depth.is_diagonal:
                # diagonal in depth and nodes: an elementwise scaling, no copies of b
                w, dd = spi.weights[: spi.n_local], depth.diagonal
                if inverse:
                    w, dd = 1.0 / w, 1.0 / dd
                np.multiply(a, dd[:, None] * w, out=oa)
            else:
                rows = (lambda X, s=spi: s.solve_mass(np.asfortranarray(X))) if inverse else (
                    lambda X, s=spi: s.apply_mass(np.asfortranarray(X)))
                oa[:] = (depth.solve if inverse else depth.apply)(rows(a.T).T)
            net.kernel.weigh(b, ob, depth, inverse)
            if weighted:
                wa, wb = self.block_weights["a"], self.block_weights["b"]
                if wa != 1.0:
                    oa *= 1.0 / wa if inverse else wa
                if wb != 1.0 and ob.size:
                    ob *= 1.0 / wb if inverse else wb
        if sp.mass == "lumped":
            w, w_all = sp.weights[: sp.n_local], sp.weights_all
            if inverse:
                w, w_all = 1.0 / w, 1.0 / w_all
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
        return self._apply(x, out or x.duplicate(), [d[2] for d in self.depths], 1.0, False, weighted=True)

    def riesz(self, dual: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """Riesz map: the representer g of a dual vector, ``(g, v) = dual . v`` (dual -> primal)."""
        return self._apply(dual, out or dual.duplicate(), [d[2] for d in self.depths], 1.0, True, weighted=True)

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
        depths = [DepthOperator.combine(lam, l2, gamma, dt) for l2, dt, _ in self.depths]
        return self._apply(x, out or x.duplicate(), depths, lam, False)
