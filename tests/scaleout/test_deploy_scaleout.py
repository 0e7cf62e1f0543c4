"""deploy/k8s/object-store (no shared volume, RabbitMQ autoscaling) and render.yaml's artifact store:
static checks, since no cluster runs here. The overlay's patches must name what the base defines,
its settings must be valid, and KEDA must scale the workers on the queue they consume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from shared.core.celery_app import INFERENCE_QUEUE, RECOVERY_QUEUE
from tests.deploy.files import K8S_DIR, RENDER_FILE, setting_problems

OVERLAY = K8S_DIR / "object-store"


def _docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def _base() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = _docs(K8S_DIR / "kustomization.yaml")[0]
    objects = {}
    for resource in kustomization["resources"]:
        for doc in _docs(K8S_DIR / resource):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def test_the_object_store_overlay_patches_what_the_base_defines() -> None:
    base = _base()
    kustomization = _docs(OVERLAY / "kustomization.yaml")[0]
    assert kustomization["resources"][0] == "../"
    for resource in kustomization["resources"][1:]:
        assert (OVERLAY / resource).is_file(), resource
    deleted = set()
    for patch in kustomization["patches"]:
        docs = _docs(OVERLAY / patch["path"]) if "path" in patch else [yaml.safe_load(patch["patch"])]
        target = patch.get("target")
        for doc in docs:
            if target is None:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key in base, f"{patch['path']}: patches {key}, which the base does not define"
                if doc.get("$patch") == "delete":
                    deleted.add(key)
            elif doc.get("$patch") == "delete":
                deleted.add((target["kind"], target["name"]))
    # Nothing shares a file system: both ReadWriteMany claims are gone, and so is the Redis trigger.
    assert {("PersistentVolumeClaim", "ner-artifacts"), ("PersistentVolumeClaim", "ner-data")} <= deleted
    assert ("ScaledObject", "ner-worker") in deleted
    # The volumes that mounted them become the pod's own emptyDirs, in every pod that had them.
    own = _docs(OVERLAY / "own-cache.yaml")[0]["spec"]["template"]["spec"]["volumes"]
    replaced = {v["name"] for v in own if v.get("persistentVolumeClaim", "") is None and "emptyDir" in v}
    for (kind, name), doc in base.items():
        if kind != "Deployment":
            continue
        claims = {
            v["name"]
            for v in doc["spec"]["template"]["spec"].get("volumes") or []
            if "persistentVolumeClaim" in v
        }
        claims -= {"flower"}  # Flower's own history (ReadWriteOnce) stays
        claims = {c for c in claims if c in ("artifacts", "data")}
        assert claims <= replaced, f"{name}: claims {claims} not replaced"


def test_the_overlay_settings_are_valid_and_keda_watches_the_inference_queues() -> None:
    config = _docs(OVERLAY / "config.yaml")[0]["data"]
    assert config["NER_ARTIFACTS_URL"].startswith("s3://")
    base_config = next(d for d in _docs(K8S_DIR / "01-config.yaml") if d["kind"] == "ConfigMap")["data"]
    assert setting_problems({**base_config, **config}, "deploy/k8s/object-store/config.yaml") == []
    scaled = [d for d in _docs(OVERLAY / "rabbitmq-autoscaling.yaml") if d["kind"] == "ScaledObject"]
    auths = {d["metadata"]["name"] for d in _docs(OVERLAY / "rabbitmq-autoscaling.yaml")}
    (obj,) = scaled
    assert obj["spec"]["scaleTargetRef"]["name"] == "ner-worker"
    triggers = obj["spec"]["triggers"]
    # Re-sent chunks wait in their own queue; a backlog there alone must scale the workers too.
    assert sorted(t["metadata"]["queueName"] for t in triggers) == sorted([INFERENCE_QUEUE, RECOVERY_QUEUE])
    for trigger in triggers:
        assert trigger["type"] == "rabbitmq" and trigger["metadata"]["mode"] == "QueueLength"
        assert trigger["authenticationRef"]["name"] in auths


def test_render_services_share_versions_through_the_database() -> None:
    blueprint = _docs(RENDER_FILE)[0]
    group = {v["key"]: v.get("value") for g in blueprint["envVarGroups"] for v in g["envVars"]}
    assert group["NER_ARTIFACTS_URL"] == "postgresql"
    for service in blueprint["services"]:
        if service.get("type") in ("web", "worker"):
            assert any(v.get("fromGroup") == "ner-settings" for v in service["envVars"]), service["name"]
