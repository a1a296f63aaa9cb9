// Conversations and settings kept in the browser (localStorage); nothing is stored on the server.

const CONVERSATIONS = "corral.conversations";
const SETTINGS = "corral.settings";

function read(item, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(item) || "null");
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

function newId() {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

export class Conversations {
  constructor() {
    this.items = read(CONVERSATIONS, []).filter((c) => c && Array.isArray(c.messages));
    this.currentId = this.items.length ? this.items[0].id : null;
  }

  get current() {
    return this.items.find((c) => c.id === this.currentId) || null;
  }

  create(model) {
    const conversation = { id: newId(), title: "New chat", model, messages: [], updated: Date.now() };
    this.items.unshift(conversation);
    this.currentId = conversation.id;
    this.save();
    return conversation;
  }

  ensure(model) {
    return this.current || this.create(model);
  }

  select(id) {
    if (this.items.some((c) => c.id === id)) this.currentId = id;
  }

  remove(id) {
    this.items = this.items.filter((c) => c.id !== id);
    if (this.currentId === id) this.currentId = this.items.length ? this.items[0].id : null;
    this.save();
  }

  touch(conversation) {
    const first = conversation.messages.find((m) => m.role === "user");
    if (first && conversation.title === "New chat") {
      conversation.title = first.content.trim().split("\n")[0].slice(0, 48) || "Image";
    }
    conversation.updated = Date.now();
    this.save();
  }

  save() {
    try {
      localStorage.setItem(CONVERSATIONS, JSON.stringify(this.items));
    } catch {
      // Quota exceeded (large images): drop image data from older conversations and retry once.
      for (const c of this.items.slice(1)) for (const m of c.messages) delete m.images;
      try { localStorage.setItem(CONVERSATIONS, JSON.stringify(this.items)); } catch { /* keep in memory */ }
    }
  }
}

export function loadSettings() {
  return { system: "", options: {}, think: true, ...read(SETTINGS, {}) };
}

export function saveSettings(settings) {
  localStorage.setItem(SETTINGS, JSON.stringify(settings));
}
