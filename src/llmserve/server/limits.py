"""Per-client limits on generating requests: --rate-limit (per minute) and --max-concurrent-requests.

A client is its API key when the server has one (``--rate-limit-by auto|key``), else its remote
address. An HTTP request is admitted once, at its first ``generate`` or ``embed``; a concurrency
slot is held until the response body has been sent (streams included).
"""

from __future__ import annotations

import collections
import math
import time
from typing import TYPE_CHECKING

from llmserve.errors import RateLimitError

if TYPE_CHECKING:
    from llmserve.config import Config

WINDOW_S = 60.0


class Slot:
    """One admitted request of a client; released exactly once."""

    __slots__ = ("_limits", "_client", "_done")

    def __init__(self, limits: ClientLimits, client: str) -> None:
        self._limits, self._client, self._done = limits, client, False
        limits.in_flight[client] += 1

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._limits.in_flight[self._client] -= 1

    def __del__(self) -> None:  # a response that was never sent
        self.release()


class ClientLimits:
    """Sliding-window request counts and in-flight counts per client."""

    def __init__(self, config: Config) -> None:
        self.per_minute = config.rate_limit
        self.max_concurrent = config.max_concurrent_requests
        self.by_key = config.rate_limit_by == "key" or (
            config.rate_limit_by == "auto" and bool(config.api_key)
        )
        self.recent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self.in_flight: collections.Counter[str] = collections.Counter()

    @property
    def active(self) -> bool:
        return self.per_minute is not None or self.max_concurrent is not None

    def admit(self) -> None:
        """Count the current HTTP request against its client (once); RateLimitError when over."""
        if not self.active:
            return
        from quart import has_request_context, request

        if not has_request_context():
            return
        # On the request object, not ``g``: under hypercorn requests can share one app context.
        current = request._get_current_object()
        if getattr(current, "llmserve_admitted", False):
            return
        current.llmserve_admitted = True
        client = self.client_of(current)
        self.check(client, time.monotonic())
        if self.max_concurrent is not None:
            current.llmserve_slot = Slot(self, client)

    def client_of(self, request) -> str:
        if self.by_key:
            header = request.headers.get("Authorization", "")
            key = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
            if key:
                return "key:" + key
        return "addr:" + (request.remote_addr or "unknown")

    def check(self, client: str, now: float) -> None:
        if self.max_concurrent is not None and self.in_flight[client] >= self.max_concurrent:
            raise RateLimitError(
                f"Too many concurrent requests: at most {self.max_concurrent} at once per client.",
                retry_after=1,
            )
        if self.per_minute is None:
            return
        recent = self.recent[client]
        while recent and now - recent[0] >= WINDOW_S:
            recent.popleft()
        if len(recent) >= self.per_minute:
            wait = math.ceil(WINDOW_S - (now - recent[0]))
            raise RateLimitError(
                f"Rate limit exceeded: {self.per_minute} requests per minute per client; retry in {wait} s.",
                retry_after=max(wait, 1),
            )
        recent.append(now)
