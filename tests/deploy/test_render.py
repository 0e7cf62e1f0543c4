"""deploy/render.yaml: the Render blueprint's services, databases, env var groups and commands."""

from __future__ import annotations

import shlex

from tests.deploy.files import (
    DOCKERFILES,
    RENDER_FILE,
    ROOT,
    Problems,
    command_problems,
    gateway_paths,
    load_yaml,
    ner_subcommand,
    setting_problems,
)

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
