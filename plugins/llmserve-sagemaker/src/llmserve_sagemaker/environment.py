"""SageMaker's configuration contract: ``SM_LLMSERVE_*`` (and vLLM's ``SM_VLLM_*``) environment
variables become ``llmserve serve`` flags, and the server listens on 8080.

As in vLLM's SageMaker image entry point, a variable's name without the prefix, lower-cased with
``_`` -> ``-``, is the flag, and its value the flag's value (empty or ``true``: a boolean flag is
on; ``false``: off). "Under SageMaker" is what vLLM's image means by it: the container runs with
that configuration contract, i.e. at least one ``SM_LLMSERVE_*`` / ``SM_VLLM_*`` variable is set;
on a multi-container endpoint SageMaker sets ``SAGEMAKER_BIND_TO_PORT`` and that port is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from llmserve.api import Config, ConfigError

PREFIXES = ("SM_LLMSERVE_", "SM_VLLM_")  # the first wins when both name one flag
SAGEMAKER_PORT = 8080
# vLLM's flag names that are spelled differently here.
RENAMED = {"model": "models"}


def under_sagemaker(environ: Mapping[str, str]) -> bool:
    """Whether the process runs as a SageMaker serving container (see the module docstring)."""
    return "SAGEMAKER_BIND_TO_PORT" in environ or any(key.startswith(PREFIXES) for key in environ)


def settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``llmserve serve`` settings the environment gives (Config field -> value)."""
    if not under_sagemaker(environ):
        return {}
    found: dict[str, Any] = {}
    for prefix in reversed(PREFIXES):  # SM_LLMSERVE_ last, so it wins
        for key, value in sorted(environ.items()):
            if key.startswith(prefix) and len(key) > len(prefix):
                field = key[len(prefix) :].lower()
                found[RENAMED.get(field, field)] = _value(key, RENAMED.get(field, field), value)
    if "port" not in found and "LLMSERVE_PORT" not in environ:
        found["port"] = _port(environ)
    return found


def _port(environ: Mapping[str, str]) -> int:
    given = environ.get("SAGEMAKER_BIND_TO_PORT")
    if given is None:
        return SAGEMAKER_PORT
    try:
        return int(given)
    except ValueError:
        raise ConfigError(f"SAGEMAKER_BIND_TO_PORT: not a port number (got {given!r})") from None


def _value(key: str, field: str, value: str) -> Any:
    """``value`` checked against the Config field's type, or ConfigError naming ``key``."""
    info = Config.model_fields.get(field)
    if info is None:
        flag = "--" + field.replace("_", "-")
        raise ConfigError(f"{key}: llmserve serve has no {flag} flag (see `llmserve serve --help`)")
    if field == "models":
        return [value]
    annotation = info.annotation
    if annotation is bool:
        lowered = value.strip().lower()
        if lowered in ("", "true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false (got {value!r})")
    if "list[" in str(annotation):
        return value  # Config splits comma-separated and JSON lists itself
    if value == "":
        raise ConfigError(f"{key}: needs a value")
    try:
        TypeAdapter(Annotated[annotation, info]).validate_python(value, strict=False)
    except ValidationError as exc:
        raise ConfigError(f"{key}: {exc.errors()[0]['msg']} (got {value!r})") from None
    return value
