"""The memory model of a training run: problem sizes and peak memory per rank, before any
allocation.

A training run is refused before it starts when it cannot fit (bad input gets one clear
error, and nothing is half-written):

- :func:`estimate_memory` computes, from a validated config (:mod:`fem_dnn.app.config`) and
  *without building* the node mesh of the built-in grids, the data, the network or any
  control vector, the problem sizes (neurons n, layers N, samples S, the control count
  ``N n + N n^2 + readout``) and the peak resident memory of each rank of a training
  run, part by part;
- :func:`check` raises :class:`~fem_dnn.errors.InputError` with one line when the
  estimate exceeds :func:`~fem_dnn.app.system.available_memory`, or when a PETSc index
  (the global size of the control vector, ...) does not fit PETSc's integer type;
- for an adaptive config, the bounds of its cycles
  (:func:`fem_dnn.optimize.adaptive.adaptive_cycles`) join the estimate.

The machine's side (resident memory, available memory, PETSc's index type) is
:mod:`fem_dnn.app.system`; an HJB solver's model is :mod:`fem_dnn.app.hjb_memory`.

**The memory model.** The peak of a rank is its *resident* memory plus the largest of
the *phases* of a run (memory freed by one phase is reused by the next: fem_dnn keeps
freed blocks in the process, see :mod:`fem_dnn._malloc`). With ``V`` the bytes of this
rank's part of one control vector (a, b, W, mu), ``B = n_local S_local 8`` the bytes of
a batch of states and ``G`` the bytes of all controls in natural order:

- resident: the process now (interpreter, DOLFINx, PETSc: measured), the modules a run
  imports later (scikit-learn for the digits, matplotlib for the figures), the data
  (inputs, one-hot targets of the training and test sets), the node mesh and space, the
  functional's copies of the controls (the point m, the network's copy, lambda R m, the
  derivative, and the initial controls: ``5 V``), the trajectory ``(N+1) B`` and the
  tape the costate needs (per layer and stage: sigma(u), or u and sigma'(u), and the
  stage inputs of every scheme but Euler; at the quadrature points for consistent mass),
  and the test set's point when it is evaluated during training (``output.test_every``);
- phases: *optimisation* (the optimiser's control-sized vectors, counted per method,
  and the gradient's work: its accumulator, the costate of one layer, the GEMM
  temporaries with the Allgatherv of the whole batch, ``n S`` per layer; Newton methods
  add the full costate, the tangent trajectory and the Hessian action's vectors),
  *checkpoint* (the optimiser's vectors plus the controls gathered in natural order on
  every rank), *test evaluation* (the test set's trajectory and tape, at the end when
  not during training), *outputs* (natural order again, the figures).

The counts of control-sized vectors are kept by the code they count and read from there
(``OPTIMIZER_VECTORS`` of :mod:`fem_dnn.optimize.tao`, ``TAO_VECTORS`` of
:mod:`fem_dnn.optimize.methods`, ``MINIBATCH_VECTORS`` of :mod:`fem_dnn.optimize.stochastic`,
``MSA_VECTORS`` of :mod:`fem_dnn.optimize.pmp`, ``FUNCTIONAL_VECTORS`` of
:mod:`fem_dnn.learning.functional`, a kernel family's :class:`~fem_dnn.core.kernel.KernelMemory`,
the schemes' stages), the built-in data sets' sizes from
:data:`fem_dnn.app.data.BUILT_IN_SIZES`; the constants below are measured, and
``bench/memory_estimate.py`` checks the whole estimate against the peak resident set of
real trainings (within 30%).
"""

import sys
from dataclasses import dataclass, field

import numpy as np

from fem_dnn import _dolfinx  # noqa: F401
from mpi4py import MPI

