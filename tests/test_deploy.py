"""Static checks of the deployment files, since no Docker engine or cluster runs here.

Every build context, Dockerfile, COPY source, service, volume, secret, NER_* setting and `ner`
command that docker-compose.yml, deploy/Dockerfile*, deploy/k8s/ and deploy/render.yaml name must
exist in this repository and its code; each failure names the file and the bad reference.
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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

import pytest
import yaml
from pydantic import ValidationError

from shared.celery_app import INFERENCE_QUEUE, celery_app
from shared.cli import build_parser
from shared.config import Settings, describe_errors

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ("deploy/Dockerfile", "deploy/Dockerfile.cuda")
COMPOSE_FILE = "docker-compose.yml"
COMPOSE_GPU_FILE = "docker-compose.gpu.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
RENDER_FILE = ROOT / "deploy" / "render.yaml"
SETTING_FIELDS = frozenset(Settings.model_fields)
# The parts of the service that read model versions and so need the shared artifact store.
MODEL_COMMANDS = frozenset({"serve", "worker", "trainer"})
DOCKERFILE_INSTRUCTIONS = frozenset({
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
})  # fmt: skip
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
                f"{where}: {name} is not a setting (shared.config.Settings has no {field_name!r})"
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
    # whatever torch PyPI resolves "torch>=2.4" to.
    runs = dockerfile.all("RUN")
    torch_step = next((i for i, run in enumerate(runs) if "torch==" in run and "--index-url" in run), None)
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


def test_pyproject_installs_the_ner_command() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"].get("ner") == "shared.cli:main", (
        "the images run `ner`: pyproject must install it"
    )


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


def compose_env(service: Mapping[str, Any], seen: set[str]) -> dict[str, str | None]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict([*item.split("=", 1), None][:2] for item in environment)
    return {
        name: None if value is None else interpolate(str(value), seen) for name, value in environment.items()
    }


def compose_volumes(service: Mapping[str, Any]) -> dict[str, str]:
    """Named volumes of a service: {mount path: volume name}."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        else:
            source, target = volume.get("source", ""), volume.get("target", "")
            if volume.get("type", "volume") != "volume":
                continue
        if source and not source.startswith((".", "/", "~", "$")):
            mounts[target] = source
    return mounts


def load_yaml(path: Path) -> Any:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    with path.open() as handle:
        return yaml.safe_load(handle)


def compose_service_problems(
    file: str, name: str, service: Mapping[str, Any], base: Mapping[str, Any]
) -> list[str]:
    where, problems, seen = f"{file} service {name!r}", [], set()
    build = service.get("build")
    if build is not None:
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        if not context.is_dir():
            problems.append(f"{where}: build context {context} does not exist")
        elif not (context / dockerfile).is_file():
            problems.append(f"{where}: Dockerfile {dockerfile!r} does not exist in {context}")
        elif (context / dockerfile).resolve().relative_to(ROOT).as_posix() not in DOCKERFILES:
            problems.append(f"{where}: builds {dockerfile!r}, not one of {DOCKERFILES}")
    elif "image" not in service and name not in base:
        problems.append(f"{where}: neither build nor image")

    services = set(base) | {name}
    depends = service.get("depends_on") or {}
    for target in depends if isinstance(depends, list) else depends.keys():
        if target not in services:
            problems.append(f"{where}: depends_on {target!r}, which is not a service")

    declared = set(load_yaml(ROOT / file).get("volumes") or {}) | set(
        load_yaml(ROOT / COMPOSE_FILE).get("volumes") or {}
    )
    for volume in compose_volumes(service).values():
        if volume not in declared:
            problems.append(f"{where}: volume {volume!r} is not declared under `volumes:`")

    env = compose_env(service, seen)
    problems += setting_problems(env, f"{where} environment")
    command = as_argv(service.get("command"))
    command = [interpolate(part, seen) for part in command]
    if command and (build is not None or (name in base and "build" in base[name])):
        problems += command_problems(command, f"{where} command")
    problems += [
        f"{where}: interpolates {variable}, which is not a setting"
        for variable in sorted(seen)
        if variable.startswith("NER_") and variable.removeprefix("NER_").lower() not in SETTING_FIELDS
    ]
    return problems


