"""Error types and their HTTP status, in one place.

Every protocol maps these to its own error body shape; the status code is shared.
"""

from __future__ import annotations


class LLMServeError(Exception):
    """Base class for errors a user can act on. ``status`` is the HTTP status to answer with."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers: dict[str, str] = {}  # extra response headers (e.g. Retry-After)


class ConfigError(LLMServeError):
    """An invalid configuration value, reported before anything is loaded."""

    status = 400
    type = "config_error"


class PluginError(LLMServeError):
    """A plugin failed to load, or two plugins registered the same name."""

    type = "plugin_error"


class ModelNotFoundError(LLMServeError):
    """A model id, path or alias that cannot be resolved to files."""

    status = 404
    type = "NotFoundError"


class InvalidRequestError(LLMServeError):
    """A request that is malformed or violates a limit (400)."""

    status = 400
    type = "BadRequestError"


class UnsupportedError(InvalidRequestError):
    """A request asking for something this server or model does not support (400)."""


class PayloadTooLargeError(LLMServeError):
    """A request body or field larger than the server accepts (413)."""

    status = 413
    type = "PayloadTooLargeError"


class UnauthorizedError(LLMServeError):
    """A missing or wrong API key (401)."""

    status = 401
    type = "AuthenticationError"


class OverloadedError(LLMServeError):
    """The server is at capacity (waiting queue full) or asleep."""

    status = 503
    type = "ServiceUnavailableError"


class EngineDeadError(LLMServeError):
    """The engine stopped after an internal error; the server reports unhealthy (503)."""

    status = 503
    type = "EngineDeadError"


class RateLimitError(LLMServeError):
    """A client over its request rate or concurrency limit (429); ``retry_after`` in seconds."""

    status = 429
    type = "RateLimitError"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class RequestTimeoutError(LLMServeError):
    """A request that ran past its time budget (504); it was aborted and its blocks freed."""

    status = 504
    type = "TimeoutError"