from fem_dnn.app.data import BUILT_IN_SIZES
from fem_dnn.app.system import available_memory, petsc_int_max, resident_memory
from fem_dnn.core.kernel import KERNELS
from fem_dnn.errors import InputError
# the counts of control-sized vectors, kept by the code they count
from fem_dnn.learning.functional import EVALUATION_VECTORS as TEST_POINT_VECTORS, FUNCTIONAL_VECTORS
from fem_dnn.network.schemes import IMPLICIT, STAGES
from fem_dnn.optimize.adaptive import adaptive_cycles
from fem_dnn.optimize.methods import HESSIAN, HESSIAN_WORK_VECTORS, TAO, TAO_VECTORS
from fem_dnn.optimize.pmp import MSA_VECTORS
from fem_dnn.optimize.stochastic import MINIBATCH_KEPT_VECTORS, MINIBATCH_VECTORS, MINIBATCH_WORK_VECTORS
from fem_dnn.optimize.tao import OPTIMIZER_VECTORS

__all__ = ["MemoryEstimate", "check", "estimate_memory"]

MiB, GiB = 2**20, 2**30
_F8 = 8  # bytes of a float64

#: Resident memory that a module adds when a run imports it (measured on the reference
#: machine; counted only when the module is not imported yet): matplotlib with the Agg
#: backend and one figure drawn. (The digits are read without importing scikit-learn.)
IMPORT_BYTES = {"matplotlib": 45 * MiB}
#: Everything else a run adds on top of the process and its arrays: PETSc and DOLFINx
#: objects, the compiled forms loaded, BLAS and MPI buffers.
RUN_OVERHEAD_BYTES = 30 * MiB
#: The node mesh: DOLFINx topology and geometry per owned cell, and per cell of the
#: whole mesh on rank 0, which builds a built-in mesh before it is distributed.
MESH_BYTES_PER_CELL = 340
MESH_BUILD_BYTES_PER_CELL = 230
#: Arrays of the node space kept for all dofs on every rank (coordinates, natural order,
#: weights, the coordinate map's scaling).
NODE_SPACE_BYTES_PER_DOF = 64
#: Consistent mass: the mass, quadrature and interpolation matrices, their transposes,
#: the sequential copy of M and its Cholesky factor (per owned dof).
CONSISTENT_BYTES_PER_DOF = 2800
#: Diffusion (eps > 0): the stiffness matrix and the direct solvers of M + c K.
DIFFUSION_BYTES_PER_DOF = 1500
#: The (depth, node) mesh of the field output, per product cell (N x owned node cells).
PRODUCT_MESH_BYTES_PER_CELL = 1200

#: Vecs per L-BFGS pair (s and y), and PETSc's default number of pairs
#: (``-<prefix>tao_bqnls_mat_lmvm_hist_size``).
LBFGS_VECTORS_PER_PAIR = 2
LBFGS_PAIRS = 5
#: Control-sized temporaries of one gradient: the costate's accumulator and the
#: coordinate maps' temporaries.
GRADIENT_WORK_VECTORS = 2
#: Gathering the controls in natural order (a checkpoint, the outputs) on every rank:
#: peak copies of all controls and of this rank's part.
NATURAL_GLOBAL_COPIES = 2.0
NATURAL_LOCAL_COPIES = 1.5
#: Arrays of a batch's size that one layer of the costate (forward) solve holds besides
#: the stored states and tape, and the Allgatherv buffers of the whole batch (n x S).
COSTATE_BATCH_ARRAYS = 5
FORWARD_BATCH_ARRAYS = 3
GATHER_ARRAYS = 2
#: Copies of one layer's image of b that the weights figure makes (rank 0).
FIGURE_LAYER_COPIES = 6



