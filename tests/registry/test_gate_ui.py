"""The Models tab shows the gate's decision and both scores (headless Chromium against a real gateway)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright
from sqlalchemy.orm import Session

from shared.core.db import make_engine
from shared.registry import gate
from shared.registry import service as registry
from shared.registry.publish import Candidate, publish_version
from tests.support.processes import start_gateway
from tests.support.services import migrated_database

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")


def _score(f1: float, per: float, loc: float) -> dict:
    per_type = {
        "PER": {"precision": per, "recall": per, "f1": per, "support": 20},
        "LOC": {"precision": loc, "recall": loc, "f1": loc, "support": 12},
    }
    return {"precision": f1, "recall": f1, "f1": f1, "per_type": per_type, "gate_hash": "h", "sentences": 40}


@pytest.fixture
def registry_db() -> Iterator[str]:
    with migrated_database() as url:
        yield url


def test_models_tab_shows_the_gate_decision_and_both_scores(
    service_env: dict[str, str], registry_db: str, tiny_model_dir: Path, tmp_path: Path, log_dir: Path
) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    engine = make_engine(registry_db)
    candidate = Candidate(
        model_dir=tiny_model_dir, base_model="b", data_hash="d" * 64, data_ref={}, params={},
        metrics={}, labels=["O", "B-PER", "I-PER"], val_f1=1.0, test_f1=None,
    )  # fmt: skip
    with Session(engine, expire_on_commit=False) as session:
        active = publish_version(session=session, artifacts_dir=tmp_path, candidate=candidate)
        rejected = publish_version(session=session, artifacts_dir=tmp_path, candidate=candidate)
        decision = gate.Decision(
            gate.REJECTED,
            "gate F1 0.4100 < 0.7300 (active version 1, 40 gate sentences)",
            _score(0.41, 0.95, 0.0),
            {**_score(0.73, 0.80, 0.66), "version": active.version},
        )
        gate.record(candidate=rejected, decision=decision)
        registry.activate(session=session, version=active.version)
        session.commit()
    engine.dispose()
    env = {**service_env, "NER_DATABASE_URL": registry_db, "NER_SERVE_PREDICT": "false"}
    gateway, base_url = start_gateway(env, log_dir)
    try:
        listed = httpx.get(f"{base_url}/models", timeout=10).json()
        shown = next(v for v in listed["versions"] if v["version"] == rejected.version)["gate"]
        assert shown["decision"] == "rejected" and shown["active"]["version"] == active.version
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base_url}/#models")
            row = page.locator(f"#models-table tbody tr[data-version='{rejected.version}']")
            expect(row.locator("[data-gate]")).to_have_text("gate: rejected")
            expect(row.locator("[data-gate]")).to_have_attribute("title", decision.reason)
            row.click()
            expect(page.locator("#model-title")).to_have_text(f"v{rejected.version}")
            expect(page.locator("#model-stats [data-stat='Gate F1']")).to_have_text(
                f"0.410 (this) vs 0.730 (v{active.version})"
            )
            expect(page.locator("#model-stats [data-stat='Gate']")).to_contain_text(decision.reason)
            # Per type, on the gate set: this version's LOC collapsed, the active one's did not.
            page.select_option("#model-types-split", label=f"gate set: active version {active.version}")
            expect(page.locator("#model-types tbody tr[data-type=LOC] td").nth(3)).to_have_text("0.660")
            page.select_option("#model-types-split", label="gate set: this version")
            expect(page.locator("#model-types tbody tr[data-type=LOC] td").nth(3)).to_have_text("0.000")
            page.screenshot(path=log_dir / "ui-models-gate.png", full_page=True)

            # Issue 15: two versions side by side, per type, on the gate set.
            page.select_option("#compare-a", str(active.version))
            page.select_option("#compare-b", str(rejected.version))
            loc = page.locator("#compare-table tbody tr[data-type=LOC] td")
            expect(loc.nth(1)).to_have_text("0.660")
            expect(loc.nth(2)).to_have_text("0.000")
            expect(loc.nth(3)).to_have_text("−0.660")
            expect(page.locator("#compare-table tbody tr[data-type=PER] td").nth(3)).to_have_text("+0.150")
            expect(page.locator("#compare-note")).to_have_text("Both scored on the gate set.")
            # Shadow the candidate from the page (auth is off here: everyone is admin).
            page.on("dialog", lambda dialog: dialog.accept())
            expect(page.locator("#model-title")).to_have_text(f"v{rejected.version}")
            page.fill("#shadow-rate", "0.5")
            page.click("#shadow-start")
            expect(page.locator("#shadow-state")).to_contain_text("sampling 50%")
            shadow = httpx.get(f"{base_url}/models/{rejected.version}/shadow", timeout=10).json()
            assert shadow["enabled"] is True and shadow["sample_rate"] == 0.5
            page.click("#shadow-stop")
            expect(page.locator("#shadow-state")).to_have_text("not shadowed")
            assert (
                httpx.get(f"{base_url}/models/{rejected.version}/shadow", timeout=10).json()["enabled"]
                is False
            )
            browser.close()
        assert not errors, errors
    finally:
        gateway.stop()
