"""Offline inference: ``LLM(model).generate(prompts, SamplingParams(...))`` like vLLM's."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

from llmserve.engine.outputs import RequestOutput
from llmserve.engine.sampling import SamplingParams
from llmserve.engine.stream import OutputKind


class LLM:
    """Load a model once and run batches of prompts through the same engine the server uses."""

    def __init__(self, model: str | None = None, *, backend: str = "auto", **options) -> None:
        from llmserve.config import build_config
        from llmserve.engine.async_engine import AsyncEngine
        from llmserve.server import check_config, resolve_backend_name
        from llmserve.sources.resolve import resolve_model

        self.config = build_config(model=model, backend=backend, embedding_model="none", **options)
        plugins = check_config(self.config)
        backend_obj = plugins.backends()[resolve_backend_name(self.config, plugins)].obj(self.config)
        resolved = resolve_model(model)
        self.model_name = resolved.name
        self.engine = AsyncEngine.create(self.config, backend_obj, str(resolved.path), resolved.name)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[Sequence[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids); outputs hold full texts, in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        token_lists = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params or SamplingParams()] * len(token_lists)
        if len(sampling_params) != len(token_lists):
            raise ValueError("one SamplingParams per prompt, or a single one for all")
        return asyncio.run(self._run(token_lists, sampling_params))

    def close(self) -> None:
        """Release the backend (worker processes, devices). The LLM cannot generate afterwards."""
        self.engine.backend.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def _run(self, token_lists, params_list) -> list[RequestOutput]:
        await self.engine.start()
        try:
            tasks = [
                self._one(ids, _copy(params)) for ids, params in zip(token_lists, params_list, strict=False)
            ]
            return list(await asyncio.gather(*tasks))
        finally:
            await self.engine.stop()

    async def _one(self, prompt_ids: list[int], params: SamplingParams) -> RequestOutput:
        stream = self.engine.add_request(
            f"offline-{next(self._ids)}", prompt_ids, params, kind=OutputKind.FINAL_ONLY
        )
        return await stream.result()


def _copy(params: SamplingParams) -> SamplingParams:
    from dataclasses import replace

    return replace(params)
