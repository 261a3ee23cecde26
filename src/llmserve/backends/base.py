"""The contract between the engine and a model backend.

The engine owns scheduling and memory (which sequences run, which KV blocks they hold); a backend
owns the math (weights, KV tensors, attention, sampling). Everything that crosses this boundary is
plain Python data, so torch, JAX and third-party backends implement the same small interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from llmserve.errors import ConfigError, LLMServeError, UnsupportedError

if TYPE_CHECKING:
    from llmserve.config import Config
    from llmserve.engine.constraints import LogitsProcessor
    from llmserve.engine.sampling import SamplingParams

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the engine needs to know about a loaded causal LM."""

    architecture: str
    vocab_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_model_len: int
    dtype: str
    eos_token_ids: tuple[int, ...] = ()

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V cache one token takes across all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * DTYPE_BYTES[self.dtype]


@dataclass(slots=True)
class BatchItem:
    """One sequence's share of a step: compute ``token_ids`` at positions ``start_pos...``.

    Tokens before ``start_pos`` are already in the KV cache at the slots given by ``block_table``
    (slot of position p = block_table[p // block_size] * block_size + p % block_size). The new
    tokens' K/V are written to their slots. When ``sample`` is set, the next token is sampled
    from the logits at the last new position.
    """

    seq_id: int
    token_ids: list[int]
    start_pos: int
    block_table: list[int]
    sample: bool
    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    # Seeded sampling draws from (params.seed, seed_offset, len(output_token_ids)): reproducible
    # whatever else is in the batch. seed_offset separates the n choices of one request.
    seed_offset: int = 0
    # Compute logprobs of the prompt tokens following each new position (prompt_logprobs).
    want_prompt_logprobs: bool = False
    # Row of ``Batch.token_bitmask`` holding this item's allowed tokens (a sampling item with a
    # constraint), or None: no constraint.
    bitmask_row: int | None = None

    @property
    def end_pos(self) -> int:
        return self.start_pos + len(self.token_ids)


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    rank: int = 1


@dataclass(slots=True)
class SampleResult:
    """A backend's answer for one BatchItem.

    ``token_id`` is None when the item did not sample. ``top_logprobs`` holds the k most likely
    alternatives when ``params.logprobs`` is set. ``prompt_logprobs`` holds, per new position
    whose next token is a prompt token, that token's logprob and the top alternatives.
    """

    seq_id: int
    token_id: int | None = None
    logprob: float | None = None
    rank: int | None = None
    top_logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[tuple[TokenLogprob, list[TokenLogprob]]] | None = None
    # Set when this row failed (a logits processor raised): the engine ends the sequence with it.
    error: str | None = None


@dataclass(slots=True)
class Batch:
    """One engine step's work. ``items`` mixes prefill chunks and decodes.

    ``token_bitmask`` is None when no item samples under a constraint; otherwise an int32 numpy
    array [constrained rows, ceil(vocab / 32)] in xgrammar's packing (bit j of word i allows token
    32 * i + j), row ``item.bitmask_row`` for each constrained item. Tokens it does not allow get
    -inf logits before any other adjustment.
    """

    items: list[BatchItem] = field(default_factory=list)
    block_size: int = 16
    token_bitmask: Any = None

    @property
    def num_tokens(self) -> int:
        return sum(len(item.token_ids) for item in self.items)


class Embedder(ABC):
    """A loaded encoder (pooling) model."""

    dim: int
    max_model_len: int
    vocab_size: int | None = None  # when set, check_inputs refuses ids outside it

    @abstractmethod
    def embed(self, token_ids: list[list[int]], normalize: bool = True) -> list[list[float]]:
        """Pooled embeddings, one per input, in input order."""

    def check_inputs(self, token_ids: list[list[int]]) -> None:
        """Reject empty inputs and inputs longer than the model's context (400)."""
        from llmserve.errors import InvalidRequestError

        for ids in token_ids:
            if not ids:
                raise InvalidRequestError("cannot embed an empty input", param="input")
            vocab = self.vocab_size
            if vocab is not None and (min(ids) < 0 or max(ids) >= vocab):
                bad = next(t for t in ids if not 0 <= t < vocab)
                raise InvalidRequestError(
                    f"Token id {bad} is out of vocabulary (size {vocab}).", param="input"
                )
            if len(ids) > self.max_model_len:
                raise InvalidRequestError(
                    f"input has {len(ids)} tokens, more than the embedding model's {self.max_model_len}",
                    param="input",
                )


