"""The engine's Prometheus metrics, copied into Ray's: each node's metrics export port then
serves every replica's, tagged ``deployment``, ``replica`` and ``application`` by Serve.

Names keep llmserve's with ``:`` as ``_`` (Ray adds its ``ray_`` prefix):
``llmserve:num_requests_running`` -> ``ray_llmserve_num_requests_running``. Every value is a
gauge holding the engine's current value (counters included); histograms give ``_sum`` and
``_count``.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client.parser import text_string_to_metric_families
from ray.serve import metrics as serve_metrics

log = logging.getLogger("llmserve.ray")


class MetricsBridge:
    """Reads ``context.metrics()`` and sets one Serve gauge per sample name and label set."""

    def __init__(self, context) -> None:
        self.context = context
        self._gauges: dict[tuple[str, tuple[str, ...]], serve_metrics.Gauge] = {}

    def update(self) -> int:
        """Copy the current values once; returns how many samples were set."""
        body, _ = self.context.metrics()
        count = 0
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name.endswith(("_bucket", "_created")):
                    continue
                keys = tuple(sorted(sample.labels))
                key = (sample.name, keys)
                gauge = self._gauges.get(key)
                if gauge is None:
                    name = sample.name.replace(":", "_")
                    gauge = self._gauges[key] = serve_metrics.Gauge(
                        name, description=family.documentation or name, tag_keys=keys
                    )
                gauge.set(sample.value, tags=dict(sample.labels))
                count += 1
        return count

    async def run(self, interval: float) -> None:
        """Update every ``interval`` seconds until cancelled."""
        while True:
            try:
                self.update()
            except Exception:  # a failed copy must not end the replica
                log.exception("copying engine metrics into Ray failed")
            await asyncio.sleep(interval)
