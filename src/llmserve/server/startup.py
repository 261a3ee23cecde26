"""Start-up: check the config, load every served model, build the app and serve it with hypercorn."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
from pathlib import Path

from llmserve.config import Config
from llmserve.errors import ConfigError
from llmserve.plugins import Plugins, load_plugins
from llmserve.server.context import ProtocolContext
from llmserve.server.registry import EMBED, GENERATE, TRANSCRIBE, ModelRegistry, ServedModel

log = logging.getLogger("llmserve")

HEALTH_POLL_S = 0.5
UNHEALTHY_GRACE_S = 3.0  # /health answers 503 this long before the server exits


def resolve_backend_name(config: Config, plugins: Plugins | None = None) -> str:
    """The backend ``--backend`` names; for ``auto``, the available registered backend with the
    highest ``auto_priority`` (``Plugins.auto_backend``)."""
    if config.backend != "auto":
        return config.backend
    return (plugins or load_plugins()).auto_backend(config)


def check_config(config: Config, plugins: Plugins | None = None) -> Plugins:
    """Everything that can be checked before a model is loaded; raises ConfigError (PluginError
    for a plugin that registered something of the wrong kind)."""
    plugins = plugins or load_plugins()
    for flag, value, registry in (
        ("--tool-call-parser", config.tool_call_parser, plugins.tool_parsers()),
        ("--reasoning-parser", config.reasoning_parser, plugins.reasoning_parsers()),
    ):
        if value and value not in registry:
            raise ConfigError(
                f"{flag}: unknown parser {value!r}; available: {', '.join(sorted(registry)) or 'none'}"
            )
    processors = plugins.logits_processors()
    unknown = [given for given in config.logits_processors if given not in processors]
    if unknown:
        raise ConfigError(
            f"--logits-processors: unknown logits processor {unknown[0]!r}; "
            f"available: {', '.join(sorted(processors)) or 'none'}"
        )
    template = config.chat_template
    if template and "{" not in template and not Path(template).is_file():
        raise ConfigError(f"--chat-template: {template} is neither a file nor an inline Jinja template")
    gen = config.generation_config
    if gen not in ("auto", "vllm") and not Path(gen).is_dir():
        raise ConfigError(f"--generation-config: must be 'auto', 'vllm' or a folder, got {gen!r}")
    plugins.check()  # the backends last: importing them imports torch, so a typo above fails fast
    backends = plugins.backends()
    name = resolve_backend_name(config, plugins)
    if name not in backends:
        raise ConfigError(
            f"--backend: unknown backend {name!r}; available: {', '.join(sorted(backends)) or 'none'}"
        )
    methods = backends[name].obj.quantization_methods
    if config.quantization and config.quantization not in methods:
        supported = f"it supports {', '.join(methods)}" if methods else "it supports none"
        raise ConfigError(
            f"--quantization {config.quantization}: not supported by backend {name!r}; {supported}"
        )
    backends[name].obj.check_available(config)
    return plugins


def _architectures(model_dir: Path) -> list[str]:
    return json.loads((model_dir / "config.json").read_text()).get("architectures") or []


def build_context(config: Config, plugins: Plugins) -> ProtocolContext:
    """Resolve and load every served model; the returned context is ready for create_app."""
    from llmserve.sources.resolve import resolve_model

    backend_cls = plugins.backends()[resolve_backend_name(config, plugins)].obj
    context = ProtocolContext(config, plugins, ModelRegistry())
    resolved = []
    for spec in config.model_specs():
        if spec.implicit and (any(kind == EMBED for _, _, kind in resolved) or _only_speech(resolved)):
            continue  # the default embedding model only where no served model embeds
        model = resolve_model(spec.source, progress=True)
        if _is_speech(model.path):
            kind = TRANSCRIBE
        else:
            kind = EMBED if spec.kind == EMBED or _is_encoder(model.path) else GENERATE
        resolved.append((spec, model, kind))
    generative = sum(1 for _, _, kind in resolved if kind == GENERATE)
    # Each generative model gets its own backend instance and an even share of the memory budget.
    share = config.model_copy(
        update={
            "kv_cache_space": config.kv_cache_space_per_model(generative),
            "gpu_memory_utilization": config.gpu_memory_utilization / max(generative, 1),
        }
    )
    embed_backend = None
    for spec, model, kind in resolved:
        names = [spec.name or model.name, *spec.aliases]
        if kind == TRANSCRIBE:
            embed_backend = embed_backend or backend_cls(config)
            context.models.add(_load_transcriber(embed_backend, model.path, names))
        elif kind == EMBED:
            embed_backend = embed_backend or backend_cls(config)
            context.models.add(_load_embedder(embed_backend, model.path, names))
        elif config.engine_process:
            served = _load_engine_process(share, model.path, names)
            context.backends.append(served.engine.backend)  # the process, stopped by release()
            context.models.add(served)
        else:
            backend = backend_cls(share)
            context.backends.append(backend)
            context.models.add(_load_generator(share, plugins, backend, model.path, names))
    if embed_backend is not None:
        context.backends.append(embed_backend)
    return context


def _only_speech(resolved) -> bool:
    """Only speech-to-text models named: no default embedding model beside them."""
    return bool(resolved) and all(kind == TRANSCRIBE for _, _, kind in resolved)


def _is_speech(path: Path) -> bool:
    from llmserve.sources.speech import is_whisper_dir

    return is_whisper_dir(path)


def _is_encoder(path: Path) -> bool:
    from llmserve.arch.registry import is_encoder

    archs = _architectures(path)
    return bool(archs) and is_encoder(archs[0])


def _load_generator(config: Config, plugins: Plugins, backend, path: Path, names: list[str]) -> ServedModel:
    from llmserve.engine.async_engine import AsyncEngine

    processors = [plugins.logits_processors()[name].obj() for name in config.logits_processors]
    engine = AsyncEngine.create(config, backend, str(path), model_name=names[0], logits_processors=processors)
    return _served_generator(config, engine, path, names)


def _load_engine_process(config: Config, path: Path, names: list[str]) -> ServedModel:
    from llmserve.engine.core_client import EngineClient

    return _served_generator(config, EngineClient.create(config, str(path), names[0]), path, names)


def _served_generator(config: Config, engine, path: Path, names: list[str]) -> ServedModel:
    return ServedModel(
        name=names[0],
        aliases=tuple(names[1:]),
        path=str(path),
        kind=GENERATE,
        tokenizer=engine.tokenizer,
        max_model_len=engine.max_model_len,
        engine=engine,
        generation_defaults={**engine.generation_defaults, **config.sampling_defaults()},
    )


def _load_embedder(backend, path: Path, names: list[str]) -> ServedModel:
    from llmserve.engine.device_thread import device_thread
    from llmserve.engine.embedding import EmbeddingService

    service = EmbeddingService(device_thread().run(backend.load_embedding_model, str(path)), str(path))
    return ServedModel(
        name=names[0],
        aliases=tuple(names[1:]),
        path=str(path),
        kind=EMBED,
        tokenizer=service.tokenizer,
        max_model_len=service.max_model_len,
        embedder=service,
    )


def _load_transcriber(backend, path: Path, names: list[str]) -> ServedModel:
    from llmserve.engine.device_thread import device_thread
    from llmserve.engine.transcription import TranscriptionService

    service = TranscriptionService(device_thread().run(backend.load_transcription_model, str(path)))
    return ServedModel(
        name=names[0],
        aliases=tuple(names[1:]),
        path=str(path),
        kind=TRANSCRIBE,
        tokenizer=service.tokenizer,
        max_model_len=service.max_model_len,
        transcriber=service,
    )


def run_server(config: Config, plugins: Plugins) -> int:
    """Load everything, serve until SIGINT/SIGTERM, and return the exit code."""
    app, context = _prepare(config, plugins)
    scheme = "https" if config.ssl_certfile else "http"
    where = f"unix:{config.uds}" if config.uds else f"{scheme}://{config.host}:{config.port}"
    log.info("serving on %s%s", where, config.root_path or "")
    try:
        healthy = asyncio.run(_serve(app, config, context))
    finally:
        release(context)
    if not healthy:
        log.error("stopped: an engine failed (see above)")
        return 1
    log.info("stopped")
    return 0


def load_app(config: Config, plugins: Plugins | None = None):
    """The app ``llmserve serve`` would serve for ``config``, every model loaded, for a host that
    calls it in process instead of listening (a serverless worker). ``await app.startup()`` in
    the event loop that will run the requests; ``await app.shutdown()`` stops the engines and
    releases the backends. Raises ConfigError as ``llmserve serve`` does at start."""
    plugins = check_config(config, plugins or load_plugins(config=config))
    app, context = _prepare(config, plugins)

    @app.after_serving
    async def _release_backends() -> None:  # after create_app's own, which stops the engines
        release(context)

    return app


def _prepare(config: Config, plugins: Plugins):
    """Logging set up, every model loaded, the app assembled; (app, context)."""
    from llmserve.server.app import create_app
    from llmserve.server.logs import setup_logging

    setup_logging(config)
    context = build_context(config, plugins)
    app = create_app(config, context)
    for model in context.models:
        if model.engine is not None:
            engine = model.engine
            log.info(
                "model %s (%s) | backend %s | dtype %s | max_model_len %d | KV cache %d tokens (%d blocks of %d)",
                model.name, model.path, engine.backend.describe(), engine.model_info.dtype,
                engine.max_model_len, engine.kv_capacity_tokens, engine.num_blocks, config.block_size,
            )  # fmt: skip
        elif model.transcriber is not None:
            log.info("speech-to-text model %s (%s)", model.name, model.path)
        else:
            log.info("embedding model %s (%s), dim %d", model.name, model.path, model.embedder.dim)
    log.info("protocols: %s", ", ".join(context.protocols))
    return app, context


def release(context: ProtocolContext) -> None:
    """Close the context and shut its backends down (after the engines stopped)."""
    context.close()
    for backend in context.backends:
        backend.shutdown()
    context.backends.clear()


async def _serve(app, config: Config, context: ProtocolContext) -> bool:
    """Serve until a signal (requests in flight get --shutdown-timeout seconds to finish) or an
    engine's death (after /health has answered 503 for a moment); whether all stayed healthy."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HypercornConfig

    hc = HypercornConfig()
    hc.bind = [f"unix:{config.uds}"] if config.uds else [f"{config.host}:{config.port}"]
    hc.accesslog = None if config.disable_access_log else logging.getLogger("llmserve.access")
    hc.access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'
    hc.errorlog = logging.getLogger("hypercorn.error")
    if config.ssl_certfile:
        hc.certfile, hc.keyfile, hc.ca_certs = config.ssl_certfile, config.ssl_keyfile, config.ssl_ca_certs
        hc.verify_mode = ssl.VerifyMode(config.ssl_cert_reqs)
    hc.graceful_timeout = config.shutdown_timeout
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, sig, stop)
    watch = asyncio.create_task(_watch_health(context, stop))
    try:
        await serve(app, hc, shutdown_trigger=stop.wait)
    finally:
        watch.cancel()
    return context.is_healthy()


def _on_signal(sig: int, stop: asyncio.Event) -> None:
    if not stop.is_set():
        log.info("%s: no new connections; requests in flight may finish", signal.Signals(sig).name)
    stop.set()


async def _watch_health(context: ProtocolContext, stop: asyncio.Event) -> None:
    """Stop serving once an engine died (a crashed step, a lost tensor-parallel worker): the
    server exits non-zero rather than answer 503 forever; probes see 503 meanwhile."""
    while context.is_healthy():
        await asyncio.sleep(HEALTH_POLL_S)
    log.error("an engine is dead; stopping in %.0f s", UNHEALTHY_GRACE_S)
    await asyncio.sleep(UNHEALTHY_GRACE_S)
    stop.set()
