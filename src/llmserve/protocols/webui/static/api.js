// Talking to the server: its public routes only, with the API key the user saved.

export const BASE = window.LLMSERVE_BASE || "/";
const KEY = "llmserve.apiKey";

export function apiKey() {
  return localStorage.getItem(KEY) || "";
}

export function setApiKey(value) {
  if (value) localStorage.setItem(KEY, value);
  else localStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function failure(response) {
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    message = (body.error && (body.error.message || body.error)) || body.message || message;
  } catch (_) { /* not JSON */ }
  if (response.status === 401) notice("This server needs an API key: enter it at the top and save it.");
  return new ApiError(response.status, `${response.status}: ${message}`);
}

// fetch under the base path; throws ApiError with the server's message on a non-2xx answer.
export async function call(path, { method = "GET", json, body, signal, raw = false } = {}) {
  const init = { method, signal, headers: headers(json !== undefined ? { "Content-Type": "application/json" } : {}) };
  if (json !== undefined) init.body = JSON.stringify(json);
  else if (body !== undefined) init.body = body;
  const response = await fetch(BASE + path, init);
  if (!response.ok) throw await failure(response);
  if (raw) return response;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// POST a streaming request; calls onEvent(parsed JSON) for each SSE data line until [DONE].
export async function stream(path, json, onEvent, signal) {
  const response = await call(path, { method: "POST", json, signal, raw: true });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        if (event.error) throw new ApiError(event.error.code || 500, event.error.message || "stream error");
        onEvent(event);
      }
    }
  }
}

// The served models by kind (generate, embed, transcribe), from /v1/status.
export async function servedModels() {
  const status = await call("v1/status");
  return (status.models || []).map((m) => ({ name: m.model, kind: m.kind }));
}

export function notice(text) {
  const el = document.getElementById("notice");
  el.textContent = text || "";
  el.hidden = !text;
}

export function fillSelect(select, names, keep) {
  const previous = keep || select.value;
  select.replaceChildren(...names.map((n) => new Option(n, n)));
  if (names.includes(previous)) select.value = previous;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}
