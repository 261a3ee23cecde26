// Prometheus text exposition: parsing, and quantiles of histogram buckets.

// {model_name: {metric name: value, or for a histogram's buckets: [[le, count], ...]}}
export function parseMetrics(text) {
  const byModel = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    const model = labels.model_name ?? "";
    const value = Number(m[3]);
    const entry = (byModel[model] ??= {});
    if (m[1].endsWith("_bucket") && labels.le !== undefined) {
      (entry[m[1]] ??= []).push([labels.le === "+Inf" ? Infinity : Number(labels.le), value]);
    } else if (labels.finished_reason !== undefined) {
      entry[`${m[1]}{${labels.finished_reason}}`] = value;
    } else {
      entry[m[1]] = value;
    }
  }
  return byModel;
}

// Bucket counts of `now` minus those of `before` (a histogram's observations in between).
export function bucketDelta(now, before) {
  if (!now) return null;
  return now.map(([le, count], i) => [le, count - (before ? before[i]?.[1] ?? 0 : 0)]);
}

// The q-quantile of cumulative buckets, interpolated linearly within a bucket (as PromQL's
// histogram_quantile); null when there are no observations.
export function quantile(q, buckets) {
  if (!buckets || !buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return lower; // beyond the last finite bound: report that bound
      const inBucket = count - below;
      return inBucket > 0 ? lower + (le - lower) * ((rank - below) / inBucket) : le;
    }
    lower = le;
    below = count;
  }
  return lower;
}
