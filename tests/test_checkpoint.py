"""Checkpoint and restart files: exact roundtrip on any number of ranks, atomic writes,
and one clear error on every rank for a missing, corrupt or foreign checkpoint."""

import os
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from fem_dnn.app.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fem_dnn.core.depth import Depth
from fem_dnn.core.layout import split_comm
from fem_dnn.core.meshes import create_node_mesh
from fem_dnn.core.nodes import NodeSpace
from fem_dnn.errors import InputError
from fem_dnn.learning.controls import ControlSpace
from fem_dnn.network import Network


def make_controls(comm, kind="classes", n=8, N=4, K=3, family="DG", degree=0, mass="lumped", T=1.0, bounds=None, sample_groups=1,
                  kernel="dense", quadrature="auto"):
    """A small control space (what ``ReducedFunctional(...).controls`` builds)."""
    from fem_dnn.core.kernel import LocalKernel, LowRankKernel

    layout = split_comm(comm, sample_groups)
    space = NodeSpace(create_node_mesh(layout.node_comm, "interval", n, bounds), family, degree, mass)
    kern = {"dense": lambda: "dense", "local": lambda: LocalKernel(space, radius=0.25, cells=2, quadrature=quadrature),
            "lowrank": lambda: LowRankKernel(space, 2)}[kernel]()
    net = Network(space, Depth(T=T, N=N), layout=layout, kernel=kern)
    return ControlSpace(net, kind, K)


def close(controls, *vecs):
    for v in vecs:
        v.destroy()
    controls.network.destroy()
    controls.space.destroy()


def training_state(iteration=7):
    """What a training loop saves: counters, history, method, an RNG state (128-bit ints)."""
    rng = np.random.default_rng(42)
    rng.standard_normal(3)
    return {
        "iteration": iteration,
        "method": "adam",
        "history": [{"iteration": k, "J": 1.0 / (k + 1), "gnorm": 0.5**k, "step": float("inf") if k == 0 else 0.1} for k in range(iteration)],
        "rng": rng.bit_generator.state,
        "options": {"lr": 1e-3, "betas": [0.9, 0.999], "nested": {"flag": True, "none": None}},
    }


def raises_everywhere(comm, fn, *words) -> str:
    """``fn`` raises the same one-line InputError on every rank, containing ``words``."""
    try:
        fn()
        msg = None
    except InputError as e:
        msg = str(e)
    except Exception as e:  # noqa: BLE001  (report it, but keep the ranks in step)
        msg = f"not an InputError: {type(e).__name__}: {e}"
    msgs = comm.allgather(msg)
    assert all(m is not None for m in msgs), msgs
    assert len(set(msgs)) == 1, msgs
    assert not msgs[0].startswith("not an InputError"), msgs[0]
    assert "\n" not in msgs[0], msgs[0]
    for w in words:
        assert w in msgs[0], msgs[0]
    return msgs[0]


def on_root(comm, fn):
    """Run a file manipulation on rank 0 only, then synchronise."""
    if comm.rank == 0:
        fn()
    comm.Barrier()


def nat_equal(x, y):
    return all(np.array_equal(x[k], y[k]) for k in ("a", "b", "W", "mu"))


# --------------------------------------------------------------------------- roundtrip
@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["classes", "function"])
@pytest.mark.parametrize("groups", ["node", "data"])
def test_roundtrip(comm, tmp_shared, kind, groups):
    """Controls, state and optimiser arrays come back bit for bit, node- or data-parallel."""
    C = make_controls(comm, kind, sample_groups=1 if groups == "node" else comm.size)
    m = C.random(3)
    nat = C.natural(m)
    state = training_state()
    arrays = {"adam_m": nat["b"] * 0.5, "adam_v": nat["a"] ** 2, "step": np.int64(7), "mask": nat["a"] > 0}
    path = save_checkpoint(Path(tmp_shared) / "run" / "checkpoint", C, m, state, arrays)
    assert path == Path(tmp_shared) / "run" / "checkpoint.npz" and path.is_file()
    m2, state2, arrays2 = load_checkpoint(path, C)
    assert np.array_equal(m2.array_r, m.array_r)
    assert nat_equal(C.natural(m2), nat)
    assert state2 == state
    assert sorted(arrays2) == sorted(arrays)
    for k, v in arrays.items():
        assert arrays2[k].dtype == np.asarray(v).dtype and np.array_equal(arrays2[k], v), k
    # into a given Vec; every rank holds the same state
    vec = C.create_vec()
    assert load_checkpoint(path, C, vec)[0] is vec and np.array_equal(vec.array_r, m.array_r)
    assert comm.allgather(state2) == [state] * comm.size
    close(C, m, m2, vec)


