"""Reasoning-aware constraints: the grammar starts once the model has finished thinking.

vLLM's semantics with a reasoning parser: the reasoning text is free, the structured output
follows its end marker (``</think>``). ``AfterMarker`` wraps any ConstraintSpec so that each
sequence is unconstrained until its output contains the marker's token ids, and constrained after.
With a ``budget`` (vLLM's ``thinking_token_budget``, Anthropic's ``thinking.budget_tokens``) a
sequence that is still reasoning after that many tokens is made to write the marker next.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmserve.engine.constraints import Constraint, ConstraintSpec, set_allowed_tokens


class AfterMarker(ConstraintSpec):
    """``inner`` (None: nothing) applied from the token after ``marker_ids`` on (a reasoning end
    such as ``</think>``, as the model's tokenizer writes it); at most ``budget`` tokens before it."""

    def __init__(
        self, inner: ConstraintSpec | None, marker_ids: Sequence[int], budget: int | None = None
    ) -> None:
        if not marker_ids:
            raise ValueError("the end-of-reasoning marker has no tokens")
        if budget is not None and budget < 0:
            raise ValueError("the reasoning budget must be >= 0")
        self.inner = inner
        self.marker_ids = tuple(marker_ids)
        self.budget = budget

    def new(self) -> Constraint:
        inner = self.inner.new() if self.inner is not None else None
        return _AfterMarkerConstraint(inner, self.marker_ids, self.budget)

    async def ready(self) -> None:
        if self.inner is not None:
            await self.inner.ready()


class _AfterMarkerConstraint(Constraint):
    __slots__ = ("budget", "count", "inner", "marker", "recent", "started")

    def __init__(self, inner: Constraint | None, marker: tuple[int, ...], budget: int | None) -> None:
        self.inner = inner
        self.marker = marker
        self.budget = budget
        self.count = 0  # tokens written before the marker
        self.recent: list[int] = []
        self.started = False

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        if self.started:
            if self.inner is not None:
                self.inner.fill_bitmask(bitmask, row)
        elif self.budget is not None and self.count >= self.budget:
            set_allowed_tokens(bitmask, row, (self.marker[self._matched()],))
        # else: still reasoning within budget, the row stays as it came (everything allowed)

    def _matched(self) -> int:
        """How many of the marker's first tokens the output ends with (the marker being forced
        may already have begun)."""
        for k in range(min(len(self.recent), len(self.marker) - 1), 0, -1):
            if tuple(self.recent[-k:]) == self.marker[:k]:
                return k
        return 0

    def accept(self, token_id: int) -> bool:
        if self.started:
            return self.inner.accept(token_id) if self.inner is not None else True
        self.count += 1
        self.recent = (self.recent + [token_id])[-len(self.marker) :]
        self.started = tuple(self.recent) == self.marker
        return True

    def is_terminated(self) -> bool:
        return self.started and self.inner is not None and self.inner.is_terminated()

    def is_ready(self) -> bool:
        return self.inner is None or self.inner.is_ready()
