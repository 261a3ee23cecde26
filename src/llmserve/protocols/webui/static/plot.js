// Small line plots on a canvas: time on x (the last `span` seconds), one or more series on y.

import { el } from "./api.js";

const COLORS = ["#1d4ed8", "#b45309", "#047857", "#9d174d"];

function niceMax(value) {
  if (!(value > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 5, 10]) if (value <= m * step) return m * step;
  return 10 * step;
}

function format(value, unit) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (unit === "s") return value < 1 ? `${(value * 1000).toFixed(0)} ms` : `${value.toFixed(2)} s`;
  if (Number.isInteger(value)) return String(value);
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

export class Plot {
  // title: shown and read out; names: the series; unit: "s" for seconds, else a plain suffix.
  constructor(title, names, unit = "", span = 300) {
    this.title = title;
    this.names = names;
    this.unit = unit;
    this.span = span;
    this.points = []; // [t seconds, [values...]]
    this.canvas = el("canvas", { width: 360, height: 120, role: "img", "aria-label": title });
    this.legend = el("div", { class: "legend" });
    this.node = el("figure", { class: "plot", "data-title": title }, el("figcaption", { text: title }), this.canvas, this.legend);
  }

  add(t, values) {
    this.points.push([t, values]);
    while (this.points.length && this.points[0][0] < t - this.span) this.points.shift();
    this.draw(t);
  }

  draw(now) {
    const ctx = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    const pad = { left: 44, right: 6, top: 6, bottom: 18 };
    ctx.clearRect(0, 0, width, height);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, width, height);
    let max = 0;
    for (const [, values] of this.points) for (const v of values) if (v > max) max = v;
    max = niceMax(max);
    const x = (t) => pad.left + ((t - (now - this.span)) / this.span) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / max) * (height - pad.top - pad.bottom);
    ctx.strokeStyle = "#d1d5db";
    ctx.fillStyle = "#374151";
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    for (const frac of [0, 0.5, 1]) {
      ctx.beginPath();
      ctx.moveTo(pad.left, y(max * frac));
      ctx.lineTo(width - pad.right, y(max * frac));
      ctx.stroke();
      ctx.fillText(format(max * frac, this.unit), 2, y(max * frac) + 4);
    }
    ctx.fillText(`-${Math.round(this.span / 60)} min`, pad.left, height - 4);
    ctx.fillText("now", width - pad.right - 22, height - 4);
    this.names.forEach((_, i) => {
      ctx.strokeStyle = COLORS[i % COLORS.length];
      ctx.lineWidth = 2;
      ctx.beginPath();
      let drawing = false;
      for (const [t, values] of this.points) {
        const v = values[i];
        if (v === null || v === undefined) {
          drawing = false;
          continue;
        }
        if (drawing) ctx.lineTo(x(t), y(v));
        else ctx.moveTo(x(t), y(v));
        drawing = true;
      }
      ctx.stroke();
    });
    const latest = this.points.length ? this.points[this.points.length - 1][1] : [];
    const unit = this.unit && this.unit !== "s" ? ` ${this.unit}` : "";
    this.legend.replaceChildren(
      ...this.names.map((name, i) =>
        el("span", { class: "series", style: `--c: ${COLORS[i % COLORS.length]}`, "data-series": name, "data-value": latest[i] ?? "" }, `${name}: ${format(latest[i], this.unit)}${unit}`),
      ),
    );
    this.node.dataset.points = String(this.points.length);
    const latestText = [...this.legend.children].map((c) => c.textContent).join(", ");
    this.canvas.setAttribute("aria-label", `${this.title}, last ${Math.round(this.span / 60)} minutes; now ${latestText}`);
  }
}
