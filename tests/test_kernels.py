"""Kernel families (fem_dnn.core.kernel): the local kernel's operator against closed-form
integrals (second order in h), exact transposes and derivatives, Taylor tests of the
network with local and low-rank kernels for every scheme, agreement of 2 and 3 ranks
with one, the transfer of kappa between node meshes and offset boxes (and channels),
and the refusals."""

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.core.depth import Depth
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.core.kernel import KERNELS, DenseKernel, LocalKernel, LowRankKernel, make_kernel
from fem_dnn.errors import InputError
from fem_dnn.learning.controls import ControlSpace
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.learning.verify import taylor_test
from fem_dnn.network import SCHEMES, Network
from fem_dnn.learning.transfer import transfer_controls

from conftest import observed_orders, on_ranks, ranks_vs_serial

# node meshes: (shape, cells, cell type, family, degree)
MESHES = {
    "interval-DG0": ("interval", 12, None, "DG", 0),
    "interval-P1": ("interval", 12, None, "P", 1),
    "quads-DG0": ("rectangle", (6, 6), "quadrilateral", "DG", 0),
    "triangles-P1": ("rectangle", (5, 5), "triangle", "P", 1),
}


def space_of(comm, name, scale=1):
    shape, n, cell, fam, deg = MESHES[name]
    n = n * scale if np.isscalar(n) else tuple(k * scale for k in n)
    return NodeSpace(create_node_mesh(comm, shape, n, cell=cell), fam, deg, "lumped")


def _batch(space, S, seed):
    """A batch in natural order, the same on any number of ranks, as the owned rows."""
    X = np.random.default_rng(seed).normal(size=(S, space.n))
    return np.asfortranarray(space.from_natural(X, axis=1).T)


@pytest.mark.mpi
@pytest.mark.parametrize("name", sorted(MESHES))
def test_local_transpose_and_outer_are_exact(comm, name):
    """<V, B F> = <B^T V, F> = <outer(V, F), kappa> to round-off, on 1, 2 and 3 ranks
    (ghost columns cross the rank boundaries)."""
    sp = space_of(comm, name)
    kern = LocalKernel(sp, radius=0.25, cells=3)
    F, V = _batch(sp, 3, 1), _batch(sp, 3, 2)
    kappa = np.random.default_rng(0).normal(size=kern.M)
    lhs = comm.allreduce(float(np.vdot(V, kern.apply(kappa, F))))
    rhs = comm.allreduce(float(np.vdot(kern.apply_transpose(kappa, V), F)))
    g = kern.reduce(kern.outer(V, F))
    scale = abs(lhs) + 1.0
    assert abs(lhs - rhs) <= 1e-13 * scale and abs(lhs - g @ kappa) <= 1e-13 * scale
    # one function is a batch of one
    assert np.allclose(kern.apply(kappa, F[:, 0]), kern.apply(kappa, F)[:, 0], rtol=0, atol=1e-14 * scale)
    sp.destroy()


def _hat_reference(y, rho, f, axes):
    """int kappa(y - z) f(z) dz for the hat kappa(d) = prod_a (1 - |d_a|/rho) and a
    separable f = prod_a f_a, by Gauss-Legendre on each side of the kink (exact to
    round-off for these smooth f)."""
    x, w = np.polynomial.legendre.leggauss(30)
    total = np.ones(y.shape[1])
    for a in range(axes):
        part = np.zeros(y.shape[1])
        for lo, hi in ((-rho, 0.0), (0.0, rho)):
            d = 0.5 * (hi - lo) * x + 0.5 * (hi + lo)  # offsets y - z
            z = y[a][:, None] - d[None, :]
            part += 0.5 * (hi - lo) * np.sum(w * (1 - np.abs(d) / rho) * f[a](z), axis=1)
        total *= part
    return total


@pytest.mark.parametrize("name,rule", [("interval-DG0", "nodal"), ("interval-P1", "nodal"), ("quads-DG0", "nodal"),
                                       ("interval-DG0", "exact"), ("quads-DG0", "exact")])
