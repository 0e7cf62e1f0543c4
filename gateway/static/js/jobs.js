// "Jobs": submit documents (file or paste), watch progress, page through results, top entities.

import { api, itemsOf, nextCursorOf } from "./api.js";
import { colourFor, renderChips, renderEntities } from "./highlight.js";
import {
  $,
  $$,
  activatableRow,
  badge,
  cell,
  confirmAction,
  downloadResponse,
  downloadText,
  el,
  fillStats,
  fmtDate,
  fmtDuration,
  fmtNumber,
  keepingRowFocus,
  fmtPercent,
  makeSortable,
  modelLabel,
  pick,
  plural,
  poll,
  setBusy,
  setProgress,
  setRoute,
  shortId,
  showError,
  toast,
  toCsv,
} from "./util.js";

const ACTIVE = new Set(["queued", "running", "cancelling"]);
const POLL_MS = 1000;
const ENTITIES_EVERY = 3; // top entities refresh every third poll while a job runs
const EXPORT_MAX = 20_000; // documents an export fetches; the NDJSON download has them all
const NAMES_KEY = "ner.jobNames";

const state = {
  jobId: null,
  poller: null,
  cursors: [null], // cursor of each page seen, so "Previous" can go back with keyset pagination
  page: 0,
  nextCursor: null,
  listCursor: null,
  lastStatus: null,
  ticks: 0,
  samples: [], // (time, processed) of recent polls: the ETA's moving rate
};

const jobIdOf = (job) => pick(job, "job_id", "id");

// ---- names: the server keeps each job's (the upload's file name, or the first words pasted); ----
// ---- this browser's copy only covers servers that do not return one yet ---------------------

function names() {
  try {
    return JSON.parse(localStorage.getItem(NAMES_KEY) || "{}");
  } catch {
    return {};
  }
}

function rememberName(jobId, name) {
  const all = names();
  all[jobId] = name;
  const ids = Object.keys(all);
  for (const old of ids.slice(0, Math.max(0, ids.length - 200))) delete all[old];
  localStorage.setItem(NAMES_KEY, JSON.stringify(all));
}

const nameOf = (jobId) => names()[jobId] || null;

// ---- submit ---------------------------------------------------------------------------------

function sourceOf(form) {
  return form.querySelector('input[name="job-source"]:checked').value;
}

function pastedLines() {
  return $("#job-text").value.split(/\r?\n/).filter((line) => line.trim());
}

function updateSubmit() {
  const form = $("#job-form");
  const ready = sourceOf(form) === "file" ? $("#job-file").files.length > 0 : pastedLines().length > 0;
  $("#job-submit").disabled = !ready;
  $("#job-hint").hidden = ready;
  $("#job-hint").textContent = sourceOf(form) === "file" ? "Choose a file first." : "Paste at least one document first.";
}

function firstWords(text, count = 5) {
  const words = text.trim().split(/\s+/);
  return words.slice(0, count).join(" ") + (words.length > count ? " …" : "");
}

async function submit(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const errorBox = $("#job-form-error");
  showError(errorBox, null);
  let request;
  let name;
  const retentionText = $("#job-retention").value.trim();
  const retention = retentionText === "" ? undefined : Number(retentionText);
  if (retention !== undefined && !(Number.isInteger(retention) && retention >= 1)) {
    return showError(errorBox, new Error("Keep results for: give a whole number of days, 1 or more (or leave it empty)."));
  }
  if (sourceOf(form) === "file") {
    const file = $("#job-file").files[0];
    if (!file) return showError(errorBox, new Error("Choose a JSONL, CSV or text file first."));
    const body = new FormData();
    body.append("file", file, file.name);
    if ($("#job-format").value) body.append("format", $("#job-format").value);
    if (retention !== undefined) body.append("retention_days", String(retention));
    request = { method: "POST", body };
    name = file.name;
  } else {
    const lines = pastedLines();
    if (!lines.length) return showError(errorBox, new Error("Paste at least one document, one per line."));
    // Readable ids: the results then say doc-1, doc-2, ... in the order pasted.
    const documents = lines.map((text, index) => ({ id: `doc-${index + 1}`, text }));
    name = `pasted: ${firstWords(lines[0])}`;
    const json = retention === undefined ? { documents, name } : { documents, name, retention_days: retention };
    request = { method: "POST", json };
  }
  setBusy($("#job-submit"), $("#job-submit-busy"), true);
  try {
    await submitAndOpen(request, name);
    form.reset();
    toggleSource(form);
  } catch (error) {
    showError(errorBox, error);
  } finally {
    setBusy($("#job-submit"), $("#job-submit-busy"), false);
    updateSubmit();
  }
}

