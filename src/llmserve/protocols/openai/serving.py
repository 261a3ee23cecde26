"""What completions and chat share: checks, starting engine requests, collecting their outputs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmserve.errors import InvalidRequestError, UnsupportedError
from llmserve.protocols.common import Prompt, merge_streams
from llmserve.protocols.openai.logprobs import Step

if TYPE_CHECKING:
    from llmserve.engine.outputs import CompletionOutput, RequestOutput
    from llmserve.engine.sampling import SamplingParams
    from llmserve.protocols.openai.schemas import VLLMSamplingFields


def check_supported(req: VLLMSamplingFields) -> None:
    """Refuse (400) what this server does not do yet rather than silently ignoring it."""
    if req.use_beam_search:
        raise UnsupportedError("Beam search is not supported.", param="use_beam_search")
    fmt = req.response_format
    if fmt is not None and fmt.get("type", "text") != "text":
        raise UnsupportedError(
            f"response_format of type {fmt.get('type')!r} is not supported yet (structured outputs).",
            param="response_format",
        )
    for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs"):
        if getattr(req, name) is not None:
            raise UnsupportedError(f"{name} is not supported yet (structured outputs).", param=name)


def stream_flags(req: Any) -> tuple[bool, bool]:
    """(include_usage, continuous_usage_stats) from stream_options, which needs stream=true."""
    options = req.stream_options
    if options is None:
        return False, False
    if not req.stream:
        raise InvalidRequestError(
            "Stream options can only be defined when `stream=True`.", param="stream_options"
        )
    return bool(options.include_usage), bool(options.continuous_usage_stats)


def start_requests(
    engine: Any, base_id: str, prompts: Sequence[Prompt], params: Sequence[SamplingParams]
) -> list[AsyncIterator[RequestOutput]]:
    """Validate every prompt first (so a bad one is a plain 400 before anything runs), then start
    one engine request per prompt."""
    for prompt, p in zip(prompts, params, strict=True):
        engine.validate(prompt.token_ids, p)
    if len(prompts) == 1:
        return [engine.generate(base_id, prompts[0].token_ids, params[0])]
    return [
        engine.generate(f"{base_id}-{i}", pr.token_ids, p)
        for i, (pr, p) in enumerate(zip(prompts, params, strict=True))
    ]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


@dataclass(slots=True)
class ChoiceResult:
    """One choice, accumulated from the engine's deltas."""

    index: int
    texts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Step] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def add(self, out: CompletionOutput) -> None:
        self.texts.append(out.text)
        self.token_ids.extend(out.token_ids)
        if out.logprobs:
            self.logprobs.extend(out.logprobs)
        if out.finish_reason is not None:
            self.finish_reason, self.stop_reason = out.finish_reason, out.stop_reason


@dataclass(slots=True)
class PromptResult:
    """One prompt's finished request: its n choices, prompt logprobs and cached-token count."""

    prompt: Prompt
    choices: list[ChoiceResult]
    prompt_logprobs: list[Step | None] | None = None
    num_cached_tokens: int = 0


async def collect(
    streams: Sequence[AsyncIterator[RequestOutput]], prompts: Sequence[Prompt], n: int
) -> list[PromptResult]:
    """Run the requests to the end; choice indexes are ``prompt_index * n + j`` like vLLM."""
    results = [PromptResult(p, [ChoiceResult(i * n + j) for j in range(n)]) for i, p in enumerate(prompts)]
    async for i, out in merge_streams(streams):
        result = results[i]
        if out.prompt_logprobs is not None:
            result.prompt_logprobs = out.prompt_logprobs
        result.num_cached_tokens = max(result.num_cached_tokens, out.num_cached_tokens)
        for choice in out.outputs:
            result.choices[choice.index].add(choice)
    return results
