"""Depth slabs (fem_dnn.network.slabs): the L2 projection between the slabs' node
spaces and its exact transpose, and the exact gradient and Hessian action of a network
whose node mesh coarsens along depth (28x28x8 -> 14x14x16 in the small: 12x12 -> 6x6x2
-> 3x3x4), on 1, 2 and 3 ranks against the serial result."""

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.core.depth import Depth
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.core.images import create_image_mesh
from fem_dnn.core.kernel import LocalKernel
from fem_dnn.errors import InputError
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.learning.verify import taylor_test
from fem_dnn.network import Network
from fem_dnn.network.slabs import SlabMaxPooling, SlabNetwork, SlabProjection

#: (pixels, channels) of each slab
SLABS = [((12, 12), 1), ((6, 6), 2), ((3, 3), 4)]


def image_space(comm, pixels, C):
    mesh = create_image_mesh(comm, pixels, C) if C > 1 else create_node_mesh(comm, "rectangle", pixels,
                                                                             cell="quadrilateral")
    return NodeSpace(mesh, "DG", 0)


@pytest.fixture
def slab_spaces(comm):
    spaces = [image_space(comm, p, C) for p, C in SLABS]
    yield spaces
    for sp in spaces:
        sp.destroy()


def natural(sp, F):
    """Owned rows (n_local, S) -> (S, n) natural order on every rank."""
    return sp.to_natural(np.ascontiguousarray(F.T), axis=1)


@pytest.mark.mpi
def test_projection_is_the_l2_projection_and_its_transpose_is_exact(comm, slab_spaces):
    """P reproduces constants, keeps the integral (P is the L2 projection onto a space that
    holds the constants), is the pixel average on nested meshes, and <V, P F> = <P^T V, F>
    to round-off; the same in natural order on any number of ranks."""
    rng = np.random.default_rng(0)
    for i, (src, dst) in enumerate(zip(slab_spaces, slab_spaces[1:])):
        P = SlabProjection(src, dst)
        S = 3
        Fn, Vn = rng.standard_normal((S, src.n)), rng.standard_normal((S, dst.n))
        F = np.asfortranarray(src.from_natural(Fn, axis=1).T)
        V = np.asfortranarray(dst.from_natural(Vn, axis=1).T)
        PF = P.apply(F)
        assert np.allclose(P.apply(np.ones((src.n_local, 1), order="F")), 1.0, rtol=0, atol=1e-14)
        integral = comm.allreduce(float((src.weights[: src.n_local] @ F).sum()))
        assert abs(comm.allreduce(float((dst.weights[: dst.n_local] @ PF).sum())) - integral) <= 1e-13 * (
            1 + abs(integral))
        lhs = comm.allreduce(float(np.vdot(V, PF)))
        rhs = comm.allreduce(float(np.vdot(P.apply_transpose(V), F)))
        assert abs(lhs - rhs) <= 1e-13 * (1 + abs(lhs))
        # the serial projection of the same natural-order data
        s_src, s_dst = image_space(MPI.COMM_SELF, *SLABS[i]), image_space(MPI.COMM_SELF, *SLABS[i + 1])
        ref = natural(s_dst, SlabProjection(s_src, s_dst).apply(np.asfortranarray(s_src.from_natural(Fn, axis=1).T)))
        assert np.allclose(natural(dst, PF), ref, rtol=0, atol=1e-14)
        s_src.destroy(), s_dst.destroy()


def test_projection_on_nested_pixels_is_the_average():
    """8x8 (one channel) -> 4x4 x 2 channels: each coarse (pixel, channel) cell holds the
    mean of the 2x2 fine pixels under it, whatever its channel."""
    src, dst = image_space(MPI.COMM_SELF, (8, 8), 1), image_space(MPI.COMM_SELF, (4, 4), 2)
    rng = np.random.default_rng(1)
    Fn = rng.standard_normal((1, src.n))
    out = natural(dst, SlabProjection(src, dst).apply(np.asfortranarray(src.from_natural(Fn, axis=1).T)))[0]
    x_src = np.empty_like(src.x_all)
    x_src[:, src.nat_of_global] = src.x_all
    x_dst = np.empty_like(dst.x_all)
    x_dst[:, dst.nat_of_global] = dst.x_all
    for j in range(dst.n):
        inside = (np.abs(x_src[0] - x_dst[0, j]) < 0.125) & (np.abs(x_src[1] - x_dst[1, j]) < 0.125)
        assert inside.sum() == 4
        assert abs(out[j] - Fn[0, inside].mean()) <= 1e-14
    src.destroy(), dst.destroy()


