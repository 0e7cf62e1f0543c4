"""Label Studio's ML backend contract, against a real ``ner serve`` (and a real Label Studio when cached).

The first tests speak the contract as Label Studio's ``ml/api_connector.py`` does (HTTP Basic with an
API key as the password); the last one drives Label Studio itself through its API: a project with an
NER labelling config, this service connected as its ML backend, predictions for its tasks, and
"Start training" queuing a run on the project's annotations that a real trainer finishes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared.cli.embedded_redis import free_port
from shared.core.config import get_settings
from shared.core.db import get_sessionmaker
from shared.interop import labelstudio
from shared.interop.errors import InvalidRequest, NotConfigured, Unavailable, UpstreamError
from shared.registry import service as registry
from shared.training.references import DataSpec
from tests.interop.annotations import entity_sentences, label_studio_task, sentence_spans
from tests.interop.conftest import LabelStudio
from tests.support.auth import create_key, settings_env
from tests.support.processes import ServiceProcess, start_gateway, start_worker, wait_until
from trainer.data import load_data

GOOGLE = "Google was founded by Larry Page and Sergey Brin in California."
KOFI = "Kofi Annan visited Nairobi on Monday."
CONFIG = """<View>
  <Labels name="label" toName="text">
    <Label value="PER"/><Label value="ORG"/><Label value="LOC"/>
  </Labels>
  <Text name="text" value="$text"/>
</View>"""


@pytest.fixture(scope="module")
def gateway(
    service_env: dict[str, str], tiny_model_dir: Path, log_dir: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, dict[str, str]]]:
    """``ner serve`` with keys on and the tiny model; Label Studio's URL and token when it runs."""
    env = {
        **service_env,
        "NER_AUTH": "on",
        "NER_MODEL": str(tiny_model_dir),
        "NER_LABEL_STUDIO_TRAIN_EVERY": "2",
    }
    proc: ServiceProcess
    proc, base_url = start_gateway(env, log_dir)
    wait_until(lambda: httpx.get(f"{base_url}/v2/health/ready").status_code == 200, 120, "the model", proc)
    yield base_url, env
    proc.stop()


def _basic(key: str) -> httpx.BasicAuth:
    return httpx.BasicAuth("label-studio", key)


