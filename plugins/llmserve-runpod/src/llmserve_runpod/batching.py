"""worker-vllm's stream batching: a job's stream yields groups of chunks, the first group of
``min_batch_size``, each next one ``growth_factor`` times larger up to ``max_batch_size``, so
the first token leaves at once and long streams cost few posts to RunPod."""

from __future__ import annotations


class BatchSize:
    """The size of the current group of streamed chunks."""

    def __init__(self, max_batch_size: int, min_batch_size: int, growth_factor: float) -> None:
        self.max_batch_size = max_batch_size
        self.growth_factor = growth_factor
        self.dynamic = growth_factor > 1 and min_batch_size >= 1 and max_batch_size > min_batch_size
        self.current = min_batch_size if self.dynamic else max_batch_size

    def update(self) -> None:
        """After a group is sent: the next is larger (when dynamic)."""
        if self.dynamic:
            self.current = min(int(self.current * self.growth_factor), self.max_batch_size)