@pytest.mark.mpi
@pytest.mark.parametrize("kind,kernel", [("classes", "dense"), ("function", "dense"), ("classes", "local"),
                                         ("function", "lowrank")])
def test_other_rank_count(comm, tmp_shared, kind, kernel):
    """Written on one rank (COMM_SELF, in-process) and read on all ranks, and the other
    way round: identical natural-order controls, for every kernel family (the local
    kernel's kappa lives on node rank 0, the low-rank psi, phi on the node rows)."""
    serial_path = Path(tmp_shared) / "serial.npz"
    nat_serial = None
    if comm.rank == 0:
        S = make_controls(MPI.COMM_SELF, kind, kernel=kernel)
        ms = S.random(5)
        nat_serial = S.natural(ms)
        save_checkpoint(serial_path, S, ms, {"iteration": 1})
        close(S, ms)
    nat_serial = comm.bcast(nat_serial, root=0)
    C = make_controls(comm, kind, kernel=kernel)
    m, state, _ = load_checkpoint(serial_path, C)
    assert state == {"iteration": 1}
    assert nat_equal(C.natural(m), nat_serial)
    # written on all ranks, read by every rank alone
    mp = C.random(6)
    nat_parallel = C.natural(mp)
    parallel_path = save_checkpoint(Path(tmp_shared) / "parallel.npz", C, mp, {"iteration": 2})
    S = make_controls(MPI.COMM_SELF, kind, kernel=kernel)
    ms, state, _ = load_checkpoint(parallel_path, S)
    assert state == {"iteration": 2}
    assert nat_equal(S.natural(ms), nat_parallel)
    close(S, ms)
    close(C, m, mp)


# --------------------------------------------------------------------------- latest, previous, atomicity
@pytest.mark.mpi
def test_latest_and_previous(comm, tmp_shared):
    """Each save keeps the one before as <stem>.prev.npz; latest_checkpoint picks the newest."""
    folder = Path(tmp_shared)
    assert latest_checkpoint(folder / "nowhere") is None
    assert latest_checkpoint(folder) is None
    C = make_controls(comm)
    path = folder / "checkpoint.npz"
    for it in (1, 2, 3):
        m = C.random(it)
        save_checkpoint(path, C, m, {"iteration": it})
        m.destroy()
    assert latest_checkpoint(folder) == path
    assert load_checkpoint(path, C)[1]["iteration"] == 3
    assert load_checkpoint(folder / "checkpoint.prev.npz", C)[1]["iteration"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.npz", "checkpoint.prev.npz"]
    # another stem is another run; keep_previous=False leaves .prev alone
    m = C.random(9)
    save_checkpoint(folder / "other.npz", C, m, {"iteration": 9}, keep_previous=False)
    save_checkpoint(folder / "other.npz", C, m, {"iteration": 10}, keep_previous=False)
    assert latest_checkpoint(folder) == path
    assert latest_checkpoint(folder, "other") == folder / "other.npz"
    assert not (folder / "other.prev.npz").exists()
    close(C, m)


@pytest.mark.mpi
def test_crash_while_writing(comm, tmp_shared, monkeypatch):
    """A write that fails midway raises on every rank and leaves the old checkpoint."""
    folder = Path(tmp_shared)
    path = folder / "checkpoint.npz"
    C = make_controls(comm)
    m1, m2 = C.random(1), C.random(2)
    save_checkpoint(path, C, m1, {"iteration": 1})
    savez = np.savez

    def crash(file, **entries):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(np, "savez", crash)
    raises_everywhere(comm, lambda: save_checkpoint(path, C, m2, {"iteration": 2}), str(path), "No space left on device")
    monkeypatch.setattr(np, "savez", savez)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.npz"]  # no temporary left
    assert latest_checkpoint(folder) == path
    m, state, _ = load_checkpoint(path, C)
    assert state == {"iteration": 1} and np.array_equal(m.array_r, m1.array_r)
    close(C, m, m1, m2)


@pytest.mark.mpi
@pytest.mark.parametrize("hardlinks", [True, False])
def test_killed_before_replace(comm, tmp_shared, monkeypatch, hardlinks):
    """Killed after the old file was kept as .prev but before the new one was moved in
    (with hard links, and with the rename fallback of file systems without them): the
    last complete checkpoint is still what latest_checkpoint and load return."""
    folder = Path(tmp_shared)
    path = folder / "checkpoint.npz"
    C = make_controls(comm)
    m1, m2, m3 = C.random(1), C.random(2), C.random(3)
    save_checkpoint(path, C, m1, {"iteration": 1})
    save_checkpoint(path, C, m2, {"iteration": 2})
    replace = os.replace

    def killed(src, dst):
        if Path(dst) == path and Path(src).name.endswith(".tmp"):
            raise OSError(5, "Input/output error (simulated kill)")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    if not hardlinks:
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(1, "Operation not permitted")))
    raises_everywhere(comm, lambda: save_checkpoint(path, C, m3, {"iteration": 3}), str(path))
    monkeypatch.undo()
    latest = latest_checkpoint(folder)
    assert latest == (path if hardlinks else folder / "checkpoint.prev.npz")
    m, state, _ = load_checkpoint(latest, C)
    assert state == {"iteration": 2} and np.array_equal(m.array_r, m2.array_r)
    if not hardlinks:
        raises_everywhere(comm, lambda: load_checkpoint(path, C), str(path), "does not exist")
    close(C, m, m1, m2, m3)


