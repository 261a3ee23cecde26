"""Repetition, frequency and presence penalties on a batch of logits rows (vLLM's semantics)."""

from __future__ import annotations

from itertools import chain

import torch

from llmserve.backends.base import BatchItem


class Penalties:
    """Applies penalties in place; keeps each running sequence's distinct prompt tokens."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._prompt_sets: dict[int, tuple] = {}  # seq_id -> (prompt list, its distinct tokens)

    def _long(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _padded(self, flat: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``flat`` (CPU, concatenated) as [rows, max_len], padded with each row's first
        token, and the valid mask; every length must be positive.

        Padding with a token already in the row makes gather -> modify -> index_put write the
        same value to every duplicate, so each distinct token is changed exactly once.
        """
        lens = torch.tensor(lengths, dtype=torch.long)
        width = max(lengths)
        valid = torch.arange(width).unsqueeze(0) < lens.unsqueeze(1)
        firsts = flat[torch.cumsum(lens, 0) - lens]
        ids = firsts.unsqueeze(1).repeat(1, width)
        ids[valid] = flat
        return ids.to(self.device), valid.to(self.device)

    def _prompt_set(self, item: BatchItem, cache: dict) -> torch.Tensor:
        """The distinct prompt tokens (CPU), kept from step to step while the sequence runs."""
        hit = self._prompt_sets.get(item.seq_id)
        if hit is None or hit[0] is not item.prompt_token_ids:
            hit = (item.prompt_token_ids, torch.unique(torch.tensor(item.prompt_token_ids, dtype=torch.long)))
        cache[item.seq_id] = hit
        return hit[1]

    def repetition(self, work: torch.Tensor, items: list[BatchItem], rows: list[int]) -> None:
        """Divide positive / multiply negative logits of tokens seen in prompt or output."""
        rows = [i for i in rows if len(items[i].prompt_token_ids) + len(items[i].output_token_ids)]
        if not rows:
            return
        # Building a long prompt's ids every step costs ~10 ms at batch 64 x 2k tokens: the
        # prompt part is cached per sequence (entries of sequences not in this call are dropped).
        cache: dict[int, tuple] = {}
        prompts = [self._prompt_set(items[i], cache) for i in rows]
        self._prompt_sets = cache
        out_lens = [len(items[i].output_token_ids) for i in rows]
        outputs = torch.tensor(
            list(chain.from_iterable(items[i].output_token_ids for i in rows)), dtype=torch.long
        )
        parts = [t for pair in zip(prompts, outputs.split(out_lens), strict=True) for t in pair]
        ids, _ = self._padded(torch.cat(parts), [len(p) + n for p, n in zip(prompts, out_lens, strict=True)])
        penalty = torch.tensor(
            [items[i].params.repetition_penalty for i in rows], dtype=torch.float32, device=self.device
        ).unsqueeze(1)
        r = self._long(rows).unsqueeze(1)
        seen = work[r, ids]  # [rows, len]
        work[r, ids] = torch.where(seen > 0, seen / penalty, seen * penalty)

    def frequency_presence(self, work: torch.Tensor, items: list[BatchItem], rows: list[int]) -> None:
        """OpenAI's definition over output tokens: -= frequency * count + presence * (count > 0)."""
        outputs = [items[i].output_token_ids for i in rows]
        flat = torch.tensor(list(chain.from_iterable(outputs)), dtype=torch.long)
        ids, valid = self._padded(flat, [len(o) for o in outputs])
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
