"""deploy/k8s: references between the manifests, pods, probes, autoscaling and the wiring of the stack."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from shared.core.celery_app import INFERENCE_QUEUE, RECOVERY_QUEUE
from tests.deploy.files import (
    FLOWER_HEALTH_PATH,
    K8S_DIR,
    MODEL_COMMANDS,
    Problems,
    as_argv,
    celery_argv,
    command_problems,
    gateway_paths,
    listening_ports,
    load_yaml,
    ner_subcommand,
    option_value,
    setting_problems,
)


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
        watched_lists = set()
        for trigger in obj["spec"]["triggers"]:
            watched = trigger["metadata"].get("listName")
            if trigger["type"] == "redis":
                watched_lists.add(watched)
                if watched not in queues or watched not in (INFERENCE_QUEUE, RECOVERY_QUEUE):
                    problems.append(f"{where}: watches Redis list {watched!r}, {target!r} consumes {queues}")
            auth = (trigger.get("authenticationRef") or {}).get("name")
            if auth is not None and auth not in auths:
                problems.append(f"{where}: authenticationRef {auth!r} is no TriggerAuthentication")
            for ref in (auths.get(auth) or {}).get("spec", {}).get("secretTargetRef", []):
                if ref["key"] not in (secrets.get(ref["name"]) or {}).get("stringData", {}):
                    problems.append(
                        f"TriggerAuthentication {auth!r}: secret {ref['name']!r} has no {ref['key']!r}"
                    )
        if watched_lists and watched_lists != {INFERENCE_QUEUE, RECOVERY_QUEUE}:
            # A backlog of re-sent chunks alone must scale the workers too.
            problems.append(f"{where}: watches {sorted(watched_lists)}, not both inference queues")
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