# --------------------------------------------------------------------------- the estimate
@dataclass
class MemoryEstimate:
    """Sizes and peak memory of a training run, the same on every rank.

    Sizes are global unless ``_local`` (the largest rank's share). Memory is in bytes per
    rank (the largest over the ranks).

    Attributes:
        ranks: MPI ranks of the run; node_ranks: ranks that share the node mesh.
        neurons, neurons_local: node dofs n.
        cells: node mesh cells.
        layers: N.
        samples, test_samples, samples_local: training and test set sizes, and the
            training samples a rank holds (sample groups split them).
        controls, controls_local: entries of the control vector (a, b, W, mu).
        description: one line: data, node space, scheme, method.
        resident: the parts held for the whole run, by name.
        phases: the memory each phase of the run adds on top, by name.
        peak_bytes: ``sum(resident) + max(phases)``.
        now_bytes: resident memory of the process when the estimate was made (the
            largest rank's).
        available_bytes: :func:`available_memory` (the smallest over the ranks).
        ranks_per_node: ranks sharing one machine's memory (the most on one machine).
        indices: PETSc indices of the run, by what they count, and ``index_max``.
        advice: config keys that reduce the largest parts, most effective first.
    """

    ranks: int
    node_ranks: int
    neurons: int
    neurons_local: int
    cells: int
    layers: int
    samples: int
    test_samples: int
    samples_local: int
    controls: int
    controls_local: int
    description: str
    resident: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)
    peak_bytes: int = 0
    now_bytes: int = 0
    available_bytes: int = 0
    ranks_per_node: int = 1
    indices: dict = field(default_factory=dict)
    index_max: int = 2**31 - 1
    advice: list = field(default_factory=list)
    cycles: list = field(default_factory=list)
    cycles_note: str = ""

    @property
    def peak_phase(self) -> str:
        """The phase that sets the peak."""
        return max(self.phases, key=self.phases.get) if self.phases else ""

    def describe(self) -> str:
        """A short table of the sizes and the memory per rank (``fem-dnn train --dry-run``)."""
        lines = [self.description,
                 f"  {self.neurons} neurons ({self.neurons_local} per rank), {self.layers} layers, "
                 f"{self.samples} training / {self.test_samples} test samples ({self.samples_local} per rank), "
                 f"{self.controls:,} controls ({self.controls_local:,} per rank), {self.ranks} rank(s)",
                 "  memory per rank (estimate)" + " " * 33 + "MiB"]
        for name, val in self.resident.items():
            lines.append(f"    {name:52s} {val / MiB:9.1f}")
        top = self.peak_phase
        for name, val in self.phases.items():
            mark = "  <- the peak" if name == top else ""
            lines.append(f"    + {name:50s} {val / MiB:9.1f}{mark}")
        lines.append(f"  peak per rank: {self.peak_bytes / GiB:.2f} GiB (resident + the largest phase); "
                     f"available: {self.available_bytes / GiB:.2f} GiB for {self.ranks_per_node} rank(s) on this machine")
        if self.cycles:
            lines.append(f"  adaptive cycles (upper bounds; {self.cycles_note})")
            lines.append("    cycle  layers <=  cells <=  neurons <=  controls <=  gradient <=  training <=  estimate <=")
            for c in self.cycles:
                cap = f"  (worst case {c['worst_case']:,} > adapt.max_controls)" if c["capped"] else ""
                lines.append(f"    {c['cycle']:5d}  {c['layers']:9d}  {c['cells']:8d}  {c['neurons']:10d}  {c['controls']:11,d}  "
                             f"{c['gradient']:10.3g}  {c['training']:11.4g}  {c['estimation']:11.4g}{cap}")
        return "\n".join(lines)


def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _dataset_sizes(d: dict):
    """(samples, classes, kind, domain, features) of the config's data set."""
    if d["name"] == "mnist":  # checked as the run checks it, before any work
        from fem_dnn.app.data import mnist_resolution

        k = mnist_resolution(d["resolution"])
        return 5000, 10, "classes", {"shape": "rectangle", "n": k}, k * k
    if d["name"] in BUILT_IN_SIZES:
        S, K, kind, domain = BUILT_IN_SIZES[d["name"]]
        feats = domain["n"] ** (2 if domain["shape"] == "rectangle" else 1)
        return S, K, kind, domain, feats
    from fem_dnn.app import data as datasets

    if not d["path"]:
        raise InputError("data.name = 'file' needs data.path (an .npz or .csv file)")
    ds = datasets.load(d["path"])  # the user's file: read and validated (it is small)
    feats = ds.inputs.values[0].size
    return ds.size, ds.K, ds.kind, ds.domain, feats


