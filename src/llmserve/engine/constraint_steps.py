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
# How the errors the request itself causes begin (a constraint no token can meet, also with the
# request's allowed_token_ids): the API answers them with a 400, not a 500.
NO_TOKEN_FITS = "no token fits the output constraint"


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
            failures.setdefault(seq.seq_id, f"{NO_TOKEN_FITS}: it allows no next token")
            bitmask[row] = -1
        for row, seq in enumerate(seqs):  # nor may allowed_token_ids leave nothing it allows
            allowed = seq.params.allowed_token_ids
            if allowed is not None and seq.seq_id not in failures and not _any_set(bitmask[row], allowed):
                failures[seq.seq_id] = f"{NO_TOKEN_FITS}: it allows none of allowed_token_ids next"
                bitmask[row] = -1
        return bitmask, failures


def _any_set(row: np.ndarray, token_ids: list[int]) -> bool:
    ids = np.asarray(token_ids, dtype=np.int64)
    ids = ids[(ids >= 0) & (ids < row.shape[0] * 32)]
    return bool(((row.view(np.uint32)[ids >> 5] >> (ids & 31).astype(np.uint32)) & 1).any())


def accept_token(seq: Sequence, token_id: int) -> tuple[str | None, bool]:
    """Tell ``seq``'s constraint the sampled token: (error or None, whether it is now complete)."""
    constraint = seq.constraint
    try:
        if not constraint.accept(token_id):
            log.warning("token constraint of request %s rejected token %d", seq.request_id, token_id)
            return f"{NO_TOKEN_FITS}: it rejected token {token_id} (no allowed token was left)", False
        return None, bool(constraint.is_terminated())
    except Exception as exc:
        log.exception("token constraint of request %s failed on token %d", seq.request_id, token_id)
        return f"the output constraint failed on token {token_id}: {exc}", False
