// "Try it": one text through POST /predict/, its entities drawn inline.

import { api } from "./api.js";
import { renderEntities, renderLegend } from "./highlight.js";
import { submitDocuments } from "./jobs.js";
import { $, el, fmtNumber, fmtScore, modelLabel, setBusy, showError } from "./util.js";

const EXAMPLE = "Google was founded by Larry Page and Sergey Brin in California.";

function renderTable(tbody, entities) {
  // A whole article can hold thousands of entities; the table shows the first 1,000.
  tbody.replaceChildren(
    ...entities.slice(0, 1000).map((e) =>
      el(
        "tr",
        {},
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
      await submitDocuments([{ id: "pasted-text", text }]);
    } catch (error) {
      showError(errorBox, error);
    }
  });
  errorBox.append(" ", button);
}

export function init() {
  const form = $("#try-form");
  const input = $("#try-text");
  const count = $("#try-count");
  const errorBox = $("#try-error");
  const result = $("#try-result");
  let inFlight = null;

  const updateCount = () => {
    count.textContent = input.value ? `${fmtNumber([...input.value].length)} characters` : "";
  };
  input.addEventListener("input", updateCount);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  $("#try-example").addEventListener("click", () => {
    input.value = EXAMPLE;
    updateCount();
    form.requestSubmit();
  });
  $("#try-clear").addEventListener("click", () => {
    input.value = "";
    updateCount();
    result.hidden = true;
    showError(errorBox, null);
    input.focus();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value;
    inFlight?.abort();
    const controller = new AbortController();
    inFlight = controller;
    showError(errorBox, null);
    setBusy($("#try-run"), $("#try-busy"), true);
    const started = performance.now();
    try {
      // Sent as typed: an empty text gets the API's own 422 message.
      const answer = await api("/predict/", { method: "POST", json: { text }, signal: controller.signal });
      const ms = performance.now() - started;
      const entities = answer.entities || [];
      renderEntities($("#try-output"), text, entities);
      renderLegend($("#try-legend"), entities);
      renderTable($("#try-table tbody"), entities);
      $("#try-meta").replaceChildren(
        `${fmtNumber(entities.length)} entities · answered by `,
        el("b", { id: "try-version" }, modelLabel(answer.model_version)),
        ` · ${fmtNumber(ms)} ms`,
      );
      result.hidden = false;
    } catch (error) {
      if (error.name !== "AbortError") showError(errorBox, error);
      if (error.status === 413) offerJob(errorBox, text);
    } finally {
      if (inFlight === controller) {
        inFlight = null;
        setBusy($("#try-run"), $("#try-busy"), false);
      }
    }
  });
  updateCount();
}
