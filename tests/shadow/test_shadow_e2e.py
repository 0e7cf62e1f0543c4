"""Shadow traffic and job re-runs end to end: a real gateway, a real worker, two real model versions.

Version A is the tiny model; version B is the same weights with PER and ORG swapped in its label
map, so the two disagree exactly on the sentences with people or organisations, in a way the test
can check against what the two engines answer directly (loaded here, in the test process).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import delete, select

from shared.core.config import get_settings
from shared.core.db import get_sessionmaker, session_scope
from shared.core.tables import Job, ShadowSample
from shared.predict.engine import EngineOptions, NerEngine
from shared.registry import service as registry
from shared.registry.manifest import write_manifest
from shared.shadow import service as shadow
from tests.support.auth import create_key, settings_env
from tests.support.processes import ServiceProcess, start_gateway, start_worker, wait_until
from tests.support.registry import registry_restored

SWAP = {"B-PER": "B-ORG", "I-PER": "I-ORG", "B-ORG": "B-PER", "I-ORG": "I-PER"}
SENTENCES = [
    "Google was founded by Larry Page and Sergey Brin in California.",
    "Kofi Annan met officials of the European Union in Brussels on Monday.",
    "Manchester United beat Arsenal 2-1 at Old Trafford.",
    "The New York Stock Exchange fell as investors sold shares of Microsoft.",
    "Angela Merkel spoke to reporters in Berlin.",
    "Prices rose in Japan and China last year.",
    "Rain is expected in Paris and London.",
]
PROBE = "Tony Blair visited Washington."
MAX_SAMPLES = 4
CHUNK_DOCS = 4


def _register(folder: Path) -> int:
    write_manifest(folder)
    with get_sessionmaker()() as session:
        number = registry.next_version_number(session=session)
        registry.register_version(
            session=session, version=number, path=str(folder), base_model="", data_hash="", data_ref={},
            params={}, metrics={}, labels=[], val_f1=None, test_f1=None,
        )  # fmt: skip
        session.commit()
    return number


def _swapped_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["id2label"] = {k: SWAP.get(v, v) for k, v in config["id2label"].items()}
    config["label2id"] = {label: int(i) for i, label in config["id2label"].items()}
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


@dataclass
class Stack:
    base_url: str
    gateway: ServiceProcess
    worker: ServiceProcess
    version_a: int
    version_b: int
    engine_a: NerEngine
    engine_b: NerEngine
    keys: dict[str, str]

    def headers(self, who: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[who]}


@pytest.fixture(scope="module")
def stack(service_env: dict[str, str], tiny_model_dir: Path, log_dir: Path) -> Iterator[Stack]:
    settings = get_settings()
    folder = Path(settings.artifacts_dir) / f"shadow-{uuid.uuid4().hex[:8]}"
    values = {
        "NER_AUTH": "on",
        "NER_SHADOW_POLL_S": "0.5",
        "NER_SHADOW_MAX_SAMPLES": str(MAX_SAMPLES),
        "NER_CHUNK_MAX_DOCUMENTS": str(CHUNK_DOCS),
    }
    with registry_restored(service_env["NER_REDIS_URL"]), settings_env(values):
        version_a = _register(Path(shutil.copytree(tiny_model_dir, folder / "a")))
        version_b = _register(_swapped_copy(tiny_model_dir, folder / "b"))
        with get_sessionmaker()() as session:
            registry.promote(session=session, version=version_a, redis_url=service_env["NER_REDIS_URL"])
        env = {**service_env, **values}
        keys = {
            scope: create_key(scope, f"shadow-{scope}") for scope in ("admin", "train", "predict", "jobs")
        }
        keys["jobs2"] = create_key("jobs", "shadow-other-owner")
        gateway, base_url = start_gateway(env, log_dir)
        worker = start_worker(env, log_dir)
        try:
            options = EngineOptions.from_settings(get_settings())
            stack = Stack(
                base_url=base_url,
                gateway=gateway,
                worker=worker,
                version_a=version_a,
                version_b=version_b,
                engine_a=NerEngine.load(str(folder / "a"), options),
                engine_b=NerEngine.load(str(folder / "b"), options),
                keys=keys,
            )

            def ready() -> bool:
                return httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200  # the model too

            wait_until(ready, 180, "the gateway's model", gateway)
            yield stack
        finally:
            gateway.stop()
            worker.stop()
            with session_scope() as session:  # jobs pin versions (RESTRICT): they go first
                session.execute(delete(Job).where(Job.model_version.in_([version_a, version_b])))
            shutil.rmtree(folder, ignore_errors=True)


# --- what the engines answer directly ----------------------------------------------------------


def _keys(entities: list[dict[str, Any]]) -> Counter[tuple[int, int, str]]:
    return Counter((e["start"], e["end"], e["entity_group"]) for e in entities)


def _direct(engine: NerEngine, texts: list[str]) -> list[list[dict[str, Any]]]:
    return [[e.model_dump() for e in answer] for answer in engine.predict(texts)]


def _expected(stack: Stack, texts: list[str]) -> dict[str, Any]:
    """Texts, disagreements and per-type added/removed/matched, from the engines' own answers."""
    per_type: dict[str, Counter[str]] = {}
    disagreeing = 0
    for active, shadowed in zip(_direct(stack.engine_a, texts), _direct(stack.engine_b, texts), strict=True):
        a, b = _keys(active), _keys(shadowed)
        disagreeing += a != b
        for key, n in (a & b).items():
            per_type.setdefault(key[2], Counter())["matched"] += n
        for key, n in (b - a).items():
            per_type.setdefault(key[2], Counter())["added"] += n
        for key, n in (a - b).items():
            per_type.setdefault(key[2], Counter())["removed"] += n
    return {"texts": len(texts), "texts_disagreeing": disagreeing, "per_type": per_type}