def _predict(base_url: str, key: str, text: str) -> list[dict]:
    response = httpx.post(f"{base_url}/predict/", json={"text": text}, headers={"X-API-Key": key}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["entities"]


def _serving(base_url: str, key: str) -> str:
    """The model version name /predict/ answers with (NER_MODEL while the registry has none active)."""
    response = httpx.post(
        f"{base_url}/predict/", json={"text": GOOGLE}, headers={"X-API-Key": key}, timeout=30
    )
    version = response.json()["model_version"]
    return str(version) if version is not None else "NER_MODEL"


def test_health_is_open_and_the_rest_needs_a_key_by_basic_auth(gateway: tuple[str, dict]) -> None:
    base_url, _env = gateway
    health = httpx.get(f"{base_url}/labelstudio/health")
    assert health.status_code == 200 and health.json()["status"] == "UP"
    body = {"project": "1.1700000000", "schema": CONFIG}
    assert httpx.post(f"{base_url}/labelstudio/setup", json=body).status_code == 401
    bad = httpx.post(f"{base_url}/labelstudio/setup", json=body, auth=_basic("ner_not_a_key"))
    assert bad.status_code == 401
    jobs_key = create_key("jobs", name="ls-jobs")
    assert httpx.post(f"{base_url}/labelstudio/setup", json=body, auth=_basic(jobs_key)).status_code == 403
    key = create_key("predict", name="ls-predict")
    setup = httpx.post(f"{base_url}/labelstudio/setup", json=body, auth=_basic(key))
    assert setup.status_code == 200 and setup.json() == {"model_version": _serving(base_url, key)}
    versions = httpx.get(f"{base_url}/labelstudio/versions", auth=_basic(key))
    with get_sessionmaker()() as session:
        known = [str(row.version) for row in registry.list_versions(session=session)]
    assert versions.status_code == 200 and versions.json() == {"versions": known}
    # A predict key cannot start training; the message names the scope needed.
    start = httpx.post(
        f"{base_url}/labelstudio/webhook",
        json={"action": "START_TRAINING", "project": {"id": 1}},
        auth=_basic(key),
    )
    assert start.status_code == 403 and "'train'" in start.text


def test_predict_answers_labels_regions_per_task(gateway: tuple[str, dict]) -> None:
    base_url, _env = gateway
    key = create_key("predict", name="ls-predict")
    body = {
        "tasks": [{"id": 11, "data": {"text": GOOGLE}}, {"id": 12, "data": {"text": KOFI}}],
        "project": "3.1700000000",
        "label_config": CONFIG,
        "params": {"login": None, "password": None, "context": None},
    }
    response = httpx.post(f"{base_url}/labelstudio/predict", json=body, auth=_basic(key), timeout=30)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 2 and results[0]["model_version"] == _serving(base_url, key)
    for result, text in zip(results, [GOOGLE, KOFI], strict=True):
        expected = [e for e in _predict(base_url, key, text) if e["entity_group"] in {"PER", "ORG", "LOC"}]
        regions = result["result"]
        assert [(r["value"]["start"], r["value"]["end"], r["value"]["labels"]) for r in regions] == [
            (e["start"], e["end"], [e["entity_group"]]) for e in expected
        ]
        assert all(
            r["from_name"] == "label" and r["to_name"] == "text" and r["type"] == "labels" for r in regions
        )
        assert all(r["value"]["text"] == text[r["value"]["start"] : r["value"]["end"]] for r in regions)
    assert [r["value"]["text"] for r in results[0]["result"]] == [
        "Google",
        "Larry Page",
        "Sergey Brin",
        "California",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"tasks": [{"id": 1, "data": {"body": GOOGLE}}], "label_config": CONFIG},
            "tasks[0] (id 1): data.text",
        ),
        ({"tasks": [{"id": 1, "data": {"text": GOOGLE}}], "label_config": "<View>"}, "label_config: not XML"),
        ({"tasks": [{"id": 1, "data": {"text": GOOGLE}}], "label_config": "<View/>"}, "needs <Labels"),
        ({"tasks": [], "label_config": CONFIG}, "tasks"),
        (
            {"tasks": [{"id": 1, "data": {"text": "a" * 100_001}}], "label_config": CONFIG},
            "NER_PREDICT_MAX_CHARS",
        ),
    ],
)
def test_predict_names_bad_input(gateway: tuple[str, dict], body: dict, message: str) -> None:
    base_url, _env = gateway
    key = create_key("predict", name="ls-predict")
    response = httpx.post(f"{base_url}/labelstudio/predict", json=body, auth=_basic(key), timeout=30)
    assert 400 <= response.status_code < 500, response.text
    assert message in response.text, response.text  # pydantic's 422 lists, the domain's 400 says


def test_webhook_without_label_studio_settings_says_which(gateway: tuple[str, dict]) -> None:
    base_url, _env = gateway
    key = create_key("train", name="ls-train")
    event = {"action": "START_TRAINING", "project": {"id": 4}}
    response = httpx.post(f"{base_url}/labelstudio/webhook", json=event, auth=_basic(key))
    assert response.status_code == 503 and "NER_LABEL_STUDIO_URL" in response.text
    other = httpx.post(
        f"{base_url}/labelstudio/webhook", json={"action": "PROJECT_UPDATED"}, auth=_basic(key)
    )
    assert other.status_code == 200 and other.json()["status"] == "ignored"
    no_project = httpx.post(
        f"{base_url}/labelstudio/webhook", json={"action": "START_TRAINING"}, auth=_basic(key)
    )
    assert no_project.status_code in (400, 503)


