"""Vectorised next-token sampling for the torch backends, with vLLM's semantics.

Order of operations on a row (as vLLM v1): the constraints' token bitmask (``Batch.token_bitmask``)
-> ``allowed_token_ids`` -> min_tokens ban -> logit_bias -> the engine's logits processors ->
repetition, frequency and presence penalties -> greedy argmax, or temperature -> min_p -> top_k ->
top_p -> exponential race.

Logprobs are vLLM's default "raw_logprobs": the log-softmax of the model's own logits, before any
penalty, bias, mask or temperature, so they describe the model and not the sampling settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from llmserve.backends.base import BatchItem, SampleResult, TokenLogprob
from llmserve.backends.torch.logits_masks import (
    apply_allowed_token_ids,
    apply_token_bitmask,
    processor_rows,
    run_processors,
)
from llmserve.backends.torch.logprobs import logprobs_of, logsumexp
from llmserve.backends.torch.penalties import Penalties
from llmserve.engine.constraints import LogitsProcessor

_MASK64 = (1 << 64) - 1
# Candidate widths for top_k / top_p rows, smallest first (see Sampler._race_truncated).
_CANDIDATE_WIDTHS = (128, 1024, 1 << 62)
# Rows of prompt logprobs computed at once (bounds the [rows, vocab] temporaries).
_PROMPT_LOGPROB_ROWS = 256


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def row_seed(seed: int, seed_offset: int, step: int) -> int:
    """The generator seed for one seeded draw: a hash of (seed, seed_offset, step)."""
    x = _splitmix64(seed & _MASK64)
    x = _splitmix64(x ^ (seed_offset & _MASK64))
    return _splitmix64(x ^ (step & _MASK64))


class Sampler:
    """Picks the next token of every sampling row of a batch in a few batched tensor ops.

    ``eos_token_ids`` are banned, with each row's ``stop_token_ids``, while a row has fewer than
    ``min_tokens`` output tokens. Rows without a seed share one generator seeded with
    ``default_seed``; a seeded row draws from its own generator, so its tokens do not depend on
    the rest of the batch. ``logits_processors`` run on every step, on the rows they are active
    for. Not thread-safe: one sampler per step thread (it reuses buffers).
    """

    def __init__(
        self,
        vocab_size: int,
        device: str | torch.device = "cpu",
        default_seed: int = 0,
        eos_token_ids: Sequence[int] = (),
        logits_processors: Sequence[LogitsProcessor] = (),
    ) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(default_seed & _MASK64)
        self._buffers: dict[str, torch.Tensor] = {}
        self.penalties = Penalties(self.device)
        self.logits_processors = tuple(logits_processors)

    # ------------------------------------------------------------------ sample

    def sample(
        self, logits: torch.Tensor, items: list[BatchItem], token_bitmask: np.ndarray | None = None
    ) -> list[SampleResult]:
        """Sample one token per item with ``item.sample``; ``logits`` has one row per such item.
        ``token_bitmask`` is the batch's (rows picked by ``item.bitmask_row``)."""
        items = [item for item in items if item.sample]
        if logits.dim() != 2 or logits.shape[0] != len(items) or logits.shape[1] != self.vocab_size:
            raise ValueError(
                f"logits must be [{len(items)}, {self.vocab_size}] (sampling items x vocab), "
                f"got {list(logits.shape)}"
            )
        if not items:
            return []
        raw = logits.float()

        # One pass over the rows collects what the tensor ops need; no math here.
        greedy, rand = [], []
        lp_rows, lp_k = [], []
        bias_rows, bias_cols, bias_vals = [], [], []
        ban_rows, ban_cols = [], []
        mask_rows = []
        rep_rows, out_rows = [], []
        vocab = self.vocab_size
        for i, item in enumerate(items):
            p = item.params
            (greedy if p.greedy else rand).append(i)
            if p.logprobs is not None:
                lp_rows.append(i)
                lp_k.append(p.logprobs)
            # Token ids are validated against the vocabulary per request; out-of-range ones are
            # skipped here so that one bad request cannot fail the whole step.
            for token, bias in p.logit_bias.items():
                if 0 <= token < vocab:
                    bias_rows.append(i)
                    bias_cols.append(token)
                    bias_vals.append(bias)
            if p.min_tokens and len(item.output_token_ids) < p.min_tokens:
                banned = [t for t in set(self.eos_token_ids).union(p.stop_token_ids) if 0 <= t < vocab]
                ban_rows.extend([i] * len(banned))
                ban_cols.extend(banned)
            if p.allowed_token_ids is not None:
                mask_rows.append(i)
            if p.repetition_penalty != 1.0:
                rep_rows.append(i)
            if (p.frequency_penalty or p.presence_penalty) and len(item.output_token_ids):
                out_rows.append(i)

        bitmask_rows = []
        if token_bitmask is not None:
            bitmask_rows = [i for i, item in enumerate(items) if item.bitmask_row is not None]
        failed: dict[int, str] = {}  # row -> error of a logits processor
        processing = processor_rows(self.logits_processors, items, failed) if self.logits_processors else []

        work = raw
        if bitmask_rows or processing or mask_rows or ban_rows or bias_rows or rep_rows or out_rows:
            work = self._scratch("work", raw.shape[0]).copy_(raw)  # never change the caller's logits
            if bitmask_rows:
                apply_token_bitmask(work, items, bitmask_rows, token_bitmask)
            if mask_rows:
                apply_allowed_token_ids(work, items, mask_rows)
            if ban_rows:
                work[self._long(ban_rows), self._long(ban_cols)] = float("-inf")
            if bias_rows:
                vals = torch.tensor(bias_vals, dtype=torch.float32, device=self.device)
                work.index_put_((self._long(bias_rows), self._long(bias_cols)), vals, accumulate=True)
            if processing:
                run_processors(work, processing, failed)
            if rep_rows:
                self.penalties.repetition(work, items, rep_rows)
            if out_rows:
                self.penalties.frequency_presence(work, items, out_rows)

        if rand and greedy:
            greedy_tokens = _argmax(torch.index_select(work, 0, self._long(greedy)))  # before the
            tokens = torch.empty(len(items), dtype=torch.long, device=self.device)  # race changes work
            tokens[self._long(rand)] = self._sample_random(work, items, rand, owned=work is not raw)
            tokens[self._long(greedy)] = greedy_tokens
        elif rand:
            tokens = self._sample_random(work, items, rand, owned=work is not raw)
        else:
            tokens = _argmax(work)

        token_list = tokens.tolist()
        results = [SampleResult(item.seq_id, token_id=t) for item, t in zip(items, token_list, strict=True)]
        for i, error in failed.items():
            results[i].error = error
        if lp_rows:
            self._fill_logprobs(raw, tokens, lp_rows, lp_k, results)
        return results

    def _long(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _column(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self.device).unsqueeze(1)

    def _sample_random(
        self, work: torch.Tensor, items: list[BatchItem], rows: list[int], owned: bool
    ) -> torch.Tensor:
        """Temperature, min_p, top_k, top_p, then the exponential race; returns [len(rows)] ids.

        Rows without top_k / top_p race over the whole vocabulary; the others only over their
        candidates (the race never picks a dropped token), which skips drawing vocabulary-wide
        noise for them. Seeded rows draw noise per token id, so both give the same token.
        """
        # Rows that race over the whole vocabulary first, then the cut ones: both groups are
        # then slices of one tensor, with no copy per group.
        whole = [i for i in rows if items[i].params.top_k <= 0 and items[i].params.top_p >= 1.0]
        cut = [i for i in rows if items[i].params.top_k > 0 or items[i].params.top_p < 1.0]
        order = whole + cut
        params = [items[i].params for i in order]
        temps = [p.temperature for p in params]
        scale = any(t != 1.0 for t in temps)
        all_rows = order == list(range(work.shape[0]))
        if all_rows and owned:
            x = work
        elif all_rows and scale:
            x = torch.div(work, self._column(temps), out=self._scratch("x", len(rows)))
            scale = False
        elif all_rows:
            x = self._scratch("x", len(rows)).copy_(work)
        else:
            x = torch.index_select(work, 0, self._long(order), out=self._scratch("x", len(rows)))
        if scale:
            x.div_(self._column(temps))

        min_ps = [p.min_p for p in params]
        if any(min_ps):
            log_min_p = self._column([math.log(m) if m > 0 else float("-inf") for m in min_ps])
            x.masked_fill_(x < x.amax(dim=1, keepdim=True) + log_min_p, float("-inf"))

        seeds = [
            None if p.seed is None else row_seed(p.seed, items[i].seed_offset, len(items[i].output_token_ids))
            for i, p in zip(order, params, strict=True)
        ]
        n = len(whole)
        if not cut:
            tokens = self._race(x, seeds)
        elif not whole:
            tokens = self._race_truncated(x, params, seeds)
        else:
            tokens = torch.cat(
                [self._race(x[:n], seeds[:n]), self._race_truncated(x[n:], params[n:], seeds[n:])]
            )
        if order == rows:
            return tokens
        # Back to the order of ``rows``.
        position = {i: j for j, i in enumerate(order)}
        return tokens[self._long([position[i] for i in rows])]

    def _race(self, x: torch.Tensor, seeds: list[int | None]) -> torch.Tensor:
        """Exponential race over the whole vocabulary, in place on ``x`` (owned)."""
        noise = self._scratch("noise", x.shape[0])
        if None in seeds:
            noise.uniform_(generator=self.generator)
        for j, seed in enumerate(seeds):  # reproducible whatever else is in the batch
            if seed is not None:
                noise[j] = self._seeded_uniform(seed)
        return _argmax(x.sub_(_log_exponential(noise)))

    def _race_truncated(self, x: torch.Tensor, params: list, seeds: list[int | None]) -> torch.Tensor:
        """top_k, then top_p over what top_k kept (renormalised), then the race, per row.

        Candidates are a row's top 128 logits, then 1024, then all: a row stops at the first
        width that holds everything it keeps (a full sort of the vocabulary costs ~100 ms at
        batch 64 on CPU). The widths depend on the row alone, so a seeded row gives the same
        token in any batch.
        """
        vocab = self.vocab_size
        ks = torch.tensor([min(p.top_k, vocab) if p.top_k > 0 else 0 for p in params], device=self.device)
        ps = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=self.device)
        has_k = ks > 0
        # Without top_k, top_p's mass is relative to the whole vocabulary.
        lse = None
        if not bool(has_k.all()):
            lse = logsumexp(x, self._scratch("noise", x.shape[0])).squeeze(1)
        out = torch.empty(x.shape[0], dtype=torch.long, device=self.device)
        todo = torch.arange(x.shape[0], device=self.device)
        for width in _CANDIDATE_WIDTHS:
            width = min(width, vocab)
            sub = x if len(todo) == x.shape[0] else x[todo]
            k, p, with_k = ks[todo], ps[todo].unsqueeze(1), has_k[todo].unsqueeze(1)
            vals, ids = sub.topk(width, dim=1)  # descending
            kth = vals.gather(1, (k.clamp(1, width) - 1).unsqueeze(1))
            kth = kth.masked_fill_(~with_k, float("-inf"))
            keep = vals >= kth  # ties with the k-th logit stay, as with a mask on the logits
            kept = vals.masked_fill(~keep, float("-inf"))
            norm = torch.logsumexp(kept, dim=1, keepdim=True)
            if lse is not None:
                norm = torch.where(with_k, norm, lse[todo].unsqueeze(1))
            probs = (kept - norm).exp_()
            mass = probs.cumsum(dim=1)
            keep &= ((mass - probs) < p) | (p >= 1.0)  # mass before a token is still short of p
            if width == vocab:
                done = torch.ones_like(k, dtype=torch.bool)
            else:
                # With top_k: all k (and ties) inside. Without: the candidates hold mass p.
                k_inside = (k <= width) & ((vals[:, -1] < kth[:, 0]) | torch.isinf(kth[:, 0]))
                done = torch.where(with_k[:, 0], k_inside, mass[:, -1] >= p[:, 0])
            if bool(done.any()):
                rows = todo[done]
                row_seeds = [seeds[j] for j in rows.tolist()]
                out[rows] = self._race_candidates(
                    vals[done].masked_fill_(~keep[done], float("-inf")), ids[done], row_seeds
                )
            todo = todo[~done]
            if len(todo) == 0:
                break
        return out

    def _race_candidates(
        self, vals: torch.Tensor, ids: torch.Tensor, seeds: list[int | None]
    ) -> torch.Tensor:
        """The race among candidate tokens ``ids`` (logits ``vals``, -inf = dropped), in place."""
        noise = torch.empty_like(vals)
        if None in seeds:
            noise.uniform_(generator=self.generator)
        for j, seed in enumerate(seeds):  # the same noise per token id as the full race
            if seed is not None:
                noise[j] = self._seeded_uniform(seed)[ids[j]]
        winner = _argmax(vals.sub_(_log_exponential(noise)))
        return ids.gather(1, winner.unsqueeze(1)).squeeze(1)

    def _seeded_uniform(self, seed: int) -> torch.Tensor:
        """U(0, 1) per token id from a generator seeded for one row and step."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        return torch.empty(self.vocab_size, dtype=torch.float32, device=self.device).uniform_(generator=gen)

    def _scratch(self, name: str, rows: int) -> torch.Tensor:
        """A [rows, vocab] float32 scratch tensor, one per name.

        On CPU it is kept from call to call: a fresh 12 MB tensor (batch 64) costs ~3 ms of page
        faults every step. Elsewhere the caching allocator already reuses memory.
        """
        if self.device.type != "cpu":
            return torch.empty((rows, self.vocab_size), dtype=torch.float32, device=self.device)
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < rows:
            buf = self._buffers[name] = torch.empty((rows, self.vocab_size), dtype=torch.float32)
        return buf[:rows]

    def _fill_logprobs(
        self,
        raw: torch.Tensor,
        tokens: torch.Tensor,
        rows: list[int],
        ks: list[int],
        results: list[SampleResult],
    ) -> None:
        idx = self._long(rows)
        logits = raw
        if len(rows) < raw.shape[0]:
            logits = torch.index_select(raw, 0, idx, out=self._scratch("x", len(rows)))
        chosen, ranks, top = logprobs_of(logits, tokens[idx], max(ks), self._scratch("noise", len(rows)))
        for j, i in enumerate(rows):
            res = results[i]
            res.logprob, res.rank = chosen[j], ranks[j]
            res.top_logprobs = top[j][: ks[j]]

    # ------------------------------------------------------------ prompt logprobs

    def prompt_logprobs(
        self, logits: torch.Tensor, item: BatchItem
    ) -> list[tuple[TokenLogprob, list[TokenLogprob]]]:
        """Logprob (raw) of each prompt token that follows a position of this chunk, with the top-k.

        Row j of ``logits`` is position ``item.start_pos + j``; its target is the prompt token at
        the next position. Rows whose next position is past the prompt are skipped.
        """
        if logits.dim() != 2 or logits.shape[0] != len(item.token_ids) or logits.shape[1] != self.vocab_size:
            raise ValueError(
                f"logits must be [{len(item.token_ids)}, {self.vocab_size}] (chunk tokens x vocab), "
                f"got {list(logits.shape)}"
            )
        prompt = item.prompt_token_ids
        rows = min(len(item.token_ids), len(prompt) - item.start_pos - 1)
        k = item.params.prompt_logprobs or 0
        out: list[tuple[TokenLogprob, list[TokenLogprob]]] = []
        for lo in range(0, max(rows, 0), _PROMPT_LOGPROB_ROWS):
            hi = min(lo + _PROMPT_LOGPROB_ROWS, rows)
            targets = [prompt[item.start_pos + j + 1] for j in range(lo, hi)]
            scratch = self._scratch("noise", hi - lo)
            chosen, ranks, top = logprobs_of(logits[lo:hi].float(), self._long(targets), k, scratch)
            out.extend(
                (TokenLogprob(t, lp, r), alts)
                for t, lp, r, alts in zip(targets, chosen, ranks, top, strict=True)
            )
        return out


def _log_exponential(uniform: torch.Tensor) -> torch.Tensor:
    """log(E), E ~ Exp(1), from U(0, 1) in place: E = -log(U).

    The race argmax(p / E) is computed as argmax(logit - log E) (Gumbel-max): the same winner,
    without softmax, max or exp over the vocabulary. torch's CPU exponential_ is ~6x slower than
    uniform_ + log. U = 0 gives E = inf, so that token cannot win.
    """
    return uniform.log_().neg_().log_()


def _argmax(x: torch.Tensor) -> torch.Tensor:
    """Row argmax (first index on ties); max().indices is ~4x faster than argmax on CPU."""
    return x.max(dim=1).indices