def base_services() -> dict[str, dict[str, Any]]:
    """docker-compose.yml's services (the loader resolves its anchors and `<<` merge keys)."""
    return load_yaml(ROOT / COMPOSE_FILE)["services"]


def service_dockerfile(service: Mapping[str, Any]) -> Dockerfile | None:
    build = service.get("build")
    if build is None:
        return None
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    path = (ROOT / context / dockerfile).resolve()
    return Dockerfile.read(path.relative_to(ROOT).as_posix()) if path.is_file() else None


@pytest.mark.parametrize("file", [COMPOSE_FILE, COMPOSE_GPU_FILE])
def test_compose_references_exist(file: str) -> None:
    problems = Problems()
    compose = load_yaml(ROOT / file)
    base = base_services()
    for name, service in (compose.get("services") or {}).items():
        if file != COMPOSE_FILE and name not in base:
            problems.append(f"{file}: overrides service {name!r}, which {COMPOSE_FILE} does not define")
        problems += compose_service_problems(file, name, service, base)
    problems.check()


def test_compose_stack_is_wired(tmp_path: Path) -> None:
    """The migration gates the service, artifacts are shared, health checks answer the right thing."""
    problems = Problems()
    services = base_services()
    by_command = {ner_subcommand(as_argv(service.get("command"))): name for name, service in services.items()}
    for needed in ("serve", "worker", "trainer", "flower", "db"):
        if needed not in by_command:
            problems.append(f"{COMPOSE_FILE}: no service runs `ner {needed}`")
    migrate = by_command.get("db")

    artifact_mounts = set()
    for name, service in services.items():
        where = f"{COMPOSE_FILE} service {name!r}"
        argv = as_argv(service.get("command"))
        subcommand = ner_subcommand(argv)
        depends = service.get("depends_on") or {}
        if subcommand in MODEL_COMMANDS:
            condition = depends.get(migrate, {}).get("condition") if isinstance(depends, dict) else None
            if condition != "service_completed_successfully":
                problems.append(f"{where}: does not wait for {migrate!r} to complete successfully")
            env = compose_env(service, set())
            artifacts = env.get("NER_ARTIFACTS_DIR")
            volume = compose_volumes(service).get(artifacts or "")
            if volume is None:
                problems.append(f"{where}: no named volume is mounted at NER_ARTIFACTS_DIR={artifacts!r}")
            artifact_mounts.add((volume, artifacts))
        for target, condition in depends.items() if isinstance(depends, dict) else []:
            if condition.get("condition") == "service_healthy" and not has_healthcheck(services[target]):
                problems.append(f"{where}: waits for {target!r} to be healthy, which has no health check")
        if subcommand in ("serve", "worker", "trainer", "flower") and not has_healthcheck(service):
            problems.append(f"{where}: has no health check")
        problems += compose_healthcheck_problems(where, service, argv, subcommand, tmp_path)
        published = {str(port).rsplit(":", 1)[-1].split("/")[0] for port in service.get("ports") or []}
        wanted = {str(p) for p in listening_ports(subcommand, compose_env(service, set()))}
        if subcommand in ("serve", "flower") and not wanted & published:
            problems.append(f"{where}: publishes {sorted(published)}, but listens on {sorted(wanted)}")
    if len(artifact_mounts) != 1:
        found = sorted(artifact_mounts, key=str)
        problems.append(
            f"{COMPOSE_FILE}: gateway, worker and trainer must share ONE artifacts volume, found {found}"
        )
    problems += compose_flower_problems(services, by_command.get("flower"), tmp_path)
    problems.check()


def has_healthcheck(service: Mapping[str, Any]) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable") and bool(check.get("test"))
    dockerfile = service_dockerfile(service)
    return bool(dockerfile and dockerfile.healthcheck())


