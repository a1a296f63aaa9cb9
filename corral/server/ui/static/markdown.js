// A small, safe Markdown renderer for model answers. Every piece of source text is HTML-escaped
// before it is placed in the output; the only markup emitted is the renderer's own. Links are kept
// only for http(s) and mailto URLs. Code blocks get a tiny keyword highlighter.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const KEYWORDS = new Set((
  "abstract and as assert async await break case catch class const continue def default del delete do " +
  "elif else enum except export extends false final finally fn for from func function go if impl import " +
  "in instanceof interface is lambda let loop match mod module mut new nil none not null or package pass " +
  "private protected pub public raise return self select static struct super switch then this throw " +
  "trait true try type typeof use var void where while with yield True False None int float str bool " +
  "char long double string unsigned signed echo fi done esac local"
).split(" "));
const HASH_COMMENT = new Set(["python", "py", "sh", "bash", "shell", "zsh", "ruby", "rb", "yaml", "yml",
  "toml", "r", "perl", "pl", "dockerfile", "makefile", "make", "ini", "conf", "nginx", "powershell", "ps1"]);
const DASH_COMMENT = new Set(["sql", "lua", "haskell", "hs"]);

function tokenPattern(lang) {
  let comment = String.raw`\/\/[^\n]*|\/\*[\s\S]*?(?:\*\/|$)`;
  if (HASH_COMMENT.has(lang)) comment = String.raw`#[^\n]*`;
  else if (DASH_COMMENT.has(lang)) comment = String.raw`--[^\n]*|\/\*[\s\S]*?(?:\*\/|$)`;
  const string = String.raw`"(?:\\[\s\S]|[^"\\\n])*"?|'(?:\\[\s\S]|[^'\\\n])*'?|` + "`(?:\\\\[\\s\\S]|[^`\\\\])*`?";
  const number = String.raw`\b0x[\da-fA-F]+\b|\b\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?\b`;
  const word = String.raw`[A-Za-z_$][\w$]*`;
  return new RegExp(`(${comment})|(${string})|(${number})|(${word})`, "g");
}

function span(cls, text) {
  return `<span class="tok-${cls}">${escapeHtml(text)}</span>`;
}

/** Highlight `code` (plain text) for `lang`; returns escaped HTML. */
export function highlight(code, lang = "") {
  const re = tokenPattern(String(lang).toLowerCase());
  let out = "";
  let last = 0;
  for (const m of code.matchAll(re)) {
    out += escapeHtml(code.slice(last, m.index));
    const [text, comment, string, number, word] = m;
    if (comment) out += span("com", text);
    else if (string) out += span("str", text);
    else if (number) out += span("num", text);
    else if (word && KEYWORDS.has(word)) out += span("kw", text);
    else out += escapeHtml(text);
    last = m.index + text.length;
  }
  return out + escapeHtml(code.slice(last));
}

const SAFE_URL = /^(https?:\/\/|mailto:)/i;

/** Inline Markdown (code spans, links, bold, italic, strikethrough) on one block of text. */
export function inline(text) {
  const held = [];
  const hold = (html) => `\u0000${held.push(html) - 1}\u0000`;
  let s = String(text).replace(/\u0000/g, "");
  s = s.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, _ticks, code) => hold(`<code>${escapeHtml(code.trim())}</code>`));
  s = s.replace(/\[([^\]\n]+)\]\(([^()\s]+)(?:\s+"[^"\n]*")?\)/g, (whole, label, url) =>
    SAFE_URL.test(url) ? hold(link(url, inlineText(label))) : whole);
  s = s.replace(/\bhttps?:\/\/[^\s<>()"'`]+[^\s<>()"'`.,;:!?]/g, (url) => hold(link(url, escapeHtml(url))));
  return inlineText(s).replace(/\u0000(\d+)\u0000/g, (_, n) => held[Number(n)]);
}

function link(url, labelHtml) {
  return `<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer">${labelHtml}</a>`;
}

function inlineText(text) {
  return escapeHtml(text)
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
}

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^\s{0,3}>\s?/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

function startsBlock(line, next) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line)
    || (line.includes("|") && next !== undefined && TABLE_SEP.test(next) && next.includes("-"));
}

