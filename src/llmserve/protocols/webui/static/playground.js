// The playground: embeddings similarity, tokenization and transcription.

import { call, el, fillSelect } from "./api.js";

const $ = (id) => document.getElementById(id);

// --- embeddings ---------------------------------------------------------------------------------

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (Math.sqrt(na * nb) || 1);
}

function luminance([r, g, b]) {
  const lin = (c) => ((c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

// A cell's colours: light to dark blue with the similarity, text black or white for contrast.
function cellColors(value) {
  const t = Math.max(0, Math.min(1, value));
  const lo = [248, 250, 252], hi = [30, 58, 138];
  const bg = lo.map((c, i) => Math.round(c + (hi[i] - c) * t));
  return { background: `rgb(${bg.join(",")})`, color: luminance(bg) > 0.179 ? "#000000" : "#ffffff" };
}

async function compare(event) {
  event.preventDefault();
  const texts = $("emb-texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const out = $("emb-result");
  if (texts.length < 2) {
    out.replaceChildren(el("p", { role: "alert", text: "Give at least two texts, one per line." }));
    return;
  }
  try {
    const body = await call("v1/embeddings", { method: "POST", json: { model: $("emb-model").value, input: texts } });
    const vectors = body.data.sort((a, b) => a.index - b.index).map((d) => d.embedding);
    const head = el("tr", {}, el("td"), ...texts.map((t, i) => el("th", { scope: "col", title: t, text: `#${i + 1}` })));
    const rows = texts.map((t, i) =>
      el("tr", {}, el("th", { scope: "row", title: t, text: `#${i + 1} ${t.slice(0, 30)}` }),
        ...vectors.map((v, j) => {
          const sim = cosine(vectors[i], v);
          const { background, color } = cellColors(sim);
          return el("td", { class: "heat", style: `background:${background};color:${color}`, "data-sim": sim.toFixed(4), text: sim.toFixed(2) });
        })));
    out.replaceChildren(el("table", { class: "heatmap" }, el("caption", { text: `Cosine similarity (${body.model}, ${vectors[0].length} dimensions)` }), el("thead", {}, head), el("tbody", {}, ...rows)));
  } catch (exc) {
    out.replaceChildren(el("p", { role: "alert", class: "error", text: exc.message }));
  }
}

// --- tokenize -----------------------------------------------------------------------------------

let byteDecoder = null;

// GPT-2's byte-level alphabet: the printable character each byte is written as, reversed.
function bytesOf(token) {
  if (!byteDecoder) {
    const bs = [];
    for (let i = 33; i <= 126; i++) bs.push(i);
    for (let i = 161; i <= 172; i++) bs.push(i);
    for (let i = 174; i <= 255; i++) bs.push(i);
    const cs = [...bs];
    let n = 0;
    for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
    byteDecoder = new Map(cs.map((c, i) => [String.fromCharCode(c), bs[i]]));
  }
  const bytes = [];
  for (const ch of token) {
    const b = byteDecoder.get(ch);
    if (b === undefined) return null;
    bytes.push(b);
  }
  return new Uint8Array(bytes);
}

// The text each token stands for: byte-level BPE, SentencePiece or WordPiece spellings.
export function tokenTexts(strs) {
  if (strs.some((s) => s.includes("\u2581"))) return strs.map((s) => s.replace(/\u2581/g, " "));
  const byteLevel = strs.some((s) => /[\u0100-\u0143]/.test(s)) || !strs.some((s) => s.startsWith("##"));
  if (byteLevel) {
    const decoder = new TextDecoder("utf-8");
    return strs.map((s) => {
      const bytes = bytesOf(s);
      return bytes ? decoder.decode(bytes, { stream: true }) : s;
    });
  }
  return strs.map((s, i) => (s.startsWith("##") ? s.slice(2) : (i ? " " : "") + s));
}

async function tokenize(event) {
  event.preventDefault();
  const out = $("tok-result");
  try {
    const body = await call("tokenize", { method: "POST", json: { model: $("tok-model").value, prompt: $("tok-text").value, add_special_tokens: false, return_token_strs: true } });
    const texts = tokenTexts(body.token_strs || body.tokens.map(String));
    const spans = texts.map((text, i) =>
      el("span", { class: `tok c${i % 5}`, title: `id ${body.tokens[i]}: ${JSON.stringify(body.token_strs?.[i] ?? "")}`, "data-id": body.tokens[i], text }));
    out.replaceChildren(el("p", { class: "muted", text: `${body.count} tokens (max_model_len ${body.max_model_len})` }), el("div", { class: "tokens", "aria-label": "Tokens" }, ...spans));
  } catch (exc) {
    out.replaceChildren(el("p", { role: "alert", class: "error", text: exc.message }));
  }
}

// --- transcription ------------------------------------------------------------------------------

async function transcribe(event) {
  event.preventDefault();
  const out = $("stt-result");
  const file = $("stt-file").files[0];
  if (!file) {
    out.replaceChildren(el("p", { role: "alert", text: "Choose an audio file first." }));
    return;
  }
  const form = new FormData();
  form.append("model", $("stt-model").value);
  form.append("file", file);
  form.append("response_format", "json");
  out.replaceChildren(el("p", { class: "muted", text: "Transcribing…" }));
  try {
    const body = await call("v1/audio/transcriptions", { method: "POST", body: form });
    out.replaceChildren(el("blockquote", { class: "transcript", text: body.text }));
  } catch (exc) {
    out.replaceChildren(el("p", { role: "alert", class: "error", text: exc.message }));
  }
}

export function setPlaygroundModels(models) {
  const names = (kind) => models.filter((m) => m.kind === kind).map((m) => m.name);
  fillSelect($("emb-model"), names("embed"));
  fillSelect($("tok-model"), [...names("generate"), ...names("embed")]);
  fillSelect($("stt-model"), names("transcribe"));
  for (const [form, kind, what] of [["emb-form", "embed", "embedding"], ["stt-form", "transcribe", "speech-to-text"]]) {
    const none = !names(kind).length;
    $(form).hidden = none;
    const note = $(form).parentElement.querySelector(".none");
    if (none && !note) $(form).before(el("p", { class: "none muted", text: `No ${what} model is served.` }));
    if (!none && note) note.remove();
  }
}

export function initPlayground() {
  $("emb-form").addEventListener("submit", compare);
  $("tok-form").addEventListener("submit", tokenize);
  $("stt-form").addEventListener("submit", transcribe);
}