@dataclass(slots=True)
class TranscriptionStart:
    """A window to begin: 30 s of log-mel features, how to decode it, and its sequences.

    ``language`` None on a multilingual model means: detect it. ``previous`` are text tokens of
    an initial prompt (``<|startofprev|>`` context). ``seq_ids`` name the window's candidates
    (several when sampling ``best_of``) and ``block_tables`` are their KV blocks from the engine's
    block manager, each holding ``Transcriber.prompt_len`` tokens; the candidates share the full
    blocks of the prompt (same ids) and have their own copy of its last, partly filled one.
    """

    features: Any
    language: str | None = None
    task: str = "transcribe"
    timestamps: bool = False
    temperature: float = 0.0
    previous: list[int] = field(default_factory=list)
    seed: int | None = None
    seq_ids: list[int] = field(default_factory=lambda: [0])
    block_tables: list[list[int]] = field(default_factory=lambda: [[]])


@dataclass(slots=True)
class TranscriptionBegun:
    """A begun window: the first sampled token of each candidate, the language used, and the
    number of prompt tokens now in each candidate's KV blocks."""

    tokens: list[int]
    language: str | None
    prompt_len: int


class Transcriber(ABC):
    """A loaded speech-to-text model that decodes many sequences at once on a paged KV cache.

    All calls come from the device thread. The engine owns the KV blocks: it sizes the pool
    (``kv_bytes_per_token``, ``allocate_kv_cache``), hands each sequence its block table and grows
    it before each step. ``begin`` encodes windows (keeping their cross-attention keys/values, one
    of the ``max_windows`` audio slots each) and returns each candidate's first token; ``advance``
    runs one batched decode step and returns the next tokens; ``release`` forgets a window.
    """

    max_windows: int  # windows decoded at once (audio slots)
    max_positions: int  # decoder positions per sequence
    max_tokens: int  # sampled tokens per window
    eot: int
    timestamp_begin: int
    multilingual: bool
    languages: tuple[str, ...]
    tokenizer: Any

    @abstractmethod
    def features(self, samples: Any) -> list[tuple[float, float, Any]]:
        """16 kHz mono float samples -> (start s, end s, features) per 30 s window."""

    @abstractmethod
    def kv_bytes_per_token(self) -> int:
        """Bytes of decoder self-attention KV one token takes over all layers."""

    @abstractmethod
    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        """Create the paged KV cache the engine's block tables index."""

    @abstractmethod
    def prompt_len(self, start: TranscriptionStart) -> int:
        """Decoder prompt tokens ``begin`` puts in each of ``start``'s block tables."""

    @abstractmethod
    def begin(self, starts: list[TranscriptionStart]) -> list[TranscriptionBegun]:
        """Take a free audio slot per start and prefill its prompt."""

    @abstractmethod
    def advance(self, seq_ids: list[int], block_tables: list[list[int]]) -> list[int]:
        """One decode step for each sequence (fed its last token; its table already has room for
        it); the next token of each."""

    @abstractmethod
    def release(self, seq_ids: list[int]) -> None:
        """Forget a window's sequences (all of them) and free its audio slot."""

    word_timestamps: bool = False  # whether ``align`` works

    def align(self, seq_id: int, text_tokens: list[int], frames: int, language: str | None, task: str):
        """For a sequence's window: ``text_tokens`` as words with (start, end) seconds from
        the window's start, as dicts ``{"word", "start", "end"}``; ``frames`` log-mel frames hold
        audio."""
        raise NotImplementedError("this model has no word timestamps")

    @abstractmethod
    def scores(self, seq_id: int) -> tuple[float, float]:
        """For a begun sequence: the sum of its sampled tokens' log-probabilities (after the token
        rules, before temperature) and the probability of no speech in its window."""

    @property
    def free_windows(self) -> int:
        """Windows ``begin`` can take now."""
        return self.max_windows


