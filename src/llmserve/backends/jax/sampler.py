"""Next-token sampling on the JAX device, with the torch sampler's semantics.

Order on a row (as vLLM v1 and backends/torch/sampler.py): the constraints' token bitmask ->
allowed_token_ids -> min_tokens EOS ban -> logit_bias -> repetition, frequency and presence
penalties -> greedy argmax, or temperature -> min_p -> top_k -> top_p -> exponential race
(Gumbel-max). Logprobs are the raw log-softmax of the model's logits, before any of that.
Logits processors are not supported (the backend refuses them at start).

The common path (greedy, temperature, min_p, top_k, top_p, logprobs) is one jitted function
over all rows of a step, compiled per (rows, mode, logprobs). The per-token adjustments that
few requests use (masks, bans, biases, penalties) run on the host in numpy, only for steps
that have them, and the adjusted logits go back to the device for the rest.

Randomness: row i draws U(0, 1) per token from
``fold_in(fold_in(key(seed), seed_offset), step)`` (key(seed) is ``jax.random.PRNGKey(seed)``
for 32-bit seeds, the threefry key [seed >> 32, seed & 0xffffffff] in general), so a seeded
request draws the same tokens whatever else is in the batch. Rows without a seed use keys from
a host generator seeded with ``--seed``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmserve.backends.base import BatchItem, SampleResult, TokenLogprob
from llmserve.engine.constraints import unpack_bitmask

log = logging.getLogger("llmserve.jax")

_MASK32 = 0xFFFFFFFF
TOP_LOGPROBS = 20  # static width of the top-k logprobs (the API maximum)
_PROMPT_ROWS = 256  # prompt-logprob rows per call


def _sample_rows(work, raw, temperature, top_k, top_p, min_p, greedy, seeds, *, mode: str, logprobs: bool):
    """tokens [rows] (+ chosen logprob, rank, top values, top ids when ``logprobs``)."""
    import jax
    import jax.numpy as jnp

    tokens = jnp.argmax(work, axis=1).astype(jnp.int32)
    if mode != "greedy":
        x = work / jnp.where(greedy, 1.0, temperature)[:, None]
        log_min_p = jnp.where(min_p > 0, jnp.log(jnp.maximum(min_p, 1e-38)), -jnp.inf)
        x = jnp.where(x < x.max(axis=1, keepdims=True) + log_min_p[:, None], -jnp.inf, x)
        if mode == "truncate":
            x = jnp.where(_top_k_top_p(x, top_k, top_p), x, -jnp.inf)
        vocab = x.shape[1]

        def uniform(seed):  # seed: uint32 [4] = key hi, key lo, seed_offset, step
            key = jax.random.wrap_key_data(seed[:2], impl="threefry2x32")
            key = jax.random.fold_in(jax.random.fold_in(key, seed[2]), seed[3])
            return jax.random.uniform(key, (vocab,), jnp.float32)

        noise = jax.vmap(uniform)(seeds)
        raced = jnp.argmax(x - jnp.log(-jnp.log(noise)), axis=1).astype(jnp.int32)
        tokens = jnp.where(greedy, tokens, raced)
    if not logprobs:
        return (tokens,)
    return (tokens, *token_logprobs(raw, tokens, min(TOP_LOGPROBS, raw.shape[1])))


def _top_k_top_p(x, top_k, top_p):
    """Keep mask [rows, vocab]: the top_k largest (ties with the k-th kept), then the smallest
    prefix of those, by probability renormalised over them, whose mass reaches top_p."""
    import jax
    import jax.numpy as jnp

    vocab = x.shape[1]
    desc = -jnp.sort(-x, axis=1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take_along_axis(desc, (k - 1)[:, None], axis=1)
    kth = jnp.where((top_k > 0)[:, None], kth, -jnp.inf)
    in_k = desc >= kth
    probs = jax.nn.softmax(jnp.where(in_k, desc, -jnp.inf), axis=1)
    before = jnp.cumsum(probs, axis=1) - probs  # mass of the tokens ranked above
    keep = in_k & ((before < top_p[:, None]) | (top_p[:, None] >= 1.0))
    threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=1, keepdims=True)
    return x >= threshold


def token_logprobs(logits, tokens, k: int):
    """(logprob [rows], rank [rows], top-k logprobs [rows, k], top-k ids [rows, k]) of raw logits."""
    import jax
    import jax.numpy as jnp

    lse = jax.nn.logsumexp(logits, axis=1)
    chosen = jnp.take_along_axis(logits, tokens[:, None], axis=1)[:, 0]
    rank = jnp.sum(logits > chosen[:, None], axis=1, dtype=jnp.int32) + 1
    values, ids = jax.lax.top_k(logits, k)
    return chosen - lse, rank, values - lse[:, None], ids


class JaxSampler:
    """Samples the next token of every sampling row of a step; one per step thread."""

    def __init__(self, vocab_size: int, default_seed: int = 0, eos_token_ids: Sequence[int] = ()) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        self.rng = np.random.default_rng(default_seed)
        self.compiled: dict[tuple, Any] = {}
        self.compile_seconds = 0.0

    # ------------------------------------------------------------------ sampling

    def sample(
        self, logits: Any, rows: list[int], items: list[BatchItem], token_bitmask: np.ndarray | None = None
    ) -> list[SampleResult]:
        """One token per item; ``logits`` is the device array [R, vocab], item j at ``rows[j]``;
        ``token_bitmask`` is the batch's (rows picked by ``item.bitmask_row``)."""
        import jax

        num_rows = logits.shape[0]
        temperature = np.zeros(num_rows, np.float32)
        top_k = np.zeros(num_rows, np.int32)
        top_p = np.ones(num_rows, np.float32)
        min_p = np.zeros(num_rows, np.float32)
        greedy = np.ones(num_rows, bool)
        seeds = np.zeros((num_rows, 4), np.uint32)
        unseeded = self.rng.integers(0, 1 << 32, size=(num_rows, 2), dtype=np.uint64)
        seeds[:, :2] = unseeded
        for row, item in zip(rows, items, strict=True):
            p = item.params
            greedy[row] = p.greedy
            temperature[row], top_k[row], top_p[row], min_p[row] = p.temperature, p.top_k, p.top_p, p.min_p
            if p.seed is not None:
                seed = p.seed & ((1 << 64) - 1)
                seeds[row] = (
                    seed >> 32,
                    seed & _MASK32,
                    item.seed_offset & _MASK32,
                    len(item.output_token_ids),
                )
        if greedy.all():
            mode = "greedy"
        elif any(not p.greedy and (p.top_k > 0 or p.top_p < 1.0) for p in (i.params for i in items)):
            mode = "truncate"
        else:
            mode = "random"
        want_logprobs = any(item.params.logprobs is not None for item in items)
        work = logits
        if any(_needs_host(item) for item in items):
            host = np.array(jax.device_get(logits), dtype=np.float32)
            masked = [(row, item.bitmask_row) for row, item in zip(rows, items, strict=True)]
            masked = [(row, b) for row, b in masked if b is not None]
            if masked:
                words = token_bitmask[[b for _, b in masked]]
                banned = ~unpack_bitmask(words, host.shape[1])
                target = host[[row for row, _ in masked]]
                target[banned] = -np.inf
                host[[row for row, _ in masked]] = target
            for row, item in zip(rows, items, strict=True):
                apply_host_adjustments(host[row], item, self.eos_token_ids)
            work = jax.device_put(host, logits.sharding)
        args = (work, logits, temperature, top_k, top_p, min_p, greedy, seeds)
        out = jax.device_get(self._executable(mode, want_logprobs, args)(*args))
        tokens = out[0]
        results = [
            SampleResult(item.seq_id, token_id=int(tokens[row]))
            for row, item in zip(rows, items, strict=True)
        ]
        if want_logprobs:
            chosen, rank, values, ids = out[1:]
            for res, row, item in zip(results, rows, items, strict=True):
                k = item.params.logprobs
                if k is None:
                    continue
                res.logprob, res.rank = float(chosen[row]), int(rank[row])
                res.top_logprobs = [
                    TokenLogprob(int(t), float(v), r)
                    for r, (t, v) in enumerate(zip(ids[row, :k], values[row, :k], strict=True), start=1)
                ]
        return results

    def _executable(self, mode: str, want_logprobs: bool, args: tuple) -> Any:
        import jax

        key = (args[0].shape[0], mode, want_logprobs)
        exe = self.compiled.get(key)
        if exe is None:
            start = time.perf_counter()
            fn = functools.partial(_sample_rows, mode=mode, logprobs=want_logprobs)
            exe = jax.jit(fn).lower(*args).compile()
            seconds = time.perf_counter() - start
            self.compiled[key] = exe
            self.compile_seconds += seconds
            log.info("jax compile: sampler rows=%d mode=%s logprobs=%s in %.2f s", *key, seconds)
        return exe

    def warm_up(self, num_rows: int, sharding: Any) -> None:
        """Compile the greedy and plain random samplers for ``num_rows`` rows."""
        import jax

        logits = jax.ShapeDtypeStruct((num_rows, self.vocab_size), np.float32, sharding=sharding)
        spec = [np.zeros(num_rows, t) for t in (np.float32, np.int32, np.float32, np.float32, bool)]
        args = (logits, logits, *spec, np.zeros((num_rows, 4), np.uint32))
        for mode in ("greedy", "random"):
            self._executable(mode, False, args)

    # ------------------------------------------------------------------ prompt logprobs

    def prompt_logprobs(
        self, logits_fn: Any, rows: np.ndarray, item: BatchItem
    ) -> list[tuple[TokenLogprob, list[TokenLogprob]]]:
        """Logprob (raw) of each prompt token following a position of this chunk, with the top-k.

        ``logits_fn(rows)`` gives device logits of hidden rows; row j is position
        ``item.start_pos + j`` and its target is the prompt token at the next position.
        """
        import jax

        prompt = item.prompt_token_ids
        count = min(len(item.token_ids), len(prompt) - item.start_pos - 1)
        k = item.params.prompt_logprobs or 0
        out: list[tuple[TokenLogprob, list[TokenLogprob]]] = []
        for lo in range(0, max(count, 0), _PROMPT_ROWS):
            hi = min(lo + _PROMPT_ROWS, count)
            width = 1 << (hi - lo - 1).bit_length()  # pad to a power of two: few compilations
            index = np.full(width, rows[lo], np.int32)
            index[: hi - lo] = rows[lo:hi]
            targets = np.zeros(width, np.int32)
            targets[: hi - lo] = [prompt[item.start_pos + j + 1] for j in range(lo, hi)]
            chosen, rank, values, ids = jax.device_get(_prompt_lp(logits_fn(index), targets))
            for j in range(hi - lo):
                alts = [
                    TokenLogprob(int(t), float(v), r)
                    for r, (t, v) in enumerate(zip(ids[j, :k], values[j, :k], strict=True), start=1)
                ]
                out.append((TokenLogprob(int(targets[j]), float(chosen[j]), int(rank[j])), alts))
        return out


