"""The application's arguments: the deployment's own (``RayOptions``), every other one a field of
llmserve's Config (``llmserve serve``'s flags, by field name: ``max_model_len``, dashes allowed).

``serve run llmserve_ray:build_app model=smollm2 num_replicas=2`` and a Serve config file's
``args:`` both give strings or YAML values; both are checked here, in the driver, before any
replica starts, and a bad one is refused naming its argument.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmserve.api import Config, ConfigError, build_config

# Config fields that describe a listening socket: Ray's HTTP proxy listens instead.
PROXY_FIELDS = ("host", "port")
REFUSED_FIELDS = ("uds", "ssl_keyfile", "ssl_certfile", "ssl_ca_certs")


class RayOptions(BaseModel):
    """How the deployment runs: replicas, their resources, back-pressure, health, routing."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("llmserve", description="Serve application name.")
    route_prefix: str = Field("/", description="Route prefix of the application on Ray's HTTP proxy.")
    num_replicas: int | None = Field(None, ge=1, description="Fixed replica count (default 1).")
    autoscaling: dict[str, Any] | None = Field(
        None,
        description="'min,max,target_ongoing_requests', or a JSON object of Serve's autoscaling_config "
        "(upscale_delay_s, downscale_delay_s... too).",
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs each replica reserves.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each replica reserves per tensor-parallel rank.")
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="Requests one replica takes at once (default: --max-num-seqs)."
    )
    max_queued_requests: int = Field(
        -1, ge=-1, description="Requests waiting at the proxy for a replica; more get 503 (-1: no limit)."
    )
    placement_group_bundles: list[dict[str, float]] | None = Field(
        None, description="Bundles of each replica's placement group (default: one per tensor-parallel rank)."
    )
    placement_group_strategy: str = Field("STRICT_PACK", description="Placement group strategy.")
    health_check_period_s: float = Field(10.0, gt=0, description="Seconds between health checks.")
    health_check_timeout_s: float = Field(30.0, gt=0, description="Seconds a health check may take.")
    metrics_interval_s: float = Field(
        5.0, gt=0, description="Seconds between copies of the engine metrics into Ray's metrics."
    )
    router: Literal["prefix", "ray"] = Field(
        "prefix",
        description="prefix: llmserve_ray.routing.PrefixKeyRouter (same X-Prefix-Key -> same replica, "
        "else power of two choices over all replicas); ray: Serve's default (prefers the proxy's node).",
    )

    @field_validator("autoscaling", "placement_group_bundles", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip()[:1] in "[{":
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
        if isinstance(value, str):  # min,max,target_ongoing_requests
            parts = [p.strip() for p in value.split(",")]
            if len(parts) != 3:
                raise ValueError("must be 'min,max,target_ongoing_requests' or a JSON object")
            try:
                low, high, target = int(parts[0]), int(parts[1]), float(parts[2])
            except ValueError:
                raise ValueError("must be 'min,max,target_ongoing_requests' (numbers)") from None
            return {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": target}
        return value

    @model_validator(mode="after")
    def _replicas(self) -> RayOptions:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("give num_replicas or autoscaling, not both")
        scaling = self.autoscaling or {}
        if (
            scaling.get("min_replicas", 0) > scaling.get("max_replicas", 1)
            or scaling.get("max_replicas", 1) < 1
        ):
            raise ValueError("autoscaling: needs 0 <= min_replicas <= max_replicas, max_replicas >= 1")
        return self


def parse_args(args: dict[str, Any]) -> tuple[RayOptions, Config, dict[str, Any]]:
    """Split ``args`` into the deployment's options, the Config the replicas serve, and the values
    that rebuild that Config in each replica (those given here or by ``LLMSERVE_*`` in the
    driver's environment; the rest take their defaults on the replica's node)."""
    ray_args: dict[str, Any] = {}
    config_args: dict[str, Any] = {}
    for key, value in args.items():
        field = key.replace("-", "_")
        if field in RayOptions.model_fields:
            ray_args[field] = value
        elif field in Config.model_fields or field == "model":
            config_args[field] = value
        else:
            raise ConfigError(
                f"unknown argument {key!r}: neither a deployment option nor an llmserve serve flag"
            )
    try:
        options = RayOptions(**ray_args)
    except ValidationError as exc:
        raise ConfigError("invalid deployment option: " + _explain(exc)) from None
    refused = [f for f in REFUSED_FIELDS if config_args.get(f) is not None]
    if refused:
        raise ConfigError(
            f"{refused[0]}: not served through Ray's HTTP proxy (terminate TLS at a load balancer in front)"
        )
    config = build_config(**config_args)
    given = config.model_dump(exclude_unset=True, exclude=set(PROXY_FIELDS))
    return options, config, given


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        message = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def deployment_options(options: RayOptions, config: Config) -> dict[str, Any]:
    """Keyword arguments of ``Deployment.options`` for these options and this Config.

    llmserve's tensor-parallel ranks are processes each replica starts on its own node, so the
    default placement group has one bundle per rank, packed on one node, and the replica's actor
    holds every GPU of them (Ray makes them visible to it)."""
    tp = config.tensor_parallel_size
    gpus = options.num_gpus * tp
    actor: dict[str, Any] = {"num_cpus": options.num_cpus}
    if gpus:
        actor["num_gpus"] = gpus
    result: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": options.max_ongoing_requests or config.max_num_seqs,
        "max_queued_requests": options.max_queued_requests,
        "health_check_period_s": options.health_check_period_s,
        "health_check_timeout_s": options.health_check_timeout_s,
    }
    bundles = options.placement_group_bundles
    if bundles is None and tp > 1:
        first = {"CPU": options.num_cpus, **({"GPU": gpus} if gpus else {})}
        bundles = [first] + [{"CPU": options.num_cpus} for _ in range(tp - 1)]
    if bundles:
        result["placement_group_bundles"] = bundles
        result["placement_group_strategy"] = options.placement_group_strategy
    if options.autoscaling is not None:
        result["autoscaling_config"] = options.autoscaling
    else:
        result["num_replicas"] = options.num_replicas or 1
    if options.router == "prefix":
        from ray.serve.config import RequestRouterConfig

        result["request_router_config"] = RequestRouterConfig(
            request_router_class="llmserve_ray.routing:PrefixKeyRouter"
        )
    return result
