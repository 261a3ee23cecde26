// The chat view: streamed multi-turn chat over /v1/chat/completions, kept in local storage.

import { ApiError, el, fillSelect, notice, stream } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const STORE = "llmserve.conversations";
const CURRENT = "llmserve.current";
const SETTINGS = "llmserve.settings";
const $ = (id) => document.getElementById(id);

let conversations = load(STORE, []);
let current = localStorage.getItem(CURRENT);
let controller = null;

function load(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch (_) {
    return fallback;
  }
}

function save() {
  localStorage.setItem(STORE, JSON.stringify(conversations));
  if (current) localStorage.setItem(CURRENT, current);
}

function conversation() {
  let conv = conversations.find((c) => c.id === current);
  if (!conv) {
    conv = { id: String(Date.now()) + Math.random().toString(16).slice(2, 6), title: "New chat", system: "", messages: [] };
    conversations.unshift(conv);
    current = conv.id;
  }
  return conv;
}

// --- rendering --------------------------------------------------------------------------------

function statsLine(msg) {
  const s = msg.stats;
  if (!s) return null;
  const parts = [];
  if (s.prompt_tokens !== undefined) parts.push(`${s.prompt_tokens} prompt`);
  parts.push(`${s.approx ? "~" : ""}${s.completion_tokens} completion tokens`);
  if (s.tokens_per_second) parts.push(`${s.tokens_per_second.toFixed(1)} tok/s`);
  if (s.ttft_s !== undefined) parts.push(`TTFT ${s.ttft_s.toFixed(2)} s`);
  if (msg.stopped) parts.push("stopped");
  else if (msg.finish_reason) parts.push(`finish: ${msg.finish_reason}`);
  return el("div", { class: "stats", text: parts.join(" · ") });
}

function messageNode(msg) {
  const node = el("article", { class: `msg ${msg.role}`, "aria-label": `${msg.role} message` });
  node.append(el("div", { class: "role", text: msg.model ? `${msg.role} · ${msg.model}` : msg.role }));
  if (msg.reasoning) {
    const details = el("details", { class: "reasoning" }, el("summary", { text: "Reasoning" }));
    details.append(el("div", { class: "reasoning-text", text: msg.reasoning }));
    node.append(details);
  }
  const content = el("div", { class: "content" });
  if (msg.role === "assistant") content.innerHTML = renderMarkdown(msg.content || "");
  else content.textContent = msg.content;
  node.append(content);
  if (msg.tool_calls && msg.tool_calls.length) {
    const calls = msg.tool_calls.map((c) => ({ ...c, function: { ...c.function, arguments: parsed(c.function.arguments) } }));
    node.append(el("div", { class: "role", text: "tool calls" }), el("pre", { class: "tool-calls", text: JSON.stringify(calls, null, 2) }));
  }
  if (msg.error) node.append(el("p", { class: "error", role: "alert", text: msg.error }));
  const stats = statsLine(msg);
  if (stats) node.append(stats);
  return node;
}

function parsed(text) {
  try {
    return JSON.parse(text);
  } catch (_) {
    return text;
  }
}

function renderList() {
  const list = $("conversations");
  list.replaceChildren(
    ...conversations.map((c) => {
      const open = el("button", { type: "button", class: "conv", text: c.title, "aria-current": c.id === current ? "true" : null });
      open.onclick = () => {
        if (controller) return;
        current = c.id;
        save();
        renderAll();
      };
      const drop = el("button", { type: "button", class: "drop", "aria-label": `Delete conversation ${c.title}`, text: "×" });
      drop.onclick = () => {
        if (controller && c.id === current) return;
        conversations = conversations.filter((x) => x !== c);
        if (current === c.id) current = conversations[0]?.id || null;
        save();
        renderAll();
      };
      return el("li", {}, open, drop);
    }),
  );
}

function renderMessages() {
  const conv = conversation();
  $("messages").replaceChildren(...conv.messages.map(messageNode));
  $("system-prompt").value = conv.system || "";
  scrollDown();
}

function scrollDown() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function renderAll() {
  conversation();
  renderList();
  renderMessages();
}

// --- sending ----------------------------------------------------------------------------------

function settings() {
  const num = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  return { temperature: num("temperature"), top_p: num("top-p"), max_tokens: num("max-tokens"), seed: num("seed"), tools: $("tools").value.trim(), tool_choice: $("tool-choice").value };
}

function requestBody(conv, model) {
  const s = settings();
  const messages = [];
  if (conv.system) messages.push({ role: "system", content: conv.system });
  for (const m of conv.messages) {
    if (m.error && !m.content) continue;
    const out = { role: m.role, content: m.content || "" };
    if (m.tool_calls && m.tool_calls.length) out.tool_calls = m.tool_calls;
    messages.push(out);
  }
  const body = { model, messages, stream: true, stream_options: { include_usage: true } };
  for (const key of ["temperature", "top_p", "max_tokens", "seed"]) if (s[key] !== undefined) body[key] = s[key];
  if (s.tools) {
    body.tools = JSON.parse(s.tools);
    body.tool_choice = s.tool_choice;
  }
  return body;
}