def _node_sizes(nd: dict, domain: dict, node_comm: MPI.Comm):
    """(cells, n, cells_local, n_local, cell name, gdim) of the node mesh and space: by
    arithmetic for the built-in grids, by reading a mesh file."""
    fam, deg = nd["space"][:-1], int(nd["space"][-1])
    P = node_comm.size
    if nd["mesh"]:
        from dolfinx import fem

        from fem_dnn.core.meshes import read_node_mesh

        mesh = read_node_mesh(nd["mesh"], node_comm)
        tdim = mesh.topology.dim
        imap = mesh.topology.index_map(tdim)
        V = fem.functionspace(mesh, ("DG" if fam == "DG" else "P", deg))
        dm = V.dofmap.index_map
        out = (imap.size_global, dm.size_global, node_comm.allreduce(imap.size_local, op=MPI.MAX),
               node_comm.allreduce(dm.size_local, op=MPI.MAX), mesh.topology.cell_name(), tdim)
        del V, mesh
        return out
    k = int(domain["n"]) * int(nd["refine"])
    if domain["shape"] == "rectangle":
        cell, dim = nd.get("cell", "quadrilateral"), 2
        cells = k * k * (2 if cell == "triangle" else 1)
        n = cells if fam == "DG" else (deg * k + 1) ** 2
    else:
        cells, cell, dim = k, "interval", 1
        n = cells if fam == "DG" else deg * k + 1
    C = int(nd.get("channels", 1))
    if C > 1:  # image x channels: C layers of DG0 cells along a last axis
        cells, n, dim = cells * C, n * C, dim + 1
        cell = "hexahedron" if dim == 3 else "quadrilateral"
    return cells, n, _cdiv(cells, P), _cdiv(n, P), cell, dim


def _quadrature_points(cell: str, degree: int) -> int:
    """Points per cell of the sigma term's quadrature (consistent mass)."""
    import basix

    pts, _ = basix.make_quadrature(getattr(basix.CellType, cell), degree)
    return len(pts)


def _lbfgs_pairs(prefix: str) -> int:
    from petsc4py import PETSc

    opts = PETSc.Options()
    for key in (prefix + "tao_bqnls_mat_lmvm_hist_size", prefix + "tao_lmvm_mat_lmvm_hist_size"):
        if opts.hasName(key):
            return int(opts.getInt(key))
    return LBFGS_PAIRS


def _tao_method(method: str, prefix: str) -> str:
    """The method as the TAO type given with ``-<prefix>tao_type`` would make it."""
    from petsc4py import PETSc

    tao_type = PETSc.Options().getString(prefix + "tao_type", "")
    return {"bqnls": "lbfgs", "lmvm": "lbfgs", "blmvm": "lbfgs", "nls": "newton", "ntr": "trust", "bnls": "bnewton",
            "bntr": "btrust", "bncg": "cg", "nls_gn": "newton"}.get(tao_type, method)


