"""A third-party logits processor: registered through its hook, enabled by --logits-processors,
fed per-request arguments through ``vllm_xargs``, and applied inside the real engine."""

from __future__ import annotations

import pytest

from llmserve.api import LogitsProcessor, hookimpl
from llmserve.config import build_config
from llmserve.errors import ConfigError
from llmserve.plugins import Plugins
from llmserve.server.app import create_app
from llmserve.server.startup import build_context, check_config


class ForceToken(LogitsProcessor):
    """Rows whose request names ``force`` may only sample that token."""

    def is_active(self, params) -> bool:
        return bool(params.extra_args and "force" in params.extra_args)

    def apply(self, logits, rows) -> None:
        for row in rows:
            token = row.params.extra_args["force"]
            keep = logits[row.index, token].clone()
            logits[row.index].fill_(float("-inf"))
            logits[row.index, token] = keep


class _Plugin:
    @hookimpl
    def llmserve_logits_processors(self, register):
        register("force-token", ForceToken)


def _plugins() -> Plugins:
    return Plugins({}).load([("force-plugin", _Plugin())])


def test_unknown_processor_is_refused_at_start():
    with pytest.raises(ConfigError, match="unknown logits processor 'nope'"):
        check_config(build_config(logits_processors=["nope"]), _plugins())


async def test_processor_runs_only_for_requests_that_ask(smollm2_dir, tok):
    config = build_config(
        models=[str(smollm2_dir)], embedding_model="none", logits_processors=["force-token"],
        max_model_len=256, kv_cache_space=0.1,
    )  # fmt: skip
    plugins = check_config(config, _plugins())
    context = build_context(config, plugins)
    try:
        app = create_app(config, context, plugins)
        forced = tok.encode(" cat")[0]
        async with app.test_app() as test_app:
            client = test_app.test_client()
            body = {"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "ignore_eos": True,
                    "return_token_ids": True}  # fmt: skip
            plain = await (await client.post("/v1/completions", json=body)).get_json()
            pushed = await (
                await client.post("/v1/completions", json={**body, "vllm_xargs": {"force": forced}})
            ).get_json()
        assert pushed["choices"][0]["token_ids"] == [forced] * 5
        assert plain["choices"][0]["token_ids"] != [forced] * 5
    finally:
        for backend in context.backends:
            backend.shutdown()
