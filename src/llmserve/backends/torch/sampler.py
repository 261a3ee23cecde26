"""Vectorised next-token sampling for the torch backends, with vLLM's semantics.

Order of operations on a row (as vLLM v1): allowed-token mask (``allowed_token_ids`` and the
structured-output ``allowed_mask``) -> min_tokens ban -> logit_bias -> repetition, frequency and
presence penalties -> greedy argmax, or temperature -> min_p -> top_k -> top_p -> exponential race.

Logprobs are vLLM's default "raw_logprobs": the log-softmax of the model's own logits, before any
penalty, bias, mask or temperature, so they describe the model and not the sampling settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain

import numpy as np
import torch

from llmserve.backends.base import BatchItem, SampleResult, TokenLogprob

_MASK64 = (1 << 64) - 1
# Candidate widths tried by top_p, smallest first (see Sampler._top_p).
_TOP_P_WIDTHS = (128, 1024, 1 << 62)
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
    the rest of the batch.
    """

    def __init__(
        self,
        vocab_size: int,
        device: str | torch.device = "cpu",
        default_seed: int = 0,
        eos_token_ids: Sequence[int] = (),
    ) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(default_seed & _MASK64)
        self._noise: torch.Tensor | None = None

    # ------------------------------------------------------------------ sample

    def sample(self, logits: torch.Tensor, items: list[BatchItem]) -> list[SampleResult]:
        """Sample one token per item with ``item.sample``; ``logits`` has one row per such item."""
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
            (greedy if p.temperature < 1e-5 else rand).append(i)
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
            if p.allowed_token_ids is not None or item.allowed_mask is not None:
                mask_rows.append(i)
            if p.repetition_penalty != 1.0:
                rep_rows.append(i)
            if (p.frequency_penalty or p.presence_penalty) and len(item.output_token_ids):
                out_rows.append(i)

        work = raw
        if mask_rows or ban_rows or bias_rows or rep_rows or out_rows:
            work = raw.clone()  # never change the caller's logits
            if mask_rows:
                self._apply_allowed(work, items, mask_rows)
            if ban_rows:
                work[self._long(ban_rows), self._long(ban_cols)] = float("-inf")
            if bias_rows:
                vals = torch.tensor(bias_vals, dtype=torch.float32, device=self.device)
                work.index_put_((self._long(bias_rows), self._long(bias_cols)), vals, accumulate=True)
            if rep_rows:
                self._apply_repetition(work, items, rep_rows)
            if out_rows:
                self._apply_frequency_presence(work, items, out_rows)

        if rand:
            sampled = self._sample_random(work, items, rand, owned=work is not raw)
            if greedy:
                tokens = _argmax(work)
                tokens[self._long(rand)] = sampled
            else:
                tokens = sampled
        else:
            tokens = _argmax(work)

        token_list = tokens.tolist()
        results = [SampleResult(item.seq_id, token_id=t) for item, t in zip(items, token_list, strict=True)]
        if lp_rows:
            self._fill_logprobs(raw, tokens, lp_rows, lp_k, results)
        return results

    def _long(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _apply_allowed(self, work: torch.Tensor, items: list[BatchItem], rows: list[int]) -> None:
        """-inf outside each row's allowed set (allowed_token_ids AND the constraint's mask)."""
        vocab = self.vocab_size
        allowed = np.ones((len(rows), vocab), dtype=bool)
        for j, i in enumerate(rows):
            item = items[i]
            if item.allowed_mask is not None:
                mask = np.asarray(item.allowed_mask, dtype=bool)[:vocab]
                allowed[j, : len(mask)] &= mask
                allowed[j, len(mask) :] = False  # a shorter mask (tokenizer vocab) allows no more
            ids = item.params.allowed_token_ids
            if ids is not None:
                ids = np.asarray(ids, dtype=np.int64)
                only = np.zeros(vocab, dtype=bool)
                only[ids[(ids >= 0) & (ids < vocab)]] = True
                allowed[j] &= only
        banned = ~torch.from_numpy(allowed).to(self.device)
        if len(rows) == work.shape[0]:
            work.masked_fill_(banned, float("-inf"))
        else:
            idx = self._long(rows)
            work[idx] = work[idx].masked_fill_(banned, float("-inf"))

    def _padded(self, seqs: list[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """[rows, max_len] token ids padded with each row's first token, and the valid mask.

        Padding with a token already in the row makes gather -> modify -> index_put write the
        same value to every duplicate, so each distinct token is changed exactly once.
        """
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        flat = torch.tensor(list(chain.from_iterable(seqs)), dtype=torch.long)
        width = int(lengths.max())
        valid = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
        firsts = flat[torch.cumsum(lengths, 0) - lengths]
        ids = firsts.unsqueeze(1).repeat(1, width)
        ids[valid] = flat
        return ids.to(self.device), valid.to(self.device)

    def _apply_repetition(self, work: torch.Tensor, items: list[BatchItem], rows: list[int]) -> None:
        """Divide positive / multiply negative logits of tokens seen in prompt or output."""
        rows = [i for i in rows if len(items[i].prompt_token_ids) + len(items[i].output_token_ids)]
        if not rows:
            return
        seqs = [list(chain(items[i].prompt_token_ids, items[i].output_token_ids)) for i in rows]
        ids, _ = self._padded(seqs)
        penalty = torch.tensor(
            [items[i].params.repetition_penalty for i in rows], dtype=torch.float32, device=self.device
        ).unsqueeze(1)
        r = self._long(rows).unsqueeze(1)
        seen = work[r, ids]  # [rows, len]
        work[r, ids] = torch.where(seen > 0, seen / penalty, seen * penalty)

    def _apply_frequency_presence(self, work: torch.Tensor, items: list[BatchItem], rows: list[int]) -> None:
        """OpenAI's definition over output tokens: -= frequency * count + presence * (count > 0)."""
        ids, valid = self._padded([items[i].output_token_ids for i in rows])
        pen = torch.tensor(
            [(items[i].params.frequency_penalty, items[i].params.presence_penalty) for i in rows],
            dtype=torch.float32,
            device=self.device,
        )
        r = self._long(rows).unsqueeze(1)
        # Frequency: one subtraction per occurrence (padding adds 0).
        work.index_put_((r, ids), -pen[:, :1] * valid, accumulate=True)
        # Presence: once per distinct token (duplicates write the same value).
        work[r, ids] = work[r, ids] - pen[:, 1:]

    def _sample_random(
        self, work: torch.Tensor, items: list[BatchItem], rows: list[int], owned: bool
    ) -> torch.Tensor:
        """Temperature, min_p, top_k, top_p, then the exponential race; returns [len(rows)] ids."""
        params = [items[i].params for i in rows]
        x = work if len(rows) == work.shape[0] else work[self._long(rows)]
        owned = owned or x is not work
        temps = [p.temperature for p in params]
        if any(t != 1.0 for t in temps):
            t = torch.tensor(temps, dtype=torch.float32, device=self.device).unsqueeze(1)
            x = x.div_(t) if owned else x / t
            owned = True
        elif not owned:
            x = x.clone()

        min_ps = [p.min_p for p in params]
        if any(min_ps):
            log_min_p = torch.tensor(
                [math.log(m) if m > 0 else float("-inf") for m in min_ps], device=self.device
            )
            threshold = x.amax(dim=1) + log_min_p.to(x.dtype)
            x.masked_fill_(x < threshold.unsqueeze(1), float("-inf"))

        top_ks = [min(p.top_k, self.vocab_size) if p.top_k > 0 else 0 for p in params]
        if any(top_ks):
            kmax = max(top_ks)
            values = x.topk(kmax, dim=1).values  # [rows, kmax], descending
            k = torch.tensor(top_ks, dtype=torch.long, device=self.device)
            kth = values.gather(1, (k - 1).clamp(min=0).unsqueeze(1))
            kth = kth.masked_fill_((k == 0).unsqueeze(1), float("-inf"))
            x.masked_fill_(x < kth, float("-inf"))

        p_rows = [j for j, p in enumerate(params) if p.top_p < 1.0]
        if p_rows:
            top_ps = [params[j].top_p for j in p_rows]
            if len(p_rows) == len(rows):
                x = self._top_p(x, top_ps)
            else:
                idx = self._long(p_rows)
                x[idx] = self._top_p(x[idx], top_ps)

        # Exponential race, argmax(p / E) with E ~ Exp(1), in place on unnormalised probabilities
        # (the normaliser does not move the argmax). E = -log(U): torch's CPU exponential_ is ~6x
        # slower than uniform_ + log; U = 0 gives E = inf, so that token cannot win.
        x.sub_(x.max(dim=1, keepdim=True).values).exp_()
        noise = self._noise_buffer(x.shape[0])
        seeded = [j for j, p in enumerate(params) if p.seed is not None]
        if len(seeded) < len(rows):
            noise.uniform_(generator=self.generator)
        for j in seeded:  # per-row generators: reproducible whatever else is in the batch
            item = items[rows[j]]
            gen = torch.Generator(device=self.device)
            gen.manual_seed(row_seed(item.params.seed, item.seed_offset, len(item.output_token_ids)))
            noise[j].uniform_(generator=gen)
        return _argmax(x.div_(noise.log_().neg_()))

    def _noise_buffer(self, rows: int) -> torch.Tensor:
        """A reused [rows, vocab] buffer: a fresh 12 MB tensor per step costs page faults on CPU."""
        if self._noise is None or self._noise.shape[0] < rows:
            self._noise = torch.empty((rows, self.vocab_size), dtype=torch.float32, device=self.device)
        return self._noise[:rows]

    def _top_p(self, x: torch.Tensor, top_ps: list[float]) -> torch.Tensor:
        """Keep the smallest set of most likely tokens whose mass reaches p (the top one always).

        The candidates are the top 128, then 1024, then all tokens, each row going only as far as
        it needs (a full sort of the vocabulary costs ~100 ms at batch 64 on CPU). The widths do
        not depend on the other rows, so a seeded row gives the same tokens in any batch.
        """
        probs = torch.softmax(x, dim=1)
        p = torch.tensor(top_ps, dtype=torch.float32, device=self.device).unsqueeze(1)
        out = torch.full_like(x, float("-inf"))
        todo = None  # row indices still open; None = all
        for width in _TOP_P_WIDTHS:
            width = min(width, self.vocab_size)
            sub_probs = probs if todo is None else probs[todo]
            sub_p = p if todo is None else p[todo]
            top_probs, top_ids = sub_probs.topk(width, dim=1)
            mass = top_probs.cumsum(dim=1)
            keep = (mass - top_probs) < sub_p  # mass before a token is still short of p
            sub_x = x if todo is None else x[todo]
            kept = sub_x.gather(1, top_ids).masked_fill_(~keep, float("-inf"))
            # Done when the candidates hold mass p: every token past them is dropped.
            done = (mass[:, -1:] >= sub_p).squeeze(1) if width < self.vocab_size else None
            if done is None or bool(done.all()):
                part = torch.full_like(sub_x, float("-inf")).scatter_(1, top_ids, kept)
                if todo is None:
                    return part
                out[todo] = part
                return out
            if bool(done.any()):
                here = todo[done] if todo is not None else done.nonzero().squeeze(1)
                out[here] = torch.full_like(sub_x[done], float("-inf")).scatter_(1, top_ids[done], kept[done])
            rest = (~done).nonzero().squeeze(1)
            todo = rest if todo is None else todo[rest]
        return out

    def _fill_logprobs(
        self,
        raw: torch.Tensor,
        tokens: torch.Tensor,
        rows: list[int],
        ks: list[int],
        results: list[SampleResult],
    ) -> None:
        idx = self._long(rows)
        logprobs = torch.log_softmax(raw if len(rows) == raw.shape[0] else raw[idx], dim=1)
        chosen, ranks, top = _logprobs_of(logprobs, tokens[idx], max(ks))
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
            logprobs = torch.log_softmax(logits[lo:hi].float(), dim=1)
            chosen, ranks, top = _logprobs_of(logprobs, self._long(targets), k)
            out.extend(
                (TokenLogprob(t, lp, r), alts)
                for t, lp, r, alts in zip(targets, chosen, ranks, top, strict=True)
            )
        return out


def _argmax(x: torch.Tensor) -> torch.Tensor:
    """Row argmax (first index on ties); max().indices is ~4x faster than argmax on CPU."""
    return x.max(dim=1).indices


def _logprobs_of(
    logprobs: torch.Tensor, tokens: torch.Tensor, k: int
) -> tuple[list[float], list[int], list[list[TokenLogprob]]]:
    """Per row: the token's logprob, its rank (1 = most likely) and the top-k alternatives."""
    chosen = logprobs.gather(1, tokens.unsqueeze(1))  # [rows, 1]
    ranks = (logprobs > chosen).sum(dim=1, dtype=torch.int32).add_(1).tolist()  # int32: 3x faster
    top: list[list[TokenLogprob]] = [[] for _ in range(logprobs.shape[0])]
    if k > 0:
        values, ids = logprobs.topk(k, dim=1)
        for row, (vs, ts) in enumerate(zip(values.tolist(), ids.tolist(), strict=True)):
            top[row] = [TokenLogprob(t, v, r) for r, (t, v) in enumerate(zip(ts, vs, strict=True), start=1)]
    return chosen.squeeze(1).tolist(), ranks, top
