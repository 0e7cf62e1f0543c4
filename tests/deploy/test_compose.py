"""docker-compose.yml and docker-compose.gpu.yml: references, wiring of the stack, the GPU override."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.deploy.files import (
    COMPOSE_FILE,
    COMPOSE_GPU_FILE,
    DOCKERFILES,
    FLOWER_HEALTH_PATH,
    MODEL_COMMANDS,
    ROOT,
    SETTING_FIELDS,
    Dockerfile,
    Problems,
    as_argv,
    celery_argv,
    command_problems,
    gateway_paths,
    interpolate,
    listening_ports,
    load_yaml,
    ner_subcommand,
    node_name_problems,
    option_value,
    setting_problems,
)


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
