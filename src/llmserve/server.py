"""Start-up: check the config, load the models, build the app and serve it with hypercorn."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

from llmserve.config import Config
from llmserve.errors import ConfigError
from llmserve.plugins import Plugins, load_plugins
from llmserve.state import ServerState

log = logging.getLogger("llmserve")

ENCODER_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification")


def resolve_backend_name(config: Config, plugins: Plugins | None = None) -> str:
    """The backend ``--backend`` names; for ``auto``, the available registered backend with the
    highest ``auto_priority`` (``Plugins.auto_backend``)."""
    if config.backend != "auto":
        return config.backend
    return (plugins or load_plugins()).auto_backend(config)


def check_config(config: Config, plugins: Plugins | None = None) -> Plugins:
    """Everything that can be checked before a model is loaded; raises ConfigError (PluginError
    for a plugin that registered something of the wrong kind)."""
    plugins = (plugins or load_plugins()).check()
    backends = plugins.backends()
    name = resolve_backend_name(config, plugins)
    if name not in backends:
        raise ConfigError(
            f"--backend: unknown backend {name!r}; available: {', '.join(sorted(backends)) or 'none'}"
        )
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
    backends[name].obj.check_available(config)
    return plugins


def _architectures(model_dir: Path) -> list[str]:
    return json.loads((model_dir / "config.json").read_text()).get("architectures") or []


def build_state(config: Config, plugins: Plugins) -> ServerState:
    """Resolve and load the models; the returned state is ready for create_app."""
    from llmserve.sources import packs
    from llmserve.sources.resolve import resolve_model

    backend = plugins.backends()[resolve_backend_name(config)].obj(config)
    state = ServerState(config=config, plugins=plugins)
    state.extras["backend"] = backend
    main = resolve_model(config.model, progress=True)
    names = config.model_names or [main.name]
    if any(arch in ENCODER_ARCHITECTURES for arch in _architectures(main.path)):
        _load_embedder(state, backend, main.path, names)
        return state
    from llmserve.engine.async_engine import AsyncEngine

    state.engine = AsyncEngine.create(config, backend, str(main.path), model_name=names[0])
    state.model_name, state.model_path = names[0], str(main.path)
    state.aliases.update({name: "generate" for name in names})
    emb = config.embedding_model
    if emb is None or emb.lower() != "none":
        embedded = resolve_model(emb, default=packs.DEFAULT_EMBEDDING_MODEL, progress=True)
        _load_embedder(state, backend, embedded.path, [embedded.name])
    return state


def _load_embedder(state: ServerState, backend, path: Path, names: list[str]) -> None:
    from llmserve.engine.device_thread import device_thread
    from llmserve.engine.embedding import EmbeddingService

    embedder = device_thread().run(backend.load_embedding_model, str(path))
    state.embedder = EmbeddingService(embedder, str(path))
    state.embedding_model_name, state.embedding_model_path = names[0], str(path)
    state.aliases.update({name: "embed" for name in names})


def run_server(config: Config, plugins: Plugins) -> int:
    """Load everything, serve until SIGINT/SIGTERM, and return the exit code."""
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    state = build_state(config, plugins)
    from llmserve.app import create_app

    app = create_app(config, state)
    url = f"http://{config.host}:{config.port}"
    if state.engine is not None:
        engine = state.engine
        log.info(
            "model %s (%s) | backend %s | dtype %s | max_model_len %d | KV cache %d tokens (%d blocks of %d)",
            state.model_name, state.model_path, engine.backend.describe(), engine.model_info.dtype,
            engine.max_model_len, engine.kv_capacity_tokens, engine.num_blocks, config.block_size,
        )  # fmt: skip
    if state.embedder is not None:
        log.info(
            "embedding model %s (%s), dim %d",
            state.embedding_model_name,
            state.embedding_model_path,
            state.embedder.dim,
        )
    log.info("protocols: %s", ", ".join(state.extras.get("protocols", [])))
    log.info("serving on %s", url)
    try:
        asyncio.run(_serve(app, config))
    finally:
        state.extras["backend"].shutdown()
    log.info("stopped")
    return 0


async def _serve(app, config: Config) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HypercornConfig

    hc = HypercornConfig()
    hc.bind = [f"{config.host}:{config.port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = 5
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(app, hc, shutdown_trigger=stop.wait)
