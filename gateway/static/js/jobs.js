// "Jobs": submit documents (file or paste), watch progress, page through results, top entities.

import { api, itemsOf, nextCursorOf } from "./api.js";
import { colourFor, renderChips, renderEntities } from "./highlight.js";
import {
  $,
  $$,
  badge,
  downloadResponse,
  el,
  fillStats,
  fmtDate,
  fmtDuration,
  fmtNumber,
  fmtPercent,
  modelLabel,
  pick,
  poll,
  setBusy,
  setProgress,
  shortId,
  showError,
} from "./util.js";

const ACTIVE = new Set(["queued", "running", "cancelling"]);
const POLL_MS = 1000;

const state = {
  jobId: null,
  poller: null,
  cursors: [null], // cursor of each page seen, so "Previous" can go back with keyset pagination
  page: 0,
  nextCursor: null,
  listCursor: null,
  lastStatus: null,
};

const jobIdOf = (job) => pick(job, "job_id", "id");

// ---- submit ---------------------------------------------------------------------------------

function sourceOf(form) {
  return form.querySelector('input[name="job-source"]:checked').value;
}

async function submit(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const errorBox = $("#job-form-error");
  showError(errorBox, null);
  let request;
  const retentionText = $("#job-retention").value.trim();
  const retention = retentionText === "" ? undefined : Number(retentionText);
  if (sourceOf(form) === "file") {
    const file = $("#job-file").files[0];
    if (!file) return showError(errorBox, new Error("Choose a JSONL, CSV or text file first."));
    const body = new FormData();
    body.append("file", file, file.name);
    if ($("#job-format").value) body.append("format", $("#job-format").value);
    if (retention !== undefined) body.append("retention_days", String(retention));
    request = { method: "POST", body };
  } else {
    const lines = $("#job-text").value.split(/\r?\n/).filter((line) => line.trim());
    // Sent even when empty: the API names what is wrong with an empty job.
    const documents = lines.map((text) => ({ text }));
    request = { method: "POST", json: retention === undefined ? { documents } : { documents, retention_days: retention } };
  }
  setBusy($("#job-submit"), $("#job-submit-busy"), true);
  try {
    await submitAndOpen(request);
    form.reset();
    toggleSource(form);
  } catch (error) {
    showError(errorBox, error);
  } finally {
    setBusy($("#job-submit"), $("#job-submit-busy"), false);
  }
}

async function submitAndOpen(request) {
  const created = await api("/jobs", request);
  await refreshList();
  openJob(jobIdOf(created));
  return created;
}

/** Submit documents as a job and show it on the Jobs tab (used by "Try it" for oversized texts). */
export async function submitDocuments(documents) {
  location.hash = "#jobs";
  return submitAndOpen({ method: "POST", json: { documents } });
}

function toggleSource(form) {
  const source = sourceOf(form);
  for (const box of $$("[data-source]", form)) box.hidden = box.dataset.source !== source;
}

// ---- list -----------------------------------------------------------------------------------

function jobRow(job) {
  const id = jobIdOf(job);
  const total = pick(job, "total") ?? 0;
  const done = (pick(job, "done") ?? 0) + (pick(job, "failed") ?? 0);
  const status = el("span", {});
  badge(status, job.status);
  return el(
    "tr",
    { dataset: { jobId: id }, class: id === state.jobId ? "selected" : "", onclick: () => openJob(id) },
    el("td", {}, fmtDate(pick(job, "created_at", "submitted_at"))),
    el("td", {}, el("code", { title: id }, shortId(id))),
    el("td", {}, status),
    el("td", { class: "num" }, `${fmtNumber(done)} / ${fmtNumber(total)}`),
    el("td", {}, modelLabel(job.model_version)),
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
    else tbody.replaceChildren(...rows);
    state.listCursor = nextCursorOf(page);
    $("#jobs-more").hidden = !state.listCursor;
    showError(errorBox, null);
  } catch (error) {
    showError(errorBox, error);
  }
}

// ---- one job --------------------------------------------------------------------------------

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
  const eta = pick(job, "eta_seconds", "eta_s", "eta");
  fillStats($("#job-stats"), [
    ["Documents", `${fmtNumber(processed)} of ${fmtNumber(total)}`],
    ["Failed", fmtNumber(failed)],
    ["Throughput", throughput === undefined ? "–" : `${fmtNumber(throughput, 1)} docs/s`],
    ["ETA", ACTIVE.has(job.status) ? (typeof eta === "string" ? eta : fmtDuration(eta)) : "–"],
    ["Model", modelLabel(job.model_version)],
    ["Submitted", fmtDate(pick(job, "created_at", "submitted_at"))],
    ["Finished", fmtDate(pick(job, "finished_at"))],
    ...(job.error ? [["Error", job.error]] : []),
  ]);
  $("#job-cancel").disabled = !ACTIVE.has(job.status) || job.status === "cancelling";
}

export function openJob(jobId) {
  if (!jobId) return;
  state.poller?.stop();
  Object.assign(state, { jobId, cursors: [null], page: 0, nextCursor: null, lastStatus: null });
  $("#job-id").textContent = jobId;
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
  $(`#jobs-table tbody tr[data-job-id="${CSS.escape(jobId)}"]`)?.replaceWith(jobRow(job));
  const active = ACTIVE.has(job.status);
  const first = state.lastStatus === null;
  const finished = state.lastStatus !== null && ACTIVE.has(state.lastStatus) && !active;
  state.lastStatus = job.status;
  // Results are readable while a job runs: show the first page now, and again as it fills up.
  if (first || finished || (active && state.page === 0)) await loadResults();
  if (first || finished) await loadEntities();
  if (finished) refreshList();
  return active;
}

function resultItem(item) {
  const entities = item.entities || [];
  const body = el("div", { class: "doc small-doc" });
  if (typeof item.text === "string") renderEntities(body, item.text, entities);
  else if (entities.length) renderChips(body, entities);
  else body.append(el("span", { class: "muted" }, "no entities"));
  const status = item.status && item.status !== "done" ? el("span", { class: `badge status-${item.status}` }, item.status) : null;
  return el(
    "li",
    { dataset: { docId: item.id } },
    el(
      "div",
      { class: "result-head" },
      el("code", {}, item.id),
      status,
      el("span", { class: "muted" }, `${entities.length} entities · ${modelLabel(item.model_version)}`),
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
            { class: "num barcell", title: item.documents === undefined ? null : `${item.count} mentions in ${item.documents} documents` },
            bar,
            el("span", {}, fmtNumber(item.count)),
          ),
        );
      }),
    );
    showError($("#entities-error"), null);
  } catch (error) {
    showError($("#entities-error"), error);
  }
}

async function cancelJob() {
  try {
    await api(`/jobs/${encodeURIComponent(state.jobId)}/cancel`, { method: "POST" });
    openJob(state.jobId);
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
  });
  $("#jobs-refresh").addEventListener("click", () => refreshList());
  $("#jobs-filter").addEventListener("change", () => refreshList());
  $("#jobs-more").addEventListener("click", () => refreshList({ more: true }));
  $("#job-cancel").addEventListener("click", cancelJob);
  $("#job-download").addEventListener("click", download);
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
}

export function show() {
  refreshList();
}
