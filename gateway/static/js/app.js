// Entry point: routes (#/jobs/<id>, #/runs/<id>, #/models/<v>, ...), the tab list, the API key box,
// the service's readiness, each panel's setup.

import { api, apiUrl, getKey, setKey } from "./api.js";
import { installEntityTooltip } from "./highlight.js";
import * as jobs from "./jobs.js";
import * as models from "./models.js";
import * as train from "./train.js";
import * as tryit from "./tryit.js";
import { $, $$, showError, toast } from "./util.js";

const PANELS = { try: tryit, jobs, models, train };
const DEFAULT_TAB = "try";
// Which tab each route opens: runs live on the Train tab, diffs on the Models tab.
const ROUTE_TABS = { try: "try", jobs: "jobs", models: "models", train: "train", runs: "train", diff: "models" };

/** The route of the address: "#/jobs/<id>" -> {tab: "jobs", name: "jobs", args: [id]}; "#jobs" too. */
function parseRoute() {
  const parts = location.hash
    .replace(/^#\/?/, "")
    .split("/")
    .filter(Boolean)
    .map((part) => decodeURIComponent(part));
  const name = parts[0] in ROUTE_TABS ? parts[0] : DEFAULT_TAB;
  return { tab: ROUTE_TABS[name], name, args: parts[0] in ROUTE_TABS ? parts.slice(1) : [] };
}

function selectTab(name) {
  for (const panel of $$("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
  for (const tab of $$("[data-tab]")) {
    const selected = tab.dataset.tab === name;
    tab.classList.toggle("active", selected);
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1; // one tab stop for the tab list; arrow keys move inside it
  }
}

function route() {
  const { tab, name, args } = parseRoute();
  selectTab(tab);
  PANELS[tab].show?.();
  if (name === "jobs" && args[0]) jobs.openJob(args[0]);
  if (name === "runs" && args[0]) train.openRun(args[0]);
  if (name === "models" && args[0] && /^\d+$/.test(args[0])) models.openVersion(Number(args[0]));
  if (name === "diff" && args[0] && args[1]) models.openDiff(args[0], args[1]);
}

// WAI-ARIA tabs: Left/Right (and Home/End) move between tabs and open the one focused.
function initTabs() {
  const tabs = $$("[data-tab]");
  $("[role=tablist]").addEventListener("keydown", (event) => {
    const index = tabs.indexOf(document.activeElement);
    if (index < 0) return;
    let next = null;
    if (event.key === "ArrowRight") next = (index + 1) % tabs.length;
    else if (event.key === "ArrowLeft") next = (index - 1 + tabs.length) % tabs.length;
    else if (event.key === "Home") next = 0;
    else if (event.key === "End") next = tabs.length - 1;
    else if (event.key === " ") next = index;
    if (next === null) return;
    event.preventDefault();
    tabs[next].focus();
    location.hash = tabs[next].getAttribute("href");
  });
}

function describeKey(info) {
  const key = getKey();
  const state = $("#key-state");
  state.classList.remove("bad");
  if (!key) state.textContent = "no key saved";
  else if (info) state.textContent = `${info.name || "unnamed key"} · ${info.scopes.join(", ")}`;
  else state.textContent = `key …${key.slice(-4)} saved for this tab`;
  $("#api-key").value = "";
  $("#api-key").placeholder = key ? "saved; paste to replace" : "paste your key";
}

// Errors shown before a key change were about the old key: they go with it.
function clearErrors() {
  for (const box of $$(".error[role=alert]")) showError(box, null);
}

async function whoAmI(key) {
  return api("/keys/me", { headers: key ? { "X-API-Key": key } : {} });
}

function initKeyBox() {
  $("#key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = $("#api-key").value.trim();
    if (!value) {
      $("#key-state").textContent = "Paste a key first.";
      return;
    }
    const previous = getKey();
    setKey(value); // api() sends the stored key: try the new one, put the old one back if refused
    try {
      const info = await whoAmI(value);
      describeKey(info);
      clearErrors();
      toast(`Key saved: ${info.name || "unnamed key"} (${info.scopes.join(", ")})`);
      PANELS[parseRoute().tab].show?.();
    } catch (error) {
      setKey(previous);
      const state = $("#key-state");
      state.textContent =
        error.status === 401 ? "That key is not valid or was revoked; it was not saved." : `The key could not be checked: ${error.message}`;
      state.classList.add("bad");
    }
  });
  $("#key-forget").addEventListener("click", () => {
    setKey("");
    describeKey();
    toast("Key forgotten");
  });
  describeKey();
  if (getKey()) whoAmI().then(describeKey, () => describeKey());
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
    badge.title = response.ok ? "All checks pass" : failing.join("\n") || `HTTP ${response.status}`;
  } catch (error) {
    badge.textContent = "unreachable";
    badge.className = "service-state bad";
    badge.title = String(error);
  }
}

// A table wider than its box scrolls inside it: that box then takes keyboard focus (arrow keys
// scroll it) and is named for screen readers; a box that fits stays out of the tab order.
function watchScrollableTables() {
  const check = (wrap) => {
    const scrolls = wrap.scrollWidth > wrap.clientWidth + 1;
    if (scrolls) {
      const heading = wrap.closest(".card, details, div")?.querySelector("h2, h3, summary")?.textContent?.trim();
      wrap.tabIndex = 0;
      wrap.setAttribute("role", "region");
      wrap.setAttribute("aria-label", `${heading || "Table"} (scrolls sideways)`);
    } else if (wrap.hasAttribute("tabindex")) {
      wrap.removeAttribute("tabindex");
      wrap.removeAttribute("role");
      wrap.removeAttribute("aria-label");
    }
  };
  const observer = new ResizeObserver((entries) => {
    for (const entry of entries) check(entry.target.closest(".table-wrap"));
  });
  for (const wrap of $$(".table-wrap")) {
    observer.observe(wrap);
    if (wrap.firstElementChild) observer.observe(wrap.firstElementChild);
  }
}

function init() {
  for (const panel of Object.values(PANELS)) panel.init();
  watchScrollableTables();
  initKeyBox();
  initTabs();
  installEntityTooltip();
  window.addEventListener("hashchange", route);
  window.addEventListener("popstate", route);
  route();
  checkReadiness();
  setInterval(checkReadiness, 15_000);
  document.body.dataset.ready = "true";
}

init();
