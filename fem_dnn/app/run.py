"""A run from a config: its data and split, its discretisation (node mesh and space,
depth mesh, or depth slabs), its network and its training, validation and test
functionals (:class:`Run`); the node mesh fitted to the data's domain
(:func:`fit_to_unit_box`). Every check of the config that needs the data comes first:
a run that cannot be built is refused with one line, before anything is allocated.
"""

import copy

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn.app import data as datasets
from fem_dnn.core.depth import Depth
from fem_dnn.core.layout import split_comm
from fem_dnn.core.meshes import create_node_mesh, read_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.core.images import create_image_mesh
from fem_dnn.core.kernel import KERNELS
from fem_dnn.errors import InputError
from fem_dnn.learning.functional import ReducedFunctional
from fem_dnn.learning.losses import get_loss
from fem_dnn.network import Network

__all__ = ["FIT_TOLERANCE", "Run", "fit_to_unit_box"]


class Run:
    """Everything a config builds: layout, data split, node space, network, and the
    training and test functionals."""

    def __init__(self, cfg: dict, comm: MPI.Comm = MPI.COMM_WORLD, out=print):
        self.cfg, self.comm = cfg, comm
        self.say = (lambda *a: out(*a)) if comm.rank == 0 else (lambda *a: None)
        d, nd, nw, tr = cfg["data"], cfg["node"], cfg["network"], cfg["training"]
        self.layout = split_comm(comm, tr["sample_groups"] or comm.size)  # 0: one group a rank
        if d["resolution"] and d["name"] != "mnist":
            raise InputError(f"data.resolution applies to data.name = 'mnist' only, not {d['name']!r}")
        family = KERNELS[nw["kernel"]]
        if tr["init"] == "unit_gain" and nw["kernel"] != "local":
            raise InputError(f"training.init = 'unit_gain' starts local kernels with unit gain; network.kernel = "
                             f"{nw['kernel']!r} has no such start (use training.init_scale)")
        #: the run starts from zero controls (every channel the same, and staying so)
        self.zero_start = zero_start = tr["init_scale"] == 0 and tr["init"] == "normal"
        if family.needs_random_start and zero_start:
            raise InputError(f"network.kernel = {nw['kernel']!r} needs training.init_scale > 0: {family.needs_random_start}")
        if nd["channels"] > 1 and (nd["mesh"] or nd["space"] != "DG0"):
            raise InputError(f"node.channels = {nd['channels']} builds an image x channels mesh of DG0 cells: it takes "
                             f"no node.mesh and needs node.space = 'DG0'" + (f", not {nd['space']!r}" if not nd["mesh"] else ""))
        with_channels = [name for name, fam in KERNELS.items() if fam.takes_channels]
        if nd["channels"] > 1 and not family.takes_channels:
            raise InputError(f"node.channels = {nd['channels']} makes the node domain image x channels for a kernel that "
                             f"is local in the image and dense across channels ({', '.join(with_channels)}); "
                             f"network.kernel = {nw['kernel']!r} takes no channels (each of its neurons already sees "
                             "every pixel: for more neurons refine the pixels, node.refine)")
        if nd["channels"] > 1 and zero_start:
            raise InputError(f"node.channels = {nd['channels']}: at zero controls every channel is the same and stays so "
                             "(the derivative is symmetric in the channels); start from training.init_scale > 0")
        if d["name"] == "digits":
            ds = datasets.digits()
        elif d["name"] == "mnist":
            ds = datasets.mnist(d["resolution"])
        elif d["name"] == "bumps":
            ds = datasets.bumps()
        else:
            if not d["path"]:
                raise InputError("data.name = 'file' needs data.path (an .npz or .csv file)")
            ds = datasets.load(d["path"])
        if d["samples"]:
            ds = ds.subset(np.arange(min(d["samples"], ds.size)))
        fam, deg = nd["space"][:-1], int(nd["space"][-1])
        if fam != "DG":
            ds = ds.with_mode("bilinear")
        self.data = ds
        self.train_idx, self.test_idx = datasets.split(ds.size, d["test_fraction"], d["seed"],
                                                       labels=ds.targets if ds.stratified else None)
        self.val_idx = np.zeros(0, dtype=np.int64)
        if d["validation_fraction"] > 0:  # from the training samples only: the test set stays unseen
            part = ds.subset(self.train_idx)
            keep, val = datasets.split(part.size, d["validation_fraction"], d["seed"] + 1,
                                       labels=part.targets if ds.stratified else None)
            if not len(val):
                raise InputError(f"data.validation_fraction = {d['validation_fraction']} of {part.size} training samples "
                                 "holds no validation sample; raise it or use more samples")
            self.train_idx, self.val_idx = self.train_idx[keep], self.train_idx[val]
        if tr["patience"] and not len(self.val_idx):
            raise InputError(f"training.patience = {tr['patience']} stops on the validation metric: it needs "
                             "data.validation_fraction > 0")
        if nw["slab_pixels"] or nw["slab_channels"] or nw["slab_layers"]:
            self._build_slabs()
            return
        set_ = [k for k, default in (("slab_pooling", "average"), ("slab_readout_pooling", "average"),
                                    ("slab_kernel_cells", 0), ("slab_supports", [])) if nw[k] != default]
        if set_:
            key = set_[0]
            raise InputError(f"network.{key} = {nw[key]!r} is a setting of depth slabs; this network has none "
                             "(network.slab_pixels, slab_channels and slab_layers are empty)")
        node_comm = self.layout.node_comm
        if nd["mesh"]:
            mesh = read_node_mesh(nd["mesh"], node_comm)
            dim = {"interval": 1, "rectangle": 2}[ds.domain["shape"]]
            if mesh.topology.dim != dim:
                raise InputError(f"node mesh {nd['mesh']} is {mesh.topology.dim}D, but the {ds.name} data are functions "
                                 f"on a {dim}D domain (the unit {'interval' if dim == 1 else 'square'})")
            fit_to_unit_box(mesh, nd["fit"], f"node mesh {nd['mesh']}", f"the {ds.name} data")
        elif nd["channels"] > 1:  # image x channels: C layers of cells along a last axis, pixel blocks
            shape, k, C = ds.domain["shape"], ds.domain["n"] * nd["refine"], nd["channels"]
            mesh = create_image_mesh(node_comm, k if shape == "interval" else (k, k), C)
        else:
            shape, k = ds.domain["shape"], ds.domain["n"] * nd["refine"]
            mesh = create_node_mesh(node_comm, shape, k, cell=nd["cell"] if shape == "rectangle" else None)
        depth = Depth(points=np.array(nw["depth_points"])) if nw["depth_points"] else Depth(nw["T"], nw["N"])
        self._build(NodeSpace(mesh, fam, deg, nd["mass"]), depth)

    def _build(self, space: NodeSpace, depth: Depth):
        """The network and the functionals on the discretisation (space, depth)."""
        nd, nw = self.cfg["node"], self.cfg["network"]
        self.space, self.spaces = space, [space]
        kernel = KERNELS[nw["kernel"]].from_config(self.space, nw, nd)
        self.net = Network(self.space, depth, nw["activation"], nw["scheme"], nw["eps"], layout=self.layout, kernel=kernel,
                           dtype=nw["dtype"], decay=nw["decay"])
        self._functionals()

    def _build_slabs(self):
        """Depth slabs (``network.slab_pixels``, ``slab_channels``, ``slab_layers``): one
        image x channels mesh, local kernel and uniform network a slab, joined by the L2
        projection (:class:`~fem_dnn.network.slabs.SlabNetwork`); checks first."""
        from fem_dnn.core.kernel import LocalKernel
        from fem_dnn.network.slabs import SlabNetwork

        cfg, ds = self.cfg, self.data
        nd, nw, ad = cfg["node"], cfg["network"], cfg["adapt"]
        pixels, chans, layers = ([int(v) for v in nw[k]] for k in ("slab_pixels", "slab_channels", "slab_layers"))
        if not (len(pixels) == len(chans) == len(layers)):
            raise InputError(f"network.slab_pixels, slab_channels and slab_layers give {len(pixels)}, {len(chans)} and "
                             f"{len(layers)} slabs: one entry each a slab")
        if nw["kernel"] != "local":
            raise InputError(f"depth slabs need network.kernel = 'local' (each slab's kernel is the convolution of "
                             f"its image x channels mesh), not {nw['kernel']!r}")
        if nd["mesh"] or nd["channels"] != 1 or nd["space"] != "DG0" or nd["refine"] != 1:
            raise InputError("depth slabs build their own image x channels meshes of DG0 cells: they take no "
                             "node.mesh, node.channels = 1, node.refine = 1 and node.space = 'DG0'")
        if ds.domain["shape"] != "rectangle" or ds.kind != "classes":
            raise InputError(f"depth slabs need images and a classes readout (the last slab is coarser than the "
                             f"data); the {ds.name} data are {ds.kind} on the unit "
                             f"{'interval' if ds.domain['shape'] == 'interval' else 'square'}")
        if nw["depth_points"]:
            raise InputError("network.depth_points gives one depth mesh; depth slabs have slab_layers layers of "
                             "length T/N each")
        if ad["cycles"]:
            raise InputError("adapt.cycles > 0: the adaptive loop refines one uniform network, not depth slabs")
        if pixels[0] != ds.domain["n"]:
            raise InputError(f"network.slab_pixels[0] = {pixels[0]} must be the data's image, {ds.domain['n']} pixels a "
                             "side (the input is the first slab's initial state)")
        for a, b in zip(pixels, pixels[1:]):
            if a % b:
                raise InputError(f"network.slab_pixels = {pixels}: {b} does not divide {a} (a slab's pixels must be "
                                 "nested in the ones of the slab before)")
        if max(chans) > 1 and self.zero_start:
            raise InputError(f"network.slab_channels = {chans}: at zero controls every channel of a slab is the same "
                             "and stays so (the derivative is symmetric in the channels); start from training.init_scale "
                             "> 0")
        supports = [int(v) for v in nw["slab_supports"]] or [nw["slab_support"]] * len(pixels)
        if len(supports) != len(pixels):
            raise InputError(f"network.slab_supports = {supports}: {len(supports)} entries for {len(pixels)} slabs "
                             "(one a slab, or empty)")
        for R, k in zip(supports, pixels):
            if R >= k:
                key = "slab_supports" if nw["slab_supports"] else "slab_support"
                raise InputError(f"network.{key}: {R} pixels is not smaller than the slab's {k} pixels a side")
        if nw["slab_readout_pooling"] != "average" and not nw["slab_readout_pixels"]:
            raise InputError(f"network.slab_readout_pooling = {nw['slab_readout_pooling']!r} pools the last state onto "
                             "the readout's cells: set network.slab_readout_pixels")
        N = sum(layers)
        self.spaces, nets = [], []
        for k, C, n_layers, R in zip(pixels, chans, layers, supports):
            cells = nw["slab_kernel_cells"] or 2 * R
            node = self.layout.node_comm
            mesh = create_image_mesh(node, (k, k), C) if C > 1 else create_node_mesh(node, "rectangle", k,
                                                                                     cell="quadrilateral")
            sp = NodeSpace(mesh, "DG", 0, nd["mass"])
            self.spaces.append(sp)
            kern = LocalKernel(sp, radius=R / k, cells=cells, channels=C, quadrature=nw["kernel_quadrature"])
            nets.append(Network(sp, Depth(nw["T"] * n_layers / N, n_layers), nw["activation"], nw["scheme"], nw["eps"],
                                layout=self.layout, kernel=kern, dtype=nw["dtype"], decay=nw["decay"]))
        inputs = None
        if chans[0] > 1:  # the one-channel image, copied to the first slab's channels by the projection
            inputs = NodeSpace(create_node_mesh(self.layout.node_comm, "rectangle", pixels[0], cell="quadrilateral"),
                               "DG", 0, nd["mass"])
        pooled, rp = None, nw["slab_readout_pixels"]
        if rp:  # the readout's pooled image x channels space
            if pixels[-1] % rp:
                raise InputError(f"network.slab_readout_pixels = {rp} does not divide the last slab's {pixels[-1]} "
                                 "pixels a side")
            pooled = NodeSpace(create_image_mesh(self.layout.node_comm, (rp, rp), chans[-1], spare_ranks=True), "DG", 0,
                               nd["mass"])
        self.space = inputs or self.spaces[0]  # the input's
        self.net = SlabNetwork(nets, input_space=inputs, readout_space=pooled, pooling=nw["slab_pooling"],
                               readout_pooling=nw["slab_readout_pooling"])
        self._functionals()

    @property
    def slabs(self) -> bool:
        """The network is a :class:`~fem_dnn.network.slabs.SlabNetwork` (depth slabs)."""
        return hasattr(self.net, "slabs")

    def _functionals(self):
        """The training, test and validation functionals of :attr:`net`."""
        tr, ds = self.cfg["training"], self.data
        loss = get_loss(ds.kind if tr["loss"] == "default" else tr["loss"], readout=ds.kind)
        kw = dict(loss=loss, K=ds.K, lam=tr["lam"], gamma=tr["gamma"], block_weights={"a": tr["a_weight"], "b": tr["b_weight"]})
        self.J = self._functional(ds.subset(self.train_idx), kw)
        self.J_test = self._functional(ds.subset(self.test_idx), kw) if len(self.test_idx) else None
        self.J_val = self._functional(ds.subset(self.val_idx), kw) if len(self.val_idx) else None

    def on(self, space: NodeSpace, depth: Depth) -> "Run":
        """The same run (data, split, layout, settings) on another discretisation. The node
        space stays the caller's: :meth:`destroy` of the new run leaves it alive (runs on
        other depth meshes share it)."""
        other = copy.copy(self)
        other._build(space, depth)
        other.spaces = []
        return other

    def _functional(self, ds, kw):
        return ReducedFunctional(self.net, ds.inputs, ds.targets, **kw)

    def initial(self):
        tr = self.cfg["training"]
        if tr["init"] == "unit_gain":
            return self.J.controls.unit_gain(tr["seed"])
        if tr["init_scale"] > 0:
            return self.J.controls.random(tr["seed"], tr["init_scale"])
        return self.J.controls.create_vec()

    def metrics(self, m) -> dict:
        out = {"train_loss": self.J.loss_value(m), "J": self.J(m)}
        if self.data.kind == "classes":
            out["train_accuracy"] = self.J.accuracy(m)
        for name, F in (("validation", self.J_val), ("test", self.J_test)):
            if F is not None:
                out[f"{name}_loss"] = F.loss_value(m)
                if self.data.kind == "classes":
                    out[f"{name}_accuracy"] = F.accuracy(m)
        return out

    def destroy(self):
        for F in (self.J, self.J_test, self.J_val):
            if F is not None:
                F.destroy()
        self.net.destroy()
        for sp in self.spaces:
            sp.destroy()