function fenced(lines, i, out) {
  const [, fence, lang] = lines[i].match(FENCE);
  const body = [];
  i += 1;
  while (i < lines.length && !lines[i].trim().startsWith(fence)) body.push(lines[i++]);
  const cls = lang ? ` class="lang-${escapeHtml(lang.toLowerCase())}"` : "";
  const label = lang ? `<span class="code-lang">${escapeHtml(lang)}</span>` : "";
  out.push(`<pre>${label}<code${cls}>${highlight(body.join("\n"), lang)}</code></pre>`);
  return i + 1;
}

function cells(row) {
  return row.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

function table(lines, i, out) {
  const head = cells(lines[i]);
  const rows = [];
  i += 2;
  while (i < lines.length && lines[i].includes("|") && lines[i].trim()) rows.push(cells(lines[i++]));
  const th = head.map((c) => `<th>${inline(c)}</th>`).join("");
  const body = rows.map((r) => `<tr>${head.map((_, k) => `<td>${inline(r[k] ?? "")}</td>`).join("")}</tr>`).join("");
  out.push(`<table><thead><tr>${th}</tr></thead><tbody>${body}</tbody></table>`);
  return i;
}

function list(lines, i, out) {
  const first = lines[i].match(ITEM);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const items = [];
  while (i < lines.length) {
    const m = lines[i].match(ITEM);
    if (m && m[1].length === indent && /\d/.test(m[2]) === ordered) {
      items.push([m[3]]);
      i += 1;
    } else if (lines[i].trim() && (lines[i].match(/^\s*/)[0].length > indent || !startsBlock(lines[i], lines[i + 1]))
               && items.length && !(m && m[1].length < indent)) {
      items[items.length - 1].push(lines[i].slice(Math.min(indent + 2, lines[i].match(/^\s*/)[0].length)));
      i += 1;
    } else if (!lines[i].trim() && lines[i + 1] !== undefined && /^\s+\S/.test(lines[i + 1])
               && lines[i + 1].match(/^\s*/)[0].length > indent) {
      items[items.length - 1].push("");
      i += 1;
    } else {
      break;
    }
  }
  const tag = ordered ? "ol" : "ul";
  const start = ordered && parseInt(first[2], 10) !== 1 ? ` start="${parseInt(first[2], 10)}"` : "";
  const html = items.map((parts) => `<li>${renderBlocks(parts.join("\n"), true)}</li>`).join("");
  out.push(`<${tag}${start}>${html}</${tag}>`);
  return i;
}

function renderBlocks(src, tight = false) {
  const lines = src.split("\n");
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) { i += 1; continue; }
    if (FENCE.test(line)) { i = fenced(lines, i, out); continue; }
    if ((m = line.match(HEADING))) {
      out.push(`<h${m[1].length}>${inline(m[2])}</h${m[1].length}>`);
      i += 1;
      continue;
    }
    if (RULE.test(line)) { out.push("<hr>"); i += 1; continue; }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(lines[i++].replace(QUOTE, ""));
      out.push(`<blockquote>${renderBlocks(quoted.join("\n"))}</blockquote>`);
      continue;
    }
    if (ITEM.test(line)) { i = list(lines, i, out); continue; }
    if (line.includes("|") && lines[i + 1] !== undefined && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      i = table(lines, i, out);
      continue;
    }
    const para = [line];
    i += 1;
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i], lines[i + 1])) para.push(lines[i++]);
    out.push(tight && out.length === 0
      ? para.map(inline).join("<br>")
      : `<p>${para.map(inline).join("<br>")}</p>`);
  }
  return out.join("");
}

/** Markdown source -> safe HTML. An unclosed code fence (a streaming answer) runs to the end. */
export function renderMarkdown(src) {
  return renderBlocks(String(src ?? "").replace(/\r\n?/g, "\n"));
}
