"""Structured outputs: request fields -> a compiled grammar -> one matcher per sequence.

``request`` reads what a request asks for (``StructuredOutputs``), ``compiler`` compiles it for a
model with the xgrammar or llguidance backend (``StructuredOutputCompiler``), and the result is a
``ConstraintSpec`` the engine runs like any other constraint.
"""

from llmserve.structured.compiler import StructuredOutputCompiler
from llmserve.structured.request import StructuredOutputs, parse_request

__all__ = ["StructuredOutputCompiler", "StructuredOutputs", "parse_request"]