def _view(stack: Stack, who: str = "admin") -> dict[str, Any]:
    response = httpx.get(f"{stack.base_url}/models/{stack.version_b}/shadow", headers=stack.headers(who))
    assert response.status_code == 200, response.text
    return response.json()


def _against_a(view: dict[str, Any], version_a: int) -> dict[str, Any] | None:
    return next((c for c in view["comparisons"] if c["active_version"] == version_a), None)


def _settle(stack: Stack) -> None:
    """Until no comparison is queued or running: the shadow queue is empty and the counts hold still."""
    broker = redis.Redis.from_url(get_settings().redis_url)

    def still() -> bool:
        texts = sum(c["texts"] + c["failed"] for c in _view(stack)["comparisons"])
        time.sleep(3)
        return broker.llen("shadow") == 0 and texts == sum(
            c["texts"] + c["failed"] for c in _view(stack)["comparisons"]
        )

    wait_until(still, 120, "the shadow queue to drain", stack.worker)


def _predict(stack: Stack, text: str) -> None:
    response = httpx.post(
        f"{stack.base_url}/predict/", json={"text": text}, headers=stack.headers("predict"), timeout=60
    )
    assert response.status_code == 200, response.text


# --- shadow traffic ----------------------------------------------------------------------------


def test_shadow_is_admin_only_and_checks_its_input(stack: Stack) -> None:
    url = f"{stack.base_url}/models/{stack.version_b}/shadow"
    for who in ("train", "jobs", "predict"):
        refused = httpx.post(url, json={"sample_rate": 0.5}, headers=stack.headers(who))
        assert refused.status_code == 403, refused.text
        assert httpx.delete(url, headers=stack.headers(who)).status_code == 403
    assert httpx.post(url, json={"sample_rate": 0.5}).status_code == 401
    assert httpx.get(url, headers=stack.headers("predict")).status_code == 403
    for body in ({"sample_rate": 1.5}, {"sample_rate": -0.1}, {"sample_rate": "often"}, {}):
        bad = httpx.post(url, json=body, headers=stack.headers("admin"))
        assert bad.status_code == 422 and "sample_rate" in bad.text, bad.text
    missing = httpx.post(
        f"{stack.base_url}/models/999999/shadow", json={"sample_rate": 1}, headers=stack.headers("admin")
    )
    assert missing.status_code == 404
    assert (
        httpx.get(f"{stack.base_url}/models/999999/shadow", headers=stack.headers("train")).status_code == 404
    )
    active = httpx.post(
        f"{stack.base_url}/models/{stack.version_a}/shadow",
        json={"sample_rate": 1},
        headers=stack.headers("admin"),
    )
    assert active.status_code == 409 and "active version" in active.text
    off = _view(stack, "train")
    assert off["enabled"] is False and off["sample_rate"] == 0 and off["active_version"] == stack.version_a