@pytest.mark.mpi
def test_max_pooling_and_its_exact_derivative(comm, slab_spaces):
    """Q on nested pixels is the largest of the 2x2 fine pixels under each coarse cell (the
    serial max in natural order, on any number of ranks); its derivative routes dF from
    the maximisers, so Q(F + h dF) = Q(F) + h dQ(F) dF exactly for h below the smallest
    gap between a maximum and the runner-up; and <V, dQ(F) dF> = <dQ(F)^T V, dF>."""
    rng = np.random.default_rng(3)
    for i, (src, dst) in enumerate(zip(slab_spaces, slab_spaces[1:])):
        Q, S = SlabMaxPooling(src, dst), 3
        Fn, dFn, Vn = rng.standard_normal((S, src.n)), rng.standard_normal((S, src.n)), rng.standard_normal((S, dst.n))
        F, dF = (np.asfortranarray(src.from_natural(x, axis=1).T) for x in (Fn, dFn))
        V = np.asfortranarray(dst.from_natural(Vn, axis=1).T)
        QF = natural(dst, Q.apply(F))
        # the max of the fine cells under each coarse cell, from the cells' centres (serial, natural order)
        x_src, x_dst = np.empty_like(src.x_all), np.empty_like(dst.x_all)
        x_src[:, src.nat_of_global], x_dst[:, dst.nat_of_global] = src.x_all, dst.x_all
        # the boxes overlap: the centres closer than the half widths' sum on every axis
        (p0, q0), c0 = SLABS[i]
        (p1, q1), c1 = SLABS[i + 1]
        if c0 == 1:  # one channel, a 2-D mesh: the image x [0, 1]
            x_src[2] = 0.5
        reach = 0.5 * np.array([1 / p0 + 1 / p1, 1 / q0 + 1 / q1, 1 / c0 + 1 / c1])
        gap = np.inf
        for j in range(dst.n):
            under = np.all(np.abs(x_src - x_dst[:, j:j + 1]) < reach[:, None] - 1e-12, axis=0)
            assert under.sum() == 4
            top = np.sort(Fn[:, under], axis=1)
            assert np.array_equal(QF[:, j], top[:, -1])
            gap = min(gap, float((top[:, -1] - top[:, -2]).min()))
        h = 0.4 * gap / np.abs(dFn).max()  # no maximiser changes along F + t h dF, t in [0, 1]
        moved = natural(dst, Q.apply(F + h * dF))
        assert np.allclose(moved, QF + h * natural(dst, Q.tangent(F, dF)), rtol=0, atol=1e-14)
        lhs = comm.allreduce(float(np.vdot(V, Q.tangent(F, dF))))
        rhs = comm.allreduce(float(np.vdot(Q.transpose(F, V), dF)))
        assert abs(lhs - rhs) <= 1e-13 * (1 + abs(lhs))


@pytest.mark.mpi
@pytest.mark.parametrize("pixels", [(6, 6), (5, 4)])
def test_max_pooling_transpose_on_disjoint_and_overlapping_windows(comm, pixels):
    """The max pooling's transpose is the adjoint of its derivative, <V, dQ(F) dF> =
    <dQ(F)^T V, dF> to round-off, whether the windows are disjoint (12x12 -> 6x6 x 2
    channels: a scatter after the channel copies are summed) or overlap (12x12 -> 5x4,
    nested in neither axis: the summed scatter), on 1, 2 and 3 ranks."""
    src, dst = image_space(comm, (12, 12), 1), image_space(comm, pixels, 2)
    Q = SlabMaxPooling(src, dst)
    overlapping = comm.allreduce(int(not Q._disjoint))  # ranks whose own windows overlap
    assert overlapping == 0 if pixels == (6, 6) else overlapping >= 1
    rng = np.random.default_rng(4)
    F = np.asfortranarray(src.from_natural(rng.standard_normal((3, src.n)), axis=1).T)
    dF = np.asfortranarray(src.from_natural(rng.standard_normal((3, src.n)), axis=1).T)
    V = np.asfortranarray(dst.from_natural(rng.standard_normal((3, dst.n)), axis=1).T)
    Q.apply(F)
    lhs = comm.allreduce(float(np.vdot(V, Q.tangent(F, dF))))
    rhs = comm.allreduce(float(np.vdot(Q.transpose(F, V), dF)))
    assert abs(lhs - rhs) <= 1e-13 * (1 + abs(lhs))
    src.destroy(), dst.destroy()


