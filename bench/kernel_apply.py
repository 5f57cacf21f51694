"""How to apply a translation-invariant kernel of compact support: the measurement behind
the choice of the ``local`` kernel's implementation (fem_dnn.core.kernel.LocalKernel).

On a k x k pixel grid (DG0 on the image, n = k^2 neurons) a layer applies

    (B f)(y_i) = sum_j kappa(y_i - y_j) w_j f(y_j),   |y_i - y_j|_inf <= r pixels,

to a batch of S images, and the gradient needs the transpose and the "outer" product
``g_o = sum_{i,s} z_is (w f_s)(y_i - o)`` for every offset o of the (2r+1)^2 support.
Four ways, timed on the same data, one BLAS thread, best of ``--repeat``:

- dense: today's kernel, an n x n matrix and one GEMM (n^2 S work; skipped above
  ``--dense-max`` neurons, where the matrix alone needs n^2 * 8 bytes);
- sparse: the matrix of the support's pairs in CSR (scipy.sparse), n (2r+1)^2 S work;
- stencil: the sum over the (2r+1)^2 offsets of shifted views of the batch (numpy),
  the same work without an index array;
- fft: circular convolution of the zero-padded images (scipy.fft), n log n S work.

The outer product is timed for the stencil (one tensordot per offset) and the sparse
form (the sampled products on the support's pairs). Every method's result is checked
against the stencil's to 1e-10 (relative). Prints one table; times are ratios to the
stencil at the smallest size as well as seconds of this run.

    python bench/kernel_apply.py [--sizes 28 56 112 224] [--S 256] [--r 2]
"""

import argparse
import time

from fem_dnn.process import configure

configure()  # the job's process settings: BLAS threads per rank (fem_dnn.process)

import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402
import scipy.sparse as sparse  # noqa: E402


def best(fn, repeat):
    out, times = None, []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def stencil_apply(kappa, F, r):
    """sum_o kappa_o F(. - o) on (k, k, S) images, zero outside the grid."""
    k = F.shape[0]
    out = np.zeros_like(F)
    for a in range(-r, r + 1):
        for b in range(-r, r + 1):
            c = kappa[a + r, b + r]
            # out[i, j] += c F[i - a, j - b] where both are inside
            i0, i1 = max(0, a), min(k, k + a)
            j0, j1 = max(0, b), min(k, k + b)
            out[i0:i1, j0:j1] += c * F[i0 - a : i1 - a, j0 - b : j1 - b]
    return out


def stencil_outer(Z, F, r):
    """g[a, b] = sum_{i,j,s} Z[i, j, s] F[i - a, j - b, s]: the derivative of <Z, B f> in kappa."""
    k = F.shape[0]
    g = np.empty((2 * r + 1, 2 * r + 1))
    for a in range(-r, r + 1):
        for b in range(-r, r + 1):
            i0, i1 = max(0, a), min(k, k + a)
            j0, j1 = max(0, b), min(k, k + b)
            g[a + r, b + r] = np.tensordot(Z[i0:i1, j0:j1], F[i0 - a : i1 - a, j0 - b : j1 - b], axes=3)
    return g


def support(k, r):
    """The support's pairs (rows i, columns j) of the k x k grid and each pair's offset index."""
    idx = np.arange(k * k).reshape(k, k)
    rows, cols, offs = [], [], []
    for a in range(-r, r + 1):
        for b in range(-r, r + 1):
            i0, i1 = max(0, a), min(k, k + a)
            j0, j1 = max(0, b), min(k, k + b)
            rows.append(idx[i0:i1, j0:j1].ravel())
            cols.append(idx[i0 - a : i1 - a, j0 - b : j1 - b].ravel())
            offs.append(np.full((i1 - i0) * (j1 - j0), (a + r) * (2 * r + 1) + (b + r)))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(offs)


def fft_apply(kappa, F, r):
    """Zero-padded circular convolution over the two image axes."""
    k = F.shape[0]
    P = k + 2 * r
    ker = np.zeros((P, P))
    for a in range(-r, r + 1):
        for b in range(-r, r + 1):
            ker[a % P, b % P] = kappa[a + r, b + r]
    Kh = scipy.fft.rfft2(ker, axes=(0, 1))
    Fh = scipy.fft.rfft2(F, s=(P, P), axes=(0, 1))
    return scipy.fft.irfft2(Fh * Kh[:, :, None], s=(P, P), axes=(0, 1))[:k, :k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[28, 56, 112, 224], help="image sides k (n = k^2 neurons)")
    ap.add_argument("--S", type=int, default=256, help="batch size (images)")
    ap.add_argument("--r", type=int, default=2, help="support radius in pixels ((2r+1)^2 offsets)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dense-max", type=int, default=12544, help="largest n for the dense kernel")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    r, S = args.r, args.S
    kappa = rng.standard_normal((2 * r + 1, 2 * r + 1))
    rows_out, base = [], None
    for k in args.sizes:
        n = k * k
        F = rng.standard_normal((k, k, S))
        Z = rng.standard_normal((k, k, S))
        t_st, ref = best(lambda: stencil_apply(kappa, F, r), args.repeat)
        t_go, g_ref = best(lambda: stencil_outer(Z, F, r), args.repeat)
        rr, cc, oo = support(k, r)
        A = sparse.csr_matrix((kappa.ravel()[oo], (rr, cc)), shape=(n, n))
        Fm = F.reshape(n, S)
        t_sp, out = best(lambda: A @ Fm, args.repeat)
        assert np.abs(out.reshape(k, k, S) - ref).max() <= 1e-10 * np.abs(ref).max()
        Zm = Z.reshape(n, S)
        t_so, g = best(lambda: np.bincount(oo, np.einsum("ps,ps->p", Zm[rr], Fm[cc]), minlength=(2 * r + 1) ** 2), 1)
        assert np.abs(g.reshape(2 * r + 1, 2 * r + 1) - g_ref).max() <= 1e-10 * np.abs(g_ref).max()
        t_ff, out = best(lambda: fft_apply(kappa, F, r), args.repeat)
        assert np.abs(out - ref).max() <= 1e-10 * np.abs(ref).max()
        t_de = None
        if n <= args.dense_max:
            D = A.toarray()
            t_de, out = best(lambda: D @ Fm, args.repeat)
            assert np.abs(out.reshape(k, k, S) - ref).max() <= 1e-10 * np.abs(ref).max()
            del D
        base = base or t_st
        rows_out.append((k, n, t_de, t_sp, t_st, t_ff, t_so, t_go))
    print(f"apply of a translation-invariant kernel, support {(2 * r + 1)}x{(2 * r + 1)} pixels, batch S = {S}; "
          f"seconds (ratio to the stencil apply at k = {args.sizes[0]})")
    print(f"{'k':>5} {'n':>7} | {'dense':>16} {'sparse CSR':>16} {'stencil':>16} {'fft':>16} | "
          f"{'outer sparse':>16} {'outer stencil':>16}")
    for k, n, *ts in rows_out:
        cells = [f"{t:8.4f} ({t / base:6.1f})" if t is not None else f"{'-':>16}" for t in ts]
        print(f"{k:>5} {n:>7} | " + " ".join(cells[:4]) + " | " + " ".join(cells[4:]))


if __name__ == "__main__":
    main()