def estimate_memory(cfg: dict, comm: MPI.Comm = MPI.COMM_WORLD, store_every: int | None = None,
                    petsc_options_prefix: str = "fem_dnn_") -> MemoryEstimate:
    """Sizes and peak memory per rank of ``fem_dnn.app.train.train(cfg)`` (collective).

    Nothing of the problem's size is allocated: the sizes of the built-in grids are
    computed, a node mesh file is read (it is small), a data file is read (the built-in
    data sets are known). The memory the process holds now is measured (the interpreter,
    DOLFINx, PETSc and whatever the caller has allocated).

    Args:
        cfg: a validated config (:func:`fem_dnn.app.config.load_config`).
        comm: the run's communicator; every rank gets the same estimate.
        store_every: estimate with depth checkpointing every k levels
            (``ReducedFunctional(store_every=k)``) instead of the full tape.
        petsc_options_prefix: the solver's options prefix (for ``-<prefix>tao_type`` and
            the L-BFGS history size).

    Raises:
        InputError: for a data or mesh file that cannot be read (as the run would), or
            sample groups that do not divide the ranks.
    """
    from fem_dnn.optimize import tao as optimize  # noqa: F401  (what every run imports: DOLFINx, UFL, PETSc, scipy)

    now = resident_memory()
    r = _sizes(cfg, comm, petsc_options_prefix)
    resident, segment = _resident(r, now, store_every)
    phases = _phases(r, resident, segment, petsc_options_prefix)

    # ---- the same numbers on every rank
    keys = list(resident) + list(phases)
    vals = np.array([resident[k] for k in resident] + [phases[k] for k in phases], dtype=float)
    comm.Allreduce(MPI.IN_PLACE, vals, op=MPI.MAX)
    resident = {k: int(v) for k, v in zip(keys[: len(resident)], vals[: len(resident)])}
    phases = {k: int(v) for k, v in zip(keys[len(resident):], vals[len(resident):])}
    peak = sum(resident.values()) + max(phases.values())
    shm = comm.Split_type(MPI.COMM_TYPE_SHARED)
    per_node, avail = shm.size, available_memory()
    shm.Free()
    avail = comm.allreduce(avail, op=MPI.MIN)
    per_node = comm.allreduce(per_node, op=MPI.MAX)
    now = comm.allreduce(now, op=MPI.MAX)

    d, nd, nw, tr = cfg["data"], cfg["node"], cfg["network"], cfg["training"]
    desc = (f"{d['name']} ({r.kind}), {nd['space']} {r.mass}, {r.scheme} ({nw['activation']}), method {tr['method']}"
            + (f", depth checkpointing every {store_every}" if store_every else ""))
    est = MemoryEstimate(r.P, r.Pn, r.n, r.nl, r.cells, r.N, r.S, r.S_test, r.S_l, r.controls, r.controls_l, desc,
                         resident, phases, int(peak), now, avail, per_node, _indices(r), petsc_int_max())
    est.advice = _advice(est, r.method, r.scheme)
    if int(cfg.get("adapt", {}).get("cycles", 0)):
        def total(N_k, n_k, cells_k):  # the control vector's size on a (depth, node) discretisation
            rd = (r.K * n_k + r.K) if r.kind == "classes" else (n_k * n_k + n_k)
            km = KERNELS[nw["kernel"]].memory(nw, nd, N=N_k, n=n_k, n_local=_cdiv(n_k, r.Pn), cells=cells_k, gdim=r.gdim)
            return N_k * n_k + km.controls + rd

        est.cycles, est.cycles_note = adaptive_cycles(cfg["adapt"], r.N, r.n, r.cells, r.cell, r.fam, r.deg,
                                                      int(tr["max_it"]), total)
    return est


@dataclass
class _Sizes:
    """The sizes of a run that the parts of the memory model read (``_l``: the largest
    rank's share), and the bytes of its arrays."""

    cfg: dict
    P: int  # ranks
    Pn: int  # ranks of a node communicator
    K: int | None  # classes
    kind: str
    feats: int  # features of a sample as loaded
    S_all: int
    S: int  # training samples
    S_test: int
    S_l: int
    St_l: int
    cells: int
    cells_l: int
    n: int  # neurons
    nl: int
    cell: str
    gdim: int
    fam: str
    deg: int
    mass: str
    N: int  # layers
    scheme: str
    method: str  # the TAO method as -<prefix>tao_type makes it
    kern: object  # the kernel family's KernelMemory
    controls: int
    controls_l: int
    V: int  # bytes of this rank's part of one control vector
    Vab: int  # ... of its (a, b) blocks
    G: int  # bytes of all controls in natural order
    q_l: int  # points of the sigma term (nodes, or quadrature points for consistent mass)
    compact: bool  # the tape keeps sigma(u) alone (the activation's from_sigma)
    stages: int
    inputs: int  # stage inputs kept per layer

    def batch(self, samples):
        """Bytes of one (n_local, S) and one (q_local, S) array."""
        return _F8 * self.nl * samples, _F8 * self.q_l * samples

    def trajectory(self, samples, every=None):
        """Bytes of the stored states, of the tape, and of the segment the costate
        recomputes (depth checkpointing every ``every`` levels)."""
        Bn, Bq = self.batch(samples)
        layer_tape = self.stages * (1 if self.compact else 2) * Bq + self.inputs * Bn  # sigma(u), or u and sigma'(u)
        if every:
            levels = len(set(range(0, self.N + 1, every)) | {self.N}) + 2  # the kept levels and two work levels
            return levels * Bn, 0, (every + 1) * Bn + every * layer_tape  # segment recomputed in the costate
        return (self.N + 1) * Bn, self.N * layer_tape, 0

    def layer_work(self, samples, arrays):
        """One layer's temporaries: batch arrays, the gathered batch, the kernel's (dense: b M_w)."""
        Bn, Bq = self.batch(samples)
        return arrays * max(Bn, Bq) + GATHER_ARRAYS * _F8 * self.kern.gathered * samples + self.kern.work_bytes


