// Same-origin calls to corral's native API. The API key (when the server has auth on) lives in
// localStorage and goes out as `Authorization: Bearer`; a 401 asks the page for a key and retries.

const KEY_ITEM = "corral.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export class Api {
  /** `askKey(message)` resolves to a new key (the user typed one) or null (gave up). */
  constructor(askKey) {
    this.askKey = askKey;
  }

  get key() {
    return localStorage.getItem(KEY_ITEM) || "";
  }

  set key(value) {
    if (value) localStorage.setItem(KEY_ITEM, value);
    else localStorage.removeItem(KEY_ITEM);
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.key) h.Authorization = `Bearer ${this.key}`;
    return h;
  }

  /** fetch with the key; on 401 ask for a key and try again (until the user gives up). */
  async fetch(path, init = {}) {
    let message = null;
    for (;;) {
      const res = await fetch(path, { ...init, headers: this.headers(init.headers), credentials: "same-origin" });
      if (res.status !== 401) return res;
      const text = await errorText(res);
      message = this.key ? `The key was rejected (${text}). Enter another key.` : "This server requires an API key.";
      const key = await this.askKey(message);
      if (!key) throw new ApiError(401, text);
      this.key = key;
    }
  }

  async json(path, body) {
    const init = body === undefined ? {} : {
      method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
    };
    const res = await this.fetch(path, init);
    if (!res.ok) throw new ApiError(res.status, await errorText(res));
    return res.json();
  }

  /** POST `body` and call `onItem` for every NDJSON line of the streamed answer. */
  async stream(path, body, onItem, signal) {
    const res = await this.fetch(path, {
      method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" }, signal,
    });
    if (!res.ok) throw new ApiError(res.status, await errorText(res));
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        if (line) emit(line, onItem);
      }
    }
    if (buffered.trim()) emit(buffered.trim(), onItem);
  }
}

function emit(line, onItem) {
  const item = JSON.parse(line);
  if (item.error) throw new ApiError(500, item.error);
  onItem(item);
}

async function errorText(res) {
  const text = await res.text();
  try {
    const body = JSON.parse(text);
    const err = body.error;
    return typeof err === "string" ? err : (err && err.message) || text;
  } catch {
    return text || res.statusText;
  }
}