def test_shadow_statistics_and_samples_match_the_engines(stack: Stack) -> None:
    started = httpx.post(
        f"{stack.base_url}/models/{stack.version_b}/shadow",
        json={"sample_rate": 1.0},
        headers=stack.headers("admin"),
    )
    assert started.status_code == 200, started.text
    assert started.json()["enabled"] is True and started.json()["sample_rate"] == 1.0

    # The gateway's sampler starts with its first request and reads the configuration in the
    # background: probe until a comparison arrives, then measure everything from there.
    def probed() -> bool:
        _predict(stack, PROBE)
        time.sleep(1)
        comparison = _against_a(_view(stack), stack.version_a)
        return comparison is not None and comparison["texts"] > 0

    wait_until(probed, 180, "a first shadow comparison", stack.worker)
    _settle(stack)  # probes still queued land before the baseline
    before = _against_a(_view(stack), stack.version_a)
    assert before is not None
    last_sample = max((s["id"] for s in _view(stack)["samples"]), default=0)

    for text in SENTENCES[:3]:
        _predict(stack, text)
    batch = httpx.post(
        f"{stack.base_url}/predict/batch",
        json={"texts": SENTENCES[3:]},
        headers=stack.headers("predict"),
        timeout=60,
    )
    assert batch.status_code == 200, batch.text

    def counted() -> bool:
        comparison = _against_a(_view(stack), stack.version_a)
        return comparison is not None and comparison["texts"] >= before["texts"] + len(SENTENCES)

    wait_until(counted, 120, "the sentences' comparisons", stack.worker)
    time.sleep(1)
    view = _view(stack)
    after = _against_a(view, stack.version_a)
    assert after is not None and view["comparisons"][0]["active_version"] == stack.version_a
    expected = _expected(stack, SENTENCES)
    assert expected["texts_disagreeing"] >= 3  # the swap changes every sentence with a person or an org
    assert after["texts"] - before["texts"] == expected["texts"]
    assert after["texts_disagreeing"] - before["texts_disagreeing"] == expected["texts_disagreeing"]
    assert after["failed"] == 0
    old = {t["type"]: t for t in before["per_type"]}
    for t in after["per_type"]:
        for field in ("added", "removed", "matched"):
            gained = t[field] - old.get(t["type"], {}).get(field, 0)
            assert gained == expected["per_type"].get(t["type"], Counter())[field], (t, field)
    assert {t["type"] for t in after["per_type"]} >= set(expected["per_type"])
    matched = sum(t["matched"] for t in after["per_type"])
    shadow_total = matched + sum(t["added"] for t in after["per_type"])
    assert after["matched"] == matched and after["shadow_entities"] == shadow_total
    assert after["precision"] == pytest.approx(matched / shadow_total, abs=1e-6)
    assert after["recall"] == pytest.approx(matched / after["active_entities"], abs=1e-6)

    # Samples: bounded, each exactly what the two engines answer for its sentence.
    samples = view["samples"]
    assert len(samples) <= MAX_SAMPLES
    new = [s for s in samples if s["id"] > last_sample]
    assert len(new) == min(MAX_SAMPLES, expected["texts_disagreeing"])
    for sample in new:
        assert sample["excerpt"] in SENTENCES and sample["excerpt_start"] == 0
        text = sample["excerpt"]
        assert sample["text_chars"] == len(text)
        for side, engine in (("active_entities", stack.engine_a), ("shadow_entities", stack.engine_b)):
            direct = _direct(engine, [text])[0]
            got = [(e["start"], e["end"], e["entity_group"], e["word"]) for e in sample[side]]
            assert sorted(got) == sorted((e["start"], e["end"], e["entity_group"], e["word"]) for e in direct)
        assert _keys(sample["active_entities"]) != _keys(sample["shadow_entities"])

    # Keys other than admin see the numbers, not the live texts.
    redacted = _view(stack, "train")
    assert redacted["comparisons"] == view["comparisons"]
    assert all(s["excerpt"] is None for s in redacted["samples"])
    assert all(
        e["word"] is None for s in redacted["samples"] for e in s["active_entities"] + s["shadow_entities"]
    )

    # Stopping: the gateway hears of it and sends nothing more; discard deletes what was kept.
    stopped = httpx.delete(
        f"{stack.base_url}/models/{stack.version_b}/shadow", headers=stack.headers("admin")
    )
    assert stopped.status_code == 200 and stopped.json()["enabled"] is False
    time.sleep(1)  # the gateway hears of it (pub/sub, else its 0.5 s poll)
    _settle(stack)
    settled = _against_a(_view(stack), stack.version_a)["texts"]
    for text in SENTENCES:
        _predict(stack, text)
    time.sleep(4)
    assert _against_a(_view(stack), stack.version_a)["texts"] == settled
    gone = httpx.delete(
        f"{stack.base_url}/models/{stack.version_b}/shadow?discard=true", headers=stack.headers("admin")
    )
    assert gone.status_code == 200 and gone.json()["comparisons"] == [] and gone.json()["samples"] == []


