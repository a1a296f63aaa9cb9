// corral's chat page: model picker, streamed chat over /api/chat, conversations in localStorage.

import { Api } from "./api.js";
import { escapeHtml, renderMarkdown } from "./markdown.js";
import { humanBytes, PsPanel, PullPanel } from "./panels.js";
import { Conversations, loadSettings, saveSettings } from "./store.js";

const $ = (id) => document.getElementById(id);
const OPTION_FIELDS = ["temperature", "num_ctx", "seed", "num_predict"];

const state = {
  models: new Map(), // name -> {size, capabilities}
  conversations: new Conversations(),
  settings: loadSettings(),
  controller: null,
  pendingImages: [],
  editing: null, // index of the user message being edited
};

// The API key prompt ----------------------------------------------------------------------------
let keyRequest = null;

function askKey(message) {
  if (keyRequest) return keyRequest;
  keyRequest = new Promise((resolve) => {
    $("key-message").textContent = message;
    $("key-input").value = "";
    $("key-dialog").hidden = false;
    $("key-input").focus();
    const form = $("key-form");
    const submit = (event) => {
      event.preventDefault();
      form.removeEventListener("submit", submit);
      $("key-dialog").hidden = true;
      resolve($("key-input").value.trim() || null);
    };
    form.addEventListener("submit", submit);
  }).finally(() => { keyRequest = null; });
  return keyRequest;
}

const api = new Api(askKey);

function showError(err) {
  const box = $("error");
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
}

// Models ----------------------------------------------------------------------------------------
async function loadModels(prefer) {
  const { models } = await api.json("/api/tags");
  const shows = await Promise.all(models.map((m) => api.json("/api/show", { model: m.name }).catch(() => ({}))));
  state.models.clear();
  models.forEach((m, i) => state.models.set(m.name, { size: m.size, capabilities: shows[i].capabilities || [] }));
  const select = $("model");
  select.replaceChildren(...models.map((m) => {
    const option = document.createElement("option");
    const caps = state.models.get(m.name).capabilities.join(", ");
    option.value = m.name;
    option.textContent = `${m.name} · ${humanBytes(m.size)}${caps ? ` · ${caps}` : ""}`;
    return option;
  }));
  const wanted = prefer || state.conversations.current?.model || localStorage.getItem("corral.model");
  if (wanted && state.models.has(wanted)) select.value = wanted;
  select.dataset.loaded = String(models.length);
  modelChanged();
}

function capabilities() {
  return state.models.get($("model").value)?.capabilities || [];
}

function modelChanged() {
  const caps = capabilities();
  $("attach-label").hidden = !caps.includes("vision");
  $("think-label").hidden = !caps.includes("thinking");
  $("model-info").textContent = $("model").value ? caps.join(" · ") : "no models: pull one";
  if ($("model").value) localStorage.setItem("corral.model", $("model").value);
}

// Rendering -------------------------------------------------------------------------------------
function renderConversations() {
  const list = $("conversations");
  list.replaceChildren(...state.conversations.items.map((c) => {
    const li = document.createElement("li");
    li.className = c.id === state.conversations.currentId ? "active" : "";
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = c.title;
    open.addEventListener("click", () => { state.conversations.select(c.id); renderAll(); });
    const del = document.createElement("button");
    del.type = "button";
    del.className = "delete";
    del.title = "Delete conversation";
    del.textContent = "×";
    del.addEventListener("click", () => { state.conversations.remove(c.id); renderAll(); });
    li.append(open, del);
    return li;
  }));
}

function statsText(m) {
  const s = m.stats;
  if (!s) return "";
  const parts = [];
  if (s.ttft_ms != null) parts.push(`TTFT ${Math.round(s.ttft_ms)} ms`);
  if (s.eval_count && s.eval_duration) parts.push(`${(s.eval_count / (s.eval_duration / 1e9)).toFixed(1)} tokens/s`);
  if (s.eval_count) parts.push(`${s.eval_count} tokens`);
  if (s.prompt_eval_count) parts.push(`prompt ${s.prompt_eval_count}`);
  return parts.join(" · ");
}

