"""The web UI end to end: a real headless Chromium against the real gateway, worker, model and registry.

Chromium is Debian's package (/usr/bin/chromium), driven by Playwright's Python client through
``executable_path`` (no browser download). Screenshots of each page land in ``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from shared.core import migrate
from shared.core.config import get_settings
from shared.core.db import make_engine
from shared.core.tables import RunStatus
from shared.keys import service as keys
from shared.registry import service as registry
from shared.registry.manifest import write_manifest
from shared.training import service
from tests.support.processes import ServiceProcess, start_gateway, start_worker, wait_until
from tests.support.services import RedisServer, create_database, drop_database
from trainer.conll import read_conll
from trainer.metrics import EpochMetrics, detailed_report

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SENTENCE = "Google was founded by Larry Page and Sergey Brin in California."
PREDICT_MAX_CHARS = 15_000  # low, so an oversized paste is cheap to make
EXPECTED = [("Google", "ORG"), ("Larry Page", "PER"), ("Sergey Brin", "PER"), ("California", "LOC")]


@dataclass
class UiStack:
    """The gateway (auth on) over a database and Redis of this module's own, with an admin key and
    a ``train`` key (which may read the registry but not activate a version)."""

    base_url: str
    env: dict[str, str]
    engine: Engine
    admin_key: str
    train_key: str
    log_dir: Path
    processes: list[ServiceProcess] = field(default_factory=list)

    def api(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"X-API-Key": key or self.admin_key}
        return httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=60, **kwargs)

    def start_worker(self, queue: str = "inference") -> ServiceProcess:
        worker = start_worker(self.env, self.log_dir, queue=queue)
        self.processes.append(worker)
        return worker

    def session(self) -> Session:
        return Session(self.engine)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def ui(
    service_env: dict[str, str],
    tiny_model_dir: Path,
    log_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[UiStack]:
    # A database and Redis of its own: the versions this module publishes must not leak into
    # other tests' registry, nor other tests' leftover tasks into this worker.
    db_url = create_database()
    migrate.upgrade(db_url)
    redis = RedisServer(tmp_path_factory.mktemp("ui-redis"))
    redis.start()
    state = tmp_path_factory.mktemp("ui-state")
    env = {
        **service_env,
        "NER_DATABASE_URL": db_url,
        "NER_REDIS_URL": redis.url,
        "NER_STATE_DIR": str(state),
        "NER_ARTIFACTS_DIR": str(state / "models"),
        "NER_DATA_ROOTS": f"{state / 'data'},{get_settings().conll_dir}",
        "NER_MODEL": str(tiny_model_dir),
        "NER_AUTH": "on",
        "NER_PREDICT_MAX_CHARS": str(PREDICT_MAX_CHARS),
    }
    engine = make_engine(db_url)
    processes: list[ServiceProcess] = []
    try:
        with Session(engine) as session:
            admin_key = keys.create_key(session=session, scope="admin", name="ui-admin").plaintext
            train_key = keys.create_key(session=session, scope="train", name="ui-train").plaintext
        gateway, base_url = start_gateway(env, log_dir)
        processes.append(gateway)
        stack = UiStack(base_url, env, engine, admin_key, train_key, log_dir, processes)
        wait_until(
            lambda: httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200,
            120,
            "the gateway to load its model",
            gateway,
        )
        yield stack
    finally:
        for process in reversed(processes):
            if process.name != "gateway":
                # Celery's cold shutdown: its work is done, a warm one only waits for the pool.
                process.kill(signal.SIGQUIT)
            process.stop()
        redis.stop()
        engine.dispose()
        drop_database(db_url)


def open_ui(browser: Browser, ui: UiStack, key: str | None = None, tab: str = "try") -> Page:
    """A fresh tab (own session storage) on the UI, with ``key`` entered once in the key box."""
    # Reduced motion: no progress-bar transition half-way through a screenshot.
    page = browser.new_context(viewport={"width": 1280, "height": 900}, reduced_motion="reduce").new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.js_errors = errors  # type: ignore[attr-defined]
    page.goto(f"{ui.base_url}/#/{tab}")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.fill("#api-key", key or ui.admin_key)
    page.click("#key-form button[type=submit]")
    # The key is checked on save (GET /keys/me): its name and scopes are shown.
    expect(page.locator("#key-state")).to_contain_text("ui-admin" if key in (None, ui.admin_key) else "ui-")
    return page


def close(page: Page) -> None:
    """Close the tab; fail on any uncaught JavaScript error it had."""
    errors = page.js_errors  # type: ignore[attr-defined]
    page.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def marks_of(page: Page, selector: str) -> list[tuple[str, str]]:
    return page.eval_on_selector_all(
        f"{selector} mark.ent",
        "marks => marks.map(m => [m.querySelector('.ent-text').textContent, m.dataset.type])",
    )


def test_static_page_needs_no_key(ui: UiStack) -> None:
    page = httpx.get(f"{ui.base_url}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    script = httpx.get(f"{ui.base_url}/static/js/app.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    # ...while the API itself still wants one.
    assert httpx.post(f"{ui.base_url}/predict/", json={"text": SENTENCE}, timeout=10).status_code == 401


def test_try_it_highlights_the_prototype_sentence(browser: Browser, ui: UiStack) -> None:
    page = open_ui(browser, ui)
    page.fill("#try-text", SENTENCE)
    page.click("#try-run")
    expect(page.locator("#try-output mark.ent")).to_have_count(4)
    assert [tuple(m) for m in marks_of(page, "#try-output")] == EXPECTED
    # The text around the marks is the caller's own, untouched.
    surface = page.eval_on_selector(
        "#try-output",
        "o => [...o.childNodes]"
        ".map(n => n.nodeType === 3 ? n.data : n.querySelector('.ent-text').textContent).join('')",
    )
    assert surface == SENTENCE
    # Type and score on hover; the version that answered, as the API reports it.
    page.hover("#try-output mark.ent >> nth=1")
    expect(page.locator("#entity-tooltip")).to_be_visible()
    answer = ui.api("POST", "/predict/", json={"text": SENTENCE}).json()
    expect(page.locator("#entity-tooltip")).to_have_text(f"PER · score {answer['entities'][1]['score']:.3f}")
    version = answer["model_version"]
    expect(page.locator("#try-version")).to_contain_text(
        f"version {version}" if version else "the configured model"
    )
    page.screenshot(path=ui.log_dir / "ui-try-it.png", full_page=True)

    # Nothing to send: the button is disabled and says why (no request, no API message).
    page.fill("#try-text", "")
    expect(page.locator("#try-run")).to_be_disabled()
    expect(page.locator("#try-hint")).to_be_visible()
    close(page)


def test_try_it_with_a_long_pasted_article(browser: Browser, ui: UiStack) -> None:
    # About 13,000 characters (several model windows) of news with accents and an emoji (UTF-16
    # surrogates in the browser); "\n" line breaks only, as a textarea normalises "\r\n" to "\n"
    # before anything is sent.
    sentences = [" ".join(s.tokens) for s in read_conll(get_settings().conll_dir / "eng.testb", limit=200)]
    paragraphs = [" ".join(sentences[i : i + 8]) for i in range(0, len(sentences), 8)]
    article = "Zürich 🙂 report.\n\n" + "\n\n".join(paragraphs)
    assert len(article) > 12_000
    expected = ui.api("POST", "/predict/", json={"text": article}).json()["entities"]
    assert len(expected) > 100
    page = open_ui(browser, ui)
    page.fill("#try-text", article)
    page.click("#try-run")
    expect(page.locator("#try-output mark.ent")).to_have_count(len(expected), timeout=60_000)
    assert marks_of(page, "#try-output") == [[e["word"], e["entity_group"]] for e in expected]
    page.screenshot(path=ui.log_dir / "ui-try-it-article.png")

    # Over the synchronous limit: the API's 413 names the limit, and the page offers a bulk job.
    oversized = article + "\n\n" + article[: PREDICT_MAX_CHARS - len(article)]
    page.fill("#try-text", oversized)
    page.click("#try-run")
    expect(page.locator("#try-error")).to_have_attribute("data-status", "413")
    expect(page.locator("#try-error")).to_contain_text(f"at most {PREDICT_MAX_CHARS:,}")
    expect(page.locator("#try-error")).not_to_contain_text("NER_")
    # The previous answer is not left under the error as if it were this text's.
    expect(page.locator("#try-result")).to_be_hidden()
    page.click("#try-as-job")
    expect(page.locator("#panel-jobs")).to_be_visible()
    expect(page.locator("#job-view")).to_be_visible()
    job = ui.api("GET", f"/jobs/{page.locator('#job-id').inner_text()}").json()
    assert job["total"] == 1 and job["total_chars"] == len(oversized) > PREDICT_MAX_CHARS
    close(page)


def test_job_upload_progress_and_results(browser: Browser, ui: UiStack) -> None:
    ui.start_worker()
    sentences = [" ".join(s.tokens) for s in read_conll(get_settings().conll_dir / "eng.testb", limit=60)]
    others = [
        {"id": f"doc-{i:02d}", "text": text} for i, text in enumerate(s for s in sentences if len(s) > 30)
    ]
    documents = [{"id": "google", "text": SENTENCE}, *others[:13]]
    upload = "".join(json.dumps(doc) + "\n" for doc in documents).encode()

    page = open_ui(browser, ui, tab="jobs")
    page.set_input_files(
        "#job-file", files=[{"name": "docs.jsonl", "mimeType": "application/jsonl", "buffer": upload}]
    )
    page.click("#job-submit")
    expect(page.locator("#job-view")).to_be_visible()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=90_000)
    expect(page.locator("#job-progress")).to_have_attribute("aria-valuenow", "100.0")
    expect(page.locator("#job-progress .label")).to_have_text("100%")
    job_id = page.locator("#job-id").inner_text()
    job = ui.api("GET", f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["done"] == len(documents)
    expect(page.locator("#job-stats [data-stat=Documents]")).to_have_text(
        f"{len(documents)} of {len(documents)}"
    )
    expect(page.locator("#job-stats [data-stat=Throughput]")).to_contain_text("docs/s")

    # Results page by page, each document's entities as the API returns them.
    expected = [item for item in _all_results(ui, job_id)]
    assert [item["id"] for item in expected] == [doc["id"] for doc in documents]
    expect(page.locator("#results-list > li")).to_have_count(10)
    first_page = page.eval_on_selector_all("#results-list > li", "items => items.map(li => li.dataset.docId)")
    assert first_page == [doc["id"] for doc in documents[:10]]
    google = "#results-list > li[data-doc-id=google]"
    assert marks_of(page, google) == [[e["word"], e["entity_group"]] for e in expected[0]["entities"]]
    page.click("#results-next")
    expect(page.locator("#results-list > li")).to_have_count(len(documents) - 10)
    expect(page.locator("#results-prev")).to_be_enabled()
    expect(page.locator("#results-next")).to_be_disabled()
    page.click("#results-prev")
    expect(page.locator("#results-list > li").first).to_have_attribute("data-doc-id", "google")

    # Top entities: the API's aggregate, most frequent first.
    top = ui.api("GET", f"/jobs/{job_id}/entities", params={"limit": 15}).json()["items"]
    expect(page.locator("#entities-table tbody tr")).to_have_count(len(top))
    first_row = page.locator("#entities-table tbody tr").first.locator("td")
    expect(first_row.nth(0)).to_have_text(top[0]["text"])
    expect(first_row.nth(1)).to_have_text(top[0]["type"])
    page.screenshot(path=ui.log_dir / "ui-jobs.png", full_page=True)

    # The NDJSON download holds every result; cancelling a finished job shows the API's 409.
    with page.expect_download() as download:
        page.click("#job-download")
    lines = Path(download.value.path()).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [doc["id"] for doc in documents]
    expect(page.locator("#job-cancel")).to_be_disabled()
    close(page)


def _all_results(ui: UiStack, job_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = ui.api(
            "GET", f"/jobs/{job_id}/results", params={"limit": 100, **({"cursor": cursor} if cursor else {})}
        )
        body = page.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            return items


def _conll_file(sentences: list[Any]) -> bytes:
    return "\n\n".join(
        "\n".join(f"{t} {g}" for t, g in zip(s.tokens, s.tags, strict=True)) for s in sentences
    ).encode()


def test_train_form_starts_a_run_watched_epoch_by_epoch(
    browser: Browser, ui: UiStack, tmp_path: Path
) -> None:
    conll = get_settings().conll_dir
    train = _conll_file(read_conll(conll / "eng.train", limit=40))
    validation = _conll_file(read_conll(conll / "eng.testa", limit=20))

    page = open_ui(browser, ui, tab="train")
    # A reference outside the data roots: the API's 422 message is shown, nothing starts.
    page.fill("#train-train", "/etc/passwd")
    page.click("#train-submit")
    expect(page.locator("#train-form-error")).to_have_attribute("data-status", "422")
    expect(page.locator("#train-form-error")).to_contain_text("/etc/passwd")
    expect(page.locator("#train-form-error")).not_to_contain_text("NER_")

    # Uploads: stored by POST /train/uploads, then referenced by the run the form starts.
    page.check("input[name=train-source][value=upload]")
    page.set_input_files(
        "#train-train-file", files=[{"name": "train.conll", "mimeType": "text/plain", "buffer": train}]
    )
    page.set_input_files(
        "#train-validation-file",
        files=[{"name": "valid.conll", "mimeType": "text/plain", "buffer": validation}],
    )
    page.fill("#train-epochs", "2")
    page.select_option("#train-loss", "mom")
    page.fill("#train-lr", "0.0005")
    page.click("#train-form details summary")
    page.fill("#train-max-length", "64")
    page.click("#train-submit")
    expect(page.locator("#run-view")).to_be_visible()
    expect(page.locator("#run-status")).to_have_text("queued")
    run_id = uuid.UUID(page.locator("#run-id").inner_text())
    run = ui.api("GET", f"/train/{run_id}").json()
    assert {k: run["params"][k] for k in ("epochs", "loss", "learning_rate", "max_length")} == {
        "epochs": 2,
        "loss": "mom",
        "learning_rate": 0.0005,
        "max_length": 64,
    }
    # The run names its uploads host-independently ("upload:<id>/<name>"); here they are under the
    # stack's uploads folder (its first data root).
    uploads = Path(ui.env["NER_DATA_ROOTS"].split(",")[0]) / "uploads"
    for split, content in (("train", train), ("validation", validation)):
        scheme, _, key = run["data"][split].partition(":")
        assert scheme == "upload", run["data"]
        assert (uploads / key).read_bytes() == content
    expect(page.locator(f"#runs-table tbody tr[data-run-id='{run_id}']")).to_have_count(1)

    # The run advances as the trainer reports it (its own service functions, no model training
    # here: that is the trainer's tests' job); the page follows epoch by epoch.
    with ui.session() as session:
        service.mark_running(
            session=session, run=service.get_run(session=session, run_id=run_id), checkpoint_dir=str(tmp_path)
        )
        service.record_start(session=session, run_id=run_id, total_steps=8, resumed_from=0)
        service.record_progress(session=session, run_id=run_id, step=4, total_steps=8)
        service.record_epoch(
            session=session, run_id=run_id, values=EpochMetrics(1, 1.9, 1.1, 0.41, 0.37, 0.39, 0.86).as_dict()
        )
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("#run-epochs tbody tr")).to_have_count(1)
    expect(page.locator("#run-progress")).to_have_attribute("aria-valuenow", "50.0")
    expect(page.locator("#run-charts [data-series='F1'] circle")).to_have_count(1)
    with ui.session() as session:
        service.record_progress(session=session, run_id=run_id, step=8, total_steps=8)
        service.record_epoch(
            session=session, run_id=run_id, values=EpochMetrics(2, 0.9, 0.7, 0.62, 0.58, 0.6, 0.91).as_dict()
        )
        service.finish(session=session, run_id=run_id, status=RunStatus.succeeded)
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator("#run-epochs tbody tr")).to_have_count(2)
    expect(page.locator("#run-epochs tbody tr").nth(1).locator("td").nth(5)).to_have_text("0.600")
    expect(page.locator("#run-charts svg")).to_have_count(2)
    expect(page.locator("#run-charts [data-series='train loss'] circle")).to_have_count(2)
    expect(page.locator("#run-charts [data-series='F1'] circle")).to_have_count(2)
    expect(page.locator("#run-progress")).to_have_attribute("aria-valuenow", "100.0")
    expect(page.locator("#run-cancel")).to_be_disabled()
    page.screenshot(path=ui.log_dir / "ui-train.png", full_page=True)

    # Another run, cancelled from the page while it is queued (after a confirmation).
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.click("#train-submit")
    expect(page.locator("#run-id")).not_to_have_text(str(run_id))
    expect(page.locator("#run-status")).to_have_text("queued")
    page.click("#run-cancel")
    expect(page.locator("#run-status")).to_have_text("cancelled")
    assert dialogs and "Cancel training run" in dialogs[0]
    expect(page.locator("#toasts")).to_contain_text("Cancelling run")
    # A run cancelled before any epoch says so instead of "no data yet".
    expect(page.locator("#run-no-epochs")).to_contain_text("cancelled")
    close(page)


def _publish(ui: UiStack, tiny_model_dir: Path, *, val_f1: float, promote: bool) -> int:
    """A version in the registry through its service functions: the tiny model, scored for real."""
    conll = get_settings().conll_dir
    gold = [s.tags for s in read_conll(conll / "eng.testb", limit=120)]
    # A prediction that misses every third sentence's entities: real, imperfect seqeval scores.
    pred = [tags if i % 3 else ["O"] * len(tags) for i, tags in enumerate(gold)]
    report = detailed_report(
        gold, pred, ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    )
    epochs = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 0.8 / e + 0.1, "precision": 0.5 + e / 10,
         "recall": 0.4 + e / 10, "f1": 0.45 + e / 10, "accuracy": 0.9 + e / 100}
        for e in (1, 2, 3)
    ]  # fmt: skip
    # Activation requires a manifest whose hashes match (issue 19): links to the cached model's files
    # in a folder of this version's own, with its manifest.
    folder = Path(tempfile.mkdtemp(prefix="ner-ui-model-"))
    for file in tiny_model_dir.iterdir():
        (folder / file.name).symlink_to(file)
    write_manifest(folder)
    with ui.session() as session:
        version = registry.next_version_number(session=session)
        registry.register_version(
            session=session,
            version=version,
            path=str(folder),
            base_model=get_settings().base_model,
            data_hash="0" * 64,
            data_ref={"train": str(conll / "eng.train")},
            params={"epochs": 3, "loss": "ce"},
            metrics={"epochs": epochs, "validation": report, "test": report},
            labels=report["confusion"]["labels"],
            val_f1=val_f1,
            test_f1=report["f1"],
        )
        session.commit()
        if promote:
            registry.promote(session=session, version=version, redis_url=ui.env["NER_REDIS_URL"])
    return version


def test_models_table_marks_the_active_version_and_rolls_back(
    browser: Browser, ui: UiStack, tiny_model_dir: Path
) -> None:
    older = _publish(ui, tiny_model_dir, val_f1=0.71, promote=True)
    newer = _publish(ui, tiny_model_dir, val_f1=0.74, promote=True)
    listed = ui.api("GET", "/models").json()
    assert listed["active"] == newer

    page = open_ui(browser, ui, tab="models")
    rows = page.locator("#models-table tbody tr")
    expect(rows).to_have_count(len(listed["versions"]))
    active = page.locator("#models-table tbody tr[data-active=true]")
    expect(active).to_have_count(1)
    expect(active).to_have_attribute("data-version", str(newer))
    expect(active).to_contain_text("★ active")
    older_row = page.locator(f"#models-table tbody tr[data-version='{older}']")
    expect(older_row.locator("td").nth(5)).to_have_text("0.710")
    expect(older_row.locator("button[data-action=activate]")).to_have_text("Roll back to this")

    # The active version's details: curves per epoch and scores per type.
    expect(page.locator("#model-title")).to_have_text(f"v{newer}")
    expect(page.locator("#model-charts svg")).to_have_count(2)
    expect(page.locator("#model-charts [data-series='validation loss'] circle")).to_have_count(3)
    detail = ui.api("GET", f"/models/{newer}").json()
    per_type = detail["metrics"]["test"]["per_type"]
    expect(page.locator("#model-types tbody tr")).to_have_count(len(per_type))
    expect(page.locator("#model-types tbody tr[data-type=PER] td").nth(3)).to_have_text(
        f"{per_type['PER']['f1']:.3f}"
    )
    page.screenshot(path=ui.log_dir / "ui-models.png", full_page=True)

    page.on("dialog", lambda dialog: dialog.accept())
    # A key without the admin scope: the API's 403 is shown and nothing changes.
    page.fill("#api-key", ui.train_key)
    page.click("#key-form button[type=submit]")
    # Saving a key checks it and clears the error boxes: let that finish before activating.
    expect(page.locator("#key-state")).to_contain_text("ui-train")
    page.wait_for_load_state("networkidle")
    older_row.locator("button[data-action=activate]").click()
    expect(page.locator("#models-error")).to_have_attribute("data-status", "403")
    expect(page.locator("#models-error")).to_contain_text('"admin"')
    assert ui.api("GET", "/models").json()["active"] == newer
    # With the admin key the roll-back happens.
    page.fill("#api-key", ui.admin_key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-state")).to_contain_text("ui-admin")
    page.wait_for_load_state("networkidle")
    older_row.locator("button[data-action=activate]").click()
    expect(page.locator("#models-table tbody tr[data-active=true]")).to_have_attribute(
        "data-version", str(older)
    )
    expect(page.locator("#models-error")).to_be_hidden()
    assert ui.api("GET", "/models").json()["active"] == older
    close(page)


# ---- issue 20: one test per problem a demanding user found ------------------------------------


def _worker(ui: UiStack) -> None:
    if not any(p.name.startswith("worker") and p.alive() for p in ui.processes):
        ui.start_worker()


def _finished_job(ui: UiStack, documents: list[dict[str, str]]) -> str:
    job_id = ui.api("POST", "/jobs", json={"documents": documents}).json()["job_id"]
    wait_until(lambda: ui.api("GET", f"/jobs/{job_id}").json()["status"] == "succeeded", 90, "the job")
    return job_id


def test_1_a_model_folder_is_imported_activated_and_rolled_back_from_the_models_tab(
    browser: Browser, ui: UiStack, tiny_model_dir: Path
) -> None:
    folder = Path(ui.env["NER_STATE_DIR"]) / "data" / "my-model"
    if not folder.exists():
        shutil.copytree(tiny_model_dir, folder)
    before = ui.api("GET", "/models").json()
    page = open_ui(browser, ui, tab="models")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#import-box summary")
    expect(page.locator("#import-submit")).to_be_disabled()
    page.fill("#import-source", str(folder))
    page.click("#import-submit")
    expect(page.locator("#toasts")).to_contain_text("Imported", timeout=120_000)
    after = ui.api("GET", "/models").json()
    new = max(v["version"] for v in after["versions"])
    assert len(after["versions"]) == len(before["versions"]) + 1
    assert next(v for v in after["versions"] if v["version"] == new)["data_ref"] == {
        "imported_from": str(folder)
    }
    row = page.locator(f"#models-table tbody tr[data-version='{new}']")
    expect(row).to_have_count(1)
    expect(page).to_have_url(re.compile(rf"#/models/{new}$"))
    # Activated from the table, then rolled back to the version that was active before.
    row.locator("button[data-action=activate]").click()
    expect(page.locator("#models-table tbody tr[data-active=true]")).to_have_attribute(
        "data-version", str(new)
    )
    assert ui.api("GET", "/models").json()["active"] == new
    if before["active"] is not None:
        old = page.locator(f"#models-table tbody tr[data-version='{before['active']}']")
        old.locator("button[data-action=activate]").click()
        expect(page.locator("#toasts")).to_contain_text(f"Rolled back to version {before['active']}")
        assert ui.api("GET", "/models").json()["active"] == before["active"]
    # A folder outside the data roots: refused in plain words, nothing registered.
    if not page.locator("#import-source").is_visible():
        page.click("#import-box summary")
    page.fill("#import-source", str(tiny_model_dir))
    page.click("#import-submit")
    expect(page.locator("#import-error")).to_contain_text("outside the service's data folders")
    assert len(ui.api("GET", "/models").json()["versions"]) == len(after["versions"])
    close(page)


def test_2_pasted_documents_get_readable_ids_and_results_show_their_text(
    browser: Browser, ui: UiStack
) -> None:
    _worker(ui)
    page = open_ui(browser, ui, tab="jobs")
    page.check("input[name=job-source][value=paste]")
    expect(page.locator("#job-submit")).to_be_disabled()
    page.fill("#job-text", f"{SENTENCE}\n\n   \nAngela Merkel visited Paris.\n")
    page.click("#job-submit")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=90_000)
    expect(page.locator("#results-list > li")).to_have_count(2)
    ids = page.eval_on_selector_all("#results-list > li", "items => items.map(li => li.dataset.docId)")
    assert ids == ["doc-1", "doc-2"]
    # The document itself, with its entities highlighted in it (not chips without the text).
    first = "#results-list > li[data-doc-id=doc-1] .doc"
    text = page.eval_on_selector(
        first,
        "o => [...o.childNodes].map(n => n.nodeType === 3 ? n.data"
        " : (n.querySelector('.ent-text')?.textContent ?? '')).join('')",
    )
    assert text == SENTENCE
    job_id = page.locator("#job-id").inner_text()
    api_items = ui.api("GET", f"/jobs/{job_id}/results").json()["items"]
    assert marks_of(page, first) == [[e["word"], e["entity_group"]] for e in api_items[0]["entities"]]
    # Scores visible without hovering; the list row names the job by its first words.
    expect(page.locator(f"{first} mark.ent .ent-score").first).to_have_text(
        f"{api_items[0]['entities'][0]['score']:.2f}"
    )
    expect(page.locator(f"#jobs-table tbody tr[data-job-id='{job_id}']")).to_contain_text(
        "pasted: Google was founded"
    )
    close(page)


def test_3_keyboard_rows_tabs_entities_labels_and_one_h1(browser: Browser, ui: UiStack) -> None:
    _worker(ui)
    job_id = _finished_job(ui, [{"id": "k", "text": SENTENCE}])
    page = open_ui(browser, ui)
    expect(page.locator("h1")).to_have_count(1)
    for selector in ("#try-text", "#job-text", "#job-file", "#run-open-id", "#api-key", "#import-source"):
        label = page.eval_on_selector(
            selector,
            "e => (e.labels && e.labels.length ? e.labels[0].textContent"
            " : e.getAttribute('aria-label')) || ''",
        )
        assert label.strip(), f"{selector} has no label"
    # Tabs: a WAI-ARIA tab list, one tab stop, arrow keys move and open.
    page.focus("#tab-try")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-jobs")).to_be_focused()
    expect(page.locator("#tab-jobs")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#panel-jobs")).to_be_visible()
    expect(page.locator("#tab-try")).to_have_attribute("tabindex", "-1")
    page.keyboard.press("End")
    expect(page.locator("#panel-train")).to_be_visible()
    page.keyboard.press("Home")
    expect(page.locator("#panel-try")).to_be_visible()
    # A highlighted text is one tab stop; arrow keys go from entity to entity.
    page.fill("#try-text", SENTENCE)
    page.click("#try-run")
    expect(page.locator("#try-output mark.ent")).to_have_count(4)
    assert (
        page.eval_on_selector_all("#try-output mark.ent", "ms => ms.filter(m => m.tabIndex >= 0).length") == 0
    )
    page.focus("#try-output")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#try-output mark.ent").nth(0)).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#try-output mark.ent").nth(1)).to_be_focused()
    expect(page.locator("#entity-tooltip")).to_contain_text("PER · score")
    page.keyboard.press("End")
    expect(page.locator("#try-output mark.ent").nth(3)).to_be_focused()
    # Rows of jobs (and versions, runs) take focus and open with Enter.
    page.goto(f"{ui.base_url}/#/jobs")
    row = page.locator(f"#jobs-table tbody tr[data-job-id='{job_id}']")
    row.focus()
    # The list re-renders under a keyboard user (a refresh, a poll): the row keeps the focus.
    row.evaluate("r => { window.previousRow = r; }")
    page.evaluate("document.querySelector('#jobs-refresh').click()")
    deadline = time.monotonic() + 5
    while page.evaluate("() => window.previousRow.isConnected") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not page.evaluate("() => window.previousRow.isConnected"), "the refresh did not re-render the list"
    expect(row).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#job-id")).to_have_text(job_id)
    close(page)


def test_4_phone_width_has_no_sideways_page_scroll(
    browser: Browser, ui: UiStack, tiny_model_dir: Path
) -> None:
    _worker(ui)
    _publish(ui, tiny_model_dir, val_f1=0.5, promote=False)  # a version the Models tab offers to activate
    _finished_job(ui, [{"id": "p", "text": SENTENCE}])
    context = browser.new_context(viewport={"width": 390, "height": 844}, reduced_motion="reduce")
    page = context.new_page()
    page.goto(f"{ui.base_url}/#/try")
    page.evaluate("k => sessionStorage.setItem('ner.apiKey', k)", ui.admin_key)
    for tab in ("try", "jobs", "models", "train"):
        page.goto(f"{ui.base_url}/#/{tab}")
        page.reload()
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        page.wait_for_load_state("networkidle")
        if tab == "try":
            page.fill("#try-text", SENTENCE)
            page.click("#try-run")
            expect(page.locator("#try-output mark.ent")).to_have_count(4)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"{tab}: the page is {width} px wide at 390 px"
        # The key box stays inside the header.
        box = page.locator("#key-state").bounding_box()
        assert box is None or box["x"] + box["width"] <= 390
    # The Models table's actions are on screen (a card per version).
    page.goto(f"{ui.base_url}/#/models")
    # A hash change: the app shows the panel on its hashchange event, a task after goto returns.
    expect(page.locator('[data-panel="models"]')).to_be_visible()
    page.wait_for_load_state("networkidle")
    # The buttons' right edges once every one is laid out (the rows re-render as the tab's requests
    # come back), found and measured in one task of the page: a re-render cannot come in between.
    rights = page.wait_for_function(
        "sel => { const rs = [...document.querySelectorAll(sel)].map(b => b.getBoundingClientRect());"
        " return rs.length > 0 && rs.every(r => r.width > 0) && rs.map(r => r.right); }",
        arg="#models-table button[data-action=activate]",
    ).json_value()
    assert all(right <= 390 for right in rights), f"Activate buttons end at {rights} px at 390 px"
    context.close()


def test_5_messages_in_plain_words_and_buttons_disabled_while_input_is_invalid(
    browser: Browser, ui: UiStack
) -> None:
    page = open_ui(browser, ui, tab="train")
    expect(page.locator("#train-submit")).to_be_disabled()
    expect(page.locator("#train-hint")).to_contain_text("training data")
    page.goto(f"{ui.base_url}/#/try")
    page.fill("#try-text", "   \n  ")
    expect(page.locator("#try-run")).to_be_disabled()
    expect(page.locator("#try-hint")).to_contain_text("Only spaces")
    # A validation error from the API, in words, with the field as people know it.
    page.goto(f"{ui.base_url}/#/jobs")
    page.check("input[name=job-source][value=paste]")
    page.fill("#job-text", "x")
    page.fill("#job-retention", "0")
    page.click("#job-submit")
    expect(page.locator("#job-form-error")).to_contain_text("Keep results for")
    text = page.locator("#job-form-error").inner_text()
    assert "retention_days" not in text and "NER_" not in text and "422" not in text
    # A served model without a registry version is not called by its setting's name.
    assert "NER_MODEL" not in page.content()
    close(page)


def test_6_feedback_is_fresh_keys_are_checked_and_actions_confirmed(browser: Browser, ui: UiStack) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{ui.base_url}/#/jobs")
    expect(page.locator("#jobs-error")).to_have_attribute("data-status", "401")
    expect(page.locator("#jobs-error")).to_contain_text("paste yours")
    # A wrong key is refused and not saved.
    page.fill("#api-key", "ner_deadbeef_not-a-real-key")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-state")).to_contain_text("not valid")
    assert page.evaluate("() => sessionStorage.getItem('ner.apiKey')") is None
    # A good key: its name and scopes shown, the old 401 gone.
    page.fill("#api-key", ui.train_key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-state")).to_have_text("ui-train · train")
    page.fill("#api-key", ui.admin_key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-state")).to_contain_text("ui-admin · predict, jobs, train, admin, metrics")
    expect(page.locator("#jobs-error")).to_be_hidden()
    # Cancel asks first; declining changes nothing.
    _worker(ui)
    job_id = ui.api("POST", "/jobs", json={"documents": [{"text": SENTENCE}] * 3}).json()["job_id"]
    page.goto(f"{ui.base_url}/#/jobs/{job_id}")
    expect(page.locator("#job-id")).to_have_text(job_id)
    asked: list[str] = []
    page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    if page.locator("#job-cancel").is_enabled():
        page.click("#job-cancel")
        assert asked and asked[0].startswith("Cancel job")
    context.close()


def test_7_run_rows_move_with_their_run(browser: Browser, ui: UiStack, tmp_path: Path) -> None:
    run_id = ui.api(
        "POST", "/train", json={"data": {"train": str(get_settings().conll_dir / "eng.train")}, "epochs": 2}
    )
    assert run_id.status_code in (200, 201, 202), run_id.text
    rid = uuid.UUID(run_id.json()["run_id"])
    page = open_ui(browser, ui, tab="train")
    row = page.locator(f"#runs-table tbody tr[data-run-id='{rid}']")
    expect(row).to_contain_text("queued")
    row.click()
    with ui.session() as session:
        service.mark_running(
            session=session, run=service.get_run(session=session, run_id=rid), checkpoint_dir=str(tmp_path)
        )
        service.record_start(session=session, run_id=rid, total_steps=8, resumed_from=0)
        service.record_epoch(
            session=session, run_id=rid, values=EpochMetrics(1, 1.9, 1.1, 0.41, 0.37, 0.39, 0.86).as_dict()
        )
    # Without pressing Refresh: the row follows the run it shows.
    expect(row).to_contain_text("running")
    expect(row).to_contain_text("1 of 2")
    with ui.session() as session:
        service.finish(session=session, run_id=rid, status=RunStatus.cancelled)
    expect(row).to_contain_text("cancelled")
    close(page)


def test_8_exports_links_filters_threshold_types_sorting_and_retention(browser: Browser, ui: UiStack) -> None:
    _worker(ui)
    job_id = _finished_job(ui, [{"id": "g", "text": SENTENCE}, {"id": "h", "text": "Paris is in France."}])
    page = open_ui(browser, ui)
    page.fill("#try-text", SENTENCE)
    page.click("#try-run")
    expect(page.locator("#try-output mark.ent")).to_have_count(4)
    answer = ui.api("POST", "/predict/", json={"text": SENTENCE}).json()["entities"]
    with page.expect_download() as download:
        page.click("#try-export-csv")
    rows = Path(download.value.path()).read_text().splitlines()
    assert rows[0] == "word,entity_group,score,start,end" and len(rows) == 1 + len(answer)
    assert rows[1].startswith(f"{answer[0]['word']},{answer[0]['entity_group']},")
    with page.expect_download() as download:
        page.click("#try-export-json")
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["text"] == SENTENCE and [e["word"] for e in exported["entities"]] == [
        e["word"] for e in answer
    ]
    # Legend chips filter; the threshold hides low scores; the types are described.
    page.click("#try-legend button[data-type=PER]")
    expect(page.locator("#try-legend button[data-type=PER]")).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#try-output mark.ent.ent-off")).to_have_count(2)
    page.click("#try-legend button[data-type=PER]")
    expect(page.locator("#try-output mark.ent.ent-off")).to_have_count(0)
    page.fill("#try-threshold", "1")
    expect(page.locator("#try-output mark.ent.ent-off")).to_have_count(sum(e["score"] < 1 for e in answer))
    page.fill("#try-threshold", "0")
    expect(page.locator("#try-types dd[data-type=LOC]")).to_contain_text("countries, cities")
    expect(page.locator("#try-types dd[data-type=ORG]")).to_contain_text("companies")
    # Sortable tables: by score, highest first on the second press.
    page.click("#try-table-box summary")
    page.click("#try-table th:nth-child(3) button")
    page.click("#try-table th:nth-child(3) button")
    expect(page.locator("#try-table th:nth-child(3)")).to_have_attribute("aria-sort", "descending")
    shown = page.eval_on_selector_all(
        "#try-table tbody tr td:nth-child(3)", "tds => tds.map(t => Number(t.textContent))"
    )
    assert shown == sorted(shown, reverse=True)

    # A job by its link, kept on reload; its retention and expiry; its CSV export.
    page.goto(f"{ui.base_url}/#/jobs/{job_id}")
    page.reload()
    expect(page.locator("#job-id")).to_have_text(job_id)
    job = ui.api("GET", f"/jobs/{job_id}").json()
    expect(page.locator("#job-stats [data-stat='Results kept']")).to_contain_text(
        f"{job['retention_days']} days, until"
    )
    with page.expect_download() as download:
        page.click("#job-export-csv")
    lines = Path(download.value.path()).read_text().splitlines()
    items = _all_results(ui, job_id)
    assert lines[0] == "document,word,type,score,start,end"
    assert len(lines) == 1 + sum(len(i["entities"]) for i in items)
    # A version and a run by their links.
    versions = ui.api("GET", "/models").json()["versions"]
    if versions:
        page.goto(f"{ui.base_url}/#/models/{versions[-1]['version']}")
        page.reload()
        expect(page.locator("#model-title")).to_have_text(f"v{versions[-1]['version']}")
    runs = ui.api("GET", "/train").json()["runs"]
    if runs:
        page.goto(f"{ui.base_url}/#/runs/{runs[0]['run_id']}")
        page.reload()
        expect(page.locator("#run-id")).to_have_text(runs[0]["run_id"])
        expect(page.locator("#panel-train")).to_be_visible()
    close(page)


def test_9_and_10_type_labels_are_readable_and_counts_read_well(browser: Browser, ui: UiStack) -> None:
    page = open_ui(browser, ui)
    page.fill("#try-text", "Paris is lovely.")
    page.click("#try-run")
    expect(page.locator("#try-result")).to_be_visible()
    entities = ui.api("POST", "/predict/", json={"text": "Paris is lovely."}).json()["entities"]
    expected = "1 entity" if len(entities) == 1 else f"{len(entities)} entities"
    expect(page.locator("#try-meta")).to_contain_text(expected)
    expect(page.locator("#try-meta")).not_to_contain_text("1 entities")
    if entities:
        size = page.eval_on_selector(
            "#try-output .ent-label", "e => parseFloat(getComputedStyle(e).fontSize)"
        )
        assert size >= 11
    close(page)


def test_issue_15_a_job_rerun_with_version_b_links_to_its_diff(browser: Browser, ui: UiStack) -> None:
    _worker(ui)
    listed = ui.api("GET", "/models").json()
    if listed["active"] is None:
        pytest.skip("needs a registry version (published by the tests above)")
    job_id = _finished_job(ui, [{"id": "a", "text": SENTENCE}, {"id": "b", "text": "Paris is in France."}])
    page = open_ui(browser, ui, tab="models")
    page.select_option("#compare-b", str(listed["active"]))
    page.fill("#rerun-job", job_id)
    page.click("#rerun-submit")
    expect(page.locator("#diff-view")).to_be_visible()
    expect(page).to_have_url(re.compile(rf"#/diff/{job_id}/[0-9a-f-]+$"))
    expect(page.locator("#diff-summary")).to_contain_text("of 2 changed", timeout=90_000)
    expect(page.locator("#diff-summary")).not_to_contain_text("still going", timeout=90_000)
    rerun_id = page.url.rsplit("/", 1)[1]
    diff = ui.api("GET", f"/jobs/{job_id}/diff/{rerun_id}").json()
    expect(page.locator("#diff-items > li")).to_have_count(len(diff["items"]))
    # The link survives a reload.
    page.reload()
    expect(page.locator("#diff-view")).to_be_visible()
    expect(page.locator("#diff-summary")).to_contain_text(
        f"{diff['summary']['documents_changed']} documents of 2 changed".replace("1 documents", "1 document")
    )
    close(page)
