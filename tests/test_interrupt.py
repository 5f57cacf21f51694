"""Interrupts, full disks and run folders (issue 14): nothing lost, nothing hung.

- **SIGINT / SIGTERM** during ``fem-dnn train``, serially and under ``mpirun -n 2`` (the
  signal sent to the launcher's process group, as a terminal's Ctrl-C does): every rank
  stops at the next accepted iterate, the checkpoint holds it, one line names the
  iteration, the checkpoint and ``--resume``, the exit status is 130 / 143, and no
  traceback. ``evaluate`` works on the folder and ``--resume`` continues from it (Adam,
  stopped mid-epoch, ends bitwise where the uninterrupted run ends). A signal during the
  start-up writes nothing; one during a checkpoint write lets the write finish; a second
  Ctrl-C ends the run at once, the previous checkpoint intact.
- **A full disk** (ENOSPC injected into the writer) while writing a checkpoint or an
  output file: one line naming the file, the previous checkpoint intact, exit status 2.
- **Run folders**: ``--overwrite`` leaves no file of the old run behind (and no foreign
  file is touched); a run folder always has a checkpoint once it has a config.

The subprocess tests run from the serial session only and print their measured times.
"""

import errno
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from conftest import (ADAM, EXIT_BOUND, LBFGS, Job, check_checkpoint, needs_mpirun, read_summary, reference, result,
                      run, serial_only, sets)

pytestmark = serial_only
LINE = re.compile(r"^fem-dnn: interrupted \((SIG\w+)\) at (iteration|step) (\d+); checkpoint in (\S+); continue with --resume$")


def fem_dnn_lines(job):
    return [text for _, text in job.err if text.startswith("fem-dnn")]


def send(job, sig, ranks):
    """Serially to the process; under mpirun to the launcher's process group (what a
    terminal does on Ctrl-C; MPICH's mpirun forwards it to the ranks)."""
    if ranks == 1:
        os.kill(job.p.pid, sig)
    else:
        os.killpg(job.p.pid, sig)
    return time.monotonic()


def wait_for(job, pattern, timeout=120.0):
    """Wait until a line matching ``pattern`` appears on stderr (the fault injector's)."""
    deadline = time.monotonic() + timeout
    while not any(re.search(pattern, text) for _, text in job.err):
        assert job.p.poll() is None, f"the run ended first:\n{job.stdout[-2000:]}\n{job.stderr[-2000:]}"
        assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s"
        time.sleep(0.01)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=needs_mpirun)])
def test_signal_stops_at_an_accepted_iterate(tmp_path, ranks, sig):
    signum = getattr(signal, sig)
    job = Job(["train"] + sets(LBFGS, "out"), tmp_path, ranks)
    assert job.wait_for_progress()
    while max(job.progress(), default=0) < 3 and job.p.poll() is None:
        time.sleep(0.01)
    sent = send(job, signum, ranks)
    job.wait(EXIT_BOUND)
    print(f"\n{sig} on {ranks} rank(s) at iteration {max(job.progress())}: exit {job.p.returncode} "
          f"{job.ended - sent:.3f} s after the signal")
    assert job.p.returncode == 128 + signum, job.stderr[-3000:]
    assert "Traceback" not in job.stderr, job.stderr[-3000:]
    lines = fem_dnn_lines(job)
    assert len(lines) == 1, job.stderr
    m = LINE.match(lines[0])
    assert m and m.group(1) == sig and m.group(2) == "iteration", lines[0]
    it = int(m.group(3))
    assert it == max(job.progress())  # the last iterate printed is the one kept
    assert Path(m.group(4)) == Path("out") / "checkpoint" / "checkpoint.npz"
    state = check_checkpoint(tmp_path / "out")
    assert state["iteration"] == it
    assert not (tmp_path / "out" / "summary.json").exists()  # the run is not finished
    assert len((tmp_path / "out" / "metrics.csv").read_text().splitlines()) == it + 2  # header, iterations 0..it
    if sig != "SIGINT":
        return  # what follows does not depend on the signal: checked once per rank count
    ev = run(["evaluate", "out"], tmp_path, ranks)
    assert f"iteration {it}:" in ev.stdout, ev.stdout
    resumed = run(["train", "--resume"] + sets(LBFGS + [f"training.max_it={it + 2}"], "out"), tmp_path, ranks)
    assert resumed.progress() == [it, it + 1, it + 2]  # max_it counts the whole run, the resumed part included
    assert read_summary(tmp_path / "out")["iterations"] == it + 2


