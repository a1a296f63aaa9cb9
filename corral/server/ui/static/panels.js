// Side panels: pulling a model with a progress bar (/api/pull) and the loaded models (/api/ps).

export function humanBytes(n) {
  if (!n && n !== 0) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

/** Where a loaded model runs, as `ollama ps` says it ("100% GPU", "48%/52% CPU/GPU"), plus device names. */
export function processor(model) {
  const size = Number(model.size) || 0;
  const vram = Number(model.size_vram) || 0;
  let where = "100% CPU";
  if (size > 0 && vram >= size) where = "100% GPU";
  else if (vram > 0 && size > 0) {
    const gpu = Math.round((vram / size) * 100);
    where = `${100 - gpu}%/${gpu}% CPU/GPU`;
  }
  const devices = model.devices || (model.device ? [model.device] : []);
  const names = devices.map((d) => (typeof d === "string" ? d : d.name || d.id || "")).filter(Boolean);
  return names.length ? `${where} (${names.join(", ")})` : where;
}

function until(iso) {
  const ms = Date.parse(iso) - Date.now();
  if (!Number.isFinite(ms)) return "";
  if (ms > 1000 * 3600 * 24 * 365) return "Forever";
  if (ms < 60_000) return `${Math.max(0, Math.round(ms / 1000))} s`;
  return `${Math.round(ms / 60_000)} min`;
}

export class PsPanel {
  constructor(api, body, onError) {
    this.api = api;
    this.body = body;
    this.onError = onError;
  }

  async refresh() {
    try {
      const { models } = await this.api.json("/api/ps");
      this.body.replaceChildren(...models.map((m) => row([
        m.name, humanBytes(m.size), processor(m), String(m.context_length ?? ""), until(m.expires_at),
      ])));
      if (!models.length) this.body.replaceChildren(row(["nothing loaded", "", "", "", ""]));
    } catch (err) {
      this.onError(err);
    }
  }
}

function row(values) {
  const tr = document.createElement("tr");
  for (const v of values) {
    const td = document.createElement("td");
    td.textContent = v;
    tr.append(td);
  }
  return tr;
}

export class PullPanel {
  constructor(api, elements, onDone, onError) {
    this.api = api;
    this.el = elements;
    this.onDone = onDone;
    this.onError = onError;
    elements.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.pull(elements.name.value.trim());
    });
  }

  async pull(name) {
    if (!name) return;
    const { progress, status, button } = this.el;
    button.disabled = true;
    progress.hidden = false;
    progress.removeAttribute("value");
    status.textContent = `pulling ${name}…`;
    let last = null;
    try {
      await this.api.stream("/api/pull", { model: name, stream: true }, (item) => {
        last = item;
        if (item.total) {
          progress.max = item.total;
          progress.value = item.completed || 0;
          const pct = Math.floor(((item.completed || 0) / item.total) * 100);
          status.textContent = `${item.status} ${pct}% (${humanBytes(item.completed || 0)} / ${humanBytes(item.total)})`;
        } else {
          status.textContent = item.status || "";
        }
      });
      if (last && last.status === "success") {
        progress.max = 1;
        progress.value = 1;
        status.textContent = `pulled ${name}`;
        status.dataset.state = "success";
        await this.onDone(name);
      }
    } catch (err) {
      status.textContent = "";
      status.dataset.state = "error";
      this.onError(err);
    } finally {
      button.disabled = false;
    }
  }
}