function messageNode(m, index) {
  const div = document.createElement("div");
  div.className = `msg ${m.role}`;
  div.dataset.index = String(index);
  if (m.state) div.dataset.state = m.state;
  let html = "";
  if (m.role === "assistant") {
    if (m.thinking) {
      html += `<details class="thinking"><summary>Thinking</summary><div>${renderMarkdown(m.thinking)}</div></details>`;
    }
    html += `<div class="content">${renderMarkdown(m.content)}</div>`;
    for (const call of m.tool_calls || []) {
      const fn = call.function || {};
      html += `<div class="tool-call"><span class="tool-name">tool call: ${escapeHtml(fn.name || "")}</span>`
        + `<pre>${escapeHtml(JSON.stringify(fn.arguments ?? {}, null, 2))}</pre></div>`;
    }
    if (m.error) html += `<div class="error">${escapeHtml(m.error)}</div>`;
    if (m.state === "stopped") html += `<div class="muted">stopped</div>`;
    html += `<div class="stats">${escapeHtml(statsText(m))}</div>`;
  } else {
    html += `<div class="content plain">${escapeHtml(m.content)}</div>`;
    for (const b64 of m.images || []) html += `<img class="thumb" alt="attached image" src="data:image/png;base64,${escapeHtml(b64)}">`;
    if (m.role === "user") html += `<button type="button" class="edit">Edit</button>`;
  }
  div.innerHTML = html;
  div.querySelector(".edit")?.addEventListener("click", () => startEdit(index));
  return div;
}

function renderMessages() {
  const conversation = state.conversations.current;
  const box = $("messages");
  box.replaceChildren(...(conversation ? conversation.messages.map(messageNode) : []));
  box.scrollTop = box.scrollHeight;
}

function renderAll() {
  renderConversations();
  renderMessages();
  const model = state.conversations.current?.model;
  if (model && state.models.has(model)) { $("model").value = model; modelChanged(); }
}

let frame = 0;
function scheduleRender(conversation, index) {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    if (state.conversations.current !== conversation) return;
    const old = $("messages").querySelector(`.msg[data-index="${index}"]`);
    const node = messageNode(conversation.messages[index], index);
    if (old) old.replaceWith(node); else $("messages").append(node);
    $("messages").scrollTop = $("messages").scrollHeight;
  });
}

// Chat ------------------------------------------------------------------------------------------
function readOptions() {
  const options = {};
  for (const name of OPTION_FIELDS) {
    const raw = $(`opt-${name}`).value.trim();
    if (raw !== "" && Number.isFinite(Number(raw))) options[name] = Number(raw);
  }
  return options;
}

function persistSettings() {
  state.settings = { system: $("system").value, options: readOptions(), think: $("think").checked };
  saveSettings(state.settings);
}

function wireMessages(conversation) {
  const out = [];
  if (state.settings.system.trim()) out.push({ role: "system", content: state.settings.system });
  for (const m of conversation.messages) {
    const w = { role: m.role, content: m.content || "" };
    if (m.images?.length) w.images = m.images;
    if (m.tool_calls?.length) w.tool_calls = m.tool_calls;
    out.push(w);
  }
  return out;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("regenerate").disabled = busy;
  $("stop").hidden = !busy;
}

async function runChat(conversation) {
  const model = $("model").value;
  if (!model) { showError("pick a model first (or pull one)"); return; }
  conversation.model = model;
  const body = { model, messages: wireMessages(conversation), stream: true, options: state.settings.options };
  if (capabilities().includes("thinking")) body.think = state.settings.think;
  const answer = { role: "assistant", content: "", state: "streaming" };
  conversation.messages.push(answer);
  const index = conversation.messages.length - 1;
  renderMessages();
  state.controller = new AbortController();
  setBusy(true);
  showError(null);
  const started = performance.now();
  try {
    await api.stream("/api/chat", body, (item) => {
      const msg = item.message || {};
      if (!answer.stats) answer.stats = { ttft_ms: performance.now() - started };
      answer.content += msg.content || "";
      if (msg.thinking) answer.thinking = (answer.thinking || "") + msg.thinking;
      if (msg.tool_calls?.length) answer.tool_calls = [...(answer.tool_calls || []), ...msg.tool_calls];
      if (item.done) {
        Object.assign(answer.stats, pick(item, ["eval_count", "eval_duration", "prompt_eval_count", "total_duration"]));
        answer.done_reason = item.done_reason;
      }
      scheduleRender(conversation, index);
    }, state.controller.signal);
    answer.state = "done";
  } catch (err) {
    if (err.name === "AbortError") answer.state = "stopped";
    else { answer.state = "error"; answer.error = String(err.message || err); }
  } finally {
    state.controller = null;
    setBusy(false);
    state.conversations.touch(conversation);
    renderConversations();
    cancelAnimationFrame(frame);
    frame = 0;
    if (state.conversations.current === conversation) renderMessages();
    ps.refresh();
  }
}