def _sizes(cfg: dict, comm: MPI.Comm, petsc_options_prefix: str) -> _Sizes:
    """The sizes of the run of ``cfg`` on ``comm``, by arithmetic (collective)."""
    d, nd, nw, tr = cfg["data"], cfg["node"], cfg["network"], cfg["training"]
    P = comm.size
    groups = int(tr["sample_groups"]) or P  # 0: one a rank
    if groups < 1 or P % groups:
        raise InputError(f"sample_groups={groups} must divide the number of ranks {P}")
    Pn = P // groups
    node_comm = comm.Split(color=comm.rank // Pn, key=comm.rank)
    try:
        S_all, K, kind, domain, feats = _dataset_sizes(d)
        if d["samples"]:
            S_all = min(int(d["samples"]), S_all)
        S_test = int(round(d["test_fraction"] * S_all))
        S = S_all - S_test
        if S < 1:
            raise InputError(f"{S_all} samples leave no training data with test_fraction={d['test_fraction']}")
        cells, n, cells_l, nl, cell, gdim = _node_sizes(nd, domain, node_comm)
    finally:
        node_comm.Free()
    fam, deg = nd["space"][:-1], int(nd["space"][-1])
    mass = "lumped" if fam == "DG" else nd["mass"]
    N = len(nw["depth_points"]) - 1 if nw.get("depth_points") else int(nw["N"])
    scheme = nw["scheme"]

    # ---- sizes of the control vector (global, and the largest rank's)
    readout = (K * n + K) if kind == "classes" else (n * n + n)
    readout_l = (K * nl + K) if kind == "classes" else (nl * n + nl)
    kern = KERNELS[nw["kernel"]].memory(nw, nd, N=N, n=n, n_local=nl, cells=cells, gdim=gdim)
    controls, controls_l = N * n + kern.controls + readout, N * nl + kern.controls_local + readout_l

    # ---- batches: nodes and the sigma term's points
    q_l = cells_l * _quadrature_points(cell, 2 * deg + 2) if mass == "consistent" else nl
    from fem_dnn.core.activation import get_activation

    return _Sizes(cfg, P, Pn, K, kind, feats, S_all, S, S_test, _cdiv(S, groups), _cdiv(S_test, groups), cells, cells_l,
                  n, nl, cell, gdim, fam, deg, mass, N, scheme, _tao_method(tr["method"], petsc_options_prefix), kern,
                  controls, controls_l, _F8 * controls_l, _F8 * (N * nl + kern.controls_local), _F8 * controls, q_l,
                  get_activation(nw["activation"]).from_sigma is not None, STAGES[scheme],
                  # stage inputs kept (explicit: the first is a view of the state; implicit: the midpoint state)
                  1 if scheme in IMPLICIT else STAGES[scheme] - 1)


def _resident(r: _Sizes, now: int, store_every: int | None) -> tuple[dict, int]:
    """The parts held for the whole run, by name, and the bytes of the segment a
    checkpointed costate recomputes."""
    nd, nw, tr, out = r.cfg["node"], r.cfg["network"], r.cfg["training"], r.cfg["output"]
    resident = {"process now (interpreter, DOLFINx, PETSc)": now}
    imports = RUN_OVERHEAD_BYTES
    if (out["figures"] or out["fields"]) and "matplotlib" not in sys.modules:
        imports += IMPORT_BYTES["matplotlib"]
    resident["modules and objects a run adds"] = imports
    target_rows = r.K if r.kind == "classes" else r.nl
    data = _F8 * r.S_all * r.feats  # the data set as loaded
    for s, s_l in ((r.S, r.S_l), (r.S_test, r.St_l)):
        data += _F8 * (r.nl + target_rows) * (s + s_l) + _F8 * s
    resident["data (inputs and targets, training and test)"] = data
    mesh = MESH_BYTES_PER_CELL * r.cells_l + MESH_BUILD_BYTES_PER_CELL * (r.cells - r.cells_l) + NODE_SPACE_BYTES_PER_DOF * r.n
    if r.mass == "consistent":
        mesh += CONSISTENT_BYTES_PER_DOF * r.nl
    if nw["eps"] > 0:
        mesh += DIFFUSION_BYTES_PER_DOF * r.nl
    resident[f"node mesh and space ({r.cells} cells, {nd['space']} {r.mass})"] = mesh
    for what, size in r.kern.operator.items():
        if size:
            resident[f"{nw['kernel']} kernel ({what})"] = size
    held = FUNCTIONAL_VECTORS - (0 if (tr["lam"] > 0 or tr["gamma"] > 0) else 1) + 1  # + the initial controls
    if r.method == "msa":
        held += 1  # the current iterate
    resident[f"controls (the functional's {held} copies, {r.V / MiB:.1f} MiB each)"] = held * r.V
    every = store_every if r.method not in HESSIAN else None
    traj, tape, segment = r.trajectory(r.S_l, every)
    resident[f"trajectory ({r.N + 1 if not every else 'checkpointed'} levels x {r.S_l} samples x {r.nl} neurons)"] = traj
    what = "sigma(u)" if r.compact else "u, sigma'(u)"
    resident[f"tape ({r.scheme}: {what} per stage{', stage inputs' if r.inputs else ''})"] = tape
    return resident, segment


def _phases(r: _Sizes, resident: dict, segment: int, petsc_options_prefix: str) -> dict:
    """The memory each phase of the run adds on top of the resident parts, by name; the
    test set's point joins ``resident`` when it is evaluated during training."""
    tr, out = r.cfg["training"], r.cfg["output"]
    method, V, G, N = r.method, r.V, r.G, r.N
    phases = {}
    Bn, Bq = r.batch(r.S_l)
    grad_work = max(GRADIENT_WORK_VECTORS * V, r.Vab + r.layer_work(r.S_l, COSTATE_BATCH_ARRAYS)) + segment
    costate = (N + 1) * Bn + N * r.stages * Bq  # the whole costate (Newton methods, MSA)
    if method in TAO:
        opt = OPTIMIZER_VECTORS + TAO_VECTORS[method] + (1 if method in HESSIAN else 0)
        if tr["bounds_a"] or tr["bounds_b"]:
            opt += 2
        if method == "lbfgs":
            opt += LBFGS_VECTORS_PER_PAIR * _lbfgs_pairs(petsc_options_prefix)
        work = grad_work
        if method in HESSIAN:  # the full costate, the tangent trajectory and the Hessian action
            tangent = (N + 1) * Bn + N * r.stages * (Bn + Bq)
            work = max(work, costate + tangent + HESSIAN_WORK_VECTORS[method] * V + r.layer_work(r.S_l, COSTATE_BATCH_ARRAYS))
        phases[f"optimisation ({method}: {opt} vectors, gradient work)"] = opt * V + work
        phases["checkpoint (controls in natural order)"] = opt * V + V + NATURAL_GLOBAL_COPIES * G + NATURAL_LOCAL_COPIES * V
    elif method in ("sgd", "adam"):
        phases[f"optimisation ({method}: {MINIBATCH_VECTORS} vectors, gradient work)"] = (
            MINIBATCH_VECTORS * V + max(MINIBATCH_WORK_VECTORS * V, grad_work))
        phases["checkpoint (controls and moments in natural order)"] = (
            (MINIBATCH_VECTORS + MINIBATCH_KEPT_VECTORS) * V + (3 + NATURAL_GLOBAL_COPIES) * G + NATURAL_LOCAL_COPIES * V)
    else:  # msa: the whole costate and the Hamiltonian minimiser's copies
        phases[f"optimisation (msa: {MSA_VECTORS} vectors, costate)"] = (
            MSA_VECTORS * V + costate + r.layer_work(r.S_l, COSTATE_BATCH_ARRAYS))
        phases["checkpoint (controls in natural order)"] = V + NATURAL_GLOBAL_COPIES * G + NATURAL_LOCAL_COPIES * V
    t_traj, t_tape, _ = r.trajectory(r.St_l)
    test_point = TEST_POINT_VECTORS * V + t_traj + t_tape
    if r.S_test and out.get("test_every", 0):  # the test set is evaluated during training: its point stays
        resident[f"test set's point ({TEST_POINT_VECTORS} copies, {r.S_test} samples)"] = test_point
        test_point = 0
    phases[f"test evaluation ({r.S_test} samples)"] = V + test_point + r.layer_work(r.St_l, FORWARD_BATCH_ARRAYS)
    outputs = V + NATURAL_GLOBAL_COPIES * G + NATURAL_LOCAL_COPIES * V
    if out["figures"]:
        outputs += G / N + FIGURE_LAYER_COPIES * _F8 * r.kern.image  # |b| and the images of two layers (rank 0)
    if out["fields"] and r.gdim <= 2:
        outputs += PRODUCT_MESH_BYTES_PER_CELL * N * r.cells_l
    phases["outputs (natural order, figures, fields)"] = outputs
    phases["setup (sampling the data)"] = 3 * _F8 * r.nl * r.S
    return phases


def _indices(r: _Sizes) -> dict:
    """The PETSc indices of the run, by what they count."""
    indices = {"the control vector": r.controls}
    if r.scheme == "midpoint":
        indices["the implicit midpoint's batch vector (neurons x samples)"] = r.n * r.S_l
    if r.mass == "consistent" or r.cfg["network"]["eps"] > 0:
        indices["a batch as a PETSc dense matrix (neurons x samples)"] = r.n * r.S_l
    if r.mass == "consistent":
        indices["the quadrature points of the node mesh"] = r.cells * _quadrature_points(r.cell, 2 * r.deg + 2)
    return indices


def _advice(est: MemoryEstimate, method: str, scheme: str) -> list[str]:
    """What to reduce, the largest part first."""
    r, p = est.resident, est.phases
    traj = sum(v for k, v in r.items() if k.startswith(("trajectory", "tape")))
    ctrl = sum(v for k, v in r.items() if k.startswith("controls")) + max(p.values())
    out = []
    if ctrl >= traj:
        out += ["node.refine", "network.N"]
        lbfgs = OPTIMIZER_VECTORS + TAO_VECTORS["lbfgs"] + LBFGS_VECTORS_PER_PAIR * LBFGS_PAIRS
        newton = OPTIMIZER_VECTORS + TAO_VECTORS["newton"] + 1
        out.append(f"training.method ('adam' keeps {MINIBATCH_VECTORS} control vectors, 'newton' {newton}, 'lbfgs' {lbfgs})")
        out += ["data.samples", "network.scheme ('euler') / depth checkpointing"]
    else:
        out += ["data.samples", "network.N", "network.scheme ('euler') / depth checkpointing", "node.refine"]
        out.append("training.method")
    return out


def check(est: MemoryEstimate, comm: MPI.Comm = MPI.COMM_WORLD):
    """Refuse a run that cannot fit (collective: the same decision on every rank).

    Raises:
        InputError: one line, when a PETSc index of the run does not fit PETSc's integer
            type, or when the estimated peak of the ranks on one machine exceeds the
            memory available there (it names the sizes, the estimate per rank, what is
            available and what to reduce).
    """
    sizes = (f"{est.neurons} neurons, {est.layers} layers, {est.samples} training samples, "
             f"{est.controls:,} controls")
    too_big = [(what, size) for what, size in est.indices.items() if size > est.index_max]
    msg = None
    if too_big:
        what, size = too_big[0]
        bits = 32 if est.index_max < 2**32 else 64
        msg = (f"the run is too large for PETSc's {bits}-bit indices: {what} has {size:,} entries, more than "
               f"{est.index_max:,} ({sizes}); reduce node.refine or network.N (or use a PETSc built with 64-bit indices)")
    else:
        need = est.ranks_per_node * (est.peak_bytes - est.now_bytes)
        if need > est.available_bytes:
            ranks = f" ({est.ranks_per_node} ranks on this machine)" if est.ranks_per_node > 1 else ""
            msg = (f"the run needs about {est.peak_bytes / GiB:.1f} GiB per rank{ranks} but {est.available_bytes / GiB:.1f} "
                   f"GiB are available ({sizes}); reduce {', '.join(est.advice)}")
    refuse = comm.allreduce(msg is not None, op=MPI.LOR)
    if refuse:
        raise InputError(comm.bcast(msg, root=0) or "the run does not fit (see rank 0)")
