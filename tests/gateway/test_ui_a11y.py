"""The web UI checked by a tool: axe-core on every tab at 1280 px and 390 px, no sideways page scroll.

axe-core comes bundled with ``axe-playwright-python`` (no network); Chromium is Debian's
(/usr/bin/chromium). Each tab is checked with content in it (a highlighted text, an open job, an
open version, an open run), and a screenshot of each tab at both widths is kept in test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, expect, sync_playwright

from shared.core import migrate
from shared.core.config import get_settings
from tests.support.processes import ServiceProcess, start_gateway, start_worker, wait_until
from tests.support.services import RedisServer, create_database, drop_database

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
SENTENCE = "Google was founded by Larry Page and Sergey Brin in California."
WIDTHS = (1280, 390)
TABS = ("try", "jobs", "models", "train")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def stack(
    service_env: dict[str, str], tiny_model_dir: Path, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Gateway and worker over a database and Redis of their own, with a job, a version and a run."""
    db_url = create_database()
    migrate.upgrade(db_url)
    redis = RedisServer(tmp_path_factory.mktemp("a11y-redis"))
    redis.start()
    state = tmp_path_factory.mktemp("a11y-state")
    shutil.copytree(tiny_model_dir, state / "data" / "model")
    env = {
        **service_env,
        "NER_DATABASE_URL": db_url,
        "NER_REDIS_URL": redis.url,
        "NER_STATE_DIR": str(state),
        "NER_ARTIFACTS_DIR": str(state / "models"),
        "NER_DATA_ROOTS": f"{state / 'data'},{get_settings().conll_dir}",
        "NER_MODEL": str(tiny_model_dir),
        "NER_AUTH": "off",
    }
    processes: list[ServiceProcess] = []
    try:
        gateway, base = start_gateway(env, log_dir)
        processes.append(gateway)
        processes.append(start_worker(env, log_dir))
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, 120, "ready", gateway)
        version = httpx.post(
            f"{base}/models/import",
            json={"source": str(state / "data" / "model"), "activate": True},
            timeout=120,
        ).json()["version"]
        job = httpx.post(
            f"{base}/jobs",
            json={"documents": [{"id": f"d{i}", "text": SENTENCE} for i in range(3)]},
            timeout=30,
        ).json()["job_id"]
        wait_until(
            lambda: httpx.get(f"{base}/jobs/{job}", timeout=10).json()["status"] == "succeeded", 90, "the job"
        )
        run = httpx.post(
            f"{base}/train", json={"data": {"train": str(get_settings().conll_dir / "eng.train")}}, timeout=30
        ).json()["run_id"]
        yield {"base": base, "job": job, "version": str(version), "run": run}
    finally:
        for process in reversed(processes):
            if process.name != "gateway":
                process.kill(signal.SIGQUIT)
            process.stop()
        redis.stop()
        drop_database(db_url)


def _open(page, base: str, route: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{base}/#/{route}")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.wait_for_load_state("networkidle")


def test_every_tab_passes_axe_and_fits_a_phone(
    browser: Browser, stack: dict[str, str], log_dir: Path
) -> None:
    axe = Axe()
    routes = {
        "try": "try",
        "jobs": f"jobs/{stack['job']}",
        "models": f"models/{stack['version']}",
        "train": f"runs/{stack['run']}",
    }
    problems: list[str] = []
    for width in WIDTHS:
        context = browser.new_context(viewport={"width": width, "height": 900}, reduced_motion="reduce")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error, seen=errors: seen.append(str(error)))
        for tab in TABS:
            _open(page, stack["base"], routes[tab])
            expect(page.locator(f"#panel-{tab}")).to_be_visible()
            if tab == "try":
                page.fill("#try-text", SENTENCE)
                page.click("#try-run")
                expect(page.locator("#try-output mark.ent")).to_have_count(4)
                page.click("#try-table-box summary")
            if tab == "jobs":
                expect(page.locator("#results-list > li")).to_have_count(3)
            if tab == "models":
                expect(page.locator("#model-title")).to_have_text(f"v{stack['version']}")
            if tab == "train":
                expect(page.locator("#run-id")).to_have_text(stack["run"])
            page.wait_for_load_state("networkidle")
            results = axe.run(page)
            for violation in results.response["violations"]:
                if violation["impact"] in ("serious", "critical"):
                    targets = [node["target"] for node in violation["nodes"]][:5]
                    problems.append(f"{width}px {tab}: {violation['id']} ({violation['impact']}) {targets}")
            scroll = page.evaluate("() => document.documentElement.scrollWidth")
            if width == 390 and scroll > width:
                problems.append(f"{width}px {tab}: the page scrolls sideways ({scroll} px wide)")
            page.screenshot(path=log_dir / f"ui-{tab}-{width}.png", full_page=True)
        context.close()
        assert not errors, f"JavaScript errors: {errors}"
    assert not problems, "\n".join(problems)
