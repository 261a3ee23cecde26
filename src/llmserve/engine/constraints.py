"""Contracts for steering generation: per-sequence token constraints and batch logits processors.

A ``Constraint`` (structured outputs: a grammar, a JSON schema, a regex) says which tokens may come
next for one sequence, as a row of a packed bitmask, and is told every accepted token. Requests
carry a ``ConstraintSpec`` in ``SamplingParams.constraint``; the engine makes one ``Constraint`` per
sequence from it, so the ``n`` choices of a request keep separate states.

A ``LogitsProcessor`` is created once per engine and edits the logits of a whole step in place.

Bitmask format (xgrammar's): an int32 array of shape ``[rows, bitmask_words(vocab_size)]``; bit
``j`` of word ``i`` of a row set means token ``32 * i + j`` is allowed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from llmserve.engine.sampling import SamplingParams


def bitmask_words(vocab_size: int) -> int:
    """int32 words in one bitmask row for a vocabulary of ``vocab_size`` tokens."""
    return -(-vocab_size // 32)


def set_allowed_tokens(bitmask: np.ndarray, row: int, token_ids: Iterable[int]) -> None:
    """Make ``token_ids`` the only allowed tokens of ``row`` (a helper for simple constraints)."""
    ids = np.fromiter(token_ids, dtype=np.int64)
    words = bitmask.view(np.uint32)[row]
    ids = ids[(ids >= 0) & (ids < 32 * words.shape[0])]
    words[:] = 0
    np.bitwise_or.at(words, ids >> 5, (np.uint32(1) << (ids & 31).astype(np.uint32)))


def unpack_bitmask(bitmask: np.ndarray, vocab_size: int) -> np.ndarray:
    """Boolean [rows, vocab_size] (True = allowed) of a packed bitmask [rows, words]."""
    words = np.ascontiguousarray(bitmask, dtype=np.int32).view(np.uint32)
    bits = (words[..., None] >> np.arange(32, dtype=np.uint32)) & 1
    return bits.reshape(words.shape[0], -1)[:, :vocab_size].astype(bool)


def allowed_token_ids(bitmask: np.ndarray, row: int, vocab_size: int) -> np.ndarray:
    """The token ids a row of a bitmask allows, ascending (for tests and debugging)."""
    return np.flatnonzero(unpack_bitmask(bitmask[row : row + 1], vocab_size)[0])


class Constraint(ABC):
    """The token constraint of one sequence, with its own state (e.g. a grammar matcher).

    Each step the sequence samples, the engine calls ``fill_bitmask`` for the next token, the
    backend masks the logits with it, and the sampled token is passed to ``accept``. A sequence
    preempted and recomputed keeps its constraint: its tokens are not accepted a second time.
    Methods run on the engine's step thread. An exception from any of them, or ``accept``
    returning False, ends only this sequence (finish reason "abort", with an error); the engine
    keeps going.
    """

    @abstractmethod
    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Write the tokens allowed next into ``bitmask[row]`` (int32, xgrammar's packing).

        The row arrives with every token allowed; write all of it or clear the banned bits.
        xgrammar: ``matcher.fill_next_token_bitmask(torch.from_numpy(bitmask), row)``.
        """

    @abstractmethod
    def accept(self, token_id: int) -> bool:
        """Advance past the sampled ``token_id``; False if the constraint rejects it."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once the constraint is complete: the sequence then stops (finish reason "stop").

        A grammar that ends with the end-of-sequence token accepts it and then reports True."""

    def is_ready(self) -> bool:
        """False while the constraint is still being prepared (its grammar compiling): the
        scheduler runs the prompt's prefill but holds back its last token, so the first sample
        waits for the constraint while the prompt is computed."""
        return True


class ConstraintSpec(ABC):
    """What a request asks for (``SamplingParams.constraint``): a factory of ``Constraint``s.

    It is shared by the choices of a request and by copies of its SamplingParams, so keep the
    per-sequence state in the constraints it makes. Compile once here (e.g. the grammar), and
    make cheap matchers in ``new``.
    """

    @abstractmethod
    def new(self) -> Constraint:
        """A fresh constraint for one sequence, at the start of its output.

        Called when the request is added; an exception rejects the request (400)."""

    async def ready(self) -> None:
        """Wait until the constraints this spec makes are ready; raise (a 400) if they never
        will be. Protocols await it (``GenerationStream.ready``) before answering, so a spec
        still compiling when the request was queued fails the request cleanly."""
        return None


@dataclass(frozen=True, slots=True)
class LogitsRow:
    """One row of the logits a ``LogitsProcessor`` is asked to edit: a sequence about to sample."""

    index: int  # row in the logits tensor
    seq_id: int  # unique per sequence (each choice of a request has its own)
    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]  # tokens sampled so far


class LogitsProcessor(ABC):
    """Batch-level logits editing, created once per engine (``LLMEngine(logits_processors=...)``).

    A plugin registers the class through ``llmserve_logits_processors``; ``--logits-processors
    NAME`` makes one instance (called with no arguments) per generative model. A request passes
    its own arguments in ``vllm_xargs`` (``SamplingParams.extra_args``), which ``is_active``
    and ``apply`` can read from ``params``.

    Each step, for the rows of sequences it is active for, the backend calls ``apply`` with the
    step's logits after the constraints' bitmask, ``allowed_token_ids``, the ``min_tokens`` ban
    and ``logit_bias``, before penalties, temperature and truncation. Logprobs stay those of the
    model. An exception from a processor ends the sequences of the rows it was given, not the
    engine. Backends that cannot run processors refuse them at start.
    """

    def is_active(self, params: SamplingParams) -> bool:
        """Whether rows of a request with these params need this processor (cheap; per row and
        step). The default: every row."""
        return True

    @abstractmethod
    def apply(self, logits: Any, rows: Sequence[LogitsRow]) -> None:
        """Edit ``logits`` in place at ``row.index`` for each of ``rows`` (the active ones).

        ``logits`` is the backend's native float32 tensor [sampling rows, vocab] (a torch tensor
        on the torch backends); other rows must be left as they are."""
