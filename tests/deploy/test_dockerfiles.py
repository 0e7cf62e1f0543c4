"""deploy/Dockerfile and deploy/Dockerfile.cuda: instructions, COPY sources, settings, command, user,
the torch install, shell syntax and the health check."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.files import (
    DOCKERFILES,
    ROOT,
    Dockerfile,
    Problems,
    command_problems,
    copy_source_problems,
    gateway_paths,
    ner_subcommand,
    node_name_problems,
    setting_problems,
)

DOCKERFILE_INSTRUCTIONS = frozenset({
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
})  # fmt: skip


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_references_exist(path: str, tmp_path: Path) -> None:
    problems = Problems()
    assert (ROOT / path).is_file(), f"{path} is missing"
    dockerfile = Dockerfile.read(path)
    problems += [
        f"{path}: unknown instruction {keyword!r} (a line continuation missing?)"
        for keyword, _ in dockerfile.instructions
        if keyword not in DOCKERFILE_INSTRUCTIONS
    ]
    problems += copy_source_problems(dockerfile)
    problems += setting_problems(dockerfile.env(), f"{path} ENV")
    problems += command_problems(dockerfile.cmd(), f"{path} CMD")
    user = (dockerfile.all("USER") or ["root"])[-1].split(":")[0]
    if user in ("root", "0"):
        problems.append(f"{path}: the image runs as root (last USER is {user!r})")

    # torch must come from the PyTorch index before `pip install .`, which would otherwise pull
    # whatever torch PyPI resolves "torch>=2.4" to: pinned on the command line, or by the lock that
    # is installed with the index as an extra one.
    runs = dockerfile.all("RUN")
    torch_step = next(
        (
            i
            for i, run in enumerate(runs)
            if ("torch==" in run and "--index-url" in run)
            or ("--extra-index-url" in run and "TORCH_INDEX_URL" in run and ".lock" in run)
        ),
        None,
    )
    project_step = next(
        (i for i, run in enumerate(runs) if re.search(r"pip install [^&]*\.(\s|$)", run)), None
    )
    if torch_step is None or project_step is None or torch_step > project_step:
        problems.append(f"{path}: torch is not installed from --index-url before `pip install .`")
    for run in runs:
        problems += shell_syntax_problems(re.sub(r"^(--\S+\s+)+", "", run), f"{path} RUN")
    index = dockerfile.args().get("TORCH_INDEX_URL", "")
    expected = "/whl/cpu" if path.endswith("Dockerfile") else "/whl/cu"
    if expected not in index:
        problems.append(f"{path}: TORCH_INDEX_URL defaults to {index!r}, expected a {expected} index")

    health = dockerfile.healthcheck()
    subcommand = ner_subcommand(dockerfile.cmd())
    if subcommand == "serve" and not any(path_ in " ".join(health) for path_ in gateway_paths()):
        problems.append(
            f"{path}: the HEALTHCHECK of the gateway image asks none of {sorted(gateway_paths())}"
        )
    if subcommand in ("worker", "trainer"):
        problems += node_name_problems(dockerfile.cmd(), health, f"{path} HEALTHCHECK", tmp_path)
    problems.check()


def shell_syntax_problems(script: str, where: str) -> list[str]:
    """`sh -n`: the shell (Debian's dash in the image) parses the script without running it."""
    checked = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        return [f"{where}: shell syntax error: {checked.stderr.strip()} in `{script[:80]}...`"]
    return []
