"""Reasoning between a start and an end marker (``<think>...</think>`` and its relatives).

Whitespace around the reasoning and at the start of the content is markup too: it is held
back and dropped, so the reasoning reads ``I should...`` and the content ``The answer...``.
"""

from __future__ import annotations

from llmserve.parsers.base import ParsedDelta, ReasoningParser
from llmserve.parsers.markers import find_first, locate

START, REASONING, CONTENT = "start", "reasoning", "content"


class ThinkingReasoningParser(ReasoningParser):
    """Reasoning from ``starts`` (at the output's start) to one of ``ends`` (dropped) or
    ``implicit_ends`` (kept: they begin the content, as a tool-call section does).

    ``starts_inside``: the chat template opened the reasoning in the prompt, so the output
    begins inside it even without a start marker. ``switch`` names the chat-template kwarg
    that turns reasoning on or off, and ``switch_default`` its value when not given.
    ``content_drops``: markers removed from the content (answer tags)."""

    starts: tuple[str, ...] = ("<think>",)
    ends: tuple[str, ...] = ("</think>",)
    implicit_ends: tuple[str, ...] = ()
    content_drops: tuple[str, ...] = ()
    starts_inside = False
    switch: tuple[str, ...] = ()
    switch_default = True

    def __init__(self, tokenizer=None, *, chat_template_kwargs=None) -> None:
        super().__init__(tokenizer, chat_template_kwargs=chat_template_kwargs)
        given = [self.chat_template_kwargs[k] for k in self.switch if k in self.chat_template_kwargs]
        self.enabled = bool(given[0]) if given else self.switch_default
        self._mode = START if self.enabled else CONTENT
        self._buffer = ""
        self._trim = False  # drop whitespace until the next non-whitespace text

    @property
    def end_marker(self) -> str | None:
        """Where the reasoning ends (structured outputs start after it); None when it is off."""
        return self.ends[0] if self.enabled and self.ends else None

    def feed(self, delta: str) -> ParsedDelta:
        """Consume streamed text; hold back only a possible partial marker (and whitespace)."""
        self._buffer += delta
        return self._drain(final=False)

    def finish(self) -> ParsedDelta:
        """The output ended: what was held back goes out (trailing whitespace is dropped)."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> ParsedDelta:
        out = ParsedDelta()
        while self._buffer:
            if self._mode == START:
                rest = self._buffer.lstrip()
                index, marker, hold = locate(rest, self.starts, final)
                if index == 0:
                    self._buffer, self._mode, self._trim = rest[len(marker) :], REASONING, True
                elif not final and (not rest or hold == len(rest)):
                    return out  # the start marker may still come
                else:
                    self._mode = REASONING if self.starts_inside else CONTENT
                    self._trim = self.starts_inside
            elif self._mode == REASONING:
                index, marker = find_first(self._buffer, self.ends + self.implicit_ends)
                if index >= 0:
                    out.reasoning += self._text(self._buffer[:index], True)
                    kept = marker in self.implicit_ends
                    self._buffer = self._buffer[index if kept else index + len(marker) :]
                    self._mode, self._trim = CONTENT, True
                    continue
                return self._emit(out, "reasoning", self.ends + self.implicit_ends, final)
            else:
                if not self.content_drops:
                    out.content += self._text(self._buffer, False)
                    self._buffer = ""
                    return out
                index, marker = find_first(self._buffer, self.content_drops)
                if index >= 0:
                    out.content += self._text(self._buffer[:index], True)
                    self._buffer = self._buffer[index + len(marker) :]
                    self._trim = True
                    continue
                return self._emit(out, "content", self.content_drops, final)
        return out

    def _emit(self, out: ParsedDelta, field: str, markers: tuple[str, ...], final: bool) -> ParsedDelta:
        _, _, hold = locate(self._buffer, markers, final)
        text = self._buffer[: len(self._buffer) - hold]
        # trailing whitespace waits: it is dropped if the section ends right after it
        kept = text if final else text.rstrip()
        if final:
            kept = text.rstrip()
        setattr(out, field, getattr(out, field) + self._text(kept, False))
        self._buffer = self._buffer[len(kept) :] if not final else ""
        return out

    def _text(self, text: str, closing: bool) -> str:
        if self._trim:
            text = text.lstrip()
            if not text:
                return ""
            self._trim = False
        return text.rstrip() if closing else text


class DeepSeekR1ReasoningParser(ThinkingReasoningParser):
    """DeepSeek-R1 (and its distills, QwQ): the template opens ``<think>``, so the output starts
    inside the reasoning; a ``<think>`` the model writes itself is dropped."""

    starts_inside = True


class Qwen3ReasoningParser(ThinkingReasoningParser):
    """Qwen3: ``<think>...</think>``, opened by the model or by the template; with
    ``enable_thinking: false`` the output is all content."""

    starts_inside = True
    switch = ("enable_thinking",)


class DeepSeekV3ReasoningParser(ThinkingReasoningParser):
    """DeepSeek V3.1+: reasoning only when the request sets ``thinking`` (then as R1)."""

    starts_inside = True
    switch = ("thinking", "enable_thinking")
    switch_default = False


class KimiK2ReasoningParser(ThinkingReasoningParser):
    """Kimi K2 (Thinking): output starts in the reasoning; it ends at ``</think>`` or where a
    tool-call section begins. ``thinking: false`` turns it off."""

    starts_inside = True
    implicit_ends = ("<|tool_calls_section_begin|>",)
    switch = ("thinking",)
    needs_special_tokens = True


class Glm45ReasoningParser(ThinkingReasoningParser):
    """GLM-4.5/4.6/4.7: reasoning when the output opens with ``<think>``; ``enable_thinking:
    false`` turns it off."""

    switch = ("enable_thinking",)


class MistralReasoningParser(ThinkingReasoningParser):
    """Magistral: ``[THINK]...[/THINK]`` opening the output."""

    starts = ("[THINK]",)
    ends = ("[/THINK]",)
    needs_special_tokens = True


class GraniteReasoningParser(ThinkingReasoningParser):
    """Granite 3.2/3.3 with ``thinking: true``: ``Here is my thought process: ... Here is my
    response: ...``."""

    starts = ("Here is my thought process:", "Here's my thought process:")
    ends = ("Here is my response:", "Here's my response:")
    switch = ("thinking",)
    switch_default = False


class HunyuanA13BReasoningParser(ThinkingReasoningParser):
    """Hunyuan-A13B: ``<think>...</think>`` then the answer in ``<answer>...</answer>``."""

    content_drops = ("<answer>", "</answer>")
    switch = ("enable_thinking",)
