// "Train": start a training run (data by reference or upload) and watch it epoch by epoch.

import { api, itemsOf } from "./api.js";
import { epochCharts } from "./chart.js";
import { scoreRows } from "./models.js";
import {
  $,
  $$,
  activatableRow,
  badge,
  breakable,
  cell,
  confirmAction,
  el,
  fillStats,
  fmtDate,
  fmtDuration,
  fmtNumber,
  keepingRowFocus,
  fmtScore,
  pick,
  poll,
  setBusy,
  setProgress,
  setRoute,
  shortId,
  shortModelName,
  showError,
  toast,
} from "./util.js";

const ACTIVE = new Set(["queued", "running", "cancelling"]);
const POLL_MS = 2000;
const state = { runId: null, poller: null, lastEpochs: -1, lastStatus: null };
const NAMES_KEY = "ner.runNames";

// The uploaded files' names as this browser sent them: only for runs whose data the server shows
// without them (see dataNames).
function runNames() {
  try {
    return JSON.parse(localStorage.getItem(NAMES_KEY) || "{}");
  } catch {
    return {};
  }
}

function rememberRunName(runId, name) {
  const all = runNames();
  all[runId] = name;
  const ids = Object.keys(all);
  for (const old of ids.slice(0, Math.max(0, ids.length - 200))) delete all[old];
  localStorage.setItem(NAMES_KEY, JSON.stringify(all));
}

// The run's data as people named it: a stored upload's reference ends in its file name
// (upload:<folder>/<name>, or the older uploads/<folder>/<name>), a server path or hub id is shown as it is.
function dataNames(run) {
  const data = run.data || {};
  const parts = ["train", "validation", "test"]
    .filter((split) => typeof data[split] === "string" && data[split])
    .map((split) => {
      const ref = data[split];
      const name = /^upload:|(^|\/)uploads\//.test(ref) ? ref.split("/").pop() : ref;
      return split === "train" ? name : `${split}: ${name}`;
    });
  return parts.join(", ") || null;
}

const runName = (run) => dataNames(run) || runNames()[runIdOf(run)] || null;

function hasTrainData(form) {
  return sourceOf(form) === "path" ? Boolean(textField("#train-train")) : $("#train-train-file").files.length > 0;
}

function updateSubmit() {
  const form = $("#train-form");
  const ready = hasTrainData(form);
  $("#train-submit").disabled = !ready;
  $("#train-hint").hidden = ready;
  $("#train-hint").textContent = sourceOf(form) === "path" ? "Name the training data first." : "Choose a training file first.";
}

const runIdOf = (run) => pick(run, "run_id", "id");