class Backend(ABC):
    """A model backend, registered by name through the ``llmserve_backends`` hook.

    Life cycle: ``__init__(config)`` must fail fast (``BackendUnavailable``) when the hardware is
    missing; then ``load_model``, ``kv_cache_budget_bytes``, ``allocate_kv_cache``, then many
    ``execute`` calls from the engine's step thread; ``shutdown`` at the end. Optional:
    ``set_logits_processors`` once after loading, ``sleep`` / ``wake_up`` between steps.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # ``--quantization`` methods this backend runs; any other is refused before loading.
    quantization_methods: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Config) -> None:
        self.config = config

    @classmethod  # noqa: B027 - an optional hook with a do-nothing default
    def check_available(cls, config: Config) -> None:
        """Raise BackendUnavailable, with what to do instead, when this backend cannot run here.

        Called before any model is loaded, so a missing device fails fast."""

    @classmethod
    def is_available(cls, config: Config) -> bool:
        """Whether this backend can run ``config`` here; ``--backend auto`` asks.

        Auto considers only backends registered with ``register(name, cls, auto_priority=N)`` and
        picks the available one with the highest N (built-ins: cuda 30, tpu 20, cpu 10), so a
        third-party backend takes part by registering a priority. The default is "check_available
        does not raise"; override it when a cheaper probe exists."""
        try:
            cls.check_available(config)
        except BackendUnavailable:
            return False
        return True

    @abstractmethod
    def load_model(self, model_dir: str) -> ModelInfo:
        """Load a causal LM from an HF-style directory (config.json + safetensors)."""

    @abstractmethod
    def kv_cache_budget_bytes(self, info: ModelInfo) -> int:
        """How many bytes the KV cache may use (after weights are loaded)."""

    @abstractmethod
    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        """Allocate the KV pool: ``num_blocks`` blocks of ``block_size`` tokens for every layer."""

    @abstractmethod
    def execute(self, batch: Batch) -> list[SampleResult]:
        """Run the model on the batch and sample; one result per item, in order."""

    def set_logits_processors(self, processors: Sequence[LogitsProcessor]) -> None:
        """Apply these batch-level processors on every step (called after ``load_model``, only
        with a non-empty list). Backends that cannot run them raise ConfigError."""
        raise ConfigError(f"backend {self.name!r} does not support logits processors")

    def sleep(self, level: int) -> None:
        """Release memory while idle (no sequence holds KV blocks). Level 1 drops the KV cache,
        level 2 the weights too. ``wake_up`` restores what was dropped."""
        raise UnsupportedError(f"sleep mode is not supported by the {self.name!r} backend")

    def wake_up(self) -> None:
        """Reload what ``sleep`` dropped: the weights (level 2) and a zeroed KV cache of the same
        number of blocks."""
        raise UnsupportedError(f"sleep mode is not supported by the {self.name!r} backend")

    def load_embedding_model(self, model_dir: str) -> Embedder:
        """Load an encoder model for embeddings. Backends without one raise BackendUnavailable."""
        raise BackendUnavailable(f"backend {self.name!r} has no embedding models")

    def load_transcription_model(self, model_dir: str) -> Transcriber:
        """Load a speech-to-text model (Whisper). Backends without one raise BackendUnavailable."""
        raise BackendUnavailable(f"backend {self.name!r} has no speech-to-text models")

    def describe(self) -> str:
        """One line for the start log: device and dtype."""
        return self.name

    def failure(self) -> str | None:
        """Why the backend can no longer run (a lost worker process), or None while it can.
        Polled by the server's health check; the engine is then dead and the server exits."""
        return None

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release devices and memory."""


class BackendUnavailable(LLMServeError):
    """The backend cannot run here (no such device, missing dependency)."""

    status = 503
    type = "BackendUnavailable"