def test_local_kernel_converges_at_order_two(name, rule):
    """``B_kappa f`` against the closed-form integral for the hat kernel (a Q1 function on
    two cells a side: represented exactly) at rows whose support lies inside the domain:
    the error falls at order 2 in h. Nodal: against ``int kappa(y_i - z) f(z) dz`` (node
    quadrature of an integrand whose kinks, at z = y and at the support's edge, lie on
    nodes: rho is a multiple of h); exact: against its average over the cell K_i (the
    Galerkin entries applied to f at the centres)."""
    comm = MPI.COMM_SELF
    rho = 0.2
    fs = [lambda z: np.cos(2.0 * z), lambda z: 1.0 + z**2]
    shape, _, cell, fam, deg = MESHES[name]
    errs = []
    for scale in (1, 2, 4, 8):
        k = (10 if fam == "P" else 5) * scale  # h = rho, rho/2, ...: P1 on 0.1-spaced vertices, DG0 on 0.2-wide cells
        sp = NodeSpace(create_node_mesh(comm, shape, k if shape == "interval" else (k, k), cell=cell), fam, deg)
        d = int(sp.mesh.geometry.dim)
        kern = LocalKernel(sp, radius=rho, cells=2, quadrature=rule)
        kappa = np.prod(1.0 - np.abs(kern.kappa_points) / rho, axis=0)  # the hat at kappa's nodes
        F = np.prod([fs[a](sp.x_owned[a]) for a in range(d)], axis=0)
        Bf = kern.apply(kappa, F)
        inner = np.all((sp.x_owned[:d] >= rho + 0.05) & (sp.x_owned[:d] <= 1 - rho - 0.05), axis=0)
        if rule == "nodal":
            exact = _hat_reference(sp.x_owned[:, inner], rho, fs, d)
        else:  # the cell average: 4-point Gauss-Legendre per axis of the (smooth) convolution
            g, w = np.polynomial.legendre.leggauss(4)
            hc = 1.0 / k
            yc = sp.x_owned[:, inner]
            exact = np.zeros(yc.shape[1])
            for idx in np.ndindex(*(4,) * d):
                y = yc.copy()
                for a in range(d):
                    y[a] += 0.5 * hc * g[idx[a]]
                exact += np.prod([w[idx[a]] / 2 for a in range(d)]) * _hat_reference(y, rho, fs, d)
        errs.append(np.abs(Bf[inner] - exact).max())
        sp.destroy()
    rates = observed_orders(errs)
    assert rates[-1] > 1.8 and rates[-2] > 1.8, (errs, rates)


@pytest.mark.parametrize("name,method", [("interval-DG0", "csr"), ("quads-DG0", "grid"), ("quads-DG0", "csr")])
def test_trapezoid_rule_is_second_order_where_kappa_jumps(name, method):
    """kappa = 1 on the support box (a Q1 function: represented exactly) jumps to zero at
    the box's faces. Against the closed form ``int_{|y - z| <= rho} f(z) dz`` (a product of
    1-D antiderivatives) the trapezoid rule (half weights on the faces, which lie on the
    node centres: rho a multiple of h) converges at order 2; the nodal rule weighs the
    faces fully, an error ``h/2 (f(y - rho) + f(y + rho))`` per axis: order 1."""
    comm = MPI.COMM_SELF
    rho = 0.2
    prims = [lambda z: np.sin(2.0 * z) / 2.0, lambda z: z + z**3 / 3.0]  # antiderivatives of cos 2z, 1 + z^2
    fs = [lambda z: np.cos(2.0 * z), lambda z: 1.0 + z**2]
    shape, _, cell, fam, deg = MESHES[name]
    errs = {"trapezoid": [], "nodal": []}
    for scale in (1, 2, 4, 8):
        k = 5 * scale  # DG0 cells h = rho, rho/2, ...
        sp = NodeSpace(create_node_mesh(comm, shape, k if shape == "interval" else (k, k), cell=cell), fam, deg)
        d = int(sp.mesh.geometry.dim)
        F = np.prod([fs[a](sp.x_owned[a]) for a in range(d)], axis=0)
        y = sp.x_owned[:d]
        inner = np.all((y >= rho + 0.05) & (y <= 1 - rho - 0.05), axis=0)
        exact = np.prod([prims[a](y[a, inner] + rho) - prims[a](y[a, inner] - rho) for a in range(d)], axis=0)
        for rule in errs:
            kern = LocalKernel(sp, radius=rho, cells=2, quadrature=rule, method=method)
            assert kern.method == method
            errs[rule].append(np.abs(kern.apply(np.ones(kern.M), F)[inner] - exact).max())
        sp.destroy()
    trap, nodal = observed_orders(errs["trapezoid"]), observed_orders(errs["nodal"])
    assert trap[-1] > 1.8 and trap[-2] > 1.8, (errs, trap)
    assert 0.8 < nodal[-1] < 1.2, (errs, nodal)


def _network(comm, name, scheme, kind, kernel="local", eps=0.0):
    sp = space_of(comm, name)
    kern = {"local": lambda: LocalKernel(sp, radius=0.3, cells=3), "lowrank": lambda: LowRankKernel(sp, 3),
            "dense": lambda: DenseKernel(sp)}[kernel]()
    net = Network(sp, Depth(T=1.0, N=3), "tanh", scheme, eps=eps, kernel=kern)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5, sp.n))
    y = np.array([0, 1, 2, 0, 1]) if kind == "classes" else 1.0 / (1.0 + np.exp(-X))
    return net, ReducedFunctional(net, X, y, kind, lam=1e-2, gamma=1e-2 if eps else 0.0)


