"""Configuration from worker-vllm's environment variables.

Every ``llmserve serve`` flag is read from its upper-cased name (``--max-num-seqs`` ->
``MAX_NUM_SEQS``), taken from the Config fields themselves, as worker-vllm does for vLLM's flags:
booleans are true/1/yes/on or false/0/no/off, lists comma-separated or a JSON list, JSON
values as JSON, an empty value means unset. worker-vllm's own names win over the generic ones
(``MODEL_NAME``, ``OPENAI_SERVED_MODEL_NAME_OVERRIDE``, ``CUSTOM_CHAT_TEMPLATE``,
``OPENAI_RESPONSE_ROLE``). A bad value raises ``EnvError`` naming the variable.
"""

from __future__ import annotations

import logging
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from llmserve.api import Config, ConfigError

log = logging.getLogger("llmserve.runpod")

TRUE_VALUES = {"true", "1", "yes", "on"}
FALSE_VALUES = {"false", "0", "no", "off"}

# worker-vllm's names that are not the upper-cased flag.
ALIASES = {
    "MODEL_NAME": "models",
    "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "served_model_name",
    "CUSTOM_CHAT_TEMPLATE": "chat_template",
    "OPENAI_RESPONSE_ROLE": "response_role",
}
# Flags of a listening server: the worker has no socket (and RunPod authenticates callers).
NOT_READ = ("models", "host", "port", "uds", "api_key", "ssl_keyfile", "ssl_certfile", "ssl_ca_certs",
            "ssl_cert_reqs")  # fmt: skip
# worker-vllm treats 0 as "let the engine choose" for these.
ZERO_MEANS_UNSET = ("max_model_len", "max_num_batched_tokens")
# worker-vllm variables llmserve cannot honour: refused when set.
UNSUPPORTED = {
    "MODEL_REVISION": "models are loaded as MODEL_NAME names them (pin a revision in a local directory)",
    "TOKENIZER_NAME": "the tokenizer is always the model's own",
    "TOKENIZER": "the tokenizer is always the model's own",
    "LORA_MODULES": "LoRA adapters are not supported",
    "VLLM_EXTRA_ARGS": "set each flag as its own variable (MAX_NUM_SEQS=64, ...)",
}


class EnvError(ConfigError):
    """A worker environment variable with a value the worker cannot use."""


@dataclass(frozen=True)
class WorkerSettings:
    """The worker's own variables (worker-vllm's names and defaults)."""

    max_concurrency: int = 300
    default_batch_size: int = 50
    min_batch_size: int = 1
    batch_size_growth_factor: float = 3
    raw_openai_output: bool = True


def env_names() -> dict[str, str]:
    """Variable name -> Config field, for every flag the worker reads (aliases included)."""
    names: dict[str, str] = {}
    for field, info in Config.model_fields.items():
        if field in NOT_READ:
            continue
        names[field.upper()] = field
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        for alias in extra.get("aliases", []):
            if alias.startswith("--"):
                names[alias[2:].replace("-", "_").upper()] = field
    return names | ALIASES


def variables(env: Mapping[str, str]) -> dict[str, str]:
    """Config field -> the variable that sets it, for every flag variable set (not empty)."""
    names = env_names()
    found: dict[str, str] = {}
    for name in [n for n in names if n not in ALIASES] + list(ALIASES):  # aliases win
        if env.get(name, "").strip():
            found[names[name]] = name
    return found


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise EnvError(f"{name}: not a boolean (true/1/yes/on or false/0/no/off), got {raw!r}")


def _is_bool(field: str) -> bool:
    annotation = Config.model_fields[field].annotation
    return annotation is bool or set(typing.get_args(annotation)) == {bool, type(None)}


def config_from_env(env: Mapping[str, str]) -> Config:
    """The Config the variables describe (``LLMSERVE_*`` variables still apply beneath them)."""
    for name, reason in UNSUPPORTED.items():
        if env.get(name, "").strip():
            raise EnvError(f"{name} is not supported: {reason}")
    _check_quantization(env)
    values: dict[str, Any] = {}
    source = variables(env)
    for field, name in source.items():
        raw = env[name]
        if _is_bool(field):
            value: Any = parse_bool(name, raw)
        elif field in ZERO_MEANS_UNSET and raw.strip() == "0":
            continue
        else:
            value = raw.strip()
        values[field] = value
    ignored = [n.upper() for n in NOT_READ if n != "models" and env.get(n.upper(), "").strip()]
    if ignored:
        log.warning("ignored in the worker (no listening socket): %s", ", ".join(ignored))
    if "models" in values:
        values["models"] = [values["models"]]
    try:
        return Config(**values)
    except ValidationError as exc:
        raise EnvError(_explain(exc, source)) from None


def settings_from_env(env: Mapping[str, str]) -> WorkerSettings:
    """MAX_CONCURRENCY and worker-vllm's stream batching variables."""

    def number(name: str, default, cast=int, minimum=1):
        raw = env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = cast(raw)
        except ValueError:
            raise EnvError(f"{name}: not a number, got {raw!r}") from None
        if value < minimum:
            raise EnvError(f"{name}: must be at least {minimum}, got {raw!r}")
        return value

    raw_output = env.get("RAW_OPENAI_OUTPUT", "").strip()
    return WorkerSettings(
        max_concurrency=number("MAX_CONCURRENCY", 300),
        default_batch_size=number("DEFAULT_BATCH_SIZE", 50),
        min_batch_size=number("MIN_BATCH_SIZE", 1),
        batch_size_growth_factor=number("BATCH_SIZE_GROWTH_FACTOR", 3, float),
        raw_openai_output=parse_bool("RAW_OPENAI_OUTPUT", raw_output) if raw_output else True,
    )


def _check_quantization(env: Mapping[str, str]) -> None:
    value = env.get("QUANTIZATION", "").strip().lower()
    if value in ("", "none"):
        return
    if value == "gguf" and env.get("MODEL_NAME", "").strip().lower().endswith(".gguf"):
        return  # a .gguf MODEL_NAME is read (and dequantized) as it is
    raise EnvError(
        f"QUANTIZATION={env['QUANTIZATION'].strip()!r} is not supported: llmserve serves unquantized "
        "weights (or a .gguf MODEL_NAME, with QUANTIZATION=gguf or unset); unset QUANTIZATION"
    )


def _explain(exc: ValidationError, source: dict[str, str]) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        field = loc[0] if loc else None
        if field in source:
            parts.append(f"{source[field]}: {msg} (got {err.get('input')!r})")
        elif field:
            parts.append(f"{field.upper()}: {msg}")
        else:
            parts.append(name_variables(msg, source))
    return "invalid worker configuration: " + "; ".join(parts)


def name_variables(message: str, source: dict[str, str]) -> str:
    """A message naming ``--flags`` (and MODEL) rewritten to name the variables that set them."""
    message = re.sub(r"^MODEL:", "MODEL_NAME:", message)
    return re.sub(
        r"--([a-z0-9-]+)",
        lambda m: source.get(m.group(1).replace("-", "_"), m.group(1).replace("-", "_").upper()),
        message,
    )
