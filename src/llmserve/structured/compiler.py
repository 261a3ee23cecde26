"""One model's structured-output compiler: backend choice, a cache, and compiling off the loop.

Compiling runs on a small thread pool of the API process, never on the event loop nor on the
engine's step thread, and always before the request enters the engine: whatever is wrong with a
schema, regex or grammar (a compile past the timeout included) is a 400 for that request only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from llmserve.engine.constraints import ConstraintSpec, bitmask_words
from llmserve.errors import InvalidRequestError
from llmserve.structured.pending import PendingSpec
from llmserve.structured.request import StructuredOutputs
from llmserve.structured.schema import check_schema, without_additional_properties

log = logging.getLogger("llmserve.structured")

CACHE_SIZE = 256  # compiled specs kept per model (xgrammar keeps its own cache below this)


class StructuredOutputCompiler:
    """Turns StructuredOutputs into ConstraintSpecs for one model's vocabulary.

    ``backend``: "xgrammar", "guidance", or "auto" (xgrammar, unless the request needs what only
    guidance does, or xgrammar fails to compile it and the request allows the fallback, as in
    vLLM). The backends are built on first use, from the model's tokenizer with the model's
    vocabulary size (which may exceed the tokenizer's) and its end-of-sequence tokens.
    """

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        stop_token_ids: Sequence[int],
        backend: str = "auto",
        timeout: float = 10.0,
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = tuple(stop_token_ids)
        self.backend = backend
        self.timeout = timeout
        self._backends: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, ConstraintSpec] = OrderedDict()
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="llmserve-grammar")

    async def compile(self, spec: StructuredOutputs) -> ConstraintSpec:
        """The ConstraintSpec of ``spec``, compiled on the pool; 400 on any problem or timeout."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.compile_now, spec)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except asyncio.TimeoutError:
            raise self._timed_out(spec) from None

    def start(self, spec: StructuredOutputs) -> ConstraintSpec:
        """``spec``'s ConstraintSpec at once when cached, else a PendingSpec whose compile runs on
        the pool while the request's prompt is computed (``PendingSpec.ready`` raises the 400)."""
        cached = self._cached(spec)
        if cached is not None:
            return cached
        future = self._executor.submit(self.compile_now, spec)
        return PendingSpec(future, self.timeout, lambda: self._timed_out(spec))

    def _timed_out(self, spec: StructuredOutputs) -> Exception:
        # the compile cannot be interrupted: leave its thread to finish, give new work a fresh pool
        self._executor.shutdown(wait=False)
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="llmserve-grammar")
        return InvalidRequestError(
            f"compiling the {spec.what} took longer than {self.timeout:g} s; simplify it",
            param=spec.param,
        )

    def _cached(self, spec: StructuredOutputs) -> ConstraintSpec | None:
        key = f"{self.choose(spec)}:{spec.cache_key()}"
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
            return cached

    def compile_now(self, spec: StructuredOutputs) -> ConstraintSpec:
        """``compile`` on the calling thread (the offline LLM and tests use it)."""
        name = self.choose(spec)
        key = f"{name}:{spec.cache_key()}"
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        schema = None
        if spec.json is not None:
            check_schema(spec.json)
            schema = (
                without_additional_properties(spec.json) if spec.disable_additional_properties else spec.json
            )
        try:
            compiled = self.backend_named(name).compile(spec, schema)
        except InvalidRequestError as first:
            fallback = self.backend == "auto" and spec.backend in (None, "auto") and not spec.disable_fallback
            if not (fallback and name == "xgrammar"):
                raise
            log.info("xgrammar could not compile a %s (%s); trying guidance", spec.kind, first)
            try:
                compiled = self.backend_named("guidance").compile(spec, schema)
            except InvalidRequestError:
                raise first from None  # the error of the backend the request was meant for
            name = "guidance"
        check_allows_output(compiled, self.vocab_size, spec)
        return self._keep(f"{name}:{spec.cache_key()}", compiled)

    def choose(self, spec: StructuredOutputs) -> str:
        """The backend that compiles ``spec``."""
        wanted = spec.backend if spec.backend not in (None, "auto") else self.backend
        if wanted != "auto":
            return wanted
        if spec.kind == "structural_tag":
            return "xgrammar"
        return "guidance" if self.backend_named("xgrammar").unsupported(spec) else "xgrammar"

    def backend_named(self, name: str) -> Any:
        """The backend ``name``, built on first use (its tokenizer tables take a fraction of a second)."""
        with self._lock:
            backend = self._backends.get(name)
            if backend is None:
                backend = self._backends[name] = _make_backend(
                    name, self.tokenizer, self.vocab_size, self.stop_token_ids
                )
            return backend

    def _keep(self, key: str, compiled: ConstraintSpec) -> ConstraintSpec:
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def close(self) -> None:
        """Stop the pool (at server shutdown)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _make_backend(name: str, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> Any:
    try:
        if name == "xgrammar":
            from llmserve.structured.xgrammar_backend import XGrammarBackend

            return XGrammarBackend(tokenizer, vocab_size, stop_token_ids)
        if name == "guidance":
            from llmserve.structured.guidance_backend import GuidanceBackend

            return GuidanceBackend(tokenizer, vocab_size, stop_token_ids)
    except ImportError as exc:
        raise InvalidRequestError(
            f"the {name} structured-outputs backend is not installed here ({exc.name}); "
            "install it or choose another --structured-outputs-backend"
        ) from None
    raise InvalidRequestError(f"unknown structured-outputs backend {name!r}")


def check_allows_output(compiled: ConstraintSpec, vocab_size: int, spec: StructuredOutputs) -> None:
    """400 for a grammar that allows no first token: the request could only fail later."""
    mask = np.full((1, bitmask_words(vocab_size)), -1, dtype=np.int32)
    try:
        compiled.new().fill_bitmask(mask, 0)
    except Exception as exc:
        raise InvalidRequestError(f"the {spec.what} cannot be used: {exc}", param=spec.param) from None
    if not mask.any():
        raise InvalidRequestError(
            f"the {spec.what} allows no output at all (is it self-referential or contradictory?)",
            param=spec.param,
        )
