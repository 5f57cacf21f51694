"""The two test tiers of tests/conftest.py: the default tier (``./run test``) is every
test not marked ``slow``; ``--slow`` (``./run test --slow``) is exactly the soak tests.
Together they are the whole suite, and every soak test keeps a short version in the
default tier, so that no claim leaves the tier CI runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mpi4py import MPI

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="collects in a subprocess of the serial session")

#: The soak tests: long random-kill loops and leak checks over many solves.
SOAK = {
    "test_faults.py::test_many_kills[adam-1-10]",
    "test_faults.py::test_many_kills[lbfgs-2-6]",
    "test_faults.py::test_adam_killed_at_random_moments_resumes_exactly[1-3]",
    "test_faults.py::test_adam_killed_at_random_moments_resumes_exactly[2-3]",
    "test_faults.py::test_lbfgs_killed_at_random_moments_reaches_the_same_minimiser[3]",
    "test_faults.py::test_no_leak_over_gradients[1000]",
    "test_faults.py::test_no_leak_over_hessian_actions[200]",
    "test_faults.py::test_no_leak_over_optimizer_cycles[10]",
    "test_estimate.py::test_combined_effectivity[4-levels]",
}


def collect(*options) -> set[str]:
    """Test ids the suite collects with ``options`` (paths relative to tests/)."""
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *options, "tests"],
                         cwd=HERE.parent, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {line.split("tests/", 1)[1] for line in res.stdout.splitlines() if line.startswith("tests/") and "::" in line}


def test_tiers_split_the_suite():
    default, slow = collect(), collect("--slow")
    assert slow == SOAK
    assert not default & slow
    assert len(default) >= 536  # the serial default tier when the tiers were introduced


def test_every_soak_test_has_a_short_version_in_the_default_tier():
    """The same test with one kill, or a tenth of the solves, or fewer levels (test_many_kills,
    the longer loop, is a longer version of the random-kill tests)."""
    default = collect()
    for test in {t.replace("test_many_kills", "test_adam_killed_at_random_moments_resumes_exactly") for t in SOAK}:
        name = re.sub(r"\[.*\]$", "", test)
        assert any(t.startswith(name + "[") for t in default), test