def test_every_n_annotations_start_a_run(gateway: tuple[str, dict]) -> None:
    """NER_LABEL_STUDIO_TRAIN_EVERY=2: the second annotation event of a project starts training."""
    base_url, _env = gateway
    key = create_key("train", name="ls-train")
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 9}, "annotation": {"id": 1}}
    first = httpx.post(f"{base_url}/labelstudio/webhook", json=event, auth=_basic(key))
    assert first.status_code == 200 and first.json()["status"] == "counted"
    other_project = httpx.post(
        f"{base_url}/labelstudio/webhook", json={**event, "project": {"id": 10}}, auth=_basic(key)
    )
    assert other_project.json()["status"] == "counted"
    # The second of project 9 starts a run: here Label Studio's API is not configured, and it says so.
    second = httpx.post(f"{base_url}/labelstudio/webhook", json=event, auth=_basic(key))
    assert second.status_code == 503 and "NER_LABEL_STUDIO_URL" in second.text
    third = httpx.post(f"{base_url}/labelstudio/webhook", json=event, auth=_basic(key))
    assert third.json()["status"] == "counted"  # the count starts again
    bad = httpx.post(
        f"{base_url}/labelstudio/webhook", json={**event, "project": {"id": "x"}}, auth=_basic(key)
    )
    assert bad.status_code == 400 and "project.id" in bad.text


def test_annotation_count_per_project_in_redis(service_env: dict[str, str]) -> None:
    client = redis.Redis.from_url(service_env["NER_REDIS_URL"])
    client.delete("ner:labelstudio:new-annotations:77")
    assert [labelstudio.count_annotation(redis=client, project=77, threshold=3) for _ in range(7)] == [
        False, False, True, False, False, True, False,
    ]  # fmt: skip
    down = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    with pytest.raises(Unavailable, match="Redis is unreachable"):
        labelstudio.count_annotation(redis=down, project=77, threshold=3)


def test_fetch_export_checks_what_label_studio_answers(service_env: dict[str, str], tmp_path: Path) -> None:
    """The export download through its client seam: bad answers are named, a good one is kept."""
    task = label_studio_task(
        1, *sentence_spans(entity_sentences(get_settings().conll_dir / "eng.testa", 1)[0])
    )
    answers = {
        "/api/projects/5/export": (200, json.dumps([task, task]).encode()),
        "/api/projects/6/export": (403, b'{"detail": "no"}'),
        "/api/projects/7/export": (200, b"[{"),
        "/api/projects/8/export": (
            200,
            json.dumps([{"id": 1, "data": {"text": "x"}, "annotations": []}]).encode(),
        ),
    }
    seen: list[httpx.Request] = []

    def label_studio_api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, content = answers[request.url.path]
        return httpx.Response(status, content=content)

    client = httpx.Client(transport=httpx.MockTransport(label_studio_api))
    with settings_env({}), pytest.raises(NotConfigured, match="NER_LABEL_STUDIO_URL"):
        labelstudio.fetch_export(settings=get_settings(), project=5, client=client)
    with settings_env({"NER_LABEL_STUDIO_URL": "http://ls.example/", "NER_LABEL_STUDIO_TOKEN": "tok"}):
        settings = get_settings()
        path = labelstudio.fetch_export(settings=settings, project=5, client=client)
        assert path.parent == settings.data_roots[0] / "label-studio"
        assert (
            seen[-1].headers["Authorization"] == "Token tok" and seen[-1].url.params["exportType"] == "JSON"
        )
        data = load_data(DataSpec(train=str(path)), roots=None, cache_dir=tmp_path)
        assert data.sentences("train") + data.sentences("validation") == 2
        with pytest.raises(UpstreamError, match="answered 403"):
            labelstudio.fetch_export(settings=settings, project=6, client=client)
        with pytest.raises(UpstreamError, match="not JSON"):
            labelstudio.fetch_export(settings=settings, project=7, client=client)
        with pytest.raises(InvalidRequest, match="no annotated tasks"):
            labelstudio.fetch_export(settings=settings, project=8, client=client)
        assert sorted(p.suffix for p in path.parent.iterdir()) == [".json"]  # no partial files left