def make(comm, spaces, scheme="euler", N=(2, 2, 1), S=6, K=3, seed=0, pooled=None, pooling="average",
         quadrature="auto", decay=0.0):
    """The small slab network and J; ``pooled``: the readout's node space (a pooled
    readout); ``pooling``: the slab transfer; ``quadrature``: the kernels' rule;
    ``decay``: the slabs' relaxation rate."""
    nets = []
    for sp, (pixels, C), n_layers in zip(spaces, SLABS, N):
        kern = LocalKernel(sp, radius=1.0 / pixels[0], cells=2, channels=C, quadrature=quadrature)
        nets.append(Network(sp, Depth(T=1.0 / len(SLABS), N=n_layers), "tanh", scheme, kernel=kern, decay=decay))
    net = SlabNetwork(nets, readout_space=pooled, pooling=pooling)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((S, spaces[0].n))
    y = np.arange(S) % K
    J = ReducedFunctional(net, X, y, "classes", K=K, lam=1e-3)
    return net, J


@pytest.mark.mpi
@pytest.mark.parametrize("scheme, pooling, decay", [("euler", "average", 0.0), ("rk4", "average", 0.0),
                                                    ("euler", "max", 0.0), ("heun", "max", 1.5)])
def test_slab_network_taylor(comm, slab_spaces, scheme, pooling, decay):
    """The gradient and the Hessian action across two slab boundaries (the L2 projection,
    or the max pooling: piecewise linear, its second derivative zero away from ties, which
    the steps here do not cross; with and without the relaxation term): remainder rates
    2 and 3, on 1, 2 and 3 ranks."""
    net, J = make(comm, slab_spaces, scheme, pooling=pooling, decay=decay)
    m = J.controls.random(1, 0.5)
    dm = J.controls.random(2)
    res = taylor_test(J, m, dm, J.derivative(m), J.hessian(m, dm), step=1e-2, n_steps=4)
    assert res.min_rate(1) > 1.9, str(res)
    assert res.min_rate(2) > 2.85, str(res)
    J.destroy(), net.destroy()


@pytest.mark.mpi
def test_max_pooled_readout_taylor(comm, slab_spaces):
    """The classes readout of the last state max-pooled to one pixel a channel (the
    continuum global max pooling, 3x3x4 -> 1x1x4) behind max pooling at the slab
    boundaries: remainder rates 2 and 3 on 1, 2 and 3 ranks."""
    pooled = NodeSpace(create_image_mesh(comm, (1, 1), SLABS[-1][1], spare_ranks=True), "DG", 0)
    nets = []
    for sp, (pixels, C), n_layers in zip(slab_spaces, SLABS, (2, 2, 1)):
        kern = LocalKernel(sp, radius=1.0 / pixels[0], cells=2, channels=C)
        nets.append(Network(sp, Depth(T=1.0 / len(SLABS), N=n_layers), "tanh", "euler", kernel=kern))
    net = SlabNetwork(nets, readout_space=pooled, pooling="max", readout_pooling="max")
    rng = np.random.default_rng(0)
    J = ReducedFunctional(net, rng.standard_normal((6, slab_spaces[0].n)), np.arange(6) % 3, "classes", K=3, lam=1e-3)
    m, dm = J.controls.random(1, 0.5), J.controls.random(2)
    res = taylor_test(J, m, dm, J.derivative(m), J.hessian(m, dm), step=1e-2, n_steps=4)
    assert res.min_rate(1) > 1.9, str(res)
    assert res.min_rate(2) > 2.85, str(res)
    for x in (J, net, pooled):
        x.destroy()


@pytest.mark.mpi
def test_pooled_readout(comm, slab_spaces):
    """The classes readout of the last state averaged to one pixel a channel (the
    continuum global average pooling, 3x3x4 -> 1x1x4): J equals the unpooled readout's
    with W constant over each channel's pixels (to round-off); the gradient and the
    Hessian action keep remainder rates 2 and 3; the same on 1, 2 and 3 ranks."""
    pooled = NodeSpace(create_image_mesh(comm, (1, 1), SLABS[-1][1], spare_ranks=True), "DG", 0)
    net, J = make(comm, slab_spaces, "heun", pooled=pooled)
    m = J.controls.random(1, 0.5)
    dm = J.controls.random(2)
    res = taylor_test(J, m, dm, J.derivative(m), J.hessian(m, dm), step=1e-2, n_steps=4)
    assert res.min_rate(1) > 1.9, str(res)
    assert res.min_rate(2) > 2.85, str(res)
    nat = J.controls.natural(m)
    assert nat["W"].shape == (3, SLABS[-1][1])
    full_net, full = make(comm, slab_spaces, "heun")
    last = slab_spaces[-1]
    # W constant over each channel's pixels: the channel of every natural-order node of the last slab
    x_nat = last.to_natural(last.x_owned[-1], axis=0)
    chan = np.clip(np.floor(x_nat * SLABS[-1][1]), 0, SLABS[-1][1] - 1).astype(int)
    m_full = full.controls.from_natural(nat["a"], nat["b"], nat["W"][:, chan], nat["mu"])
    assert abs(full(m_full) - J(m)) <= 1e-12 * abs(J(m))
    for x in (J, net, full, full_net, pooled):
        x.destroy()


