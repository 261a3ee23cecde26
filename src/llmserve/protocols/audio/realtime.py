"""/v1/realtime: vLLM's Realtime transcription API over a WebSocket.

The server greets with ``session.created``; the client may send ``session.update`` (``model``,
``language``, ``temperature``), streams ``input_audio_buffer.append`` events (``audio``: base64
PCM16, 16 kHz, mono) and sends ``input_audio_buffer.commit`` to have what it appended since the
last commit transcribed: ``transcription.delta`` events follow, then ``transcription.done`` with
the text and usage. ``"final": true`` on a commit closes the session after its transcript. Whisper
is not a streaming model, so a commit's audio is decoded as a whole (as an upload is, windows
and fallback included); an empty commit does nothing. Errors are ``error`` events and the session
stays open.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import time
import uuid
import wave
from typing import Any

from quart import websocket

from llmserve.api import TRANSCRIBE, InvalidRequestError, context
from llmserve.protocols.audio import formats

SAMPLE_RATE = 16000


def _wav(pcm: bytes) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)
    return buf.getvalue()


async def _send(event: dict[str, Any]) -> None:
    await websocket.send(json.dumps(event))


async def _error(message: str, code: str) -> None:
    await _send({"type": "error", "error": message, "code": code})


async def realtime() -> None:
    """One realtime transcription session."""
    ctx = context()
    await _send({"type": "session.created", "id": f"sess-{uuid.uuid4().hex}", "created": int(time.time())})
    session: dict[str, Any] = {"model": None, "language": None, "temperature": 0.0}
    audio = bytearray()
    limit = ctx.config.max_audio_file_mb * 1024 * 1024
    while True:
        try:
            event = json.loads(await websocket.receive())
            kind = event.get("type") if isinstance(event, dict) else None
        except (ValueError, TypeError):
            await _error("Events are JSON objects with a `type`.", "invalid_json")
            continue
        if kind == "session.update":
            session.update({k: event[k] for k in session if k in event})
        elif kind == "input_audio_buffer.append":
            try:
                audio += base64.b64decode(event.get("audio") or "", validate=True)
            except (binascii.Error, ValueError):
                await _error("`audio` must be base64-encoded PCM16.", "invalid_audio")
                continue
            if len(audio) > limit:
                audio.clear()
                await _error(f"More than {limit / 2**20:g} MiB of audio before a commit.", "audio_too_large")
        elif kind == "input_audio_buffer.commit":
            if audio:
                pcm, audio = bytes(audio[: len(audio) // 2 * 2]), bytearray()
                await _transcribe(ctx, session, pcm)
            if event.get("final"):
                await websocket.close(1000)
                return
        else:
            await _error(f"Unknown event type {kind!r}.", "unknown_event")


async def _transcribe(ctx, session: dict[str, Any], pcm: bytes) -> None:
    try:
        model = ctx.model_for(session["model"], TRANSCRIBE)
        events = await ctx.transcribe(
            model,
            _wav(pcm),
            "realtime.wav",
            language=session["language"],
            temperature=float(session["temperature"] or 0.0),
        )
    except (InvalidRequestError, ValueError, TypeError) as exc:
        await _error(getattr(exc, "message", str(exc)), "invalid_request")
        return
    except Exception as exc:  # an unknown model and other API errors: reported, the session goes on
        await _error(getattr(exc, "message", str(exc)), getattr(exc, "type", "error"))
        return
    try:
        async for event in events:
            if event.delta:
                await _send({"type": "transcription.delta", "delta": event.delta})
            if event.done:
                text = event.transcript.text
                await _send(
                    {"type": "transcription.done", "text": text, "usage": formats.usage(event.transcript)}
                )
    except Exception as exc:  # noqa: BLE001 - a failed decode is this commit's error, not the session's
        await _error(str(exc), "transcription_failed")
    finally:
        await events.aclose()  # also when the client went away: frees the request's blocks
