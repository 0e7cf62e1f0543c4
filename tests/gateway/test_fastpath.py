"""The lean ``POST /predict/`` (gateway/fastpath.py) answers as the FastAPI route does.

Two gateways on the same real model, Postgres and Redis: the app as built, and the same app with
the fast path taken out of its middleware, so every request below goes through the route there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.fastpath import PredictFastPath
from gateway.prediction import get_batcher
from shared.core.errors import ServiceError
from tests.predict.test_predict import GOOGLE, running_app, wait_for_model

MAX_CHARS = 400


def _without_fast_path() -> FastAPI:
    app = create_app()
    app.user_middleware = [entry for entry in app.user_middleware if entry.cls is not PredictFastPath]
    return app


@pytest.fixture(scope="module")
def clients(service_env: dict[str, str], tiny_model_dir: Path) -> Iterator[tuple[TestClient, TestClient]]:
    env = {"NER_MODEL": str(tiny_model_dir), "NER_PREDICT_MAX_CHARS": str(MAX_CHARS)}
    with running_app(env) as fast, TestClient(_without_fast_path()) as route:
        wait_for_model(fast)
        wait_for_model(route)
        yield fast, route


# Valid requests, their options, domain errors raised past validation (404, 413, 422 of the
# model's types) and requests the route alone answers (422s of validation, not JSON, content types).
CASES: list[tuple[str, bytes, str]] = [
    ("plain", json.dumps({"text": GOOGLE}).encode(), "application/json"),
    (
        "options",
        json.dumps(
            {
                "text": GOOGLE,
                "labels": ["PER", "LOC"],
                "min_score": {"PER": 0.2, "*": 0.5},
                "offset_encoding": "utf16",
            }
        ).encode(),
        "application/json",
    ),
    (
        "unicode",
        json.dumps({"text": "Zoë Ångström flew from Zürich to 東京 😀 with Nokia."}).encode(),
        "application/json",
    ),
    ("raw utf-8", '{"text": "Müller met Schröder in Köln."}'.encode(), "application/json; charset=utf-8"),
    ("unknown version", json.dumps({"text": GOOGLE, "model_version": 9999}).encode(), "application/json"),
    ("too long", json.dumps({"text": "Paris " * MAX_CHARS}).encode(), "application/json"),
    ("unknown type", json.dumps({"text": GOOGLE, "labels": ["NOPE"]}).encode(), "application/json"),
    ("empty text", json.dumps({"text": ""}).encode(), "application/json"),
    ("no text", b"{}", "application/json"),
    ("text not a string", json.dumps({"text": 5}).encode(), "application/json"),
    ("a list", json.dumps([GOOGLE]).encode(), "application/json"),
    ("not JSON", b'{"text": ', "application/json"),
    ("lone surrogate", b'{"text": "Paris \\ud800"}', "application/json"),
    ("form", b"text=Paris", "application/x-www-form-urlencoded"),
]


@pytest.mark.parametrize(
    ("body", "content_type"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_the_fast_path_answers_as_the_route_does(
    clients: tuple[TestClient, TestClient], body: bytes, content_type: str
) -> None:
    fast, route = clients
    answers = [
        client.post("/predict/", content=body, headers={"Content-Type": content_type})
        for client in (fast, route)
    ]
    assert answers[0].status_code == answers[1].status_code
    assert answers[0].json() == answers[1].json()
    for name in ("content-type", "x-content-type-options", "content-security-policy"):
        assert answers[0].headers.get(name) == answers[1].headers.get(name), name
    assert answers[0].headers["x-request-id"]


def test_a_plain_request_is_answered_without_the_route(clients: tuple[TestClient, TestClient]) -> None:
    fast, _ = clients

    def no_batcher() -> None:
        raise ServiceError("the route answered")

    app = fast.app
    assert isinstance(app, FastAPI)
    app.dependency_overrides[get_batcher] = no_batcher  # only the route resolves its dependencies
    try:
        plain = fast.post("/predict/", json={"text": GOOGLE})
        assert plain.status_code == 200, plain.text
        assert plain.json()["entities"]
        # A request the fast path leaves alone reaches the route, and so the override.
        routed = fast.post("/predict/batch", json={"texts": [GOOGLE]})
        assert routed.json() == {"detail": "the route answered"}
    finally:
        app.dependency_overrides.clear()


def test_the_request_is_counted_under_its_route(clients: tuple[TestClient, TestClient]) -> None:
    fast, _ = clients
    fast.post("/predict/", json={"text": GOOGLE})
    metrics = fast.get("/metrics").text
    assert any(
        line.startswith("ner_http_requests_total{") and 'route="/predict/"' in line and 'status="200"' in line
        for line in metrics.splitlines()
    ), "no ner_http_requests_total sample for /predict/"