def test_samples_honour_store_text_and_retention(stack: Stack) -> None:
    """The worker's recording, called here with the settings an operator would set."""
    text = SENTENCES[4]
    active, shadowed = _direct(stack.engine_a, [text]), _direct(stack.engine_b, [text])
    assert _keys(active[0]) != _keys(shadowed[0])
    with settings_env({"NER_SHADOW_STORE_TEXT": "false", "NER_RETENTION_DAYS": "2"}):
        settings = get_settings()
        with get_sessionmaker()() as session:
            disagreeing = shadow.record_comparison(
                session=session, settings=settings, version=stack.version_b, active_version=stack.version_a,
                texts=[text], active_answers=active, shadow_answers=shadowed,
            )  # fmt: skip
            assert disagreeing == 1
            row = session.scalars(
                select(ShadowSample)
                .where(ShadowSample.version == stack.version_b)
                .order_by(ShadowSample.id.desc())
            ).first()
            assert row is not None and row.excerpt is None and row.text_chars == len(text)
            assert all(e["word"] is None for e in row.active_entities + row.shadow_entities)
            assert text not in json.dumps([row.active_entities, row.shadow_entities])
            assert timedelta(days=1.9) < row.expires_at - row.created_at < timedelta(days=2.1)
            view = shadow.shadow_view(session=session, settings=settings, version=stack.version_b)
            assert view.samples and view.samples[0].id == row.id and not view.store_text
            assert all(s.excerpt is None for s in view.samples)
            assert shadow.purge_expired_samples(session=session, now=row.created_at + timedelta(days=1)) == 0
            assert shadow.purge_expired_samples(session=session, now=row.created_at + timedelta(days=3)) >= 1
            assert session.get(ShadowSample, row.id) is None


# --- re-runs and diffs -------------------------------------------------------------------------


def _submit(stack: Stack, texts: list[str], who: str = "jobs") -> str:
    documents = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)]
    response = httpx.post(f"{stack.base_url}/jobs", json={"documents": documents}, headers=stack.headers(who))
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def _wait_done(stack: Stack, job_id: str, who: str = "jobs") -> dict[str, Any]:
    def finished() -> bool:
        status = httpx.get(f"{stack.base_url}/jobs/{job_id}", headers=stack.headers(who)).json()["status"]
        return status in ("succeeded", "failed", "cancelled")

    wait_until(finished, 180, f"job {job_id}", stack.worker)
    job = httpx.get(f"{stack.base_url}/jobs/{job_id}", headers=stack.headers(who)).json()
    assert job["status"] == "succeeded", job
    return job


def _results(stack: Stack, job_id: str) -> dict[int, list[dict[str, Any]]]:
    response = httpx.get(
        f"{stack.base_url}/jobs/{job_id}/results?limit=1000", headers=stack.headers("jobs"), timeout=30
    )
    assert response.status_code == 200, response.text
    return {item["seq"]: item["entities"] for item in response.json()["items"]}