@pytest.mark.label_studio
@pytest.mark.slow
def test_label_studio_itself_gets_predictions_and_starts_training(
    label_studio: LabelStudio, service_env: dict[str, str], tiny_model_dir: Path, log_dir: Path
) -> None:
    env = {
        **service_env,
        "NER_AUTH": "on",
        "NER_MODEL": str(tiny_model_dir),
        "NER_LABEL_STUDIO_URL": label_studio.url,
        "NER_LABEL_STUDIO_TOKEN": label_studio.token,
    }
    gateway, base_url = start_gateway(env, log_dir)
    trainer = None
    try:
        wait_until(
            lambda: httpx.get(f"{base_url}/v2/health/ready").status_code == 200, 120, "the model", gateway
        )
        key = create_key("admin", name="label-studio")  # predictions and training with one credential
        api = label_studio.api()
        project = api.post("/api/projects", json={"title": "ner-service test", "label_config": CONFIG})
        assert project.status_code == 201, project.text
        project_id = project.json()["id"]
        sentences = entity_sentences(get_settings().conll_dir / "eng.testa", 12, max_words=20)
        texts = [GOOGLE, KOFI] + [sentence_spans(s)[0] for s in sentences]
        imported = api.post(f"/api/projects/{project_id}/import", json=[{"text": t} for t in texts])
        assert imported.status_code == 201, imported.text
        backend = api.post(
            "/api/ml",
            json={
                "project": project_id,
                "url": f"{base_url}/labelstudio",
                "title": "ner-service",
                "auth_method": "BASIC_AUTH",
                "basic_auth_user": "label-studio",
                "basic_auth_pass": key,
            },
        )
        assert backend.status_code == 201, backend.text
        assert backend.json()["state"] == "CO", backend.json()  # connected: /health and /setup answered

        tasks = api.get("/api/tasks", params={"project": project_id, "page_size": 100}).json()["tasks"]
        by_text = {task["data"]["text"]: task["id"] for task in tasks}
        action = api.post(
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project_id},
            json={"selectedItems": {"all": True, "excluded": []}},
        )
        assert action.status_code == 200, action.text
        predictions = api.get("/api/predictions", params={"task": by_text[GOOGLE]}).json()
        assert len(predictions) == 1, predictions
        regions = predictions[0]["result"]
        assert [(r["value"]["text"], r["value"]["labels"]) for r in regions] == [
            (e["word"], [e["entity_group"]]) for e in _predict(base_url, key, GOOGLE)
        ]
        assert predictions[0]["model_version"] == _serving(base_url, key)

        # Annotate the CoNLL sentences as a person would, then "Start training".
        for sentence in sentences:
            text, spans = sentence_spans(sentence)
            result = label_studio_task(0, text, [s for s in spans if s[2] in {"PER", "ORG", "LOC"}])
            created = api.post(
                f"/api/tasks/{by_text[text]}/annotations",
                json={"result": result["annotations"][0]["result"], "was_cancelled": False},
            )
            assert created.status_code == 201, created.text
        trainer = start_worker(env, log_dir, queue="training")
        started = api.post(f"/api/ml/{backend.json()['id']}/train")
        assert started.status_code == 200, started.text
        runs: list[dict] = []

        def queued() -> bool:
            runs[:] = httpx.get(f"{base_url}/train", headers={"X-API-Key": key}).json()["runs"]
            return bool(runs)

        wait_until(queued, 60, "a training run from START_TRAINING", gateway)
        assert "label-studio" in runs[0]["data"]["train"]
        run_id = runs[0]["run_id"]

        def finished() -> bool:
            run = httpx.get(f"{base_url}/train/{run_id}", headers={"X-API-Key": key}).json()
            runs[:] = [run]
            return run["status"] in ("succeeded", "failed", "cancelled")

        wait_until(finished, 600, "the run on Label Studio's annotations to finish", trainer)
        assert runs[0]["status"] == "succeeded", runs[0]["error"]
        assert runs[0]["model_version"] is not None
    finally:
        if trainer is not None:
            trainer.stop()
        gateway.stop()