def compose_healthcheck_problems(
    where: str, service: Mapping[str, Any], argv: list[str], subcommand: str | None, tmp: Path
) -> list[str]:
    check = service.get("healthcheck") or {}
    if check.get("disable") or subcommand is None:
        return []
    test = check.get("test") or (service_dockerfile(service) or Dockerfile("")).healthcheck()
    words = [interpolate(str(word), set()) for word in as_argv(test)]
    if words and words[0] in ("CMD", "CMD-SHELL"):
        words = shlex.split(words[1]) if words[0] == "CMD-SHELL" else words[1:]
    text = " ".join(words)
    env = compose_env(service, set())
    if subcommand == "serve":
        port = env.get("NER_PORT") or "8000"
        if not any(f":{port}{path}" in text for path in gateway_paths()):
            return [f"{where}: health check asks none of {sorted(gateway_paths())} on port {port}"]
    if subcommand == "flower":
        port = env.get("NER_FLOWER_PORT") or "5555"
        if f":{port}{FLOWER_HEALTH_PATH}" not in text:
            return [f"{where}: health check does not ask Flower's {FLOWER_HEALTH_PATH} on port {port}"]
    if subcommand in ("worker", "trainer"):
        return node_name_problems(argv, words, where + " health check", tmp)
    return []


def compose_flower_problems(services: Mapping[str, Any], name: str | None, tmp: Path) -> list[str]:
    if name is None:
        return []
    where, service = f"{COMPOSE_FILE} service {name!r}", services[name]
    env = compose_env(service, set())
    problems = []
    password = (service.get("environment") or {}).get("NER_FLOWER_PASSWORD")
    if not password or ":?" not in str(password):
        problems.append(f"{where}: NER_FLOWER_PASSWORD must be required (${{NER_FLOWER_PASSWORD:?...}})")
    if "NER_FLOWER_USER" not in env:
        problems.append(f"{where}: NER_FLOWER_USER is not set")
    state_dir = PurePosixPath(env.get("NER_STATE_DIR") or "/var/lib/ner")
    local_state = (tmp / "state").resolve()
    database = option_value(celery_argv(as_argv(service.get("command")), local_state), "--db")
    if database is None:
        return [*problems, f"{where}: `ner flower` does not run Flower with a --db"]
    in_container = state_dir / Path(database).relative_to(local_state).as_posix()
    if not any(in_container.is_relative_to(mount) for mount in compose_volumes(service)):
        problems.append(f"{where}: Flower's database {in_container} is on no named volume")
    return problems