#: How far (relative to the domain's size) a node mesh's bounding box may be from the
#: data's domain: a polygon inscribed in the unit disk spans 0.9972 of it in y.
FIT_TOLERANCE = 0.02


def fit_to_unit_box(mesh, fit: str, what: str, data: str):
    """Make sure the node mesh lies on the data's domain, the unit interval or square
    (collective): a mesh whose bounding box is that domain (to :data:`FIT_TOLERANCE`)
    is kept; otherwise ``fit = "bbox"`` maps its bounding box onto the domain, axis by
    axis (the geometry is changed in place), and ``fit = "none"`` refuses it: data
    sampled on a mesh elsewhere would be silently misplaced.

    Raises:
        InputError: on every rank, naming the mesh's box and what to do.
    """
    d = mesh.geometry.dim
    x = mesh.geometry.x
    lo = x[:, :d].min(axis=0) if len(x) else np.full(d, np.inf)
    hi = x[:, :d].max(axis=0) if len(x) else np.full(d, -np.inf)
    mesh.comm.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
    mesh.comm.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
    if np.all(np.abs(lo) <= FIT_TOLERANCE) and np.all(np.abs(hi - 1.0) <= FIT_TOLERANCE):
        return
    box = " x ".join(f"[{a:.4g}, {b:.4g}]" for a, b in zip(lo, hi))
    unit = "[0, 1]" if d == 1 else "[0, 1] x [0, 1]"
    if fit != "bbox":
        raise InputError(f"{what} spans {box}, but {data} are functions on {unit}: set node.fit = 'bbox' to map "
                         f"the mesh's bounding box onto {unit}, or use a mesh of that domain")
    if np.any(hi - lo <= 0):
        raise InputError(f"{what} spans {box}: a flat bounding box cannot be mapped onto {unit}")
    x[:, :d] = (x[:, :d] - lo) / (hi - lo)