def _close(net, J):
    J.destroy()
    net.destroy()
    net.space.destroy()


@pytest.mark.mpi(ranks=(2,))
@pytest.mark.parametrize("kind,name,eps", [("classes", "quads-DG0", 0.0), ("function", "triangles-P1", 0.05)])
@pytest.mark.parametrize("kernel", ["local", "lowrank"])
@pytest.mark.parametrize("scheme", on_ranks(SCHEMES, ["heun"]))
def test_taylor_structured_kernels(comm, scheme, kernel, kind, name, eps):
    """Remainder rates 2 (gradient) and 3 (Hessian action) with a local and a low-rank
    kernel (bilinear in psi, phi: its own second derivative), every scheme serially and
    Heun on 2 ranks."""
    net, J = _network(comm, name, scheme, kind, kernel, eps=eps)
    m, dm = J.controls.random(1, 0.5), J.controls.random(2)
    res = taylor_test(J, m, dm, J.derivative(m), J.hessian(m, dm), step=1e-2, n_steps=4)
    assert res.min_rate(1) > 1.9, str(res)
    assert res.min_rate(2) > 2.85, str(res)
    _close(net, J)


def _natural(comm, scheme, kind, name, kernel):
    net, J = _network(comm, name, scheme, kind, kernel)
    m, dm = J.controls.random(1, 0.5), J.controls.random(2)
    out = {"J": J(m)}
    for key, vec in (("grad", J.gradient(m)), ("hess", J.hessian(m, dm))):
        out[key] = np.concatenate([v.ravel() for v in J.controls.natural(vec).values()])
    _close(net, J)
    return out