@functools.cache
def _prompt_lp_fn(k: int):
    import jax

    return jax.jit(functools.partial(token_logprobs, k=k))


def _prompt_lp(logits: Any, targets: np.ndarray) -> Any:
    return _prompt_lp_fn(min(TOP_LOGPROBS, logits.shape[1]))(logits, targets)


# ---------------------------------------------------------------------- host-side adjustments


def _needs_host(item: BatchItem) -> bool:
    p = item.params
    return bool(
        p.logit_bias
        or p.allowed_token_ids is not None
        or item.bitmask_row is not None
        or (p.min_tokens and len(item.output_token_ids) < p.min_tokens)
        or p.repetition_penalty != 1.0
        or ((p.frequency_penalty or p.presence_penalty) and len(item.output_token_ids))
    )


def apply_host_adjustments(row: np.ndarray, item: BatchItem, eos_token_ids: tuple[int, ...]) -> None:
    """allowed_token_ids, min_tokens ban, logit_bias and penalties on one float32 logits row, in
    place (the token bitmask is applied before, to all its rows at once)."""
    p = item.params
    vocab = row.shape[0]
    if p.allowed_token_ids is not None:
        ids = np.asarray(p.allowed_token_ids, dtype=np.int64)
        allowed = np.zeros(vocab, bool)
        allowed[ids[(ids >= 0) & (ids < vocab)]] = True
        row[~allowed] = -np.inf
    if p.min_tokens and len(item.output_token_ids) < p.min_tokens:
        banned = [t for t in set(eos_token_ids).union(p.stop_token_ids) if 0 <= t < vocab]
        row[banned] = -np.inf
    for token, bias in p.logit_bias.items():
        if 0 <= token < vocab:
            row[token] += bias
    output = np.asarray(item.output_token_ids, dtype=np.int64)
    if p.repetition_penalty != 1.0:
        seen = np.unique(np.concatenate([np.asarray(item.prompt_token_ids, dtype=np.int64), output]))
        seen = seen[(seen >= 0) & (seen < vocab)]
        vals = row[seen]
        row[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if (p.frequency_penalty or p.presence_penalty) and output.size:
        ids, counts = np.unique(output[(output >= 0) & (output < vocab)], return_counts=True)
        row[ids] -= p.frequency_penalty * counts + p.presence_penalty
