"""The hash-locked requirements stay in step with pyproject.toml (issue 19, supply chain).

`make install` (so `make test`, `make run` and CI) installs deploy/requirements/test.lock with
`--require-hashes`, then the project with `--no-deps`: a dependency added to pyproject.toml but not
to the lock would be missing at run time, and one whose range no longer admits the pin would run an
untested version. `deploy/requirements/compile.sh` regenerates every lock in one command.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.files import ROOT

REQUIREMENTS = ROOT / "deploy" / "requirements"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\\;]+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
HOW_TO_FIX = "pyproject.toml changed: run deploy/requirements/compile.sh"


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(lock: Path) -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes) of a uv/pip-compile lock file."""
    pins: dict[str, tuple[Version, int]] = {}
    name = None
    for line in lock.read_text().splitlines():
        if match := _PIN.match(line):
            name = canonicalize_name(match[1])
            pins[name] = (Version(match[2]), 0)
        if name is not None and (count := len(_HASH.findall(line))):
            version, hashes = pins[name]
            pins[name] = (version, hashes + count)
    return pins


def _requirements(*extras: str) -> list[Requirement]:
    project = _project()
    found = [Requirement(text) for text in project["dependencies"]]
    for extra in extras:
        found += [Requirement(text) for text in project["optional-dependencies"][extra]]
    return found


def _check(lock: Path, requirements: list[Requirement], *, skip: frozenset[str] = frozenset()) -> None:
    pins = _pins(lock)
    problems = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name in skip or (requirement.marker and not requirement.marker.evaluate()):
            continue
        if name not in pins:
            problems.append(f"{requirement} is not in {lock.name}")
            continue
        version, _hashes = pins[name]
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: {lock.name} pins {version}")
    assert not problems, f"{HOW_TO_FIX}\n" + "\n".join(problems)


def test_every_dependency_and_test_extra_is_in_the_test_lock_within_its_range() -> None:
    _check(REQUIREMENTS / "test.lock", _requirements("test"))


def test_the_image_locks_hold_every_runtime_dependency_within_its_range() -> None:
    _check(REQUIREMENTS / "cpu.lock", _requirements())
    # The CUDA image's torch comes from the PyTorch CUDA index (pinned in its Dockerfile).
    _check(REQUIREMENTS / "cuda.lock", _requirements(), skip=frozenset({"torch"}))


def test_the_test_lock_pins_what_the_cpu_image_runs() -> None:
    """CI tests the versions the image ships: test.lock is compiled with cpu.lock as constraint."""
    cpu, test = _pins(REQUIREMENTS / "cpu.lock"), _pins(REQUIREMENTS / "test.lock")
    differ = {
        name: (cpu[name][0], test[name][0]) for name in cpu if test.get(name, cpu[name])[0] != cpu[name][0]
    }
    assert not differ, f"{HOW_TO_FIX}: {differ}"
    assert set(cpu) <= set(test)


@pytest.mark.parametrize("lock", ["test.lock", "cpu.lock", "cuda.lock", "encoder.lock"])
def test_every_pin_carries_a_hash(lock: str) -> None:
    pins = _pins(REQUIREMENTS / lock)
    assert pins, lock
    assert not [name for name, (_version, hashes) in pins.items() if hashes == 0]


def test_make_install_uses_the_lock_with_hashes_and_the_project_without_deps() -> None:
    makefile = (ROOT / "Makefile").read_text()
    rule = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "deploy/requirements/test.lock" in rule and "deploy/requirements/encoder.lock" in rule
    installs = [line.strip() for line in rule.splitlines() if "pip install" in line]
    assert len(installs) == 4, installs
    # Every install is either from a lock with hashes, the project itself, or an explicit TORCH=.
    for line in installs:
        assert "--require-hashes" in line or "-e ." in line or "$(TORCH)" in line, line
    assert "pyproject.toml" in rule.splitlines()[0] and "$(LOCKS)" in rule.splitlines()[0]


def test_ci_runs_make_test() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
