"""The async front of a speech-to-text model: requests decoded together on the device thread.

Each request is a list of 30 s windows decoded one after another; the windows of all requests
share steps. Every step first begins waiting windows while audio slots and KV blocks allow
(encoding each once), then advances every running sequence by one token in a single batched
decoder call, so a request that arrives mid-way joins at the next step, as in the text engine.

The decoder's self-attention KV lives in blocks of the engine's ``BlockManager``: a sequence gets
blocks for its prompt when its window begins and one more block whenever it fills one, and gives
them back when it ends (finished, cancelled, or preempted when the pool runs dry: the newest
window is then decoded again later, from its start). A window sampled at a temperature above 0
is decoded as ``best_of`` candidates that share the prompt's full blocks and the audio; the one
with the best average log-probability is kept, as Whisper does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from llmserve.backends.base import Transcriber, TranscriptionStart
from llmserve.engine.device_thread import device_thread
from llmserve.engine.kv_cache import BlockManager
from llmserve.engine.long_form import (
    BEST_OF,
    MAX_PROMPT_TOKENS,
    PROMPT_RESET_TEMPERATURE,
    SAMPLES_PER_FRAME,
    WINDOW_FRAMES,
    WindowResult,
    compression_ratio,
    split_window,
    temperature_schedule,
)
from llmserve.engine.transcripts import Segment, Transcript, TranscriptEvent, TranscriptionOptions

__all__ = ["Segment", "Transcript", "TranscriptEvent", "TranscriptionOptions", "TranscriptionService"]

log = logging.getLogger("llmserve.transcription")

BLOCK_SIZE = 16


@dataclass(eq=False)
class _Seq:
    """One candidate decoding of a window, as the block manager sees it."""

    seq_id: int
    block_table: list[int] = field(default_factory=list)
    num_registered_blocks: int = 0
    num_tokens: int = 0  # tokens in its KV blocks
    tokens: list[int] = field(default_factory=list)  # sampled, without end-of-text
    done: bool = False


@dataclass(eq=False)
class _Job:
    samples: Any  # 16 kHz mono float32
    options: TranscriptionOptions
    emit: Any  # thread-safe callback taking a TranscriptEvent
    temperatures: tuple[float, ...]
    timestamps: bool
    seed: int
    seek: int = 0  # frame where the current window starts
    attempt: int = 0  # index into temperatures
    features: Any = None  # the current window's, kept for a fallback
    seqs: list[_Seq] = field(default_factory=list)  # the current window's candidates
    language: str | None = None
    context: list[int] = field(default_factory=list)  # earlier tokens the next window continues
    segments: list[Segment] = field(default_factory=list)
    words: list[dict] = field(default_factory=list)
    done_text: str = ""  # text of finished windows
    sent: int = 0  # characters of text already streamed
    num_tokens: int = 0
    cancelled: bool = False

    @property
    def frames(self) -> int:
        return len(self.samples) // SAMPLES_PER_FRAME

    @property
    def window_frames(self) -> int:
        return max(0, min(WINDOW_FRAMES, self.frames - self.seek))

    @property
    def candidates(self) -> int:
        return self.options.best_of if self.temperatures[self.attempt] > 0 else 1

    @property
    def live(self) -> bool:
        """Text streams as it is sampled (no fallback or other candidate can replace it)."""
        return len(self.temperatures) == 1 and self.candidates == 1


class TranscriptionService:
    """Tokenizer plus a loaded Transcriber, stepped on the device thread while it has work.

    ``kv_tokens``: size of the KV pool in tokens, at least one full sequence; by default as many
    as ``max_windows`` full sequences and at least ``BEST_OF``. A window samples no more
    candidates than the pool holds full sequences."""

    def __init__(self, transcriber: Transcriber, kv_tokens: int | None = None) -> None:
        self.transcriber = transcriber
        self.tokenizer = transcriber.tokenizer
        self.max_model_len = transcriber.max_tokens
        positions = transcriber.max_positions
        tokens = max(kv_tokens or max(transcriber.max_windows, BEST_OF) * positions, positions)
        self.blocks = BlockManager(-(-tokens // BLOCK_SIZE), BLOCK_SIZE, enable_prefix_caching=False)
        self.max_candidates = self.blocks.num_blocks // self.blocks.blocks_for(positions)
        device_thread().run(transcriber.allocate_kv_cache, self.blocks.num_blocks, BLOCK_SIZE)
        self.num_preemptions = 0
        self._ids = itertools.count()
        self._waiting: deque[_Job] = deque()  # touched on the device thread only
        self._running: list[_Job] = []  # in the order their windows began
        self._owner: dict[int, _Job] = {}  # seq id -> job
        device_thread().add_stepper(self)

    def stats(self) -> dict[str, Any]:
        """Windows running and waiting, and the KV pool's use (read from any thread)."""
        total, free = self.blocks.num_blocks, self.blocks.num_free_blocks
        block_bytes = self.transcriber.kv_bytes_per_token() * BLOCK_SIZE
        return {
            "num_running": len(self._running),
            "num_waiting": len(self._waiting),
            "num_preemptions": self.num_preemptions,
            "memory": {
                "kv_cache_used_bytes": (total - free) * block_bytes,
                "kv_cache_total_bytes": total * block_bytes,
                "kv_cache_usage": self.blocks.usage,
            },
        }

    async def transcribe(self, samples: Any, options: TranscriptionOptions) -> AsyncIterator[TranscriptEvent]:
        """Events for ``samples`` (16 kHz mono float32): deltas as text settles, then the transcript."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TranscriptEvent] = asyncio.Queue()

        def emit(event: TranscriptEvent) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        job = await asyncio.wrap_future(device_thread().submit(self._enqueue, samples, options, emit))
        finished = False
        try:
            while True:
                event = await queue.get()
                if event.error is not None:
                    finished = True
                    raise event.error
                finished = event.done
                yield event
                if finished:
                    return
        finally:
            if not finished:  # the client went away: free its blocks now
                device_thread().submit(self._cancel, job)

    # --- device thread ---------------------------------------------------------------------------

    def _enqueue(self, samples, options: TranscriptionOptions, emit) -> _Job:
        long_form = len(samples) > WINDOW_FRAMES * SAMPLES_PER_FRAME  # seeking needs timestamps
        options = replace(options, best_of=max(1, min(options.best_of, self.max_candidates)))
        temperatures = temperature_schedule(options.temperature, options.fallback)
        seed = options.seed if options.seed is not None else random.randrange(2**31)
        job = _Job(samples, options, emit, temperatures, options.timestamps or long_form, seed)
        job.language, job.context = options.language, list(options.prompt_ids)
        self._waiting.append(job)
        return job

    def _cancel(self, job: _Job) -> None:
        job.cancelled = True
        if job in self._waiting:
            self._waiting.remove(job)
        self._release(job)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def step_once(self) -> None:
        try:
            self._step()
        except Exception as exc:  # a failing step ends its requests, never the device thread
            log.exception("transcription step failed")
            for job in [*self._running, *self._waiting]:
                job.emit(TranscriptEvent(error=exc))
                self._release(job)
            self._waiting.clear()

    def _step(self) -> None:
        running = [seq for job in self._running for seq in job.seqs if not seq.done]
        self._admit()
        if running:
            running = self._make_room(running)
            tokens = self.transcriber.advance([s.seq_id for s in running], [s.block_table for s in running])
            for seq, token in zip(running, tokens, strict=True):
                seq.num_tokens += 1
                self._accept(self._owner[seq.seq_id], seq, token)

    def _admit(self) -> None:
        """Begin waiting windows while audio slots and blocks allow, leaving every running
        sequence a block to grow into."""
        bs, admitted = BLOCK_SIZE, []
        headroom = sum(not seq.done for job in self._running for seq in job.seqs)
        while self._waiting and len(admitted) < self.transcriber.free_windows:
            job = self._waiting[0]
            start = self._start(job)
            length = self.transcriber.prompt_len(start)
            full, n = length // bs, job.candidates
            need = self.blocks.blocks_for(length) + (n - 1) * (self.blocks.blocks_for(length) - full)
            if need + headroom > self.blocks.num_free_blocks:
                break
            self._waiting.popleft()
            job.seqs = [_Seq(next(self._ids)) for _ in range(n)]
            self.blocks.allocate(job.seqs[0], [], length)
            for seq in job.seqs[1:]:  # the prompt's full blocks are shared, its last one copied
                self.blocks.allocate(seq, job.seqs[0].block_table[:full], length)
            for seq in job.seqs:
                self._owner[seq.seq_id] = job
            start.seq_ids = [seq.seq_id for seq in job.seqs]
            start.block_tables = [seq.block_table for seq in job.seqs]
            self._running.append(job)
            admitted.append((job, start))
            headroom += n
        if not admitted:
            return
        begun = self.transcriber.begin([start for _, start in admitted])
        for (job, _), window in zip(admitted, begun, strict=True):
            job.language = window.language
            for seq, token in zip(list(job.seqs), window.tokens, strict=True):
                seq.num_tokens = window.prompt_len
                self._accept(job, seq, token)

    def _make_room(self, running: list[_Seq]) -> list[_Seq]:
        """Grow every running sequence by one token, preempting the newest windows (live streams
        last) while the pool cannot hold that."""
        blocks = self.blocks
        while True:
            need = sum(max(0, blocks.blocks_for(s.num_tokens + 1) - len(s.block_table)) for s in running)
            if need <= blocks.num_free_blocks:
                break
            if len(self._running) == 1:
                raise RuntimeError("the KV pool cannot hold one window's sequences")
            victim = ([job for job in self._running if not job.live] or self._running)[-1]
            self._release(victim)
            self._waiting.appendleft(victim)  # the same window again, from its start
            self.num_preemptions += 1
            running = [s for s in running if s.seq_id in self._owner]
        for seq in running:
            blocks.grow(seq, seq.num_tokens + 1)
        return running

    def _start(self, job: _Job) -> TranscriptionStart:
        opts = job.options
        if job.features is None:
            first = job.seek * SAMPLES_PER_FRAME
            job.features = self.transcriber.features(
                job.samples[first : first + WINDOW_FRAMES * SAMPLES_PER_FRAME]
            )[0][2]
        return TranscriptionStart(
            features=job.features,
            language=job.language,
            task=opts.task,
            timestamps=job.timestamps,
            temperature=job.temperatures[job.attempt],
            previous=job.context[-MAX_PROMPT_TOKENS:],
            seed=job.seed + job.attempt,
        )

    def _accept(self, job: _Job, seq: _Seq, token: int) -> None:
        t = self.transcriber
        ended = token == t.eot
        if not ended:
            seq.tokens.append(token)
            if job.live and (token < t.eot or job.timestamps):
                self._stream(job, seq.tokens)
        if ended or len(seq.tokens) >= t.max_tokens or t.max_positions - seq.num_tokens <= 1:
            seq.done = True
            self.blocks.free(seq)  # its blocks go back now; its scores stay until the window ends
            if all(s.done for s in job.seqs):
                self._finish_window(job)

    def _decode(self, tokens: list[int]) -> str:
        text_ids = [tok for tok in tokens if tok < self.transcriber.eot]
        return self.tokenizer.decode(text_ids, skip_special_tokens=True)

    def _stream(self, job: _Job, settled: list[int] | None = None) -> None:
        """Send what is settled: the finished windows' text, and for a live stream the current
        window's text (without timestamps) or its text up to the last timestamp pair (later text
        may be cut off)."""
        if settled and job.timestamps:
            begin = self.transcriber.timestamp_begin
            pairs = [i for i in range(1, len(settled)) if settled[i] >= begin and settled[i - 1] >= begin]
            settled = settled[: pairs[-1]] if pairs else []
        text = (job.done_text + (self._decode(settled) if settled else "")).lstrip()
        if text.endswith("\ufffd") and settled:  # a character split over tokens: wait for the rest
            return
        if len(text) > job.sent:
            job.emit(TranscriptEvent(delta=text[job.sent :]))
            job.sent = len(text)

    def _best(self, job: _Job) -> tuple[_Seq, float, float]:
        """The candidate with the best log-probability per token (Whisper's ranking), its sum
        of log-probabilities and its window's no-speech probability."""
        scored = [(seq, *self.transcriber.scores(seq.seq_id)) for seq in job.seqs]
        return max(scored, key=lambda item: item[1] / max(len(item[0].tokens), 1))

    def _finish_window(self, job: _Job) -> None:
        best, sum_logprob, no_speech = self._best(job)
        tokens = best.tokens
        text = self._decode(tokens)
        result = WindowResult(sum_logprob / (len(tokens) + 1), compression_ratio(text), no_speech)
        temperature = job.temperatures[job.attempt]
        if job.attempt + 1 < len(job.temperatures) and result.needs_fallback():
            self._release(job)
            job.attempt += 1
            self._waiting.appendleft(job)  # the same window, hotter
            return
        window = job.window_frames
        if result.is_silence():
            advance, pieces = window, []
        else:
            pieces, advance = split_window(tokens, self.transcriber.timestamp_begin, window)
        start = job.seek / 100
        if job.options.words:
            self._align(job, best.seq_id, pieces, window, start)
        self._release(job)
        kept: list[int] = []
        for piece in pieces:
            kept += piece.tokens
            piece_text = self._decode(piece.tokens)
            job.done_text += piece_text
            job.num_tokens += len(piece.tokens)
            if piece_text.strip():
                job.segments.append(
                    Segment(
                        len(job.segments),
                        round(start + piece.start, 2),
                        round(min(start + piece.end, len(job.samples) / 16000), 2),
                        piece_text,
                        [tok for tok in piece.tokens if tok < self.transcriber.eot],
                        job.seek,
                        temperature,
                        round(result.avg_logprob, 4),
                        round(result.compression_ratio, 3),
                        round(result.no_speech_prob, 4),
                    )
                )
            self._stream(job)  # a final window goes out segment by segment
        job.context = [] if temperature > PROMPT_RESET_TEMPERATURE else job.context + kept
        job.seek += advance
        job.attempt, job.features = 0, None
        if job.seek < job.frames:
            self._waiting.appendleft(job)  # its next window goes first
            return
        text = job.done_text.strip()
        duration = len(job.samples) / 16000
        transcript = Transcript(text, job.language or "en", duration, job.segments, job.num_tokens, job.words)
        job.emit(TranscriptEvent(done=True, transcript=transcript))

    def _align(self, job: _Job, seq_id: int, pieces, window: int, start: float) -> None:
        eot = self.transcriber.eot
        text_tokens = [tok for piece in pieces for tok in piece.tokens if tok < eot]
        if not text_tokens:
            return
        words = self.transcriber.align(seq_id, text_tokens, window, job.language, job.options.task)
        end = start + window / 100
        for word in words:
            w_start = round(min(max(start + word["start"], start), end), 2)
            job.words.append(
                {
                    "word": word["word"],
                    "start": w_start,
                    "end": round(min(max(start + word["end"], w_start), end), 2),
                }
            )

    def _release(self, job: _Job) -> None:
        """Give back the window's blocks and audio slot (nothing when it holds none)."""
        for seq in job.seqs:
            self.blocks.free(seq)
            self._owner.pop(seq.seq_id, None)
        if job.seqs:
            self.transcriber.release([seq.seq_id for seq in job.seqs])
        job.seqs = []
        if job in self._running:
            self._running.remove(job)
