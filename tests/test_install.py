"""The install is reproducible: ``./run setup`` installs the exact versions of
constraints.txt (the ones the suite last passed with), and setup.cfg's ranges admit them."""

import configparser
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from mpi4py import MPI

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="reads files, serially")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt pins exact versions only: {line!r}"
            pins[_norm(name)] = version.strip()
    return pins


def _requirements() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = [r for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    for extra in ("dolfinx", "test", "mnist"):
        reqs += [r for r in cfg["options.extras_require"][extra].splitlines() if r.strip()]
    return reqs


def test_constraints_pin_every_requirement_within_its_range():
    """Every dependency of the package and of its dolfinx/test/mnist extras has an exact
    version in constraints.txt, and that version lies in setup.cfg's range (so plain
    ``pip install .`` admits what CI runs)."""
    from packaging.requirements import Requirement

    pins = _pins()
    for line in _requirements():
        req = Requirement(line)
        assert _norm(req.name) in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[_norm(req.name)]), (req, pins[_norm(req.name)])


@pytest.mark.skipif(not (Path(sys.prefix) / ".fem_dnn_constraints").exists(),
                    reason="an environment ./run setup did not make with constraints.txt")
def test_the_environment_has_the_pinned_versions():
    """What ./run setup installed into its environment is what constraints.txt says
    (the packages of a system DOLFINx, left out of the pins there, excepted)."""
    pins = {}
    for line in (Path(sys.prefix) / ".fem_dnn_constraints").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_norm(name)] = version.strip()
    wrong = {}
    for dist in metadata.distributions():
        # a package's vendored copies are not installed distributions: importing
        # setuptools (the FFCx JIT does) puts setuptools/_vendor on sys.path, and with it
        # the packaging it vendors, whatever constraints.txt pins
        if "_vendor" in Path(str(dist.locate_file(""))).parts:
            continue
        name = _norm(dist.metadata["Name"])
        if name in pins and dist.version != pins[name]:
            wrong[name] = (dist.version, pins[name])
    assert not wrong, f"installed versions differ from constraints.txt: {wrong}"