@pytest.mark.mpi(ranks=(2, 3))
@pytest.mark.parametrize("pooling", ["average", "max"])
def test_slab_network_matches_serial(comm, slab_spaces, pooling):
    """J and the gradient in natural order on 2 and 3 ranks equal the serial ones."""
    net, J = make(comm, slab_spaces, pooling=pooling)
    m = J.controls.random(1, 0.5)
    g = J.controls.natural(J.derivative(m))
    val = J(m)
    serial = [image_space(MPI.COMM_SELF, p, C) for p, C in SLABS]
    net1, J1 = make(MPI.COMM_SELF, serial, pooling=pooling)
    m1 = J1.controls.random(1, 0.5)
    g1 = J1.controls.natural(J1.derivative(m1))
    assert abs(val - J1(m1)) <= 1e-13 * abs(val)
    for key in ("a", "b"):
        for x, x1 in zip(g[key], g1[key]):
            assert np.allclose(x, x1, rtol=0, atol=1e-13 * np.abs(x1).max())
    for key in ("W", "mu"):
        assert np.allclose(g[key], g1[key], rtol=0, atol=1e-13 * np.abs(g1[key]).max())
    J.destroy(), net.destroy(), J1.destroy(), net1.destroy()
    for sp in serial:
        sp.destroy()


@pytest.mark.mpi
def test_slab_first_stage_reads_the_channel_groups(comm, slab_spaces):
    """A slab whose state enters from fewer channels (1 -> 2 -> 4 here; the input's one
    channel copied to all C of a first slab) is constant on groups of C_prev channels
    at its first depth point: the slabs find the groups (2, 2; the lift C), and J and
    the gradient with the groups' summed kernels (the forward product, the gradient's
    outer product, and the group sums of B^T in the dual a slab passes back) equal those
    with the plain products (groups 1) to 1e-13, on 1, 2 and 3 ranks, for Heun (whose
    second stage reads a state without groups), the relaxation term and max pooling.
    Data on a one-channel image before a 2-channel first slab: the first slab's groups
    are 2."""
    net, J = make(comm, slab_spaces, "heun", pooling="max", decay=1.5)
    plain_net, plain = make(comm, slab_spaces, "heun", pooling="max", decay=1.5)
    assert net.groups == [1, 2, 2]
    plain_net.groups = [1, 1, 1]
    m = J.controls.random(1, 0.5)
    assert abs(J(m) - plain(m)) <= 1e-13 * abs(plain(m))
    g, g1 = J.controls.natural(J.derivative(m)), plain.controls.natural(plain.derivative(m))
    for key in ("a", "b"):
        for x, x1 in zip(g[key], g1[key]):
            assert np.allclose(x, x1, rtol=0, atol=1e-13 * np.abs(x1).max())
    for x in (J, net, plain, plain_net):
        x.destroy()
    image, first = slab_spaces[0], image_space(comm, SLABS[0][0], 2)
    kern = LocalKernel(first, radius=1.0 / 12, cells=2, channels=2)
    lifted = SlabNetwork([Network(first, Depth(T=1.0, N=1), "tanh", "euler", kernel=kern)], input_space=image)
    assert lifted.groups == [2]
    lifted.destroy(), first.destroy()


def test_one_slab_is_the_uniform_network(comm):
    """A slab network of one slab has the uniform network's J and gradient, bit for bit."""
    sp = image_space(comm, (4, 4), 2)
    kern = LocalKernel(sp, radius=0.25, cells=2, channels=2)
    net = Network(sp, Depth(T=1.0, N=3), "tanh", "heun", kernel=kern)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((5, sp.n)), np.arange(5) % 3
    J = ReducedFunctional(net, X, y, "classes", K=3, lam=1e-3)
    Js = ReducedFunctional(SlabNetwork([net]), X, y, "classes", K=3, lam=1e-3)
    m, ms = J.controls.random(4, 0.5), Js.controls.random(4, 0.5)
    assert np.array_equal(m.array_r, ms.array_r)
    assert J(m) == Js(ms)
    assert np.array_equal(J.derivative(m).array_r, Js.derivative(ms).array_r)
    J.destroy(), Js.destroy(), net.destroy(), sp.destroy()