function applyDelta(msg, choice) {
  const delta = choice.delta || {};
  if (delta.content) msg.content += delta.content;
  const reasoning = delta.reasoning_content ?? delta.reasoning;
  if (reasoning) msg.reasoning = (msg.reasoning || "") + reasoning;
  for (const call of delta.tool_calls || []) {
    msg.tool_calls = msg.tool_calls || [];
    const slot = (msg.tool_calls[call.index ?? msg.tool_calls.length] ??= { id: "", type: "function", function: { name: "", arguments: "" } });
    if (call.id) slot.id = call.id;
    if (call.function?.name) slot.function.name += call.function.name;
    if (call.function?.arguments) slot.function.arguments += call.function.arguments;
  }
  if (choice.finish_reason) msg.finish_reason = choice.finish_reason;
  return Boolean(delta.content || reasoning || (delta.tool_calls && delta.tool_calls.length));
}

async function send(text) {
  const conv = conversation();
  const model = $("chat-model").value;
  if (!model) {
    notice("No chat model is served (or the API key is missing).");
    return;
  }
  let body;
  conv.system = $("system-prompt").value;
  conv.messages.push({ role: "user", content: text });
  try {
    body = requestBody(conv, model);
  } catch (exc) {
    conv.messages.pop();
    notice(`Tools: not valid JSON (${exc.message}).`);
    return;
  }
  if (conv.title === "New chat") conv.title = text.slice(0, 40);
  const msg = { role: "assistant", content: "", model };
  conv.messages.push(msg);
  save();
  renderList();
  renderMessages();
  const node = $("messages").lastElementChild;
  const start = performance.now();
  let first = null;
  let last = null;
  let pieces = 0;
  let usage = null;
  let shown = node;
  let pending = false;
  const redraw = () => {
    pending = false;
    const next = messageNode(msg);
    shown.replaceWith(next);
    shown = next;
    scrollDown();
  };
  const paint = () => {
    if (!pending) {
      pending = true;
      requestAnimationFrame(redraw);
    }
  };
  controller = new AbortController();
  busy(true);
  try {
    await stream("v1/chat/completions", body, (event) => {
      if (event.usage) usage = event.usage;
      for (const choice of event.choices || []) {
        if (applyDelta(msg, choice)) {
          const now = performance.now();
          first ??= now;
          last = now;
          pieces++;
        }
      }
      paint();
    }, controller.signal);
  } catch (exc) {
    if (exc.name === "AbortError") msg.stopped = true;
    else msg.error = exc instanceof ApiError ? exc.message : `Request failed: ${exc.message}`;
  } finally {
    controller = null;
    busy(false);
  }
  const completion = usage ? usage.completion_tokens : pieces;
  if (!msg.error || completion) msg.stats = { completion_tokens: completion, approx: !usage };
  if (msg.stats && usage) msg.stats.prompt_tokens = usage.prompt_tokens;
  if (msg.stats && first !== null) msg.stats.ttft_s = (first - start) / 1000;
  if (msg.stats && first !== null && last > first && completion > 1) msg.stats.tokens_per_second = (completion - 1) / ((last - first) / 1000);
  save();
  redraw();
  $("chat-input").focus();
}

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("chat-input").setAttribute("aria-busy", on ? "true" : "false");
  $("messages").setAttribute("aria-busy", on ? "true" : "false");
}

export function setChatModels(models) {
  fillSelect($("chat-model"), models.filter((m) => m.kind === "generate").map((m) => m.name), load(SETTINGS, {}).model);
}

export function initChat() {
  const stored = load(SETTINGS, {});
  for (const [id, key] of [["temperature", "temperature"], ["top-p", "top_p"], ["max-tokens", "max_tokens"], ["seed", "seed"], ["tools", "tools"], ["tool-choice", "tool_choice"]]) {
    if (stored[key] !== undefined) $(id).value = stored[key];
    $(id).addEventListener("change", () => {
      const now = load(SETTINGS, {});
      now[key] = $(id).value;
      localStorage.setItem(SETTINGS, JSON.stringify(now));
    });
  }
  $("chat-model").addEventListener("change", () => {
    localStorage.setItem(SETTINGS, JSON.stringify({ ...load(SETTINGS, {}), model: $("chat-model").value }));
  });
  $("system-prompt").addEventListener("change", () => {
    conversation().system = $("system-prompt").value;
    save();
  });
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text || controller) return;
    $("chat-input").value = "";
    send(text);
  });
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("new-chat").addEventListener("click", () => {
    if (controller) return;
    current = null;
    conversation();
    save();
    renderAll();
    $("chat-input").focus();
  });
  renderAll();
}
