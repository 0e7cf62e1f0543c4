// "Models": the registry's versions, one version's training curves and per-type scores, activation.

import { api, itemsOf } from "./api.js";
import { epochCharts } from "./chart.js";
import { colourFor, describeType } from "./highlight.js";
import {
  $,
  activatableRow,
  badge,
  breakable,
  cell,
  confirmAction,
  el,
  fillStats,
  fmtDate,
  fmtNumber,
  keepingRowFocus,
  fmtPercent,
  fmtScore,
  makeSortable,
  pick,
  plural,
  setBusy,
  setRoute,
  shortModelName,
  showError,
  toast,
} from "./util.js";

const state = { versions: [], selected: null, details: new Map() };

const isActive = (v) => v.status === "active" || v.active === true || v.is_active === true;

function activeVersion() {
  return state.versions.find(isActive)?.version ?? null;
}

function dataLabel(v) {
  const ref = pick(v, "data_ref", "data");
  let text = "";
  if (typeof ref === "string") text = ref;
  else if (ref && typeof ref.imported_from === "string") text = `imported: ${shortModelName(ref.imported_from)}`;
  else if (ref && typeof ref.default_model === "string") text = "the shipped default model";
  else if (ref && typeof ref === "object") {
    const train = pick(ref, "train", "dataset", "path", "ref");
    text = typeof train === "string" ? train.split("/").slice(-2).join("/") : JSON.stringify(ref);
  }
  const hash = pick(v, "data_hash");
  return el("span", { title: [JSON.stringify(ref ?? ""), hash].filter(Boolean).join("\n") }, text || "–", hash ? el("span", { class: "muted" }, ` #${String(hash).slice(0, 8)}`) : null);
}

function baseLabel(v) {
  const base = pick(v, "base_model") || "";
  return el("span", { title: base, class: "base-name" }, ...breakable(shortModelName(base)));
}

// "B-PER", "I-PER", ... name the types PER, ...
function entityTypes(labels) {
  return [...new Set((labels || []).filter((l) => l !== "O").map((l) => l.replace(/^[BIES]-/, "")))].sort();
}

// Each type in its colour, what it means on hover (and for screen readers).
function typeChips(types) {
  if (!types.length) return "–";
  return el(
    "span",
    { class: "legend" },
    ...types.map((type) => {
      const chip = el("span", { class: "type-chip", title: describeType(type) }, type);
      chip.style.setProperty("--ent-colour", colourFor(type));
      return chip;
    }),
  );
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
        "aria-label": `${rollBack ? "Roll back to" : "Activate"} version ${v.version}`,
        onclick: (event) => {
          event.stopPropagation();
          activate(v.version, rollBack);
        },
      },
      rollBack ? "Roll back to this" : "Activate",
    );
  }
  return activatableRow(
    {
      dataset: { version: v.version, active: active ? "true" : "false" },
      class: [active ? "active-row" : "", v.version === state.selected ? "selected" : ""].join(" ").trim(),
    },
    () => openVersion(v.version),
    cell("Version", {}, el("b", {}, `v${v.version}`), active ? el("span", { class: "active-marker", title: "active: answering /predict/ and new jobs" }, " ★ active") : null),
    cell("Status", {}, status, gate ? " " : null, gate),
    cell("Base model", {}, baseLabel(v)),
    cell("Data", {}, dataLabel(v)),
    cell("Created", { class: "date" }, fmtDate(pick(v, "created_at"))),
    cell("Validation F1", { class: "num" }, fmtScore(pick(v, "val_f1", "validation_f1"))),
    cell("Test F1", { class: "num" }, fmtScore(pick(v, "test_f1"))),
    cell("Actions", { class: "actions" }, action),
  );
}