def test_slabs_refuse_what_they_cannot_join():
    """Node spaces that are not DG0 boxes, or do not cover the same domain, are refused."""
    a = NodeSpace(create_node_mesh(MPI.COMM_SELF, "rectangle", (4, 4), cell="quadrilateral"), "P", 1)
    b = image_space(MPI.COMM_SELF, (2, 2), 2)
    with pytest.raises(InputError, match="DG0 node spaces of axis-aligned box cells"):
        SlabProjection(a, b)
    c = NodeSpace(create_node_mesh(MPI.COMM_SELF, "interval", 4), "DG", 0)
    with pytest.raises(InputError, match="same image"):
        SlabProjection(c, b)
    a.destroy(), b.destroy(), c.destroy()


@pytest.mark.mpi
def test_slab_controls_transfer_slab_by_slab(comm, slab_spaces):
    """:func:`transfer_controls` moves a slab network's controls slab by slab: to the same
    slabs it is the identity; to slabs of twice the pixels (24x24 -> 12x12x2 -> 6x6x4) with
    kappa = 0 every state is pointwise (f' = sigma(a)), so on inputs that are the coarse
    ones copied to the fine pixels the fine network's outputs are the coarse ones to
    round-off (a, W moved by the DG0 interpolation, the projections and the readout's
    mass consistent); on 1, 2 and 3 ranks."""
    from fem_dnn.learning.transfer import interpolation_matrix, transfer_controls

    net, J = make(comm, slab_spaces)
    m = J.controls.random(1, 0.5)
    same = transfer_controls(J.controls, m, J.controls)
    assert np.array_equal(same.array_r, m.array_r)
    nat = J.controls.natural(m)
    m0 = J.controls.from_natural(nat["a"], [np.zeros_like(b) for b in nat["b"]], nat["W"], nat["mu"])
    fine_spaces = [image_space(comm, (2 * p[0], 2 * p[1]), C) for p, C in SLABS]
    fine_nets = []
    for sp, (pixels, C), n_layers in zip(fine_spaces, SLABS, (2, 2, 1)):
        kern = LocalKernel(sp, radius=1.0 / pixels[0], cells=4, channels=C)
        fine_nets.append(Network(sp, Depth(T=1.0 / len(SLABS), N=n_layers), "tanh", "euler", kernel=kern))
    fine = SlabNetwork(fine_nets)
    I = interpolation_matrix(slab_spaces[0], fine_spaces[0])  # the coarse pixels' values copied to the fine ones
    X = np.random.default_rng(0).standard_normal((6, slab_spaces[0].n))
    y = np.arange(6) % 3
    Jc = ReducedFunctional(net, X, y, "classes", K=3, lam=0.0)
    Jf = ReducedFunctional(fine, X @ I.T, y, "classes", K=3, lam=0.0)
    mf = transfer_controls(Jc.controls, m0, Jf.controls)
    assert abs(Jf(mf) - Jc(m0)) <= 1e-12 * abs(Jc(m0))
    assert Jf.accuracy(mf) == Jc.accuracy(m0)
    for x in (Jf, Jc, J, fine, net):
        x.destroy()
    for sp in fine_spaces:
        sp.destroy()


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="runs the command line's train in-process, serially")
def test_train_resume_and_evaluate_with_slabs(tmp_path):
    """A slab network from the config (digits 8x8 -> 4x4 x 2 channels): Adam resumed after
    an epoch ends where the straight run ends, bit for bit (the checkpoint holds every
    slab's blocks and Adam's moments); the slab figures and each slab's depth series of
    fields are written; ``evaluate``
    reproduces the final metrics and refuses another discretisation; L-BFGS trains it
    too; a uniform network's checkpoint is refused by name."""
    from fem_dnn.app.config import load_config
    from fem_dnn.app.evaluate import evaluate
    from fem_dnn.app.train import train

    base = ["data.samples=200", "network.kernel='local'", "network.slab_pixels=[8, 4]", "network.slab_channels=[1, 2]",
            "network.slab_layers=[1, 2]", "network.slab_support=1", "training.method='adam'", "training.lr=0.01",
            "training.batch_size=50", "training.init_scale=0.1", "output.fields=false",
            "output.figures=false"]
    quiet = dict(out=lambda *a: None)
    straight = train(load_config(None, base + ["training.epochs=2", f"output.folder='{tmp_path / 'a'}'",
                                               "output.figures=true", "output.fields=true"]), MPI.COMM_SELF, **quiet)
    assert all((tmp_path / "a" / f).is_file() for f in ("training.png", "states.png", "weights.png"))
    assert all((tmp_path / "a" / "fields" / f"slab{i}.bp").is_dir() for i in (0, 1))  # VTX: a folder a file
    train(load_config(None, base + ["training.epochs=1", f"output.folder='{tmp_path / 'b'}'"]), MPI.COMM_SELF, **quiet)
    resumed = train(load_config(None, base + ["training.epochs=2", f"output.folder='{tmp_path / 'b'}'"]), MPI.COMM_SELF,
                    resume=True, **quiet)
    assert resumed["J"] == straight["J"] and resumed["test_accuracy"] == straight["test_accuracy"]
    assert straight["neurons"] == [64, 32] and straight["layers"] == 3
    ev = evaluate(tmp_path / "b", MPI.COMM_SELF, **quiet)
    assert ev["test_accuracy"] == resumed["test_accuracy"] and abs(ev["J"] - resumed["J"]) <= 1e-12 * resumed["J"]
    with pytest.raises(InputError, match=r"a network of depth slabs moves to another data.resolution \(and slab_pixels\) only"):
        evaluate(tmp_path / "b", MPI.COMM_SELF, overrides=["node.refine=2"], **quiet)
    lbfgs = train(load_config(None, base + ["training.method='lbfgs'", "training.max_it=5",
                                            f"output.folder='{tmp_path / 'c'}'"]), MPI.COMM_SELF, **quiet)
    import csv

    with open(tmp_path / "c" / "metrics.csv", newline="") as fh:
        J = [float(r["J"]) for r in csv.DictReader(fh)]
    assert lbfgs["iterations"] <= 5 and len(J) == lbfgs["iterations"] + 1
    assert all(b <= a for a, b in zip(J, J[1:])) and J[-1] < J[0]  # the line search's sufficient decrease
    uniform = ["data.samples=200", "network.kernel='local'", "network.kernel_radius=0.125", "training.max_it=1",
               "output.fields=false", "output.figures=false", f"output.folder='{tmp_path / 'd'}'"]
    train(load_config(None, uniform), MPI.COMM_SELF, **quiet)
    from fem_dnn.app.checkpoint import load_checkpoint
    from fem_dnn.app.run import Run

    run = Run(load_config(None, base), MPI.COMM_SELF, out=lambda *a: None)
    with pytest.raises(InputError, match=r"1 depth slab\(s\) in the file, 2 here"):
        load_checkpoint(tmp_path / "d" / "checkpoint" / "checkpoint.npz", run.J.controls)
    run.destroy()


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="serial")
def test_cosine_schedule_resumes_bitwise(tmp_path):
    """Adam with the cosine learning rate on a slab network: stopped after its first epoch
    (a metrics callback's stop) and resumed, it ends where the straight run ends, bit for
    bit (the rate is a function of the step count the checkpoint holds); and it differs
    from the constant rate (the schedule is applied)."""
    from fem_dnn.app.checkpoint import CheckpointFile
    from fem_dnn.optimize.stochastic import minibatch

    spaces = [image_space(MPI.COMM_SELF, p, C) for p, C in SLABS]
    net, J = make(MPI.COMM_SELF, spaces, S=12)
    m0 = J.controls.random(3, 0.3)
    kw = dict(lr=0.02, batch_size=5, epochs=2, seed=1, monitor=False, lr_schedule="cosine")
    a = minibatch(J, m0, "adam", checkpoint=CheckpointFile(tmp_path / "a" / "checkpoint.npz", J.controls), **kw)
    store = CheckpointFile(tmp_path / "b" / "checkpoint.npz", J.controls)
    minibatch(J, m0, "adam", checkpoint=store, metrics=lambda m, e: {"stop": "x"} if e == 1 else {}, **kw)
    b = minibatch(J, m0, "adam", checkpoint=store, resume=True, **kw)
    assert np.array_equal(a.m.array_r, b.m.array_r)
    c = minibatch(J, m0, "adam", **{**kw, "lr_schedule": "constant"})
    assert not np.array_equal(a.m.array_r, c.m.array_r)
    for r in (a, b, c):
        r.m.destroy()
    J.destroy(), net.destroy()
    for sp in spaces:
        sp.destroy()


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="runs the command line's train in-process, serially")
def test_slab_network_evaluated_at_another_resolution(tmp_path):
    """A slab network trained on 14x14 MNIST (slabs 14 -> 7 pixels, support 1 pixel) is
    evaluated on the 28x28 images: every slab's pixels and the support scale by 2 (the
    same continuum network), the controls move slab by slab, and the metrics are those
    of a classifier (finite, an accuracy in [0, 1]); with ``network.slab_pixels = [28, 7]``
    the first slab alone is refined (its support 2 pixels of 28, the later slab's mesh
    and kernel kept; given the trained pixels it is the trained network); a resolution
    whose scaled support is not a whole number of pixels, slab pixels whose first is not
    the resolution, and resolution 0, get one line."""
    from fem_dnn.app.config import load_config
    from fem_dnn.app.evaluate import evaluate
    from fem_dnn.app.train import train

    quiet = dict(out=lambda *a: None)
    cfg = ["data.name='mnist'", "data.samples=200", "data.resolution=14", "network.kernel='local'",
           "network.kernel_quadrature='trapezoid'", "network.slab_pixels=[14, 7]", "network.slab_channels=[1, 2]",
           "network.slab_layers=[1, 1]", "network.slab_support=1", "training.method='adam'", "training.epochs=1",
           "training.batch_size=50", "training.init_scale=0.1", "output.fields=false", "output.figures=false",
           f"output.folder='{tmp_path / 'r'}'"]
    trained = train(load_config(None, cfg), MPI.COMM_SELF, **quiet)
    ev = evaluate(tmp_path / "r", MPI.COMM_SELF, overrides=["data.resolution=28"], **quiet)
    assert np.isfinite(ev["J"]) and 0.0 <= ev["test_accuracy"] <= 1.0 and ev["J"] != trained["J"]
    # the first slab refined alone (the later slab keeps its 7-pixel mesh and its kernel):
    # at the trained resolution that is the trained network itself
    same = evaluate(tmp_path / "r", MPI.COMM_SELF, overrides=["data.resolution=14", "network.slab_pixels=[14, 7]"], **quiet)
    assert same["J"] == pytest.approx(trained["J"], rel=1e-12)
    first = evaluate(tmp_path / "r", MPI.COMM_SELF, overrides=["data.resolution=28", "network.slab_pixels=[28, 7]"],
                     **quiet)
    assert np.isfinite(first["J"]) and 0.0 <= first["test_accuracy"] <= 1.0 and first["J"] not in (ev["J"], trained["J"])
    with pytest.raises(InputError, match="the first the data's resolution 28"):
        evaluate(tmp_path / "r", MPI.COMM_SELF, overrides=["data.resolution=28", "network.slab_pixels=[14, 7]"], **quiet)
    with pytest.raises(InputError, match="are not whole numbers"):
        evaluate(tmp_path / "r", MPI.COMM_SELF, overrides=["data.resolution=4"], **quiet)
    with pytest.raises(InputError, match="give the pixels a side"):
        evaluate(tmp_path / "r", MPI.COMM_SELF, overrides=["data.resolution=0"], **quiet)


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="runs the command line's train in-process, serially")
def test_epoch_evaluation_off_trains_the_same_controls(tmp_path):
    """``training.epoch_evaluation = false`` (the slab recipe's) drops the full-batch J,
    gradient, train loss and train accuracy of every epoch's row, which only observe: the controls,
    the final metrics and the test curve are bit for bit those of the run that evaluates,
    and metrics.csv keeps the test columns."""
    import csv

    from fem_dnn.app.config import load_config
    from fem_dnn.app.train import train

    base = ["data.samples=200", "network.kernel='local'", "network.slab_pixels=[8, 4]", "network.slab_channels=[1, 2]",
            "network.slab_layers=[1, 1]", "network.slab_support=1", "training.method='adam'", "training.epochs=2",
            "training.batch_size=50", "training.init_scale=0.1", "output.fields=false", "output.figures=false",
            "output.test_every=1"]
    quiet = dict(out=lambda *a: None)
    on = train(load_config(None, base + [f"output.folder='{tmp_path / 'on'}'"]), MPI.COMM_SELF, **quiet)
    off = train(load_config(None, base + ["training.epoch_evaluation=false", f"output.folder='{tmp_path / 'off'}'"]),
                MPI.COMM_SELF, **quiet)
    assert off["J"] == on["J"] and off["test_accuracy"] == on["test_accuracy"]
    rows = {}
    for name in ("on", "off"):
        with open(tmp_path / name / "metrics.csv", newline="") as fh:
            rows[name] = list(csv.DictReader(fh))
    assert "J" in rows["on"][0] and "J" not in rows["off"][0] and "gnorm" not in rows["off"][0]
    assert "train_loss" in rows["on"][0] and "train_loss" not in rows["off"][0]  # nor the full pass of the loss
    assert [r["test_accuracy"] for r in rows["off"]] == [r["test_accuracy"] for r in rows["on"]]


