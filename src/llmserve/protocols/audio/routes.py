"""POST /v1/audio/transcriptions and /v1/audio/translations (multipart uploads)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from quart import Response, request

from llmserve.api import (
    TRANSCRIBE,
    InvalidRequestError,
    PayloadTooLargeError,
    context,
    json_response,
    sse,
    sse_error,
    sse_response,
    validate_model,
)
from llmserve.protocols.audio import formats
from llmserve.protocols.audio.schemas import TranscriptionRequest, TranslationRequest

_LISTS = {"timestamp_granularities"}  # form fields sent as name[] once per value


async def create_transcription() -> Any:
    """Transcribe an uploaded audio file."""
    return await _serve(TranscriptionRequest, "transcribe")


async def create_translation() -> Any:
    """Translate an uploaded audio file into English text."""
    return await _serve(TranslationRequest, "translate")


async def _form(model_cls) -> tuple[Any, bytes, str]:
    if not (request.mimetype or "").startswith("multipart/form-data"):
        raise InvalidRequestError("Expected a multipart/form-data body with a `file` field.", param="file")
    form, files = await request.form, await request.files
    upload = files.get("file")
    if upload is None:
        raise InvalidRequestError("The `file` field (the audio) is missing.", param="file")
    data = upload.read()
    limit_mb = context().config.max_audio_file_mb
    if len(data) > limit_mb * 1024 * 1024:
        raise PayloadTooLargeError(
            f"The audio file is {len(data) / 2**20:.1f} MiB; the limit is {limit_mb:g} MiB.", param="file"
        )
    fields: dict[str, Any] = {}
    for key in form:
        name = key.removesuffix("[]")
        values = form.getlist(key)
        fields[name] = values if name in _LISTS else values[-1]
    return validate_model(model_cls, fields), data, upload.filename or "audio"


async def _serve(model_cls, task: str) -> Any:
    req, data, filename = await _form(model_cls)
    ctx = context()
    model = ctx.model_for(req.model, TRANSCRIBE)
    fmt = req.response_format
    granularities = getattr(req, "timestamp_granularities", ["segment"])
    words = "word" in granularities
    if words and fmt != "verbose_json":
        raise InvalidRequestError(
            "timestamp_granularities needs response_format `verbose_json`.", param="timestamp_granularities"
        )
    if words and not model.transcriber.transcriber.word_timestamps:
        raise InvalidRequestError(
            f"The model `{model.name}` has no word timestamps; use `segment`.",
            param="timestamp_granularities",
        )
    stream = getattr(req, "stream", False)
    if stream and fmt not in ("json", "text"):
        raise InvalidRequestError("Streaming needs response_format `json` or `text`.", param="stream")
    events = await ctx.transcribe(
        model,
        data,
        filename,
        language=getattr(req, "language", None),
        task=task,
        prompt=req.prompt,
        timestamps=fmt in ("verbose_json", "srt", "vtt"),
        temperature=req.temperature,
        seed=req.seed,
        words=words,
    )
    if stream:
        return sse_response(_stream(events))
    transcript = None
    try:
        async for event in events:
            transcript = event.transcript if event.done else transcript
    finally:  # also when the client goes away: frees the request's slot
        await events.aclose()
    if fmt == "json":
        return json_response({"text": transcript.text, "usage": formats.usage(transcript)})
    if fmt == "verbose_json":
        return json_response(formats.verbose(transcript, task, granularities))
    if fmt == "text":
        return Response(transcript.text + "\n", mimetype="text/plain")
    body = formats.srt(transcript.segments) if fmt == "srt" else formats.vtt(transcript.segments)
    return Response(body, mimetype="text/vtt" if fmt == "vtt" else "application/x-subrip")


async def _stream(events: AsyncIterator[Any]) -> AsyncIterator[str]:
    try:
        async for event in events:
            if event.delta:
                yield sse({"type": "transcript.text.delta", "delta": event.delta})
            if event.done:
                t = event.transcript
                yield sse({"type": "transcript.text.done", "text": t.text, "usage": formats.usage(t)})
    except Exception as exc:  # after the 200 went out, errors travel in the stream
        yield sse_error(exc)
    finally:
        await events.aclose()
