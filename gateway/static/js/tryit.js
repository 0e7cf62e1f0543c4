// "Try it": one text through POST /predict/, its entities drawn inline, filtered, exported.

import { api } from "./api.js";
import { applyFilter, renderEntities, renderLegend, renderTypeHelp } from "./highlight.js";
import { submitDocuments } from "./jobs.js";
import {
  $,
  copyText,
  downloadText,
  el,
  fmtNumber,
  fmtScore,
  makeSortable,
  modelLabel,
  plural,
  setBusy,
  showError,
  toast,
  toCsv,
} from "./util.js";

const EXAMPLE = "Google was founded by Larry Page and Sergey Brin in California.";
const COLUMNS = ["word", "entity_group", "score", "start", "end"];

const state = { answer: null, text: "", hidden: new Set() };

function renderTable(tbody, entities) {
  // A whole article can hold thousands of entities; the table shows the first 1,000.
  tbody.replaceChildren(
    ...entities.slice(0, 1000).map((e) =>
      el(
        "tr",
        { dataset: { type: e.entity_group } },
        el("td", {}, e.word),
        el("td", {}, e.entity_group),
        el("td", { class: "num" }, fmtScore(e.score)),
        el("td", { class: "num" }, e.start),
        el("td", { class: "num" }, e.end),
      ),
    ),
  );
}

// Over the synchronous limit: the same text can still go through as a one-document bulk job.
function offerJob(errorBox, text) {
  const button = el("button", { type: "button", class: "small", id: "try-as-job" }, "Run it as a bulk job");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await submitDocuments([{ id: "pasted-text", text }], "pasted text");
    } catch (error) {
      showError(errorBox, error);
    }
  });
  errorBox.append(" ", button);
}

function visibleEntities() {
  const threshold = Number($("#try-threshold").value);
  return (state.answer?.entities || []).filter((e) => !state.hidden.has(e.entity_group) && e.score >= threshold);
}

function refilter() {
  const threshold = Number($("#try-threshold").value);
  $("#try-threshold-value").textContent = threshold.toFixed(2);
  const shown = applyFilter($("#try-output"), state.hidden, threshold);
  const total = state.answer?.entities?.length || 0;
  $("#try-shown").textContent = shown === total ? "" : ` · ${fmtNumber(shown)} shown`;
  renderTable($("#try-table tbody"), visibleEntities());
}

function exportName(ext) {
  return `entities-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}.${ext}`;
}

function asJson() {
  return JSON.stringify({ text: state.text, model_version: state.answer?.model_version ?? null, entities: visibleEntities() }, null, 2);
}

export function init() {
  const form = $("#try-form");
  const input = $("#try-text");
  const count = $("#try-count");
  const errorBox = $("#try-error");
  const result = $("#try-result");
  const run = $("#try-run");
  let inFlight = null;

  // The button works only on text with something in it; the hint says why it is disabled.
  const update = () => {
    const chars = [...input.value].length;
    count.textContent = chars ? `${fmtNumber(chars)} characters` : "";
    const blank = !input.value.trim();
    run.disabled = blank || inFlight !== null;
    $("#try-hint").hidden = !blank;
    $("#try-hint").textContent = input.value && blank ? "Only spaces so far: type some words." : "Type some text to enable the button.";
  };
  input.addEventListener("input", update);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!run.disabled) form.requestSubmit();
    }
  });
  $("#try-example").addEventListener("click", () => {
    input.value = EXAMPLE;
    update();
    form.requestSubmit();
  });
  $("#try-clear").addEventListener("click", () => {
    input.value = "";
    update();
    result.hidden = true;
    showError(errorBox, null);
    input.focus();
  });
  $("#try-threshold").addEventListener("input", refilter);
  $("#try-export-csv").addEventListener("click", () => {
    downloadText(toCsv(COLUMNS, visibleEntities()), exportName("csv"), "text/csv");
    toast("Entities exported as CSV");
  });
  $("#try-export-json").addEventListener("click", () => {
    downloadText(asJson(), exportName("json"));
    toast("Entities exported as JSON");
  });
  $("#try-copy").addEventListener("click", async () => {
    toast((await copyText(asJson())) ? "Entities copied as JSON" : "Copying was refused by the browser; use Export JSON");
  });
  makeSortable($("#try-table"));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) {
      update();
      return showError(errorBox, new Error("There is no text to analyse: type or paste some words first."));
    }
    inFlight?.abort();
    const controller = new AbortController();
    inFlight = controller;
    showError(errorBox, null);
    setBusy(run, $("#try-busy"), true);
    const started = performance.now();
    try {
      const answer = await api("/predict/", { method: "POST", json: { text }, signal: controller.signal });
      const ms = performance.now() - started;
      const entities = answer.entities || [];
      Object.assign(state, { answer, text });
      renderEntities($("#try-output"), text, entities);
      const types = renderLegend($("#try-legend"), entities, { hidden: state.hidden, onChange: refilter });
      renderTypeHelp($("#try-types"), types);
      $("#try-meta").replaceChildren(
        `${plural(entities.length, "entity", "entities")}`,
        el("span", { id: "try-shown" }),
        " · answered by ",
        el("b", { id: "try-version" }, modelLabel(answer.model_version)),
        ` · ${fmtNumber(ms)} ms`,
      );
      if (!entities.length) $("#try-output").append(el("p", { class: "muted" }, "No entities found in this text."));
      refilter();
      result.hidden = false;
    } catch (error) {
      if (error.name === "AbortError") return;
      // A stale answer under a new error would read as the answer to this text.
      result.hidden = true;
      state.answer = null;
      showError(errorBox, error);
      if (error.status === 413) offerJob(errorBox, text);
    } finally {
      if (inFlight === controller) {
        inFlight = null;
        setBusy(run, $("#try-busy"), false);
        update();
      }
    }
  });
  update();
}
