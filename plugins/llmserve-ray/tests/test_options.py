"""The application's arguments, the deployment options they make, the router's ranking and the
CLI's refusals: no cluster needed."""

from __future__ import annotations

import pickle
import subprocess
import sys
from types import SimpleNamespace

import pytest
from llmserve_ray.options import deployment_options, parse_args
from llmserve_ray.routing import prefix_key, rank, unknown_first

from llmserve.api import ConfigError


def test_serve_run_style_string_arguments():
    # what `serve run llmserve_ray:build_app model=smollm2 num_replicas=2 max-model-len=512` passes
    options, config, given = parse_args({"model": "smollm2", "num_replicas": "2", "max-model-len": "512"})
    assert options.num_replicas == 2 and config.max_model_len == 512
    assert given["models"] == ["smollm2"] and given["max_model_len"] == 512
    made = deployment_options(options, config)
    assert made["num_replicas"] == 2 and made["max_ongoing_requests"] == config.max_num_seqs
    assert made["ray_actor_options"] == {"num_cpus": 1.0}
    assert made["request_router_config"].request_router_class == "llmserve_ray.routing:PrefixKeyRouter"


def test_autoscaling_short_form_and_json():
    options, config, _ = parse_args({"autoscaling": "1,4,8"})
    made = deployment_options(options, config)
    assert made["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8.0,
    }
    assert "num_replicas" not in made
    options, _, _ = parse_args(
        {"autoscaling": '{"min_replicas": 0, "max_replicas": 3, "upscale_delay_s": 5}'}
    )
    assert options.autoscaling["upscale_delay_s"] == 5


def test_tensor_parallel_bundles_on_one_node():
    options, config, _ = parse_args({"tensor_parallel_size": "2", "num_gpus": "1", "num_cpus": "2"})
    made = deployment_options(options, config)
    assert made["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 2.0}
    assert made["placement_group_bundles"] == [{"CPU": 2.0, "GPU": 2.0}, {"CPU": 2.0}]
    assert made["placement_group_strategy"] == "STRICT_PACK"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"num_replicas": "2", "autoscaling": "1,2,3"}, "not both"),
        ({"autoscaling": "3,1,2"}, "min_replicas <= max_replicas"),
        ({"autoscaling": "1,2"}, "min,max,target_ongoing_requests"),
        ({"no_such_flag": "1"}, "unknown argument 'no_such_flag'"),
        ({"max_model_len": "0"}, "--max-model-len"),
        ({"uds": "/tmp/x.sock"}, "Ray's HTTP proxy"),
        ({"router": "random"}, "router"),
        ({"responses_store": "sqlite:////tmp/r.sqlite?journal_mode=off"}, "journal_mode"),
    ],
)
def test_bad_arguments_are_refused_by_name(args, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(args)


def _replica(name: str):
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=name))


def test_prefix_key_ranking_is_stable_and_moves_only_the_leaving_replicas_keys():
    replicas = [_replica(n) for n in ("a", "b", "c", "d")]
    homes = {
        key: rank(key, replicas)[0].replica_id.unique_id for key in (f"k{i}".encode() for i in range(64))
    }
    assert len(set(homes.values())) == 4  # keys spread over every replica
    assert homes == {key: rank(key, replicas[::-1])[0].replica_id.unique_id for key in homes}
    without_c = [r for r in replicas if r.replica_id.unique_id != "c"]
    for key, home in homes.items():
        if home != "c":
            assert rank(key, without_c)[0].replica_id.unique_id == home


def test_prefix_key_is_read_from_the_asgi_headers():
    request = SimpleNamespace(args=[SimpleNamespace(asgi_scope={"headers": [(b"x-prefix-key", b"conv-1")]})])
    assert prefix_key(request) == b"conv-1"
    assert prefix_key(SimpleNamespace(args=[SimpleNamespace(asgi_scope={"headers": []})])) is None
    assert prefix_key(SimpleNamespace(args=["not http"])) is None
    # as Ray's proxy hands it to the router: the replica's argument, pickled
    pickled = pickle.dumps(SimpleNamespace(asgi_scope={"headers": [(b"X-Prefix-Key", b"conv-2")]}))
    assert prefix_key(SimpleNamespace(args=[pickled])) == b"conv-2"
    assert prefix_key(SimpleNamespace(args=[b"not a pickle"])) is None


def test_a_replica_of_unknown_queue_length_is_probed_before_a_known_one():
    a, b = _replica("a"), _replica("b")
    known = {"a": 0}
    cache = SimpleNamespace(get=lambda replica_id: known.get(replica_id.unique_id))
    assert unknown_first([a, b], cache) == [[b], [a]]  # not [[a, b]]: Serve would take a every time
    known["b"] = 3
    assert unknown_first([a, b], cache) == [[a, b]]
    assert unknown_first([a, b], SimpleNamespace(get=lambda replica_id: None)) == [[a, b]]


def test_cli_refuses_before_starting_ray():
    done = subprocess.run([sys.executable, "-m", "llmserve", "ray", "serve", "--num-replicas", "2",
                           "--autoscaling", "1,2,3"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "not both" in done.stderr
    listed = subprocess.run([sys.executable, "-m", "llmserve", "plugins"], capture_output=True, text=True)
    assert "llmserve-ray" in listed.stdout


def test_health_check_follows_the_engines():
    import asyncio

    from llmserve_ray.replica import LLMServeReplica

    def replica(healthy: bool | None):
        context = None if healthy is None else SimpleNamespace(is_healthy=lambda: healthy)
        return SimpleNamespace(context=context)

    asyncio.run(LLMServeReplica.check_health(replica(True)))
    for state in (False, None):  # an engine died / the app is not built yet
        with pytest.raises(RuntimeError, match="engine is not running"):
            asyncio.run(LLMServeReplica.check_health(replica(state)))
