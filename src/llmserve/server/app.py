"""create_app(config): the Quart app, assembled from protocol plugins plus the API docs."""

from __future__ import annotations

import hmac
import inspect
import logging
import uuid

from quart import Quart, Response, jsonify, make_response, request, websocket
from werkzeug.exceptions import HTTPException

from llmserve.errors import LLMServeError, PluginError, UnauthorizedError
from llmserve.plugins import Plugins, load_plugins
from llmserve.protocols.shared.sse import release_after_body
from llmserve.server.context import ProtocolContext

log = logging.getLogger("llmserve")

# Reachable without an API key by default (--open-paths): probes, metrics scrapes and the API docs.
OPEN_PATHS = frozenset({"/health", "/ping", "/version", "/metrics", "/docs", "/openapi.json"})


def error_response(status: int, message: str, type_: str, param: str | None = None, code=None) -> Response:
    """OpenAI's error shape, used by every built-in protocol unless it has its own."""
    body = {
        "error": {
            "message": message,
            "type": type_,
            "param": param,
            "code": code if code is not None else status,
        }
    }
    response = jsonify(body)
    response.status_code = status
    return response


def create_app(config, context: ProtocolContext | None = None, plugins: Plugins | None = None) -> Quart:
    """Build the app: middleware, error mapping, the API docs, and the blueprints of every protocol
    plugin whose capabilities the served models provide. ``context`` defaults to one with no
    models loaded."""
    plugins = plugins or (context.plugins if context else load_plugins())
    context = context or ProtocolContext(config, plugins)
    app = Quart("llmserve")
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_body_bytes
    app.json.sort_keys = False
    app.url_map.strict_slashes = False
    app.extensions["llmserve"] = context
    from llmserve.server.docs import bp as docs_bp
    from llmserve.server.status import bp as status_bp

    if not config.disable_fastapi_docs:
        app.register_blueprint(docs_bp)
    app.register_blueprint(status_bp)
    context.protocols = []
    for reg in plugins.protocols().values():
        needs = frozenset(reg.extra.get("capabilities", ()))
        if not needs <= context.capabilities:
            continue
        blueprint = _blueprint(reg.obj, context)
        if blueprint is None:  # the plugin has nothing to mount under this configuration
            continue
        if not hasattr(blueprint, "register"):
            raise PluginError(
                f"protocol {reg.name!r} of plugin {reg.plugin!r} did not give a Quart Blueprint"
            )
        app.register_blueprint(blueprint)
        context.protocols.append(reg.name)
    _install_middleware(app, config, context)
    _install_error_handlers(app, context)
    from llmserve.server import asgi

    asgi.wrap(app, config)

    @app.before_serving
    async def _start() -> None:
        for model in context.models:
            if model.engine is not None:
                await model.engine.start()
        plugins.startup(context)

    @app.after_serving
    async def _stop() -> None:
        plugins.shutdown(context, log=log.error)
        for model in context.models:
            if model.engine is not None:
                await model.engine.stop()

    return app


def _blueprint(obj, context: ProtocolContext):
    """A protocol's blueprint: the object itself, or what its factory makes (given the context
    when it takes an argument, so it can mount routes by configuration)."""
    if hasattr(obj, "register") or not callable(obj):
        return obj
    return obj(context) if inspect.signature(obj).parameters else obj()


def _render(context: ProtocolContext, status: int, message: str, type_: str, param=None, code=None):
    """An error answer in the shape of the protocol owning the path (OpenAI's by default)."""
    render = context.error_renderer(request.path)
    if render is not None:
        return render(status, message)
    return error_response(status, message, type_, param, code)


def _install_middleware(app: Quart, config, context: ProtocolContext) -> None:
    api_key = config.api_key.encode() if config.api_key else None
    open_paths = frozenset(path.rstrip("/") or "/" for path in config.open_paths if path)
    origins = list(config.allowed_origins or [])

    @app.before_request
    async def _auth():
        if request.method == "OPTIONS":
            return _preflight()
        if _authorized(request):
            return None
        err = UnauthorizedError(
            "Invalid or missing API key (expected 'Authorization: Bearer <key>' or 'x-api-key: <key>')."
        )
        response = await make_response(_render(context, 401, err.message, err.type))
        if request.content_length or "transfer-encoding" in request.headers:
            # its body is left unread, and the server closes such a connection after the answer:
            # say so, or a client that sends its next request on it finds it closed
            response.headers["Connection"] = "close"
        return response

    @app.before_websocket
    async def _auth_websocket():
        if not _authorized(websocket):
            return Response("Invalid or missing API key.", status=401)  # refuses the handshake
        return None

    def _authorized(req) -> bool:
        if api_key is None or req.path in open_paths or context.is_open_path(req.path):
            return True
        header = req.headers.get("Authorization", "")
        # Anthropic's clients send the key as x-api-key
        token = header[7:] if header.lower().startswith("bearer ") else req.headers.get("x-api-key", "")
        return hmac.compare_digest(token.encode(), api_key)

    def _allowed_origin() -> str | None:
        origin = request.headers.get("Origin")
        if not origin:
            return None
        if "*" in origins:
            return "*"
        return origin if origin in origins else None

    def _preflight() -> Response:
        response = Response("", status=204)
        allowed = _allowed_origin()
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "Authorization, Content-Type"
            )
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    @app.before_request
    async def _log_request():
        if config.enable_log_requests and request.method in ("POST", "PUT"):
            raw = await request.get_data(cache=True)  # bytes: a body that is not UTF-8 is the route's 400
            body = raw.decode("utf-8", "replace")[: config.max_log_len]
            log.info("request %s %s from %s: %s", request.method, request.path, request.remote_addr, body)

    @app.after_request
    async def _release_slot(response: Response) -> Response:
        slot = _take_slot()  # a --max-concurrent-requests slot: held until sent
        if slot is not None:
            release_after_body(response, slot.release)
        return response

    @app.teardown_request
    async def _teardown(_exc: BaseException | None) -> None:
        slot = _take_slot()  # no response was made
        if slot is not None:
            slot.release()

    @app.after_request
    async def _headers(response: Response) -> Response:
        allowed = _allowed_origin()
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = allowed
            if allowed != "*":
                response.headers["Vary"] = "Origin"
        if config.enable_request_id_headers:
            response.headers["X-Request-Id"] = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        return response


def _take_slot():
    current = request._get_current_object()
    slot = getattr(current, "llmserve_slot", None)
    current.llmserve_slot = None
    return slot


def _install_error_handlers(app: Quart, context: ProtocolContext) -> None:
    @app.errorhandler(LLMServeError)
    async def _known(exc: LLMServeError):
        response = _render(context, exc.status, exc.message, exc.type, exc.param, exc.code)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    async def _http(exc: HTTPException):
        status = exc.code or 500
        if status == 413:
            message = "Request body too large."
        elif status == 404:
            message = f"Not found: {request.path}"
        else:
            message = exc.description or exc.name
        return _render(context, status, message, exc.name.replace(" ", "") + "Error")

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _render(context, 500, f"Internal server error: {type(exc).__name__}", "InternalServerError")
