"""The scheduler's waiting queue, one class per scheduling policy (vLLM's "fcfs" and "priority").

FCFS: arrivals join the back; preempted sequences and the released choices of a request go to
the front, so they resume before anything newer. Priority: a heap on (priority, arrival time),
lower first, whatever the reason a sequence waits.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator

from llmserve.engine.request import Sequence
from llmserve.errors import ConfigError

POLICIES = ("fcfs", "priority")


def schedule_key(seq: Sequence) -> tuple[int, float, int]:
    """The priority order: lower priority value, then earlier arrival, then creation order."""
    return seq.priority, seq.arrival_time, seq.seq_id


class WaitingQueue(ABC):
    """Sequences waiting for admission; ``peek`` is the next one the policy admits."""

    @abstractmethod
    def add(self, seq: Sequence) -> None:
        """A new arrival."""

    @abstractmethod
    def add_front(self, seqs: list[Sequence]) -> None:
        """Sequences to resume soon: preempted ones, or choices released by their choice 0."""

    @abstractmethod
    def peek(self) -> Sequence: ...

    @abstractmethod
    def pop(self) -> Sequence: ...

    @abstractmethod
    def remove(self, seq: Sequence) -> None: ...

    @abstractmethod
    def __iter__(self) -> Iterator[Sequence]: ...

    @abstractmethod
    def __len__(self) -> int: ...

    def __bool__(self) -> bool:
        return len(self) > 0

    def __contains__(self, seq: object) -> bool:
        return any(s is seq for s in self)


class FcfsQueue(WaitingQueue):
    def __init__(self) -> None:
        self._queue: deque[Sequence] = deque()

    def add(self, seq: Sequence) -> None:
        self._queue.append(seq)

    def add_front(self, seqs: list[Sequence]) -> None:
        self._queue.extendleft(reversed(seqs))

    def peek(self) -> Sequence:
        return self._queue[0]

    def pop(self) -> Sequence:
        return self._queue.popleft()

    def remove(self, seq: Sequence) -> None:
        self._queue.remove(seq)

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self._queue)

    def __len__(self) -> int:
        return len(self._queue)


class PriorityQueue(WaitingQueue):
    def __init__(self) -> None:
        self._heap: list[tuple[tuple[int, float, int], Sequence]] = []

    def add(self, seq: Sequence) -> None:
        heapq.heappush(self._heap, (schedule_key(seq), seq))  # keys are unique: seqs never compared

    def add_front(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            self.add(seq)

    def peek(self) -> Sequence:
        return self._heap[0][1]

    def pop(self) -> Sequence:
        return heapq.heappop(self._heap)[1]

    def remove(self, seq: Sequence) -> None:
        # Aborts are rare next to steps: a linear scan and re-heapify is fine.
        index = next(i for i, (_, s) in enumerate(self._heap) if s is seq)
        self._heap[index] = self._heap[-1]
        self._heap.pop()
        heapq.heapify(self._heap)

    def __iter__(self) -> Iterator[Sequence]:
        return (seq for _, seq in self._heap)

    def __len__(self) -> int:
        return len(self._heap)


def make_waiting_queue(policy: str) -> WaitingQueue:
    """The queue for a scheduling policy name; ConfigError for an unknown one."""
    if policy == "fcfs":
        return FcfsQueue()
    if policy == "priority":
        return PriorityQueue()
    raise ConfigError(f"scheduling_policy must be one of {', '.join(POLICIES)}; got {policy!r}")
