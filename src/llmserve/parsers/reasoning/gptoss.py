"""gpt-oss (Harmony): the ``analysis`` channel is reasoning, ``final`` (and commentary to the
user) is content. A message addressed to a tool passes through whole, markup included, as
content, for the ``openai`` tool parser behind this one; other markup is dropped."""

from __future__ import annotations

from llmserve.parsers.base import ParsedDelta, ReasoningParser
from llmserve.parsers.harmony import END_TOKENS, HEADER_STARTS, MESSAGE, channel, recipient
from llmserve.parsers.markers import find_first, locate


class GptOssReasoningParser(ReasoningParser):
    """Harmony channels: analysis -> reasoning, final -> content, tool calls -> raw content."""

    needs_special_tokens = True

    def __init__(self, tokenizer=None, *, chat_template_kwargs=None) -> None:
        super().__init__(tokenizer, chat_template_kwargs=chat_template_kwargs)
        self._buffer = ""
        self._header: str | None = None  # an unfinished message header
        self._kind = "content"  # where the current body goes: reasoning, content or raw

    def feed(self, delta: str) -> ParsedDelta:
        """Consume streamed text; hold back only a possible partial token."""
        self._buffer += delta
        return self._drain(final=False)

    def finish(self) -> ParsedDelta:
        """The output ended: send what was held back (an unfinished header is dropped)."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> ParsedDelta:
        out = ParsedDelta()
        while self._buffer:
            if self._header is not None:
                index = self._buffer.find(MESSAGE)
                if index < 0:
                    if final:
                        self._buffer = ""
                    return out
                header = self._header + self._buffer[: index + len(MESSAGE)]
                self._buffer, self._header = self._buffer[index + len(MESSAGE) :], None
                to = recipient(header)
                if to is not None:
                    self._kind = "raw"
                    out.content += header
                else:
                    self._kind = "reasoning" if channel(header) == "analysis" else "content"
                continue
            markers = HEADER_STARTS + END_TOKENS
            index, marker = find_first(self._buffer, markers)
            if index < 0:
                _, _, hold = locate(self._buffer, markers, final)
                self._send(out, self._buffer[: len(self._buffer) - hold])
                self._buffer = self._buffer[len(self._buffer) - hold :]
                return out
            self._send(out, self._buffer[:index])
            self._buffer = self._buffer[index + len(marker) :]
            if marker in END_TOKENS:
                if self._kind == "raw":
                    out.content += marker
                self._kind = "content"
            else:
                self._header = marker
        return out

    def _send(self, out: ParsedDelta, text: str) -> None:
        if self._kind == "reasoning":
            out.reasoning += text
        else:
            out.content += text