@pytest.mark.mpi
def test_stale_temporaries(comm, tmp_shared):
    """Temporaries of a killed writer (complete or truncated) are never returned and are
    removed by the next successful save."""
    folder = Path(tmp_shared)
    path = folder / "checkpoint.npz"
    C = make_controls(comm)
    m1, m2 = C.random(1), C.random(2)
    save_checkpoint(path, C, m1, {"iteration": 1})
    save_checkpoint(folder / "newer.npz", C, m2, {"iteration": 2})

    def plant():
        data = (folder / "newer.npz").read_bytes()
        (folder / ".checkpoint.npz.k1ll3d.tmp").write_bytes(data)  # complete, never moved in
        (folder / ".checkpoint.npz.tr0nc8.tmp").write_bytes(data[: len(data) // 2])
        (folder / "newer.npz").unlink()

    on_root(comm, plant)
    assert latest_checkpoint(folder) == path
    assert load_checkpoint(latest_checkpoint(folder), C)[1] == {"iteration": 1}
    save_checkpoint(path, C, m2, {"iteration": 3})
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.npz", "checkpoint.prev.npz"]
    close(C, m1, m2)


# --------------------------------------------------------------------------- bad input
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path):
    """Flip bytes in the middle of the data of controls/b."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = z.getinfo("controls/b.npy")
    middle = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    data = bytearray(path.read_bytes())
    for i in range(middle, middle + 3):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _tamper(path):
    """A well-formed archive whose content no longer matches its checksum."""
    with np.load(path, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    entries["controls/a"] = entries["controls/a"] + 1e-12
    with open(path, "wb") as f:
        np.savez(f, **entries)


CORRUPTIONS = {
    "missing": (lambda p: p.unlink(), "does not exist"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "text": (lambda p: p.write_text("iteration = 3\n"), "not an .npz archive"),
    "npy": (lambda p: np.save(open(p, "wb"), np.zeros(3)), "not an .npz archive"),
    "foreign npz": (lambda p: np.savez(open(p, "wb"), x=np.zeros(3)), "not a fem_dnn checkpoint"),
    "truncated": (_truncate, "truncated or corrupt"),
    "flipped bytes": (_flip, "corrupt"),
    "checksum": (_tamper, "checksum does not match"),
}


@pytest.mark.mpi
@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt(comm, tmp_shared, case):
    """One clear error naming the file and the problem, the same on every rank."""
    damage, words = CORRUPTIONS[case]
    C = make_controls(comm)
    m = C.random(1)
    path = save_checkpoint(Path(tmp_shared) / "checkpoint.npz", C, m, {"iteration": 1})
    on_root(comm, lambda: damage(path))
    raises_everywhere(comm, lambda: load_checkpoint(path, C), f"checkpoint {path}", words)
    assert latest_checkpoint(tmp_shared) is None
    close(C, m)


OTHER = {
    "n": ({"n": 9}, "n 8 in the file, 9 here"),
    "N": ({"N": 5}, "N 4 in the file, 5 here"),
    "kind": ({"kind": "function"}, "kind 'classes' in the file, 'function' here"),
    "K": ({"K": 4}, "K 3 in the file, 4 here"),
    "node space": ({"family": "P", "degree": 1, "n": 7}, "family 'DG' in the file, 'P' here; degree 0 in the file, 1 here"),
    "node coordinates": ({"bounds": [0.0, 2.0]}, "node coordinates differ at 8 of 8 nodes"),
    "depth points": ({"T": 2.0}, "depth points"),
}


@pytest.mark.mpi
@pytest.mark.parametrize("case", list(OTHER))
def test_other_discretisation(comm, tmp_shared, case):
    """A checkpoint of another discretisation is refused, saying what differs."""
    changes, words = OTHER[case]
    C = make_controls(comm)
    m = C.random(1)
    path = save_checkpoint(Path(tmp_shared) / "checkpoint.npz", C, m, {"iteration": 1})
    D = make_controls(comm, **changes)
    msg = raises_everywhere(comm, lambda: load_checkpoint(path, D), f"checkpoint {path}", "another discretisation", words)
    if case == "n":
        assert "N " not in msg and "kind" not in msg  # only what differs
    close(D)
    close(C, m)


@pytest.mark.mpi
def test_local_kernel_quadrature_is_checked(comm, tmp_shared):
    """A local kernel's checkpoint records its rule: one trained with the node quadrature
    is refused by an exact-rule kernel, saying so; a file without the record (written
    before the exact rule existed) holds a nodal one."""
    C = make_controls(comm, kernel="local", quadrature="nodal")
    m = C.random(1)
    path = save_checkpoint(Path(tmp_shared) / "checkpoint.npz", C, m, {"iteration": 1})
    D = make_controls(comm, kernel="local")
    assert D.network.kernel.quadrature == "exact"
    raises_everywhere(comm, lambda: load_checkpoint(path, D), f"checkpoint {path}", "another discretisation",
                      "kernel_quadrature 'nodal' in the file, 'exact' here")
    described = C.network.kernel.describe()
    C.network.kernel.describe = lambda: {k: v for k, v in described.items() if k != "kernel_quadrature"}
    old = save_checkpoint(Path(tmp_shared) / "old.npz", C, m, {"iteration": 2})
    E = make_controls(comm, kernel="local", quadrature="nodal")
    assert load_checkpoint(old, E)[1] == {"iteration": 2}
    raises_everywhere(comm, lambda: load_checkpoint(old, D), "kernel_quadrature 'nodal' in the file, 'exact' here")
    close(E), close(D)
    close(C, m)


@pytest.mark.mpi
def test_bad_save(comm, tmp_shared):
    """Unserialisable state, bad optimiser arrays or non-finite controls: an error on every
    rank, and the previous checkpoint untouched."""
    path = Path(tmp_shared) / "checkpoint.npz"
    C = make_controls(comm)
    m = C.random(1)
    save_checkpoint(path, C, m, {"iteration": 1})
    before = comm.bcast(path.read_bytes() if comm.rank == 0 else None)
    raises_everywhere(comm, lambda: save_checkpoint(path, C, m, {"f": print}), str(path), "not JSON-serialisable")
    raises_everywhere(comm, lambda: save_checkpoint(path, C, m, [1, 2]), "state must be a dict")
    raises_everywhere(comm, lambda: save_checkpoint(path, C, m, {}, {"a/b": np.zeros(2)}), "array name 'a/b'")
    raises_everywhere(comm, lambda: save_checkpoint(path, C, m, {}, {"x": np.array(["s"])}), "only numeric arrays")
    bad = m.copy()
    if comm.rank == 0:
        bad.array[0] = np.nan
    raises_everywhere(comm, lambda: save_checkpoint(path, C, bad, {}), "controls a are not finite")
    on_root(comm, lambda: None)
    assert comm.bcast(path.read_bytes() if comm.rank == 0 else None) == before
    assert sorted(p.name for p in Path(tmp_shared).iterdir()) == ["checkpoint.npz"]
    close(C, m, bad)


def test_byte_flips_never_load_wrong_data(tmp_path):
    """Damage anywhere in the file (zip headers, .npy headers, data, directory): the load
    either fails with InputError or returns exactly the saved content."""
    C = make_controls(MPI.COMM_SELF)
    m = C.random(1)
    state = training_state(3)
    path = save_checkpoint(tmp_path / "checkpoint.npz", C, m, state, {"v": np.arange(5.0)})
    data = path.read_bytes()
    damaged = tmp_path / "damaged.npz"
    outcomes = {"error": 0, "intact": 0}
    for i in np.linspace(0, len(data) - 1, 150).astype(int):
        flipped = bytearray(data)
        flipped[i] ^= 0x5A
        damaged.write_bytes(bytes(flipped))
        try:
            m2, state2, arrays2 = load_checkpoint(damaged, C)
        except InputError as e:
            assert str(damaged) in str(e) and "\n" not in str(e)
            outcomes["error"] += 1
            continue
        assert np.array_equal(m2.array_r, m.array_r) and state2 == state and np.array_equal(arrays2["v"], np.arange(5.0))
        outcomes["intact"] += 1
        m2.destroy()
    for cut in (0, 10, len(data) // 3, len(data) - 22, len(data) - 1):
        damaged.write_bytes(data[:cut])
        with pytest.raises(InputError, match="damaged.npz"):
            load_checkpoint(damaged, C)
    assert outcomes["error"] > 100, outcomes
    close(C, m)