function numberField(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function textField(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : value;
}

// The run's settings as the API names them; blanks are left out so the service's defaults apply.
function params() {
  const out = {
    base_model: textField("#train-base"),
    epochs: numberField("#train-epochs"),
    loss: $("#train-loss").value,
    learning_rate: numberField("#train-lr"),
    batch_size: numberField("#train-batch"),
    max_length: numberField("#train-max-length"),
    warmup_ratio: numberField("#train-warmup"),
    weight_decay: numberField("#train-wd"),
    seed: numberField("#train-seed"),
    focal_gamma: numberField("#train-gamma"),
    mom_lambda: numberField("#train-lambda"),
  };
  return Object.fromEntries(Object.entries(out).filter(([, v]) => v !== undefined));
}

function sourceOf(form) {
  return form.querySelector('input[name="train-source"]:checked').value;
}

function toggleSource(form) {
  const source = sourceOf(form);
  for (const box of $$("[data-source]", form)) box.hidden = box.dataset.source !== source;
  updateSubmit();
}

function uploadNames(form) {
  if (sourceOf(form) !== "upload") return null;
  const parts = ["train", "validation", "test"]
    .map((split) => [split, $(`#train-${split}-file`).files[0]?.name])
    .filter(([, name]) => name)
    .map(([split, name]) => (split === "train" ? name : `${split}: ${name}`));
  return parts.join(", ") || null;
}

// Uploaded files go to POST /train/uploads first; the run then references the stored paths.
async function dataOf(form) {
  const data = {};
  for (const split of ["train", "validation", "test"]) {
    if (sourceOf(form) === "path") {
      const ref = textField(`#train-${split}`);
      if (ref) data[split] = ref;
      continue;
    }
    const file = $(`#train-${split}-file`).files[0];
    if (!file) continue;
    const body = new FormData();
    body.append("file", file, file.name);
    const stored = await api("/train/uploads", { method: "POST", body });
    data[split] = stored.reference ?? stored.path; // "upload:<id>/<name>": valid on every gateway host
  }
  // Sent even without a train reference: the API names what is missing.
  return data;
}

async function submit(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const errorBox = $("#train-form-error");
  showError(errorBox, null);
  if (!hasTrainData(form)) return showError(errorBox, new Error("Training data is required: name it on the server or choose a file to upload."));
  setBusy($("#train-submit"), $("#train-submit-busy"), true);
  try {
    const created = await api("/train", { method: "POST", json: { data: await dataOf(form), ...params() } });
    const names = uploadNames(form);
    if (names) rememberRunName(runIdOf(created), names);
    toast("Training run queued");
    await refreshRuns();
    openRun(runIdOf(created));
  } catch (error) {
    showError(errorBox, error);
  } finally {
    setBusy($("#train-submit"), $("#train-submit-busy"), false);
    updateSubmit();
  }
}

// ---- runs list ------------------------------------------------------------------------------

function epochsDone(run) {
  return Array.isArray(run.epochs) ? run.epochs.length : pick(run, "epochs_done");
}

function runRow(run) {
  const id = runIdOf(run);
  const status = el("span", {});
  badge(status, run.status);
  const epochs = epochsDone(run);
  const planned = pick(run.params || {}, "epochs");
  const name = runName(run);
  return activatableRow(
    { dataset: { runId: id }, class: id === state.runId ? "selected" : "" },
    () => openRun(id),
    cell("Started", { class: "date" }, fmtDate(pick(run, "created_at", "started_at"))),
    cell("Run", {}, el("code", { title: id }, shortId(id)), name ? el("span", { class: "muted small" }, ` ${name}`) : null),
    cell("Status", {}, status),
    cell("Epochs", { class: "num" }, epochs === undefined ? "–" : planned ? `${epochs} of ${planned}` : String(epochs)),
    cell("Version", {}, run.model_version ? `v${run.model_version}` : "–"),
  );
}

async function refreshRuns() {
  const errorBox = $("#runs-error");
  try {
    const page = await api("/train", { query: { limit: 10 } });
    const tbody = $("#runs-table tbody");
    keepingRowFocus(tbody, () => tbody.replaceChildren(...itemsOf(page).map(runRow)));
    showError(errorBox, null);
  } catch (error) {
    // Listing runs is optional for watching one: say why it is empty, keep the rest working.
    $("#runs-table tbody").replaceChildren();
    showError(errorBox, error);
  }
}

// ---- one run --------------------------------------------------------------------------------

function renderRun(run) {
  badge($("#run-status"), run.status);
  const step = pick(run, "step") ?? 0;
  const total = pick(run, "total_steps", "total") ?? 0;
  const fraction = pick(run, "progress");
  const percent = run.status === "succeeded" ? 100 : fraction !== undefined ? 100 * fraction : total ? (100 * step) / total : 0;
  setProgress($("#run-progress"), percent, total ? `step ${fmtNumber(step)} of ${fmtNumber(total)} · ${Math.floor(percent)}%` : run.status);
  $("#run-progress").dataset.status = run.status;
  const epochs = run.epochs || [];
  const version = run.model_version;
  const eta = pick(run, "eta_seconds", "eta_s", "eta");
  fillStats($("#run-stats"), [
    ["Epochs done", `${epochs.length}${pick(run.params || {}, "epochs") ? ` of ${run.params.epochs}` : ""}`],
    ["ETA", ACTIVE.has(run.status) ? (typeof eta === "string" ? eta : fmtDuration(eta)) : "–"],
    ["Base model", el("span", { title: run.base_model || "", class: "base-name" }, ...breakable(shortModelName(run.base_model)))],
    ["Data", runName(run) ?? undefined],
    ["Loss", pick(run.params || {}, "loss") ?? "–"],
    ["Started", fmtDate(pick(run, "started_at", "created_at"))],
    ["Finished", fmtDate(pick(run, "finished_at"))],
    [
      "Published",
      version
        ? el("a", { href: `#/models/${version}` }, `version ${version}${run.promoted === true ? " (promoted)" : run.promoted === false ? " (candidate)" : ""}`)
        : "–",
    ],
  ]);
  const failure = run.error ? Object.assign(new Error(`The run ${run.status}: ${run.error}`), { name: "ApiError" }) : null;
  showError($("#run-error"), failure);
  $("#run-cancel").disabled = !ACTIVE.has(run.status);

  const test = run.test_metrics || {};
  $("#run-test").hidden = !test.per_type;
  if (test.per_type) {
    $("#run-test-overall").textContent = `overall: precision ${fmtScore(test.precision)} · recall ${fmtScore(test.recall)} · F1 ${fmtScore(test.f1)}`;
    $("#run-test-table tbody").replaceChildren(...scoreRows(test));
  }

  if (epochs.length !== state.lastEpochs || (!ACTIVE.has(run.status) && state.lastStatus !== run.status)) {
    state.lastEpochs = epochs.length;
    const ended = !ACTIVE.has(run.status);
    $("#run-charts").replaceChildren(
      ...(ended && !epochs.length
        ? [el("p", { class: "muted", id: "run-no-epochs" }, `No epoch finished before the run ${run.status === "succeeded" ? "ended" : `was ${run.status}`}: there are no curves to draw.`)]
        : epochCharts(epochs, pick(run.params || {}, "epochs"))),
    );
    $("#run-epochs tbody").replaceChildren(
      ...epochs.map((e) =>
        el(
          "tr",
          {},
          el("td", { class: "num" }, e.epoch),
          el("td", { class: "num" }, fmtScore(e.train_loss)),
          el("td", { class: "num" }, fmtScore(e.val_loss)),
          el("td", { class: "num" }, fmtScore(e.precision)),
          el("td", { class: "num" }, fmtScore(e.recall)),
          el("td", { class: "num" }, fmtScore(e.f1)),
          el("td", { class: "num" }, fmtScore(e.accuracy)),
        ),
      ),
    );
  }
}

export function openRun(runId) {
  if (!runId) return;
  setRoute(`#/runs/${encodeURIComponent(runId)}`);
  $("#run-link").href = `#/runs/${encodeURIComponent(runId)}`;
  if (state.runId === runId && state.poller && !$("#run-view").hidden) return;
  state.poller?.stop();
  Object.assign(state, { runId, lastEpochs: -1, lastStatus: null });
  $("#run-id").textContent = runId;
  $("#run-view").hidden = false;
  for (const row of $$("#runs-table tbody tr")) row.classList.toggle("selected", row.dataset.runId === runId);
  state.poller = poll(
    async () => {
      if (state.runId !== runId) return false;
      const run = await api(`/train/${encodeURIComponent(runId)}`);
      if (state.runId !== runId) return false;
      renderRun(run);
      // The run's row in the list moves with it (status, epochs), not only on Refresh.
      const tbody = $("#runs-table tbody");
      keepingRowFocus(tbody, () => tbody.querySelector(`tr[data-run-id="${CSS.escape(runId)}"]`)?.replaceWith(runRow(run)));
      const active = ACTIVE.has(run.status);
      if (state.lastStatus && ACTIVE.has(state.lastStatus) && !active) refreshRuns();
      state.lastStatus = run.status;
      return active;
    },
    POLL_MS,
    (error) => showError($("#run-error"), error),
  );
}

async function cancelRun() {
  if (!confirmAction(`Cancel training run ${shortId(state.runId)}? Its progress is lost.`)) return;
  try {
    await api(`/train/${encodeURIComponent(state.runId)}/cancel`, { method: "POST" });
    toast(`Cancelling run ${shortId(state.runId)}`);
    const id = state.runId;
    state.runId = null;
    openRun(id);
  } catch (error) {
    showError($("#run-error"), error);
  }
}

export function init() {
  const form = $("#train-form");
  form.addEventListener("submit", submit);
  form.addEventListener("change", (event) => {
    if (event.target.name === "train-source") toggleSource(form);
    else updateSubmit();
  });
  $("#train-train").addEventListener("input", updateSubmit);
  updateSubmit();
  $("#runs-refresh").addEventListener("click", refreshRuns);
  $("#run-cancel").addEventListener("click", cancelRun);
  $("#run-open").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("#run-open-id").value.trim();
    if (id) openRun(id);
  });
}

export function show() {
  refreshRuns();
}
