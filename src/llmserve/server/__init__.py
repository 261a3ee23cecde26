"""The HTTP server: start-up, app assembly, the served-model registry and the protocol context."""

from llmserve.server.startup import build_context, check_config, load_app, resolve_backend_name, run_server

__all__ = ["build_context", "check_config", "load_app", "resolve_backend_name", "run_server"]
