"""ProtocolContext: what a protocol plugin's routes use to serve a request."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmserve.engine.constraints import ConstraintSpec
from llmserve.engine.sampling import SamplingParams
from llmserve.engine.stream import GenerationStream, OutputKind
from llmserve.errors import InvalidRequestError
from llmserve.protocols.shared import chat_template, sampling
from llmserve.protocols.shared import prompts as prompt_parsing
from llmserve.server.limits import ClientLimits
from llmserve.server.registry import EMBED, GENERATE, TRANSCRIBE, ModelRegistry, ServedModel
from llmserve.server.speech_options import check_speech_options
from llmserve.structured import StructuredOutputCompiler, StructuredOutputs, parse_request
from llmserve.structured.reasoning import AfterMarker

if TYPE_CHECKING:
    from llmserve.config import Config
    from llmserve.engine.transcription import TranscriptEvent
    from llmserve.plugins import Plugins


@dataclass(frozen=True, slots=True)
class RenderedChat:
    """A conversation rendered with the chat template: its text and token ids."""

    text: str
    token_ids: list[int]


class ProtocolContext:
    """The served models and the operations protocol routes need, validated once each.

    One per server; a route reaches it with ``llmserve.api.context()``. Every method raises an
    ``LLMServeError`` subclass for what the client got wrong (400, 404, 413, 503...), which the app
    turns into the protocol's error shape.
    """

    def __init__(self, config: Config, plugins: Plugins, models: ModelRegistry | None = None) -> None:
        self.config = config
        self.plugins = plugins
        self.models = models if models is not None else ModelRegistry()
        self.created = int(time.time())
        self.backends: list[Any] = []  # the backend instances the models run on, shut down at exit
        self.protocols: list[str] = []  # names of the mounted protocol plugins
        self.server_load = 0  # requests in flight on the inference routes
        self._placeholder_metrics = None
        self.limits = ClientLimits(config)
        self._compilers: dict[str, StructuredOutputCompiler] = {}
        self._error_renderers: dict[str, Callable[[int, str], Any]] = {}
        self._open_paths: dict[str, bool] = {}  # path -> whether everything under it is open too

    @property
    def capabilities(self) -> frozenset[str]:
        return self.models.capabilities

    def model_for(self, name: str | None, capability: str | None = GENERATE) -> ServedModel:
        """The served model a request names (see ``ModelRegistry.model_for``)."""
        return self.models.model_for(name, capability)

    # --- errors ----------------------------------------------------------------------------------

    def register_error_renderer(self, prefix: str, render: Callable[[int, str], Any]) -> None:
        """Answer every error under the path ``prefix`` with ``render(status, message)`` (a Quart
        Response) instead of OpenAI's shape: route errors, the API-key check's 401, unknown paths.
        A protocol with its own error format calls it from its blueprint factory."""
        self._error_renderers[prefix.rstrip("/")] = render

    def error_renderer(self, path: str) -> Callable[[int, str], Any] | None:
        """The renderer registered for the longest prefix of ``path``, or None."""
        best = None
        for prefix, render in self._error_renderers.items():
            if (path == prefix or path.startswith(prefix + "/")) and (
                best is None or len(prefix) > len(best[0])
            ):
                best = (prefix, render)
        return best[1] if best else None

    def register_open_path(self, path: str, subtree: bool = False) -> None:
        """Let ``path`` (with ``subtree``, everything under it too) be reached without the API key:
        a page or its assets, never a route that generates or reveals data."""
        self._open_paths[path.rstrip("/") or "/"] = subtree

    def is_open_path(self, path: str) -> bool:
        """Whether ``path`` was opened with ``register_open_path``."""
        if path in self._open_paths:
            return True
        return any(sub and path.startswith(p + "/") for p, sub in self._open_paths.items() if p != "/")

    # --- prompts ---------------------------------------------------------------------------------

    def tokenize(
        self, model: ServedModel, text: str, add_special_tokens: bool = True, param: str | None = "prompt"
    ) -> list[int]:
        """``text`` as the model's token ids. A text too long to fit the model's context is a
        400 naming ``param``, refused before it is tokenized; ``param=None`` takes any length."""
        if param is not None:
            prompt_parsing.check_text_fits(model.tokenizer, text, model.max_model_len, param)
        return list(model.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def detokenize(
        self,
        model: ServedModel,
        token_ids: Sequence[int],
        skip_special_tokens: bool = False,
        param: str = "tokens",
    ) -> str:
        """Token ids back to text; an id outside the vocabulary is a 400 naming ``param``, and so
        are more ids than ``most_tokens`` (far above the context; keeps decoding short)."""
        most = prompt_parsing.most_tokens(model.tokenizer, model.max_model_len)
        if most is not None and len(token_ids) > most:
            raise InvalidRequestError(
                f"{param} has {len(token_ids)} token ids: at most {most} can be decoded "
                f"({model.max_model_len}-token context).",
                param=param,
            )
        size = len(model.tokenizer)
        for i, token in enumerate(token_ids):
            if not 0 <= token < size:
                raise InvalidRequestError(
                    f"{param}[{i}] = {token} is not a valid token id (vocabulary size {size})", param=param
                )
        return model.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def prompts(self, model: ServedModel, prompt: object, **options: Any) -> list[prompt_parsing.Prompt]:
        """A string, strings, token ids or lists of them -> Prompts (see ``parse_prompts``)."""
        options.setdefault("max_model_len", model.max_model_len)
        return prompt_parsing.parse_prompts(prompt, model.tokenizer, **options)

    def template_kwargs(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """A request's chat_template_kwargs over --default-chat-template-kwargs."""
        return {**self.config.chat_template_defaults, **(given or {})}

    def render_chat(self, model: ServedModel, messages: Sequence[Any], **options: Any) -> RenderedChat:
        """Render OpenAI-style messages with the chat template and tokenize them.

        ``options``: tools, add_generation_prompt, continue_final_message, chat_template (refused
        unless --trust-request-chat-template), chat_template_kwargs, documents, add_special_tokens,
        reasoning_effort (reaches the template as a kwarg, as in vLLM).
        """
        options["chat_template_kwargs"] = self.template_kwargs(options.get("chat_template_kwargs"))
        text, token_ids = chat_template.render_chat(model, self.config, messages, **options)
        return RenderedChat(text, token_ids)

    # --- generation ------------------------------------------------------------------------------

    def sampling_params(
        self, model: ServedModel, request: Any, prompt_len: int, **overrides: Any
    ) -> SamplingParams:
        """SamplingParams from a request with OpenAI / vLLM field names, the model's
        generation_config defaults filling what the request leaves out."""
        params = sampling.to_sampling_params(
            request, model.generation_defaults, model.max_model_len, prompt_len, **overrides
        )
        chat = isinstance(getattr(request, "logprobs", None), bool)  # chat's logprobs is a flag
        params.check_limits(self.config, "top_logprobs" if chat else "logprobs")
        return params

    # --- structured outputs ----------------------------------------------------------------------

    def structured_outputs(self, request: Any) -> StructuredOutputs | None:
        """What a request's ``response_format`` / ``structured_outputs`` / ``guided_*`` fields ask
        the output to follow (vLLM's names), or None; a malformed or ambiguous one is a 400."""
        return parse_request(request)

    async def compile_constraint(
        self,
        model: ServedModel,
        spec: StructuredOutputs,
        *,
        after: str | None = None,
        budget: int | None = None,
    ) -> ConstraintSpec:
        """Compile ``spec`` for ``model`` (on the compilers' pool, cached) into the ConstraintSpec
        to set on ``SamplingParams.constraint``. An uncached spec is still compiling when this
        returns: the engine computes the prompt meanwhile, and ``GenerationStream.ready()``
        (await it before answering) raises the 400 for an invalid schema, regex or grammar, a
        feature no backend supports, or a compile past ``--structured-outputs-timeout``.

        ``after``: text ending the model's reasoning (a reasoning parser's ``end_marker``); the
        output is free until it, and follows ``spec`` from there on. ``budget``: see
        ``reasoning_budget``."""
        compiled = self.structured_compiler(model).start(spec)
        if after:
            marker = self.tokenize(model, after, add_special_tokens=False)
            compiled = AfterMarker(compiled, marker, budget)
        return compiled

    def reasoning_budget(self, model: ServedModel, after: str, budget: int) -> ConstraintSpec:
        """A constraint that ends the model's reasoning after ``budget`` tokens: a sequence still
        reasoning then has to write ``after`` (the reasoning parser's ``end_marker``) next, and
        is free again once it has. vLLM's ``thinking_token_budget``."""
        return AfterMarker(None, self.tokenize(model, after, add_special_tokens=False), budget)

    async def structured_constraint(self, model: ServedModel, request: Any) -> ConstraintSpec | None:
        """``compile_constraint`` of what ``request`` asks for, or None when it asks for nothing."""
        spec = self.structured_outputs(request)
        return None if spec is None else await self.compile_constraint(model, spec)

    def structured_compiler(self, model: ServedModel) -> StructuredOutputCompiler:
        """The model's compiler (made on first use; its backends are built lazily too)."""
        compiler = self._compilers.get(model.name)
        if compiler is None:
            engine = self._engine(model)
            info = engine.model_info
            if engine.engine is None:  # an engine process: it compiles (structured/remote.py)
                from llmserve.structured.remote import RemoteCompiler

                compiler = self._compilers[model.name] = RemoteCompiler(
                    self.config.structured_outputs_timeout
                )
                return compiler
            compiler = self._compilers[model.name] = StructuredOutputCompiler(
                model.tokenizer,
                info.vocab_size,
                info.eos_token_ids,
                backend=self.config.structured_outputs_backend,
                timeout=self.config.structured_outputs_timeout,
            )
        return compiler

    def close(self) -> None:
        """Release what the context started itself (the compilers' thread pools)."""
        for compiler in self._compilers.values():
            compiler.close()
        self._compilers.clear()

    def generate(
        self,
        model: ServedModel,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        request_id: str | None = None,
        kind: OutputKind = OutputKind.DELTA,
        priority: int = 0,
        timeout: float | None = None,
        stream_interval: int | None = None,
        prompt_param: str = "prompt",
    ) -> GenerationStream:
        """Start generating; returns the request's stream once every check passed.

        Raises at once (before anything runs) for a prompt or parameters the model cannot take,
        an unknown priority policy, a sleeping or overloaded engine, a client over its limits.
        ``timeout`` (seconds) may lower --timeout; past it the stream raises RequestTimeoutError
        (504) and the request is aborted. ``stream_interval`` overrides --stream-interval.
        ``prompt_param`` is the request field errors about the prompt name (``messages`` for chat).
        """
        engine = self._engine(model)
        budget = self.config.timeout if timeout is None else min(timeout, self.config.timeout)
        if budget <= 0:
            raise InvalidRequestError(f"timeout must be positive, got {timeout}", param="timeout")
        self.limits.admit()
        request_id = request_id or f"req-{uuid.uuid4().hex}"
        return engine.add_request(
            request_id, list(prompt_token_ids), params, kind=kind, priority=priority,
            deadline=time.monotonic() + budget, stream_interval=stream_interval or self.config.stream_interval,
            prompt_param=prompt_param,
        )  # fmt: skip

    def check_generate(
        self,
        model: ServedModel,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        priority: int = 0,
        prompt_param: str = "prompt",
    ) -> None:
        """The checks of ``generate``, without generating."""
        self._engine(model).check(list(prompt_token_ids), params, priority, prompt_param)

    def _engine(self, model: ServedModel):
        if model.engine is None:
            raise InvalidRequestError(f"The model `{model.name}` does not generate text.", param="model")
        return model.engine

    async def embed(
        self, model: ServedModel, token_ids: Sequence[Sequence[int]], normalize: bool = True
    ) -> list[list[float]]:
        """Pooled embeddings of each input (token ids), in order."""
        embedder = model.embedder
        if embedder is None:
            raise InvalidRequestError(f"The model `{model.name}` does not embed.", param="model")
        inputs = [list(ids) for ids in token_ids]
        embedder.embedder.check_inputs(inputs)
        self.limits.admit()
        return await embedder.embed(inputs, normalize=normalize)

    # --- speech ----------------------------------------------------------------------------------

    async def transcribe(
        self,
        model: ServedModel,
        audio: bytes,
        filename: str = "audio",
        *,
        language: str | None = None,
        task: str = "transcribe",
        prompt: str | None = None,
        timestamps: bool = False,
        temperature: float = 0.0,
        seed: int | None = None,
        fallback: bool = True,
        words: bool = False,
    ) -> AsyncIterator[TranscriptEvent]:
        """Decode an uploaded audio file and transcribe (or, ``task="translate"``, translate to
        English) it. Returns, once the audio is decoded and the options checked, an async iterator
        of events: text deltas, then one with ``done`` and the ``Transcript`` (text, language,
        duration, segments). Clips over 30 s are decoded window after window as Whisper does.
        ``fallback``: a window that decodes too repetitively or unsurely is decoded again at
        ``temperature`` + 0.2, ... up to 1.0 (the stream's deltas then carry each window's text
        once it is final; without it, greedy text streams token by token).
        ``words``: the transcript's ``words`` get times too (where the model supports it).
        Undecodable audio or a bad option is a 400 raised here."""
        from llmserve.engine.audio_input import decode_audio
        from llmserve.engine.transcription import TranscriptionOptions

        service = model.transcriber
        if service is None:
            raise InvalidRequestError(f"The model `{model.name}` does not transcribe audio.", param="model")
        runner = service.transcriber
        language = check_speech_options(model.name, runner, task, language, temperature)
        prompt_ids: list[int] = []
        if prompt:
            # Whisper keeps at most half its context for earlier text; the most recent part counts.
            prompt_ids = self.tokenize(model, " " + prompt.strip(), add_special_tokens=False)
            prompt_ids = prompt_ids[-(runner.max_tokens - 1) :]
        samples = await asyncio.to_thread(decode_audio, audio, filename)
        options = TranscriptionOptions(
            language, task, tuple(prompt_ids), timestamps, temperature, seed, fallback, words
        )
        self.limits.admit()
        return service.transcribe(samples, options)

    # --- parsers ---------------------------------------------------------------------------------

    def tool_parser(
        self, name: str | None = None, model: ServedModel | None = None, tools: list[dict] | None = None
    ):
        """A new tool-call parser for one response (``--tool-call-parser`` unless ``name``), given
        the request's tools, or None."""
        name = name or self.config.tool_call_parser
        if not name:
            return None
        cls = self.plugins.tool_parsers()[name].obj
        return cls(model.tokenizer if model is not None else None, tools=tools)

    def reasoning_parser(
        self,
        name: str | None = None,
        model: ServedModel | None = None,
        chat_template_kwargs: dict | None = None,
    ):
        """A new reasoning parser for one response (``--reasoning-parser`` unless ``name``), given
        the template kwargs (``enable_thinking``, ``thinking``), or None."""
        name = name or self.config.reasoning_parser
        if not name:
            return None
        cls = self.plugins.reasoning_parsers()[name].obj
        kwargs = self.template_kwargs(chat_template_kwargs)
        return cls(model.tokenizer if model is not None else None, chat_template_kwargs=kwargs)

    def metrics(self) -> tuple[bytes, str]:
        """Prometheus text exposition of every engine, and its content type."""
        from llmserve.engine.metrics import EngineMetrics, render_all

        engines = [m.engine.metrics for m in self.models if m.engine is not None and m.engine.metrics]
        if not engines:  # scrapers still find every metric name
            placeholder = self._placeholder_metrics
            if placeholder is None:
                first = next(iter(self.models), None)
                placeholder = self._placeholder_metrics = EngineMetrics(first.name if first else "none")
            engines = [placeholder]
        return render_all(engines), EngineMetrics.content_type

    def is_healthy(self) -> bool:
        """False once any engine died."""
        return not any(m.engine is not None and m.engine.is_dead for m in self.models)


__all__ = ["EMBED", "GENERATE", "TRANSCRIBE", "ProtocolContext", "RenderedChat"]
