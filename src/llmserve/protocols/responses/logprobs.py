"""``include: ["message.output_text.logprobs"]``: engine logprobs in the Responses shape."""

from __future__ import annotations

from typing import Any

from llmserve.api import ServedModel, TokenLogprob

_FLOOR = -9999.0  # what OpenAI sends instead of -inf, which JSON cannot carry


class LogprobWriter:
    """Engine steps (chosen token, top tokens) -> ``{token, logprob, bytes, top_logprobs}``."""

    def __init__(self, model: ServedModel, top: int) -> None:
        self.tokenizer, self.top = model.tokenizer, top
        self.texts: dict[int, str] = model.cache.setdefault("responses.token_text", {})

    def __call__(self, steps: list[tuple[TokenLogprob, list[TokenLogprob]]]) -> list[dict[str, Any]]:
        return [
            {**self.entry(chosen), "top_logprobs": [self.entry(t) for t in tops[: self.top]]}
            for chosen, tops in steps
        ]

    def entry(self, token: TokenLogprob) -> dict[str, Any]:
        """One token's text, bytes and logprob."""
        text = self.texts.get(token.token_id)
        if text is None:
            text = self.texts[token.token_id] = self.tokenizer.decode([token.token_id])
        return {"token": text, "logprob": max(token.logprob, _FLOOR), "bytes": list(text.encode())}
