// The dashboard: /v1/status and /metrics every second, one panel per served model.

import { call, el, notice } from "./api.js";
import { Plot } from "./plot.js";
import { bucketDelta, parseMetrics, quantile } from "./prom.js";

const P = "llmserve:";
const WINDOW = 30; // seconds of observations behind each TTFT / ITL percentile
const panels = new Map();
let timer = null;
let running = false;

function percent(v) {
  return `${(100 * (v || 0)).toFixed(1)}%`;
}

function tile(label, key) {
  const value = el("dd", { "data-key": key, text: "–" });
  return [el("dt", { text: label }), value];
}

function makePanel(name) {
  const id = `panel-${panels.size}`;
  const badge = el("span", { class: "badge" });
  const tiles = el("dl", { class: "tiles" },
    ...tile("Running", "running"), ...tile("Waiting", "waiting"), ...tile("KV cache", "kv"),
    ...tile("Prefix-cache hit rate", "hit"), ...tile("Requests done", "done"), ...tile("Tokens (prompt / completion)", "tokens"));
  const meter = el("meter", { min: 0, max: 1, value: 0, "aria-label": `KV cache use of ${name}` });
  const plots = {
    throughput: new Plot("Throughput (tok/s)", ["generation", "prompt"], "tok/s"),
    ttft: new Plot("Time to first token", ["p50", "p95"], "s"),
    itl: new Plot("Inter-token latency", ["p50", "p95"], "s"),
    queue: new Plot("Queue", ["waiting", "running"], ""),
  };
  const body = el("tbody");
  const table = el("table", { class: "requests" },
    el("caption", { text: "Requests in flight" }),
    el("thead", {}, el("tr", {}, ...["Request", "Phase", "Progress", "Tokens", "tok/s", "TTFT", "Cache"].map((h) => el("th", { scope: "col", text: h })))),
    body);
  const node = el("section", { class: "card model-panel", "aria-labelledby": id, "data-model": name },
    el("h2", { id }, name, " ", badge), tiles, meter,
    el("div", { class: "plots" }, ...Object.values(plots).map((p) => p.node)), table);
  const panel = { node, badge, tiles, meter, plots, body, samples: [] };
  document.getElementById("panels").append(node);
  panels.set(name, panel);
  return panel;
}

function setTile(panel, key, text) {
  panel.tiles.querySelector(`[data-key="${key}"]`).textContent = text;
}

function requestRow(r) {
  const bar = el("progress", { max: 1, value: r.progress || 0, "aria-label": `progress of ${r.request_id}` });
  const cells = [
    el("td", { class: "mono", text: r.request_id.slice(0, 18) }),
    el("td", { "data-phase": r.phase, text: r.phase }),
    el("td", {}, bar, ` ${Math.round(100 * (r.progress || 0))}%`),
    el("td", { text: `${r.prompt_tokens} + ${r.generated_tokens}${r.max_tokens ? " / " + r.max_tokens : ""}` }),
    el("td", { text: r.tokens_per_second ? r.tokens_per_second.toFixed(1) : "–" }),
    el("td", { text: r.ttft_s === null || r.ttft_s === undefined ? "–" : `${r.ttft_s.toFixed(2)} s` }),
    el("td", { text: r.cache_hit_type || "" }),
  ];
  return el("tr", {}, ...cells);
}

function update(panel, status, metrics, t) {
  panel.badge.textContent = `${status.kind} · ${status.status}`;
  if (status.kind !== "generate") {
    panel.node.classList.add("simple");
    return;
  }
  setTile(panel, "running", String(status.num_running));
  setTile(panel, "waiting", String(status.num_waiting));
  setTile(panel, "kv", percent(status.memory?.kv_cache_usage));
  setTile(panel, "hit", percent(status.cache?.hit_rate));
  setTile(panel, "done", String(status.total_requests_processed));
  setTile(panel, "tokens", `${status.total_prompt_tokens} / ${status.total_completion_tokens}`);
  panel.meter.value = status.memory?.kv_cache_usage || 0;
  const rows = (status.requests || []).map(requestRow);
  panel.body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 7, class: "muted", text: "none" }))]));
  if (!metrics) return;
  const sample = {
    t,
    gen: metrics[P + "generation_tokens_total"] || 0,
    prompt: metrics[P + "prompt_tokens_total"] || 0,
    ttft: metrics[P + "time_to_first_token_seconds_bucket"],
    itl: metrics[P + "inter_token_latency_seconds_bucket"],
  };
  const prev = panel.samples[panel.samples.length - 1];
  panel.samples.push(sample);
  while (panel.samples.length > 2 && panel.samples[1].t <= t - WINDOW) panel.samples.shift();
  const base = panel.samples[0];
  const rate = (a, b) => (prev && t > prev.t ? Math.max(0, (a - b) / (t - prev.t)) : null);
  panel.plots.throughput.add(t, [rate(sample.gen, prev?.gen), rate(sample.prompt, prev?.prompt)]);
  const ttft = bucketDelta(sample.ttft, base === sample ? null : base.ttft);
  const itl = bucketDelta(sample.itl, base === sample ? null : base.itl);
  panel.plots.ttft.add(t, [quantile(0.5, ttft), quantile(0.95, ttft)]);
  panel.plots.itl.add(t, [quantile(0.5, itl), quantile(0.95, itl)]);
  panel.plots.queue.add(t, [metrics[P + "num_requests_waiting"] ?? status.num_waiting, metrics[P + "num_requests_running"] ?? status.num_running]);
}

async function tick() {
  const t = performance.now() / 1000;
  try {
    const [status, text] = await Promise.all([call("v1/status"), call("metrics")]);
    const metrics = parseMetrics(typeof text === "string" ? text : "");
    for (const model of status.models || []) {
      const panel = panels.get(model.model) || makePanel(model.model);
      update(panel, model, metrics[model.model], t);
    }
    document.getElementById("panels").dataset.updated = String(Date.now());
  } catch (exc) {
    notice(`Dashboard: ${exc.message}`);
  }
  if (running) timer = setTimeout(tick, 1000);
}

export function startDashboard() {
  if (running) return;
  running = true;
  tick();
}

export function stopDashboard() {
  running = false;
  clearTimeout(timer);
}