def test_slab_pooling_names_are_the_configs():
    """``network.slab_pooling`` accepts exactly the transfers :data:`SLAB_POOLINGS` holds."""
    from fem_dnn.app.config import SPEC
    from fem_dnn.network.slabs import SLAB_POOLINGS

    check, described = SPEC["network"]["slab_pooling"][2]
    assert all(check(name) for name in SLAB_POOLINGS) and not check("min")
    assert described == f"one of {list(SLAB_POOLINGS)}"


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="serial")
def test_slab_kernel_cells_keep_kappa_a_function_of_length():
    """``network.slab_kernel_cells``: every slab's kappa has that many Q1 cells a side on
    its support, at any resolution; the 28x28 network of ``fem-dnn evaluate`` (pixels and
    support doubled, the cells kept) has kappa's nodes at the same lengths, so the
    transfer keeps the coefficients, while the default (2 support cells, one node a
    pixel) interpolates them onto twice the nodes."""
    from fem_dnn.app.config import load_config
    from fem_dnn.app.run import Run

    rng = np.random.default_rng(4)
    for cells, fine_nodes in ((1, 4), (0, 25)):
        runs = [Run(load_config(None, ["data.name='mnist'", "data.samples=40", f"data.resolution={r}",
                                       "network.kernel='local'", f"network.slab_pixels=[{r}, {r // 2}]",
                                       "network.slab_channels=[1, 2]", "network.slab_layers=[1, 1]",
                                       f"network.slab_support={r // 14}", f"network.slab_kernel_cells={cells}",
                                       "training.init_scale=0.1"]), MPI.COMM_SELF, out=lambda *a: None)
                for r in (14, 28)]
        coarse, fine = ([net.kernel for net in run.net.slabs] for run in runs)
        assert [k.cells for k in coarse] == [cells or 2] * 2 and [k.cells for k in fine] == [cells or 4] * 2
        assert all(k.Ms == fine_nodes for k in fine)
        for kc, kf in zip(coarse, fine):
            assert np.isclose(kc.radius, kf.radius, rtol=1e-12)  # one pixel of 14 = two of 28
            b = rng.standard_normal((1, kc.M))
            moved = kf.transfer(kc, b, None)
            if cells:
                assert np.array_equal(moved, b)
            else:  # kappa's Q1 interpolant: its values at the coarse nodes are kept
                assert moved.shape == (1, kf.M)
                at = np.all(np.isclose(np.abs(kf.kappa_points), kc.radius) | np.isclose(kf.kappa_points, 0), axis=0)
                C2 = kf.channels**2
                assert np.allclose(moved.reshape(C2, -1)[:, at], b.reshape(C2, -1), rtol=0, atol=1e-14)
        for run in runs:
            run.destroy()


