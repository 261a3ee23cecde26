"""Reasoning-aware constraints: the grammar starts once the model has finished thinking.

vLLM's semantics with a reasoning parser: the reasoning text is free, the structured output
follows its end marker (``</think>``). ``AfterMarker`` wraps any ConstraintSpec so that each
sequence is unconstrained until its output contains the marker's token ids, and constrained after.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmserve.engine.constraints import Constraint, ConstraintSpec


class AfterMarker(ConstraintSpec):
    """``inner`` applied from the token after ``marker_ids`` on (a reasoning end such as
    ``</think>``, as the model's tokenizer writes it)."""

    def __init__(self, inner: ConstraintSpec, marker_ids: Sequence[int]) -> None:
        if not marker_ids:
            raise ValueError("the end-of-reasoning marker has no tokens")
        self.inner = inner
        self.marker_ids = tuple(marker_ids)

    def new(self) -> Constraint:
        return _AfterMarkerConstraint(self.inner.new(), self.marker_ids)


class _AfterMarkerConstraint(Constraint):
    __slots__ = ("inner", "marker", "recent", "started")

    def __init__(self, inner: Constraint, marker: tuple[int, ...]) -> None:
        self.inner = inner
        self.marker = marker
        self.recent: list[int] = []
        self.started = False

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        if self.started:  # before the marker the row stays as it came: everything allowed
            self.inner.fill_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        if self.started:
            return self.inner.accept(token_id)
        self.recent = (self.recent + [token_id])[-len(self.marker) :]
        self.started = tuple(self.recent) == self.marker
        return True

    def is_terminated(self) -> bool:
        return self.started and self.inner.is_terminated()