async function submitAndOpen(request, name) {
  const created = await api("/jobs", request);
  const id = jobIdOf(created);
  if (name) rememberName(id, name);
  toast(`Job submitted: ${plural(pick(created, "total") ?? 0, "document")}`);
  await refreshList();
  openJob(id);
  return created;
}

/** Submit documents as a job and show it on the Jobs tab (used by "Try it" for oversized texts). */
export async function submitDocuments(documents, name) {
  location.hash = "#/jobs";
  return submitAndOpen({ method: "POST", json: name ? { documents, name } : { documents } }, name);
}

function toggleSource(form) {
  const source = sourceOf(form);
  for (const box of $$("[data-source]", form)) box.hidden = box.dataset.source !== source;
  updateSubmit();
}

// ---- list -----------------------------------------------------------------------------------

function jobRow(job) {
  const id = jobIdOf(job);
  const total = pick(job, "total") ?? 0;
  const done = (pick(job, "done") ?? 0) + (pick(job, "failed") ?? 0);
  const status = el("span", {});
  badge(status, job.status);
  const name = job.name || nameOf(id);
  return activatableRow(
    { dataset: { jobId: id }, class: id === state.jobId ? "selected" : "" },
    () => openJob(id),
    cell("Submitted", { class: "date" }, fmtDate(pick(job, "created_at", "submitted_at"))),
    cell("Job", {}, name ? el("span", { class: "job-name", title: id }, name) : el("code", { title: id }, shortId(id))),
    cell("Status", {}, status),
    cell("Documents", { class: "num" }, `${fmtNumber(done)} / ${fmtNumber(total)}`),
    cell("Model", {}, modelLabel(job.model_version)),
  );
}

async function refreshList({ more = false } = {}) {
  const errorBox = $("#jobs-error");
  try {
    const page = await api("/jobs", {
      query: { limit: 15, status: $("#jobs-filter").value, cursor: more ? state.listCursor : null },
    });
    const rows = itemsOf(page).map(jobRow);
    const tbody = $("#jobs-table tbody");
    if (more) tbody.append(...rows);
    else keepingRowFocus(tbody, () => tbody.replaceChildren(...rows));
    state.listCursor = nextCursorOf(page);
    $("#jobs-more").hidden = !state.listCursor;
    showError(errorBox, null);
  } catch (error) {
    $("#jobs-table tbody").replaceChildren();
    showError(errorBox, error);
  }
}

// ---- one job --------------------------------------------------------------------------------

// Seconds left from the rate of the last polls (a moving window), not from the job's start: a job
// that sped up or stalled shows it at once. The API's own estimate until two polls differ.
function movingEta(job, processed, total) {
  const now = performance.now() / 1000;
  state.samples.push([now, processed]);
  state.samples = state.samples.filter(([t]) => now - t <= 30);
  const [t0, p0] = state.samples[0];
  if (now - t0 >= 2 && processed > p0) return ((total - processed) * (now - t0)) / (processed - p0);
  return pick(job, "eta_seconds", "eta_s");
}

function renderJob(job) {
  const total = pick(job, "total") ?? 0;
  const done = pick(job, "done") ?? 0;
  const failed = pick(job, "failed") ?? 0;
  const processed = done + failed;
  const percent = pick(job, "percent", "progress") ?? (total ? (100 * processed) / total : 0);
  badge($("#job-status"), job.status);
  setProgress($("#job-progress"), percent, `${fmtPercent(percent, percent > 0 && percent < 100 ? 1 : 0)}`);
  $("#job-progress").dataset.status = job.status;
  const throughput = pick(job, "throughput", "throughput_docs_per_s", "docs_per_second", "documents_per_second");
  const active = ACTIVE.has(job.status);
  const eta = active ? movingEta(job, processed, total) : undefined;
  const expires = pick(job, "expires_at");
  const retention = pick(job, "retention_days");
  fillStats($("#job-stats"), [
    ["Name", job.name || nameOf(state.jobId) || undefined],
    ["Documents", `${fmtNumber(processed)} of ${fmtNumber(total)}`],
    ["Failed", fmtNumber(failed)],
    ["Throughput", throughput === undefined || throughput === null ? "–" : `${fmtNumber(throughput, 1)} docs/s`],
    ["ETA", active ? (processed >= total && total ? "finishing" : fmtDuration(eta)) : "–"],
    ["Model", modelLabel(job.model_version)],
    ["Submitted", fmtDate(pick(job, "created_at", "submitted_at"))],
    ["Finished", fmtDate(pick(job, "finished_at"))],
    ["Results kept", retention === undefined ? undefined : `${plural(retention, "day")}${expires ? `, until ${fmtDate(expires)}` : ""}`],
    ...(job.error ? [["Error", job.error]] : []),
  ]);
  $("#job-retention-note").textContent = expires
    ? `The job and its results are deleted on ${fmtDate(expires)}; download them before then to keep them.`
    : `Results are kept for ${plural(retention ?? 0, "day")} after the job finishes.`;
  $("#job-cancel").disabled = !active || job.status === "cancelling";
}

