// The one door to the HTTP API: adds the API key, turns error responses into readable messages.

const KEY_STORAGE = "ner.apiKey";

export class ApiError extends Error {
  constructor(status, message, detail = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

// Relative to the page, so the UI also works when the gateway sits under a path prefix.
export function apiUrl(path, query = {}) {
  const url = new URL(path.replace(/^\//, ""), document.baseURI);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  return url;
}

// Field names as people read them on this page (the API's names otherwise, without dots).
const FIELD_NAMES = {
  text: "Text",
  texts: "Texts",
  documents: "Documents",
  file: "File",
  format: "Format",
  retention_days: "Keep results for",
  data: "Training data",
  "data.train": "Training data",
  "data.validation": "Validation data",
  "data.test": "Test data",
  train: "Training data",
  validation: "Validation data",
  epochs: "Epochs",
  learning_rate: "Learning rate",
  batch_size: "Batch size",
  base_model: "Base model",
  max_length: "Max length",
  source: "Model",
  sample_rate: "Share of live texts",
  model_version: "Version",
};

// pydantic's messages, reworded; others are kept as they are.
const MESSAGES = [
  [/^Field required$/i, "is required"],
  [/^String should have at least 1 character/i, "is empty"],
  [/^Input should be a valid (string|integer|number)/i, (m) => `should be a ${m[1] === "string" ? "text" : "number"}`],
  [/^List should have at least 1 item/i, "is empty"],
  [/^Extra inputs are not permitted/i, "is not expected"],
];

function fieldOf(loc) {
  // Union members (TrainData, str, ...) and the body are not fields people know.
  const parts = (loc || []).filter((p) => p !== "body" && p !== "query" && !/^[A-Z]|^(str|int|float|list|dict)$|^function-/.test(String(p)));
  const key = parts.filter((p) => typeof p === "string").join(".");
  return FIELD_NAMES[key] || FIELD_NAMES[parts[0]] || key.replaceAll("_", " ");
}

function plainMessage(msg) {
  for (const [pattern, replacement] of MESSAGES) {
    const match = pattern.exec(msg);
    if (match) return typeof replacement === "function" ? replacement(match) : replacement;
  }
  return msg.replace(/^Value error, /, "");
}

// Setting names and routes mean nothing to a person at this page: they are left out.
export function withoutInternals(text) {
  return String(text)
    .replace(/\s*\((?:NER_[A-Z0-9_]+)\)/g, "")
    .replace(/\s*\((?:POST|GET) \/[^)]*\)/g, "")
    .replace(/NER_MODEL/g, "the configured model")
    .replace(/NER_[A-Z0-9_]+/g, "a service setting");
}

// FastAPI's `detail` is a string, or for 422 a list of {loc, msg}: one line per field, in plain words.
export function formatDetail(detail) {
  if (typeof detail === "string") return withoutInternals(detail);
  if (Array.isArray(detail)) {
    const lines = new Map();
    for (const item of detail) {
      if (typeof item !== "object" || item === null) continue;
      const field = fieldOf(item.loc);
      if (!lines.has(field)) lines.set(field, plainMessage(String(item.msg || "")));
    }
    return [...lines].map(([field, msg]) => (field ? `${field} ${msg}` : msg)).join("; ");
  }
  if (detail && typeof detail === "object") {
    return withoutInternals(detail.message || detail.msg || detail.error || JSON.stringify(detail));
  }
  return String(detail);
}

// What to do next, by status: each message ends with it.
function nextStep(status, message, retry) {
  if (status === 401) {
    return getKey()
      ? "This API key is not valid or was revoked: paste a valid key at the top of the page."
      : "This needs an API key: paste yours in the box at the top of the page and press Save.";
  }
  if (status === 403) {
    const match = /scope '(\w+)'; this route needs '(\w+)'/.exec(message);
    return match
      ? `Your key may only use "${match[1]}"; this needs a key with the "${match[2]}" (or admin) scope. Save such a key at the top of the page.`
      : "Your key is not allowed to do this: save a key with more rights at the top of the page.";
  }
  if (status === 413) {
    const match = /is ([\d,]+); the limit is ([\d,]+)/.exec(message);
    if (match) return `Too large: ${match[1]} where at most ${match[2]} are accepted at once. Shorten it, or run it as a bulk job.`;
    return `Too large: ${withoutInternals(message)} Send less at once, or run it as a bulk job.`;
  }
  if (status === 422) return `Please check: ${message}.`.replace(/\.\.$/, ".");
  if (status === 429) return `Too many requests just now: wait ${retry ? `${retry} s` : "a moment"} and try again.`;
  if (status === 404) return `Not found: ${message}. It may have been deleted or expired; refresh the list.`;
  if (status === 409) return `${message}. Refresh and try again if it is still wanted.`.replace(/\.\./g, ".");
  if (status === 503) return `The service is not ready: ${message}. Try again in a moment.`;
  if (status >= 500) return `The service had a problem (${status}). Try again in a moment; if it keeps happening, tell an operator.`;
  return message;
}

export async function errorFrom(response) {
  const text = await response.text();
  let detail = null;
  let message = response.statusText || "request failed";
  if (text) {
    try {
      const body = JSON.parse(text);
      detail = body && typeof body === "object" && "detail" in body ? body.detail : body;
      message = formatDetail(detail);
    } catch {
      message = withoutInternals(text.slice(0, 300));
    }
  }
  const raw = typeof detail === "string" ? detail : message;
  const retry = response.headers.get("Retry-After");
  return new ApiError(response.status, nextStep(response.status, response.status === 413 ? raw : message, retry), detail);
}

/**
 * Call the API. `json` sends a JSON body, `body` anything fetch takes (FormData for uploads).
 * Returns the parsed JSON (or text); with `raw: true` the Response itself.
 */
export async function api(path, { method = "GET", query, json, body, headers = {}, raw = false, signal } = {}) {
  const sent = new Headers(headers);
  const key = getKey();
  if (key) sent.set("X-API-Key", key);
  let payload = body;
  if (json !== undefined) {
    sent.set("Content-Type", "application/json");
    payload = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(apiUrl(path, query), { method, headers: sent, body: payload, signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "Cannot reach the service: check the connection and try again.");
  }
  if (!response.ok) throw await errorFrom(response);
  if (raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// Lists may come bare or wrapped ({items: [...], next_cursor}); accept both.
export function itemsOf(page) {
  if (Array.isArray(page)) return page;
  if (page && Array.isArray(page.items)) return page.items;
  for (const name of ["jobs", "runs", "versions", "models", "entities", "results"]) {
    if (page && Array.isArray(page[name])) return page[name];
  }
  return [];
}

export function nextCursorOf(page) {
  return (page && !Array.isArray(page) && (page.next_cursor ?? page.cursor ?? null)) || null;
}
