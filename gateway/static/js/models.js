// "Models": the registry's versions, one version's training curves and per-type scores, activation.

import { api, itemsOf } from "./api.js";
import { epochCharts } from "./chart.js";
import { colourFor } from "./highlight.js";
import { $, badge, el, fillStats, fmtDate, fmtScore, pick, shortModelName, showError } from "./util.js";

const state = { versions: [], selected: null };

const isActive = (v) => v.status === "active" || v.active === true || v.is_active === true;

function activeVersion() {
  return state.versions.find(isActive)?.version ?? null;
}

function dataLabel(v) {
  const ref = pick(v, "data_ref", "data");
  let text = "";
  if (typeof ref === "string") text = ref;
  else if (ref && typeof ref === "object") {
    const train = pick(ref, "train", "dataset", "path", "ref");
    text = typeof train === "string" ? train.split("/").slice(-2).join("/") : JSON.stringify(ref);
  }
  const hash = pick(v, "data_hash");
  return el("span", { title: [JSON.stringify(ref ?? ""), hash].filter(Boolean).join("\n") }, text || "–", hash ? el("span", { class: "muted" }, ` #${String(hash).slice(0, 8)}`) : null);
}

function baseLabel(v) {
  const base = pick(v, "base_model") || "";
  return el("span", { title: base }, shortModelName(base));
}

// "B-PER", "I-PER", ... name the types PER, ...
function entityTypes(labels) {
  return [...new Set((labels || []).filter((l) => l !== "O").map((l) => l.replace(/^[BIES]-/, "")))].sort();
}

// The quality gate's decision (promoted, rejected, held) as a small badge whose title says why.
function gateBadge(v) {
  const gate = v.gate;
  if (!gate) return null;
  return el(
    "span",
    { class: `badge gate-${gate.decision}`, title: gate.reason || "", dataset: { gate: gate.decision } },
    `gate: ${gate.decision}`,
  );
}

// "0.871 (this) vs 0.874 (v3)": both scores the gate compared on the operator's gate set.
function gateScores(gate) {
  if (!gate?.candidate) return "–";
  const ours = `${fmtScore(gate.candidate.f1)} (this)`;
  return gate.active ? `${ours} vs ${fmtScore(gate.active.f1)} (v${gate.active.version})` : ours;
}

function versionRow(v) {
  const active = isActive(v);
  const current = activeVersion();
  const status = el("span", {});
  badge(status, v.status || (active ? "active" : ""));
  const gate = gateBadge(v);
  let action = null;
  if (!active) {
    const rollBack = current !== null && v.version < current;
    action = el(
      "button",
      {
        type: "button",
        class: rollBack ? "secondary small" : "small",
        dataset: { action: "activate" },
        onclick: (event) => {
          event.stopPropagation();
          activate(v.version, rollBack);
        },
      },
      rollBack ? "Roll back to this" : "Activate",
    );
  }
  return el(
    "tr",
    {
      dataset: { version: v.version, active: active ? "true" : "false" },
      class: [active ? "active-row" : "", v.version === state.selected ? "selected" : ""].join(" ").trim(),
      onclick: () => openVersion(v.version),
    },
    el("td", {}, el("b", {}, `v${v.version}`), active ? el("span", { class: "active-marker", title: "active: answering /predict/ and new jobs" }, " ★ active") : null),
    el("td", {}, status, gate ? " " : null, gate),
    el("td", {}, baseLabel(v)),
    el("td", {}, dataLabel(v)),
    el("td", {}, fmtDate(pick(v, "created_at"))),
    el("td", { class: "num" }, fmtScore(pick(v, "val_f1", "validation_f1"))),
    el("td", { class: "num" }, fmtScore(pick(v, "test_f1"))),
    el("td", { class: "actions" }, action),
  );
}

export async function refresh() {
  const errorBox = $("#models-error");
  try {
    const page = await api("/models");
    state.versions = itemsOf(page).sort((a, b) => b.version - a.version);
    $("#models-table tbody").replaceChildren(...state.versions.map(versionRow));
    $("#models-empty").hidden = state.versions.length > 0;
    showError(errorBox, null);
    if (state.selected === null && state.versions.length) openVersion(activeVersion() ?? state.versions[0].version);
  } catch (error) {
    showError(errorBox, error);
  }
}

async function activate(version, rollBack) {
  const verb = rollBack ? `Roll back to version ${version}` : `Activate version ${version}`;
  if (!window.confirm(`${verb}? /predict/ and new jobs switch to it within seconds.`)) return;
  try {
    await api(`/models/${encodeURIComponent(version)}/activate`, { method: "POST" });
    showError($("#models-error"), null);
    await refresh();
    openVersion(version);
  } catch (error) {
    showError($("#models-error"), error);
  }
}

