"""monitor_metrics: the engines' Prometheus metrics (``ProtocolContext.metrics``) summed up."""

from __future__ import annotations

import time
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from llmserve.api import ProtocolContext

PREFIX = "llmserve:"


class Latency(BaseModel):
    """Means over the finished requests (seconds); None before the first."""

    time_to_first_token_s: float | None
    inter_token_s: float | None
    end_to_end_s: float | None
    queue_s: float | None


class ModelMetrics(BaseModel):
    """One generative model's engine."""

    model: str
    requests_running: int
    requests_waiting: int = Field(description="Requests queued for a batch slot or KV cache room.")
    kv_cache_usage: float = Field(description="Fraction of the KV cache blocks in use (0-1).")
    requests_finished: int
    prompt_tokens_total: int
    generation_tokens_total: int
    generation_tokens_per_s: float = Field(description="Output tokens per second since the previous call.")
    prompt_tokens_per_s: float = Field(description="Prompt tokens per second since the previous call.")
    average_generation_tokens_per_s: float = Field(description="Output tokens per second since start.")
    latency: Latency


class MetricsResult(BaseModel):
    """Every generative model's numbers, read now."""

    uptime_s: float
    interval_s: float = Field(description="Seconds since the previous monitor_metrics call (or start).")
    models: list[ModelMetrics]


def read_samples(text: str) -> dict[str, dict[str, float]]:
    """model_name -> metric sample name (prefix dropped) -> value, summed over other labels."""
    found: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            model = sample.labels.get("model_name")
            if model is not None and "le" not in sample.labels:
                found[model][sample.name.removeprefix(PREFIX)] += sample.value
    return found


def _mean(samples: dict[str, float], name: str) -> float | None:
    count = samples.get(f"{name}_count", 0.0)
    return samples.get(f"{name}_sum", 0.0) / count if count else None


class MetricsWatch:
    """Remembers the previous reading, so throughput is a rate over the interval between calls."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[str, tuple[float, float]]] | None = None

    def read(self, ctx: ProtocolContext) -> MetricsResult:
        now = time.time()
        text, _ = ctx.metrics()
        samples = read_samples(text.decode())
        since, before = self._last or (float(ctx.created), {})
        interval = max(now - since, 1e-9)
        uptime = max(now - ctx.created, 1e-9)
        models = []
        totals: dict[str, tuple[float, float]] = {}
        for served in ctx.models:
            if served.engine is None:
                continue
            s = samples.get(served.name, {})
            prompt, generated = s.get("prompt_tokens_total", 0.0), s.get("generation_tokens_total", 0.0)
            totals[served.name] = (prompt, generated)
            prompt_before, generated_before = before.get(served.name, (0.0, 0.0))
            models.append(
                ModelMetrics(
                    model=served.name,
                    requests_running=int(s.get("num_requests_running", 0)),
                    requests_waiting=int(s.get("num_requests_waiting", 0)),
                    kv_cache_usage=s.get("kv_cache_usage_perc", 0.0),
                    requests_finished=int(s.get("request_success_total", 0)),
                    prompt_tokens_total=int(prompt),
                    generation_tokens_total=int(generated),
                    generation_tokens_per_s=round((generated - generated_before) / interval, 3),
                    prompt_tokens_per_s=round((prompt - prompt_before) / interval, 3),
                    average_generation_tokens_per_s=round(generated / uptime, 3),
                    latency=Latency(
                        time_to_first_token_s=_mean(s, "time_to_first_token_seconds"),
                        inter_token_s=_mean(s, "inter_token_latency_seconds"),
                        end_to_end_s=_mean(s, "e2e_request_latency_seconds"),
                        queue_s=_mean(s, "request_queue_time_seconds"),
                    ),
                )
            )
        self._last = (now, totals)
        return MetricsResult(uptime_s=round(uptime, 3), interval_s=round(interval, 3), models=models)
