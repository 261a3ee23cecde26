"""The README's plugin examples run as written: each block is loaded as a plugin module and used
through a real engine (protocol route, logits processor, constraint) or its registry (parser)."""

from __future__ import annotations

import re
import types
from pathlib import Path

from llmserve.config import build_config
from llmserve.engine.sampling import SamplingParams
from llmserve.plugins import Plugins
from llmserve.server.app import create_app
from llmserve.server.startup import build_context, check_config

README = Path(__file__).parent.parent / "README.md"


def _example_modules() -> dict[str, types.ModuleType]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    modules = {}
    for i, code in enumerate(b for b in blocks if "llmserve.api" in b):
        module = types.ModuleType(f"readme_example_{i}")
        exec(compile(code, f"README.md example {i}", "exec"), module.__dict__)  # noqa: S102
        modules[module.__name__] = module
    return modules


def test_readme_plugins_work(smollm2_dir, tok):
    modules = _example_modules()
    assert len(modules) >= 4
    plugins = Plugins({}).load(list(modules.items()))
    assert "think-tags" in plugins.reasoning_parsers() and "ban-token" in plugins.logits_processors()
    assert "repeat" in plugins.backends() and "echo" in plugins.protocols()
    parser = plugins.reasoning_parsers()["think-tags"].obj()
    assert parser.extract("<think>hm</think>Hi") == ("hm", "Hi")
    content, calls = plugins.tool_parsers()["call-tags"].obj().extract('Hi <call name="f">{"a": 1}</call>')
    assert (content, [(c.name, c.arguments) for c in calls]) == ("Hi ", [("f", '{"a": 1}')])
    config = build_config(
        models=[str(smollm2_dir)], embedding_model="none", logits_processors=["ban-token"],
        max_model_len=256, kv_cache_space=0.1,
    )  # fmt: skip
    context = build_context(config, check_config(config, plugins))
    try:
        import asyncio

        app = create_app(config, context, plugins)

        async def run():
            async with app.test_app() as test_app:
                client = test_app.test_client()
                echo = await client.post(
                    "/echo", json={"prompt": "The capital of France is", "max_tokens": 4}
                )
                spec = await (await client.get("/openapi.json")).get_json()
                return echo.status_code, await echo.get_json(), spec

        status, body, spec = asyncio.run(run())
        assert status == 200 and body["text"]
        assert "/echo" in spec["paths"] and "EchoIn" in spec["components"]["schemas"]
        digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
        spec_class = next(m.OnlyDigits for m in modules.values() if hasattr(m, "OnlyDigits"))
        engine = context.models.first("generate").engine

        async def constrained():
            await engine.start()
            try:
                params = SamplingParams(max_tokens=6, temperature=0, constraint=spec_class(set(digits)))
                ban = SamplingParams(max_tokens=6, temperature=0, extra_args={"ban": digits[1]})
                from llmserve.api import OutputKind

                one = engine.add_request(
                    "digits", tok.encode("Pick a number:"), params, kind=OutputKind.FINAL_ONLY
                )
                two = engine.add_request("ban", tok.encode("1 1 1 1 1"), ban, kind=OutputKind.FINAL_ONLY)
                return await one.result(), await two.result()
            finally:
                await engine.stop()

        only_digits, banned = asyncio.run(constrained())
        assert only_digits.outputs[0].token_ids and set(only_digits.outputs[0].token_ids) <= set(digits)
        assert digits[1] not in banned.outputs[0].token_ids
    finally:
        for backend in context.backends:
            backend.shutdown()
