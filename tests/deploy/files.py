"""What every module of tests/deploy shares: where the deployment files are, how to read them, and the
checks that their settings, commands, health checks and COPY sources refer to what exists.

These are static checks, since no Docker engine or cluster runs here: every build context, Dockerfile,
COPY source, service, volume, secret, NER_* setting and `ner` command that docker-compose.yml,
deploy/Dockerfile*, deploy/k8s/ and deploy/render.yaml name must exist in this repository and its
code; each failure names the file and the bad reference.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import io
import json
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

import yaml
from pydantic import ValidationError

from shared.cli import build_parser
from shared.core.celery_app import celery_app
from shared.core.config import Settings, describe_errors

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("deploy/Dockerfile", "deploy/Dockerfile.cuda")
COMPOSE_FILE = "docker-compose.yml"
COMPOSE_GPU_FILE = "docker-compose.gpu.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
RENDER_FILE = ROOT / "deploy" / "render.yaml"
SETTING_FIELDS = frozenset(Settings.model_fields)
# The parts of the service that read model versions and so need the shared artifact store.
MODEL_COMMANDS = frozenset({"serve", "worker", "trainer"})
FLOWER_HEALTH_PATH = "/healthcheck"  # Flower's own route, outside basic auth


# --- helpers shared by every format ---------------------------------------------------------------


class Problems(list[str]):
    """Bad references found so far; the assertion message lists them all."""

    def check(self) -> None:
        assert not self, "bad references in the deployment files:\n  " + "\n  ".join(self)


class _GivenOnly(Settings):
    """Settings from the given values only: neither this process's environment nor a .env file."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):  # type: ignore[no-untyped-def]
        return (init_settings,)


def setting_problems(env: Mapping[str, str | None], where: str) -> list[str]:
    """Every NER_* name must be a Settings field, and the values together must validate."""
    problems, given = [], {}
    for name, value in env.items():
        if not name.startswith("NER_"):
            continue
        field_name = name.removeprefix("NER_").lower()
        if field_name not in SETTING_FIELDS:
            problems.append(
                f"{where}: {name} is not a setting (shared.core.config.Settings has no {field_name!r})"
            )
        elif value is not None:
            given[field_name] = value
    try:
        _GivenOnly(**given)
    except ValidationError as exc:
        problems.extend(f"{where}: invalid value: {line}" for line in describe_errors(exc).splitlines())
    return problems


def listening_ports(subcommand: str | None, env: Mapping[str, str | None]) -> set[int]:
    """The ports a `ner` process with this environment listens on (settings and their defaults)."""
    given = {name[4:].lower(): value for name, value in env.items() if name.startswith("NER_") and value}
    try:
        settings = _GivenOnly(**{key: value for key, value in given.items() if key in SETTING_FIELDS})
    except ValidationError:
        return set()  # reported by setting_problems
    ports = {"serve": {settings.port}, "flower": {settings.flower_port}}.get(subcommand or "", set())
    return ports | ({settings.metrics_port} if settings.metrics_port else set())


def gateway_paths() -> set[str]:
    from gateway.routers.health import router

    return {route.path for route in router.routes}


def parse_ner(argv: list[str]) -> tuple[Any, str]:
    """The parsed `ner` command line, or None and argparse's complaint."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(argv[1:]), ""
    except SystemExit:
        return None, stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else "invalid"


def celery_subcommands() -> set[str]:
    from celery.bin.celery import celery

    return set(celery.commands)


def command_problems(argv: list[str], where: str) -> list[str]:
    """A command must be a valid `ner ...` command line, or `celery --app <module of ours> <sub>`."""
    if not argv:
        return [f"{where}: empty command"]
    if argv[0] == "ner":
        args, complaint = parse_ner(argv)
        return [] if args else [f"{where}: `{shlex.join(argv)}` is not a valid ner command: {complaint}"]
    if argv[0] == "celery":
        app = option_value(argv, "--app", "-A")
        problems = []
        if app is None or not module_exists(app.split(":")[0]):
            problems.append(f"{where}: `{shlex.join(argv)}` names no importable --app module")
        positional = [arg for arg in argv[1:] if not arg.startswith("-") and arg != app]
        if not positional or positional[0] not in celery_subcommands():
            problems.append(f"{where}: `{shlex.join(argv)}` runs no celery subcommand")
        return problems
    return [f"{where}: runs {argv[0]!r}; the image provides `ner` (and `celery`)"]


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def option_value(argv: list[str], *names: str) -> str | None:
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                return argv[index + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def ner_subcommand(argv: list[str]) -> str | None:
    args, _ = parse_ner(argv) if argv and argv[0] == "ner" else (None, "")
    return getattr(args, "command", None)


def celery_argv(argv: list[str], state_dir: Path) -> list[str]:
    """What `ner worker|trainer|flower` hands Celery: queues, node name, Flower's database."""
    args, _ = parse_ner(argv)
    if args is None or args.command not in ("worker", "trainer", "flower"):
        return []
    calls: list[list[str]] = []
    with (
        mock.patch.object(celery_app, "worker_main", side_effect=calls.append),
        mock.patch.object(celery_app, "start", side_effect=calls.append),
    ):
        args.handler(args, _GivenOnly(state_dir=state_dir))
    return calls[0] if calls else []


