"""gpt-oss's Harmony format: a call is a message to ``functions.NAME`` on the commentary
channel, ``<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>``
(the recipient may also follow the role: ``<|start|>assistant to=functions.NAME<|channel|>...``).
Other messages' headers and end tokens are dropped, so their text reads as content; with the
``openai_gptoss`` reasoning parser in front, only the final answer and the calls reach here."""

from __future__ import annotations

from llmserve.parsers.base import PartialCall, Section, ToolParser
from llmserve.parsers.harmony import END_TOKENS, MESSAGE, recipient
from llmserve.parsers.json_calls import arguments_at, close_after


class OpenAIToolParser(ToolParser):
    """gpt-oss (Harmony): calls are messages addressed to ``functions.NAME``."""

    start_markers = ("<|start|>", "<|channel|>", *END_TOKENS)
    needs_special_tokens = True

    def parse_section(self, text: str, final: bool) -> Section:
        if text.startswith(END_TOKENS):
            return Section(end=self.marker_len)  # markup: dropped
        index = text.find(MESSAGE)
        if index < 0:
            return Section(end=len(text)) if final else Section()
        body = index + len(MESSAGE)
        to = recipient(text[:index])
        if to is None or not to.startswith("functions."):
            return Section(end=body)  # the header is dropped, the body flows as content
        arguments, done, error = arguments_at(self, text, body, final)
        call = PartialCall(to.removeprefix("functions."), arguments, done)
        if not done:
            return Section([call])
        scan = self.json_at(text, body, final)
        if scan.done is None:
            return Section([call], len(text) if error is None else error)
        for token in END_TOKENS:
            end = close_after(text, scan.done, token, final)
            if end is None or end != scan.done:
                return Section([call], end)
        return Section([call], scan.done)