export function openJob(jobId) {
  if (!jobId) return;
  setRoute(`#/jobs/${encodeURIComponent(jobId)}`);
  if (state.jobId === jobId && state.poller && !$("#job-view").hidden) return;
  state.poller?.stop();
  Object.assign(state, { jobId, cursors: [null], page: 0, nextCursor: null, lastStatus: null, ticks: 0, samples: [] });
  $("#job-id").textContent = jobId;
  $("#job-link").href = `#/jobs/${encodeURIComponent(jobId)}`;
  $("#job-view").hidden = false;
  $("#results-list").replaceChildren();
  $("#entities-table tbody").replaceChildren();
  showError($("#job-error"), null);
  for (const row of $$("#jobs-table tbody tr")) row.classList.toggle("selected", row.dataset.jobId === jobId);
  state.poller = poll(() => tick(jobId), POLL_MS, (error) => showError($("#job-error"), error));
}

async function tick(jobId) {
  if (state.jobId !== jobId) return false;
  const job = await api(`/jobs/${encodeURIComponent(jobId)}`);
  if (state.jobId !== jobId) return false;
  showError($("#job-error"), null);
  renderJob(job);
  // Keep the job's row in the list in step with the detail view.
  const tbody = $("#jobs-table tbody");
  keepingRowFocus(tbody, () => tbody.querySelector(`tr[data-job-id="${CSS.escape(jobId)}"]`)?.replaceWith(jobRow(job)));
  const active = ACTIVE.has(job.status);
  const first = state.lastStatus === null;
  const finished = state.lastStatus !== null && ACTIVE.has(state.lastStatus) && !active;
  state.lastStatus = job.status;
  state.ticks += 1;
  // Results and top entities are readable while a job runs: shown now, and again as it fills up.
  if (first || finished || (active && state.page === 0)) await loadResults();
  if (first || finished || (active && state.ticks % ENTITIES_EVERY === 0)) await loadEntities();
  if (finished) {
    refreshList();
    toast(`Job ${job.name || nameOf(jobId) || shortId(jobId)} ${job.status}`);
  }
  return active;
}

function resultItem(item) {
  const entities = item.entities || [];
  const body = el("div", { class: "doc small-doc" });
  if (typeof item.text === "string") renderEntities(body, item.text, entities);
  else if (entities.length) renderChips(body, entities);
  else body.append(el("span", { class: "muted" }, "no entities"));
  if (typeof item.text === "string" && !entities.length) body.append(el("span", { class: "muted" }, " (no entities)"));
  body.setAttribute("aria-label", `Document ${item.id}: ${plural(entities.length, "entity", "entities")}; arrow keys move between them`);
  const status = item.status && item.status !== "done" ? el("span", { class: `badge status-${item.status}` }, item.status) : null;
  return el(
    "li",
    { dataset: { docId: item.id } },
    el(
      "div",
      { class: "result-head" },
      el("code", {}, item.id),
      status,
      el("span", { class: "muted" }, `${plural(entities.length, "entity", "entities")} · ${modelLabel(item.model_version)}`),
    ),
    item.error ? el("div", { class: "error inline" }, item.error) : null,
    body,
  );
}

async function loadResults() {
  const jobId = state.jobId;
  const limit = Number($("#results-limit").value);
  try {
    const page = await api(`/jobs/${encodeURIComponent(jobId)}/results`, {
      // include_text: the documents' own text, to draw the entities in it (chips otherwise).
      query: { limit, cursor: state.cursors[state.page], include_text: "true" },
    });
    if (jobId !== state.jobId) return;
    const items = itemsOf(page);
    state.nextCursor = nextCursorOf(page);
    $("#results-list").replaceChildren(...items.map(resultItem));
    $("#results-list").start = state.page * limit + 1;
    $("#results-range").textContent = items.length
      ? `page ${state.page + 1} · documents ${state.page * limit + 1}–${state.page * limit + items.length}`
      : "no results yet";
    $("#results-prev").disabled = state.page === 0;
    $("#results-next").disabled = !state.nextCursor;
    showError($("#results-error"), null);
  } catch (error) {
    $("#results-list").replaceChildren();
    showError($("#results-error"), error);
  }
}