@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=needs_mpirun)])
def test_adam_interrupted_mid_epoch_resumes_exactly(tmp_path, tmp_path_factory, ranks):
    """Adam stopped by SIGINT after a mini-batch step inside an epoch: the checkpoint
    holds that step (mid-epoch), and the resumed run ends bitwise where the
    uninterrupted run ends (metrics and summary)."""
    ref, _ = reference("adam", ranks, tmp_path_factory)
    job = Job(["train"] + sets(ADAM, "out"), tmp_path, ranks)
    assert job.wait_for_progress()
    send(job, signal.SIGINT, ranks)
    job.wait(EXIT_BOUND)
    assert job.p.returncode == 130, job.stderr[-3000:]
    m = LINE.match(fem_dnn_lines(job)[0])
    assert m and m.group(2) == "step", job.stderr
    state = check_checkpoint(tmp_path / "out")
    assert state["step"] == int(m.group(3))
    print(f"\nadam on {ranks} rank(s): stopped at step {state['step']} (epoch {state['epoch']} + {state['batch']} batches)")
    run(["train", "--resume"] + sets(ADAM, "out"), tmp_path, ranks)
    assert result(tmp_path / "out") == result(ref)


def test_signal_during_start_up_writes_nothing(tmp_path):
    job = Job(["inject", "--kind", "slow-start", "--seconds", "2", "--", "train"] + sets(LBFGS, "out"), tmp_path)
    wait_for(job, r"^inject: start-up at")
    send(job, signal.SIGINT, 1)
    job.wait(EXIT_BOUND)
    assert job.p.returncode == 130, job.stderr[-3000:]
    assert fem_dnn_lines(job) == ["fem-dnn: interrupted (SIGINT) before training started; nothing was written"], job.stderr
    assert "Traceback" not in job.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=needs_mpirun)])
def test_signal_during_a_checkpoint_write_lets_it_finish(tmp_path, ranks):
    job = Job(["inject", "--kind", "slow-checkpoint", "--iteration", "3", "--seconds", "1", "--", "train"]
              + sets(LBFGS, "out"), tmp_path, ranks)
    wait_for(job, r"^inject: checkpoint write at")
    send(job, signal.SIGINT, ranks)
    job.wait(EXIT_BOUND)
    assert job.p.returncode == 130, job.stderr[-3000:]
    assert LINE.match(fem_dnn_lines(job)[0]).group(3) == "3", job.stderr
    assert check_checkpoint(tmp_path / "out")["iteration"] == 3


def test_second_sigint_ends_at_once(tmp_path):
    """The first SIGINT waits for the safe point (here: after a 30 s checkpoint write);
    the second ends the process at once, and the checkpoint before it is intact."""
    job = Job(["inject", "--kind", "slow-checkpoint", "--iteration", "3", "--seconds", "30", "--", "train"]
              + sets(LBFGS, "out"), tmp_path)
    wait_for(job, r"^inject: checkpoint write at")
    send(job, signal.SIGINT, 1)
    time.sleep(0.2)
    assert job.p.poll() is None  # still writing: the first signal waits for the safe point
    sent = send(job, signal.SIGINT, 1)
    job.wait(EXIT_BOUND)
    print(f"\nsecond SIGINT: exit {job.p.returncode} after {job.ended - sent:.3f} s")
    assert job.p.returncode == 130 and job.ended - sent < 5.0
    assert check_checkpoint(tmp_path / "out")["iteration"] == 2  # the one before the interrupted write


# --------------------------------------------------------------------------- full disk
def _enospc_after(monkeypatch, count, names=None):
    """Make the ``count``-th and later atomic writes (of files whose name is in
    ``names``, or any) fail as a full disk does, in the fsync of the temporary file."""
    import fem_dnn._files as files

    real, seen = files.replace_atomically, {"n": 0}

    def full(path, write, before_replace=None):
        if names is None or Path(path).name in names:
            seen["n"] += 1
            if seen["n"] >= count:
                def failing(f):
                    write(f)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real(path, failing, before_replace)
        return real(path, write, before_replace)

    monkeypatch.setattr(files, "replace_atomically", full)


