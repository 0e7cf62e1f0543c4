"""Label Studio's ML backend: its requests, the regions it shows, and retraining on its annotations.

Label Studio calls ``{backend}/health``, ``/setup`` (with the project's labelling config), ``/predict``
(``{"tasks": [...], "label_config": ...}`` -> ``{"results": [{"result": [regions], "score",
"model_version"}]}``), ``/versions`` and ``/webhook`` (``START_TRAINING`` from its "Start training"
button, and every annotation event of the project). Its only auth is HTTP Basic: the password is an
API key of this service (the user name is not used).

A training run reads the project's annotations from Label Studio's own API (``NER_LABEL_STUDIO_URL``
and ``NER_LABEL_STUDIO_TOKEN``), saves the export under the first data root and queues a run through
``training.service.start_run``: the operator's quality gate decides whether it goes live.
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.interop.errors import InvalidRequest, NotConfigured, Unavailable, UpstreamError
from shared.keys.owner import Owner
from shared.predict.schemas import Entity
from shared.training import service as training

# Label Studio's own export (JSON, all annotations) of one project.
EXPORT_PATH = "/api/projects/{project}/export"
TRAINING_ACTIONS = {"START_TRAINING"}
ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"}
_PROJECT_UID = re.compile(r"^(\d+)(\.\d+)?$")


# --- the labelling config ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelConfig:
    """The part of a labelling config this backend fills: one ``<Labels>`` over one ``<Text>``."""

    from_name: str  # the <Labels name=...>
    to_name: str  # the <Text name=...> it labels
    data_key: str  # the task's data field holding the text ($text -> "text")
    labels: frozenset[str]


def parse_label_config(config: str) -> LabelConfig:
    """The ``<Labels>``/``<Text>`` pair of a labelling config; 400 naming what is missing."""
    try:
        root = ElementTree.fromstring(config)  # expat refuses entity expansion bombs; no external entities
    except ElementTree.ParseError as exc:
        raise InvalidRequest(f"label_config: not XML ({exc})") from None
    texts = {node.get("name"): node for node in root.iter("Text")}
    for node in root.iter("Labels"):
        to_name = node.get("toName", "")
        text = texts.get(to_name)
        if text is None or not node.get("name"):
            continue
        value = text.get("value", "")
        if not value.startswith("$") or len(value) < 2:
            raise InvalidRequest(f'label_config: <Text name={to_name!r}> needs value="$field", got {value!r}')
        labels = frozenset(label.get("value", "") for label in node.iter("Label")) - {""}
        if not labels:
            raise InvalidRequest(f"label_config: <Labels name={node.get('name')!r}> has no <Label value=...>")
        return LabelConfig(from_name=node.get("name", ""), to_name=to_name, data_key=value[1:], labels=labels)
    raise InvalidRequest(
        'label_config: needs <Labels name="label" toName="text"> with <Label value="PER"/>... over '
        '<Text name="text" value="$text"/>'
    )


# --- /setup and /predict ---------------------------------------------------------------------------


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    project: str | int | None = None
    schema_: str = Field(alias="schema", description="The project's labelling config (XML).")


class Task(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int | None = None
    data: dict[str, Any]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    tasks: list[Task] = Field(min_length=1)
    label_config: str
    project: str | int | None = None


def task_texts(request: PredictRequest) -> tuple[LabelConfig, list[str]]:
    """The labelling config and the text of each task; 400 naming a task without one."""
    config = parse_label_config(request.label_config)
    texts = []
    for index, task in enumerate(request.tasks):
        text = task.data.get(config.data_key)
        name = f"tasks[{index}]" + (f" (id {task.id})" if task.id is not None else "")
        if not isinstance(text, str) or not text:
            raise InvalidRequest(f"{name}: data.{config.data_key} must be a non-empty text")
        texts.append(text)
    return config, texts


def model_version_name(version: int | None) -> str:
    """How Label Studio shows the model: the registry version, or the NER_MODEL it serves."""
    return str(version) if version is not None else "NER_MODEL"


def prediction(config: LabelConfig, entities: list[Entity], version: int | None) -> dict[str, Any]:
    """One task's prediction: a ``labels`` region per entity of a type the project labels."""
    kept = [entity for entity in entities if entity.entity_group in config.labels]
    regions = [
        {
            "id": f"ner-{index}",
            "from_name": config.from_name,
            "to_name": config.to_name,
            "type": "labels",
            "value": {
                "start": entity.start,
                "end": entity.end,
                "text": entity.word,
                "labels": [entity.entity_group],
            },
            "score": entity.score,
        }
        for index, entity in enumerate(kept)
    ]
    score = sum(entity.score for entity in kept) / len(kept) if kept else 0.0
    return {"result": regions, "score": score, "model_version": model_version_name(version)}


