"""Incremental detokenization with stop strings, on the API side (pure Python + a HF tokenizer).

Tokens are decoded in a small sliding window, vLLM's prefix/read offset scheme: the text of
``ids[prefix:]`` minus the text of ``ids[prefix:read]`` is the delta. The window starts with a few
prompt tokens so the first output token gets its leading space right (SentencePiece drops a
leading space at the start of a decode), and a delta is held back while it ends in U+FFFD: the
bytes of a multi-byte character are still arriving (byte-fallback or byte-level tokens).

Stop strings are matched in the decoded text across token boundaries. While streaming, a tail
that could still be the start of a stop string is held back, so a client never sees text that a
stop string later removes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llmserve.engine.sampling import SamplingParams

_REPLACEMENT = "\ufffd"
# Prompt tokens decoded ahead of the output: at least _MIN_CONTEXT, more (up to _MAX_CONTEXT)
# when the window would start inside a multi-byte character.
_MIN_CONTEXT = 5
_MAX_CONTEXT = 24


class IncrementalDetokenizer:
    """Turns one choice's output tokens into text deltas and watches for stop strings.

    ``add`` returns the text that became final; ``finish`` flushes what was held back (an
    incomplete character, a possible stop-string start) when generation ends for another reason.
    ``text`` is the concatenation of everything returned. Once a stop string matched, ``stopped``
    is True, ``stop_reason`` is that string, and further tokens are ignored.

    Decoding never applies ``clean_up_tokenization_spaces`` (it is not stable under appending).
    With ``skip_special_tokens=False`` and ``spaces_between_special_tokens=False``, added tokens
    are emitted as their raw content and the text on either side is decoded separately, so no
    decoder-inserted whitespace appears around them (the slow-tokenizer meaning of the flag).
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        self.params = params
        self.text = ""
        self.stop_reason: str | None = None
        self._decode = _decoder(tokenizer, params.skip_special_tokens)
        self._enabled = params.detokenize
        self._stops = list(params.stop) if params.detokenize else []
        self._hold_stops = bool(self._stops) and not params.include_stop_str_in_output
        self._tail_len = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""  # decoded, not yet released: a possible start of a stop string
        self._finished = False
        # Added tokens that break the decode window (see the class docstring).
        self._added: dict[int, str] = {}
        if not params.skip_special_tokens and not params.spaces_between_special_tokens:
            self._added = _added_tokens(tokenizer)
        prompt = list(prompt_token_ids)
        if self._added:
            last = max((i for i, t in enumerate(prompt) if t in self._added), default=-1)
            prompt = prompt[last + 1 :]
        self._ids = self._context(prompt) if self._enabled else []
        self._read = len(self._ids)  # ids[:read] are already turned into text
        self._prefix_text = self._decode(self._ids)

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def add(self, token_ids: Sequence[int]) -> str:
        """Feed new output tokens; return the newly finalised text (possibly empty)."""
        if self.stopped or self._finished or not self._enabled or not token_ids:
            return ""
        if not self._added:
            return self._release(self._decode_more(token_ids), final=False)
        parts, run = [], []
        for token in token_ids:
            if token in self._added:
                if run:
                    parts.append(self._decode_more(run))
                    run = []
                parts.append(self._flush_window())
                parts.append(self._added[token])
            else:
                run.append(token)
        if run:
            parts.append(self._decode_more(run))
        return self._release("".join(parts), final=False)

    def finish(self) -> str:
        """Generation ended (length, EOS, abort): release everything held back."""
        if self.stopped or self._finished or not self._enabled:
            return ""
        self._finished = True
        return self._release(self._flush_window(), final=True)

    # ------------------------------------------------------------------ decoding

    def _context(self, prompt: list[int]) -> list[int]:
        """The shortest prompt suffix (>= _MIN_CONTEXT tokens) that decodes without U+FFFD."""
        if len(prompt) <= _MIN_CONTEXT:
            return prompt if _REPLACEMENT not in self._decode(prompt) else []
        for n in range(_MIN_CONTEXT, min(len(prompt), _MAX_CONTEXT) + 1):
            if _REPLACEMENT not in self._decode(prompt[-n:]):
                return prompt[-n:]
        return []  # the prompt ends inside a character: decode the output on its own

    def _decode_more(self, token_ids: Sequence[int]) -> str:
        self._ids.extend(token_ids)
        text = self._decode(self._ids)
        if len(text) <= len(self._prefix_text) or text.endswith(_REPLACEMENT):
            return ""  # nothing new, or a character still incomplete
        delta = text[len(self._prefix_text) :]
        # The tokens just decoded become the next window's prefix.
        self._ids = self._ids[self._read :]
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        return delta

    def _flush_window(self) -> str:
        """Text of the tokens not yet turned into text (an incomplete character); empty window."""
        text = self._decode(self._ids) if len(self._ids) > self._read else ""
        delta = text[len(self._prefix_text) :]
        self._ids, self._read, self._prefix_text = [], 0, ""
        return delta

    # ------------------------------------------------------------- stop strings

    def _release(self, new: str, final: bool) -> str:
        pending = self._pending + new
        if not pending:
            return ""
        if self._stops:
            match = self._find_stop(pending, len(new))
            if match is not None:
                start, end, stop = match
                cut = end if self.params.include_stop_str_in_output else start
                delta = pending[: max(cut, 0)]
                self._pending = ""
                self.stop_reason = stop
                self.text += delta
                return delta
        hold = 0 if final or not self._hold_stops else self._partial_stop_len(pending)
        delta, self._pending = pending[: len(pending) - hold], pending[len(pending) - hold :]
        self.text += delta
        return delta

    def _find_stop(self, pending: str, new_len: int) -> tuple[int, int, str] | None:
        """The stop string completed first in ``released tail + pending`` by the new text.

        Positions are relative to ``pending``. The match that ends first wins (what a
        character-by-character stream would see first), the longest one if several end there;
        so the result does not depend on how the tokens were chunked.
        """
        tail = self.text[-self._tail_len :] if self._tail_len else ""
        region = tail + pending
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            start = region.find(stop, max(0, len(region) - new_len - len(stop) + 1))
            if start < 0:
                continue
            end = start + len(stop)
            if best is None or (end, start) < (best[1], best[0]):
                best = (start, end, stop)
        if best is None:
            return None
        return best[0] - len(tail), best[1] - len(tail), best[2]

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest end of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best


def _decoder(tokenizer: Any, skip_special_tokens: bool) -> Callable[[list[int]], str]:
    """ids -> text through the Rust tokenizer when there is one (no clean-up, less overhead)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None and hasattr(tokenizer, "get_added_tokens_decoder"):
        backend = tokenizer  # a raw tokenizers.Tokenizer
    if backend is not None:
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(
        ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
    )


def _added_tokens(tokenizer: Any) -> dict[int, str]:
    """Added (special or not) token ids and their content."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if hasattr(backend, "get_added_tokens_decoder"):
        return {int(i): tok.content for i, tok in backend.get_added_tokens_decoder().items()}
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {int(i): str(getattr(tok, "content", tok)) for i, tok in decoder.items()}
