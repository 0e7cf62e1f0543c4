// Entry point: tabs (by URL hash), the API key box, the service's readiness, each panel's setup.

import { apiUrl, getKey, setKey } from "./api.js";
import { installEntityTooltip } from "./highlight.js";
import * as jobs from "./jobs.js";
import * as models from "./models.js";
import * as train from "./train.js";
import * as tryit from "./tryit.js";
import { $, $$ } from "./util.js";

const PANELS = { try: tryit, jobs, models, train };
const DEFAULT_TAB = "try";

function currentTab() {
  const name = location.hash.replace(/^#/, "");
  return name in PANELS ? name : DEFAULT_TAB;
}

function showTab() {
  const name = currentTab();
  for (const panel of $$("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
  for (const tab of $$("[data-tab]")) {
    const selected = tab.dataset.tab === name;
    tab.classList.toggle("active", selected);
    tab.setAttribute("aria-selected", String(selected));
  }
  PANELS[name].show?.();
}

function describeKey() {
  const key = getKey();
  $("#key-state").textContent = key ? `key …${key.slice(-4)} kept for this tab` : "no key";
  $("#api-key").value = "";
  $("#api-key").placeholder = key ? "saved; paste to replace" : "paste your key";
}

function initKeyBox() {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("#api-key").value.trim();
    if (value) setKey(value);
    describeKey();
    PANELS[currentTab()].show?.();
  });
  $("#key-forget").addEventListener("click", () => {
    setKey("");
    describeKey();
  });
  describeKey();
}

async function checkReadiness() {
  const badge = $("#service-state");
  try {
    const response = await fetch(apiUrl("/readyz"));
    const body = await response.json().catch(() => ({}));
    const failing = Object.entries(body.checks || {})
      .filter(([, value]) => value !== "ok")
      .map(([name, value]) => `${name}: ${value}`);
    badge.textContent = response.ok ? "ready" : "not ready";
    badge.className = `service-state ${response.ok ? "ok" : "bad"}`;
    badge.title = response.ok ? "All checks pass (/readyz)" : failing.join("\n") || `HTTP ${response.status}`;
  } catch (error) {
    badge.textContent = "unreachable";
    badge.className = "service-state bad";
    badge.title = String(error);
  }
}

function init() {
  for (const panel of Object.values(PANELS)) panel.init();
  initKeyBox();
  installEntityTooltip();
  window.addEventListener("hashchange", showTab);
  // A link to a model version (from a training run) opens that version on the Models tab.
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-version]");
    if (link) setTimeout(() => models.openVersion(Number(link.dataset.version)), 0);
  });
  showTab();
  checkReadiness();
  setInterval(checkReadiness, 15_000);
  document.body.dataset.ready = "true";
}

init();
