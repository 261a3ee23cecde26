"""The ``llmserve`` command line: serve, plugins, pull, bench, and plugins' own commands."""

from __future__ import annotations

import json
import sys

import typer

from llmserve import __version__
from llmserve.errors import LLMServeError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="llmserve: LLM inference and serving.")

_KV = "Engine and KV cache"
_SRV = "HTTP server"
_CHAT = "Chat, tools and reasoning"


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _list(values: list[str] | None) -> list[str] | None:
    """Accept repeated flags, comma-separated values or a JSON list (vLLM's --allowed-origins)."""
    if not values:
        return None
    out: list[str] = []
    for value in values:
        value = value.strip()
        if value.startswith("["):
            try:
                out.extend(str(v) for v in json.loads(value))
                continue
            except json.JSONDecodeError:
                _fail(f"not a JSON list: {value}")
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


@app.command()
def serve(
    model: str | None = typer.Argument(
        None,
        help="Model: pack alias (smollm2), HF directory, .gguf file or HF hub id. Default: SmolLM2-135M-Instruct.",
    ),
    host: str | None = typer.Option(None, help="Address to bind (default 127.0.0.1).", rich_help_panel=_SRV),
    port: int | None = typer.Option(None, help="Port to listen on (default 8000).", rich_help_panel=_SRV),
    api_key: str | None = typer.Option(
        None, help="Require 'Authorization: Bearer KEY' on API routes.", rich_help_panel=_SRV
    ),
    served_model_name: list[str] | None = typer.Option(
        None,
        help="Name(s) the model answers to (repeat or comma-separate); the first is reported.",
        rich_help_panel=_SRV,
    ),
    allowed_origins: list[str] | None = typer.Option(
        None, help='CORS origins allowed (JSON list or comma-separated; default ["*"]).', rich_help_panel=_SRV
    ),
    enable_request_id_headers: bool | None = typer.Option(
        None, "--enable-request-id-headers", help="Echo X-Request-Id on responses.", rich_help_panel=_SRV
    ),
    embedding_model: str | None = typer.Option(
        None,
        help="Embedding model for embeddings/score/rerank (default all-MiniLM-L6-v2; 'none' to disable).",
    ),
    backend: str | None = typer.Option(
        None, help="Model backend: auto (cuda if available, else cpu), cpu, cuda, jax, tpu, or a plugin's."
    ),
    dtype: str | None = typer.Option(
        None, help="Weights/activations dtype: auto, bfloat16, float16, float32."
    ),
    max_model_len: int | None = typer.Option(
        None, help="Context length (prompt + output); default: the model's.", rich_help_panel=_KV
    ),
    max_num_seqs: int | None = typer.Option(
        None, help="Most sequences in one engine step (default 128).", rich_help_panel=_KV
    ),
    max_num_batched_tokens: int | None = typer.Option(
        None,
        help="Token budget of one engine step; long prompts are prefilled in chunks (default 2048).",
        rich_help_panel=_KV,
    ),
    block_size: int | None = typer.Option(
        None, help="Tokens per KV cache block, a power of two (default 16).", rich_help_panel=_KV
    ),
    gpu_memory_utilization: float | None = typer.Option(
        None, help="Fraction of GPU memory for weights + KV cache (default 0.9).", rich_help_panel=_KV
    ),
    kv_cache_space: float | None = typer.Option(
        None,
        help="KV cache budget in GiB on CPU backends (default 4; vLLM's VLLM_CPU_KVCACHE_SPACE).",
        rich_help_panel=_KV,
    ),
    enable_prefix_caching: bool | None = typer.Option(
        None,
        "--enable-prefix-caching/--no-enable-prefix-caching",
        help="Reuse KV blocks of shared prefixes (default on).",
        rich_help_panel=_KV,
    ),
    seed: int | None = typer.Option(
        None, help="Seed for unseeded sampling (default 0).", rich_help_panel=_KV
    ),
    tensor_parallel_size: int | None = typer.Option(
        None,
        "--tensor-parallel-size",
        "-tp",
        help="Devices/ranks to shard the model over (default 1).",
        rich_help_panel=_KV,
    ),
    enforce_eager: bool | None = typer.Option(
        None, "--enforce-eager", help="Disable CUDA graphs.", rich_help_panel=_KV
    ),
    chat_template: str | None = typer.Option(
        None, help="Chat template: a file path or an inline Jinja string.", rich_help_panel=_CHAT
    ),
    chat_template_content_format: str | None = typer.Option(
        None, help="How message content reaches the template: auto, string or openai.", rich_help_panel=_CHAT
    ),
    generation_config: str | None = typer.Option(
        None,
        help="'auto' applies the model's generation_config.json defaults, 'vllm' ignores them, or a folder.",
        rich_help_panel=_CHAT,
    ),
    enable_auto_tool_choice: bool | None = typer.Option(
        None,
        "--enable-auto-tool-choice",
        help="Let the model call tools (tool_choice 'auto').",
        rich_help_panel=_CHAT,
    ),
    tool_call_parser: str | None = typer.Option(
        None, help="Tool-call parser by name (see `llmserve plugins`).", rich_help_panel=_CHAT
    ),
    reasoning_parser: str | None = typer.Option(
        None, help="Reasoning parser by name (see `llmserve plugins`).", rich_help_panel=_CHAT
    ),
    max_request_body_bytes: int | None = typer.Option(
        None,
        help="Largest accepted request body; larger ones get 413 (default 32 MiB).",
        rich_help_panel=_SRV,
    ),
    log_level: str | None = typer.Option(None, help="debug, info, warning, error or critical."),
) -> None:
    """Serve MODEL over HTTP with the OpenAI, vLLM and other protocol plugins."""
    given = dict(locals())
    from llmserve.config import build_config
    from llmserve.server import check_config, run_server

    given["served_model_name"] = _list(served_model_name)
    given["allowed_origins"] = _list(allowed_origins)
    try:
        config = build_config(**given)
        plugins = check_config(config)
    except LLMServeError as exc:
        _fail(exc.message)
    try:
        code = run_server(config, plugins)
    except LLMServeError as exc:
        _fail(exc.message, 1)
    raise typer.Exit(code)


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the loaded plugins: distribution, version and what each registered."""
    from llmserve.plugins import load_plugins

    try:
        rows = load_plugins().describe()
    except LLMServeError as exc:
        _fail(exc.message, 1)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['name']}  ({row['distribution']} {row['version']})")
        for item in row["registered"] or ["-"]:
            typer.echo(f"    {item}")


@app.command()
def pull(alias: str = typer.Argument(..., help="Model pack alias, e.g. smollm2 or minilm.")) -> None:
    """Fetch a model pack into the cache (and convert it once), so `serve` starts at once."""
    from llmserve.sources import packs

    try:
        path = packs.ensure_model(alias, progress=True)
    except LLMServeError as exc:
        _fail(exc.message, 1)
    typer.echo(str(path))


@app.command()
def version() -> None:
    """Print the llmserve version."""
    typer.echo(__version__)


def build_app() -> typer.Typer:
    """The CLI with every plugin's extra commands added (llmserve_cli hook)."""
    from llmserve.bench.cli import bench_app
    from llmserve.plugins import load_plugins

    app.add_typer(bench_app, name="bench")
    try:
        load_plugins().add_cli(app)
    except LLMServeError as exc:
        typer.secho(f"warning: plugins not loaded: {exc.message}", err=True)
    return app


def main() -> None:
    sys.exit(build_app()(standalone_mode=True))