def _pages(stack: Stack, a: str, b: str, limit: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor, summary = None, None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{stack.base_url}/jobs/{a}/diff/{b}", params=params, headers=stack.headers("jobs"))
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= limit
        if cursor is None:
            summary = body["summary"]
        else:
            assert body["summary"] is None
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            assert body["complete"] is True
            return items, summary or {}


def test_rerun_diff_is_exact_and_owner_only(stack: Stack) -> None:
    texts = [*SENTENCES, PROBE, "Nothing to see here.", *SENTENCES[:3]]
    job_id = _submit(stack, texts)
    _wait_done(stack, job_id)
    url = f"{stack.base_url}/jobs/{job_id}/rerun"

    # Another key's job does not exist for it; nor does a version the registry lacks.
    assert (
        httpx.post(url, json={"model_version": stack.version_b}, headers=stack.headers("jobs2")).status_code
        == 404
    )
    assert httpx.post(url, json={"model_version": 999999}, headers=stack.headers("jobs")).status_code == 404
    bad = httpx.post(url, json={"model_version": "two"}, headers=stack.headers("jobs"))
    assert bad.status_code == 422 and "model_version" in bad.text
    assert (
        httpx.post(url, json={"model_version": stack.version_b}, headers=stack.headers("predict")).status_code
        == 403
    )

    accepted = httpx.post(url, json={"model_version": stack.version_b}, headers=stack.headers("jobs"))
    assert accepted.status_code == 202, accepted.text
    rerun = accepted.json()
    assert rerun["source_job_id"] == job_id and rerun["total"] == len(texts)
    assert rerun["model_version"] == stack.version_b
    assert rerun["diff_url"] == f"/jobs/{job_id}/diff/{rerun['job_id']}"
    assert _wait_done(stack, rerun["job_id"])["model_version"] == stack.version_b

    # The copy: the same document ids and order, answered by version B.
    first, second = _results(stack, job_id), _results(stack, rerun["job_id"])
    assert sorted(first) == sorted(second) == list(range(len(texts)))
    for i, direct in enumerate(_direct(stack.engine_b, texts)):
        assert _keys(second[i]) == _keys(direct)

    # The diff lists exactly the documents whose entities differ, page by page.
    changed = {seq for seq in first if _keys(first[seq]) != _keys(second[seq])}
    assert changed and len(changed) < len(texts)
    items, summary = _pages(stack, job_id, rerun["job_id"], limit=2)
    assert [item["seq"] for item in items] == sorted(changed)
    assert summary["documents_compared"] == len(texts) and summary["documents_changed"] == len(changed)
    retyped: Counter[str] = Counter()
    for item in items:
        a, b = _keys(first[item["seq"]]), _keys(second[item["seq"]])
        assert item["id"] == f"doc-{item['seq']}" and item["status_a"] == item["status_b"] == "done"
        gone = _keys(item["removed"] + [c["before"] for c in item["retyped"] + item["boundary"]])
        came = _keys(item["added"] + [c["after"] for c in item["retyped"] + item["boundary"]])
        assert gone == a - b and came == b - a
        # Swapping PER and ORG changes types, never spans.
        assert not item["added"] and not item["removed"] and not item["boundary"]
        for change in item["retyped"]:
            assert SWAP["B-" + change["before"]["entity_group"]] == "B-" + change["after"]["entity_group"]
            retyped[change["before"]["entity_group"]] += 1
    assert {t["type"]: t["retyped"] for t in summary["per_type"]} == dict(retyped)

    # NDJSON, by parameter or by Accept header: the same documents.
    for kwargs in ({"params": {"format": "ndjson"}}, {"headers": {"Accept": "application/x-ndjson"}}):
        headers = {**stack.headers("jobs"), **kwargs.get("headers", {})}
        streamed = httpx.get(
            f"{stack.base_url}/jobs/{job_id}/diff/{rerun['job_id']}",
            params=kwargs.get("params"),
            headers=headers,
        )
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith(
            "application/x-ndjson"
        )
        assert [json.loads(line) for line in streamed.text.splitlines()] == items

    # Only the owner sees the diff; unrelated jobs are not comparable; a bad cursor is a 422.
    diff_url = f"{stack.base_url}/jobs/{job_id}/diff/{rerun['job_id']}"
    assert httpx.get(diff_url, headers=stack.headers("jobs2")).status_code == 404
    other = _submit(stack, texts[:2])
    unrelated = httpx.get(f"{stack.base_url}/jobs/{job_id}/diff/{other}", headers=stack.headers("jobs"))
    assert unrelated.status_code == 409
    assert httpx.get(diff_url, params={"cursor": "nope"}, headers=stack.headers("jobs")).status_code == 422

    # A re-run of the re-run, back on version A, is comparable with the original and equal to it.
    again = httpx.post(
        f"{stack.base_url}/jobs/{rerun['job_id']}/rerun", json={"model_version": stack.version_a},
        headers=stack.headers("jobs"),
    )  # fmt: skip
    assert again.status_code == 202, again.text
    _wait_done(stack, again.json()["job_id"])
    same, summary = _pages(stack, job_id, again.json()["job_id"], limit=5)
    assert same == [] and summary["documents_changed"] == 0 and summary["documents_compared"] == len(texts)
