// The public API, as the page uses it: the key from sessionStorage, sent as a Bearer header
// (never in a URL); problem+json answers become ApiError with the problem's title and detail.

const KEY = "comfy-gateway.api-key";

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const clearKey = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.title = problem.title || `HTTP ${status}`;
    this.detail = problem.detail || "";
    this.problem = problem;
  }
}

function authHeaders(extra = {}) {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function problemOf(resp) {
  try {
    const body = await resp.json();
    if (body && typeof body === "object") return body;
  } catch {
    // not JSON: a proxy's page, say
  }
  return { title: `HTTP ${resp.status}`, detail: resp.statusText || "The server gave no explanation." };
}

export async function api(method, path, body, { form } = {}) {
  const init = { method, headers: authHeaders() };
  if (form) {
    init.body = form;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, { title: "Network error", detail: `The gateway did not answer (${err.message}).` });
  }
  if (!resp.ok) throw new ApiError(resp.status, await problemOf(resp));
  if (resp.status === 204) return null;
  return resp.json();
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body);

// Server-Sent Events over fetch: EventSource cannot send an Authorization header.
// Calls onEvent({event, id, data}) until the stream ends or `signal` aborts.
export async function sse(path, onEvent, { lastEventId, signal } = {}) {
  const headers = authHeaders({ Accept: "text/event-stream" });
  if (lastEventId !== undefined) headers["Last-Event-ID"] = String(lastEventId);
  const resp = await fetch(path, { headers, signal });
  if (!resp.ok) throw new ApiError(resp.status, await problemOf(resp));
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let fields = {};
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r?\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (fields.event) onEvent({ event: fields.event, id: fields.id ?? null, data: JSON.parse(fields.data ?? "null") });
        fields = {};
      } else if (!line.startsWith(":")) {
        const at = line.indexOf(":");
        const name = at < 0 ? line : line.slice(0, at);
        let val = at < 0 ? "" : line.slice(at + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        fields[name] = name === "data" && fields.data !== undefined ? `${fields.data}\n${val}` : val;
      }
    }
  }
}

// /v1/ws: every event of the caller's jobs (of every user's, for an admin: `all`). The key goes in
// the first frame, never the URL. Reconnects after a drop until close() is called.
export function liveEvents(onFrame, { all = false } = {}) {
  let socket = null;
  let closed = false;
  let timer = null;
  const open = () => {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}/v1/ws${all ? "?all=true" : ""}`);
    socket.addEventListener("open", () => socket.send(JSON.stringify({ api_key: getKey() })));
    socket.addEventListener("message", (msg) => {
      try {
        onFrame(JSON.parse(msg.data));
      } catch {
        // a frame we cannot read is skipped, not fatal
      }
    });
    socket.addEventListener("close", (ev) => {
      // 1008: the key was refused; retrying would only be refused again.
      if (!closed && ev.code !== 1008) timer = setTimeout(open, 2000);
    });
  };
  open();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      if (socket) socket.close();
    },
  };
}

// Every page of a paged list (bounded: the console shows at most `max` items).
export async function all(path, max = 500) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await get(`${path}${sep}limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}
