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

log = logging.getLogger("llmserve.transcription")
SECONDS_PER_TIMESTAMP = 0.02


@dataclass(frozen=True, slots=True)
class TranscriptionOptions:
    """How to decode one request. ``language`` None: detect (multilingual models) or English."""

    language: str | None = None
    task: str = "transcribe"  # or "translate" (to English)
    prompt_ids: tuple[int, ...] = ()
    timestamps: bool = False
    temperature: float = 0.0
    seed: int | None = None


@dataclass(slots=True)
class Segment:
    """A stretch of the transcript with its times in seconds."""

    id: int
    start: float
    end: float
    text: str
    tokens: list[int]


@dataclass(slots=True)
class Transcript:
    """The finished transcription of one request."""

    text: str
    language: str
    duration: float
    segments: list[Segment]
    num_tokens: int


@dataclass(slots=True)
class TranscriptEvent:
    """A text delta (``done`` False) or the final transcript (``done`` True), or an error."""

    delta: str = ""
    done: bool = False
    transcript: Transcript | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Job:
    windows: list[tuple[float, float, Any]]
    duration: float
    options: TranscriptionOptions
    emit: Any  # thread-safe callback taking a TranscriptEvent
    window: int = 0
    slot: int | None = None
    language: str | None = None
    tokens: list[int] = field(default_factory=list)  # the current window's sampled tokens
    segments: list[Segment] = field(default_factory=list)
    done_text: str = ""  # text of finished windows
    sent: int = 0  # characters of text already streamed
    num_tokens: int = 0
    cancelled: bool = False


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
        windows = self.transcriber.features(samples)
        job = _Job(windows, len(samples) / 16000, options, emit, language=options.language)
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
        return TranscriptionStart(
            features=job.windows[job.window][2],
            language=job.language,
            task=opts.task,
            timestamps=opts.timestamps,
            temperature=opts.temperature,
            previous=list(opts.prompt_ids) if job.window == 0 else [],
            seed=opts.seed,
        )

    def _accept(self, job: _Job, token: int) -> None:
        t = self.transcriber
        ended = token == t.eot
        if not ended:
            job.tokens.append(token)
            job.num_tokens += 1
            if token < t.eot:
                self._stream(job)
        if ended or len(job.tokens) >= t.max_tokens or t.room(job.slot) <= 1:
            self._finish_window(job)

    def _window_text(self, job: _Job) -> str:
        text_ids = [tok for tok in job.tokens if tok < self.transcriber.eot]
        return self.tokenizer.decode(text_ids, skip_special_tokens=True)

    def _stream(self, job: _Job) -> None:
        text = (job.done_text + self._window_text(job)).lstrip()
        if text.endswith("\ufffd"):  # a character split over tokens: wait for the rest
            return
        if len(text) > job.sent:
            job.emit(TranscriptEvent(delta=text[job.sent :]))
            job.sent = len(text)

    def _finish_window(self, job: _Job) -> None:
        start, end, _ = job.windows[job.window]
        job.segments += self._segments(job.tokens, start, end, len(job.segments))
        job.done_text += self._window_text(job)
        job.tokens = []
        self._release(job)
        job.window += 1
        if job.window < len(job.windows):
            self._waiting.appendleft(job)  # its next window goes first
            return
        text = job.done_text.strip()
        if len(text) > job.sent:  # whatever streaming held back
            job.emit(TranscriptEvent(delta=text[job.sent :]))
        transcript = Transcript(text, job.language or "en", job.duration, job.segments, job.num_tokens)
        job.emit(TranscriptEvent(done=True, transcript=transcript))

    def _release(self, job: _Job) -> None:
        self._active.pop(job.slot, None)
        self.transcriber.release(job.slot)
        job.slot = None

    def _segments(self, tokens: list[int], start: float, end: float, first_id: int) -> list[Segment]:
        """Split a window's tokens at timestamp pairs (one segment when there are none)."""
        begin, eot = self.transcriber.timestamp_begin, self.transcriber.eot
        out: list[Segment] = []
        opened: float | None = None
        text_ids: list[int] = []

        def close(seg_end: float) -> None:
            text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
            seg_start = start + (opened or 0.0)
            out.append(
                Segment(
                    first_id + len(out),
                    round(seg_start, 2),
                    round(min(seg_end, end), 2),
                    text,
                    list(text_ids),
                )
            )
            text_ids.clear()

        for tok in tokens:
            if tok >= begin:
                offset = (tok - begin) * SECONDS_PER_TIMESTAMP
                if text_ids:
                    close(start + offset)
                    opened = None
                else:
                    opened = offset
            elif tok < eot:
                text_ids.append(tok)
        if text_ids:
            close(end)
        return [seg for seg in out if seg.text.strip()]