def as_argv(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def ping_destination(healthcheck_argv: list[str]) -> str | None:
    """The node a `celery inspect ping --destination NODE` health check asks."""
    for command in " ".join(healthcheck_argv).split("||")[0].split("&&"):
        words = shlex.split(command)
        if "celery" in words and "ping" in words:
            return option_value(words, "--destination", "-d")
    return None


def node_name_problems(run: list[str], health: list[str], where: str, tmp: Path) -> list[str]:
    """A worker's health check must ping the node name that `ner worker|trainer` gives it."""
    hostname = option_value(celery_argv(run, tmp), "--hostname", "-n")
    destination = ping_destination(health)
    if hostname is None or destination is None:
        return [f"{where}: health check pings {destination!r}, worker node name is {hostname!r}"]
    if destination != hostname.replace("%h", "$HOSTNAME"):
        return [f"{where}: health check pings {destination!r}, but `{shlex.join(run)}` is {hostname!r}"]
    return []


def load_yaml(path: Path) -> Any:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    with path.open() as handle:
        return yaml.safe_load(handle)


# --- Dockerfiles ----------------------------------------------------------------------------------


@dataclass
class Dockerfile:
    path: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, path: str) -> Dockerfile:
        text = (ROOT / path).read_text()
        logical: list[str] = []
        current = ""
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("#") or not stripped:
                continue  # comment lines end nothing, even inside a continued instruction
            current += " " + stripped.removesuffix("\\") if current else stripped.removesuffix("\\")
            if not stripped.endswith("\\"):
                logical.append(current.strip())
                current = ""
        dockerfile = cls(path)
        for line in logical:
            keyword, _, rest = line.partition(" ")
            dockerfile.instructions.append((keyword.upper(), rest.strip()))
        return dockerfile

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        env = {}
        for rest in self.all("ENV"):
            words = shlex.split(rest)
            if words and "=" not in words[0]:  # legacy `ENV NAME value`
                env[words[0]] = " ".join(words[1:])
                continue
            env.update(word.split("=", 1) for word in words)
        return env

    def args(self) -> dict[str, str]:
        return dict([*rest.split("=", 1), ""][:2] for rest in self.all("ARG"))

    def cmd(self) -> list[str]:
        cmds = self.all("CMD")
        if not cmds:
            return []
        return json.loads(cmds[-1]) if cmds[-1].startswith("[") else shlex.split(cmds[-1])

    def healthcheck(self) -> list[str]:
        checks = self.all("HEALTHCHECK")
        if not checks:
            return []
        return shlex.split(checks[-1].split(" CMD ", 1)[1]) if " CMD " in checks[-1] else []


def dockerignore_rules() -> list[tuple[bool, str]]:
    path = ROOT / ".dockerignore"
    rules = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, line.removeprefix("!").strip().strip("/")))
    return rules


def ignored(relative: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = PurePosixPath(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, pattern in rules:
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            result = not negated
    return result


def copy_source_problems(dockerfile: Dockerfile) -> list[str]:
    rules, problems = dockerignore_rules(), []
    for rest in dockerfile.all("COPY") + dockerfile.all("ADD"):
        words = shlex.split(rest)
        if any(word.startswith("--from") for word in words):
            continue  # from another stage or image, not from the build context
        sources = [word for word in words if not word.startswith("--")][:-1]
        for source in sources:
            relative = source.strip("/") or "."
            matches = list(ROOT.glob(relative)) if any(c in relative for c in "*?[") else [ROOT / relative]
            if not any(match.exists() for match in matches):
                problems.append(f"{dockerfile.path}: COPY source {source!r} does not exist")
                continue
            hidden = [path for path in source_files(matches) if ignored(path, rules)]
            if hidden:
                problems.append(
                    f"{dockerfile.path}: COPY {source!r} is excluded by .dockerignore (e.g. {hidden[0]})"
                )
    return problems


def source_files(paths: list[Path]) -> list[str]:
    """The files under ``paths`` that git tracks or would track: sources, not caches or builds."""
    relative = [path.relative_to(ROOT).as_posix() for path in paths]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *relative],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode == 0:
        return listed.stdout.split()
    # Not a git checkout (e.g. an unpacked sdist): every file but byte code.
    files = [p for path in paths for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()]
    return [p.relative_to(ROOT).as_posix() for p in files if "__pycache__" not in p.parts]


# --- Docker Compose -------------------------------------------------------------------------------

_COMPOSE_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))")


def interpolate(value: str, seen: set[str]) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} / $$, as on a host where no variable is set."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        expression = match["braced"] or match["bare"]
        name, operator, rest = re.match(r"(\w+)(:?[-?+]?)(.*)", expression, re.S).groups()  # type: ignore[union-attr]
        seen.add(name)
        if operator.endswith("-"):
            return rest
        if operator.endswith("?"):
            return f"required-{name.lower()}"  # compose refuses to start without it; any value will do
        return ""

    return _COMPOSE_VARIABLE.sub(replace, value)