@ranks_vs_serial
@pytest.mark.mpi
@pytest.mark.parametrize("kind,name", [("classes", "quads-DG0"), ("function", "triangles-P1")])
@pytest.mark.parametrize("kernel", ["local", "lowrank"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_structured_kernels_parallel_match_serial(comm, scheme, kernel, kind, name):
    """J, the Riesz gradient and the Hessian action with a local and a low-rank kernel on
    2 and 3 ranks agree with an in-process serial solve to 1e-12 (relative)."""
    ser = _natural(MPI.COMM_SELF, scheme, kind, name, kernel)
    par = _natural(comm, scheme, kind, name, kernel)
    assert abs(par["J"] - ser["J"]) <= 1e-12 * abs(ser["J"])
    for key in ("grad", "hess"):
        assert np.linalg.norm(par[key] - ser[key]) <= 1e-12 * np.linalg.norm(ser[key]), key


@pytest.mark.mpi
def test_local_kernel_halo_is_not_the_whole_state(comm):
    """Under MPI a rank receives only the ghost rows within the support of its rows: on
    a 24 x 24 grid split in 2 or 3, fewer than a third of the other ranks' rows."""
    sp = NodeSpace(create_node_mesh(comm, "rectangle", (24, 24), cell="quadrilateral"), "DG", 0)
    kern = LocalKernel(sp, radius=1.5 / 24, cells=3)
    others = sp.n - sp.n_local
    if comm.size > 1:
        assert 0 < kern.halo.ghosts.size < others / 3, (kern.halo.ghosts.size, others)
    else:
        assert kern.halo.ghosts.size == 0
    sp.destroy()


@pytest.mark.mpi
def test_kappa_transfers_between_resolutions(comm):
    """kappa does not depend on the node mesh: a transfer to a finer node mesh keeps it;
    to a finer offset box (nested Q1 grids) it interpolates it exactly, and the operator
    is then the same on every pair of nodes."""
    coarse = space_of(comm, "quads-DG0")
    fine = space_of(comm, "quads-DG0", 2)
    d = Depth(T=1.0, N=2)
    nets = [Network(coarse, d, kernel=LocalKernel(coarse, radius=0.34, cells=2)),
            Network(fine, d, kernel=LocalKernel(fine, radius=0.34, cells=2)),
            Network(fine, d, kernel=LocalKernel(fine, radius=0.34, cells=4))]
    spaces = [ControlSpace(net, "classes", K=3) for net in nets]
    m = spaces[0].random(5)
    same = transfer_controls(spaces[0], m, spaces[1])
    assert np.array_equal(spaces[1].natural(same)["b"], spaces[0].natural(m)["b"])
    refined = transfer_controls(spaces[0], m, spaces[2])
    F = _batch(fine, 2, 7)
    c1, _ = spaces[1].split(same)
    c2, _ = spaces[2].split(refined)
    for k in range(d.N):
        a, b = nets[1].kernel.apply(c1.b[k], F), nets[2].kernel.apply(c2.b[k], F)
        assert np.abs(a - b).max() <= 1e-12 * np.abs(a).max()
    dense = Network(fine, d)
    with pytest.raises(InputError, match="cannot transfer local kernels to dense kernels"):
        transfer_controls(spaces[0], m, ControlSpace(dense, "classes", K=3))
    for net in nets + [dense]:
        net.destroy()
    coarse.destroy(), fine.destroy()


def test_kernel_refusals():
    """A radius below a cell or above the domain, no cells, P2 nodes, unknown names, a
    rank below 1 or above n."""
    comm = MPI.COMM_SELF
    sp = space_of(comm, "quads-DG0")  # cells 1/6 a side
    with pytest.raises(InputError, match="smaller than a node cell"):
        LocalKernel(sp, radius=0.1)
    with pytest.raises(InputError, match="larger than the node domain"):
        LocalKernel(sp, radius=1.5)
    with pytest.raises(InputError, match="at least one cell"):
        LocalKernel(sp, radius=0.3, cells=0)
    with pytest.raises(InputError, match="unknown kernel 'fft'"):
        make_kernel(sp, "fft")
    assert set(KERNELS) == {"dense", "local", "lowrank"}
    for R in (0, sp.n + 1):
        with pytest.raises(InputError, match=f"rank {R} must be between 1 and the number of neurons {sp.n}"):
            LowRankKernel(sp, R)
    p2 = NodeSpace(create_node_mesh(comm, "interval", 8), "P", 2, "consistent")
    with pytest.raises(InputError, match="P2 has no positive"):
        LocalKernel(p2, radius=0.3)
    sp.destroy(), p2.destroy()


@pytest.mark.mpi(ranks=(2,))
def test_channels_kernel(comm):
    """Y = image x C channels (an interval image, C = 3 layers of cells): exact transpose and
    outer product; with the same kappa for every pair of channels and the same image in
    every channel, each channel's output is the one-channel kernel's on the image alone;
    Taylor rates 2 and 3; a mesh whose last axis is not C equal layers is refused."""
    C, k = 3, 12
    sp = NodeSpace(create_node_mesh(comm, "rectangle", (k, C), cell="quadrilateral"), "DG", 0)
    kern = LocalKernel(sp, radius=0.25, cells=3, channels=C)
    assert kern.M == C * C * 4 and kern.sdim == 1
    F, V = _batch(sp, 2, 1), _batch(sp, 2, 2)
    kappa = np.random.default_rng(0).normal(size=kern.M)
    lhs = comm.allreduce(float(np.vdot(V, kern.apply(kappa, F))))
    rhs = comm.allreduce(float(np.vdot(kern.apply_transpose(kappa, V), F)))
    g = kern.reduce(kern.outer(V, F))
    assert abs(lhs - rhs) <= 1e-13 * (abs(lhs) + 1) and abs(lhs - g @ kappa) <= 1e-13 * (abs(lhs) + 1)
    image = NodeSpace(create_node_mesh(MPI.COMM_SELF, "interval", k), "DG", 0)
    one = LocalKernel(image, radius=0.25, cells=3)
    f = lambda x: np.cos(3 * x)  # noqa: E731
    k1 = kappa[: one.M]
    out = kern.apply(np.tile(k1, C * C), f(sp.x_owned[0]))
    ref = one.apply(k1, f(image.x_owned[0]))
    at = np.clip(np.floor(sp.x_owned[0] * k).astype(int), 0, k - 1)  # the image cell of each neuron
    order = np.argsort(image.x_owned[0])
    assert np.allclose(out, ref[order][at], rtol=0, atol=1e-12)
    net = Network(sp, Depth(T=1.0, N=2), "tanh", "heun", kernel=kern)
    X = np.random.default_rng(3).normal(size=(4, sp.n))
    J = ReducedFunctional(net, X, np.array([0, 1, 2, 0]), "classes", lam=1e-2)
    m, dm = J.controls.random(1, 0.5), J.controls.random(2)
    res = taylor_test(J, m, dm, J.derivative(m), J.hessian(m, dm), step=1e-2, n_steps=4)
    assert res.min_rate(1) > 1.9 and res.min_rate(2) > 2.85, str(res)
    with pytest.raises(InputError, match="not an image x 4 channels mesh"):
        LocalKernel(sp, radius=0.25, channels=4)
    _close(net, J)
    image.destroy()


def _image_space(comm, C, shape=(7, 6)):
    """An image x C channels node mesh (DG0 pixels; C = 1: the image alone)."""
    if C == 1:
        return NodeSpace(create_node_mesh(comm, "rectangle", shape, cell="quadrilateral"), "DG", 0)
    return NodeSpace(create_node_mesh(comm, "box", (*shape, C), cell="hexahedron"), "DG", 0)


@pytest.mark.mpi
@pytest.mark.parametrize("quadrature", ["nodal", "exact"])
@pytest.mark.parametrize("C", [2, 3])
def test_local_pattern_from_the_pixels_is_the_pairs(comm, C, quadrature):
    """With channels the local kernel finds its pattern's size, ghosts and widest row
    from the pixels (each dof's pairs: its pixel's neighbour pixels times the C channels);
    they are the ones the dof pairs give, for both rules and two supports, serially and
    on 2 and 3 ranks (ghost pixels across the ranks' blocks)."""
    sp = _image_space(comm, C)
    for radius in (1.2 / 7, 2.2 / 7):
        kern = LocalKernel(sp, radius=radius, cells=3, channels=C, quadrature=quadrature)
        nnz, ghosts, fan_in = kern._pattern(kern._pairs())
        assert kern.nnz == nnz and kern._fan_in == fan_in and np.array_equal(kern.halo.ghosts, ghosts)
        assert np.array_equal(np.sort(kern._pattern()[1]), ghosts)
    sp.destroy()


@pytest.mark.mpi
@pytest.mark.parametrize("C", [1, 2, 3])
def test_local_grid_path_matches_csr(comm, C):
    """On a 7 x 6 pixel image x C channels (DG0) the local kernel takes the grid path
    (dense GEMMs per support offset, :class:`PixelGrid`) and is the CSR path's operator:
    B f, ``scale B^T v`` and the outer product agree to 1e-13 relative (sums of at most
    25 C terms: round-off ~1e-15), serially and on 2 and 3 ranks (ghost pixels across
    the ranks' blocks); its transpose is exact and its outer product the derivative of
    <V, B F>; one function is a batch of one. The grid path builds the CSR matrices on
    first use only (``matrix``), the same as the CSR path's."""
    sp = _image_space(comm, C)
    fast = LocalKernel(sp, radius=2.2 / 7, cells=3, channels=C)  # 2 pixels a side in x, 1 in y
    csr = LocalKernel(sp, radius=2.2 / 7, cells=3, channels=C, method="csr")
    assert (fast.method, csr.method) == ("grid", "csr")
    F, V = _batch(sp, 4, 1), _batch(sp, 4, 2)
    kappa = np.random.default_rng(0).normal(size=fast.M)

    def close(a, b):
        top = comm.allreduce(float(np.abs(b).max()), op=MPI.MAX)
        return comm.allreduce(float(np.abs(a - b).max()), op=MPI.MAX) <= 1e-13 * top

    assert close(fast.apply(kappa, F), csr.apply(kappa, F))
    assert close(fast.apply_transpose(kappa, V, 0.7), csr.apply_transpose(kappa, V, 0.7))
    g = fast.reduce(fast.outer(V, F, scale=0.3))
    assert close(g, csr.reduce(csr.outer(V, F, scale=0.3)))
    lhs = comm.allreduce(float(np.vdot(V, fast.apply(kappa, F))))
    rhs = comm.allreduce(float(np.vdot(fast.apply_transpose(kappa, V), F)))
    scale = abs(lhs) + 1.0
    assert abs(lhs - rhs) <= 1e-13 * scale and abs(lhs - g @ kappa / 0.3) <= 1e-13 * scale
    assert close(fast.apply(kappa, F[:, 0]), fast.apply(kappa, F)[:, 0])
    # the grid path builds the CSR matrices on first use only, and they are the CSR path's
    assert fast._csr is None and csr._csr is not None
    assert close(fast.matrix(kappa) @ fast._extended(F), csr.apply(kappa, F))
    sp.destroy()


@pytest.mark.mpi
@pytest.mark.parametrize("im2col", [True, False])
@pytest.mark.parametrize("m", [2, 4])
def test_local_grid_path_on_channel_groups(comm, m, im2col, monkeypatch):
    """A state constant on groups of m consecutive channels (what a slab boundary makes:
    the L2 projection from C/m channels copies each to its m sub-channels): the grid
    path's grouped product and outer product (the groups' summed kernel on one channel of
    each group, 1/m of the multiply-adds), and the group sums of its grouped B^T (read
    back through the projection's transpose) equal the plain ones to 1e-13 relative in
    float64, serially and on 2 and 3 ranks; in float32 each entry is within the
    summation bound 2 n u (B_|kappa| |f|) of the float64 one (n = 25 C terms, u the unit
    round-off; kappa's Q1 weights are nonnegative, so B_|kappa| |f| bounds the terms'
    absolute sum). Both ways of the grouped product: one im2col GEMM (a shallow depth,
    here 15-30) and the per-pixel GEMMs (forced by a depth limit of 0)."""
    from fem_dnn.core.kernel.grid import PixelGrid
    from fem_dnn.network.slabs import SlabProjection

    if not im2col:
        monkeypatch.setattr(PixelGrid, "IM2COL_DEPTH", 0)
    C = 4
    sp, coarse = _image_space(comm, C), _image_space(comm, C // m)
    kern = LocalKernel(sp, radius=2.2 / 7, cells=3, channels=C)
    assert kern.method == "grid"
    F = SlabProjection(coarse, sp).apply(_batch(coarse, 3, 1))
    Z = _batch(sp, 3, 2)
    kappa = np.random.default_rng(0).normal(size=kern.M)

    def close(a, b):
        top = comm.allreduce(float(np.abs(b).max()), op=MPI.MAX)
        return comm.allreduce(float(np.abs(a - b).max()), op=MPI.MAX) <= 1e-13 * top

    plain = kern.apply(kappa, F)
    assert close(kern.apply_grouped(kappa, F, m), plain)
    outer = kern.reduce(kern.outer(Z, F, kappa, 0.3))
    assert close(kern.reduce(kern.outer_grouped(Z, F, kappa, m, 0.3)), outer)  # the padded box of F's product, kept
    # another state's product in between: the outer product pads F again (ArrayMemo's identity)
    F2 = SlabProjection(coarse, sp).apply(_batch(coarse, 3, 5))
    kern.apply_grouped(kappa, F2, m)
    assert close(kern.reduce(kern.outer_grouped(Z, F, kappa, m, 0.3)), outer)
    # B^T's sums over the groups (what the transfer's transpose reads): P^T of the grouped
    # and of the plain transpose agree, and the grouped one is zero off the groups' first channels
    back = SlabProjection(coarse, sp)
    grouped_T = kern.apply_transpose_grouped(kappa, Z, m, 0.7)
    assert close(back.apply_transpose(grouped_T), back.apply_transpose(kern.apply_transpose(kappa, Z, 0.7)))
    assert comm.allreduce(int(np.count_nonzero(np.abs(grouped_T).max(axis=1)))) == sp.n // m
    bound = 2 * 25 * C * np.finfo(np.float32).eps / 2 * kern.apply(np.abs(kappa), np.abs(F))
    single = kern.apply_grouped(kappa, F.astype(np.float32), m)
    assert single.dtype == np.float32
    assert comm.allreduce(bool(np.all(np.abs(single - plain) <= bound)), op=MPI.LAND)
    sp.destroy(), coarse.destroy()


def test_local_grid_path_refusals():
    """The grid path needs a structured DG0 pixel grid: P1 nodes and a triangle mesh's
    DG0 cells fall back to the CSR path (``auto``) or are refused (``grid``)."""
    comm = MPI.COMM_SELF
    for name in ("interval-P1", "triangles-P1"):
        sp = space_of(comm, name)
        assert LocalKernel(sp, radius=0.25, cells=3).method == "csr"
        with pytest.raises(InputError, match="grid path needs a DG0 node space"):
            LocalKernel(sp, radius=0.25, cells=3, method="grid")
        sp.destroy()
    tri = NodeSpace(create_node_mesh(comm, "rectangle", (5, 5), cell="triangle"), "DG", 0)
    assert LocalKernel(tri, radius=0.25, cells=3).method == "csr"
    with pytest.raises(InputError, match="unknown local kernel method 'fft'"):
        LocalKernel(tri, radius=0.25, method="fft")
    tri.destroy()


@pytest.mark.parametrize("kernel", ["local-grid", "local-csr", "lowrank"])
@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_structured_kernels_float32_agree_with_float64(scheme, kernel):
    """A float32 network with the local kernel (both paths) or the low-rank kernel on a
    6 x 6 x 2 channels image: J, dJ and a Hessian action within 1e-5 relative of float64
    (measured at most 7e-10, 1e-8, 5e-8: float32's unit round-off 6e-8 times the growth
    of a few layers), the states float32 and within 1e-5 of float64's (measured 1e-7),
    the trajectory with its tape half float64's bytes (every product stays float32)."""
    sp = _image_space(MPI.COMM_SELF, 2, (6, 6))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, sp.n)), rng.integers(0, 3, 20)
    out = {}
    for dtype in ("float64", "float32"):
        kern = (LowRankKernel(sp, 3) if kernel == "lowrank"
                else LocalKernel(sp, radius=2 / 6, cells=4, channels=2, method=kernel.split("-")[1]))
        J = ReducedFunctional(Network(sp, Depth(T=1.0, N=4), "tanh", scheme, kernel=kern, dtype=dtype), X, y,
                              "classes", K=3, lam=1e-3)
        m = J.controls.random(1, 0.5)
        traj = J.trajectory(m)
        out[dtype] = (J(m), J.derivative(m).copy(), J.hessian(m, J.controls.random(2, 1.0)).copy(), traj.states,
                      traj.nbytes)
        J.destroy()
    (J64, g64, h64, s64, b64), (J32, g32, h32, s32, b32) = out["float64"], out["float32"]
    assert s32.dtype == np.float32 and s64.dtype == np.float64
    assert b32 * 2 == b64
    assert abs(J32 / J64 - 1) < 1e-5
    for a, b in ((g32, g64), (h32, h64)):
        d = a.copy()
        d.axpy(-1.0, b)
        assert d.norm() <= 1e-5 * b.norm(), (d.norm() / b.norm())
    assert np.abs(s32 - s64).max() <= 1e-5 * np.abs(s64).max()
    sp.destroy()


def _kappa_at(kern, kappa, pts):
    """kappa (one channel pair's ``(Ms,)`` coefficients) at points ``(p, d)``: its Q1
    interpolant on the offset box, zero outside (the definition, pointwise)."""
    from fem_dnn.core.kernel import q1_basis

    inside = np.all(np.abs(pts) <= kern.radius, axis=1)
    out = np.zeros(pts.shape[0])
    r, c, v = q1_basis(pts[inside], kern.radius, kern.cells)
    np.add.at(out, np.nonzero(inside)[0][r], v * kappa[c])
    return out


def _lag_reference(kern, kappa, o, h, delta):
    """int kappa(o + s) prod_a (h_a - |s_a|) ds over [-h, h]^d (the double integral over two
    cells of widths h at the centre offset o), by 3-point Gauss-Legendre on a uniform
    subdivision of step delta, which every breakpoint (kappa's grid lines, s = 0, +-h)
    lies on: exact up to round-off for the piecewise polynomial integrand."""
    x, w = np.polynomial.legendre.leggauss(3)
    axes = []
    for a in range(len(h)):
        k = int(round(2 * h[a] / delta))
        lo = -h[a] + delta * np.arange(k)
        pts = (lo[:, None] + 0.5 * delta * (x + 1)).ravel()
        axes.append((pts, (np.tile(0.5 * delta * w, k) * (h[a] - np.abs(pts)))))
    P = np.stack([g.ravel() for g in np.meshgrid(*[p for p, _ in axes], indexing="ij")], axis=1)
    W = np.ones(1)
    for _, wa in axes:
        W = np.multiply.outer(W, wa).ravel()
    return float(W @ _kappa_at(kern, kappa, o + P))


@pytest.mark.parametrize("case", ["1d-multiple", "1d-not", "1d-C2", "2d-multiple", "2d-not"])
def test_local_exact_entries_against_brute_force(case):
    """The exact rule's entries ``B_ij = omega_j avg_{K_i x K_j} kappa_{c_i c_j}(y - z)``
    against an independent fine quadrature of the double integral (its lag form
    int kappa(o + s) prod_a (h_a - |s_a|) ds, on a subdivision through every breakpoint),
    to 1e-12 relative, for rho a multiple of h and not, in 1-D and 2-D, C = 1 and 2
    (channels dense with weights 1/C); in 1-D the lag form itself against the genuine
    double integral (nested adaptive quadrature) on a few pairs."""
    from scipy.integrate import quad

    comm = MPI.COMM_SELF
    d = 2 if case.startswith("2d") else 1
    C = 2 if case.endswith("C2") else 1
    rho, cells = (1 / 3, 4) if case.endswith("multiple") else (0.25, 3)  # h = 1/6: 2 h, or 1.5 h
    if C > 1:
        sp = NodeSpace(create_node_mesh(comm, "rectangle", (6, C), cell="quadrilateral"), "DG", 0)
    else:
        sp = NodeSpace(create_node_mesh(comm, "interval" if d == 1 else "rectangle", 6 if d == 1 else (6, 6),
                                        cell=None if d == 1 else "quadrilateral"), "DG", 0)
    kern = LocalKernel(sp, radius=rho, cells=cells, channels=C, method="csr")
    assert kern.quadrature == "exact" and kern.describe()["kernel_quadrature"] == "exact"
    kappa = np.random.default_rng(5).normal(size=kern.M)
    B = kern.matrix(kappa).toarray()
    h = np.full(d, 1 / 6)
    ch = np.clip(np.floor(sp.x_all[1] * C), 0, C - 1).astype(int) if C > 1 else np.zeros(sp.n, int)
    err, top = 0.0, np.abs(B).max()
    for i in range(sp.n):
        for j in range(sp.n):
            o = sp.x_all[:d, i] - sp.x_all[:d, j]
            if np.any(np.abs(o) >= rho + h - 1e-12):
                ref = 0.0
            else:
                kp = kappa.reshape(C, C, -1)[ch[i], ch[j]]
                ref = sp.weights_all[j] / np.prod(h) ** 2 * _lag_reference(kern, kp, o, h, 1 / 24)
            err = max(err, abs(B[i, j] - ref))
    assert err <= 1e-12 * top, (err, top)
    if d == 1:  # the lag form is the double integral over the two cells
        y = np.unique(sp.x_all[0])  # the cell centres
        kp = kappa.reshape(C, C, -1)[0, 0]
        f = lambda z, yy: _kappa_at(kern, kp, np.array([[yy - z]]))[0]  # noqa: E731
        grid = -rho + 2 * rho / cells * np.arange(cells + 1)
        for ci, cj in ((y[2], y[2]), (y[2], y[0]), (y[4], y[2])):
            inner = lambda yy: quad(f, cj - h[0] / 2, cj + h[0] / 2, args=(yy,), points=list(yy - grid),  # noqa: E731
                                    epsabs=1e-14, epsrel=1e-13, limit=200)[0]
            outer = quad(inner, ci - h[0] / 2, ci + h[0] / 2, points=list(cj + grid + 0 * h[0]) +
                         list(cj + grid - h[0] / 2) + list(cj + grid + h[0] / 2), epsabs=1e-14, epsrel=1e-13, limit=200)[0]
            lag = _lag_reference(kern, kp, np.array([ci - cj]), h, 1 / 24)
            assert abs(outer - lag) <= 1e-11 * (abs(lag) + 1e-3), (ci, cj, outer, lag)
    sp.destroy()


@pytest.mark.parametrize("case", ["1d", "2d", "1d-C2"])
def test_local_exact_rule_is_galerkin_consistent_under_nesting(case):
    """On a DG0 mesh and its uniform refinement (2x per image axis), with Pi the injection
    of the coarse-constant functions, ``Pi^T M_fine B_fine Pi = M_coarse B_coarse`` to
    round-off with the exact rule (what makes refinement exact), for rho a multiple of
    the fine cells and not; the nodal rule is not (the check is not vacuous)."""
    comm = MPI.COMM_SELF
    C = 2 if case.endswith("C2") else 1

    def mesh(k):
        if C > 1:
            return create_node_mesh(comm, "rectangle", (k, C), cell="quadrilateral")
        return create_node_mesh(comm, "interval", k) if case == "1d" else \
            create_node_mesh(comm, "rectangle", (k, k), cell="quadrilateral")

    coarse, fine = NodeSpace(mesh(6), "DG", 0), NodeSpace(mesh(12), "DG", 0)
    d = 1 if C > 1 or case == "1d" else 2
    hc = np.r_[[1 / 6] * d, [1 / C] * (C > 1)]
    # Pi[f, c] = 1 where the fine cell lies in the coarse one
    Pi = np.all(np.abs(fine.x_all[: len(hc), :, None] - coarse.x_all[: len(hc), None, :]) < hc[:, None, None] / 2, axis=0)
    assert np.all(Pi.sum(axis=1) == 1)
    for rho, cells in ((1 / 3, 4), (0.29, 3)):
        gaps = {}
        for rule in ("exact", "nodal"):
            kc = LocalKernel(coarse, radius=rho, cells=cells, channels=C, method="csr", quadrature=rule)
            kf = LocalKernel(fine, radius=rho, cells=cells, channels=C, method="csr", quadrature=rule)
            kappa = np.random.default_rng(2).normal(size=kc.M)
            Mc = coarse.weights_all[:, None] * kc.matrix(kappa).toarray()
            Mf = fine.weights_all[:, None] * kf.matrix(kappa).toarray()
            gaps[rule] = np.abs(Pi.T @ Mf @ Pi - Mc).max() / np.abs(Mc).max()
        assert gaps["exact"] <= 1e-13 and gaps["nodal"] > 1e-3, (rho, gaps)
    coarse.destroy(), fine.destroy()


def test_local_quadrature_choice():
    """auto is exact on DG0 box cells, nodal on P1 and on triangles; exact is refused
    there; an unknown rule is refused; the description records the rule."""
    comm = MPI.COMM_SELF
    box = space_of(comm, "quads-DG0")
    assert LocalKernel(box, radius=0.25).quadrature == "exact"
    assert LocalKernel(box, radius=0.25, quadrature="nodal").describe()["kernel_quadrature"] == "nodal"
    for name in ("interval-P1", "triangles-P1"):
        sp = space_of(comm, name)
        assert LocalKernel(sp, radius=0.25).quadrature == "nodal"
        with pytest.raises(InputError, match="exact quadrature needs a DG0 node space on axis-aligned box cells"):
            LocalKernel(sp, radius=0.25, quadrature="exact")
        sp.destroy()
    tri = NodeSpace(create_node_mesh(comm, "rectangle", (5, 5), cell="triangle"), "DG", 0)
    assert LocalKernel(tri, radius=0.25).quadrature == "nodal"
    with pytest.raises(InputError, match="unknown local kernel quadrature 'gauss'"):
        LocalKernel(box, radius=0.25, quadrature="gauss")
    tri.destroy(), box.destroy()
