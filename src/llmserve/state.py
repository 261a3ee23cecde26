"""What a running server holds, shared by every protocol blueprint.

Blueprints reach it with ``current_app.extensions["llmserve"]`` (see ``get_state``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmserve.config import Config
    from llmserve.engine.async_engine import AsyncEngine
    from llmserve.engine.embedding import EmbeddingService
    from llmserve.plugins import Plugins


@dataclass
class ServerState:
    """Config, plugins and the loaded models of one server.

    ``engine`` is None when no generation model is served; ``embedder`` is None when no
    embedding model is served. ``model_name`` / ``embedding_model_name`` are the names clients
    use; ``aliases`` maps every accepted name to "generate" or "embed".
    """

    config: Config
    plugins: Plugins
    engine: AsyncEngine | None = None
    embedder: EmbeddingService | None = None
    model_name: str | None = None
    model_path: str | None = None
    embedding_model_name: str | None = None
    embedding_model_path: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def capabilities(self) -> frozenset[str]:
        caps = set()
        if self.engine is not None:
            caps.add("generate")
        if self.embedder is not None:
            caps.add("embed")
        return frozenset(caps)


def get_state() -> ServerState:
    """The ServerState of the app handling the current request."""
    from quart import current_app

    return current_app.extensions["llmserve"]
