"""Feeding parsers the same text in different chunkings, and collecting what they send."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "parsers"


def load(name: str) -> list[dict]:
    return json.loads((FIXTURES / name).read_text())


def char_chunks(text: str) -> list[str]:
    return list(text)


def token_chunks(text: str, tok) -> list[str]:
    """The text cut where SmolLM2's tokenizer cuts it (as a stream of 1-token deltas would be)."""
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces, done = [], 0
    for _, end in encoded["offset_mapping"]:
        if end > done:
            pieces.append(text[done:end])
            done = end
    if done < len(text):
        pieces.append(text[done:])
    assert "".join(pieces) == text
    return pieces


@dataclass
class Collected:
    """Everything a parser (or pipeline) sent, put together as a client would."""

    content: str = ""
    reasoning: str = ""
    calls: list[dict] = field(default_factory=list)
    deltas: list = field(default_factory=list)

    def add(self, delta) -> None:
        self.content += delta.content
        self.reasoning += delta.reasoning
        for call in delta.tool_calls:
            self.deltas.append(call)
            item = call.to_dict()
            if call.name is not None:
                assert call.index == len(self.calls), "calls must be numbered in order"
                assert set(item) == {"index", "id", "type", "function"} and item["id"]
                self.calls.append({"id": call.id, "name": call.name, "arguments": call.arguments})
            else:
                assert set(item) == {"index", "function"} and set(item["function"]) == {"arguments"}
                self.calls[call.index]["arguments"] += call.arguments

    def summary(self) -> tuple:
        return self.content, self.reasoning, [(c["name"], c["arguments"]) for c in self.calls]


def stream(parser, chunks: list[str]) -> Collected:
    got = Collected()
    for chunk in chunks:
        got.add(parser.feed(chunk))
    got.add(parser.finish())
    return got
