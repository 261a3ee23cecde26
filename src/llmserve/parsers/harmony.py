"""Pieces of OpenAI's Harmony format (gpt-oss) shared by its reasoning and tool parsers.

A message is ``<|start|>ROLE[ to=RECIPIENT]<|channel|>CHANNEL[ to=RECIPIENT][ <|constrain|>TYPE]
<|message|>BODY`` ending in ``<|end|>``, ``<|call|>`` (a tool call) or ``<|return|>``; the model's
output begins after the prompt's ``<|start|>assistant``, so usually at ``<|channel|>``."""

from __future__ import annotations

import re

MESSAGE = "<|message|>"
HEADER_STARTS = ("<|start|>", "<|channel|>")
END_TOKENS = ("<|end|>", "<|call|>", "<|return|>")

_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
_CHANNEL = re.compile(r"<\|channel\|>\s*([\w-]+)")


def recipient(header: str) -> str | None:
    """Who a message is addressed to (``functions.get_weather``), None for the user."""
    match = _RECIPIENT.search(header)
    return match.group(1) if match else None


def channel(header: str) -> str | None:
    """A message's channel: ``analysis``, ``commentary`` or ``final``."""
    match = _CHANNEL.search(header)
    return match.group(1) if match else None