@pytest.mark.mpi
def test_unit_gain_start_is_pytorchs_default_initialisation(comm, slab_spaces):
    """``training.init = "unit_gain"``: a = 0; every slab's B has entries ``omega kappa``
    uniform on +-1/sqrt(fan_in), fan_in the nodes a row reads (nn.Conv2d's default), the
    readout's ``omega W`` and mu uniform on +-1/sqrt(n) (nn.Linear's); the channels differ
    (no symmetric start); the same natural-order controls on 1, 2 and 3 ranks. With the
    nodal rule B's entries are kappa's nodal values times omega, so the bound is sharp."""
    net, J = make(comm, slab_spaces, quadrature="nodal")
    m = J.controls.unit_gain(5)
    nat = J.controls.natural(m)
    assert all(np.all(a == 0) for a in nat["a"])
    for slab, b in zip(net.slabs, nat["b"]):
        kern = slab.kernel
        rows = comm.allreduce(int(np.diff(kern._indptr).max()), op=MPI.MAX)
        bound = 1 / np.sqrt(rows)
        for k in range(b.shape[0]):
            B = kern.matrix(b[k]).data
            top = comm.allreduce(float(np.abs(B).max()), op=MPI.MAX)
            assert top <= bound * (1 + 1e-12) and top > 0.8 * bound  # 9 or more uniform draws a layer
        if kern.channels > 1:  # the output channels' kernels differ
            per_pair = b[0].reshape(kern.channels, kern.channels, -1)
            assert not np.allclose(per_pair[0], per_pair[1])
    n = net.space.n
    omega = float(np.mean(net.space.weights_all))
    assert np.abs(omega * nat["W"]).max() <= 1 / np.sqrt(n) and np.abs(nat["mu"]).max() <= 1 / np.sqrt(n)
    serial = [image_space(MPI.COMM_SELF, p, C) for p, C in SLABS]
    net1, J1 = make(MPI.COMM_SELF, serial, quadrature="nodal")
    nat1 = J1.controls.natural(J1.controls.unit_gain(5))
    for x, x1 in zip(nat["b"] + [nat["W"], nat["mu"]], nat1["b"] + [nat1["W"], nat1["mu"]]):
        assert np.array_equal(x, x1)
    m.destroy(), J.destroy(), net.destroy(), J1.destroy(), net1.destroy()
    for sp in serial:
        sp.destroy()
