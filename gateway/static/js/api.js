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

// FastAPI's `detail` is a string, or for 422 a list of {loc, msg}: name the field, as the API does.
export function formatDetail(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        if (typeof item !== "object" || item === null) return String(item);
        const loc = (item.loc || []).filter((part) => part !== "body").join(".");
        return loc ? `${loc}: ${item.msg}` : item.msg;
      })
      .join("; ");
  }
  if (detail && typeof detail === "object") {
    return detail.message || detail.msg || detail.error || JSON.stringify(detail);
  }
  return String(detail);
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
      message = text.slice(0, 500);
    }
  }
  if (response.status === 401 && !getKey()) message += " (enter an API key at the top of the page)";
  const retry = response.headers.get("Retry-After");
  if (response.status === 429 && retry) message += ` (retry after ${retry} s)`;
  return new ApiError(response.status, `${response.status}: ${message}`, detail);
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
    throw new ApiError(0, `Cannot reach the service: ${error.message}`);
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