def test_compose_gpu_switch() -> None:
    """The GPU is an override: the base worker runs anywhere, the override reserves a GPU."""
    problems = Problems()
    base = base_services()
    worker = next(name for name, s in base.items() if ner_subcommand(as_argv(s.get("command"))) == "worker")
    if (base[worker].get("deploy") or {}).get("resources", {}).get("reservations"):
        problems.append(
            f"{COMPOSE_FILE}: the worker reserves a device; the GPU belongs in {COMPOSE_GPU_FILE}"
        )
    override = (load_yaml(ROOT / COMPOSE_GPU_FILE).get("services") or {}).get(worker, {})
    devices = (override.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if not any("gpu" in device.get("capabilities", []) for device in devices):
        problems.append(f"{COMPOSE_GPU_FILE}: service {worker!r} reserves no GPU device")
    if (override.get("build") or {}).get("dockerfile") != "deploy/Dockerfile.cuda":
        problems.append(f"{COMPOSE_GPU_FILE}: service {worker!r} does not build deploy/Dockerfile.cuda")
    if (override.get("environment") or {}).get("NER_DEVICE") != "cuda":
        problems.append(f"{COMPOSE_GPU_FILE}: service {worker!r} does not set NER_DEVICE=cuda")
    problems.check()


# --- Kubernetes -----------------------------------------------------------------------------------


def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    objects = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        with path.open() as handle:
            objects += [(path.name, doc) for doc in yaml.safe_load_all(handle) if doc]
    return objects


def named(objects: Iterable[tuple[str, dict[str, Any]]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in objects if doc.get("kind") == kind}


def pod_spec(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def pod_labels(doc: Mapping[str, Any]) -> dict[str, str]:
    return doc["spec"]["template"]["metadata"].get("labels") or {}


def workloads(
    objects: list[tuple[str, dict[str, Any]]],
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for file, doc in objects:
        spec = pod_spec(doc)
        if spec is not None:
            yield f"{file} {doc['kind']} {doc['metadata']['name']!r}", doc, spec


def container_env(container: Mapping[str, Any], objects: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """What the container's environment would hold: envFrom ConfigMaps and Secrets, then env."""
    config_maps, secrets = named(objects, "ConfigMap"), named(objects, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(config_maps.get(source["configMapRef"]["name"], {}).get("data") or {})
        if "secretRef" in source:
            env.update(secrets.get(source["secretRef"]["name"], {}).get("stringData") or {})
    env.update({item["name"]: item.get("value") for item in container.get("env") or []})
    return env


def k8s_pod_problems(where: str, spec: Mapping[str, Any], objects: list, images: set[str]) -> list[str]:
    problems = []
    if spec.get("enableServiceLinks") is not False:
        # Kubernetes would add FLOWER_PORT=tcp://... and the like, which Flower and Settings read.
        problems.append(f"{where}: enableServiceLinks must be false (injected *_PORT variables break Flower)")
    claims = set(named(objects, "PersistentVolumeClaim"))
    volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
    for volume in volumes.values():
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is not None and claim not in claims:
            problems.append(
                f"{where}: volume {volume['name']!r} claims {claim!r}, which is no PersistentVolumeClaim"
            )
    config_maps, secrets = set(named(objects, "ConfigMap")), set(named(objects, "Secret"))
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        cwhere = f"{where} container {container['name']!r}"
        image = container.get("image", "").rsplit(":", 1)[0]
        if image not in images:
            problems.append(
                f"{cwhere}: image {image!r} is not one of kustomization.yaml's images {sorted(images)}"
            )
        for source in container.get("envFrom") or []:
            for key, known in (("configMapRef", config_maps), ("secretRef", secrets)):
                if key in source and source[key]["name"] not in known:
                    problems.append(f"{cwhere}: {key} {source[key]['name']!r} is not defined in deploy/k8s")
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in volumes:
                problems.append(f"{cwhere}: mounts {mount['name']!r}, which is not a volume of the pod")
        argv = as_argv(container.get("command")) + as_argv(container.get("args"))
        problems += command_problems(argv, f"{cwhere} command")
        problems += setting_problems(container_env(container, objects), f"{cwhere} environment")
        problems += k8s_probe_problems(cwhere, container, ner_subcommand(argv))
        exposed = {port["containerPort"] for port in container.get("ports") or []}
        for port in sorted(
            listening_ports(ner_subcommand(argv), container_env(container, objects)) - exposed
        ):
            problems.append(f"{cwhere}: listens on {port} (its NER_* settings), not a containerPort")
        gpus = (container.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu")
        if gpus:
            if not image.endswith("-cuda"):
                problems.append(f"{cwhere}: asks for a GPU but runs {image!r}, not the CUDA image")
            if not (spec.get("nodeSelector") or spec.get("tolerations") or spec.get("affinity")):
                problems.append(f"{cwhere}: asks for a GPU without a nodeSelector, toleration or affinity")
            if container_env(container, objects).get("NER_DEVICE") != "cuda":
                problems.append(f"{cwhere}: asks for a GPU without NER_DEVICE=cuda")
    return problems


def k8s_probe_problems(where: str, container: Mapping[str, Any], subcommand: str | None) -> list[str]:
    problems = []
    ports = {port.get("name"): port["containerPort"] for port in container.get("ports") or []}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        http = (container.get(kind) or {}).get("httpGet")
        if http is None:
            continue
        port = ports.get(http["port"], http["port"])
        if port not in ports.values():
            problems.append(
                f"{where}: {kind} asks port {http['port']!r}, which the container does not expose"
            )
        known = gateway_paths() if subcommand == "serve" else {FLOWER_HEALTH_PATH}
        if http.get("path") not in known:
            problems.append(f"{where}: {kind} asks {http.get('path')!r}, none of {sorted(known)}")
    if subcommand in ("serve", "flower") and not container.get("readinessProbe"):
        problems.append(f"{where}: no readinessProbe")
    return problems


def kustomization() -> dict[str, Any]:
    return load_yaml(K8S_DIR / "kustomization.yaml")


def test_k8s_references_exist(tmp_path: Path) -> None:
    problems = Problems()
    objects = k8s_objects()
    kustomize = kustomization()
    for resource in kustomize.get("resources", []):
        if not (K8S_DIR / resource).is_file():
            problems.append(f"deploy/k8s/kustomization.yaml: resource {resource!r} does not exist")
    unlisted = {p.name for p in K8S_DIR.glob("*.yaml")} - set(kustomize.get("resources", []))
    unlisted -= {"kustomization.yaml", "secret.example.yaml"}  # secrets are created by hand
    problems += [f"deploy/k8s/{name}: not listed in kustomization.yaml" for name in sorted(unlisted)]

    namespaces = set(named(objects, "Namespace"))
    for file, doc in objects:
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] != "Namespace" and namespace not in namespaces:
            problems.append(
                f"{file} {doc['kind']} {doc['metadata']['name']!r}: namespace {namespace!r} is not defined"
            )

    images = {image["name"] for image in kustomize.get("images", [])}
    pods = {}
    for where, doc, spec in workloads(objects):
        problems += k8s_pod_problems(where, spec, objects, images)
        if doc["kind"] != "Job":
            selector = doc["spec"]["selector"]["matchLabels"]
            if not selector.items() <= pod_labels(doc).items():
                problems.append(
                    f"{where}: selector {selector} does not match its pod labels {pod_labels(doc)}"
                )
        pods[doc["metadata"]["name"]] = doc
        annotations = doc["spec"]["template"]["metadata"].get("annotations") or {}
        exposed = {str(p["containerPort"]) for c in spec["containers"] for p in c.get("ports") or []}
        if "prometheus.io/port" in annotations and annotations["prometheus.io/port"] not in exposed:
            problems.append(
                f"{where}: prometheus.io/port {annotations['prometheus.io/port']} is no containerPort"
            )

    for name, service in named(objects, "Service").items():
        selector = service["spec"]["selector"].items()
        selected = [pod for pod in pods.values() if selector <= pod_labels(pod).items()]
        if not selected:
            problems.append(f"Service {name!r}: its selector matches no workload")
        container_ports = set()
        for pod in selected:
            for container in pod["spec"]["template"]["spec"]["containers"]:
                for port in container.get("ports") or []:
                    container_ports |= {port.get("name"), port["containerPort"]}
        for port in service["spec"]["ports"]:
            if port.get("targetPort", port["port"]) not in container_ports:
                problems.append(
                    f"Service {name!r}: targetPort {port.get('targetPort')!r} is no container port"
                )
    problems += k8s_autoscaling_problems(objects, tmp_path)
    problems.check()


def k8s_autoscaling_problems(objects: list, tmp: Path) -> list[str]:
    problems = []
    deployments = named(objects, "Deployment")
    auths = named(objects, "TriggerAuthentication")
    secrets = named(objects, "Secret")
    scaled = named(objects, "ScaledObject")
    if not scaled:
        return ["deploy/k8s: no KEDA ScaledObject"]
    for name, obj in scaled.items():
        where = f"ScaledObject {name!r}"
        target = obj["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            problems.append(f"{where}: scales {target!r}, which is no Deployment")
            continue
        if "replicas" in deployments[target]["spec"]:
            problems.append(f"Deployment {target!r}: sets replicas, which fights KEDA's count")
        container = deployments[target]["spec"]["template"]["spec"]["containers"][0]
        argv = as_argv(container.get("command")) + as_argv(container.get("args"))
        queues = (option_value(celery_argv(argv, tmp), "--queues", "-Q") or "").split(",")
        for trigger in obj["spec"]["triggers"]:
            watched = trigger["metadata"].get("listName")
            if trigger["type"] == "redis" and (watched not in queues or watched != INFERENCE_QUEUE):
                problems.append(f"{where}: watches Redis list {watched!r}, {target!r} consumes {queues}")
            auth = (trigger.get("authenticationRef") or {}).get("name")
            if auth is not None and auth not in auths:
                problems.append(f"{where}: authenticationRef {auth!r} is no TriggerAuthentication")
            for ref in (auths.get(auth) or {}).get("spec", {}).get("secretTargetRef", []):
                if ref["key"] not in (secrets.get(ref["name"]) or {}).get("stringData", {}):
                    problems.append(
                        f"TriggerAuthentication {auth!r}: secret {ref['name']!r} has no {ref['key']!r}"
                    )
    return problems


def test_k8s_stack_is_wired() -> None:
    """Every part runs once where it must, on the shared artifact volume, scaled on its queue."""
    problems = Problems()
    objects = k8s_objects()
    claims = named(objects, "PersistentVolumeClaim")
    by_command: dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]] = {}
    artifact_claims = set()
    for where, doc, spec in workloads(objects):
        for container in spec["containers"]:
            argv = as_argv(container.get("command")) + as_argv(container.get("args"))
            subcommand = ner_subcommand(argv)
            by_command.setdefault(str(subcommand), []).append((where, doc, spec))
            if subcommand not in MODEL_COMMANDS:
                continue
            artifacts = container_env(container, objects).get("NER_ARTIFACTS_DIR")
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
            volumes = {v["name"]: v for v in spec.get("volumes") or []}
            claim = (volumes.get(mounts.get(artifacts, ""), {}).get("persistentVolumeClaim") or {}).get(
                "claimName"
            )
            if claim is None:
                problems.append(
                    f"{where}: no PersistentVolumeClaim is mounted at NER_ARTIFACTS_DIR={artifacts!r}"
                )
            elif "ReadWriteMany" not in claims[claim]["spec"]["accessModes"]:
                problems.append(f"{where}: artifact claim {claim!r} is not ReadWriteMany")
            artifact_claims.add((claim, artifacts))
    if len(artifact_claims) != 1:
        found = sorted(artifact_claims, key=str)
        problems.append(
            f"deploy/k8s: gateway, workers and trainer must share one artifact claim, found {found}"
        )
    expected = {
        "serve": "Deployment",
        "worker": "Deployment",
        "trainer": "Deployment",
        "flower": "Deployment",
    }
    for subcommand, kind in {**expected, "db": "Job"}.items():
        found = [doc["kind"] for _, doc, _ in by_command.get(subcommand, [])]
        if kind not in found:
            problems.append(f"deploy/k8s: no {kind} runs `ner {subcommand}`")
    for where, doc, _ in by_command.get("trainer", []):
        if doc["spec"].get("replicas") != 1 or doc["spec"].get("strategy", {}).get("type") != "Recreate":
            problems.append(f"{where}: the trainer must be 1 replica with the Recreate strategy")
    problems.check()


# --- Render ---------------------------------------------------------------------------------------

# What Render puts into a variable wired to a managed database or Key Value: a URL of that form.
RENDER_PLACEHOLDERS = {
    "database": "postgresql://ner:secret@dpg-example/ner",
    "keyvalue": "redis://red-example:6379",
}


def test_render_blueprint_references_exist() -> None:
    problems = Problems()
    blueprint = load_yaml(RENDER_FILE)
    services = {service["name"]: service for service in blueprint.get("services", [])}
    databases = {database["name"] for database in blueprint.get("databases", [])}
    groups = {group["name"]: group for group in blueprint.get("envVarGroups", [])}
    for name, group in groups.items():
        problems += setting_problems(
            {v["key"]: v.get("value") for v in group["envVars"]}, f"render group {name!r}"
        )

    commands = {}
    for name, service in services.items():
        where = f"deploy/render.yaml service {name!r}"
        if service.get("runtime") == "docker":
            dockerfile = (
                ROOT / service.get("dockerContext", ".") / service.get("dockerfilePath", "Dockerfile")
            )
            if not (ROOT / service.get("dockerContext", ".")).is_dir():
                problems.append(f"{where}: dockerContext {service.get('dockerContext')!r} does not exist")
            if (
                not dockerfile.is_file()
                or dockerfile.resolve().relative_to(ROOT).as_posix() not in DOCKERFILES
            ):
                problems.append(
                    f"{where}: dockerfilePath {service.get('dockerfilePath')!r} is none of {DOCKERFILES}"
                )
            for key in ("dockerCommand", "preDeployCommand"):
                if key in service:
                    problems += command_problems(shlex.split(service[key]), f"{where} {key}")
            commands[ner_subcommand(shlex.split(service.get("dockerCommand", "ner serve")))] = service
        env: dict[str, str | None] = {}
        for var in service.get("envVars", []):
            if "fromGroup" in var:
                if var["fromGroup"] not in groups:
                    problems.append(f"{where}: fromGroup {var['fromGroup']!r} is not an envVarGroup")
                else:
                    env.update({v["key"]: v.get("value") for v in groups[var["fromGroup"]]["envVars"]})
                continue
            env[var["key"]] = var.get("value")
            if "fromDatabase" in var:
                if var["fromDatabase"]["name"] not in databases:
                    problems.append(
                        f"{where}: {var['key']} fromDatabase {var['fromDatabase']['name']!r} is no database"
                    )
                env[var["key"]] = RENDER_PLACEHOLDERS["database"]
            if "fromService" in var:
                ref = var["fromService"]
                target = services.get(ref["name"])
                if target is None or target["type"] not in (
                    ref["type"],
                    "redis" if ref["type"] == "keyvalue" else "",
                ):
                    problems.append(
                        f"{where}: {var['key']} fromService {ref['name']!r} ({ref['type']}) does not exist"
                    )
                env[var["key"]] = RENDER_PLACEHOLDERS.get(ref["type"], "x")
        problems += setting_problems(env, f"{where} envVars")
        if service.get("type") in ("web", "worker"):
            for needed in ("NER_DATABASE_URL", "NER_REDIS_URL"):
                if needed not in env:
                    problems.append(f"{where}: {needed} is not wired")
        if service.get("type") == "web" and service.get("healthCheckPath") not in gateway_paths():
            problems.append(
                f"{where}: healthCheckPath {service.get('healthCheckPath')!r} is no gateway route"
            )

    for subcommand, kind in (("serve", "web"), ("worker", "worker"), ("trainer", "worker")):
        if (commands.get(subcommand) or {}).get("type") != kind:
            problems.append(f"deploy/render.yaml: no {kind} service runs `ner {subcommand}`")
    if not any(service["type"] in ("keyvalue", "redis") for service in services.values()) or not databases:
        problems.append("deploy/render.yaml: a managed Postgres and a Key Value instance are both needed")
    problems.check()


# --- the checks themselves catch bad references ----------------------------------------------------


def test_checks_name_the_bad_reference(tmp_path: Path) -> None:
    """A misspelt setting, an unknown subcommand and a missing COPY source are each reported by name."""
    assert setting_problems({"NER_REDIS_URL": "redis://r:6379/0"}, "x") == []
    assert "NER_ARTEFACTS_DIR is not a setting" in " ".join(
        setting_problems({"NER_ARTEFACTS_DIR": "/a"}, "x")
    )
    assert "NER_REDIS_URL" in " ".join(setting_problems({"NER_REDIS_URL": "http://nope"}, "x"))
    assert command_problems(["ner", "db", "upgrade"], "x") == []
    assert "not a valid ner command" in " ".join(command_problems(["ner", "serv"], "x"))
    assert "not a valid ner command" in " ".join(command_problems(["ner", "worker", "--queue", "x"], "x"))
    assert command_problems(["celery", "--app", "shared.celery_app", "beat"], "x") == []
    assert "no importable --app" in " ".join(
        command_problems(["celery", "--app", "nothing.here", "beat"], "x")
    )

    dockerfile = Dockerfile("deploy/Dockerfile.test", [("COPY", "shared/ nowhere/ /src/")])
    assert copy_source_problems(dockerfile) == [
        "deploy/Dockerfile.test: COPY source 'nowhere/' does not exist"
    ]
    rules = [(False, "*"), (True, "shared"), (False, "**/__pycache__")]
    assert ignored("tests/test_deploy.py", rules) and not ignored("shared/cli.py", rules)
    assert ignored("shared/__pycache__/cli.pyc", rules)

    assert interpolate("a${X:-d}b$${Y}${Z:?need}", set()) == "ad" + "b${Y}" + "required-z"
    hostname = option_value(celery_argv(["ner", "worker"], tmp_path), "--hostname")
    assert node_name_problems(["ner", "worker"], ["celery", "inspect", "ping", "-d", "x@y"], "w", tmp_path)
    assert hostname and not node_name_problems(
        ["ner", "worker"],
        ["celery", "inspect", "ping", "-d", hostname.replace("%h", "$HOSTNAME")],
        "w",
        tmp_path,
    )
