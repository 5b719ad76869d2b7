// Talking to the Sight API: the key (sessionStorage only: never a URL, never localStorage), JSON calls,
// the NDJSON stream, and request errors ({"detail": {"code", "message"}}) as ApiError.

const KEY = "sight.key";

export const apiKey = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorFrom(res) {
  let code = `http_${res.status}`;
  let message = res.statusText || "request failed";
  try {
    const body = await res.json();
    const detail = body && body.detail;
    if (detail && typeof detail === "object" && !Array.isArray(detail)) {
      code = detail.code || code;
      message = detail.message || message;
    } else if (body && typeof body.error === "string") {
      message = body.error;
    }
  } catch {
    // not JSON: the status says it all
  }
  return new ApiError(res.status, code, message);
}

// fetch() a path relative to the page (so a console behind a path prefix still works), with the key.
export async function request(path, { method = "GET", json, body, signal } = {}) {
  const key = apiKey.get();
  if (!key) throw new ApiError(0, "no_key", "Paste an API key above first.");
  const headers = { Authorization: `Bearer ${key}` };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const res = await fetch(path, { method, headers, body, signal, cache: "no-store" });
  if (!res.ok) throw await errorFrom(res);
  return res;
}

export async function getJSON(path, options) {
  return (await request(path, options)).json();
}

// One parsed object per line of an NDJSON response, as the lines arrive.
export async function* ndjson(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (line) yield JSON.parse(line);
    }
  }
  if (buffer.trim()) yield JSON.parse(buffer);
}

export function showError(el, err) {
  el.replaceChildren();
  if (err instanceof ApiError && err.status) {
    const code = document.createElement("code");
    code.textContent = err.code;
    el.append(code, ` (HTTP ${err.status}) ${err.message}`);
  } else {
    el.append(err instanceof Error ? err.message : String(err));
  }
  el.hidden = false;
}

export function clearError(el) {
  el.hidden = true;
  el.replaceChildren();
}
