"""EngineMetrics on its own: vLLM's names and buckets, a registry per instance, scrape-time gauges."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from llmserve.engine.metrics import TTFT_BUCKETS, EngineMetrics, build_1_2_5_buckets


def samples(metrics: EngineMetrics, stats_fn=None) -> dict[tuple[str, tuple], float]:
    text = metrics.render(stats_fn).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_events_feed_counters_and_histograms():
    metrics = EngineMetrics("m", max_model_len=100)
    metrics.on_prompt_tokens(7)
    metrics.on_generation_tokens(2)
    metrics.on_generation_tokens(1)
    metrics.on_request_finished("length", 7, 3, ttft_s=0.03, e2e_s=0.9, itl_s=[0.02, 0.2], queue_s=0.01)
    metrics.on_request_finished("stop", 4, 1, ttft_s=None, e2e_s=0.1, itl_s=[], queue_s=0.0)
    found = samples(metrics)
    assert value(found, "llmserve:prompt_tokens_total", model_name="m") == 7
    assert value(found, "llmserve:generation_tokens_total", model_name="m") == 3
    success = "llmserve:request_success_total"
    assert value(found, success, model_name="m", finished_reason="length") == 1
    assert value(found, success, model_name="m", finished_reason="stop") == 1
    assert value(found, success, model_name="m", finished_reason="abort") == 0
    assert value(found, "llmserve:time_to_first_token_seconds_count", model_name="m") == 1
    assert value(found, "llmserve:time_to_first_token_seconds_bucket", model_name="m", le="0.04") == 1
    assert value(found, "llmserve:time_to_first_token_seconds_bucket", model_name="m", le="0.02") == 0
    assert value(found, "llmserve:inter_token_latency_seconds_count", model_name="m") == 2
    assert value(found, "llmserve:e2e_request_latency_seconds_sum", model_name="m") == 1.0
    assert value(found, "llmserve:request_queue_time_seconds_count", model_name="m") == 2
    assert value(found, "llmserve:request_prompt_tokens_sum", model_name="m") == 11
    assert not any(name.endswith("_created") for name, _ in found)


def test_vllm_buckets():
    metrics = EngineMetrics("m")
    found = samples(metrics)
    ttft = sorted(
        float(dict(labels)["le"])
        for name, labels in found
        if name == "llmserve:time_to_first_token_seconds_bucket" and dict(labels)["le"] != "+Inf"
    )
    assert ttft == list(TTFT_BUCKETS) and ttft[0] == 0.001 and ttft[-1] == 2560.0
    assert build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert build_1_2_5_buckets(2048)[-1] == 2000


def test_gauges_are_read_from_stats_at_scrape_time():
    state = {"running": 1}

    def stats():
        return SimpleNamespace(
            num_running=state["running"],
            num_waiting=4,
            kv_cache_usage=0.5,
            prefix_cache_queries=30,
            prefix_cache_hits=12,
        )

    metrics = EngineMetrics("m", stats_fn=stats)
    assert value(samples(metrics), "llmserve:num_requests_running", model_name="m") == 1
    state["running"] = 3
    found = samples(metrics)
    assert value(found, "llmserve:num_requests_running", model_name="m") == 3
    assert value(found, "llmserve:num_requests_waiting", model_name="m") == 4
    assert value(found, "llmserve:kv_cache_usage_perc", model_name="m") == 0.5
    assert value(found, "llmserve:prefix_cache_queries_total", model_name="m") == 30
    assert value(found, "llmserve:prefix_cache_hits_total", model_name="m") == 12


def test_a_failing_stats_source_does_not_break_the_scrape():
    def broken():
        raise RuntimeError("engine died")

    found = samples(EngineMetrics("m"), broken)
    assert value(found, "llmserve:num_requests_running", model_name="m") == 0


def test_instances_have_separate_registries():
    first, second = EngineMetrics("same"), EngineMetrics("same")  # no "duplicated timeseries" error
    first.on_prompt_tokens(5)
    assert value(samples(first), "llmserve:prompt_tokens_total", model_name="same") == 5
    assert value(samples(second), "llmserve:prompt_tokens_total", model_name="same") == 0