async function loadEntities() {
  const jobId = state.jobId;
  try {
    const page = await api(`/jobs/${encodeURIComponent(jobId)}/entities`, {
      query: { limit: 15, type: $("#entities-type").value },
    });
    if (jobId !== state.jobId) return;
    const items = itemsOf(page);
    const select = $("#entities-type");
    const known = new Set($$("option", select).map((o) => o.value));
    for (const item of items) {
      const type = pick(item, "entity_group", "type", "label");
      if (type && !known.has(type)) {
        select.append(el("option", { value: type }, type));
        known.add(type);
      }
    }
    const max = Math.max(1, ...items.map((item) => item.count || 0));
    $("#entities-table tbody").replaceChildren(
      ...items.map((item) => {
        const type = pick(item, "entity_group", "type", "label");
        const bar = el("span", { class: "countbar", style: `width:${(100 * (item.count || 0)) / max}%` });
        bar.style.background = colourFor(type);
        return el(
          "tr",
          {},
          el("td", {}, pick(item, "word", "text", "entity")),
          el("td", {}, type),
          el(
            "td",
            {
              class: "num barcell",
              dataset: { sort: item.count || 0 },
              title: item.documents === undefined ? null : `${item.count} mentions in ${item.documents} documents`,
            },
            bar,
            el("span", {}, fmtNumber(item.count)),
          ),
        );
      }),
    );
    showError($("#entities-error"), null);
  } catch (error) {
    $("#entities-table tbody").replaceChildren();
    showError($("#entities-error"), error);
  }
}

async function cancelJob() {
  const label = nameOf(state.jobId) || shortId(state.jobId);
  if (!confirmAction(`Cancel job ${label}? Documents not processed yet will not be.`)) return;
  try {
    await api(`/jobs/${encodeURIComponent(state.jobId)}/cancel`, { method: "POST" });
    toast(`Cancelling job ${label}`);
    const id = state.jobId;
    state.jobId = null;
    openJob(id);
  } catch (error) {
    showError($("#job-error"), error);
  }
}

async function download() {
  const button = $("#job-download");
  button.disabled = true;
  try {
    const response = await api(`/jobs/${encodeURIComponent(state.jobId)}/results`, {
      query: { format: "ndjson" },
      headers: { Accept: "application/x-ndjson" },
      raw: true,
    });
    await downloadResponse(response, `job-${state.jobId}.ndjson`);
    toast("Results downloaded");
  } catch (error) {
    showError($("#job-error"), error);
  } finally {
    button.disabled = false;
  }
}

/** Every result (text included) up to EXPORT_MAX documents, page by page. */
async function allResults(jobId) {
  const items = [];
  let cursor = null;
  do {
    const page = await api(`/jobs/${encodeURIComponent(jobId)}/results`, { query: { limit: 1000, cursor, include_text: "true" } });
    items.push(...itemsOf(page));
    cursor = nextCursorOf(page);
  } while (cursor && items.length < EXPORT_MAX);
  return items;
}

async function exportResults(kind) {
  const jobId = state.jobId;
  const button = $(`#job-export-${kind}`);
  button.disabled = true;
  try {
    const items = await allResults(jobId);
    if (kind === "json") {
      downloadText(JSON.stringify(items, null, 2), `job-${jobId}.json`);
    } else {
      const rows = items.flatMap((item) =>
        (item.entities || []).map((e) => ({ document: item.id, word: e.word, type: e.entity_group, score: e.score, start: e.start, end: e.end })),
      );
      downloadText(toCsv(["document", "word", "type", "score", "start", "end"], rows), `job-${jobId}.csv`, "text/csv");
    }
    toast(`Exported ${plural(items.length, "document")} as ${kind.toUpperCase()}`);
  } catch (error) {
    showError($("#job-error"), error);
  } finally {
    button.disabled = false;
  }
}

export function init() {
  const form = $("#job-form");
  form.addEventListener("submit", submit);
  form.addEventListener("change", (event) => {
    if (event.target.name === "job-source") toggleSource(form);
    else updateSubmit();
  });
  $("#job-text").addEventListener("input", updateSubmit);
  $("#jobs-refresh").addEventListener("click", () => refreshList());
  $("#jobs-filter").addEventListener("change", () => refreshList());
  $("#jobs-more").addEventListener("click", () => refreshList({ more: true }));
  $("#job-cancel").addEventListener("click", cancelJob);
  $("#job-download").addEventListener("click", download);
  $("#job-export-csv").addEventListener("click", () => exportResults("csv"));
  $("#job-export-json").addEventListener("click", () => exportResults("json"));
  $("#results-next").addEventListener("click", () => {
    if (!state.nextCursor) return;
    state.cursors[state.page + 1] = state.nextCursor;
    state.page += 1;
    loadResults();
  });
  $("#results-prev").addEventListener("click", () => {
    if (state.page === 0) return;
    state.page -= 1;
    loadResults();
  });
  $("#results-limit").addEventListener("change", () => {
    Object.assign(state, { cursors: [null], page: 0 });
    loadResults();
  });
  $("#entities-type").addEventListener("change", loadEntities);
  makeSortable($("#entities-table"));
  updateSubmit();
}

export function show() {
  refreshList();
}