export async function refresh() {
  const errorBox = $("#models-error");
  try {
    const page = await api("/models");
    state.versions = itemsOf(page).sort((a, b) => b.version - a.version);
    const tbody = $("#models-table tbody");
    keepingRowFocus(tbody, () => tbody.replaceChildren(...state.versions.map(versionRow)));
    $("#models-empty").hidden = state.versions.length > 0;
    showError(errorBox, null);
    fillCompareChoices();
    if (state.selected === null && state.versions.length) openVersion(activeVersion() ?? state.versions[0].version, { route: false });
  } catch (error) {
    $("#models-table tbody").replaceChildren();
    showError(errorBox, error);
  }
}

async function activate(version, rollBack) {
  const verb = rollBack ? `Roll back to version ${version}` : `Activate version ${version}`;
  if (!confirmAction(`${verb}? Try it and new jobs switch to it within seconds.`)) return;
  try {
    await api(`/models/${encodeURIComponent(version)}/activate`, { method: "POST" });
    showError($("#models-error"), null);
    toast(rollBack ? `Rolled back to version ${version}` : `Version ${version} is now active`);
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
      const name = el("span", { class: "type-chip", title: describeType(type) }, type);
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

export async function openVersion(version, { route = true } = {}) {
  if (route) setRoute(`#/models/${version}`);
  $("#model-link").href = `#/models/${version}`;
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
    state.details.set(version, detail);
    // The active version answers live traffic itself: only another version can shadow it.
    $("#shadow-form").hidden = isActive(detail);
    loadShadow(version);
    badge($("#model-status"), detail.status || (isActive(detail) ? "active" : ""));
    fillStats($("#model-stats"), [
      ["Base model", baseLabel(detail)],
      ["Created", fmtDate(pick(detail, "created_at"))],
      ["Activated", fmtDate(pick(detail, "activated_at"))],
      ["Validation F1", fmtScore(pick(detail, "val_f1", "validation_f1"))],
      ["Test F1", fmtScore(pick(detail, "test_f1"))],
      ["Gate", detail.gate ? el("span", {}, gateBadge(detail), " ", detail.gate.reason) : "not judged"],
      ["Gate F1", gateScores(detail.gate)],
      ["Entity types", typeChips(entityTypes(pick(detail, "labels")))],
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
    const why = detail.data_ref?.imported_from ? "imported, not trained here" : "not trained here";
    charts.replaceChildren(
      ...(epochs.length ? epochCharts(epochs) : [el("span", { class: "muted" }, `No training curves: this version was ${why}.`)]),
    );
  } catch (error) {
    $("#model-stats").replaceChildren();
    showError(errorBox, error);
  }
}

// ---- import ------------------------------------------------------------------------------------

async function importModel(event) {
  event.preventDefault();
  const source = $("#import-source").value.trim();
  const errorBox = $("#import-error");
  if (!source) return showError(errorBox, new Error("Give a model folder or a Hugging Face id (owner/name) first."));
  const activateNow = $("#import-activate").checked;
  if (activateNow && !confirmAction(`Import ${source} and make it the active version?`)) return;
  showError(errorBox, null);
  setBusy($("#import-submit"), $("#import-busy"), true);
  try {
    const created = await api("/models/import", { method: "POST", json: { source, activate: activateNow } });
    toast(`Imported ${source} as version ${created.version}${activateNow ? " (active)" : ""}`);
    $("#import-source").value = "";
    await refresh();
    openVersion(created.version);
  } catch (error) {
    showError(errorBox, error);
  } finally {
    setBusy($("#import-submit"), $("#import-busy"), false);
    $("#import-submit").disabled = !$("#import-source").value.trim();
  }
}

// ---- shadow traffic (issue 15) ----------------------------------------------------------------

function rate(value) {
  return value === null || value === undefined ? "–" : fmtScore(value);
}

function renderShadow(view) {
  const box = $("#shadow-view");
  $("#shadow-state").textContent = view.enabled
    ? `sampling ${fmtPercent(100 * view.sample_rate)} of live texts since ${fmtDate(view.started_at)}`
    : "not shadowed";
  $("#shadow-stop").hidden = !view.enabled;
  const comparison = (view.comparisons || [])[0];
  if (!comparison) {
    box.replaceChildren(el("p", { class: "muted" }, view.enabled ? "No live text compared yet." : "Shadow this version to compare it with the active one on live texts."));
    return;
  }
  const perType = el(
    "table",
    { class: "grid compact", id: "shadow-types" },
    el("thead", {}, el("tr", {}, ...["Type", "Added", "Removed", "Matched", "Precision", "Recall"].map((h, i) => el("th", { scope: "col", class: i ? "num" : null }, h)))),
    el(
      "tbody",
      {},
      ...comparison.per_type.map((t) =>
        el(
          "tr",
          { dataset: { type: t.type } },
          el("td", {}, t.type),
          el("td", { class: "num" }, fmtNumber(t.added)),
          el("td", { class: "num" }, fmtNumber(t.removed)),
          el("td", { class: "num" }, fmtNumber(t.matched)),
          el("td", { class: "num" }, rate(t.precision)),
          el("td", { class: "num" }, rate(t.recall)),
        ),
      ),
    ),
  );
  box.replaceChildren(
    el(
      "p",
      { id: "shadow-summary" },
      `Against version ${comparison.active_version}: ${plural(comparison.texts, "text")} compared, `,
      `${fmtNumber(comparison.texts_disagreeing)} answered differently; agreement F1 `,
      el("b", { id: "shadow-f1" }, rate(comparison.f1)),
      ` (precision ${rate(comparison.precision)}, recall ${rate(comparison.recall)}).`,
    ),
    el("div", { class: "table-wrap" }, perType),
    view.samples?.length
      ? el(
          "details",
          {},
          el("summary", {}, `${plural(view.samples.length, "disagreement")} (newest first)`),
          el(
            "ol",
            { class: "results" },
            ...view.samples.slice(0, 20).map((sample) =>
              el(
                "li",
                {},
                el("div", { class: "muted small" }, `${fmtDate(sample.created_at)} · kept until ${fmtDate(sample.expires_at)}`),
                el("div", {}, sample.excerpt ?? "(text not stored)"),
                el("div", { class: "small" }, "active: ", sample.active_entities.map((e) => `${e.word ?? "?"} (${e.entity_group})`).join(", ") || "none"),
                el("div", { class: "small" }, "shadow: ", sample.shadow_entities.map((e) => `${e.word ?? "?"} (${e.entity_group})`).join(", ") || "none"),
              ),
            ),
          ),
        )
      : null,
  );
}

async function loadShadow(version) {
  const errorBox = $("#shadow-error");
  try {
    const view = await api(`/models/${encodeURIComponent(version)}/shadow`);
    if (state.selected !== version) return;
    renderShadow(view);
    showError(errorBox, null);
  } catch (error) {
    $("#shadow-view").replaceChildren();
    $("#shadow-state").textContent = "";
    if (error.status === 404 || error.status === 405) return; // no shadow support on this service
    showError(errorBox, error);
  }
}

async function setShadow(sampleRate) {
  const version = state.selected;
  if (version === null) return;
  const errorBox = $("#shadow-error");
  if (!(sampleRate >= 0 && sampleRate <= 1)) return showError(errorBox, new Error("Share of live texts: give a number from 0 to 1, e.g. 0.1 for 10 %."));
  try {
    const view =
      sampleRate > 0
        ? await api(`/models/${encodeURIComponent(version)}/shadow`, { method: "POST", json: { sample_rate: sampleRate } })
        : await api(`/models/${encodeURIComponent(version)}/shadow`, { method: "DELETE" });
    showError(errorBox, null);
    toast(sampleRate > 0 ? `Version ${version} is shadowed on ${fmtPercent(100 * sampleRate)} of live texts` : `Shadowing of version ${version} stopped`);
    if (view && typeof view === "object" && "enabled" in view) renderShadow(view);
    else loadShadow(version);
  } catch (error) {
    showError(errorBox, error);
  }
}

// ---- compare two versions and a re-run's diff (issue 15) --------------------------------------

function fillCompareChoices() {
  for (const [id, fallback] of [["#compare-a", 1], ["#compare-b", 0]]) {
    const select = $(id);
    const previous = select.value;
    select.replaceChildren(...state.versions.map((v) => el("option", { value: v.version }, `v${v.version}${isActive(v) ? " (active)" : ""}`)));
    if (previous && state.versions.some((v) => String(v.version) === previous)) select.value = previous;
    else if (state.versions.length) select.value = String(state.versions[Math.min(fallback, state.versions.length - 1)].version);
  }
  compare();
}

async function detailOf(version) {
  if (!state.details.has(version)) state.details.set(version, await api(`/models/${encodeURIComponent(version)}`));
  return state.details.get(version);
}

// A version's per-type scores on the gate set: its own gate score, or the one measured when it was
// the active version a candidate was compared with; else its test report.
function gateReport(detail) {
  if (detail.gate?.candidate?.per_type) return { report: detail.gate.candidate, where: "the gate set" };
  const asActive = state.versions.find((v) => v.gate?.active?.version === detail.version && v.gate.active.per_type);
  if (asActive) return { report: asActive.gate.active, where: "the gate set" };
  const test = detail.metrics?.engine?.test?.sentences || detail.metrics?.test;
  return test?.per_type ? { report: test, where: "its own test split" } : { report: null, where: "" };
}

async function compare() {
  const a = Number($("#compare-a").value);
  const b = Number($("#compare-b").value);
  const tbody = $("#compare-table tbody");
  $("#rerun-submit").disabled = !b || !$("#rerun-job").value.trim();
  if (!a || !b) return tbody.replaceChildren();
  try {
    const [da, db] = await Promise.all([detailOf(a), detailOf(b)]);
    const ra = gateReport(da);
    const rb = gateReport(db);
    const types = [...new Set([...Object.keys(ra.report?.per_type || {}), ...Object.keys(rb.report?.per_type || {})])].sort();
    tbody.replaceChildren(
      ...types.map((type) => {
        const fa = ra.report?.per_type?.[type]?.f1;
        const fb = rb.report?.per_type?.[type]?.f1;
        const change = fa !== undefined && fb !== undefined ? fb - fa : null;
        return el(
          "tr",
          { dataset: { type } },
          el("td", {}, type),
          el("td", { class: "num" }, fmtScore(fa)),
          el("td", { class: "num" }, fmtScore(fb)),
          el("td", { class: "num" }, change === null ? "–" : `${change >= 0 ? "+" : "−"}${Math.abs(change).toFixed(3)}`),
          el("td", { class: "num" }, ra.report?.per_type?.[type]?.support ?? rb.report?.per_type?.[type]?.support ?? "–"),
        );
      }),
      el(
        "tr",
        { dataset: { type: "overall" } },
        el("td", {}, el("b", {}, "overall")),
        el("td", { class: "num" }, fmtScore(ra.report?.f1)),
        el("td", { class: "num" }, fmtScore(rb.report?.f1)),
        el("td", { class: "num" }, ra.report && rb.report ? (rb.report.f1 - ra.report.f1).toFixed(3) : "–"),
        el("td", {}, ""),
      ),
    );
    $("#compare-note").textContent =
      ra.where === rb.where && ra.where
        ? `Both scored on ${ra.where}.`
        : `A scored on ${ra.where || "nothing recorded"}, B on ${rb.where || "nothing recorded"}: compare with care.`;
    showError($("#compare-error"), null);
  } catch (error) {
    tbody.replaceChildren();
    showError($("#compare-error"), error);
  }
}

async function rerun(event) {
  event.preventDefault();
  const jobId = $("#rerun-job").value.trim();
  const version = Number($("#compare-b").value);
  const errorBox = $("#rerun-error");
  if (!jobId || !version) return showError(errorBox, new Error("Give a job id and pick version B first."));
  try {
    const created = await api(`/jobs/${encodeURIComponent(jobId)}/rerun`, { method: "POST", json: { model_version: version } });
    showError(errorBox, null);
    toast(`Job re-run with version ${version}: ${plural(created.total ?? 0, "document")}`);
    openDiff(jobId, created.job_id);
  } catch (error) {
    showError(errorBox, error);
  }
}

function changeList(label, entities) {
  return entities.length ? el("div", { class: "small" }, `${label}: `, entities.map((e) => `${e.word} (${e.entity_group})`).join(", ")) : null;
}

/** The documents whose entities differ between job a and its re-run b (first page), with a link. */
export async function openDiff(a, b) {
  setRoute(`#/diff/${encodeURIComponent(a)}/${encodeURIComponent(b)}`);
  const view = $("#diff-view");
  view.hidden = false;
  $("#diff-link").href = `#/diff/${encodeURIComponent(a)}/${encodeURIComponent(b)}`;
  const errorBox = $("#rerun-error");
  try {
    const page = await api(`/jobs/${encodeURIComponent(a)}/diff/${encodeURIComponent(b)}`, { query: { limit: 50 } });
    const summary = page.summary;
    $("#diff-summary").textContent = summary
      ? `${plural(summary.documents_changed, "document")} of ${fmtNumber(summary.documents_compared)} changed (v${page.model_version_a ?? "?"} → v${page.model_version_b ?? "?"})${page.complete ? "" : "; the re-run is still going"}`
      : "";
    $("#diff-types tbody").replaceChildren(
      ...(summary?.per_type || []).map((t) =>
        el(
          "tr",
          { dataset: { type: t.type } },
          el("td", {}, t.type),
          el("td", { class: "num" }, fmtNumber(t.added)),
          el("td", { class: "num" }, fmtNumber(t.removed)),
          el("td", { class: "num" }, fmtNumber(t.retyped)),
          el("td", { class: "num" }, fmtNumber(t.boundary)),
        ),
      ),
    );
    $("#diff-items").replaceChildren(
      ...page.items.map((item) =>
        el(
          "li",
          { dataset: { docId: item.id } },
          el("div", { class: "result-head" }, el("code", {}, item.id)),
          changeList("added", item.added),
          changeList("removed", item.removed),
          changeList("retyped", item.retyped.map((c) => ({ word: c.after.word, entity_group: `${c.before.entity_group} → ${c.after.entity_group}` }))),
          changeList("boundary", item.boundary.map((c) => ({ word: `${c.before.word} → ${c.after.word}`, entity_group: c.after.entity_group }))),
        ),
      ),
    );
    showError(errorBox, null);
    if (!page.complete) setTimeout(() => location.hash.startsWith("#/diff/") && openDiff(a, b), 3000);
  } catch (error) {
    $("#diff-items").replaceChildren();
    showError(errorBox, error);
  }
}

export function init() {
  $("#models-refresh").addEventListener("click", refresh);
  $("#import-form").addEventListener("submit", importModel);
  $("#import-source").addEventListener("input", () => {
    $("#import-submit").disabled = !$("#import-source").value.trim();
  });
  $("#shadow-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setShadow(Number($("#shadow-rate").value));
  });
  $("#shadow-stop").addEventListener("click", () => setShadow(0));
  $("#compare-a").addEventListener("change", compare);
  $("#compare-b").addEventListener("change", compare);
  $("#rerun-job").addEventListener("input", () => {
    $("#rerun-submit").disabled = !$("#rerun-job").value.trim() || !$("#compare-b").value;
  });
  $("#rerun-form").addEventListener("submit", rerun);
  for (const id of ["#model-types", "#compare-table"]) makeSortable($(id));
}

export function show() {
  refresh();
}