/** Table rows (type, precision, recall, F1, support) of a report's per-type scores. */
export function scoreRows(report) {
  return Object.entries(report.per_type || {})
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([type, scores]) => {
      const name = el("span", { class: "type-chip" }, type);
      name.style.setProperty("--ent-colour", colourFor(type));
      return el(
        "tr",
        { dataset: { type } },
        el("td", {}, name),
        el("td", { class: "num" }, fmtScore(scores.precision)),
        el("td", { class: "num" }, fmtScore(scores.recall)),
        el("td", { class: "num" }, fmtScore(scores.f1 ?? scores["f1-score"])),
        el("td", { class: "num" }, scores.support ?? "–"),
      );
    });
}

// The trainer stores {validation: {precision, recall, f1, per_type: {TYPE: {...}}}, test: {...}}
// (the training loop's scores) and engine: {test: {sentences: report, documents: report}, ...}
// (the same splits through the engine, as users get them); the gate adds its two scores.
const SPLITS = ["test", "validation", "val"];
const ENGINE_MODES = { sentences: "one sentence per text", documents: "whole documents" };

function reportsOf(metrics, gate) {
  const out = {};
  for (const split of SPLITS) {
    const report = metrics?.[split];
    if (report && typeof report === "object" && report.per_type) out[split] = report;
  }
  for (const split of SPLITS) {
    for (const [mode, how] of Object.entries(ENGINE_MODES)) {
      const report = metrics?.engine?.[split]?.[mode];
      if (report?.per_type) out[`${split} through the engine, ${how}`] = report;
    }
  }
  if (gate?.candidate) out["gate set: this version"] = gate.candidate;
  if (gate?.active) out[`gate set: active version ${gate.active.version}`] = gate.active;
  if (!Object.keys(out).length && metrics?.per_type) out.overall = metrics;
  return out;
}

function renderPerType(metrics, gate) {
  const reports = reportsOf(metrics || {}, gate);
  const select = $("#model-types-split");
  const splits = Object.keys(reports);
  const previous = select.value;
  select.replaceChildren(...splits.map((split) => el("option", { value: split }, split)));
  select.hidden = splits.length === 0;
  if (splits.includes(previous)) select.value = previous;
  const draw = () => {
    const report = reports[select.value];
    const tbody = $("#model-types tbody");
    if (!report) {
      $("#model-overall").textContent = "";
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no per-type scores recorded")));
      return;
    }
    $("#model-overall").textContent = `overall: precision ${fmtScore(report.precision)} · recall ${fmtScore(report.recall)} · F1 ${fmtScore(report.f1)}`;
    tbody.replaceChildren(...scoreRows(report));
  };
  select.onchange = draw;
  draw();
}

async function epochsOf(detail) {
  if (Array.isArray(detail.epochs)) return detail.epochs;
  if (Array.isArray(detail.metrics?.epochs)) return detail.metrics.epochs;
  const runId = pick(detail, "training_run_id", "run_id");
  if (!runId) return [];
  const run = await api(`/train/${encodeURIComponent(runId)}`);
  return run.epochs || [];
}

export async function openVersion(version) {
  state.selected = version;
  for (const row of document.querySelectorAll("#models-table tbody tr")) {
    row.classList.toggle("selected", Number(row.dataset.version) === version);
  }
  const errorBox = $("#model-error");
  $("#model-view").hidden = false;
  $("#model-title").textContent = `v${version}`;
  try {
    const detail = await api(`/models/${encodeURIComponent(version)}`);
    if (state.selected !== version) return;
    badge($("#model-status"), detail.status || (isActive(detail) ? "active" : ""));
    fillStats($("#model-stats"), [
      ["Base model", baseLabel(detail)],
      ["Created", fmtDate(pick(detail, "created_at"))],
      ["Activated", fmtDate(pick(detail, "activated_at"))],
      ["Validation F1", fmtScore(pick(detail, "val_f1", "validation_f1"))],
      ["Test F1", fmtScore(pick(detail, "test_f1"))],
      ["Gate", detail.gate ? el("span", {}, gateBadge(detail), " ", detail.gate.reason) : "not judged"],
      ["Gate F1", gateScores(detail.gate)],
      ["Entity types", entityTypes(pick(detail, "labels")).join(" ") || "–"],
      ["Training run", pick(detail, "training_run_id", "run_id") || "–"],
    ]);
    $("#model-params").textContent = JSON.stringify(
      { params: detail.params, data: pick(detail, "data_ref", "data"), data_hash: detail.data_hash, path: detail.path },
      null,
      2,
    );
    renderPerType(detail.metrics, detail.gate);
    showError(errorBox, null);
    const charts = $("#model-charts");
    charts.replaceChildren(el("span", { class: "muted" }, "loading the training curves…"));
    let epochs = [];
    try {
      epochs = await epochsOf(detail);
    } catch (error) {
      showError(errorBox, error);
    }
    if (state.selected !== version) return;
    charts.replaceChildren(
      ...(epochs.length ? epochCharts(epochs) : [el("span", { class: "muted" }, "no per-epoch metrics for this version")]),
    );
  } catch (error) {
    showError(errorBox, error);
  }
}

export function init() {
  $("#models-refresh").addEventListener("click", refresh);
}

export function show() {
  refresh();
}
