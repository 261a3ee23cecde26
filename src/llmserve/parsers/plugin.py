"""The built-in parsers, registered as any plugin's would be (short name ``parsers``)."""

from __future__ import annotations

from llmserve import hookimpl
from llmserve.parsers.reasoning.gptoss import GptOssReasoningParser
from llmserve.parsers.reasoning.think import (
    DeepSeekR1ReasoningParser,
    DeepSeekV3ReasoningParser,
    Glm45ReasoningParser,
    GraniteReasoningParser,
    HunyuanA13BReasoningParser,
    KimiK2ReasoningParser,
    MistralReasoningParser,
    Qwen3ReasoningParser,
)
from llmserve.parsers.tool.auto import AutoToolParser
from llmserve.parsers.tool.json_formats import (
    Granite4ToolParser,
    GraniteToolParser,
    HermesToolParser,
    InternLMToolParser,
    Llama3JsonToolParser,
    Phi4MiniToolParser,
    XLamToolParser,
)
from llmserve.parsers.tool.marked import DeepSeekV3ToolParser, DeepSeekV31ToolParser, KimiK2ToolParser
from llmserve.parsers.tool.mistral import MistralToolParser
from llmserve.parsers.tool.openai import OpenAIToolParser
from llmserve.parsers.tool.pythonic import Llama4PythonicToolParser, PythonicToolParser
from llmserve.parsers.tool.xml_params import (
    Glm45ToolParser,
    Glm47ToolParser,
    Qwen3CoderToolParser,
    Qwen3XmlToolParser,
)

TOOL_PARSERS = {
    "hermes": HermesToolParser,
    "qwen3_coder": Qwen3CoderToolParser,
    "qwen3_xml": Qwen3XmlToolParser,
    "llama3_json": Llama3JsonToolParser,
    "llama4_pythonic": Llama4PythonicToolParser,
    "pythonic": PythonicToolParser,
    "mistral": MistralToolParser,
    "granite": GraniteToolParser,
    "granite4": Granite4ToolParser,
    "deepseek_v3": DeepSeekV3ToolParser,
    "deepseek_v31": DeepSeekV31ToolParser,
    "kimi_k2": KimiK2ToolParser,
    "glm45": Glm45ToolParser,
    "glm47": Glm47ToolParser,
    "xlam": XLamToolParser,
    "phi4_mini_json": Phi4MiniToolParser,
    "internlm": InternLMToolParser,
    "openai": OpenAIToolParser,
    "auto": AutoToolParser,
}

REASONING_PARSERS = {
    "deepseek_r1": DeepSeekR1ReasoningParser,
    "qwen3": Qwen3ReasoningParser,
    "granite": GraniteReasoningParser,
    "mistral": MistralReasoningParser,
    "glm45": Glm45ReasoningParser,
    "hunyuan_a13b": HunyuanA13BReasoningParser,
    "openai_gptoss": GptOssReasoningParser,
    "deepseek_v3": DeepSeekV3ReasoningParser,
    "kimi_k2": KimiK2ReasoningParser,
}


@hookimpl
def llmserve_tool_parsers(register):
    for name, cls in TOOL_PARSERS.items():
        register(name, cls)


@hookimpl
def llmserve_reasoning_parsers(register):
    for name, cls in REASONING_PARSERS.items():
        register(name, cls)
