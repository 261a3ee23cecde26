"""``auto``: every known format at once, for a model whose format is unknown or loose (small
models often write bare or fenced JSON instead of their template's tags). Each section is
handed to the parser of the format its marker (and the text after it) shows."""

from __future__ import annotations

from llmserve.parsers.base import Section, ToolParser
from llmserve.parsers.json_calls import skip_ws
from llmserve.parsers.markers import could_start
from llmserve.parsers.tool.json_formats import (
    GraniteToolParser,
    HermesToolParser,
    InternLMToolParser,
    JsonCallsToolParser,
    Phi4MiniToolParser,
)
from llmserve.parsers.tool.marked import DeepSeekV3ToolParser, DeepSeekV31ToolParser, KimiK2ToolParser
from llmserve.parsers.tool.mistral import MistralToolParser
from llmserve.parsers.tool.openai import OpenAIToolParser
from llmserve.parsers.tool.pythonic import Llama4PythonicToolParser
from llmserve.parsers.tool.xml_params import Glm45ToolParser, Qwen3CoderToolParser


class _AnyJson(JsonCallsToolParser):
    formats = {"<|python_tag|>": None, "```json": "```", "```": "```", "[TOOL_CALLS]": None}


_MARKERS: dict[str, type[ToolParser]] = {
    "<tool_call>": HermesToolParser,  # or Qwen3-Coder's or GLM's, by what follows
    "[TOOL_CALLS]": MistralToolParser,
    "<|python_tag|>": _AnyJson,
    "```json": _AnyJson,
    "```": _AnyJson,
    "<｜tool▁calls▁begin｜>": DeepSeekV31ToolParser,  # or V3's, by the header
    "<|tool_calls_section_begin|>": KimiK2ToolParser,
    "<|tool_call|>": GraniteToolParser,
    "<|action_start|><|plugin|>": InternLMToolParser,
    "functools": Phi4MiniToolParser,
    "<|python_start|>": Llama4PythonicToolParser,
    "<|channel|>": OpenAIToolParser,
    "<|start|>": OpenAIToolParser,
}


class AutoToolParser(ToolParser):
    """Tries the known formats: tagged (Hermes, Qwen3-Coder, GLM, DeepSeek, Kimi, Granite,
    InternLM, Mistral, Phi-4, Harmony), JSON or a Python call list opening the output, and
    JSON in a ```json fence anywhere."""

    start_markers = tuple(_MARKERS)
    needs_special_tokens = True

    def __init__(self, tokenizer=None, *, tools=None) -> None:
        super().__init__(tokenizer, tools=tools)
        self._parsers: dict[type[ToolParser], ToolParser] = {}

    def find_start(self, text: str, final: bool) -> tuple[int, int, int]:
        if self.at_start:
            first = skip_ws(text, 0)
            if first == len(text):
                return -1, 0, 0 if final else len(text)
            rest = text[first:]
            if text[first] in "{[" and not any(could_start(rest, m) for m in self.start_markers):
                return first, 0, 0
        return super().find_start(text, final)

    def parse_section(self, text: str, final: bool) -> Section:
        chosen = self._choose(text, final)
        if chosen is None:
            return Section(failed=final)
        parser = self._parsers.get(chosen)
        if parser is None:
            parser = self._parsers[chosen] = chosen(self.tokenizer, tools=self.tools)
        parser.marker_len, parser._scans = self.marker_len, self._scans  # this section's state
        return parser.parse_section(text, final)

    def _choose(self, text: str, final: bool) -> type[ToolParser] | None:
        marker = text[: self.marker_len]
        after = text[skip_ws(text, self.marker_len) :]
        if not marker:  # bare JSON or a Python call list opening the output
            if after.startswith("{"):
                return _AnyJson
            inner = after[skip_ws(after, 1) :]
            if not inner and not final:
                return None
            return (
                _AnyJson
                if inner.startswith(("{", "]")) or not inner[:1].isalpha()
                else Llama4PythonicToolParser
            )
        if marker == "<tool_call>":
            if not after and not final:
                return None
            if after.startswith("{"):
                return HermesToolParser
            if could_start(after, "<function="):
                return Qwen3CoderToolParser if len(after) >= 10 or final else None
            return Glm45ToolParser
        if marker == "<｜tool▁calls▁begin｜>":
            head = "<｜tool▁call▁begin｜>function<｜tool▁sep｜>"
            if could_start(after, head) and len(after) < len(head) and not final:
                return None
            return DeepSeekV3ToolParser if after.startswith(head) else DeepSeekV31ToolParser
        return _MARKERS[marker]