function pick(obj, keys) {
  return Object.fromEntries(keys.filter((k) => obj[k] != null).map((k) => [k, obj[k]]));
}

async function send() {
  const text = $("prompt").value;
  if (!text.trim() && !state.pendingImages.length) return;
  persistSettings();
  const conversation = state.conversations.ensure($("model").value);
  if (state.editing !== null) {
    conversation.messages.splice(state.editing);
    state.editing = null;
  }
  const message = { role: "user", content: text };
  if (state.pendingImages.length) message.images = state.pendingImages.map((i) => i.b64);
  conversation.messages.push(message);
  $("prompt").value = "";
  state.pendingImages = [];
  renderAttachments();
  state.conversations.touch(conversation);
  renderConversations();
  await runChat(conversation);
}

async function regenerate() {
  const conversation = state.conversations.current;
  if (!conversation || state.controller) return;
  while (conversation.messages.length && conversation.messages.at(-1).role === "assistant") conversation.messages.pop();
  if (!conversation.messages.length) return;
  persistSettings();
  await runChat(conversation);
}

function startEdit(index) {
  const conversation = state.conversations.current;
  if (!conversation || state.controller) return;
  const message = conversation.messages[index];
  state.editing = index;
  $("prompt").value = message.content;
  state.pendingImages = (message.images || []).map((b64) => ({ b64 }));
  renderAttachments();
  $("prompt").focus();
}

// Images ----------------------------------------------------------------------------------------
function renderAttachments() {
  $("attachments").replaceChildren(...state.pendingImages.map((img, i) => {
    const wrap = document.createElement("span");
    wrap.className = "attachment";
    const el = document.createElement("img");
    el.className = "thumb";
    el.alt = "attachment";
    el.src = `data:image/png;base64,${img.b64}`;
    const del = document.createElement("button");
    del.type = "button";
    del.textContent = "×";
    del.addEventListener("click", () => { state.pendingImages.splice(i, 1); renderAttachments(); });
    wrap.append(el, del);
    return wrap;
  }));
}

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// Wiring ----------------------------------------------------------------------------------------
const ps = new PsPanel(api, $("ps-table").querySelector("tbody"), showError);

function wire() {
  $("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send(); }
  });
  $("stop").addEventListener("click", () => state.controller?.abort());
  $("regenerate").addEventListener("click", regenerate);
  $("new-chat").addEventListener("click", () => { state.conversations.create($("model").value); renderAll(); });
  $("model").addEventListener("change", modelChanged);
  $("ps-refresh").addEventListener("click", () => ps.refresh());
  $("settings-toggle").addEventListener("click", () => {
    $("settings").hidden = !$("settings").hidden;
    $("settings-toggle").setAttribute("aria-expanded", String(!$("settings").hidden));
  });
  $("settings").addEventListener("change", persistSettings);
  $("key-change").addEventListener("click", async () => {
    const key = await askKey("Enter an API key for this server.");
    if (key) { api.key = key; start(); }
  });
  $("attach").addEventListener("change", async (event) => {
    for (const file of event.target.files) state.pendingImages.push({ b64: await readImage(file) });
    event.target.value = "";
    renderAttachments();
  });
  new PullPanel(api, {
    form: $("pull-form"), name: $("pull-name"), progress: $("pull-progress"),
    status: $("pull-status"), button: $("pull-button"),
  }, (name) => loadModels(name), showError);
}

function restoreSettings() {
  $("system").value = state.settings.system || "";
  for (const name of OPTION_FIELDS) $(`opt-${name}`).value = state.settings.options[name] ?? "";
  $("think").checked = state.settings.think !== false;
}

async function start() {
  try {
    await loadModels();
    showError(null);
    ps.refresh();
  } catch (err) {
    showError(err);
  }
  renderAll();
}

restoreSettings();
wire();
renderAll();
start();
