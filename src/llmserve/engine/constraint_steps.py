"""The engine's side of token constraints: each step's bitmask, and accepting sampled tokens.

A constraint that raises or rejects a token ends its own sequence with an error message; the
engine never lets it escape, so one bad grammar cannot stop the other requests.
"""

from __future__ import annotations

import logging

import numpy as np

from llmserve.engine.constraints import bitmask_words
from llmserve.engine.request import Sequence

log = logging.getLogger("llmserve.engine")


class StepBitmask:
    """One int32 bitmask buffer for the constrained rows of a step, kept from step to step."""

    def __init__(self, vocab_size: int) -> None:
        self.words = bitmask_words(vocab_size)
        self._buffer = np.empty((0, self.words), dtype=np.int32)

    def fill(self, seqs: list[Sequence]) -> tuple[np.ndarray, dict[int, str]]:
        """Row i = what ``seqs[i]``'s constraint allows next, and {seq_id: error} of those whose
        constraint raised or allows nothing (their row allows everything; the step must fail
        them). The array is valid until the next call."""
        if self._buffer.shape[0] < len(seqs):
            self._buffer = np.empty((max(len(seqs), 2 * self._buffer.shape[0]), self.words), np.int32)
        bitmask = self._buffer[: len(seqs)]
        bitmask.fill(-1)  # all bits set: every token allowed
        failures: dict[int, str] = {}
        for row, seq in enumerate(seqs):
            try:
                seq.constraint.fill_bitmask(bitmask, row)
            except Exception as exc:
                log.exception("token constraint of request %s failed", seq.request_id)
                failures[seq.seq_id] = f"the output constraint failed: {exc}"
                bitmask[row] = -1
        for row in np.flatnonzero(~bitmask.any(axis=1)):  # a dead end: sampling would pick junk
            seq = seqs[row]
            failures.setdefault(seq.seq_id, "the output constraint allows no next token")
            bitmask[row] = -1
        return bitmask, failures


def accept_token(seq: Sequence, token_id: int) -> tuple[str | None, bool]:
    """Tell ``seq``'s constraint the sampled token: (error or None, whether it is now complete)."""
    constraint = seq.constraint
    try:
        if not constraint.accept(token_id):
            log.warning("token constraint of request %s rejected token %d", seq.request_id, token_id)
            return f"the output constraint rejected token {token_id}", False
        return None, bool(constraint.is_terminated())
    except Exception as exc:
        log.exception("token constraint of request %s failed on token %d", seq.request_id, token_id)
        return f"the output constraint failed on token {token_id}: {exc}", False