# --- /webhook: retraining --------------------------------------------------------------------------


class WebhookEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    action: str
    project: dict[str, Any] | None = None


def project_id(event: WebhookEvent) -> int:
    """The Label Studio project an event is about; 400 when it names none."""
    value = (event.project or {}).get("id")
    if isinstance(value, str) and _PROJECT_UID.match(value):
        value = int(value.split(".")[0])
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest(f"{event.action}: project.id must be a Label Studio project id, got {value!r}")
    return value


def _export_chunks(response: httpx.Response, limit: int) -> Iterator[bytes]:
    received = 0
    for chunk in response.iter_bytes():
        received += len(chunk)
        if received > limit:
            raise UpstreamError(
                f"Label Studio's export is larger than {limit:,} bytes (NER_TRAIN_UPLOAD_MAX_BYTES)"
            )
        yield chunk


def fetch_export(*, settings: Settings, project: int, client: httpx.Client | None = None) -> Path:
    """Download a project's annotations (Label Studio's JSON export) into the first data root."""
    if not settings.label_studio_url or not settings.label_studio_token:
        raise NotConfigured(
            "retraining from Label Studio needs NER_LABEL_STUDIO_URL and NER_LABEL_STUDIO_TOKEN "
            "(a Label Studio access token that can read the project)"
        )
    url = settings.label_studio_url.rstrip("/") + EXPORT_PATH.format(project=project)
    headers = {"Authorization": f"Token {settings.label_studio_token}"}
    folder = settings.data_roots[0] / "label-studio"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"project-{project}-{time.time_ns()}.json"
    partial = target.with_suffix(".partial")
    owned = client is None
    client = client or httpx.Client(timeout=60)
    try:
        with client.stream("GET", url, params={"exportType": "JSON"}, headers=headers) as response:
            if response.status_code != 200:
                raise UpstreamError(
                    f"Label Studio answered {response.status_code} to the export of project {project} "
                    "(check NER_LABEL_STUDIO_URL, NER_LABEL_STUDIO_TOKEN and the project id)"
                )
            with partial.open("wb") as handle:
                for chunk in _export_chunks(response, settings.train_upload_max_bytes):
                    handle.write(chunk)
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise UpstreamError(
            f"Label Studio is unreachable at NER_LABEL_STUDIO_URL ({type(exc).__name__})"
        ) from None
    except UpstreamError:
        partial.unlink(missing_ok=True)
        raise
    finally:
        if owned:
            client.close()
    try:
        tasks = json.loads(partial.read_bytes())
    except ValueError:
        partial.unlink(missing_ok=True)
        raise UpstreamError(f"Label Studio's export of project {project} is not JSON") from None
    if not isinstance(tasks, list) or not any(
        task.get("annotations") for task in tasks if isinstance(task, dict)
    ):
        partial.unlink(missing_ok=True)
        raise InvalidRequest(f"project {project} has no annotated tasks to train on")
    partial.rename(target)
    return target


def start_training(
    *,
    session: Session,
    settings: Settings,
    project: int,
    owner: Owner,
    request_id: str | None,
    client: httpx.Client | None = None,
) -> dict[str, Any]:
    """Fetch the project's annotations and queue a training run on them (the gate decides the rest)."""
    path = fetch_export(settings=settings, project=project, client=client)
    run = training.start_run(
        session=session,
        settings=settings,
        data=str(path),
        overrides={},
        base_model=None,
        owner=owner,
        request_id=request_id,
    )
    # "job" is what Label Studio records as the training job of its ML backend.
    return {"status": "queued", "job": str(run.id), "run_id": str(run.id), "project": project}


def count_annotation(*, redis: Any, project: int, threshold: int) -> bool:
    """Count one new annotation of a project; True (and the count restarts) when it reaches ``threshold``."""
    key = f"ner:labelstudio:new-annotations:{project}"
    try:
        count = redis.incr(key)
        if count >= threshold:
            redis.delete(key)
            return True
    except (RedisError, OSError):
        raise Unavailable("Redis is unreachable: the annotation was not counted; retry later") from None
    return False
