"""``PrefixKeyRouter``: the request router of llmserve deployments (Ray Serve's request router API).

Requests that carry the same ``X-Prefix-Key`` header (a conversation id, a tenant's system
prompt...) go to the same replica, whose prefix cache then holds their shared prefix: the replicas
are ranked by rendezvous hashing of the key, so a replica that leaves or joins moves only its own
share of keys, and a preferred replica that is full (``max_ongoing_requests``) hands over to the
next. Requests without the header go to the less loaded of two replicas picked at random among
all of them; unlike Serve's default router it has no preference for replicas on the proxy's own
node, which behind one proxy would fill that node's replica before any other took a request. A
replica whose queue length the router does not know (never probed, or its entry timed out) is
ranked before the others, so it is probed rather than passed over for one whose length is cached:
in a burst, that would send every request to the one replica the router happened to know.

The prompt itself cannot be hashed here: Ray's proxy routes an HTTP request before its body is
read (the replica pulls the body afterwards), so the router sees only the ASGI scope: path and
headers (the proxy hands it over pickled, as it sends it to the replica).
"""

from __future__ import annotations

import hashlib
import pickle
import random

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

HEADER = b"x-prefix-key"


def prefix_key(pending_request: PendingRequest | None) -> bytes | None:
    """The request's X-Prefix-Key header, or None (also for non-HTTP requests)."""
    if pending_request is None or not pending_request.args:
        return None
    request = pending_request.args[0]
    if isinstance(request, bytes):  # the proxy's request as it pickled it for the replica
        try:
            request = pickle.loads(request)
        except Exception:
            return None
    scope = getattr(request, "asgi_scope", None)
    if not isinstance(scope, dict):
        return None
    for name, value in scope.get("headers", ()):
        if name.lower() == HEADER and value:
            return bytes(value)
    return None


def rank(key: bytes, replicas: list[RunningReplica]) -> list[RunningReplica]:
    """``replicas`` by rendezvous hash of ``key``: the first is the key's home."""

    def score(replica: RunningReplica) -> bytes:
        return hashlib.blake2b(key + replica.replica_id.unique_id.encode(), digest_size=8).digest()

    return sorted(replicas, key=score, reverse=True)


class PrefixKeyRouter(FIFOMixin, RequestRouter):
    """Same X-Prefix-Key -> same replica while it has room; otherwise power of two choices."""

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # back off when all are full
        if not candidate_replicas:
            return []
        key = prefix_key(pending_request)
        if key is not None:
            home, *others = rank(key, candidate_replicas)
            return [[home], others]  # when home is full: the least loaded of the others
        pair = random.sample(candidate_replicas, k=min(2, len(candidate_replicas)))
        return unknown_first(pair, self.replica_queue_len_cache)


def unknown_first(replicas: list[RunningReplica], cache) -> list[list[RunningReplica]]:
    """``replicas`` as ranks: those with no queue length in ``cache`` first, then the rest.

    Within one rank Serve takes the lowest cached length and probes the others only in the
    background, so an unknown replica in the same rank as a known one would not be chosen."""
    lengths = [cache.get(r.replica_id) for r in replicas]
    unknown = [r for r, n in zip(replicas, lengths, strict=True) if n is None]
    known = [r for r, n in zip(replicas, lengths, strict=True) if n is not None]
    return [rank for rank in (unknown, known) if rank]