def _main(args, cwd, monkeypatch, capfd):
    from fem_dnn.app.cli import main

    monkeypatch.chdir(cwd)
    capfd.readouterr()
    code = main(args)
    return code, capfd.readouterr()


def test_full_disk_during_a_checkpoint(tmp_path, monkeypatch, capfd):
    """The 4th checkpoint write (iteration 2: the initial controls, iterations 0 and 1
    came before) hits a full disk: one line naming the file, exit 2, the previous
    checkpoint (iteration 1) intact."""
    _enospc_after(monkeypatch, 4, names={"checkpoint.npz"})
    code, (out, err) = _main(["train"] + sets(LBFGS, "out"), tmp_path, monkeypatch, capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("fem-dnn: error: cannot write checkpoint out/checkpoint/checkpoint.npz: No space left on device"), lines[0]
    assert "the disk is full" in lines[0]
    monkeypatch.undo()
    assert check_checkpoint(tmp_path / "out")["iteration"] == 1
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoint").iterdir()) == ["checkpoint.npz", "checkpoint.prev.npz"]


def test_full_disk_writing_the_summary(tmp_path, monkeypatch, capfd):
    _enospc_after(monkeypatch, 1, names={"summary.json"})
    code, (out, err) = _main(["train"] + sets(LBFGS + ["training.max_it=3"], "out"), tmp_path, monkeypatch, capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("fem-dnn: error: cannot write out/summary.json: No space left on device"), lines[0]
    assert not (tmp_path / "out" / "summary.json").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]  # no temporary left
    monkeypatch.undo()
    assert check_checkpoint(tmp_path / "out")["iteration"] == 3  # the final controls are safe


# --------------------------------------------------------------------------- run folders
def test_overwrite_leaves_nothing_of_the_old_run(tmp_path, monkeypatch, capfd):
    """A run with figures, then ``--overwrite`` with none: the old figures are gone, a
    file the runs did not write stays, and the folder describes the new run."""
    small = LBFGS + ["training.max_it=2"]
    code, _ = _main(["train"] + sets([s for s in small if not s.startswith("output.figures")] + ["output.plot_samples=1"], "out"),
                    tmp_path, monkeypatch, capfd)
    assert code == 0
    assert (tmp_path / "out" / "weights.png").exists()
    (tmp_path / "out" / "notes.txt").write_text("mine\n")
    code, (out, err) = _main(["train"] + sets(small, "out"), tmp_path, monkeypatch, capfd)
    assert code == 2 and "holds a run" in err
    code, _ = _main(["train", "--overwrite"] + sets(small + ["training.max_it=1"], "out"), tmp_path, monkeypatch, capfd)
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["checkpoint", "config.toml", "metrics.csv", "notes.txt", "summary.json"], names
    assert read_summary(tmp_path / "out")["iterations"] == 1
    assert "max_it = 1" in (tmp_path / "out" / "config.toml").read_text()


def test_a_folder_with_a_config_has_a_checkpoint(tmp_path, monkeypatch, capfd):
    """The initial controls are checkpointed before config.toml is written: a run that
    dies in its first gradient leaves a folder that ``evaluate`` and ``--resume`` accept."""
    import fem_dnn.optimize as opt

    def dies(self, tao):
        raise MemoryError("injected: the first iteration's arrays do not fit")

    monkeypatch.setattr(opt.Optimizer, "_monitor", dies)
    with pytest.raises(Exception):  # noqa: B017  (whatever the monitor raised, re-raised by solve)
        from fem_dnn.app.config import load_config
        from fem_dnn.app.train import train

        monkeypatch.chdir(tmp_path)
        train(load_config(None, LBFGS + ["output.folder='out'"]), MPI.COMM_SELF, out=lambda *a: None)
    monkeypatch.undo()
    assert (tmp_path / "out" / "config.toml").exists()
    state = check_checkpoint(tmp_path / "out")
    assert state["initial"] and state["iteration"] == 0
    code, (out, err) = _main(["evaluate", "out"], tmp_path, monkeypatch, capfd)
    assert code == 0 and "the initial controls" in out, out + err
    code, (out, err) = _main(["train", "--resume"] + sets(LBFGS + ["training.max_it=2"], "out"), tmp_path, monkeypatch, capfd)
    assert code == 0, err
    assert np.isfinite(read_summary(tmp_path / "out")["J"])
