"""``llmserve ray serve MODEL``: every ``llmserve serve`` option, plus the deployment's.

It connects to a Ray cluster (``--address``, else ``RAY_ADDRESS``, else a local one it starts),
runs the application, serves it on Ray's HTTP proxy at ``--host``/``--port`` (when it starts
Serve; a running Serve keeps its own) and deletes it again on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import inspect
import os
import signal
import threading
from typing import Any

import typer

from llmserve.api import LLMServeError, config_options

ray_app = typer.Typer(
    help="Serve on a Ray cluster: replicas, autoscaling, several nodes.", no_args_is_help=True
)
PANEL = "Ray Serve"

# The deployment's options: name -> (type, typer option declaration, help).
RAY_OPTIONS: dict[str, tuple[Any, str, str]] = {
    "num_replicas": (int, "--num-replicas", "Fixed number of replicas."),
    "autoscaling": (str, "--autoscaling", "Autoscale: 'min,max,target_ongoing_requests' or a JSON object."),
    "num_cpus": (float, "--num-cpus", "CPUs each replica reserves (default 1)."),
    "num_gpus": (float, "--num-gpus", "GPUs each replica reserves per tensor-parallel rank (default 0)."),
    "max_ongoing_requests": (
        int,
        "--max-ongoing-requests",
        "Requests one replica takes at once (default --max-num-seqs).",
    ),
    "max_queued_requests": (int, "--max-queued-requests", "Requests waiting for a replica; more get 503."),
    "placement_group_bundles": (str, "--placement-group-bundles", "Each replica's bundles, a JSON list."),
    "placement_group_strategy": (
        str,
        "--placement-group-strategy",
        "Placement strategy (default STRICT_PACK).",
    ),
    "health_check_period_s": (
        float,
        "--health-check-period-s",
        "Seconds between health checks (default 10).",
    ),
    "metrics_interval_s": (
        float,
        "--metrics-interval-s",
        "Seconds between engine metric copies (default 5).",
    ),
    "router": (str, "--router", "prefix (same X-Prefix-Key -> same replica; default) or ray (Serve's own)."),
    "name": (str, "--name", "Serve application name (default llmserve)."),
    "route_prefix": (str, "--route-prefix", "Route prefix on the proxy (default /)."),
}


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def run(given: dict[str, Any], ray_given: dict[str, Any], address: str | None, proxy_location: str) -> None:
    """Deploy the application and block until interrupted."""
    import ray
    from ray import serve

    from llmserve_ray.app import build_app
    from llmserve_ray.options import parse_args

    args = {
        **{k: v for k, v in given.items() if v is not None},
        **{k: v for k, v in ray_given.items() if v is not None},
    }
    try:
        options, config, _ = parse_args(args)
        app = build_app(args)
    except LLMServeError as exc:
        _fail(exc.message)
    local = address is None and not os.environ.get("RAY_ADDRESS")
    ray.init(address=address, **({"include_dashboard": False} if local else {}))
    serve.start(http_options={"host": config.host, "port": config.port}, proxy_location=proxy_location)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.run(app, name=options.name, route_prefix=options.route_prefix, blocking=False)
        typer.echo(
            f"serving {options.name} on http://{config.host}:{config.port}{options.route_prefix}", err=True
        )
        stop.wait()
    finally:
        serve.delete(options.name)
        ray.shutdown()


def _serve_command():
    base = config_options(lambda given: None)
    params = list(inspect.signature(base).parameters.values())
    for name, (kind, flag, help_text) in RAY_OPTIONS.items():
        default = typer.Option(None, flag, help=help_text, rich_help_panel=PANEL, show_default=False)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind | None)
        )
    address = typer.Option(None, "--address", help="Ray cluster address (default RAY_ADDRESS or a new local one).",
                           rich_help_panel=PANEL, show_default=False)  # fmt: skip
    params.append(
        inspect.Parameter("address", inspect.Parameter.KEYWORD_ONLY, default=address, annotation=str | None)
    )
    proxy = typer.Option("EveryNode", "--proxy-location", help="Where Serve runs HTTP proxies: EveryNode, HeadOnly.",
                         rich_help_panel=PANEL)  # fmt: skip
    params.append(
        inspect.Parameter("proxy_location", inspect.Parameter.KEYWORD_ONLY, default=proxy, annotation=str)
    )

    def command(**values: Any) -> None:
        ray_given = {name: values.pop(name) for name in RAY_OPTIONS}
        address, proxy_location = values.pop("address"), values.pop("proxy_location")
        captured: dict[str, Any] = {}
        config_options(captured.update)(**values)  # the same conversions as `llmserve serve`
        run(captured, ray_given, address, proxy_location)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = "Serve MODEL on Ray Serve: replicas of llmserve behind Ray's HTTP proxy."
    return command


ray_app.command("serve")(_serve_command())
