"""OpenAPI 3.1 from the app's URL map and the pydantic models routes declare.

A route declares its models with the ``document`` decorator (any protocol plugin may use it).
Routes of the built-in OpenAI package that carry no declaration are matched by path to the
models of ``llmserve.protocols.openai.schemas``; any other route is listed without a body schema.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import llmserve

ATTR = "__llmserve_openapi__"
SCHEMA_MODULES = ("llmserve.protocols.vllm.schemas", "llmserve.protocols.openai.schemas")

# Undecorated OpenAI routes: path -> (request, response) model names tried in openai.schemas.
OPENAI_ROUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "/v1/chat/completions": (("ChatCompletionRequest",), ("ChatCompletionResponse",)),
    "/v1/completions": (("CompletionRequest",), ("CompletionResponse",)),
    "/v1/embeddings": (("EmbeddingRequest",), ("EmbeddingResponse",)),
    "/v1/models": ((), ("ModelList", "ModelsResponse", "ModelListResponse")),
    "/v1/models/{model}": ((), ("ModelCard", "Model", "ModelObject")),
    "/v1/models/{model_id}": ((), ("ModelCard", "Model", "ModelObject")),
}

Models = type[BaseModel] | tuple[type[BaseModel], ...] | None


def document(
    summary: str, request: Models = None, response: Models = None, tags: Iterable[str] = (), **extra: Any
) -> Callable[[Callable], Callable]:
    """Attach OpenAPI facts to a view function: its request/response models (one model or a
    tuple of alternatives), a summary and tags. ``extra`` goes into the operation verbatim."""

    def mark(fn: Callable) -> Callable:
        setattr(
            fn,
            ATTR,
            {"summary": summary, "request": request, "response": response, "tags": list(tags), **extra},
        )
        return fn

    return mark


def _models_in(module_name: str) -> list[type[BaseModel]]:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, BaseModel) and obj.__module__ == module_name
    ]


def _as_tuple(models: Models) -> tuple[type[BaseModel], ...]:
    if models is None:
        return ()
    return models if isinstance(models, tuple) else (models,)


def _openai_models(path: str) -> tuple[Models, Models]:
    names = OPENAI_ROUTES.get(path)
    if names is None:
        return None, None
    try:
        module = importlib.import_module("llmserve.protocols.openai.schemas")
    except ImportError:
        return None, None

    def first(candidates: tuple[str, ...]) -> type[BaseModel] | None:
        for name in candidates:
            found = getattr(module, name, None)
            if inspect.isclass(found) and issubclass(found, BaseModel):
                return found
        return None

    return first(names[0]), first(names[1])


_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def build_spec(app: Any, title: str = "llmserve") -> dict[str, Any]:
    """The OpenAPI document of every route mounted on ``app``."""
    operations: list[tuple[str, str, dict[str, Any], tuple, tuple]] = []
    packages: set[str] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        view = app.view_functions.get(rule.endpoint)
        if view is None:
            continue
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        info = getattr(view, ATTR, None) or {}
        request_models, response_models = _as_tuple(info.get("request")), _as_tuple(info.get("response"))
        if not info:
            req, resp = _openai_models(path)
            request_models, response_models = _as_tuple(req), _as_tuple(resp)
        module = getattr(view, "__module__", "") or ""
        if module.startswith("llmserve.protocols."):
            packages.add(".".join(module.split(".")[:3]))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operations.append(
                (path, method.lower(), {**info, "endpoint": rule.endpoint}, request_models, response_models)
            )

    # Every model of the mounted protocol packages, plus any model a route names.
    models: dict[type[BaseModel], None] = {}
    for module_name in SCHEMA_MODULES:
        if ".".join(module_name.split(".")[:3]) in packages:
            models.update(dict.fromkeys(_models_in(module_name)))
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
        op["responses"] = {"200": ok, "default": {"description": "Error (an `error` object)."}}
        for key, value in info.items():
            if key not in ("summary", "request", "response", "tags", "endpoint"):
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
