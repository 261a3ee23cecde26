"""OpenAPI 3.1 from the app's URL map and what each route declares with ``document``.

Every protocol plugin, built-in or pack, declares its routes' request and response models with
``llmserve.api.document``; a route without a declaration is still listed, without schemas.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import llmserve

ATTR = "__llmserve_openapi__"
Models = type[BaseModel] | tuple[type[BaseModel], ...] | None


def document(
    summary: str, request: Models = None, response: Models = None, tags: Iterable[str] = (), **extra: Any
) -> Callable[[Callable], Callable]:
    """Attach OpenAPI facts to a view function: its request/response models (one model or a
    tuple of alternatives), a summary and tags. ``extra`` goes into the operation verbatim,
    except ``stream_types``: the content types a ``stream: true`` answer comes in (default
    ``("text/event-stream",)``)."""

    def mark(fn: Callable) -> Callable:
        setattr(
            fn,
            ATTR,
            {"summary": summary, "request": request, "response": response, "tags": list(tags), **extra},
        )
        return fn

    return mark


def request_models(view: Callable) -> tuple[type[BaseModel], ...]:
    """The request models a view function declared with ``document`` (empty when it declared none)."""
    return _as_tuple((getattr(view, ATTR, None) or {}).get("request"))


def _as_tuple(models: Models) -> tuple[type[BaseModel], ...]:
    if models is None:
        return ()
    return models if isinstance(models, tuple) else (models,)


_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def build_spec(app: Any, title: str = "llmserve") -> dict[str, Any]:
    """The OpenAPI document of every route mounted on ``app``."""
    operations: list[tuple[str, str, dict[str, Any], tuple, tuple]] = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        view = app.view_functions.get(rule.endpoint)
        if view is None:
            continue
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        info = getattr(view, ATTR, None) or {}
        request_models, response_models = _as_tuple(info.get("request")), _as_tuple(info.get("response"))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operations.append(
                (path, method.lower(), {**info, "endpoint": rule.endpoint}, request_models, response_models)
            )

    models: dict[type[BaseModel], None] = {}
    for _, _, _, req, resp in operations:
        models.update(dict.fromkeys((*req, *resp)))
    keyed = [(m, "validation") for m in models] + [(m, "serialization") for m in models]
    refs, defs = models_json_schema(keyed, ref_template="#/components/schemas/{model}") if keyed else ({}, {})

    paths: dict[str, dict[str, Any]] = {}
    for path, method, info, req, resp in operations:
        op: dict[str, Any] = {
            "operationId": f"{info['endpoint']}_{method}".replace(".", "_"),
            "summary": info.get("summary") or info["endpoint"].rsplit(".", 1)[-1].replace("_", " "),
        }
        if info.get("tags"):
            op["tags"] = info["tags"]
        params = re.findall(r"{([^}]+)}", path)
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ]
        if req and method in ("post", "put", "patch"):
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _one_of([refs[(m, "validation")] for m in req])}},
            }
        ok: dict[str, Any] = {"description": "OK"}
        if resp:
            ok["content"] = {
                "application/json": {"schema": _one_of([refs[(m, "serialization")] for m in resp])}
            }
        if any("stream" in m.model_fields for m in req):  # `stream: true` answers server-sent events
            for kind in info.get("stream_types", ("text/event-stream",)):
                ok.setdefault("content", {})[kind] = {"schema": {}}
        op["responses"] = {"200": ok, "default": {"description": "Error (an `error` object)."}}
        for key, value in info.items():
            if key not in ("summary", "request", "response", "tags", "endpoint", "stream_types"):
                op[key] = value
        paths.setdefault(path, {})[method] = op

    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": llmserve.__version__},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": defs.get("$defs", {})},
    }


def _one_of(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    return schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
