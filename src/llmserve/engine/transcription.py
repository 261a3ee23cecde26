"""The async front of a speech-to-text model: requests decoded together on the device thread.

Each request is a list of 30 s windows decoded one after another; the windows of all requests
share steps. Every step first fills free slots with waiting windows (encoding them once), then
advances every busy slot by one token in a single batched decoder call, so a request that
arrives mid-way joins at the next step, as in the text engine. Tokens go back to the event loop
as they come, so a request can stream its text.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from llmserve.backends.base import Transcriber, TranscriptionStart
from llmserve.engine.device_thread import device_thread
from llmserve.engine.long_form import (
    MAX_PROMPT_TOKENS,
    PROMPT_RESET_TEMPERATURE,
    SAMPLES_PER_FRAME,
    WINDOW_FRAMES,
    WindowResult,
    compression_ratio,
    split_window,
    temperature_schedule,
)

log = logging.getLogger("llmserve.transcription")


@dataclass(frozen=True, slots=True)
class TranscriptionOptions:
    """How to decode one request. ``language`` None: detect (multilingual models) or English.
    ``fallback``: decode a failing window again at higher temperatures (not for streams, whose
    text has already gone out)."""

    language: str | None = None
    task: str = "transcribe"  # or "translate" (to English)
    prompt_ids: tuple[int, ...] = ()
    timestamps: bool = False
    temperature: float = 0.0
    seed: int | None = None
    fallback: bool = True
    words: bool = False  # word timestamps (the Transcriber must support them)


@dataclass(slots=True)
class Segment:
    """A stretch of the transcript with its times in seconds, and how its window decoded."""

    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    seek: int = 0  # the window's first log-mel frame (100 per second)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(slots=True)
class Transcript:
    """The finished transcription of one request."""

    text: str
    language: str
    duration: float
    segments: list[Segment]
    num_tokens: int
    words: list[dict] = field(default_factory=list)  # {"word", "start", "end"} when asked for


@dataclass(slots=True)
class TranscriptEvent:
    """A text delta (``done`` False) or the final transcript (``done`` True), or an error."""

    delta: str = ""
    done: bool = False
    transcript: Transcript | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Job:
    samples: Any  # 16 kHz mono float32
    options: TranscriptionOptions
    emit: Any  # thread-safe callback taking a TranscriptEvent
    temperatures: tuple[float, ...]
    timestamps: bool
    seek: int = 0  # frame where the current window starts
    attempt: int = 0  # index into temperatures
    features: Any = None  # the current window's, kept for a fallback
    slot: int | None = None
    language: str | None = None
    tokens: list[int] = field(default_factory=list)  # the current window's sampled tokens
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
    def live(self) -> bool:
        """Text streams as it is sampled (no fallback can replace it)."""
        return len(self.temperatures) == 1


class TranscriptionService:
    """Tokenizer plus a loaded Transcriber, stepped on the device thread while it has work."""

    def __init__(self, transcriber: Transcriber) -> None:
        self.transcriber = transcriber
        self.tokenizer = transcriber.tokenizer
        self.max_model_len = transcriber.max_tokens
        self._waiting: deque[_Job] = deque()  # touched on the device thread only
        self._active: dict[int, _Job] = {}
        device_thread().add_stepper(self)

    async def transcribe(self, samples: Any, options: TranscriptionOptions) -> AsyncIterator[TranscriptEvent]:
        """Events for ``samples`` (16 kHz mono float32): deltas as tokens come, then the transcript."""
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
            if not finished:  # the client went away: free its slot now
                device_thread().submit(self._cancel, job)

    # --- device thread ---------------------------------------------------------------------------

    def _enqueue(self, samples, options: TranscriptionOptions, emit) -> _Job:
        long_form = len(samples) > WINDOW_FRAMES * SAMPLES_PER_FRAME  # seeking needs timestamps
        temperatures = temperature_schedule(options.temperature, options.fallback)
        job = _Job(samples, options, emit, temperatures, options.timestamps or long_form)
        job.language, job.context = options.language, list(options.prompt_ids)
        self._waiting.append(job)
        return job

    def _cancel(self, job: _Job) -> None:
        job.cancelled = True
        if job in self._waiting:
            self._waiting.remove(job)
        if job.slot is not None:
            self._release(job)

    def has_work(self) -> bool:
        return bool(self._waiting or self._active)

    def step_once(self) -> None:
        try:
            self._step()
        except Exception as exc:  # a failing step ends its requests, never the device thread
            log.exception("transcription step failed")
            for job in [*self._active.values(), *self._waiting]:
                job.emit(TranscriptEvent(error=exc))
                if job.slot is not None:
                    self._release(job)
            self._waiting.clear()

    def _step(self) -> None:
        busy = list(self._active)
        admitted = []
        while self._waiting and len(admitted) < self.transcriber.free_slots:
            admitted.append(self._waiting.popleft())
        if admitted:
            starts = [self._start(job) for job in admitted]
            for job, (slot, token, language) in zip(admitted, self.transcriber.begin(starts), strict=True):
                job.slot, job.language = slot, language
                self._active[slot] = job
                self._accept(job, token)
        if busy:
            for slot, token in zip(busy, self.transcriber.advance(busy), strict=True):
                self._accept(self._active[slot], token)

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
            seed=None if opts.seed is None else opts.seed + job.attempt,
        )

    def _accept(self, job: _Job, token: int) -> None:
        t = self.transcriber
        ended = token == t.eot
        if not ended:
            job.tokens.append(token)
            if token < t.eot or job.timestamps:
                self._stream(job)
        if ended or len(job.tokens) >= t.max_tokens or t.room(job.slot) <= 1:
            self._finish_window(job)

    def _decode(self, tokens: list[int]) -> str:
        text_ids = [tok for tok in tokens if tok < self.transcriber.eot]
        return self.tokenizer.decode(text_ids, skip_special_tokens=True)

    def _stream(self, job: _Job, final: bool = False) -> None:
        """Send what is settled: while a window decodes, its text (without timestamps) or its text
        up to the last timestamp pair (later text may be cut off); all of it once final."""
        if not (job.live or final):
            return
        settled = job.tokens
        if job.timestamps and not final:
            begin = self.transcriber.timestamp_begin
            pairs = [i for i in range(1, len(settled)) if settled[i] >= begin and settled[i - 1] >= begin]
            settled = settled[: pairs[-1]] if pairs else []
        text = (job.done_text + ("" if final else self._decode(settled))).lstrip()
        if text.endswith("\ufffd") and not final:  # a character split over tokens: wait for the rest
            return
        if len(text) > job.sent:
            job.emit(TranscriptEvent(delta=text[job.sent :]))
            job.sent = len(text)

    def _finish_window(self, job: _Job) -> None:
        sum_logprob, no_speech = self.transcriber.scores(job.slot)
        tokens, job.tokens = job.tokens, []
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
            self._align(job, pieces, window, start)
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
        job.context = [] if temperature > PROMPT_RESET_TEMPERATURE else job.context + kept
        job.seek += advance
        job.attempt, job.features = 0, None
        self._stream(job, final=True)
        if job.seek < job.frames:
            self._waiting.appendleft(job)  # its next window goes first
            return
        text = job.done_text.strip()
        duration = len(job.samples) / 16000
        transcript = Transcript(text, job.language or "en", duration, job.segments, job.num_tokens, job.words)
        job.emit(TranscriptEvent(done=True, transcript=transcript))

    def _align(self, job: _Job, pieces, window: int, start: float) -> None:
        eot = self.transcriber.eot
        text_tokens = [tok for piece in pieces for tok in piece.tokens if tok < eot]
        if not text_tokens:
            return
        words = self.transcriber.align(job.slot, text_tokens, window, job.language, job.options.task)
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
        self._active.pop(job.slot, None)
        self.transcriber.release(job.slot)
        job.slot = None
